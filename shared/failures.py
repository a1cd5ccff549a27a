"""Permanent versus transient failure of a Pub/Sub-fed handler.

A transient failure (Firestore, MLflow or GCS unavailable) raises: the function answers
5xx and Pub/Sub redelivers with backoff. A permanent one (input no redelivery can fix)
raises PermanentFailure: the message is recorded with its reason, acknowledged (2xx) and
announced once on ``rejected-input``, where the monitor alerts on it.
"""
from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ValidationError

from shared.config import Settings
from shared.events import MessageRejected, PubSubMessage, Topics
from shared.text import clip
from shared.layout import Collection

MAX_REASON_BYTES = 16_000  # with the attributes, far below Firestore's 1 MiB per document
Model = TypeVar("Model", bound=BaseModel)


class PermanentFailure(Exception):
    def __init__(self, reason: str):
        self.reason = clip(reason, MAX_REASON_BYTES)
        super().__init__(self.reason)


class Unfinished(Exception):
    """Work stopped at its time budget, to be resumed by a new delivery of the same message
    (shared/trigger.continue_later), so a push is never held past its ack deadline."""


def parse(model: type[Model], message: PubSubMessage, defaults: dict | None = None) -> Model:
    """The message's payload as ``model`` (``defaults`` fill fields a JSON object leaves
    out), or a PermanentFailure saying why it is not one."""
    try:
        payload = message.payload()
        return model.model_validate({**defaults, **payload} if defaults and isinstance(payload, dict) else payload)
    except ValueError as error:  # bad JSON or a ValidationError
        detail = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'payload'}: {e['msg']}" for e in error.errors()) \
            if isinstance(error, ValidationError) else f"not JSON ({error})"
        raise PermanentFailure(f"not a valid {model.__name__} on {message.topic}: {detail}") from None


def record(cfg: Settings, function: str, message: PubSubMessage, failure: PermanentFailure, store=None) -> bool:
    """Store the rejection and announce it, once per message however often it is delivered;
    returns whether this delivery was the first."""
    from google.api_core.exceptions import AlreadyExists

    from shared.pubsub import publish
    from shared.runstore import RunStore, now

    store = store or RunStore(cfg)
    ref = store.col(Collection.REJECTIONS).document(message.delivery_key)
    attributes = {clip(k, 256): clip(v, 1024) for k, v in list(message.attributes.items())[:50]}
    try:
        ref.create({"function": function, "topic": message.topic, "message_id": message.message_id,
                    "attributes": attributes, "reason": failure.reason, "correlation_id": message.correlation_id,
                    "at": now(), "published": False})
        first = True
    except AlreadyExists:
        first = False
    if not (ref.get().to_dict() or {}).get("published"):
        publish(cfg, Topics.REJECTED_INPUT, MessageRejected(
            correlation_id=message.correlation_id or f"message-{message.delivery_key[:16]}", function=function,
            topic=message.topic, message_id=message.message_id, delivery_key=message.delivery_key,
            reason=failure.reason))
        ref.update({"published": True})
    return first
