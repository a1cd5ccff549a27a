"""The training job's entry point, the same locally (a background process) and on Vertex
AI (the container's command): run status in Firestore, the pipeline, events on failure.

    python -m shared.training.worker --request-file RUN.json
    python -m shared.training.worker --request-json '{...}'
"""
from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import signal
import sys
import threading
from pathlib import Path

from pydantic import ValidationError

from shared.events import Topics, TrainingEvent
from shared.jobs import TrainingJob
from shared.launch import worker_file
from shared.logs import configure, correlated, get_logger
from shared.training.flow import settings_of

log = get_logger("training.worker")


def ended(cfg, store, job: TrainingJob, status: str, reason: str) -> None:
    """Record and announce a run that ended without results."""
    from shared.leases import release_all
    from shared.pubsub import publish

    store.update_run(job.run_id, status=status, error=reason[:2000])
    publish(cfg, Topics.TRAINING_EVENTS, TrainingEvent(correlation_id=job.correlation_id, run_id=job.run_id,
                                                       status=status, isbns=job.isbns, launcher=job.launcher,
                                                       reason=reason[:500]))
    if status == "cancelled":  # a failure releases in execute's finally; a cancellation never gets there
        release_all(store, job.run_id)


def execute(request: dict) -> dict:
    from shared.pubsub import publish
    from shared.runstore import RunStore

    job = TrainingJob.model_validate(request)
    request = job.model_dump(mode="json")  # what the pipeline's steps receive
    cfg = settings_of(request)
    store = RunStore(cfg)
    run_id = job.run_id
    with correlated(job.correlation_id):
        cancellation.arm(lambda: ended(cfg, store, job, "cancelled", Cancellation.reason))
        store.update_run(run_id, status="running")
        publish(cfg, Topics.TRAINING_EVENTS, TrainingEvent(correlation_id=job.correlation_id, run_id=run_id,
                                                           status="started", isbns=job.isbns, launcher=job.launcher))
        log.info("training run %s started", run_id, extra={"run_id": run_id, "isbns": job.isbns})
        try:
            from shared.leases import Heartbeat
            from shared.training import pipeline, zenml_store

            with Heartbeat(store, run_id, cfg.training.lease_ttl_seconds):
                zenml_store.ready()
                summary = pipeline.run(request)
        except Exception as error:
            log.exception("training run %s failed", run_id, extra={"run_id": run_id})
            ended(cfg, store, job, "failed", f"{type(error).__name__}: {error}")
            raise
        finally:
            from shared.leases import release_all

            release_all(store, run_id)
        log.info("training run %s %s", run_id, summary["status"], extra={"run_id": run_id, "status": summary["status"]})
        return summary


class Cancellation:
    """SIGTERM (`make down`, Vertex AI cancelling the job) ends the job within seconds: a
    thread records the run as cancelled, releases its leases, stops the per-ISBN worker
    processes and exits. Raising in the main thread instead is not enough: ZenML and the
    libraries under it catch broad exceptions, and leaving the process pool waits for its
    trainings to finish."""

    EXIT_CODE = 143  # 128 + SIGTERM, as a shell reports a process ended by it
    reason = "cancelled: the job received SIGTERM"

    def __init__(self):
        self.on_cancel = None
        self.started = threading.Event()

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._on_sigterm)

    def arm(self, on_cancel) -> None:
        self.on_cancel = on_cancel

    def _on_sigterm(self, signum, frame) -> None:
        if not self.started.is_set():
            self.started.set()
            threading.Thread(target=self._cancel, name="cancellation").start()

    def _cancel(self) -> None:
        log.warning("SIGTERM: cancelling the training run")
        try:
            if self.on_cancel:
                self.on_cancel()
        except Exception:  # exiting matters more than recording; the lease TTL is the fallback
            log.exception("recording the cancellation failed")
        finally:
            for child in multiprocessing.active_children():
                child.kill()
            logging.shutdown()
            os._exit(self.EXIT_CODE)


cancellation = Cancellation()


def read_request(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m shared.training.worker")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--request-file", type=Path)
    source.add_argument("--request-json")
    args = parser.parse_args(argv)
    return json.loads(args.request_file.read_text() if args.request_file else args.request_json)


def main() -> int:
    configure()
    cancellation.install()
    request = read_request()
    try:
        execute(request)
    except ValidationError as error:  # a malformed request is not retried: no attempt can fix it
        log.error("malformed training request: %s", error)
        return 2
    except Exception:
        return 1
    finally:
        if isinstance(request.get("settings"), dict) and request.get("run_id"):
            worker_file(request["settings"].get("state_dir", ".state"), str(request["run_id"])).unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
