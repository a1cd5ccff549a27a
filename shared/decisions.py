"""Whether to skip, refresh or retrain one ISBN, and why: a pure function of its data, its
champion and the policy, so every input can be stored beside the decision."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from shared.config import DecisionSettings
from shared.forecasting.serving import from_artifact
from shared.model_store import AliasTarget
from shared.version_tags import Tag, VersionKind
from shared.sales import series_hash


SKIP, REFRESH, TRAIN = "skip", "refresh", "train"  # train: re-tune from scratch (a retrain)


@dataclass
class Decision:
    isbn: str
    action: str                  # SKIP | REFRESH | TRAIN
    reasons: list[str]
    inputs: dict = field(default_factory=dict)


def degradation(weeks: dict[str, int], champion: AliasTarget, forecast: dict) -> dict | None:
    """The served model's error on weeks it never saw, accumulated since its parameters were
    fitted (each refresh carries the running totals in its tags), against its holdout error."""
    data_end = forecast.get("data_end") or champion.tags.get(Tag.TRAIN_WINDOW_END)
    unseen = sorted(w for w in weeks if w > data_end)
    carried_weeks = int(champion.tags.get(Tag.UNSEEN_WEEKS, 0))
    carried_error = float(champion.tags.get(Tag.UNSEEN_ABS_ERROR, 0.0))
    if champion.holdout_mae is None:
        return None
    forecast_weeks, mean, _, _ = from_artifact(forecast, len(forecast["mean"]), 0.8)
    predicted = dict(zip((w.isoformat() for w in forecast_weeks), mean))
    pairs = [(weeks[w], predicted[w]) for w in unseen if w in predicted]
    if not pairs and not carried_weeks:
        return None
    errors = np.abs(np.subtract(*np.array(pairs, float).T)) if pairs else np.array([])
    total_weeks, total_error = carried_weeks + len(pairs), carried_error + float(errors.sum())
    mae = total_error / total_weeks
    return {"unseen_weeks": total_weeks, "unseen_abs_error": round(total_error, 3), "new_weeks_scored": len(pairs),
            "unseen_mae": round(mae, 3), "holdout_mae": champion.holdout_mae,
            "ratio": round(mae / champion.holdout_mae, 3) if champion.holdout_mae > 0 else float("inf")}


def parameter_age_days(tags: dict, created_at: datetime, now: datetime) -> float:
    """How old a version's parameters are: since they were estimated (``fitted_at``, which
    refreshes carry over), not since the version was registered."""
    fitted_at = tags.get(Tag.FITTED_AT)
    return (now - (datetime.fromisoformat(fitted_at) if fitted_at else created_at)).total_seconds() / 86400


def decide(isbn: str, weeks: dict[str, int], champion: AliasTarget | None, forecast: dict | None,
           policy: DecisionSettings, forced: bool, now: datetime) -> Decision:
    """skip: the data is what the served forecast is conditioned on, and the model is healthy;
    refresh: only new weeks after it, for a healthy model (baselines included): keep the fitted
    parameters and condition them on the new weeks; train: anything else, with the reasons."""
    data_hash = series_hash(weeks)
    inputs: dict = {"data_hash": data_hash, "weeks": len(weeks), "first_week": min(weeks), "last_week": max(weeks),
                    "forced": forced}
    reasons: list[str] = []
    if forced:
        reasons.append("forced")
    if champion is None:
        reasons.append("no model yet")
        return Decision(isbn, TRAIN, reasons, inputs)
    data_end = (forecast or {}).get("data_end") or champion.tags.get(Tag.TRAIN_WINDOW_END, "")
    age_days = parameter_age_days(champion.tags, champion.created_at, now)
    inputs.update({"champion_version": champion.version, "champion_data_hash": champion.tags.get(Tag.DATA_HASH),
                   "champion_data_end": data_end, "champion_age_days": round(age_days, 2),
                   "champion_kind": champion.tags.get(Tag.KIND, VersionKind.CANDIDATE)})
    new_weeks = sum(w > data_end for w in weeks)
    appended = False
    if champion.tags.get(Tag.DATA_HASH) != data_hash:
        conditioned = {w: u for w, u in weeks.items() if w <= data_end}
        appended = bool(new_weeks) and series_hash(conditioned) == champion.tags.get(Tag.DATA_HASH)
        if not appended:
            reasons.append(f"history revised since v{champion.version} (its data up to {data_end} changed)")
    if age_days > policy.max_model_age_days:
        reasons.append(f"parameters of v{champion.version} are {age_days:.0f} days old "
                       f"(limit {policy.max_model_age_days})")
    measured = degradation(weeks, champion, forecast) if forecast else None
    if measured:
        inputs["degradation"] = measured
        if (measured["unseen_weeks"] >= policy.min_new_weeks_for_degradation
                and measured["ratio"] > 1 + policy.degradation_threshold):
            reasons.append(f"degraded: MAE {measured['unseen_mae']:.1f} on {measured['unseen_weeks']} unseen weeks vs "
                           f"{measured['holdout_mae']:.1f} on its holdout (+{measured['ratio'] - 1:.0%})")
    if reasons:
        return Decision(isbn, TRAIN, reasons, inputs)
    if appended:
        inputs["refreshes"] = champion.version
        return Decision(isbn, REFRESH, [f"{new_weeks} new week(s) after {data_end} for a healthy v{champion.version}: "
                                        "refreshed with its fitted parameters"], inputs)
    return Decision(isbn, SKIP, [f"unchanged and healthy: data matches v{champion.version}, "
                                 f"parameters {age_days:.0f} days old"], inputs)
