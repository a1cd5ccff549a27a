"""Whether to retrain one ISBN, and why: a pure function of its data, its champion and the
policy, so every input can be stored beside the decision."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from shared.config import DecisionSettings
from shared.forecasting.serving import from_artifact
from shared.model_store import AliasTarget
from shared.sales import series_hash


@dataclass
class Decision:
    isbn: str
    action: str                  # train | skip
    reasons: list[str]
    inputs: dict = field(default_factory=dict)


def degradation(weeks: dict[str, int], champion: AliasTarget, forecast: dict) -> dict | None:
    """The champion's error on weeks it never saw, against its own holdout error."""
    data_end = forecast.get("data_end") or champion.tags.get("train_window_end")
    unseen = sorted(w for w in weeks if w > data_end)
    if not unseen or champion.holdout_mae is None:
        return None
    forecast_weeks, mean, _, _ = from_artifact(forecast, len(forecast["mean"]), 0.8)
    predicted = dict(zip((w.isoformat() for w in forecast_weeks), mean))
    pairs = [(weeks[w], predicted[w]) for w in unseen if w in predicted]
    if not pairs:
        return None
    actual, point = np.array(pairs, float).T
    mae = float(np.abs(actual - point).mean())
    return {"unseen_weeks": len(pairs), "unseen_mae": round(mae, 3), "holdout_mae": champion.holdout_mae,
            "ratio": round(mae / champion.holdout_mae, 3) if champion.holdout_mae > 0 else float("inf")}


def decide(isbn: str, weeks: dict[str, int], champion: AliasTarget | None, forecast: dict | None,
           policy: DecisionSettings, forced: bool, now: datetime) -> Decision:
    data_hash = series_hash(weeks)
    inputs: dict = {"data_hash": data_hash, "weeks": len(weeks), "first_week": min(weeks), "last_week": max(weeks),
                    "forced": forced}
    reasons: list[str] = []
    if forced:
        reasons.append("forced")
    if champion is None:
        reasons.append("no model yet")
        return Decision(isbn, "train", reasons, inputs)
    trained_end = champion.tags.get("train_window_end", "")
    age_days = (now - champion.created_at).total_seconds() / 86400
    inputs.update({"champion_version": champion.version, "champion_data_hash": champion.tags.get("data_hash"),
                   "champion_train_window_end": trained_end, "champion_age_days": round(age_days, 2),
                   "champion_kind": champion.tags.get("kind", "candidate")})
    if champion.tags.get("data_hash") != data_hash:
        new_weeks = sum(w > trained_end for w in weeks)
        reasons.append(f"data changed since v{champion.version} was trained: "
                       + (f"{new_weeks} new week(s) after {trained_end}" if new_weeks else "history revised"))
    if age_days > policy.max_model_age_days:
        reasons.append(f"model v{champion.version} is {age_days:.0f} days old (limit {policy.max_model_age_days})")
    measured = degradation(weeks, champion, forecast) if forecast else None
    if measured:
        inputs["degradation"] = measured
        if (measured["unseen_weeks"] >= policy.min_new_weeks_for_degradation
                and measured["ratio"] > 1 + policy.degradation_threshold):
            reasons.append(f"degraded: MAE {measured['unseen_mae']:.1f} on {measured['unseen_weeks']} unseen weeks vs "
                           f"{measured['holdout_mae']:.1f} on its holdout (+{measured['ratio'] - 1:.0%})")
    if reasons:
        return Decision(isbn, "train", reasons, inputs)
    return Decision(isbn, "skip", [f"unchanged and healthy: data matches v{champion.version}, "
                                   f"{age_days:.0f} days old"], inputs)

