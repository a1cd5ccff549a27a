"""Internal events carry an HMAC signature, so a consumer can tell ours from a forgery.

Anyone who may publish to a topic could otherwise raise alerts with their own text (a
forged ``training.status`` failure, a fake rollback). Every event we publish is signed
with a key shared by our own processes; the functions accept events on the internal topics
only with a valid signature. Locally the key is a fixed development value. In the cloud it
lives in Secret Manager: functions get it mounted as BOOKCAST_EVENT_SIGNING_KEY (the deploy's
``--set-secrets``); training jobs on Vertex AI, which cannot mount secrets, are given the
secret version's name (BOOKCAST_EVENT_SIGNING_KEY_SECRET) and read it once.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
from functools import lru_cache

from shared.events import Event, PubSubMessage, Topics

KEY_VARIABLE = "BOOKCAST_EVENT_SIGNING_KEY"
SECRET_VARIABLE = "BOOKCAST_EVENT_SIGNING_KEY_SECRET"
LOCAL_KEY = "bookcast-local-development-key"
SECRET_MANAGER_API = "https://secretmanager.googleapis.com/v1"
SIGNATURE = "signature"
# Produced only by our functions and training jobs; hand-published training requests and
# Google's own notifications and dead letters cannot be signed, so they are checked by schema.
SIGNED_TOPICS = frozenset({Topics.TRAINING_EVENTS, Topics.MODEL_CHANGES, Topics.REJECTED_INPUT})


def secret_access_url(version: str) -> str:
    """The Secret Manager REST call that reads a version (projects/P/secrets/S/versions/V)."""
    return f"{SECRET_MANAGER_API}/{version}:access"


@lru_cache(maxsize=4)
def secret_manager_value(version: str) -> str:
    """A secret version's value, through google-auth's REST session (no Secret Manager SDK
    for one call); any failure propagates: a job must not sign with another key."""
    import google.auth
    from google.auth.transport.requests import AuthorizedSession

    credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
    response = AuthorizedSession(credentials).get(secret_access_url(version), timeout=30)
    response.raise_for_status()
    return base64.b64decode(response.json()["payload"]["data"]).decode()


def signing_key() -> str:
    if os.environ.get(KEY_VARIABLE):
        return os.environ[KEY_VARIABLE]
    if os.environ.get(SECRET_VARIABLE):
        return secret_manager_value(os.environ[SECRET_VARIABLE])
    return LOCAL_KEY


def signature(event_type: str, data: bytes) -> str:
    key = signing_key()
    return hmac.new(key.encode(), event_type.encode() + b"\n" + data, hashlib.sha256).hexdigest()


def authentic(message: PubSubMessage) -> bool:
    """True unless the message arrived on a signed topic without our valid signature."""
    if message.topic not in SIGNED_TOPICS:
        return True
    given = message.attributes.get(SIGNATURE, "")
    return hmac.compare_digest(given, signature(message.attributes.get("event_type", ""), message.data))


def encode(event: Event) -> tuple[bytes, dict[str, str]]:
    """An event as published: its JSON, and attributes that route it and sign it."""
    data = event.model_dump_json().encode()
    attributes = {
        "event_type": event.event_type,  # type: ignore[attr-defined]
        "schema_version": event.schema_version,
        "correlation_id": event.correlation_id,
        SIGNATURE: signature(event.event_type, data),  # type: ignore[attr-defined]
    }
    return data, attributes
