"""One training per ISBN at a time: a lease document per ISBN in Firestore.

A cause that arrives while its ISBN is leased is queued on the lease as a follow-up, and
when the run ends, the follow-ups become one new training request. A lease outlives its
run only if the job died; then it expires after its TTL, the run is marked failed, and it
is retried once.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from shared.layout import Collection
from shared.logs import get_logger
from shared.runstore import RunStore, expires, now

log = get_logger(__name__)


def read(store: RunStore, transaction, isbns: list[str]) -> dict[str, dict | None]:
    """The current leases (Firestore transactions read everything before writing), each
    expired one marked with whether its run exists: a cause that stopped between deciding
    groups holds leases for a run it never created, and claim() must not update that run."""
    held = store.read_many(transaction, {isbn: store.col(Collection.LEASES).document(isbn) for isbn in isbns})
    expired_runs = {lease["run_id"] for lease in held.values() if lease and lease["expires_at"] <= now()}
    runs = store.read_many(transaction, {r: store.col(Collection.RUNS).document(r) for r in expired_runs})
    for lease in held.values():
        if lease and lease["run_id"] in expired_runs:
            lease["run_exists"] = runs[lease["run_id"]] is not None
    return held


def claim(store: RunStore, transaction, held: dict[str, dict | None], isbns: list[str], run_id: str,
          ttl_seconds: int, cause: dict) -> tuple[list[str], list[str]]:
    """Lease the free ISBNs for ``run_id``; queue ``cause`` as a follow-up on the busy ones.
    An expired lease is taken over; the shard that held it is reaped after the commit
    (``taken_over``, then runs.reap_shard)."""
    leased, busy = [], []
    for isbn in isbns:
        lease = held.get(isbn)
        ref = store.col(Collection.LEASES).document(isbn)
        if lease and lease["run_id"] != run_id and lease["expires_at"] > now():
            follow_ups = lease.get("follow_ups", [])
            if cause.get("key") not in {f.get("key") for f in follow_ups}:
                transaction.update(ref, {"follow_ups": follow_ups + [cause]})
            busy.append(isbn)
            continue
        transaction.set(ref, {"isbn": isbn, "run_id": run_id, "acquired_at": now(),
                              "expires_at": expires(ttl_seconds), "follow_ups": []})
        leased.append(isbn)
    return leased, busy


def taken_over(held: dict[str, dict | None], run_id: str) -> set[tuple[str, int]]:
    """The (run, shard) pairs whose expired leases ``run_id`` takes over: dead shards of runs
    that exist, to be recorded as failed and retried."""
    return {(lease["run_id"], lease.get("shard", 0)) for lease in held.values()
            if lease and lease["run_id"] != run_id and lease["expires_at"] <= now() and lease.get("run_exists")}


def held_by(store: RunStore, run_id: str, shard: int | None = None):
    """The query for the leases a run holds, or one of its shards."""
    from google.cloud import firestore

    query = store.col(Collection.LEASES).where(filter=firestore.FieldFilter("run_id", "==", run_id))
    return query if shard is None else query.where(filter=firestore.FieldFilter("shard", "==", shard))


RELEASE_CHUNK = 400  # leases freed per transaction: a shard of 1,000 ISBNs stays under 500 writes a commit


def release_all(store: RunStore, run_id: str, shard: int | None = None) -> dict[str, list[dict]]:
    """Free the run's leases (or one shard's); returns the follow-up causes queued on them,
    per ISBN, and publishes them as training requests so nothing that arrived meanwhile is
    lost.

    Reading the follow-ups and deleting the leases is one transaction per chunk of leases: a
    cause queueing a follow-up at the same moment either lands before (and is handed off
    here) or finds the ISBN free and leases it itself. Each chunk's request is written to an
    outbox in its transaction and published after it, so a failed publish is retried
    (flush_follow_ups), not lost."""
    base = run_id if shard is None else f"{run_id}-k{shard:03d}"
    refs = [snap.reference for snap in held_by(store, run_id, shard).select([]).stream()]
    follow_ups: dict[str, list[dict]] = {}
    outboxes = []
    for chunk, start in enumerate(range(0, len(refs), RELEASE_CHUNK)):
        outbox_id = base if chunk == 0 else f"{base}-c{chunk}"

        def work(transaction, chunk_refs=refs[start:start + RELEASE_CHUNK], outbox_id=outbox_id):
            found: dict[str, list[dict]] = {}
            for snap in store.db.get_all(chunk_refs, transaction=transaction):
                lease = snap.to_dict() if snap.exists else None
                if not lease or lease["run_id"] != run_id:  # taken over meanwhile: no longer ours
                    continue
                if lease.get("follow_ups"):
                    found[lease["isbn"]] = lease["follow_ups"]
                transaction.delete(snap.reference)
            if found:
                transaction.set(store.col(Collection.FOLLOW_UPS).document(outbox_id),
                                {"request": follow_up_request(run_id, found).model_dump(mode="json"),
                                 "published": False, "at": now()})
            return found

        found = store.in_transaction(work)
        if found:
            follow_ups.update(found)
            outboxes.append(outbox_id)
    if outboxes:
        flush_follow_ups(store, outboxes)
    return follow_ups


def flush_follow_ups(store: RunStore, run_ids: list[str] | None = None) -> int:
    """Publish the follow-up requests still in the outbox (all of them, or these entries:
    a run's id, or a shard's)."""
    from google.cloud import firestore

    from shared.events import Topics, TrainingRequest
    from shared.pubsub import publish

    if run_ids is None:
        pending = store.col(Collection.FOLLOW_UPS).where(filter=firestore.FieldFilter("published", "==", False)).stream()
    else:
        pending = (store.col(Collection.FOLLOW_UPS).document(r).get() for r in run_ids)
    count = 0
    for snap in pending:
        entry = snap.to_dict() if snap.exists else None
        if not entry or entry["published"]:
            continue
        request = TrainingRequest.model_validate(entry["request"])
        publish(store.cfg, Topics.TRAINING_REQUESTS, request)
        snap.reference.update({"published": True})
        log.info("follow-up requested for %s after %s", request.isbns, snap.id)
        count += 1
    return count


def extend(store: RunStore, run_id: str, ttl_seconds: int, shard: int | None = None) -> int:
    """Push the expiry of the run's (or shard's) leases forward: the heartbeat of a training
    job that is alive."""
    batch, count = store.db.batch(), 0
    for snap in held_by(store, run_id, shard).select([]).stream():
        batch.update(snap.reference, {"expires_at": expires(ttl_seconds)})
        count += 1
        if count % 450 == 0:  # a commit takes at most 500 writes
            batch.commit()
            batch = store.db.batch()
    if count % 450:
        batch.commit()
    return count


class Heartbeat:
    """Extends a running shard's leases every third of their TTL until stopped, so only a
    job that really died lets its leases expire; and every few seconds checks whether the
    shard was asked to stop (``bookcast cancel``), calling ``on_cancel`` once if it was."""

    CANCEL_POLL_SECONDS = 5.0

    def __init__(self, store: RunStore, run_id: str, ttl_seconds: int, shard: int | None = None, on_cancel=None):
        import threading

        self.store, self.run_id, self.ttl, self.shard, self.on_cancel = store, run_id, ttl_seconds, shard, on_cancel
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        import time

        from shared.lifecycle import shards

        last_extended = time.monotonic()
        while not self.stopped.wait(min(self.ttl / 3, self.CANCEL_POLL_SECONDS)):
            try:
                if self.on_cancel and self.shard is not None and shards.cancel_requested(self.store, self.run_id,
                                                                                         self.shard):
                    self.on_cancel()
                    return
                if time.monotonic() - last_extended >= self.ttl / 3:
                    extend(self.store, self.run_id, self.ttl, self.shard)
                    last_extended = time.monotonic()
            except Exception:  # a missed beat is retried; the TTL leaves room for two more
                log.exception("lease heartbeat for %s failed", self.run_id)

    def __enter__(self) -> "Heartbeat":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)


def follow_up_request(run_id: str, follow_ups: dict[str, list[dict]]):
    from shared.events import TrainingRequest

    causes = [c for cs in follow_ups.values() for c in cs]
    return TrainingRequest(
        correlation_id=causes[0].get("correlation_id", run_id), isbns=sorted(follow_ups),
        force=any(c.get("forced") for c in causes), requested_by=f"follow-up of {run_id}",
        reason="causes that arrived during " + run_id + ": " + ", ".join(sorted({c.get("kind", "?") for c in causes})))


def expired(store: RunStore, at: datetime | None = None) -> list[dict[str, Any]]:
    from google.cloud import firestore

    at = at or now()
    query = store.col(Collection.LEASES).where(filter=firestore.FieldFilter("expires_at", "<", at))
    return [s.to_dict() for s in query.stream()]
