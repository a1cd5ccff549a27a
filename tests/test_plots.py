"""Plots say where the data ends, keep the legend off the data, and name when the model was
trained and how well it did."""
from __future__ import annotations

import pandas as pd

from shared.plots import forecast_figure, metrics_subtitle


def test_forecast_figure_marks_the_data_end_and_keeps_the_legend_below_the_axes():
    weeks = pd.date_range("2024-01-01", periods=60, freq="W-MON")
    future = pd.date_range(weeks[-1] + pd.Timedelta(weeks=1), periods=8, freq="W-MON")
    subtitle = metrics_subtitle("2026-11-26T10:00:00", {"mase": 0.4, "wape": 0.22, "relative_mae": 0.9}, 26)
    fig = forecast_figure("9780306406157: ETS", weeks, range(60), future, [5] * 8, [1] * 8, [9] * 8,
                          subtitle=subtitle)
    (ax,) = fig.axes
    assert ax.get_title() == "trained 2026-11-26 · MASE 0.40 · WAPE 22% · MAE 0.90× naive · 26-week holdout"
    (marker,) = [line for line in ax.get_lines() if line.get_label().startswith("data end")]
    assert marker.get_label() == f"data end ({weeks[-1]:%Y-%m-%d})"
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    assert ax.get_legend().get_window_extent(renderer).y1 < ax.get_window_extent(renderer).y0
