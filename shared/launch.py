"""Launching a training job: one interface, two implementations.

``local`` runs shared.training.worker in a detached background process (never inside a
function's request); ``vertex`` submits the same entry point as a Vertex AI CustomJob in
the trainer container. With ``vertex.dry_run`` the exact CreateCustomJobRequest is written
to disk and logged instead of being sent.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from shared.config import Settings
from shared.jobs import TrainingJob
from shared.logs import get_logger

log = get_logger(__name__)

def worker_file(state_dir: str, run_id: str) -> Path:
    """Where a local training job is registered while it runs, so `make down` can stop it."""
    return Path(state_dir).resolve() / "workers" / f"{run_id}.json"


# What a training job needs to reach the same Firestore, Pub/Sub and MLflow.
FORWARDED_ENV = ("BOOKCAST_PROFILE", "BOOKCAST_PROJECT_ID", "BOOKCAST_MLFLOW_TRACKING_URI",
                 "BOOKCAST_COLLECTION_PREFIX", "BOOKCAST_MODEL_NAME_PREFIX",
                 "BOOKCAST_EVENT_SIGNING_KEY_SECRET")  # the secret's name; the job reads the key itself


@dataclass
class LaunchInfo:
    launcher: str
    handle: str          # pid, or the Vertex job resource name / dry-run file
    detail: dict


class Launcher(Protocol):
    name: str

    def launch(self, job: TrainingJob) -> LaunchInfo: ...


class LocalLauncher:
    name = "local"

    def __init__(self, cfg: Settings):
        self.cfg = cfg

    def launch(self, job: TrainingJob) -> LaunchInfo:
        state = Path(self.cfg.state_dir).resolve()
        runs = state / "runs"
        runs.mkdir(parents=True, exist_ok=True)
        request_file = runs / f"{job.run_id}-a{job.attempt}.json"
        request_file.write_text(job.model_dump_json(indent=2))
        log_file = state / "logs" / f"worker-{job.run_id}.log"
        log_file.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "ZENML_CONFIG_PATH": os.environ.get("ZENML_CONFIG_PATH", str(state / "zenml")),
               "ZENML_ANALYTICS_OPT_IN": "false", "ZENML_CAPTURE_PRINTS": "false", "PYTHONUNBUFFERED": "1"}
        with open(log_file, "ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "shared.training.worker", "--request-file", str(request_file)],
                                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                    start_new_session=True)
        # Reap the job when it ends, or every finished training leaves a zombie in the function.
        threading.Thread(target=proc.wait, daemon=True).start()
        registered = worker_file(self.cfg.state_dir, job.run_id)
        registered.parent.mkdir(parents=True, exist_ok=True)
        registered.write_text(json.dumps({"pid": proc.pid, "run_id": job.run_id, "log": str(log_file)}))
        log.info("launched local training %s (pid %d)", job.run_id, proc.pid,
                 extra={"run_id": job.run_id, "log": str(log_file)})
        return LaunchInfo("local", str(proc.pid), {"pid": proc.pid, "log": str(log_file), "request": str(request_file)})


class VertexLauncher:
    name = "vertex"

    def __init__(self, cfg: Settings):
        self.cfg = cfg

    def build_request(self, job: TrainingJob):
        from google.cloud.aiplatform_v1.types import (ContainerSpec, CreateCustomJobRequest, CustomJob, CustomJobSpec,
                                                      EnvVar, MachineSpec, Scheduling, WorkerPoolSpec)
        from google.protobuf import duration_pb2

        v = self.cfg.vertex
        env = [EnvVar(name=k, value=os.environ[k]) for k in FORWARDED_ENV if k in os.environ]
        env.append(EnvVar(name="BOOKCAST_LAUNCHER", value="vertex"))
        container = ContainerSpec(image_uri=v.image, command=["python", "-m", "shared.training.worker"],
                                  args=["--request-json", job.model_copy(update={"launcher": "vertex"}).model_dump_json()],
                                  env=env)
        custom_job = CustomJob(
            display_name=f"bookcast-{job.run_id}",
            labels={"app": "bookcast", "run-id": job.run_id.lower()[:63],
                    "correlation-id": job.correlation_id.lower().replace(":", "-")[:63]},
            job_spec=CustomJobSpec(
                worker_pool_specs=[WorkerPoolSpec(machine_spec=MachineSpec(machine_type=v.machine_type),
                                                  replica_count=1, container_spec=container)],
                service_account=v.service_account,
                base_output_directory={"output_uri_prefix": f"{v.staging_bucket}/runs/{job.run_id}"},
                scheduling=Scheduling(timeout=duration_pb2.Duration(seconds=4 * 3600)),
            ),
        )
        return CreateCustomJobRequest(parent=f"projects/{v.project}/locations/{v.region}", custom_job=custom_job)

    def launch(self, job: TrainingJob) -> LaunchInfo:
        from google.cloud.aiplatform_v1.types import CreateCustomJobRequest

        create = self.build_request(job)
        endpoint = f"{self.cfg.vertex.region}-aiplatform.googleapis.com"
        body = json.loads(CreateCustomJobRequest.to_json(create))
        if self.cfg.vertex.dry_run:
            out = Path(self.cfg.state_dir).resolve() / "vertex" / f"{job.run_id}.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({"endpoint": endpoint, "method": "JobService.CreateCustomJob",
                                       "request": body}, indent=2))
            log.info("vertex dry run: request for %s written to %s", job.run_id, out,
                     extra={"run_id": job.run_id, "endpoint": endpoint})
            return LaunchInfo("vertex", str(out), {"dry_run": True, "endpoint": endpoint, "request": body})
        from google.cloud.aiplatform_v1 import JobServiceClient

        created = JobServiceClient(client_options={"api_endpoint": endpoint}).create_custom_job(request=create)
        log.info("submitted Vertex custom job %s", created.name, extra={"run_id": job.run_id})
        return LaunchInfo("vertex", created.name, {"dry_run": False, "endpoint": endpoint, "job": created.name})


def launcher_for(cfg: Settings, name: str | None = None) -> Launcher:
    chosen = name or cfg.launcher
    return {"local": LocalLauncher, "vertex": VertexLauncher}[chosen](cfg)

