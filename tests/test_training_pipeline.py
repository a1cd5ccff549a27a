"""The training pipeline end to end: ZenML (local store), real MLflow, real Firestore and
Pub/Sub emulators. Each test uses its own project and model-name prefix."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from shared import registry
from shared.forecasting.models import COMBINATION, FAMILIES
from shared.runstore import RunStore
from shared.layout import Collection
from tests.helpers import run_training, sample, short_series, write_csv

pytestmark = pytest.mark.usefixtures("mlflow_server", "probe")


def test_pipeline_registers_lineage_and_promotes_only_what_passes(cfg, probe, tmp_path):
    frame = sample(3, years=3)
    short = short_series("9780306406157", 20)
    source = write_csv(pd.concat([frame, short], ignore_index=True), tmp_path)
    run_id, summary = run_training(cfg, [source])

    results = {r["isbn"]: r for r in summary["results"]}
    assert results["9780306406157"]["status"] == "refused"
    assert "only 20 weeks" in results["9780306406157"]["reason"]
    trained = [i for i in frame["isbn"].unique()]
    assert all(results[i]["status"] in ("promoted", "quarantined", "baseline") for i in trained)

    store = RunStore(cfg)
    run = store.run(run_id)
    (shard,) = store.run_shards(run_id)
    assert run["status"] == summary["status"] == shard["status"] == "succeeded"
    assert shard["zenml_run_id"] and set(run["results"]) == set(results)
    assert {i for i, r in run["results"].items() if r.get("mlflow_run_id") and r.get("version")} == set(trained)
    assert sum(run["counts"].values()) == len(results) and run["compute_seconds"] > 0

    client = registry.client(cfg)
    report = Path(client.download_artifacts(run["report_mlflow_run_id"], "report.html", str(tmp_path))).read_text()
    assert all(isbn in report for isbn in results) and "only 20 weeks" in report  # every ISBN, gate verdicts
    tuned = [i for i in trained if results[i]["status"] != "baseline"]  # a baseline has no holdout plot
    assert report.count("get-artifact?path=holdout_forecast.png") == len(tuned)
    for isbn in trained:
        versions = client.search_model_versions(f"name='{cfg.model_name(isbn)}'")
        version = next(v for v in versions if v.tags.get("kind") == "candidate")
        tags = version.tags
        assert tags["pipeline_run_id"] == run_id
        assert tags["source_objects"] == source and len(tags["data_hash"]) == 64
        assert tags["train_window_end"] == str(frame[frame.isbn == isbn]["week"].max())
        assert tags["code_version"] and tags["zenml_run_id"] == shard["zenml_run_id"]
        artifacts = {a.path for a in client.list_artifacts(version.run_id)}
        assert {"holdout_forecast.png", "optuna_study.json", "serving"} <= artifacts
        run_metrics = client.get_run(version.run_id).data.metrics
        assert {"rmse", "wape", "smape", "mase", "naive_mase", "relative_mae", "coverage_80", "cv_score"} <= set(run_metrics)
        champion = registry.version_by_alias(cfg, isbn)
        assert champion is not None  # promoted or baseline: every book with data is servable
        moves = store.alias_history(isbn)
        assert moves[-1]["to_version"] == champion.version and moves[-1]["correlation_id"] == run["correlation_id"]

    events = [e for e in probe.messages("training-events", at_least=3) if e["run_id"] == run_id]
    assert [(e["status"], e["shard"]) for e in events] == [("started", "1/1"), ("succeeded", "1/1"), ("succeeded", "")]
    assert {r["isbn"] for r in events[1]["results"]} == set(results), "the shard reports its ISBNs' results"
    changes = probe.messages("model-changes", at_least=len(trained))
    assert {c["isbn"] for c in changes} == set(trained)


def test_failing_gates_quarantine_then_baseline_serves_then_champion_is_guarded(cfg, tmp_path):
    frame = sample(1, years=3, seed=23)
    isbn = frame["isbn"].iloc[0]
    source = write_csv(frame, tmp_path)
    client = registry.client(cfg)

    impossible = cfg.model_copy(update={"gates": cfg.gates.model_copy(update={"max_rmse": 0.001})})
    _, first = run_training(impossible, [source])
    result = first["results"][0]
    assert result["status"] == "baseline" and "RMSE" in result["reason"]
    baseline = registry.version_by_alias(cfg, isbn)
    assert baseline.tags["baseline"] == "true"
    assert result["metrics"]["mae"] == pytest.approx(float(baseline.tags["metric.mae"]), rel=1e-3)  # the baseline's own
    quarantined = client.get_model_version(cfg.model_name(isbn), str(int(baseline.version) - 1))
    assert quarantined.tags["quarantined"] == "true" and "RMSE" in quarantined.tags["quarantine_reason"]

    # The fallback that serves may be the plain combination, which can beat a test-profile
    # candidate: the champion comparison is opened wide here, and closed again below.
    lenient = cfg.model_copy(update={"gates": cfg.gates.model_copy(update={"max_rmse": 1e9, "max_mape": 1e9,
                                                                            "champion_margin": 10.0})})
    _, second = run_training(lenient, [source])
    assert second["results"][0]["status"] == "promoted"
    champion = registry.version_by_alias(cfg, isbn)
    assert int(champion.version) > int(baseline.version)
    assert json.loads(champion.tags["spec"])["kind"] == champion.tags["family"] in (*FAMILIES, COMBINATION)
    assert client.get_model_version(cfg.model_name(isbn), baseline.version).tags["baseline"] == "true"

    # Demanding a 50% improvement over the champion: the candidate must not replace it.
    guarded = lenient.model_copy(update={"gates": lenient.gates.model_copy(update={"champion_margin": -0.5})})
    _, third = run_training(guarded, [source])
    refused = third["results"][0]
    assert "worse than the current champion refitted on the same weeks" in refused["reason"]
    served = registry.version_by_alias(cfg, isbn)
    assert served.tags["kind"] != "candidate" or served.version == champion.version  # the refused one never serves
    moves = [m["action"] for m in RunStore(cfg).alias_history(isbn)]
    if refused["status"] == "quarantined":  # the champion did best of the fallbacks on the backtests
        assert served.version == champion.version and moves == ["baseline", "promote"]
        assert "the champion v" in refused["reason"] and "serves on" in refused["reason"]
    else:  # a fallback did better than the champion's structure on the same weeks: it replaces it
        assert refused["status"] == "baseline" and served.tags["baseline"] == "true"
        assert re.search(r"on \d+ backtest weeks", refused["reason"])
        assert moves == ["baseline", "promote", "baseline"]


def test_a_series_that_is_not_what_was_decided_is_refused_and_the_rest_train(cfg, tmp_path):
    from shared.jobs import decided_from_files, prepare_run, snapshot_series
    from shared.runstore import pack
    from shared.sales import UploadRules
    from shared.training.worker import execute

    good = sample(2, years=2, seed=31)
    series, _ = decided_from_files([write_csv(good, tmp_path, "good.csv")], UploadRules(prefix=cfg.upload_prefix))
    tampered, honest = sorted(series)
    store = RunStore(cfg)
    job = prepare_run(cfg, store, series, {"kind": "forced", "key": "k", "forced": True}, "cid-tamper", "local")
    (snapshot,) = job.snapshot
    stored = snapshot_series(store.get(Collection.SNAPSHOTS, snapshot))
    stored[tampered]["units"] = [1] * 104
    store.col(Collection.SNAPSHOTS).document(snapshot).update({"packed": pack(stored)})
    results = {r["isbn"]: r for r in execute(job.model_dump(mode="json"))["results"]}
    assert results[tampered]["status"] == "refused" and "does not hash to the decided" in results[tampered]["reason"]
    assert results[honest]["status"] in ("promoted", "baseline", "quarantined")
