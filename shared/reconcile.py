"""GCS is the source of truth for uploads: the reconciler lists the upload prefix and
handles every object generation whose cause is missing or unfinished, exactly as its
notification would have been. A notification dead-lettered while trigger_training was
down, or never sent, is replayed this way; one already handled is left alone, so running
the reconciler again changes nothing.
"""
from __future__ import annotations

import time

from typing import Callable

from shared.causes import upload_cause_key
from shared.config import Settings
from shared.events import GcsObject
from shared.failures import Unfinished
from shared.layout import Collection
from shared.logs import get_logger
from shared.runstore import RunStore
from shared.states import CauseStatus

log = get_logger(__name__)
PAGE = 200  # objects whose causes are looked up in one batch read
# Replaying stops after this long and the next tick continues, so a reconcile push is
# acknowledged well inside its 60 s ack deadline.
BUDGET_SECONDS = 40.0


def reconcile(cfg: Settings, store: RunStore, handle_upload: Callable[..., object],
              budget_seconds: float = BUDGET_SECONDS) -> list[str]:
    """Handle the unhandled uploads under the prefix with ``handle_upload`` (trigger_training's,
    as for a notification); returns their cause keys."""
    from shared.gcs import storage_client

    deadline = time.monotonic() + budget_seconds
    blobs = storage_client(cfg.project_id).list_blobs(cfg.data_bucket, prefix=cfg.upload_prefix, page_size=PAGE)
    replayed: list[str] = []
    for page in blobs.pages:
        objects = [GcsObject(bucket=b.bucket.name, name=b.name, generation=str(b.generation), size=b.size or 0,
                             timeCreated=b.time_created, metadata=b.metadata or {}) for b in page]
        causes = store.read_many(None, {o.upload_key: store.col(Collection.CAUSES).document(upload_cause_key(o))
                                        for o in objects})
        for obj in objects:
            cause = causes[obj.upload_key]
            if cause and cause["status"] != CauseStatus.DECIDING:
                continue
            if time.monotonic() > deadline:
                log.warning("reconciling stopped at its time budget; the next tick continues",
                            extra={"replayed": len(replayed)})
                return replayed
            key = f"reconcile-{obj.upload_key}"
            try:
                outcome = handle_upload(cfg, store, obj, message_id=key, delivery_key=key)
            except Unfinished:  # a big file: its remaining groups are resumed on the next tick
                log.warning("gs://%s/%s#%s is partly decided; the next tick continues", obj.bucket, obj.name,
                            obj.generation)
                return replayed + [upload_cause_key(obj)]
            except Exception:  # one object that fails must not keep the others from being replayed
                log.exception("replaying gs://%s/%s#%s failed; the next tick tries again", obj.bucket, obj.name,
                              obj.generation)
                continue
            log.warning("replayed gs://%s/%s#%s: %s", obj.bucket, obj.name, obj.generation, outcome.status,
                        extra={"cause": upload_cause_key(obj), "outcome": outcome.status})
            replayed.append(upload_cause_key(obj))
    return replayed
