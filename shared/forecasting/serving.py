"""Forecasts from the precomputed serving artifact: numpy only, no model, no refit."""
from __future__ import annotations

from datetime import date, timedelta

import numpy as np

from shared.forecasting.models import Forecast


def from_artifact(artifact: dict, horizon: int, level: float) -> tuple[list[date], np.ndarray, np.ndarray, np.ndarray]:
    start = date.fromisoformat(artifact["start"])
    prediction = Forecast(start, np.asarray(artifact["mean"][:horizon], float), np.asarray(artifact["se"][:horizon], float),
                          artifact["transform"], artifact.get("interval_scale", []), artifact.get("horizon_shape", []))
    mean, lower, upper = prediction.bounds(level)
    return [start + timedelta(weeks=i) for i in range(len(mean))], mean, lower, upper


VALIDATION_WEEKS = 26
PLAUSIBLE_FACTOR = 10  # a forecast week above ten times the best week of the history is not believed


def serving_problems(artifact: dict) -> list[str]:
    """What is wrong with a serving artifact as the forecast function would serve it: shape,
    finiteness, ordered bounds, a start right after its data, and no week above ten times the
    ISBN's best week. Served units are clipped at 0, and a forecast of nothing can be right
    (a Christmas title in spring), so neither is a fault. Empty when it can be served."""
    try:
        horizon = min(VALIDATION_WEEKS, len(artifact["mean"]))
        weeks, mean, lower80, upper80 = from_artifact(artifact, horizon, 0.8)
        _, _, lower95, upper95 = from_artifact(artifact, horizon, 0.95)
        data_end = date.fromisoformat(artifact["data_end"])
        history = np.asarray(artifact.get("history", []), float)
    except (KeyError, TypeError, ValueError) as error:
        return [f"the serving artifact cannot be read: {type(error).__name__}: {error}"]
    problems = []
    if horizon == 0 or len(artifact["se"]) < horizon:
        problems.append(f"{horizon} forecast weeks with {len(artifact['se'])} standard errors")
    bands = np.stack([mean, lower80, upper80, lower95, upper95])
    if not np.all(np.isfinite(bands)):
        problems.append("non-finite values in the forecast or its intervals")
    elif not (np.all(lower95 <= lower80) and np.all(lower80 <= mean) and np.all(mean <= upper80)
              and np.all(upper80 <= upper95)):
        problems.append("interval bounds out of order")
    if weeks and weeks[0] != data_end + timedelta(weeks=1):
        problems.append(f"starts {weeks[0]}, not the week after its data ({data_end})")
    if len(history) and np.all(np.isfinite(mean)):
        ceiling = PLAUSIBLE_FACTOR * max(float(history.max()), 1.0)
        if mean.max() > ceiling:
            problems.append(f"implausible: {mean.max():,.0f} units in a week against a best week of {history.max():,.0f}")
    return problems
