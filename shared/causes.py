"""What makes trigger_training decide: an upload, a scheduled tick, a request, a follow-up
of a run that held the ISBNs, or the retry of a failed shard. Each is recorded once, as
causes/{key} (shared/layout.py), whatever the number of deliveries."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from shared.events import GcsObject
from shared.runstore import now


class CauseKind(StrEnum):
    UPLOAD = "upload"
    SCHEDULE = "schedule"
    REQUEST = "request"
    FOLLOW_UP = "follow-up"
    RETRY = "retry"
    MANUAL = "forced"        # `bookcast train`: trains the given series, no decision


@dataclass
class Cause:
    key: str
    kind: CauseKind
    correlation_id: str
    message_id: str
    delivery_key: str
    forced: bool = False
    detail: dict = field(default_factory=dict)
    received_at: datetime = field(default_factory=now)

    def as_dict(self) -> dict:
        return {"key": self.key, "kind": self.kind, "correlation_id": self.correlation_id,
                "message_id": self.message_id, "forced": self.forced, **self.detail}


def upload_cause_key(obj: GcsObject) -> str:
    return f"upload-{obj.upload_key}"
