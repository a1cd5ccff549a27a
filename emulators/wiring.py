"""Creates the topology's topics, push subscriptions and buckets on the emulators.

Idempotent: an existing topic, subscription or bucket is left as it is, so `up` can be
re-run and tests can wire fresh projects on a shared emulator.
"""
from __future__ import annotations

from google.api_core.exceptions import AlreadyExists, Conflict
from google.cloud import pubsub_v1
from google.protobuf import duration_pb2

from shared.gcs import storage_client
from shared.topology import Topology


def push_endpoint(port: int, project: str, topic: str) -> str:
    # functions-framework takes the CloudEvent's topic from the push URL path.
    return f"http://127.0.0.1:{port}/projects/{project}/topics/{topic}"


def create_topics(topology: Topology, project: str) -> None:
    publisher = pubsub_v1.PublisherClient()
    for topic in topology.topics:
        try:
            publisher.create_topic(name=publisher.topic_path(project, topic.name))
        except AlreadyExists:
            pass


def wire(topology: Topology, project: str, ports, function_ports: dict[str, int] | None = None,
         buckets: bool = True, only_functions: set[str] | None = None) -> None:
    """Topics, push subscriptions (to ``only_functions`` if given) and buckets."""
    function_ports = function_ports or ports.functions
    publisher = pubsub_v1.PublisherClient()
    subscriber = pubsub_v1.SubscriberClient()
    create_topics(topology, project)
    d = topology.defaults
    for sub in topology.subscriptions:
        if only_functions is not None and sub.function not in only_functions:
            continue
        least, most = sub.backoff(d)
        request = {
            "name": subscriber.subscription_path(project, sub.name),
            "topic": publisher.topic_path(project, sub.topic),
            "ack_deadline_seconds": d.ack_deadline_seconds,
            # Without a retry policy the emulator redelivers a failing push every second forever.
            "retry_policy": {"minimum_backoff": duration_pb2.Duration(seconds=least),
                             "maximum_backoff": duration_pb2.Duration(seconds=most)},
        }
        if sub.function:
            request["push_config"] = {"push_endpoint": push_endpoint(function_ports[sub.function], project, sub.topic)}
        if sub.dead_letter_to(d):
            request["dead_letter_policy"] = {
                "dead_letter_topic": publisher.topic_path(project, sub.dead_letter_to(d)),
                "max_delivery_attempts": sub.attempts(d)}
        try:
            subscriber.create_subscription(request=request)
        except AlreadyExists:
            pass
    if buckets:
        client = storage_client(project)
        for bucket in topology.buckets:
            try:
                client.create_bucket(bucket.name)
            except Conflict:
                pass
