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
import time
from pathlib import Path

from pydantic import ValidationError

from shared.events import Topics, TrainingEvent
from shared.jobs import TrainingJob
from shared.lifecycle.launch import worker_file
from shared.logs import configure, correlated, get_logger
from shared.states import RunEvent, RunStatus
from shared.training.flow import bind_job, job_context

log = get_logger("training.worker")


def ended(cfg, store, job: TrainingJob, status: RunStatus, reason: str) -> None:
    """Record and announce a shard that ended without results."""
    from shared.lifecycle import shards
    from shared.lifecycle.leases import release_all

    shards.close(cfg, store, shards.ShardRef.of_job(job), status, [], reason[:500])
    if status == RunStatus.CANCELLED:  # a failure releases in execute's finally; a cancellation never gets there
        release_all(store, job.run_id, job.shard)


def execute(request: dict, shard: int = 0) -> dict:
    """Train one shard of the run: the ISBNs its shard document names."""
    from shared.lifecycle import shards
    from shared.pubsub import publish

    run = bind_job(TrainingJob.model_validate(request))
    cfg, store, run_id = run.cfg, run.store, run.job.run_id
    with correlated(run.job.correlation_id):
        record = shards.start(store, run_id, shard, handle=f"pid {os.getpid()}")
        if record is None:
            log.warning("shard %d of %s has ended or was cancelled already: nothing to train", shard, run_id,
                        extra={"run_id": run_id, "shard": shard})
            return {"status": "skipped", "results": []}  # not a run status: this worker had nothing to do
        job = run.job.for_shard(shard, record["isbns"])
        cancellation.arm(lambda why: ended(cfg, store, job, RunStatus.CANCELLED, f"cancelled: {why}"))
        publish(cfg, Topics.TRAINING_EVENTS, TrainingEvent(correlation_id=job.correlation_id, run_id=run_id,
                                                           status=RunEvent.STARTED, isbns=job.isbns, launcher=job.launcher,
                                                           shard=shards.label(shard, job.shards)))
        log.info("training run %s shard %s started: %d ISBNs", run_id, shards.label(shard, job.shards), len(job.isbns),
                 extra={"run_id": run_id, "shard": shard, "isbns": job.isbns})
        try:
            from shared.lifecycle.leases import Heartbeat
            from shared.training import pipeline, zenml_store

            with Heartbeat(store, run_id, cfg.training.lease_ttl_seconds, shard=shard,
                           on_cancel=cancellation.requested):
                zenml_store.ready()
                bind_job(job)  # the steps find this shard's job here, validated once
                summary = pipeline.run(job.model_dump(mode="json"))
        except Exception as error:
            log.exception("training run %s shard %d failed", run_id, shard, extra={"run_id": run_id, "shard": shard})
            ended(cfg, store, job, RunStatus.FAILED, f"{type(error).__name__}: {error}")
            raise
        finally:
            from shared.lifecycle.leases import release_all

            release_all(store, run_id, shard)
        log.info("training run %s shard %d %s", run_id, shard, summary["status"],
                 extra={"run_id": run_id, "shard": shard, "status": summary["status"]})
        return summary


def wait_for_shards(cfg, run_id: str, poll_seconds: float = 30.0) -> None:
    """The primary replica of a multi-replica Vertex job stays until every shard has ended
    (or its worker died and the reconciler took it over): Vertex AI ends the job, and stops
    the other replicas, when the primary exits."""
    from shared.runstore import RunStore
    from shared.states import TERMINAL_RUN

    store = RunStore(cfg)
    while True:
        pending = [s["index"] for s in store.run_shards(run_id) if s["status"] not in TERMINAL_RUN]
        if not pending:
            return
        log.info("primary replica waits for shards %s of %s", pending, run_id, extra={"run_id": run_id})
        time.sleep(poll_seconds)


class Cancellation:
    """SIGTERM (`make down`, Vertex AI cancelling the job) ends the job within seconds: a
    thread records its shard as cancelled, releases its leases, stops the per-ISBN worker
    processes and exits. Raising in the main thread instead is not enough: ZenML and the
    libraries under it catch broad exceptions, and leaving the process pool waits for its
    trainings to finish."""

    EXIT_CODE = 143  # 128 + SIGTERM, as a shell reports a process ended by it

    def __init__(self):
        self.on_cancel = None
        self.before_exit = None  # called with whether the stop was requested (not SIGTERM)
        self.started = threading.Event()

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._on_sigterm)

    def arm(self, on_cancel) -> None:
        self.on_cancel = on_cancel

    def _on_sigterm(self, signum, frame) -> None:
        self._start(self.EXIT_CODE, "the job received SIGTERM")

    def requested(self) -> None:
        """`bookcast cancel` asked this shard to stop. A requested stop is a clean end (exit
        0): a replica exiting with an error would fail the whole Vertex job and its other
        shards with it."""
        self._start(0, "`bookcast cancel` asked it to stop")

    def _start(self, exit_code: int, why: str) -> None:
        if not self.started.is_set():
            self.started.set()
            threading.Thread(target=self._cancel, args=(exit_code, why), name="cancellation").start()

    def _cancel(self, exit_code: int, why: str) -> None:
        log.warning("%s: cancelling the training shard", why)
        try:
            if self.on_cancel:
                self.on_cancel(why)
        except Exception:  # exiting matters more than recording; the lease TTL is the fallback
            log.exception("recording the cancellation failed")
        finally:
            for child in multiprocessing.active_children():
                child.kill()
            try:
                if self.before_exit:
                    self.before_exit(exit_code == 0)
            finally:
                logging.shutdown()
                os._exit(exit_code)


cancellation = Cancellation()


def read_request(argv: list[str] | None = None) -> tuple[dict, int | None]:
    parser = argparse.ArgumentParser(prog="python -m shared.training.worker")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--request-file", type=Path)
    source.add_argument("--request-json")
    source.add_argument("--request-uri", help="gs://bucket/path of the request (Vertex AI: a catalogue's request "
                                              "is larger than a job argument should be)")
    parser.add_argument("--shard", type=int, help="the shard to train; default: this replica's, from CLUSTER_SPEC")
    args = parser.parse_args(argv)
    if args.request_uri:
        from shared.gcs import read_uri

        text = read_uri(args.request_uri)
    else:
        text = args.request_file.read_text() if args.request_file else args.request_json
    return json.loads(text), args.shard


def main() -> int:
    from shared.lifecycle import shards

    configure()
    cancellation.install()
    request, shard = read_request()
    from_cluster, primary = shards.index_from_environment()
    shard = from_cluster if shard is None else shard

    def leave(waits: bool) -> None:
        """Deregister the local worker; the primary replica of a Vertex job first waits for the
        other shards, however its own shard ended: the job, and every replica, ends with it."""
        try:
            if primary and waits:
                wait_for_shards(job_context(request).cfg, str(request["run_id"]))
        finally:
            if isinstance(request.get("settings"), dict) and request.get("run_id"):
                worker_file(request["settings"].get("state_dir", ".state"), str(request["run_id"]), shard).unlink(
                    missing_ok=True)

    cancellation.before_exit = leave
    # On Vertex AI a failed shard is recorded (and retried by the reconciler); exiting with
    # an error would fail the whole job and stop every other replica's shard with it.
    failure_code = 0 if os.environ.get("CLUSTER_SPEC") else 1
    try:
        execute(request, shard)
    except ValidationError as error:  # a malformed request is not retried: no attempt can fix it
        log.error("malformed training request: %s", error)
        leave(waits=False)
        return 2
    except Exception:  # a failure inside the pipeline is logged and recorded where it happened
        log.exception("training shard %d of %s stopped", shard, request.get("run_id"))
        leave(waits=True)
        return failure_code
    leave(waits=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
