"""The local cloud is wired as in GCP: a GCS upload reaches trigger-training as a
CloudEvent carrying the genuine notification attributes."""
from __future__ import annotations

import json
import time

import pytest
from google.cloud import pubsub_v1

from emulators.processes import StartupError, free_port, port_free, spawn, stop
from emulators.stack import Ports
from emulators.wiring import wire
from shared.gcs import storage_client


def wait_for_log(path: str, predicate, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(path) as log:
            for line in log:
                if line.startswith("{"):
                    entry = json.loads(line)
                    if predicate(entry):
                        return entry
        time.sleep(0.2)
    raise AssertionError(f"no matching log entry in {path} within {timeout}s")


def test_upload_reaches_trigger_training_as_cloud_event(cloud, project, project_gcs):
    function_ports = Ports.free().functions
    function = cloud.start_function("trigger-training", project=project, port=function_ports["trigger-training"])
    try:
        wire(cloud.topology, project, cloud.ports, function_ports=function_ports)
        blob = storage_client(project).bucket("bookcast-uploads").blob("sales/2026-w47.csv")
        blob.metadata = {"correlation_id": f"cid-{project}"}
        blob.upload_from_string("isbn,week,units\n9780306406157,2026-11-16,12\n", content_type="text/csv")

        entry = wait_for_log(function.log, lambda e: e.get("correlation_id") == f"cid-{project}")
        attributes = entry["attributes"]
        assert entry["topic"] == "sales-uploads"
        assert attributes["eventType"] == "OBJECT_FINALIZE"
        assert attributes["bucketId"] == "bookcast-uploads"
        assert attributes["objectId"] == "sales/2026-w47.csv"
        assert attributes["objectGeneration"] == str(blob.generation)
        assert attributes["payloadFormat"] == "JSON_API_V1"
    finally:
        stop(function)


def test_objects_outside_the_prefix_send_no_notification(cloud, project, project_gcs):
    subscriber = pubsub_v1.SubscriberClient()
    wire(cloud.topology, project, cloud.ports, buckets=False)
    sub = subscriber.subscription_path(project, "probe")
    subscriber.create_subscription(name=sub, topic=f"projects/{project}/topics/sales-uploads")
    client = storage_client(project)
    client.create_bucket("bookcast-uploads")
    client.bucket("bookcast-uploads").blob("notes/readme.txt").upload_from_string("hello")
    client.bucket("bookcast-uploads").blob("sales/a.csv").upload_from_string("isbn,week,units\n")
    received = subscriber.pull(subscription=sub, max_messages=10, timeout=10).received_messages
    assert [m.message.attributes["objectId"] for m in received] == ["sales/a.csv"]


def test_taken_port_is_a_clear_error(cloud, tmp_path):
    with pytest.raises(StartupError, match=f"port {cloud.ports.pubsub} is already in use"):
        spawn("pubsub", ["sleep", "1"], cloud.ports.pubsub, tmp_path)


def test_crashing_component_ends_start_up_with_its_log(cloud, tmp_path):
    from emulators.processes import wait_healthy

    proc = spawn("crasher", ["sh", "-c", "echo boom: bad flag; exit 3"], free_port(), tmp_path)
    with pytest.raises(StartupError, match="exited during start-up(.|\n)*boom: bad flag"):
        wait_healthy(proc, lambda: False, timeout=10)


def test_down_stops_the_java_emulator_behind_gcloud(cloud, tmp_path):
    from emulators.stack import Stack

    stack = Stack(tmp_path, project="downcheck", ports=Ports.free())
    proc = stack.start_pubsub()
    assert not port_free(stack.ports.pubsub)
    stop(proc)
    assert port_free(stack.ports.pubsub), "the Java Pub/Sub server outlived `down`"


def test_missing_java_is_a_clear_error(tmp_path, monkeypatch):
    import shutil

    from emulators.stack import Stack

    only_gcloud = tmp_path / "bin"
    only_gcloud.mkdir()
    (only_gcloud / "gcloud").symlink_to(shutil.which("gcloud"))
    monkeypatch.setenv("PATH", str(only_gcloud))
    with pytest.raises(StartupError, match="Java is missing"):
        Stack(tmp_path, ports=Ports.free()).start_firestore()


def test_messages_without_attributes_reach_the_function_once(cloud, project):
    """Pub/Sub push of a message with no attributes (as `gcloud pubsub topics publish` sends
    by default): functions-framework still delivers it, it is handled and acknowledged,
    and it is neither redelivered nor dead-lettered."""
    from emulators.wiring import create_topics, wire

    create_topics(cloud.topology, project)
    ports = Ports.free().functions
    function = cloud.start_function("trigger-training", project=project, port=ports["trigger-training"])
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    try:
        dead = subscriber.subscription_path(project, "dead-probe")
        subscriber.create_subscription(name=dead, topic=publisher.topic_path(project, "dead-letters"))
        wire(cloud.topology, project, cloud.ports, function_ports=ports, buckets=False,
             only_functions={"trigger-training"})
        publisher.publish(publisher.topic_path(project, "training-requests"),
                          b'{"event_type": "training.requested", "correlation_id": "by-hand", "isbns": []}').result()
        outcome = wait_for_log(function.log, lambda e: e.get("outcome") is not None)
        assert outcome["outcome"] == "accepted" and outcome["correlation_id"] == "by-hand"
        time.sleep(3)
        received = [line for line in open(function.log) if '"message": "received' in line]
        assert len(received) == 1 and '"attributes": {}' in received[0]
        assert not subscriber.pull(subscription=dead, max_messages=1, timeout=3).received_messages
    finally:
        stop(function)


def test_run_history_survives_a_restart_of_the_local_cloud(tmp_path, monkeypatch):
    from google.cloud import firestore

    from emulators.stack import Stack

    stack = Stack(tmp_path, project="persist", ports=Ports.free())
    proc = stack.start_firestore(persist=True)
    stack.registry.save({"firestore": proc})
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", f"127.0.0.1:{stack.ports.firestore}")
    firestore.Client(project="persist").collection("runs").document("run-1").set({"status": "succeeded"})
    assert stack.down() == ["firestore"]
    proc = stack.start_firestore(persist=True)
    try:
        snap = firestore.Client(project="persist").collection("runs").document("run-1").get()
        assert snap.to_dict() == {"status": "succeeded"}
    finally:
        stop(proc)
