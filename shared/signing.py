"""Internal events carry an HMAC signature, so a consumer can tell ours from a forgery.

Anyone who may publish to a topic could otherwise raise alerts with their own text (a
forged ``training.status`` failure, a fake rollback). Every event we publish is signed
with a key shared by our own processes; the functions accept events on the internal topics
only with a valid signature. Locally the key is a fixed development value; in the cloud it
comes from Secret Manager through BOOKCAST_EVENT_SIGNING_KEY.
"""
from __future__ import annotations

import hashlib
import hmac
import os

from shared.events import PubSubMessage, Topics

KEY_VARIABLE = "BOOKCAST_EVENT_SIGNING_KEY"
LOCAL_KEY = "bookcast-local-development-key"
SIGNATURE = "signature"
# Produced only by our functions and training jobs; hand-published training requests and
# Google's own notifications and dead letters cannot be signed, so they are checked by schema.
SIGNED_TOPICS = frozenset({Topics.TRAINING_EVENTS, Topics.MODEL_CHANGES, Topics.REJECTED_INPUT})


def signature(event_type: str, data: bytes) -> str:
    key = os.environ.get(KEY_VARIABLE) or LOCAL_KEY
    return hmac.new(key.encode(), event_type.encode() + b"\n" + data, hashlib.sha256).hexdigest()


def authentic(message: PubSubMessage) -> bool:
    """True unless the message arrived on a signed topic without our valid signature."""
    if message.topic not in SIGNED_TOPICS:
        return True
    given = message.attributes.get(SIGNATURE, "")
    return hmac.compare_digest(given, signature(message.attributes.get("event_type", ""), message.data))
