"""Publishing to Pub/Sub (the emulator when PUBSUB_EMULATOR_HOST is set)."""
from __future__ import annotations

import threading

from shared.config import Settings
from shared.events import Event
from shared.signing import encode
from shared.logs import get_logger

log = get_logger(__name__)
_lock = threading.Lock()
_publisher = None


def publisher():
    global _publisher
    with _lock:
        if _publisher is None:
            from google.cloud import pubsub_v1

            _publisher = pubsub_v1.PublisherClient()
        return _publisher


def publish(cfg: Settings, topic: str, event: Event, timeout: float = 30.0) -> str:
    data, attributes = encode(event)
    return publish_raw(cfg, topic, data, attributes, timeout)


def publish_raw(cfg: Settings, topic: str, data: bytes, attributes: dict[str, str], timeout: float = 30.0) -> str:
    """Publish a message as given (an encoded event, or a received one published again)."""
    path = publisher().topic_path(cfg.project_id, topic)
    message_id = publisher().publish(path, data, **attributes).result(timeout=timeout)
    log.info("published %s to %s", attributes.get("event_type", "a message"), topic,
             extra={"topic": topic, "message_id": message_id, "correlation_id": attributes.get("correlation_id")})
    return message_id
