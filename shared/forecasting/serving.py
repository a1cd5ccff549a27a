"""Forecasts from the precomputed serving artifact: numpy only, no model, no refit."""
from __future__ import annotations

from datetime import date, timedelta

import numpy as np

from shared.forecasting.models import Forecast


def from_artifact(artifact: dict, horizon: int, level: float) -> tuple[list[date], np.ndarray, np.ndarray, np.ndarray]:
    start = date.fromisoformat(artifact["start"])
    prediction = Forecast(start, np.asarray(artifact["mean"][:horizon], float), np.asarray(artifact["se"][:horizon], float),
                          artifact["transform"], artifact.get("interval_scale", []))
    mean, lower, upper = prediction.bounds(level)
    return [start + timedelta(weeks=i) for i in range(len(mean))], mean, lower, upper
