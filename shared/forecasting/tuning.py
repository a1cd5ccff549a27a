"""Hyper-parameter search with Optuna: seeded TPE, rolling-origin validation inside the
training window (the holdout stays unseen), median pruning after the first fold."""
from __future__ import annotations

from datetime import date, timedelta

import numpy as np

from shared.forecasting.models import ModelSpec, cap_fourier, point_forecast


def validation_window(train_len: int) -> int:
    return max(4, min(26, train_len // 6))


def search(y: np.ndarray, start: date, trials: int, max_fourier: int, seed: int) -> tuple[ModelSpec, dict]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    window = validation_window(len(y))
    fourier_cap = cap_fourier(len(y) - 2 * window, max_fourier)
    folds = [len(y) - 2 * window, len(y) - window]

    def objective(trial: "optuna.Trial") -> float:
        spec = ModelSpec(p=trial.suggest_int("p", 0, 3), d=trial.suggest_int("d", 0, 1),
                         q=trial.suggest_int("q", 0, 2), fourier=trial.suggest_int("fourier", 0, fourier_cap),
                         holiday=trial.suggest_categorical("holiday", [True, False]) if fourier_cap else False,
                         transform=trial.suggest_categorical("transform", ["log1p", "none"]))
        errors = []
        for step, cut in enumerate(folds):
            try:
                predicted = point_forecast(y[:cut], start, spec, window)
            except (FloatingPointError, ValueError, np.linalg.LinAlgError):
                raise optuna.TrialPruned("fit failed")
            errors.append(float(np.abs(y[cut:cut + window] - predicted).mean()))
            trial.report(float(np.mean(errors)), step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return float(np.mean(errors))

    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0))
    # The classic default is a sensible first guess and anchors the search.
    study.enqueue_trial({"p": 1, "d": 1, "q": 1, "fourier": min(3, fourier_cap), "transform": "log1p",
                        **({"holiday": True} if fourier_cap else {})})
    study.optimize(objective, n_trials=trials)
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not completed:
        raise RuntimeError(f"no Optuna trial of {trials} produced a model")
    best = ModelSpec(**study.best_params)
    summary = {
        "trials": len(study.trials),
        "completed": len(completed),
        "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials),
        "best_value_mae": study.best_value,
        "best_params": study.best_params,
        "validation_window_weeks": window,
        "validation_folds_end": [(start + timedelta(weeks=c + window - 1)).isoformat() for c in folds],
        "seed": seed,
        "history": [{"number": t.number, "state": t.state.name, "value": t.value, "params": t.params}
                    for t in study.trials],
    }
    return best, summary
