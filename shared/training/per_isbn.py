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
from shared.forecasting import calibration, models
from shared.forecasting.gates import breaches
from shared.forecasting.metrics import accuracy
from shared.forecasting.models import BASELINE, SEASON, FittedModel, ModelSpec
from shared.forecasting.tuning import search, validation_plan

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
    champion_refit: dict = field(default_factory=dict)  # the champion's structure re-estimated on all data
    study: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)           # FittedModel on all data
    baseline_model: dict = field(default_factory=dict)  # seasonal naive on all data
    holdout: dict = field(default_factory=dict)         # weeks, actual, forecast, bounds, naive
    history: dict = field(default_factory=dict)         # weeks, units (for the plot)
    serving: dict = field(default_factory=dict)         # the serving artifact of ``model``
    plot_png: bytes = b""                                # the holdout plot
    # Serving artifact and plot are made here, in the worker processes, so the process that
    # registers does only MLflow round trips.
    train_window: tuple[str, str] = ("", "")
    holdout_weeks: int = 0
    seconds: float = 0.0


def holdout_size(n: int, configured: int) -> int:
    """The configured holdout, shortened for short histories so that at least ~60 weeks
    (a year and a bit: enough for yearly terms) remain to tune and fit on."""
    return max(4, min(configured, n // 4, n - 60))


def evaluate(spec: ModelSpec, y: np.ndarray, start: date, cut: int,
             interval_scale: list[list[float]] | None = None) -> tuple[dict, dict, np.ndarray]:
    """Fit on the weeks before ``cut`` and score the weeks from it: metrics (with interval
    coverage under ``interval_scale``), the curves for the plot, and the nonconformity scores."""
    train, actual = y[:cut], y[cut:]
    fitted = models.fit(train, start, spec)
    fitted.interval_scale = interval_scale or []
    prediction = models.forecast(fitted, len(actual))
    mean, lower, upper = prediction.bounds(0.95)
    naive = models.seasonal_naive(train, start, len(actual))
    season = SEASON if cut > SEASON else 1
    metrics = {**accuracy(actual, mean, naive, train, season),
               "coverage_80": calibration.coverage(actual, prediction, 0.8),
               "coverage_95": calibration.coverage(actual, prediction, 0.95),
               "level": float(np.mean(train[-SEASON:])), "zero_share": float(np.mean(train == 0))}
    curve = {"forecast": mean.tolist(), "lower": lower.tolist(), "upper": upper.tolist(), "naive": naive.tolist()}
    return metrics, curve, calibration.scores(actual, prediction)


def baseline_scores(y: np.ndarray, start: date, cut: int) -> np.ndarray:
    """Seasonal naive's nonconformity on the same folds as the search: its own intervals are
    calibrated too, so a baseline that serves has honest bands."""
    window, cuts = validation_plan(cut)
    baseline = ModelSpec(kind=BASELINE)
    found = []
    for fold_cut in cuts:
        prediction = models.forecast(models.fit(y[:fold_cut], start, baseline), window)
        found.append(calibration.scores(y[fold_cut:fold_cut + window], prediction))
    return np.concatenate(found)


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
        spec, study, cv_scores = search(y[:cut], start, training.trials, training.max_fourier_pairs, training.seed)
        # Coverage on the holdout is measured with the calibration from the folds alone; the
        # served model is then calibrated on folds and holdout together.
        metrics, curve, holdout_scores = evaluate(spec, y, start, cut, calibration.interval_scale(cv_scores))
        baseline = ModelSpec(kind=BASELINE)
        naive_cv = baseline_scores(y, start, cut)
        baseline_metrics, _, naive_holdout = evaluate(baseline, y, start, cut, calibration.interval_scale(naive_cv))
        champion_metrics, champion_refit = {}, {}
        if champion_spec:
            # The champion's structure refitted on the same window: the fair comparison. Also
            # re-estimated on all data: if the candidate loses, that is what serves next.
            champion = ModelSpec.from_dict(champion_spec)
            champion_metrics, _, champion_scores = evaluate(champion, y, start, cut)
            refit = models.fit(y, start, champion)
            refit.interval_scale = calibration.interval_scale(champion_scores)
            champion_refit = refit.to_dict()
        final = models.fit(y, start, spec)
        final.interval_scale = calibration.interval_scale(np.concatenate([cv_scores, holdout_scores]))
        candidate.serving = serving_forecast(final.to_dict())  # also proves the final model forecasts
        naive_final = models.fit(y, start, baseline)
        naive_final.interval_scale = calibration.interval_scale(np.concatenate([naive_cv, naive_holdout]))
        study["interval_scale"] = final.interval_scale
        candidate.status = "trained"
        candidate.spec = spec.to_dict()
        candidate.metrics = metrics
        candidate.baseline_metrics = baseline_metrics
        candidate.champion_metrics = champion_metrics
        candidate.champion_refit = champion_refit
        candidate.study = study
        candidate.model = final.to_dict()
        candidate.baseline_model = naive_final.to_dict()
        candidate.holdout = {"weeks": [w.isoformat() for w in weeks[cut:]], "actual": y[cut:].tolist(), **curve}
        candidate.train_window = (weeks[0].isoformat(), weeks[-1].isoformat())
        candidate.holdout_weeks = holdout
        candidate.plot_png = holdout_plot(candidate)
    except Exception as error:  # one ISBN's failure must not sink the others
        candidate.status = "failed"
        candidate.reason = f"{type(error).__name__}: {error}"
        candidate.study = {"traceback": traceback.format_exc(limit=5)}
    candidate.seconds = time.perf_counter() - started
    return candidate


def holdout_plot(candidate: Candidate) -> bytes:
    from shared.plots import forecast_figure, metrics_subtitle, png_bytes

    holdout, weeks = candidate.holdout, candidate.history["weeks"]
    title = f"{candidate.isbn}: {ModelSpec.from_dict(candidate.spec).label()}"
    subtitle = metrics_subtitle(date.today().isoformat(), candidate.metrics, candidate.holdout_weeks)
    return png_bytes(forecast_figure(title, weeks, candidate.history["units"], holdout["weeks"],
                                     holdout["forecast"], holdout["lower"], holdout["upper"], actual=holdout["actual"],
                                     naive=holdout["naive"], subtitle=subtitle,
                                     data_end=weeks[len(weeks) - len(holdout["weeks"]) - 1],
                                     data_end_label="training data ends"))


@dataclass
class GateResult:
    passed: bool
    reasons: list[str]


def gate(candidate: Candidate, gates: GateSettings) -> GateResult:
    reasons = breaches(candidate.metrics, gates, candidate.champion_metrics)
    return GateResult(not reasons, reasons)


def serving_forecast(model: dict) -> dict:
    """The precomputed serving artifact: mean and standard error for two years ahead, so
    the forecast function needs neither statsmodels nor a refit."""
    fitted = FittedModel.from_dict(model)
    prediction = models.forecast(fitted, SERVING_HORIZON)
    tail = fitted.history[-HISTORY_IN_ARTIFACT:]
    return {"start": prediction.start.isoformat(), "transform": prediction.transform,
            "mean": prediction.mean.tolist(), "se": prediction.se.tolist(), "interval_scale": fitted.interval_scale,
            "data_end": (fitted.start + timedelta(weeks=fitted.n_obs - 1)).isoformat(),
            "label": fitted.spec.label(),
            "history_start": (fitted.start + timedelta(weeks=fitted.n_obs - len(tail))).isoformat(),
            "history": tail}
