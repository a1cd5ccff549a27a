"""Fresh forecasts at low cost, through the bucket: a first upload trains, new weeks
refresh the served model with its fitted parameters (no re-tuning), an identical re-upload
under another name skips; the served forecast always starts the week after the newest week."""
from __future__ import annotations

import re
from datetime import date, timedelta

import pytest

from shared import model_store, registry
from shared.version_tags import Tag
from shared.runstore import RunStore
from tests.helpers import run_training, sample, write_csv
from tests.test_end_to_end import finished_runs, wait_for
from tests.test_trigger import upload
from shared.layout import Collection

pytestmark = pytest.mark.usefixtures("mlflow_server")


def served_start(cfg, isbn: str) -> date:
    target = model_store.resolve(cfg, isbn)
    return date.fromisoformat(model_store.serving_forecast(cfg, target.run_id)["start"])


def test_upload_then_new_weeks_then_a_resend_train_refresh_skip(cfg, probe, trigger_function):
    store = RunStore(cfg)
    frame = sample(2, years=2.5, seed=43)
    isbns = sorted(frame["isbn"].unique())
    cut = frame["week"].max() - timedelta(weeks=26)
    history, increment = frame[frame["week"] <= cut], frame[frame["week"] > cut]

    upload(cfg, "history.csv", history)
    (first,) = wait_for(lambda: finished_runs(store, 1), 240, "the first training run")
    assert first["status"] == "succeeded", first.get("error")
    trained = {i: model_store.resolve(cfg, i) for i in isbns}
    assert all(served_start(cfg, i) == cut + timedelta(weeks=1) for i in isbns)

    # The run ends when its leases are released; an upload before that would be a follow-up.
    wait_for(lambda: not list(store.col(Collection.LEASES).limit(1).stream()), 30, "the first run's leases")
    upload(cfg, "increment.csv", increment)  # 26 new weeks, nothing before them changed
    runs = wait_for(lambda: finished_runs(store, 2), 120, "the refresh run")
    refresh_run = next(r for r in runs if r["run_id"] != first["run_id"])
    assert refresh_run["status"] == "succeeded", refresh_run.get("error")
    decisions = {d["isbn"]: d for d in store.decisions() if d["cause"].get("object", "").endswith("increment.csv")}
    assert {d["action"] for d in decisions.values()} == {"refresh"}
    assert all("26 new week(s)" in d["reasons"][0] for d in decisions.values())
    client = registry.client(cfg)
    for isbn in isbns:
        served = model_store.resolve(cfg, isbn)
        assert served.tags[Tag.KIND] == "refresh" and served.tags[Tag.REFRESHES] == trained[isbn].version
        assert served.tags[Tag.FITTED_AT] == trained[isbn].tags[Tag.FITTED_AT]  # the same fitted parameters
        assert served.tags[Tag.DATA_HASH] == store.get("series", isbn)["data_hash"]
        assert served_start(cfg, isbn) == frame["week"].max() + timedelta(weeks=1)
        assert store.alias_history(isbn)[-1]["action"] == "refresh"
        original = client.get_model_version(cfg.model_name(isbn), trained[isbn].version)
        assert int(served.tags[Tag.UNSEEN_WEEKS]) == 26 and original.tags["metric.mae"] == served.tags["metric.mae"]

    upload(cfg, "increment-resent.csv", increment)  # the same data again, under another name
    resent = wait_for(lambda: [d for d in store.decisions() if d["cause"].get("object", "").endswith("resent.csv")]
                      or None, 30, "decisions on the resend")
    assert {d["action"] for d in resent} == {"skip"}
    assert len(store.runs()) == 2


def test_a_quarantined_retrain_re_estimates_the_champion_so_a_fresh_forecast_is_served(cfg, probe, tmp_path):
    frame = sample(1, years=2.5, seed=47)
    isbn = frame["isbn"].iloc[0]
    history = frame[frame["week"] <= frame["week"].max() - timedelta(weeks=8)]
    _, first = run_training(cfg, [write_csv(history, tmp_path, "history.csv")])
    served = model_store.resolve(cfg, isbn)
    assert first["results"][0]["version"] == served.version

    impossible = cfg.model_copy(update={"gates": cfg.gates.model_copy(update={"max_rmse": 0.001})})
    _, second = run_training(impossible, [write_csv(history, tmp_path, "history.csv"),
                                          write_csv(frame, tmp_path, "all.csv")])
    result = second["results"][0]
    now_served = model_store.resolve(cfg, isbn)
    if result["status"] == "quarantined":  # the champion did best of the fallbacks on the backtests
        assert f"champion v{served.version} re-estimated" in result["reason"]
        assert now_served.tags[Tag.KIND] == "refit" and now_served.tags[Tag.REFRESHES] == served.version
        assert now_served.tags["family"] == served.tags["family"]
    else:  # a fallback beat the champion's structure on the same weeks and replaced it
        assert result["status"] == "baseline" and re.search(r"on \d+ backtest weeks", result["reason"])
        assert now_served.tags["baseline"] == "true" and now_served.version != served.version
    assert now_served.tags[Tag.FITTED_AT] > served.tags[Tag.FITTED_AT]  # new parameters: no retrain loop for age
    assert served_start(cfg, isbn) == frame["week"].max() + timedelta(weeks=1)


def test_decisions_read_champions_from_the_index_and_heal_it(cfg, probe, tmp_path):
    """A catalogue is decided from the champion index (batched Firestore reads), not two
    registry round trips per ISBN; an alias moved outside bookcast is noticed and re-indexed."""
    from shared import champions

    frame = sample(2, years=2, seed=53)
    isbns = sorted(frame["isbn"].unique())
    run_training(cfg, [write_csv(frame, tmp_path)])
    store = RunStore(cfg)
    versions = model_store.champion_versions(cfg)
    assert set(versions) == set(isbns)
    indexed = store.champions(isbns)
    assert {i: e["version"] for i, e in indexed.items()} == versions
    assert all(model_store.from_index(i, e)[1]["data_end"] == str(frame["week"].max())
               and "history" not in model_store.from_index(i, e)[1] for i, e in indexed.items())

    moved = isbns[0]
    naive = registry.register(cfg, moved, {"spec": {"kind": "seasonal_naive"}, "start": str(frame["week"].min()),
                                           "n_obs": 0, "params": [], "history": []},
                              model_store.serving_forecast(cfg, model_store.resolve(cfg, moved).run_id),
                              params={}, metrics={}, tags={"kind": "baseline"}).version
    registry.client(cfg).set_registered_model_alias(cfg.model_name(moved), "champion", naive)  # behind bookcast's back
    found = champions.served(cfg, store, isbns)
    assert found[moved][0].version == naive and store.champions([moved])[moved]["version"] == naive
    assert found[isbns[1]][0].version == versions[isbns[1]]
