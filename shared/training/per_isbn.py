"""Everything one ISBN goes through, from its weekly series to a gated candidate.

Runs in worker processes: it takes plain data, returns plain data, and never touches
MLflow or Firestore, so one ISBN's failure stays its own.
"""
from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from datetime import date, timedelta

import numpy as np

from shared.config import GateSettings, TrainingSettings
from shared.forecasting import models
from shared.forecasting.metrics import SEASON, accuracy
from shared.forecasting.models import FittedModel, ModelSpec
from shared.forecasting.tuning import search

SERVING_HORIZON = 104
HISTORY_IN_ARTIFACT = 156  # for plots next to the forecast


@dataclass
class Candidate:
    isbn: str
    status: str                       # trained | refused | failed
    reason: str = ""
    spec: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    baseline_metrics: dict = field(default_factory=dict)
    champion_metrics: dict = field(default_factory=dict)
    study: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)           # FittedModel on all data
    baseline_model: dict = field(default_factory=dict)  # seasonal naive on all data
    holdout: dict = field(default_factory=dict)         # weeks, actual, forecast, bounds, naive
    history: dict = field(default_factory=dict)         # weeks, units (for the plot)
    train_window: tuple[str, str] = ("", "")
    holdout_weeks: int = 0
    seconds: float = 0.0


def holdout_size(n: int, configured: int) -> int:
    return min(configured, max(4, n // 4))


def evaluate(spec: ModelSpec, y: np.ndarray, start: date, cut: int) -> tuple[dict, dict]:
    train, actual = y[:cut], y[cut:]
    fitted = models.fit(train, start, spec)
    prediction = models.forecast(fitted, len(actual))
    mean, lower, upper = prediction.bounds(0.95)
    naive = models.seasonal_naive(train, start, len(actual))
    season = SEASON if cut > SEASON else 1
    curve = {"forecast": mean.tolist(), "lower": lower.tolist(), "upper": upper.tolist(), "naive": naive.tolist()}
    return accuracy(actual, mean, naive, train, season), curve


def train_isbn(isbn: str, weeks: list[date], units: list[float], training: TrainingSettings,
               champion_spec: dict | None = None) -> Candidate:
    started = time.perf_counter()
    y = np.asarray(units, float)
    start = weeks[0]
    candidate = Candidate(isbn=isbn, status="refused",
                          history={"weeks": [w.isoformat() for w in weeks], "units": y.tolist()})
    if len(y) < training.min_history_weeks:
        candidate.reason = (f"only {len(y)} weeks of history; at least {training.min_history_weeks} are needed "
                            "for a model that can be evaluated")
        return candidate
    if not np.any(y > 0):
        candidate.reason = "every week has 0 units: nothing to forecast"
        return candidate
    try:
        holdout = holdout_size(len(y), training.holdout_weeks)
        cut = len(y) - holdout
        spec, study = search(y[:cut], start, training.trials, training.max_fourier_pairs, training.seed)
        metrics, curve = evaluate(spec, y, start, cut)
        baseline = ModelSpec(kind="seasonal_naive")
        baseline_metrics, _ = evaluate(baseline, y, start, cut)
        champion_metrics = {}
        if champion_spec:
            # The champion's structure refitted on the same window: the fair comparison.
            champion_metrics, _ = evaluate(ModelSpec.from_dict(champion_spec), y, start, cut)
        final = models.fit(y, start, spec)
        models.forecast(final, SERVING_HORIZON)  # proves the final model forecasts before it is registered
        candidate.status = "trained"
        candidate.spec = spec.__dict__ | {"seasonal_order": list(spec.seasonal_order)}
        candidate.metrics = metrics
        candidate.baseline_metrics = baseline_metrics
        candidate.champion_metrics = champion_metrics
        candidate.study = study
        candidate.model = final.to_dict()
        candidate.baseline_model = models.fit(y, start, baseline).to_dict()
        candidate.holdout = {"weeks": [w.isoformat() for w in weeks[cut:]], "actual": y[cut:].tolist(), **curve}
        candidate.train_window = (weeks[0].isoformat(), weeks[-1].isoformat())
        candidate.holdout_weeks = holdout
    except Exception as error:  # one ISBN's failure must not sink the others
        candidate.status = "failed"
        candidate.reason = f"{type(error).__name__}: {error}"
        candidate.study = {"traceback": traceback.format_exc(limit=5)}
    candidate.seconds = time.perf_counter() - started
    return candidate


@dataclass
class GateResult:
    passed: bool
    reasons: list[str]


def gate(candidate: Candidate, gates: GateSettings) -> GateResult:
    m = candidate.metrics
    reasons = []
    if not m["rmse"] < gates.max_rmse:
        reasons.append(f"RMSE {m['rmse']:.1f} is not below {gates.max_rmse:g}")
    if not m["mape"] < gates.max_mape:
        reasons.append(f"MAPE {m['mape']:.1%} is not below {gates.max_mape:.0%}")
    if not m["relative_mase"] < gates.max_relative_mase:
        reasons.append(f"does not beat seasonal naive on the holdout (MAE ratio {m['relative_mase']:.2f}, "
                       f"MASE {m['mase']:.2f} vs naive {m['naive_mase']:.2f})")
    champion = candidate.champion_metrics
    if champion and m["rmse"] > champion["rmse"] * (1 + gates.champion_margin):
        reasons.append(f"RMSE {m['rmse']:.1f} is more than {gates.champion_margin:.0%} worse than the "
                       f"champion's {champion['rmse']:.1f} on the same holdout")
    return GateResult(not reasons, reasons)


def serving_forecast(model: dict) -> dict:
    """The precomputed serving artifact: mean and standard error for two years ahead, so
    the forecast function needs neither statsmodels nor a refit."""
    fitted = FittedModel.from_dict(model)
    prediction = models.forecast(fitted, SERVING_HORIZON)
    tail = fitted.history[-HISTORY_IN_ARTIFACT:]
    return {"start": prediction.start.isoformat(), "transform": prediction.transform,
            "mean": prediction.mean.tolist(), "se": prediction.se.tolist(),
            "data_end": (fitted.start + timedelta(weeks=fitted.n_obs - 1)).isoformat(),
            "label": fitted.spec.label(),
            "history_start": (fitted.start + timedelta(weeks=fitted.n_obs - len(tail))).isoformat(),
            "history": tail}
