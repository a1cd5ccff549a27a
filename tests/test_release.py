"""Staging → production: two projects, two MLflow registries, one exchange bucket. A served
staging version arrives in production with its manifest and every piece of metadata, and
serves there only once approved."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

from emulators.processes import stop
from emulators.stack import Ports, Stack
from emulators.wiring import create_topics
from shared import model_store, registry, release
from shared.forecasting import models
from shared.forecasting.models import ModelSpec
from shared.gcs import storage_client
from shared.runstore import RunStore
from shared.layout import Collection
from shared.training.per_isbn import serving_forecast
from tests.helpers import sample

pytestmark = pytest.mark.usefixtures("mlflow_server")


@pytest.fixture
def production_mlflow(cloud, tmp_path):
    """Production's own registry: a second MLflow server with its own database and artifacts."""
    stack = Stack(tmp_path / "production", project="production", ports=Ports.free(), profile="test")
    proc = stack.start_mlflow()
    yield f"http://127.0.0.1:{stack.ports.mlflow}"
    stop(proc)


def bookcast(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shared.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "BOOKCAST_PROFILE": "test", **env}, timeout=120)


def test_a_staging_version_reaches_production_with_its_manifest_behind_an_approval(cloud, cfg, probe, project_gcs,
                                                                                  production_mlflow):
    production_project = f"p-{uuid.uuid4().hex[:12]}"
    create_topics(cloud.topology, production_project)
    exchange = f"exchange-{cfg.project_id}"
    storage_client(cfg.project_id).create_bucket(exchange)
    environments = {"production": {"project_id": production_project, "mlflow_tracking_uri": production_mlflow,
                                   "model_name_prefix": cfg.model_name_prefix}}
    release_settings = {"BOOKCAST_RELEASE__EXCHANGE_BUCKET": exchange, "BOOKCAST_MODEL_NAME_PREFIX": cfg.model_name_prefix}
    in_staging = {**release_settings, "BOOKCAST_PROJECT_ID": cfg.project_id, "BOOKCAST_RELEASE__ENVIRONMENT": "staging",
                  "BOOKCAST_MLFLOW_TRACKING_URI": cfg.mlflow_tracking_uri,
                  "BOOKCAST_RELEASE__ENVIRONMENTS": json.dumps(environments)}
    in_production = {**release_settings, "BOOKCAST_PROJECT_ID": production_project,
                     "BOOKCAST_RELEASE__ENVIRONMENT": "production", "BOOKCAST_MLFLOW_TRACKING_URI": production_mlflow}

    frame = sample(1, years=2, seed=73)
    isbn = frame["isbn"].iloc[0]
    fitted = models.fit(frame["units"].to_numpy(float), frame["week"].iloc[0], ModelSpec(kind="theta")).to_dict()
    lineage = {"data_hash": "d" * 64, "code_version": "0123abc", "pipeline_run_id": "run-staging-1", "family": "theta",
               "kind": "candidate", "gate": "passed", "quarantined": "false", "spec": json.dumps({"kind": "theta"}),
               "train_window_start": str(frame["week"].min()), "correlation_id": "cid-staging"}
    staged = registry.register(cfg, isbn, fitted, serving_forecast(fitted), params={"family": "theta", "trials": 6},
                               metrics={"mae": 4.5, "wape": 0.21}, tags=lineage, study={"best": {"family": "theta"}},
                               plot_png=b"\x89PNG not really").version
    registry.move_alias(cfg, RunStore(cfg), isbn, staged, "promote", "passed the quality gates", "training", "cid")

    done = bookcast(in_staging, "promote", "--from", "staging", "--to", "production", isbn, "--reason",
                    "staging verified", "--format", "json")
    assert done.returncode == 0, done.stderr
    (result,) = json.loads(done.stdout)
    assert (result["status"], result["version"]) == ("waiting for approval", "1")
    manifest = json.loads(storage_client(cfg.project_id).bucket(exchange).blob(
        f"releases/staging/{isbn}/v{staged}/manifest.json").download_as_bytes())
    assert result["manifest"] == f"gs://{exchange}/releases/staging/{isbn}/v{staged}/manifest.json"
    assert manifest["source"]["environment"] == "staging" and manifest["source"]["project_id"] == cfg.project_id
    assert manifest["source"]["version"] == staged and manifest["data_hash"] == "d" * 64
    assert manifest["code_version"] == "0123abc" and manifest["promoted_with"]
    assert {k: v for k, v in manifest["params"].items() if not k.startswith(release.MODEL_CONFIG_PARAMS)} == \
        {"family": "theta", "trials": "6"} and manifest["metrics"]["wape"] == 0.21
    assert [s["environment"] for s in manifest["promotion_chain"]] == ["staging"]
    assert set(manifest["artifacts"]) == {"fitted_model.json", "serving/forecast.json", "optuna_study.json",
                                          "holdout_forecast.png"}

    production = cfg.model_copy(update={"project_id": production_project, "mlflow_tracking_uri": production_mlflow})
    imported = registry.client(production).get_model_version(production.model_name(isbn), "1")
    assert {k: imported.tags[k] for k in lineage} == lineage  # every lineage tag, as in staging
    assert imported.tags["metric.mae"] == "4.5" and imported.tags["released_from"] == f"staging ({cfg.project_id}) v{staged}"
    assert json.loads(imported.tags["promotion_chain"]) == manifest["promotion_chain"]
    assert registry.client(production).get_run(imported.run_id).data.params == manifest["params"]
    assert model_store.serving_forecast(production, imported.run_id) == model_store.serving_forecast(
        cfg, registry.version_by_alias(cfg, isbn).run_id)  # the very forecast staging served
    assert registry.version_by_alias(production, isbn) is None  # not served before the approval
    assert RunStore(production).get(Collection.APPROVALS, f"{isbn}-v1")["status"] == "pending"
    assert list(RunStore(cfg).stream(Collection.APPROVALS)) == []

    approved = bookcast(in_production, "approve", isbn, "1", "--reason", "release board 2026-11-26")
    assert approved.returncode == 0, approved.stderr
    assert registry.version_by_alias(production, isbn).version == "1"
    move = RunStore(production).alias_history(isbn)[-1]
    assert (move["action"], move["to_version"]) == ("promote", "1") and "approved by" in move["reason"]
    audits = {a["kind"]: a for a in RunStore(production).stream("audit")}
    assert audits["release"]["manifest"] == result["manifest"] and audits["approval"]["decision"] == "approved"

    again = bookcast(in_staging, "promote", "--from", "staging", "--to", "production", isbn, "--reason", "again",
                     "--format", "json")
    assert json.loads(again.stdout)[0]["status"] == "imported already"
    assert len(registry.client(production).search_model_versions(f"name='{production.model_name(isbn)}'")) == 1
    unknown = bookcast(in_staging, "promote", "--from", "staging", "--to", "prod", isbn, "--reason", "typo")
    assert unknown.returncode == 2 and "unknown environment 'prod'" in unknown.stderr
    with pytest.raises(release.ReleaseError):
        release.promote(cfg, "staging", "staging", [isbn], "pytest", "same")
