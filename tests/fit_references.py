"""Second implementations of the fits' objectives, one point and one theta at a time in float64, for the tests to
hold the batched ones (harness.fit.parametric.huber_objectives, harness.fit.kaplan.kaplan_objectives) against."""
import numpy as np

from harness.fit import kaplan_objectives, untied


def huber(r, delta):
    return np.where(np.abs(r) <= delta, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta))


def huber_objective(theta, log_n, log_d, log_loss, delta):
    """Approach 3's sum over points of Huber_delta(log L_pred - log L), L_pred by log-sum-exp, and its gradient."""
    a, b, e, alpha, beta = theta
    z_n, z_d = a - alpha * log_n, b - beta * log_d
    top = np.maximum(np.maximum(z_n, z_d), e)
    x_n, x_d, x_e = np.exp(z_n - top), np.exp(z_d - top), np.exp(e - top)
    total = x_n + x_d + x_e
    r = top + np.log(total) - log_loss
    inside = np.abs(r) <= delta
    value = huber(r, delta).sum()
    slope = np.where(inside, r, delta * np.sign(r)) / total
    g_n, g_d = slope * x_n, slope * x_d
    return value, np.array([g_n.sum(), g_d.sum(), (slope * x_e).sum(), -(g_n * log_n).sum(), -(g_d * log_d).sum()])


def tied_objective(theta, log_n, log_d, log_loss, delta):
    """huber_objective with beta = alpha: the same sum, its gradient in alpha the sum of the two exponents' gradients."""
    value, gradient = huber_objective(untied(theta), log_n, log_d, log_loss, delta)
    return value, np.append(gradient[:3], gradient[3] + gradient[4])


def kaplan_objective(theta, log_n, log_d, log_loss, delta):
    """kaplan_objectives at one theta: (value, gradient)."""
    value, gradient = kaplan_objectives(log_n, log_d, log_loss, delta)(np.asarray(theta, float)[None], np.zeros(1, int))
    return value[0], gradient[0]
