"""Forecast accuracy, on the original unit scale. MAPE is undefined on zero weeks (they are
left out of it); WAPE, sMAPE and the naive-relative measures are not."""
from __future__ import annotations

import numpy as np


def seasonal_naive_scale(train: np.ndarray, season: int) -> float:
    """In-sample MAE of the seasonal-naive forecast: the MASE denominator."""
    if len(train) <= season:
        season = 1
    diffs = np.abs(train[season:] - train[:-season])
    scale = float(diffs.mean()) if len(diffs) else 0.0
    return scale if scale > 0 else 1.0


def accuracy(actual: np.ndarray, predicted: np.ndarray, naive: np.ndarray, train: np.ndarray,
             season: int) -> dict[str, float]:
    actual = np.asarray(actual, float)
    predicted = np.asarray(predicted, float)
    error = actual - predicted
    nonzero = actual != 0
    scale = seasonal_naive_scale(np.asarray(train, float), season)
    mae = float(np.abs(error).mean())
    naive_mae = float(np.abs(actual - naive).mean())
    denominator = np.abs(actual) + np.abs(predicted)
    smape = np.where(denominator > 0, 2 * np.abs(error) / np.where(denominator > 0, denominator, 1), 0.0)
    sold = float(np.abs(actual).sum())
    return {
        "rmse": float(np.sqrt((error ** 2).mean())),
        "mae": mae,
        "wape": float(np.abs(error).sum()) / sold if sold > 0 else (0.0 if mae == 0 else float("inf")),
        "mape": float(np.abs(error[nonzero] / actual[nonzero]).mean()) if nonzero.any() else float("inf"),
        "smape": float(smape.mean()),
        "mase": mae / scale,
        "naive_mase": naive_mae / scale,
        "relative_mae": mae / naive_mae if naive_mae > 0 else (0.0 if mae == 0 else float("inf")),
        "zero_weeks_in_holdout": int((actual == 0).sum()),
    }
