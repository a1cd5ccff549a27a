"""The training job's entry point, the same locally (a background process) and on Vertex
AI (the container's command): run status in Firestore, the pipeline, events on failure.

    python -m shared.training.worker --request-file RUN.json
    python -m shared.training.worker --request-json '{...}'
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pydantic import ValidationError

from shared.events import Topics, TrainingEvent
from shared.jobs import TrainingJob
from shared.logs import configure, correlated, get_logger
from shared.training.flow import settings_of

log = get_logger("training.worker")


def execute(request: dict) -> dict:
    from shared.pubsub import publish
    from shared.runstore import RunStore

    job = TrainingJob.model_validate(request)
    request = job.model_dump(mode="json")  # what the pipeline's steps receive
    cfg = settings_of(request)
    store = RunStore(cfg)
    run_id = job.run_id
    with correlated(job.correlation_id):
        store.update_run(run_id, status="running")
        publish(cfg, Topics.TRAINING_EVENTS, TrainingEvent(correlation_id=job.correlation_id, run_id=run_id,
                                                           status="started", isbns=job.isbns, launcher=job.launcher))
        log.info("training run %s started", run_id, extra={"run_id": run_id, "isbns": job.isbns})
        try:
            from shared.leases import Heartbeat
            from shared.training import pipeline

            with Heartbeat(store, run_id, cfg.training.lease_ttl_seconds):
                summary = pipeline.run(request)
        except Exception as error:
            log.exception("training run %s failed", run_id, extra={"run_id": run_id})
            store.update_run(run_id, status="failed", error=f"{type(error).__name__}: {error}"[:2000])
            publish(cfg, Topics.TRAINING_EVENTS, TrainingEvent(
                correlation_id=job.correlation_id, run_id=run_id, status="failed", isbns=job.isbns,
                launcher=job.launcher, reason=f"{type(error).__name__}: {error}"[:500]))
            raise
        finally:
            from shared.leases import release_all

            release_all(store, run_id)
        log.info("training run %s %s", run_id, summary["status"], extra={"run_id": run_id, "status": summary["status"]})
        return summary


def read_request(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m shared.training.worker")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--request-file", type=Path)
    source.add_argument("--request-json")
    args = parser.parse_args(argv)
    return json.loads(args.request_file.read_text() if args.request_file else args.request_json)


def main() -> int:
    configure()
    request = read_request()
    try:
        execute(request)
    except ValidationError as error:  # a malformed request is not retried: no attempt can fix it
        log.error("malformed training request: %s", error)
        return 2
    except Exception:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
