"""Scaling-law fits on stored results: one module per law family, the public names all importable from here.

fit_power_law  y = E + A * x^-alpha (or A * x^-alpha), least squares on log y with a soft-L1 (robust) loss, several starts.
fit_isoflop    Chinchilla approach 2 (Hoffmann et al. 2022, sec. 3.2): per compute budget the minimum of loss in
               log N (a local quadratic around the lowest loss by default; the paper's one parabola, a window or
               Akima's interpolant on request), N_opt there and the tokens D_opt the budget's runs trained there;
               N_opt = k C^a, D_opt ~ C^b.
fit_envelope   Chinchilla approach 1 (sec. 3.1): the lower envelope of loss over FLOPs across training curves, the
               model size on it per FLOP value, and power laws N_opt ~ C^a, D_opt ~ C^b.
fit_parametric Chinchilla approach 3 (sec. 3.3): L = E + A/N^alpha + B/D^beta, the Huber loss of log L summed
               over points, L-BFGS from the paper's grid of starts.
fit_kaplan_nd  Kaplan et al. 2020's L(N, D), by approach 3's estimator (kaplan.py).
fit_data_constrained  Muennighoff et al. 2023's law of repeated data (data_constrained.py).
fit_lr_law     a learning-rate ladder's lr_opt = c N^-gamma (lr.py).
fit_curve_law  a law of the whole loss curve under its learning-rate schedule: Luo et al. 2025's multi-power law or
               Tissue et al. 2024's annealing law, on a few runs' curves (curves.py).
holdout, compare_laws  a law fitted on the smaller scales predicts the largest (holdout.py).
bootstrap      resampling confidence intervals for any of them (cases, optionally within strata);
               approaches 2 and 3 resample residuals within each budget (a fixed design: the sizes tried stay).

C is one quantity throughout: the training FLOPs a run spent, as the caller counts them (the harness: exact
FLOPs, harness/flops.py). Approach 2 reads D_opt off the tokens trained, not C/(6 N_opt); approach 3's
compute-optimal frontier takes the same FLOPs per token (`flops_per_token`), 6N only when none is given.
"""
from harness.fit.bootstrap import (BATCH_ROWS, REFIT_TOLERANCES, RESAMPLE_STARTS, bootstrap, distinct_ends,
                                   percentile_intervals, refit_resamples, residual_resamples, with_interval)
from harness.fit.curves import Curve, CurveLawFit, checked_curve, fit_curve_law
from harness.fit.data_constrained import (DATA_CONSTRAINED_STARTS, DataConstrainedFit, data_constrained_effective,
                                          data_constrained_log_loss, fit_data_constrained)
from harness.fit.envelope import EnvelopeFit, fit_envelope
from harness.fit.holdout import (LAW_FORMS, LAW_NAMES, Holdout, applicable_laws, compare_laws, fitted_rows, holdout,
                                 single_epoch)
from harness.fit.isoflop import IsoFlopFit, a_by_method, fit_isoflop
from harness.fit.kaplan import KAPLAN_STARTS, KaplanFit, fit_kaplan_nd, kaplan_identification, kaplan_objectives
from harness.fit.lr import LrLawFit, fit_lr_law
from harness.fit.minimum import AXES, DEFAULT_MINIMUM, LOCAL_BANDWIDTH, LOCAL_POINTS, MINIMUM_METHODS
from harness.fit.objective import SMALL_BATCH, summed_huber, torch_threads_for
from harness.fit.parametric import (CHINCHILLA_STARTS, TIED_STARTS, ParametricFit, fit_parametric, grid_objectives,
                                    huber_objectives, identification, untied)
from harness.fit.points import FitError
from harness.fit.power import PowerLawFit, fit_power_law

__all__ = ['Curve', 'CurveLawFit', 'checked_curve', 'fit_curve_law', 'BATCH_ROWS', 'REFIT_TOLERANCES', 'RESAMPLE_STARTS', 'bootstrap', 'distinct_ends', 'percentile_intervals', 'refit_resamples',
           'residual_resamples', 'with_interval', 'DATA_CONSTRAINED_STARTS', 'DataConstrainedFit',
           'data_constrained_effective', 'data_constrained_log_loss', 'fit_data_constrained', 'EnvelopeFit',
           'fit_envelope', 'LAW_FORMS', 'LAW_NAMES', 'Holdout', 'applicable_laws', 'compare_laws',
           'holdout', 'fitted_rows', 'single_epoch', 'IsoFlopFit', 'fit_isoflop', 'KAPLAN_STARTS', 'KaplanFit', 'fit_kaplan_nd',
           'kaplan_identification', 'kaplan_objectives', 'LrLawFit', 'fit_lr_law', 'AXES',
           'LOCAL_BANDWIDTH', 'LOCAL_POINTS', 'MINIMUM_METHODS', 'DEFAULT_MINIMUM', 'a_by_method', 'SMALL_BATCH', 'summed_huber',
           'torch_threads_for', 'CHINCHILLA_STARTS', 'TIED_STARTS', 'ParametricFit', 'fit_parametric',
           'grid_objectives', 'huber_objectives', 'identification', 'untied', 'FitError', 'PowerLawFit',
           'fit_power_law']
