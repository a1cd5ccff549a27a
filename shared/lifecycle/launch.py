"""Launching a training run: one interface, two implementations, the same contract. A run
is split into shards (shared/lifecycle/shards.py); every shard is trained by the same entry point,
``python -m shared.training.worker ... --shard I``.

``local`` starts one detached background process per shard (never inside a function's
request). ``vertex`` submits ONE Vertex AI CustomJob for the run: the primary replica
(worker pool 0) trains shard 0 and a second pool of ``shards - 1`` replicas trains the
others, each replica finding its shard in the job's own ``CLUSTER_SPEC``. One job rather
than one per shard: one API call and one quota check for a catalogue instead of hundreds,
one job to watch or cancel, and replicas are Vertex's own unit of fan-out. What a job does
not give per replica is handled in Firestore, the same locally: each shard has a document
and its own leases, reports its ISBNs as they finish, is cancelled by a flag its worker
polls, and a shard that failed or died is retried alone, as a one-shard run.

The Vertex call is plain REST through google-auth: the functions do not import the
Vertex SDK (seconds of cold start) for one request. With ``vertex.dry_run`` the exact
request is written to disk and logged instead of being sent.
"""
from __future__ import annotations

import json
import os
import signal
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

WORKER_COMMAND = ["python", "-m", "shared.training.worker"]
VERTEX_API = "https://{region}-aiplatform.googleapis.com/v1"
JOB_TIMEOUT_SECONDS = 4 * 3600


def worker_file(state_dir: str, run_id: str, shard: int) -> Path:
    """Where a local shard's worker is registered while it runs, so `make down` and
    `bookcast cancel` can stop it."""
    return Path(state_dir).resolve() / "workers" / f"{run_id}-k{shard:03d}.json"


# What a training job needs to reach the same Firestore, Pub/Sub and MLflow.
FORWARDED_ENV = ("BOOKCAST_PROFILE", "BOOKCAST_PROJECT_ID", "BOOKCAST_MLFLOW_TRACKING_URI",
                 "BOOKCAST_COLLECTION_PREFIX", "BOOKCAST_MODEL_NAME_PREFIX",
                 "BOOKCAST_EVENT_SIGNING_KEY_SECRET")  # the secret's name; the job reads the key itself


@dataclass
class LaunchInfo:
    launcher: str
    handle: str          # pids, or the Vertex job resource name / dry-run file
    detail: dict


class Launcher(Protocol):
    name: str

    def launch(self, job: TrainingJob) -> LaunchInfo: ...

    def cancel(self, run: dict) -> None: ...


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
        env = {**os.environ, "ZENML_CONFIG_PATH": os.environ.get("ZENML_CONFIG_PATH", str(state / "zenml")),
               "ZENML_ANALYTICS_OPT_IN": "false", "ZENML_CAPTURE_PRINTS": "false", "PYTHONUNBUFFERED": "1"}
        pids, logs = [], []
        for shard in range(job.shards):
            log_file = state / "logs" / f"worker-{job.run_id}-k{shard:03d}.log"
            log_file.parent.mkdir(parents=True, exist_ok=True)
            with open(log_file, "ab") as out:
                proc = subprocess.Popen([sys.executable, "-m", "shared.training.worker", "--request-file",
                                         str(request_file), "--shard", str(shard)],
                                        stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                        start_new_session=True)
            # Reap the job when it ends, or every finished training leaves a zombie in the function.
            threading.Thread(target=proc.wait, daemon=True).start()
            registered = worker_file(self.cfg.state_dir, job.run_id, shard)
            registered.parent.mkdir(parents=True, exist_ok=True)
            registered.write_text(json.dumps({"pid": proc.pid, "run_id": job.run_id, "shard": shard,
                                              "log": str(log_file)}))
            pids.append(proc.pid)
            logs.append(str(log_file))
        log.info("launched local training %s: %d shard worker(s), pids %s", job.run_id, job.shards, pids,
                 extra={"run_id": job.run_id, "logs": logs})
        return LaunchInfo("local", ",".join(map(str, pids)), {"pids": pids, "logs": logs, "request": str(request_file)})

    def cancel(self, run: dict) -> None:
        """SIGTERM to the run's shard workers still registered: each records its shard as
        cancelled within seconds (the Firestore flag is the fallback)."""
        for registered in Path(self.cfg.state_dir).resolve().glob(f"workers/{run['run_id']}-k*.json"):
            try:
                os.killpg(json.loads(registered.read_text())["pid"], signal.SIGTERM)
            except (ProcessLookupError, PermissionError, FileNotFoundError):
                pass


class VertexLauncher:
    name = "vertex"

    def __init__(self, cfg: Settings):
        self.cfg = cfg

    def request_uri(self, job: TrainingJob) -> str:
        return f"{self.cfg.vertex.staging_bucket}/runs/{job.run_id}/request-a{job.attempt}.json"

    def custom_job(self, job: TrainingJob) -> dict:
        """The CustomJob resource, in the REST API's JSON: worker pool 0 is the primary
        replica (shard 0), worker pool 1 the other shards' replicas."""
        v = self.cfg.vertex
        env = [{"name": k, "value": os.environ[k]} for k in FORWARDED_ENV if k in os.environ]
        env.append({"name": "BOOKCAST_LAUNCHER", "value": "vertex"})
        container = {"imageUri": v.image, "command": WORKER_COMMAND,
                     "args": ["--request-uri", self.request_uri(job)], "env": env}
        pools = [{"machineSpec": {"machineType": v.machine_type}, "replicaCount": "1", "containerSpec": container}]
        if job.shards > 1:
            pools.append({"machineSpec": {"machineType": v.machine_type}, "replicaCount": str(job.shards - 1),
                          "containerSpec": container})
        return {
            "displayName": f"bookcast-{job.run_id}-a{job.attempt}",
            "labels": {"app": "bookcast", "run-id": job.run_id.lower()[:63],
                       "correlation-id": job.correlation_id.lower().replace(":", "-")[:63]},
            "jobSpec": {"workerPoolSpecs": pools, "serviceAccount": v.service_account,
                        "baseOutputDirectory": {"outputUriPrefix": f"{v.staging_bucket}/runs/{job.run_id}"},
                        "scheduling": {"timeout": f"{JOB_TIMEOUT_SECONDS}s"}},
        }

    def _session(self):
        import google.auth
        from google.auth.transport.requests import AuthorizedSession

        credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
        return AuthorizedSession(credentials)

    def launch(self, job: TrainingJob) -> LaunchInfo:
        v = self.cfg.vertex
        job = job.model_copy(update={"launcher": "vertex"})
        url = f"{VERTEX_API.format(region=v.region)}/projects/{v.project}/locations/{v.region}/customJobs"
        body = self.custom_job(job)
        calls = [{"upload": self.request_uri(job), "bytes": len(job.model_dump_json())},
                 {"method": "POST", "url": url, "json": body}]
        if v.dry_run:
            out = Path(self.cfg.state_dir).resolve() / "vertex" / f"{job.run_id}-a{job.attempt}.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({"calls": calls, "request": json.loads(job.model_dump_json())}, indent=2))
            log.info("vertex dry run: %d shard(s) of %s written to %s", job.shards, job.run_id, out,
                     extra={"run_id": job.run_id, "url": url})
            return LaunchInfo("vertex", str(out), {"dry_run": True, "url": url, "file": str(out)})
        from shared.gcs import write_uri

        write_uri(self.request_uri(job), job.model_dump_json(), self.cfg.project_id)
        response = self._session().post(url, json=body, timeout=60)
        response.raise_for_status()
        name = response.json()["name"]
        log.info("submitted Vertex custom job %s: %d replica(s)", name, job.shards, extra={"run_id": job.run_id})
        return LaunchInfo("vertex", name, {"dry_run": False, "url": url, "job": name})

    def cancel(self, run: dict) -> None:
        name = (run.get("launch") or {}).get("job")
        if not name:  # a dry run, or not launched: the shards' flags are all there is
            return
        url = f"{VERTEX_API.format(region=self.cfg.vertex.region)}/{name}:cancel"
        self._session().post(url, timeout=60).raise_for_status()
        log.warning("cancelled Vertex custom job %s", name, extra={"run_id": run["run_id"]})


def launcher_for(cfg: Settings, name: str | None = None) -> Launcher:
    chosen = name or cfg.launcher
    return {"local": LocalLauncher, "vertex": VertexLauncher}[chosen](cfg)
