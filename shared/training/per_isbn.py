"""Everything one ISBN goes through, from its weekly series to a gated candidate.

Runs in worker processes: it takes plain data, returns plain data, and never touches
MLflow or Firestore, so one ISBN's failure stays its own.
"""
from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field, replace
from datetime import date, timedelta

import numpy as np

from shared.config import GateSettings, TrainingSettings
from shared.forecasting import backtest, calibration, models
from shared.forecasting.backtest import Backtest
from shared.forecasting.gates import backtest_evidence, best_fallback, breaches, champion_evidence
from shared.forecasting.metrics import accuracy
from shared.forecasting.models import BASELINE, COMBINATION, SEASON, FittedModel, ModelSpec, plain_combination
from shared.forecasting.tuning import SearchResult, combination_weights, search
from shared.states import TrainStatus

SERVING_HORIZON = 104
HISTORY_IN_ARTIFACT = 156  # for plots next to the forecast


FALLBACKS = (BASELINE, COMBINATION)  # besides the champion refitted, when there is one
CANDIDATE, CHAMPION = "candidate", "champion"  # the backtests' names for the tuned candidate and the served version


@dataclass
class Candidate:
    isbn: str
    status: TrainStatus
    reason: str = ""
    spec: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)         # on the holdout
    champion_metrics: dict = field(default_factory=dict)
    champion_refit: dict = field(default_factory=dict)  # the champion's structure re-estimated on all data
    study: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)           # FittedModel on all data
    # Every option's backtest on the same windows (shared/forecasting/backtest.py): the
    # candidate, each fallback, and the champion's structure when there is one.
    backtests: dict[str, dict] = field(default_factory=dict)
    fallbacks: dict[str, dict] = field(default_factory=dict)  # name -> {"model": on all data, "metrics": holdout}
    holdout: dict = field(default_factory=dict)         # weeks, actual, forecast, bounds, naive
    history: dict = field(default_factory=dict)         # weeks, units (for the plot)
    serving: dict = field(default_factory=dict)         # the serving artifact of ``model``
    plot_png: bytes = b""                                # the holdout plot
    # Serving artifact and plot are made here, in the worker processes, so the process that
    # registers does only MLflow round trips.
    train_window: tuple[str, str] = ("", "")
    holdout_weeks: int = 0
    seconds: float = 0.0

    def backtest(self, option: str) -> Backtest:
        return Backtest.from_dict(self.backtests[option])


def holdout_size(n: int, configured: int) -> int:
    """The configured holdout, shortened for short histories so that at least ~60 weeks
    (a year and a bit: enough for yearly terms) remain to tune and fit on."""
    return max(4, min(configured, n // 4, n - 60))


def holdout_metrics(y: np.ndarray, start: date, cut: int, prediction: models.Forecast) -> tuple[dict, dict]:
    """Metrics of a forecast of the weeks from ``cut`` (with interval coverage under its
    calibration) and the curves for the plot."""
    train, actual = y[:cut], y[cut:]
    mean, lower, upper = prediction.bounds(0.95)
    naive = models.seasonal_naive(train, start, len(actual))
    season = SEASON if cut > SEASON else 1
    metrics = {**accuracy(actual, mean, naive, train, season),
               "coverage_80": calibration.coverage(actual, prediction, 0.8),
               "coverage_95": calibration.coverage(actual, prediction, 0.95),
               "level": float(np.mean(train[-SEASON:])), "zero_share": float(np.mean(train == 0))}
    curve = {"forecast": mean.tolist(), "lower": lower.tolist(), "upper": upper.tolist(), "naive": naive.tolist()}
    return metrics, curve


def backtested(y: np.ndarray, start: date, spec: ModelSpec, plan: list[backtest.Window],
               known: list[models.Forecast] | None = None) -> tuple[Backtest, dict, dict, FittedModel]:
    """One option through every window: its backtest, its holdout metrics (coverage under the
    calibration of the folds alone) and curves, and its model on all data, calibrated on
    every window."""
    found, forecasts = backtest.run(y, start, spec, plan, known)
    folds = len(found.scores) - found.window_weeks[-1]
    exponent = calibration.horizon_exponent(spec)
    forecasts[-1].interval_scale, forecasts[-1].horizon_shape = calibration.calibrate(
        found.scores[:folds], found.horizons[:folds], exponent)
    metrics, curve = holdout_metrics(y, start, plan[-1].cut, forecasts[-1])
    final = models.fit(y, start, spec)
    final.interval_scale, final.horizon_shape = calibration.calibrate(found.scores, found.horizons, exponent)
    return found, metrics, curve, final


def reweighed(y: np.ndarray, start: date, result: SearchResult, plan: list[backtest.Window],
              metric: str) -> tuple[ModelSpec, list[models.Forecast]]:
    """A combination's members re-weighed on every backtest window, the holdout included,
    and its forecast of each window with those weights. The holdout's 26 weeks are the
    latest and longest evidence of which member follows the title now (the folds are a few
    weeks each); the price is that the gates judge a spec whose weights have seen the
    holdout (its members and their parameters were chosen on the folds alone)."""
    runs = [backtest.run(y, start, member, plan, known) for member, known in zip(result.spec.members, result.member_folds)]
    weights = combination_weights([found.rmse if metric == "rmse" else found.mae for found, _ in runs])
    return (replace(result.spec, weights=weights),
            [models.combine([forecasts[i] for _, forecasts in runs], weights) for i in range(len(plan))])


def train_isbn(isbn: str, weeks: list[date], units: list[float], training: TrainingSettings,
               champion_spec: dict | None = None) -> Candidate:
    started = time.perf_counter()
    y = np.asarray(units, float)
    start = weeks[0]
    candidate = Candidate(isbn=isbn, status=TrainStatus.REFUSED,
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
        plan = backtest.windows(cut, holdout)
        result = search(y[:cut], start, training.trials, training.max_fourier_pairs, training.seed)
        spec, study, known = result.spec, result.summary, result.folds
        if result.member_folds:
            spec, known = reweighed(y, start, result, plan, study["cv_metric"])
            study["fold_weights"], study["best_params"] = list(result.spec.weights), spec.to_dict()
        found, metrics, curve, final = backtested(y, start, spec, plan, known)
        candidate.backtests[CANDIDATE] = found.to_dict()
        for name, option in ((BASELINE, ModelSpec(kind=BASELINE)), (COMBINATION, plain_combination(plan[0].cut))):
            option_backtest, option_metrics, _, option_final = backtested(y, start, option, plan)
            candidate.backtests[name] = option_backtest.to_dict()
            candidate.fallbacks[name] = {"model": option_final.to_dict(), "metrics": option_metrics}
        if champion_spec:
            # The champion's structure refitted on the same windows: the fair comparison. Also
            # re-estimated on all data: if the candidate loses, that may be what serves next.
            champion_backtest, candidate.champion_metrics, _, refit = backtested(
                y, start, ModelSpec.from_dict(champion_spec), plan)
            candidate.backtests[CHAMPION] = champion_backtest.to_dict()
            candidate.champion_refit = refit.to_dict()
        candidate.serving = serving_forecast(final.to_dict())  # also proves the final model forecasts
        study["interval_scale"], study["horizon_shape"] = final.interval_scale, final.horizon_shape
        candidate.status = TrainStatus.TRAINED
        candidate.spec = spec.to_dict()
        candidate.metrics = metrics
        candidate.study = study
        candidate.model = final.to_dict()
        candidate.holdout = {"weeks": [w.isoformat() for w in weeks[cut:]], "actual": y[cut:].tolist(), **curve}
        candidate.train_window = (weeks[0].isoformat(), weeks[-1].isoformat())
        candidate.holdout_weeks = holdout
        candidate.plot_png = holdout_plot(candidate)
    except Exception as error:  # one ISBN's failure must not sink the others
        candidate.status = TrainStatus.FAILED
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
    evidence: dict[str, float]  # what the rules read from the backtests, kept with the metrics
    fallback: str = ""          # what serves instead when refused: champion | seasonal_naive | combination
    fallback_reason: str = ""


def gate(candidate: Candidate, gates: GateSettings) -> GateResult:
    """The rules on the candidate's backtests; when it is refused, the best robust option."""
    ours = candidate.backtest(CANDIDATE)
    evidence = backtest_evidence(ours, candidate.backtest(BASELINE), gates)
    champion = champion_evidence(ours, candidate.backtest(CHAMPION), gates) if CHAMPION in candidate.backtests else None
    reasons = breaches({**candidate.metrics, **evidence}, gates, champion)
    if not reasons:
        return GateResult(True, [], evidence)
    options = [*([CHAMPION] if champion else []), *FALLBACKS]  # on a tie the champion serves on: no alias move
    fallback, why = best_fallback({name: candidate.backtest(name) for name in options}, gates, BASELINE, ours)
    return GateResult(False, reasons, evidence, fallback, why)


def serving_forecast(model: dict) -> dict:
    """The precomputed serving artifact: mean and standard error for two years ahead, so
    the forecast function needs neither statsmodels nor a refit."""
    fitted = FittedModel.from_dict(model)
    prediction = models.forecast(fitted, SERVING_HORIZON)
    tail = fitted.history[-HISTORY_IN_ARTIFACT:]
    return {"start": prediction.start.isoformat(), "transform": prediction.transform,
            "mean": prediction.mean.tolist(), "se": prediction.se.tolist(), "interval_scale": fitted.interval_scale,
            "horizon_shape": fitted.horizon_shape,
            "data_end": (fitted.start + timedelta(weeks=fitted.n_obs - 1)).isoformat(),
            "label": fitted.spec.label(),
            "history_start": (fitted.start + timedelta(weeks=fitted.n_obs - len(tail))).isoformat(),
            "history": tail}
