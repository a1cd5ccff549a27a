"""Rolling-origin backtests: every option an ISBN could be served by, scored on the same
unseen weeks, and how sure we can be that one is worse than another.

The windows are the search's validation folds (a few weeks each, ending where the holdout
starts) and the holdout itself: 40-65 unseen weeks in four windows for a typical title,
instead of the one half-year a holdout alone gives. Each option is fitted on the weeks
before a window and forecasts the window, exactly as it would be served.

Judging on so few weeks is noisy, and the weeks of one window share a forecast origin, so
their errors are correlated. ``evidence_worse`` is a Diebold-Mariano comparison: the mean
difference of absolute errors, divided by its standard error with a Newey-West (Bartlett)
long-run variance, turned into the confidence that the first option is really worse. A
candidate is refused only when that confidence is high, not because it lost one half-year.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date
from statistics import NormalDist

import numpy as np

from shared.forecasting import models
from shared.forecasting.calibration import scores
from shared.forecasting.models import Forecast, ModelSpec
from shared.forecasting.tuning import validation_plan


@dataclass(frozen=True)
class Window:
    cut: int    # weeks the option is fitted on
    weeks: int  # weeks it forecasts from there


def windows(cut: int, holdout: int) -> list[Window]:
    """The search's folds inside the training window, then the holdout."""
    window, cuts = validation_plan(cut)
    return [Window(c, window) for c in cuts] + [Window(cut, holdout)]


@dataclass
class Backtest:
    """One option's forecasts of every window, as plain lists (it crosses process bounds)."""
    label: str
    actual: list[float] = field(default_factory=list)  # every window's weeks, in order
    point: list[float] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)  # nonconformity (shared/forecasting/calibration.py)
    window_weeks: list[int] = field(default_factory=list)

    @property
    def errors(self) -> np.ndarray:
        return np.abs(np.asarray(self.actual, float) - np.asarray(self.point, float))

    @property
    def mae(self) -> float:
        return float(self.errors.mean())

    @property
    def rmse(self) -> float:
        return float(np.sqrt(np.mean(self.errors ** 2)))

    @property
    def wape(self) -> float:
        sold = float(np.abs(self.actual).sum())
        return float(self.errors.sum()) / sold if sold > 0 else (0.0 if self.mae == 0 else math.inf)

    @property
    def horizons(self) -> list[int]:
        """How many weeks ahead each scored week was forecast (1 at each window's start)."""
        return [step for weeks in self.window_weeks for step in range(1, weeks + 1)]

    def to_dict(self) -> dict:
        return {"label": self.label, "actual": self.actual, "point": self.point, "scores": self.scores,
                "window_weeks": self.window_weeks}

    @classmethod
    def from_dict(cls, data: dict) -> "Backtest":
        return cls(**data)


def run(y: np.ndarray, start: date, spec: ModelSpec, plan: list[Window],
        known: list[Forecast] | None = None) -> tuple[Backtest, list[Forecast]]:
    """``spec`` fitted before each window and forecasting it; ``known`` are forecasts the
    search already made for the first windows (they are not made twice)."""
    known = list(known or [])
    found = Backtest(spec.label())
    forecasts = []
    for i, window in enumerate(plan):
        if i < len(known):
            prediction = known[i]
        else:
            prediction = models.forecast(models.fit(y[:window.cut], start, spec), window.weeks)
        actual = y[window.cut:window.cut + window.weeks]
        found.actual += [float(v) for v in actual]
        found.point += [float(v) for v in prediction.bounds(0.5)[0][:len(actual)]]
        found.scores += [float(v) for v in scores(actual, prediction)]
        found.window_weeks.append(len(actual))
        forecasts.append(prediction)
    return found, forecasts


def long_run_variance(values: np.ndarray) -> float:
    """Newey-West estimate with Bartlett weights; the lag grows with the sample (n^(1/3))
    and covers the first, most correlated steps of a window's errors."""
    values = np.asarray(values, float) - np.mean(values)
    n = len(values)
    lags = min(n - 1, int(math.ceil(1.5 * n ** (1 / 3))))
    variance = float(values @ values) / n
    for lag in range(1, lags + 1):
        variance += 2 * (1 - lag / (lags + 1)) * float(values[lag:] @ values[:-lag]) / n
    return max(variance, float(values @ values) / n / (2 * lags + 1), 1e-300)


def evidence_worse(ours: Backtest, other: Backtest, allowed_ratio: float = 1.0) -> float:
    """Confidence (0-1) that ``ours`` has a larger mean absolute error than ``allowed_ratio``
    times ``other``'s on weeks like these: 0.5 when they are level, near 1 when ours is
    clearly worse. Both must have been scored on the same weeks."""
    if ours.window_weeks != other.window_weeks:
        raise ValueError("backtests on different windows cannot be compared")
    difference = ours.errors - allowed_ratio * other.errors
    if not np.any(difference):
        return 0.5
    t = float(np.mean(difference)) / math.sqrt(long_run_variance(difference) / len(difference))
    return NormalDist().cdf(t)
