"""Forecast quality through the real pipeline and registry: gates that work at any sales
volume, and threshold recommendations from the registry's own history."""
from __future__ import annotations

import json

import pytest
from mlflow import MlflowClient

from shared import registry, thresholds
from shared.cli import main as cli
from tests.helpers import run_training, sample, write_csv

pytestmark = pytest.mark.usefixtures("mlflow_server", "probe")


def test_a_high_volume_title_that_beats_naive_is_promoted(cfg, tmp_path):
    """Thousands a week: an RMSE in the hundreds or thousands is no reason to quarantine."""
    frame = sample(1, years=3, seed=5)
    frame["units"] = frame["units"] * 300
    assert frame["units"].tail(52).mean() > 2000
    _, summary = run_training(cfg, [write_csv(frame, tmp_path)])
    result = summary["results"][0]
    assert result["status"] == "promoted", result["reason"]
    assert result["metrics"]["rmse"] > 100 and result["metrics"]["relative_mae"] < 1
    champion = registry.version_by_alias(cfg, result["isbn"])
    assert champion.version == result["version"] and champion.tags["kind"] == "candidate"
    assert champion.tags["family"] == json.loads(champion.tags["spec"])["kind"]
    path = MlflowClient(cfg.mlflow_tracking_uri).download_artifacts(champion.run_id, "optuna_study.json", str(tmp_path))
    with open(path) as file:
        study = json.load(file)
    assert study["family"] == champion.tags["family"] and study["cv_best_by_family"]
    assert study["interval_scale"]


def _seed(cfg, name: str, version_tags: list[dict]) -> None:
    """Versions carrying only what the registry's history is read from: their metric tags."""
    client = MlflowClient(cfg.mlflow_tracking_uri)
    client.create_registered_model(name)
    experiment = client.get_experiment_by_name(registry.EXPERIMENT) or client.get_experiment(
        client.create_experiment(registry.EXPERIMENT))
    for tags in version_tags:
        run = client.create_run(experiment.experiment_id)
        client.create_model_version(name, source=f"runs:/{run.info.run_id}/model", run_id=run.info.run_id,
                                    tags={"kind": "candidate", **{f"metric.{k}": str(v) for k, v in tags.items()}})


def test_thresholds_recommend_per_segment_from_the_registry(cfg, capsys, monkeypatch):
    def metrics(level, wape, relative, zero_share=0.0):
        return {"level": level, "wape": wape, "relative_mae": relative, "mae": wape * level,
                "rmse": 1.3 * wape * level, "mape": wape, "zero_share": zero_share, "zero_weeks_in_holdout": 0}

    # A busy title: ten candidates with errors of 10-55% of its sales, all better than naive.
    _seed(cfg, cfg.model_name("9780306406157"), [metrics(5000, 0.10 + 0.05 * i, 0.8) for i in range(10)])
    # A slow, intermittent title: large relative errors are normal; two lose to naive.
    _seed(cfg, cfg.model_name("9780141036144"),
          [metrics(3, 0.9, 0.9, 0.6), metrics(3, 1.1, 0.95, 0.6), metrics(3, 1.3, 1.2, 0.6), metrics(3, 1.4, 1.1, 0.6)])

    history = thresholds.candidate_metrics(cfg)
    assert len(history) == 14
    found = {r.segment: r for r in thresholds.recommend(cfg, history)}
    busy, slow = found["1,000-10,000 a week, regular"], found["under 10 a week, intermittent"]
    assert busy.candidates == 10 and busy.beat_naive == 1.0
    assert busy.quarantined_by_rmse_100 == 1.0  # the seeds' absolute limit would have refused every one
    assert busy.recommended_max_wape == 0.55 and busy.quarantined_recommended == 0.0
    assert slow.candidates == 4 and slow.beat_naive == 0.5
    assert slow.recommended_max_wape == 1.1  # 90th percentile of the two that beat naive, rounded up
    assert slow.quarantined_now == 0.75 and slow.quarantined_recommended == 0.5

    monkeypatch.setenv("BOOKCAST_MLFLOW_TRACKING_URI", cfg.mlflow_tracking_uri)
    monkeypatch.setenv("BOOKCAST_MODEL_NAME_PREFIX", cfg.model_name_prefix)
    capsys.readouterr()
    assert cli(["--profile", "test", "thresholds", "--format", "json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["candidates"] == 14
    assert {s["segment"]: s["recommended_max_wape"] for s in printed["segments"]} == {
        "1,000-10,000 a week, regular": 0.55, "under 10 a week, intermittent": 1.1}
