"""Figures a paper would print: log-axis labels as powers of ten, exact and distinct; legends off the data."""
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg

from harness import plots


def test_log_axis_labels_are_powers_of_ten_exact_and_distinct():
    labels = plots.PowersOfTen().format_ticks
    assert labels([1e3, 2e3, 5e3, 1e4]) == ["1000", "2000", "5000", "$10^{4}$"]
    assert labels([1e-3, 0.01, 0.5]) == ["$10^{-3}$", "0.01", "0.5"]
    # one budget's runs: labels need three digits to differ
    assert labels([1.55e11, 1.6e11, 1.65e11]) == [r"$1.55\times10^{11}$", r"$1.6\times10^{11}$", r"$1.65\times10^{11}$"]
    assert labels([2.5e-5, 1e-4]) == [r"$2.5\times10^{-5}$", "$10^{-4}$"]   # never rounded to a wrong number


def test_a_saved_figure_labels_its_decades_and_puts_the_legend_beside_the_data(tmp_path):
    runs = pd.DataFrame({"flops": np.geomspace(1e15, 1e19, 9), "val_loss": np.linspace(4, 2, 9),
                         "params": np.repeat([1e6, 1e7, 1e8], 3)})
    plots.loss_vs_compute(runs, tmp_path)
    fig, ax = plt.subplots()
    ax.scatter(runs["flops"], runs["val_loss"], label="runs")
    ax.set_xscale("log")
    ax.legend()
    plots.save(fig, tmp_path, "check")
    ticks = [t.get_text() for t in ax.xaxis.get_majorticklabels() if t.get_text()]
    assert ticks and all(t.startswith("$10^{") for t in ticks)
    legend = ax.get_legend()
    renderer = FigureCanvasAgg(fig).get_renderer()
    assert legend.get_window_extent(renderer).x0 > ax.get_window_extent(renderer).x1   # beside the axes, not on them
