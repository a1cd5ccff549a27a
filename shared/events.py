"""Typed, versioned schemas for every message on every topic, and their transport.

Every message we publish carries attributes ``event_type``, ``schema_version`` and
``correlation_id``; the attributes let a consumer route without decoding, and their
presence keeps functions-framework's push conversion happy (it reads
``message.attributes`` without a default). GCS notifications are Google's format, not ours:
they are modelled as they arrive.
"""
from __future__ import annotations

import base64
import hashlib
import json
from datetime import datetime, timezone
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from shared.states import AliasMove, IsbnStatus, RunEvent

SCHEMA_VERSION = "1"


class Topics:
    """The topic names of deploy/topology.yaml that code publishes to or routes by."""
    SALES_UPLOADS = "sales-uploads"
    RETRAIN_TICKS = "retrain-ticks"
    TRAINING_REQUESTS = "training-requests"
    RECONCILE_TICKS = "reconcile-ticks"
    TRAINING_EVENTS = "training-events"
    MODEL_CHANGES = "model-changes"
    REJECTED_INPUT = "rejected-input"
    DEAD_LETTERS = "dead-letters"
    FORECAST_EXPORTS = "forecast-exports"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Event(BaseModel):
    model_config = ConfigDict(extra="forbid")
    schema_version: str = SCHEMA_VERSION
    correlation_id: str
    occurred_at: datetime = Field(default_factory=utcnow)


class ScheduleTick(Event):
    """What the Cloud Scheduler jobs publish (the payload is static; the tick time is
    the message's publishTime)."""
    event_type: Literal["schedule.tick"] = "schedule.tick"
    job: str
    correlation_id: str = "scheduler"


class TrainingRequest(Event):
    event_type: Literal["training.requested"] = "training.requested"
    isbns: list[str] = []
    force: bool = False
    reason: str = "manual request"
    requested_by: str = "unknown"


class IsbnResult(BaseModel):
    isbn: str
    # challenger: passed the gates but risky (shared/promotion.py): on trial, the champion serves
    status: IsbnStatus
    version: str | None = None
    mlflow_run_id: str | None = None
    reason: str = ""
    metrics: dict[str, float] = {}
    seconds: float = 0.0  # compute spent on this ISBN (tuning and fitting, or the refresh)


class TrainingEvent(Event):
    event_type: Literal["training.status"] = "training.status"
    run_id: str
    status: RunEvent
    isbns: list[str]
    launcher: str = "local"
    reason: str = ""
    results: list[IsbnResult] = []
    shard: str = Field("", description="which shard this is about (shared/lifecycle/shards.label); empty: the whole run")


class ModelChange(Event):
    event_type: Literal["model.changed"] = "model.changed"
    isbn: str
    model_name: str
    alias: str
    action: AliasMove
    from_version: str | None
    to_version: str
    reason: str = ""


class ForecastsExported(Event):
    """The weekly forecast export is in the bucket (shared/export.py)."""
    event_type: Literal["forecasts.exported"] = "forecasts.exported"
    week: str
    isbns: int
    rows: int
    objects: list[str]
    left_out: dict[str, str] = {}
    seconds: float = 0.0


class RejectedInput(Event):
    event_type: Literal["input.rejected"] = "input.rejected"
    bucket: str
    object_name: str
    generation: str
    reasons: list[str]


class MessageRejected(Event):
    """A message a function acknowledged without acting on it, because no redelivery could
    make it acceptable (malformed, of the wrong schema for its topic, ...)."""
    event_type: Literal["message.rejected"] = "message.rejected"
    function: str
    topic: str | None
    message_id: str
    delivery_key: str
    reason: str


OurEvent = Annotated[
    Union[ScheduleTick, TrainingRequest, TrainingEvent, ModelChange, RejectedInput, MessageRejected],
    Field(discriminator="event_type"),
]
_OUR_EVENT = TypeAdapter(OurEvent)


class GcsObject(BaseModel):
    """The JSON_API_V1 object resource of a GCS notification (sizes arrive as strings)."""
    model_config = ConfigDict(extra="allow")
    bucket: str
    name: str
    generation: str
    size: int = 0
    md5Hash: str | None = None
    contentType: str | None = None
    timeCreated: datetime | None = None
    metadata: dict[str, str] = {}

    @property
    def upload_order(self) -> str:
        from shared.sales import upload_order

        # A generation is the object's creation time in microseconds, in GCS as in the emulator.
        created = self.timeCreated or datetime.fromtimestamp(int(self.generation) / 1e6, timezone.utc)
        return upload_order(created, self.generation)

    @property
    def upload_key(self) -> str:
        """The idempotency key of an upload: one (bucket, object, generation) is one upload."""
        return hashlib.sha256(f"{self.bucket}/{self.name}#{self.generation}".encode()).hexdigest()[:32]

    @property
    def correlation_id(self) -> str:
        # An uploader may tag the object; otherwise the upload key traces it.
        return self.metadata.get("correlation_id") or f"upload-{self.upload_key[:16]}"


# Attributes of a continuation (shared/trigger.continue_later): how many times the work was
# handed on, and the delivery key and publish time of the message it continues.
CONTINUATION, ORIGIN_KEY, ORIGIN_TIME = "bookcast_continuation", "bookcast_origin_key", "bookcast_origin_time"


class PubSubMessage(BaseModel):
    """A Pub/Sub message as it reaches a function (push or Eventarc)."""
    message_id: str
    publish_time: datetime
    attributes: dict[str, str]
    data: bytes
    subscription: str | None = None
    topic: str | None = None

    @classmethod
    def from_cloud_event(cls, cloud_event: Any) -> "PubSubMessage":
        body = cloud_event.data
        message = body["message"]
        source = cloud_event["source"] if "source" in cloud_event else ""
        return cls(
            message_id=str(message.get("messageId") or message.get("message_id")),
            publish_time=message.get("publishTime") or message.get("publish_time") or utcnow(),
            attributes=message.get("attributes") or {},
            data=base64.b64decode(message.get("data") or b""),
            subscription=body.get("subscription"),
            topic=source.rsplit("/topics/", 1)[-1] if "/topics/" in source else None,
        )

    def payload(self) -> Any:
        return json.loads(self.data or b"null")

    @property
    def is_gcs_notification(self) -> bool:
        return self.attributes.get("payloadFormat") == "JSON_API_V1" and "objectId" in self.attributes

    def gcs_object(self) -> GcsObject:
        return GcsObject.model_validate(self.payload())

    @property
    def delivery_key(self) -> str:
        """Identifies one published message across redeliveries. Message ids are unique only
        per topic, and the emulator restarts them at 1, so topic, publish time and content
        join in (a redelivery repeats all of them). A continuation (work handed on to a new
        delivery, shared/trigger.continue_later) keeps the key of the message it continues."""
        if ORIGIN_KEY in self.attributes:
            return self.attributes[ORIGIN_KEY]
        raw = f"{self.topic or self.subscription}|{self.message_id}|{self.publish_time.isoformat()}|".encode()
        return hashlib.sha256(raw + self.data).hexdigest()[:32]

    @property
    def first_published(self) -> datetime:
        """When the message was first published; a continuation's original's time."""
        origin = self.attributes.get(ORIGIN_TIME)
        return datetime.fromisoformat(origin) if origin else self.publish_time

    def continuation_attributes(self) -> dict[str, str]:
        """The attributes a continuation of this message is published with."""
        handed_on = int(self.attributes.get(CONTINUATION, "0")) + 1
        return {**self.attributes, ORIGIN_KEY: self.delivery_key, ORIGIN_TIME: self.first_published.isoformat(),
                CONTINUATION: str(handed_on)}

    @property
    def correlation_id(self) -> str | None:
        if "correlation_id" in self.attributes:
            return self.attributes["correlation_id"]
        # Never raises: it is read before any handler decides whether the message is valid.
        try:
            if self.is_gcs_notification:
                return self.gcs_object().correlation_id
            payload = self.payload()  # a hand-published event may carry it only in the payload
        except ValueError:  # pydantic's ValidationError is one
            return None
        cid = payload.get("correlation_id") if isinstance(payload, dict) else None
        return cid if isinstance(cid, str) else None

    def event(self) -> Event:
        return _OUR_EVENT.validate_python(self.payload())


def receive(cloud_event: Any, logger: Any) -> PubSubMessage:
    """Decode a Pub/Sub CloudEvent and log its arrival: the first line of every trace."""
    message = PubSubMessage.from_cloud_event(cloud_event)
    cid = message.correlation_id
    logger.info("received %s on %s", message.attributes.get("event_type") or message.attributes.get("eventType", "message"),
                message.topic, extra={"topic": message.topic, "message_id": message.message_id,
                                      "attributes": message.attributes, "correlation_id": cid})
    return message
