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
from shared.lifecycle.launch import VertexLauncher, launcher_for


def test_vertex_dry_run_writes_one_custom_job_whose_replicas_are_the_shards(tmp_path, monkeypatch):
    from google.cloud.aiplatform_v1.types import CustomJob

    from shared.lifecycle.shards import index_from_environment

    monkeypatch.setenv("BOOKCAST_PROJECT_ID", "bookcast-prod")
    cfg = load_settings("production").model_copy(update={"state_dir": str(tmp_path)})
    cfg = cfg.model_copy(update={"vertex": cfg.vertex.model_copy(update={"dry_run": True})})
    secret_cfg = cfg.model_copy(update={"alerts": cfg.alerts.model_copy(update={
        "slack_webhook_url": SecretStr("https://hooks.slack.com/services/T0/B0/SECRET"), "smtp_host": "smtp.internal"})})
    request = training_job(secret_cfg, "run-1", {"9780306406157": "ab" * 32}, ["run-1-s0000"], "upload-abc",
                           {"kind": "data_changed"}, "vertex", shards=5)
    launcher = launcher_for(cfg)
    assert isinstance(launcher, VertexLauncher)
    info = launcher.launch(request)

    written = json.loads((tmp_path / "vertex" / "run-1-a1.json").read_text())
    upload, create = written["calls"]
    assert upload["upload"] == f"{cfg.vertex.staging_bucket}/runs/run-1/request-a1.json"
    assert create["method"] == "POST" and create["url"] == (
        "https://europe-west1-aiplatform.googleapis.com/v1/projects/bookcast-prod/locations/europe-west1/customJobs")
    job = CustomJob.from_json(json.dumps(create["json"]))  # the REST body is a valid CustomJob, field for field
    assert job.display_name == "bookcast-run-1-a1" and job.labels["run-id"] == "run-1"
    spec = job.job_spec
    assert spec.service_account == cfg.vertex.service_account
    assert spec.base_output_directory.output_uri_prefix == f"{cfg.vertex.staging_bucket}/runs/run-1"
    primary, workers = spec.worker_pool_specs
    assert (primary.replica_count, workers.replica_count) == (1, 4), "one replica per shard"
    for pool in (primary, workers):
        assert pool.machine_spec.machine_type == "n2-standard-8"
        container = pool.container_spec
        assert container.image_uri == cfg.vertex.image
        assert list(container.command) == ["python", "-m", "shared.training.worker"]
        assert list(container.args) == ["--request-uri", upload["upload"]]
        assert {"name": "BOOKCAST_PROJECT_ID", "value": "bookcast-prod"} in create["json"]["jobSpec"][
            "workerPoolSpecs"][0]["containerSpec"]["env"]
    shipped = TrainingJob.model_validate(written["request"])  # what is uploaded for the replicas to read
    assert shipped.data_hashes == request.data_hashes and shipped.snapshot == request.snapshot
    assert shipped.launcher == "vertex" and shipped.shards == 5
    # Each replica finds its shard in the CLUSTER_SPEC Vertex AI gives it; the primary waits for the rest.
    cluster = {"workerpool0": ["cmle-training-workerpool0-0:2222"],
               "workerpool1": [f"cmle-training-workerpool1-{i}:2222" for i in range(4)]}
    spec_of = lambda kind, i: {"CLUSTER_SPEC": json.dumps({"cluster": cluster, "task": {"type": kind, "index": i}})}
    assert index_from_environment(spec_of("workerpool0", 0)) == (0, True)
    assert [index_from_environment(spec_of("workerpool1", i)) for i in range(4)] == [(i + 1, False) for i in range(4)]
    assert index_from_environment({}) == (0, False)
    # Secrets stay where they were configured: not in the request, the job's args or the dry-run file.
    text = (tmp_path / "vertex" / "run-1-a1.json").read_text()
    assert "SECRET" not in text and "smtp.internal" not in text
    assert "slack_webhook_url" not in shipped.settings["alerts"]
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
