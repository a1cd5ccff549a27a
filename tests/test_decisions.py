"""The skip / refresh / retrain policy as a pure function."""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

from shared.config import DecisionSettings
from shared.decisions import decide
from shared.model_store import AliasTarget
from shared.sales import series_hash

NOW = datetime(2026, 11, 24, tzinfo=timezone.utc)
POLICY = DecisionSettings(max_model_age_days=35, degradation_threshold=0.25, min_new_weeks_for_degradation=4)


def weeks(n: int, end: date = date(2026, 11, 16), level: float = 100) -> dict[str, int]:
    return {(end - timedelta(weeks=n - 1 - i)).isoformat(): int(level) for i in range(n)}


def champion(data: dict[str, int], age_days: float = 3, holdout_mae: float = 10.0) -> tuple[AliasTarget, dict]:
    end = max(data)
    target = AliasTarget(isbn="x", model_name="m", alias="champion", version="4", run_id="r",
                         created_at=NOW - timedelta(days=age_days),
                         tags={"data_hash": series_hash(data), "train_window_end": end, "metric.mae": str(holdout_mae)})
    start = (date.fromisoformat(end) + timedelta(weeks=1)).isoformat()
    forecast = {"start": start, "transform": "none", "mean": [100.0] * 104, "se": [5.0] * 104, "data_end": end}
    return target, forecast


def test_unchanged_healthy_book_is_skipped_with_its_reason():
    data = weeks(100)
    d = decide("x", data, *champion(data), POLICY, forced=False, now=NOW)
    assert d.action == "skip" and "unchanged and healthy" in d.reasons[0]
    assert d.inputs["champion_version"] == "4" and d.inputs["data_hash"] == d.inputs["champion_data_hash"]


def test_new_weeks_for_a_healthy_model_refresh_it():
    trained_on = weeks(100)
    now_data = {**trained_on, "2026-11-23": 100, "2026-11-30": 100}
    d = decide("x", now_data, *champion(trained_on), POLICY, forced=False, now=NOW)
    assert d.action == "refresh" and d.reasons[0].startswith("2 new week(s) after 2026-11-16 for a healthy v4")
    assert d.inputs["refreshes"] == "4" and d.inputs["degradation"]["unseen_weeks"] == 2


def test_errors_on_unseen_weeks_accumulate_across_refreshes():
    """One new week a time never reaches the 4 weeks a degradation needs on its own: the
    totals carried by each refresh do."""
    trained_on = weeks(100)
    target, forecast = champion(trained_on)
    target.tags.update({"unseen_weeks": "3", "unseen_abs_error": "150"})  # three refreshes, 50 off each
    d = decide("x", {**trained_on, "2026-11-23": 160}, target, forecast, POLICY, forced=False, now=NOW)
    assert d.inputs["degradation"]["unseen_weeks"] == 4 and d.inputs["degradation"]["unseen_mae"] == 52.5
    assert d.action == "train" and d.reasons[0].startswith("degraded: MAE 52.5 on 4 unseen weeks")


def test_age_counts_from_when_the_parameters_were_fitted():
    data = weeks(100)
    target, forecast = champion(data, age_days=1)  # a refresh made yesterday
    target.tags["fitted_at"] = (NOW - timedelta(days=50)).isoformat()  # of parameters fitted 50 days ago
    d = decide("x", {**data, "2026-11-23": 100}, target, forecast, POLICY, forced=False, now=NOW)
    assert d.action == "train" and "50 days old" in d.reasons[0]


def test_revised_history_retrains():
    trained_on = weeks(100)
    revised = {**trained_on, min(trained_on): 7}
    d = decide("x", revised, *champion(trained_on), POLICY, forced=False, now=NOW)
    assert d.action == "train" and "history revised" in d.reasons[0]


def test_old_model_retrains():
    data = weeks(100)
    d = decide("x", data, *champion(data, age_days=40), POLICY, forced=False, now=NOW)
    assert d.action == "train" and "40 days old" in d.reasons[0]


def test_degradation_is_measured_on_unseen_weeks():
    trained_on = weeks(100)
    later = {**trained_on, **{(date(2026, 11, 23) + timedelta(weeks=i)).isoformat(): 160 for i in range(5)}}
    d = decide("x", later, *champion(trained_on), POLICY, forced=False, now=NOW)
    assert d.inputs["degradation"]["unseen_weeks"] == 5 and d.inputs["degradation"]["unseen_mae"] == 60
    assert any(r.startswith("degraded: MAE 60.0 on 5 unseen weeks") for r in d.reasons)


def test_no_model_and_forced_always_train():
    data = weeks(60)
    assert decide("x", data, None, None, POLICY, forced=False, now=NOW).reasons == ["no model yet"]
    assert decide("x", data, *champion(data), POLICY, forced=True, now=NOW).reasons == ["forced"]
