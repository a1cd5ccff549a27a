"""The Vertex launcher builds a real CreateCustomJobRequest; its dry run writes it."""
from __future__ import annotations

import json

from shared.config import load_settings
from pydantic import SecretStr

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
