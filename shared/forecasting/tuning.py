"""Model search with Optuna: per ISBN, a seeded TPE study chooses the model family and its
hyper-parameters by rolling-origin cross-validation inside the training window (the
holdout stays unseen), with median pruning after each fold. The best configuration of each
of the top four families is then combined, each weighted by the inverse square of its fold
error, scored on the same folds, and chosen unless it is more than a quarter worse than the
best single model: the best of many trials on the same few weeks looks better than it is,
and on real sales a combination is the safer bet (bench/README.md). The trainer then
re-weighs the members on every backtest window, holdout included
(shared/training/per_isbn.py::reweighed); ``cv_score`` stays the search's, on the folds.

The families a study may choose depend on what the history can identify: a seasonal
difference at 52 needs a year and a half in the shortest fold, a 52-week ETS season or a
deseasonalised Theta two years, Fourier terms most of a year (so 52-104-week titles still
get yearly seasonality), and the intermittent-demand family only titles with zero weeks.
Slow and intermittent titles are scored by RMSE (MAE would reward forecasting 0 for a title
that sells in 40% of its weeks); every other title by MAE, which the gates also use.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Sequence

import numpy as np

from shared.forecasting import models
from shared.forecasting.models import COMBINATION, SEASON, ModelSpec

FOLDS = 3
COMBINE_AT_MOST = 4  # the best configuration of each of the top families
COMBINATION_TOLERANCE = 1.25
INTERMITTENT_ZERO_SHARE = 0.3
FIT_ERRORS = (FloatingPointError, ValueError, np.linalg.LinAlgError, IndexError)


@dataclass(frozen=True)
class SearchSpace:
    families: tuple[str, ...]
    max_fourier: int
    seasonal_ets: bool
    seasonal_theta: bool

    @classmethod
    def for_history(cls, shortest_fold: int, zero_share: float, max_fourier: int) -> "SearchSpace":
        families = ["harmonic_arima", "ets", "theta"]
        if shortest_fold >= SEASON + 8:  # a seasonal difference leaves at least 8 weeks to fit
            families.insert(1, "sarima")
        if zero_share >= 0.1:
            families.append("tsb")
        # Three quarters of a year identify one or two harmonics; a full year a few more.
        fourier = (0 if shortest_fold < 39 else min(max_fourier, 2) if shortest_fold < SEASON
                   else min(max_fourier, 4) if shortest_fold < SEASON + 26 else max_fourier)
        return cls(tuple(families), fourier, shortest_fold >= 2 * SEASON + 4, shortest_fold >= 2 * SEASON)


@dataclass
class SearchResult:
    spec: ModelSpec
    summary: dict                    # for the registry: family, parameters, CV scores, every trial
    folds: list[models.Forecast]     # the chosen spec's forecast of each fold
    member_folds: list[list[models.Forecast]] = field(default_factory=list)  # a combination's, per member


def combination_weights(errors: Sequence[float]) -> tuple[float, ...]:
    """Members' weights from their errors on the same unseen weeks: the inverse square
    (Bates-Granger), so a member twice as far off counts a quarter as much. On the 87
    design series of bench/real_accuracy.py, weighing on every backtest window lowered the
    served mean MASE from 0.839 (equal weights) to 0.826; the inverse error alone 0.832."""
    inverse = 1 / np.maximum(np.asarray(errors, float), 1e-9) ** 2  # a perfect member takes it all
    return tuple(round(float(w), 4) for w in inverse / inverse.sum())


def validation_plan(train_len: int) -> tuple[int, list[int]]:
    """The forecast window of each fold and where each fold's training data ends."""
    window = max(4, min(13, train_len // 10))
    return window, [train_len - window * (FOLDS - i) for i in range(FOLDS)]


def suggest(trial, space: SearchSpace) -> ModelSpec:
    kind = trial.suggest_categorical("kind", list(space.families))
    transform = trial.suggest_categorical(f"{kind}.transform", ["log1p", "none"]) if kind != "tsb" else "none"
    if kind == "harmonic_arima":
        return ModelSpec(kind=kind, transform=transform, p=trial.suggest_int(f"{kind}.p", 0, 3),
                         d=trial.suggest_int(f"{kind}.d", 0, 1), q=trial.suggest_int(f"{kind}.q", 0, 2),
                         fourier=trial.suggest_int(f"{kind}.fourier", 0, space.max_fourier),
                         holiday=trial.suggest_categorical(f"{kind}.holiday", [True, False]) if space.max_fourier else False)
    if kind == "sarima":
        return ModelSpec(kind=kind, transform=transform, p=trial.suggest_int(f"{kind}.p", 0, 2),
                         d=trial.suggest_int(f"{kind}.d", 0, 1), q=trial.suggest_int(f"{kind}.q", 0, 2), fourier=0,
                         seasonal_order=(0, 1, 0, SEASON))
    if kind == "ets":
        trend = trial.suggest_categorical(f"{kind}.trend", ["none", "add"])
        return ModelSpec(kind=kind, transform=transform, trend=trend,
                         damped=trial.suggest_categorical(f"{kind}.damped", [True, False]) if trend == "add" else False,
                         seasonal=trial.suggest_categorical(f"{kind}.seasonal", [True, False]) if space.seasonal_ets else False)
    if kind == "theta":
        return ModelSpec(kind=kind, transform=transform,
                         seasonal=trial.suggest_categorical(f"{kind}.seasonal", [True, False]) if space.seasonal_theta else False)
    return ModelSpec(kind=kind, transform="none", alpha=trial.suggest_float(f"{kind}.alpha", 0.02, 0.5, log=True),
                     beta=trial.suggest_float(f"{kind}.beta", 0.02, 0.5, log=True))


def anchors(space: SearchSpace) -> list[dict]:
    """One classic configuration per family, tried first: every family gets a fair look
    before TPE concentrates on the promising ones."""
    defaults = {
        "harmonic_arima": {"harmonic_arima.transform": "log1p", "harmonic_arima.p": 1, "harmonic_arima.d": 1,
                           "harmonic_arima.q": 1, "harmonic_arima.fourier": min(3, space.max_fourier),
                           **({"harmonic_arima.holiday": True} if space.max_fourier else {})},
        "sarima": {"sarima.transform": "log1p", "sarima.p": 1, "sarima.d": 0, "sarima.q": 1},
        "ets": {"ets.transform": "log1p", "ets.trend": "add", "ets.damped": True,
                **({"ets.seasonal": True} if space.seasonal_ets else {})},
        "theta": {"theta.transform": "log1p", **({"theta.seasonal": True} if space.seasonal_theta else {})},
        "tsb": {"tsb.alpha": 0.1, "tsb.beta": 0.1},
    }
    return [{"kind": family, **defaults[family]} for family in space.families]


def search(y: np.ndarray, start: date, trials: int, max_fourier: int, seed: int) -> SearchResult:
    """The chosen spec with what the backtests reuse: its forecast of each fold (their first
    windows) and, for a combination, each member's."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    window, cuts = validation_plan(len(y))
    zero_share = float(np.mean(y == 0))
    intermittent = zero_share >= INTERMITTENT_ZERO_SHARE
    space = SearchSpace.for_history(cuts[0], zero_share, max_fourier)

    def objective(trial: "optuna.Trial") -> float:
        spec = suggest(trial, space)
        errors, predictions = [], []
        for step, cut in enumerate(cuts):
            try:
                prediction = models.forecast(models.fit(y[:cut], start, spec), window)
            except FIT_ERRORS:
                raise optuna.TrialPruned("fit failed")
            predictions.append(prediction)
            errors.append(fold_error(y[cut:cut + window], prediction))
            trial.report(float(np.mean(errors)), step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        trial.set_user_attr("predictions", predictions)  # in memory only: for combination and calibration
        trial.set_user_attr("fold_errors", errors)
        return float(np.mean(errors))

    def fold_error(actual: np.ndarray, prediction: models.Forecast) -> float:
        error = actual - prediction.bounds(0.5)[0]
        return float(np.sqrt(np.mean(error ** 2)) if intermittent else np.mean(np.abs(error)))

    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=len(space.families), n_warmup_steps=0))
    for anchor in anchors(space):
        study.enqueue_trial(anchor)
    study.optimize(objective, n_trials=max(trials, len(space.families)))
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not completed:
        raise RuntimeError(f"no Optuna trial of {len(study.trials)} produced a model")
    leaders: dict[str, optuna.trial.FrozenTrial] = {}
    for t in sorted(completed, key=lambda t: t.value):
        leaders.setdefault(t.params["kind"], t)
    best = study.best_trial
    spec, predictions, errors = spec_from_params(best.params), best.user_attrs["predictions"], best.user_attrs["fold_errors"]
    members, member_folds = list(leaders.values())[:COMBINE_AT_MOST], []
    if len(members) >= 2:
        weights = combination_weights([m.value for m in members])
        combined = [models.combine([m.user_attrs["predictions"][i] for m in members], weights) for i in range(len(cuts))]
        combined_errors = [fold_error(y[cut:cut + window], p) for cut, p in zip(cuts, combined)]
        # Selection on a few folds is noisy; a combination is the safer choice unless clearly worse.
        if np.mean(combined_errors) <= best.value * COMBINATION_TOLERANCE:
            spec = ModelSpec(kind=COMBINATION, members=tuple(spec_from_params(m.params) for m in members),
                             weights=weights)
            predictions, errors = combined, combined_errors
            member_folds = [m.user_attrs["predictions"] for m in members]
    summary = {
        "family": spec.kind,
        "trials": len(study.trials),
        "completed": len(completed),
        "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials),
        "cv_metric": "rmse" if intermittent else "mae",
        "cv_score": float(np.mean(errors)),
        "cv_fold_errors": errors,
        "cv_best_by_family": {family: t.value for family, t in leaders.items()},
        "families_searched": list(space.families),
        "best_params": spec.to_dict(),
        "validation_window_weeks": window,
        "validation_folds_end": [(start + timedelta(weeks=c + window - 1)).isoformat() for c in cuts],
        "zero_share": zero_share,
        "seed": seed,
        "history": [{"number": t.number, "state": t.state.name, "value": t.value, "params": t.params}
                    for t in study.trials],
    }
    return SearchResult(spec, summary, predictions, member_folds)


def spec_from_params(params: dict) -> ModelSpec:
    kind = params["kind"]
    values = {name.split(".", 1)[1]: value for name, value in params.items() if name.startswith(f"{kind}.")}
    if kind == "sarima":
        values["seasonal_order"] = (0, 1, 0, SEASON)
        values["fourier"] = 0
    if kind == "tsb":
        values["transform"] = "none"
    return ModelSpec(kind=kind, **values)
