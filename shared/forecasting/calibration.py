"""Interval calibration: measure how far unseen weeks fall from the forecast, in the model's
own standard errors, and turn that into a multiplier per interval level.

A model's standard errors assume its own form is right; on real sales they are often too
narrow (promotions, stock-outs) or too wide (the seasonal-naive baseline). Split-conformal
scaling corrects both: on rolling-origin folds and the holdout, |actual - forecast| / se is a
nonconformity score, and its ``level`` quantile is the half-width that covers ``level`` of
unseen weeks. The plain (interpolated) empirical quantile, not split-conformal's (n + 1)
finite-sample correction: on 40-65 backtest weeks the correction pushed the 95% band to the
largest score seen, and on real sales it covered 0.98 of unseen weeks; without it, 0.95
(bench/README.md, design series only). The ratio to the normal quantile is
stored with the model and applied by every forecast, serving included.

The scores are not alike across horizons: the models' standard errors grow with the
horizon faster than real errors do (on the 87 design series of bench/real_accuracy.py the
scores' 80% quantile was 0.9-1.0 one to three weeks ahead and 0.45 at 14-26), and the folds
are short, so one quantile of all scores made 80% bands cover 0.92 of the weeks 14-26 ahead
and 0.75 of the first six. Each score is therefore scaled by h ** HORIZON_EXPONENT (h weeks
ahead) before the quantile, and a band h weeks ahead is narrowed by the same factor, flat
beyond the longest horizon the backtests saw: 80% then covered 0.80 of the first six weeks,
0.79 of 7-13 and 0.80 of 14-26, with bands a fifth narrower. Not for seasonal naive: its
standard error is flat within a year, as its errors are (last year's differences at any
horizon), and shaping it took its 80% cover from 0.74 to 0.69, 0.62 at weeks 14-26; nor for
TSB, whose standard error is one constant. Coverage was measured up to 26 weeks ahead, the
longest backtest window; beyond it bands keep the 26-week factor.
"""
from __future__ import annotations

from statistics import NormalDist

import numpy as np

from shared.forecasting.models import BASELINE, COMBINATION, Forecast, ModelSpec, forward, horizon_factor

LEVELS = (0.5, 0.8, 0.9, 0.95)
HORIZON_EXPONENT = 0.3  # chosen on the design series: 0.2 left 14-26 weeks at 0.84, 0.4 at 0.76
FLAT_ERROR_KINDS = (BASELINE, "tsb")
MIN_SCORES = 8
RATIO_LIMITS = (0.25, 4.0)


def scores(actual: np.ndarray, prediction: Forecast) -> np.ndarray:
    """Nonconformity of each unseen week: its distance from the forecast in standard errors."""
    n = len(actual)
    transformed = forward(prediction.transform)(np.asarray(actual, float))
    distance = np.abs(transformed - prediction.mean[:n])
    # A zero standard error (a seasonal naive on an exactly repeating history) scores by
    # whether it missed at all.
    return np.where(prediction.se[:n] > 0, distance / np.where(prediction.se[:n] > 0, prediction.se[:n], 1),
                    np.where(distance > 0, np.inf, 0.0))


def interval_scale(nonconformity: np.ndarray) -> list[list[float]]:
    """[level, ratio to the normal quantile] for each calibrated level; empty (normal
    intervals) when too few unseen weeks were scored to say anything."""
    values = np.sort(np.asarray(nonconformity, float)[np.isfinite(nonconformity)])
    n = len(values)
    if n < MIN_SCORES:
        return []
    pairs, widest = [], 0.0
    for level in LEVELS:
        z = NormalDist().inv_cdf(0.5 + level / 2)
        # Wider levels never get narrower bands than narrower levels.
        widest = max(widest, float(np.clip(np.quantile(values, level), RATIO_LIMITS[0] * z, RATIO_LIMITS[1] * z)))
        pairs.append([level, round(widest / z, 4)])
    return pairs


def horizon_exponent(spec: ModelSpec) -> float:
    """0 for the families whose standard error is flat over the horizon (seasonal naive within
    a year, TSB): their scores do not fall with it. A combination is shaped when any member's
    standard error grows (the plain combination, with naive among three, covered 0.81 of the
    design test weeks at 80% shaped, 0.86 flat)."""
    if spec.kind == COMBINATION:
        return max(horizon_exponent(member) for member in spec.members)
    return 0.0 if spec.kind in FLAT_ERROR_KINDS else HORIZON_EXPONENT


def calibrate(nonconformity, horizons, exponent: float) -> tuple[list[list[float]], list[float]]:
    """The interval scale and horizon shape from scores and how many weeks ahead each was
    forecast: both empty (normal intervals) when too few weeks were scored, no shape when
    ``exponent`` is 0."""
    shape = [exponent, float(max(horizons))] if len(horizons) and exponent else []
    ratios = interval_scale(np.asarray(nonconformity, float) / horizon_factor(horizons, shape))
    return ratios, shape if ratios else []


def coverage(actual: np.ndarray, prediction: Forecast, level: float) -> float:
    _, lower, upper = prediction.bounds(level)
    n = len(actual)
    actual = np.asarray(actual, float)
    return float(np.mean((actual >= lower[:n]) & (actual <= upper[:n])))
