"""The event wiring, read from deploy/topology.yaml by both the local cloud and the deploy."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict

TOPOLOGY_FILE = Path(__file__).resolve().parent.parent / "deploy" / "topology.yaml"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Notification(Strict):
    topic: str
    event_types: list[str] = ["OBJECT_FINALIZE"]
    object_prefix: str = ""


class Bucket(Strict):
    name: str
    notifications: list[Notification] = []


class Topic(Strict):
    name: str
    purpose: str = ""


class Function(Strict):
    name: str
    source: str
    entry_point: str
    kind: Literal["event", "http"]
    memory: str = "512Mi"
    timeout_seconds: int = 60
    packages: list[str] = []
    concurrency: int = 1
    cpu: str | None = None


class Trainer(Strict):
    """The training job's image: what the worker imports (deploy/staging.py pins it)."""
    packages: list[str]


class Defaults(Strict):
    ack_deadline_seconds: int = 60
    max_delivery_attempts: int = 5
    dead_letter_topic: str = "dead-letters"
    min_backoff_seconds: int = 10
    max_backoff_seconds: int = 600


class Subscription(Strict):
    """A push subscription to a function, or without one a pull subscription that keeps
    messages for inspection."""
    name: str
    topic: str
    function: str | None = None
    dead_letter: bool = True
    dead_letter_topic: str | None = None  # instead of the default one
    # Instead of the defaults: a subscription whose messages a person waits on retries at
    # least once a minute, so it is handled within a minute of its function coming back.
    max_backoff_seconds: int | None = None
    max_delivery_attempts: int | None = None

    def dead_letter_to(self, defaults: "Defaults") -> str | None:
        return (self.dead_letter_topic or defaults.dead_letter_topic) if self.dead_letter else None

    def backoff(self, defaults: "Defaults") -> tuple[int, int]:
        """Minimum and maximum seconds between redeliveries of a failed push."""
        return defaults.min_backoff_seconds, self.max_backoff_seconds or defaults.max_backoff_seconds

    def attempts(self, defaults: "Defaults") -> int:
        """Deliveries before a message goes to the dead-letter topic."""
        return self.max_delivery_attempts or defaults.max_delivery_attempts


class SchedulerJob(Strict):
    name: str
    schedule: str
    time_zone: str = "Etc/UTC"
    topic: str
    data: dict[str, Any]
    attributes: dict[str, str]


class Topology(Strict):
    buckets: list[Bucket]
    topics: list[Topic]
    functions: list[Function]
    trainer: Trainer
    subscriptions: list[Subscription]
    defaults: Defaults
    scheduler_jobs: list[SchedulerJob]

    def function(self, name: str) -> Function:
        return next(f for f in self.functions if f.name == name)

    def model_post_init(self, _: Any) -> None:
        topics = {t.name for t in self.topics}
        functions = {f.name for f in self.functions}
        wanted = [s.topic for s in self.subscriptions] + [j.topic for j in self.scheduler_jobs]
        wanted += [s.dead_letter_topic for s in self.subscriptions if s.dead_letter_topic]
        wanted += [n.topic for b in self.buckets for n in b.notifications] + [self.defaults.dead_letter_topic]
        unknown = sorted(set(wanted) - topics)
        if unknown:
            raise ValueError(f"topology refers to undeclared topics: {unknown}")
        missing = sorted({s.function for s in self.subscriptions if s.function} - functions)
        if missing:
            raise ValueError(f"topology refers to undeclared functions: {missing}")


def load(path: Path = TOPOLOGY_FILE) -> Topology:
    return Topology.model_validate(yaml.safe_load(path.read_text()))
