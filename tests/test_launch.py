"""The Vertex launcher builds a real CreateCustomJobRequest; its dry run writes it. A local
job stops cleanly when told to."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from pydantic import SecretStr

from shared.config import load_settings
from shared.jobs import TrainingJob, training_job
from shared.launch import VertexLauncher, launcher_for
from shared.training.worker import read_request


def test_vertex_dry_run_writes_the_exact_create_custom_job_request(tmp_path, monkeypatch):
    monkeypatch.setenv("BOOKCAST_PROJECT_ID", "bookcast-prod")
    cfg = load_settings("production").model_copy(update={"state_dir": str(tmp_path)})
    cfg = cfg.model_copy(update={"vertex": cfg.vertex.model_copy(update={"dry_run": True})})
    secret_cfg = cfg.model_copy(update={"alerts": cfg.alerts.model_copy(update={
        "slack_webhook_url": SecretStr("https://hooks.slack.com/services/T0/B0/SECRET"), "smtp_host": "smtp.internal"})})
    request = training_job(secret_cfg, "run-1", {"9780306406157": "ab" * 32}, ["run-1-s0000"], "upload-abc",
                           {"kind": "data_changed"}, "vertex")
    launcher = launcher_for(cfg)
    assert isinstance(launcher, VertexLauncher)
    info = launcher.launch(request)

    written = json.loads((tmp_path / "vertex" / "run-1.json").read_text())
    assert written["endpoint"] == "europe-west1-aiplatform.googleapis.com"
    body = written["request"]
    assert body["parent"] == "projects/bookcast-prod/locations/europe-west1"
    job = body["customJob"]
    assert job["displayName"] == "bookcast-run-1" and job["labels"]["run-id"] == "run-1"
    spec = job["jobSpec"]
    assert spec["serviceAccount"] == cfg.vertex.service_account
    assert spec["baseOutputDirectory"]["outputUriPrefix"] == f"{cfg.vertex.staging_bucket}/runs/run-1"
    pool = spec["workerPoolSpecs"][0]
    assert pool["machineSpec"]["machineType"] == "n2-standard-8" and int(pool["replicaCount"]) == 1
    container = pool["containerSpec"]
    assert container["imageUri"] == cfg.vertex.image
    assert container["command"] == ["python", "-m", "shared.training.worker"]
    assert container["args"][0] == "--request-json"
    shipped = TrainingJob.model_validate(read_request(container["args"]))  # what the container's worker parses
    assert shipped.data_hashes == request.data_hashes and shipped.snapshot == request.snapshot
    assert shipped.launcher == "vertex"
    # Secrets stay where they were configured: not in the request, the job's args or the dry-run file.
    assert "SECRET" not in (tmp_path / "vertex" / "run-1.json").read_text() and "smtp.internal" not in json.dumps(body)
    assert "slack_webhook_url" not in shipped.settings["alerts"]
    assert {"name": "BOOKCAST_PROJECT_ID", "value": "bookcast-prod"} in container["env"]
    assert info.detail["dry_run"] is True


@pytest.mark.usefixtures("mlflow_server")
def test_stopping_a_local_job_cancels_its_run_and_frees_its_leases(cfg, probe, project_gcs):
    """What `make down` (and Vertex AI cancelling a job) does: SIGTERM to the job, which
    records its run as cancelled, releases its leases and exits, instead of needing SIGKILL."""
    from emulators.processes import stop_workers
    from shared.gcs import storage_client
    from shared.runstore import RunStore
    from shared.trigger import handle
    from tests.helpers import sample
    from tests.test_trigger import notifications, upload

    slow = cfg.model_copy(update={"training": cfg.training.model_copy(update={"trials": 500})})
    storage_client(cfg.project_id).create_bucket(cfg.data_bucket)
    upload(cfg, "w47.csv", sample(2, years=3, seed=61))
    outcome = handle(slow, notifications(probe, 1)[0])  # launches a real local worker process
    store = RunStore(cfg)
    deadline = time.monotonic() + 90
    while store.run(outcome.run_id)["status"] != "running" and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(3)  # into the pipeline
    started = time.monotonic()
    assert stop_workers(Path(cfg.state_dir)) == [outcome.run_id]
    assert time.monotonic() - started < 25, "the job stopped on SIGTERM, not on SIGKILL after the grace"
    run = store.run(outcome.run_id)
    assert run["status"] == "cancelled" and "SIGTERM" in run["error"]
    assert list(store.stream("leases")) == []
    assert "cancelled" in [e["status"] for e in probe.messages("training-events", at_least=3)]


def test_jobs_starting_together_on_a_fresh_machine_share_one_zenml_store(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "ZENML_CONFIG_PATH": str(tmp_path / "zenml"), "ZENML_ANALYTICS_OPT_IN": "false"}
    jobs = [subprocess.Popen([sys.executable, "-c", "from shared.training.zenml_store import ready; ready()"],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    for job in jobs:
        output = job.communicate(timeout=120)[0]
        assert job.returncode == 0, output[-2000:]
