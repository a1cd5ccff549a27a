"""Session fixtures: the real emulators (and MLflow) start once; every test gets its own
project id, which isolates Pub/Sub topics and Firestore data without wiping anything."""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from emulators.processes import stop
from emulators.stack import Ports, Stack
from shared.config import Settings, load_settings


@pytest.fixture(scope="session")
def cloud(tmp_path_factory) -> Stack:
    stack = Stack(tmp_path_factory.mktemp("cloud"), project="bookcast-test", ports=Ports.free(), profile="test")
    started = []
    try:
        started.append(stack.start_pubsub())
        started.append(stack.start_firestore())
        os.environ.update(stack.client_env())
        yield stack
    finally:
        for proc in started:
            stop(proc)


@pytest.fixture(scope="session")
def mlflow_server(cloud: Stack) -> str:
    proc = cloud.start_mlflow()
    yield f"http://127.0.0.1:{cloud.ports.mlflow}"
    stop(proc)


@pytest.fixture
def project(cloud: Stack) -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def cfg(project: str, cloud: Stack, tmp_path: Path) -> Settings:
    return load_settings("test").model_copy(update={
        "project_id": project,
        "mlflow_tracking_uri": f"http://127.0.0.1:{cloud.ports.mlflow}",
        "model_name_prefix": f"{project}-",
        "state_dir": str(tmp_path),
    })


@pytest.fixture
def project_gcs(cloud: Stack, project: str, monkeypatch) -> str:
    """A fake-gcs-server of this test's own, publishing notifications into its project."""
    from emulators.processes import free_port

    port = free_port()
    proc = cloud.start_gcs(project=project, name=f"gcs-{project}", port=port, backend="memory")
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
    yield f"http://127.0.0.1:{port}"
    stop(proc)


class Probe:
    """Pull subscriptions on the test project's topics, to see what was published."""

    def __init__(self, project: str, topics: list[str]):
        from google.cloud import pubsub_v1

        self.subscriber = pubsub_v1.SubscriberClient()
        self.project = project
        for topic in topics:
            self.subscriber.create_subscription(name=self._path(topic), topic=f"projects/{project}/topics/{topic}")

    def _path(self, topic: str) -> str:
        return self.subscriber.subscription_path(self.project, f"probe-{topic}")

    def messages(self, topic: str, at_least: int = 1, timeout: float = 20.0) -> list[dict]:
        import json
        import time

        found, deadline = [], time.monotonic() + timeout
        while len(found) < at_least and time.monotonic() < deadline:
            response = self.subscriber.pull(subscription=self._path(topic), max_messages=50, timeout=5)
            if response.received_messages:
                self.subscriber.acknowledge(subscription=self._path(topic),
                                            ack_ids=[m.ack_id for m in response.received_messages])
            found += [json.loads(m.message.data) for m in response.received_messages]
        return found


@pytest.fixture
def probe(cfg: Settings, cloud: Stack) -> Probe:
    from emulators.wiring import create_topics

    create_topics(cloud.topology, cfg.project_id)
    return Probe(cfg.project_id, [t.name for t in cloud.topology.topics])


@pytest.fixture
def trigger_function(cloud: Stack, cfg: Settings, project_gcs: str):
    """trigger-training under functions-framework for this test's project, pushed to by
    its own subscriptions, exactly as `up` wires it."""
    from emulators.wiring import wire

    ports = Ports.free().functions
    env = {"BOOKCAST_MODEL_NAME_PREFIX": cfg.model_name_prefix, "BOOKCAST_STATE_DIR": cfg.state_dir,
           "STORAGE_EMULATOR_HOST": project_gcs, "BOOKCAST_PROFILE": "test"}
    proc = cloud.start_function("trigger-training", project=cfg.project_id, port=ports["trigger-training"], extra_env=env)
    wire(cloud.topology, cfg.project_id, cloud.ports, function_ports=ports, only_functions={"trigger-training"})
    yield proc
    stop(proc)
