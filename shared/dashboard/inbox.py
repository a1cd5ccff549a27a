"""What the local alert receivers got (emulators/receivers.py), one JSON object a line in
the state directory: the Slack-compatible webhook's posts and the SMTP server's mails. Only
the local cloud has it; in the cloud the alerts page shows Firestore's alert state alone."""
from __future__ import annotations

import json
import threading
from datetime import datetime, timezone
from pathlib import Path

from shared.config import Settings

FILE_NAME = "alert-inbox.jsonl"
_append_lock = threading.Lock()


def path(cfg: Settings) -> Path:
    return Path(cfg.state_dir) / FILE_NAME


def append(inbox: Path, channel: str, **fields) -> dict:
    record = {"received_at": datetime.now(timezone.utc).isoformat(), "channel": channel, **fields}
    with _append_lock, open(inbox, "a", encoding="utf-8") as out:
        out.write(json.dumps(record, default=str) + "\n")
    return record


def read(inbox: Path, limit: int) -> list[dict]:
    """The newest ``limit`` records, newest first; nothing if no receiver ever wrote."""
    try:
        lines = inbox.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in reversed(lines[-limit:]) if line.strip()]
