"""A local Cloud Scheduler: fires the topology's jobs on their cron, publishing the same
static message (data and attributes) Cloud Scheduler's Pub/Sub target would."""
from __future__ import annotations

import argparse
import json
import os
import time
from datetime import datetime, timezone

from croniter import croniter
from google.cloud import pubsub_v1

from shared import topology as topology_module
from shared.logs import configure, get_logger

log = get_logger("scheduler")


def fire(job: topology_module.SchedulerJob, project: str, publisher=None) -> str:
    publisher = publisher or pubsub_v1.PublisherClient()
    data = json.dumps(job.data).encode()
    message_id = publisher.publish(publisher.topic_path(project, job.topic), data, **job.attributes).result(30)
    log.info("fired scheduler job %s", job.name, extra={"job": job.name, "topic": job.topic, "message_id": message_id})
    return message_id


def run(project: str) -> None:
    jobs = topology_module.load().scheduler_jobs
    publisher = pubsub_v1.PublisherClient()
    now = datetime.now(timezone.utc)
    schedule = {job.name: croniter(job.schedule, now) for job in jobs}
    due = {name: it.get_next(datetime) for name, it in schedule.items()}
    log.info("scheduler ready", extra={"jobs": {n: d.isoformat() for n, d in due.items()}})
    while True:
        now = datetime.now(timezone.utc)
        for job in jobs:
            if due[job.name] <= now:
                try:
                    fire(job, project, publisher)
                except Exception:
                    log.exception("scheduler job %s failed to publish", job.name)
                due[job.name] = schedule[job.name].get_next(datetime)
        time.sleep(max(0.5, min(30.0, min(d for d in due.values()).timestamp() - now.timestamp())))


def main() -> None:
    configure()
    parser = argparse.ArgumentParser(prog="python -m emulators.scheduler")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run")
    fire_parser = sub.add_parser("fire", help="fire a job now")
    fire_parser.add_argument("job")
    args = parser.parse_args()
    project = os.environ["BOOKCAST_PROJECT_ID"]
    if args.command == "run":
        run(project)
    else:
        jobs = {j.name: j for j in topology_module.load().scheduler_jobs}
        if args.job not in jobs:
            parser.error(f"unknown job {args.job!r}; jobs: {', '.join(jobs)}")
        print(fire(jobs[args.job], project))


if __name__ == "__main__":
    main()
