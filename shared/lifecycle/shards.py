"""A training run over many ISBNs is split into shards, each trained by its own worker:
a local process, or a replica of the run's Vertex AI CustomJob. One document per shard
holds its ISBNs, status and per-ISBN results, so a catalogue's results never meet in one
Firestore document (1 MiB), and a shard that fails is retried or cancelled alone.

    shards/{run_id}-k{index}   status queued → running → succeeded | failed | quarantined | cancelled

The shard that finishes last closes the run: its status, counts and compute seconds.
"""
from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import dataclass

from shared.layout import Collection
from shared.logs import get_logger
from shared.runstore import RunStore, now
from shared.states import ENDED_WELL, SERVABLE, TERMINAL_RUN, IsbnStatus, RunStatus, ShardRetry

log = get_logger(__name__)


# A shard's document holds its ISBNs' results (~700 bytes each): at most this many keep it
# far below Firestore's 1 MiB, even when that means more shards than max_shards.
MAX_SHARD_ISBNS = 1000


def plan(isbns: list[str], isbns_per_shard: int, max_shards: int) -> list[list[str]]:
    """Contiguous slices of the sorted ISBNs, as even as possible: ``isbns_per_shard`` each,
    unless that needs more than ``max_shards``, and never more than MAX_SHARD_ISBNS.
    Contiguous, because a decision's snapshot documents hold neighbouring ISBNs, so a shard
    reads few of them."""
    ordered = sorted(isbns)
    if not ordered:
        return []
    count = max(1, min(max_shards, math.ceil(len(ordered) / isbns_per_shard)),
                math.ceil(len(ordered) / MAX_SHARD_ISBNS))
    size, extra = divmod(len(ordered), count)
    slices, start = [], 0
    for index in range(count):
        end = start + size + (index < extra)
        slices.append(ordered[start:end])
        start = end
    return slices


def shard_id(run_id: str, index: int) -> str:
    return f"{run_id}-k{index:03d}"


def label(index: int, count: int) -> str:
    """How events and logs name a shard: ``2/4`` is the second of four."""
    return f"{index + 1}/{count}"


def create(store: RunStore, run_id: str, slices: list[list[str]], attempt: int, leased: bool = True) -> None:
    """The run's shard documents and, on each ISBN the run has leased, the shard that trains
    it (so a shard's heartbeat and release touch only its own leases). Idempotent: a
    relaunch of the same attempt rewrites the same documents."""
    batch = store.db.batch()
    writes = 0
    for index, isbns in enumerate(slices):
        batch.set(store.col(Collection.SHARDS).document(shard_id(run_id, index)),
                  {"run_id": run_id, "index": index, "count": len(slices), "isbns": isbns, "status": RunStatus.QUEUED,
                   "attempt": attempt, "results": {}, "created_at": now(), "cancel_requested": False})
        writes += 1
        for isbn in isbns if leased else ():
            batch.update(store.col(Collection.LEASES).document(isbn), {"shard": index})
            writes += 1
            if writes >= 450:  # a Firestore commit takes at most 500 writes
                batch.commit()
                batch, writes = store.db.batch(), 0
    if writes:
        batch.commit()
    store.update_run(run_id, shards=len(slices))


def get(store: RunStore, run_id: str, index: int) -> dict | None:
    return store.get(Collection.SHARDS, shard_id(run_id, index))


def start(store: RunStore, run_id: str, index: int, handle: str) -> dict | None:
    """Mark the shard running; None if it already ended (a restarted replica, a second
    delivery of the launch) or was cancelled before it began, so the worker does not run it
    twice."""
    ref = store.col(Collection.SHARDS).document(shard_id(run_id, index))

    run_ref = store.col(Collection.RUNS).document(run_id)

    def work(transaction) -> dict | None:
        shard = ref.get(transaction=transaction).to_dict()
        run = run_ref.get(transaction=transaction).to_dict()
        if shard is None or shard["status"] in TERMINAL_RUN or shard.get("cancel_requested"):
            return None
        transaction.update(ref, {"status": RunStatus.RUNNING, "started_at": now(), "handle": handle})
        if run.get("status") == RunStatus.QUEUED:
            transaction.update(run_ref, {"status": RunStatus.RUNNING, "started_at": now(), "updated_at": now()})
        return shard

    return store.in_transaction(work)


def report(store: RunStore, run_id: str, index: int, result: dict) -> None:
    """One ISBN's result on its shard as soon as it is known (the shard's end writes them all
    again): `bookcast run` and the dashboard show a running shard's progress."""
    from google.cloud.firestore_v1.field_path import FieldPath

    try:
        store.col(Collection.SHARDS).document(shard_id(run_id, index)).update(
            {FieldPath("results", result["isbn"]).to_api_repr(): result})
    except Exception:  # progress is a courtesy: the shard's end records every result
        log.warning("could not report %s on shard %d of %s", result["isbn"], index, run_id, exc_info=True)


def run_status(statuses: list[str], isbn_statuses: list[str]) -> RunStatus:
    """A run serves something if any shard did; otherwise its worst ending."""
    if set(isbn_statuses) & SERVABLE:
        return RunStatus.SUCCEEDED
    if IsbnStatus.QUARANTINED in isbn_statuses:
        return RunStatus.QUARANTINED
    if statuses and all(s == RunStatus.CANCELLED for s in statuses):
        return RunStatus.CANCELLED
    trained_nothing = bool(isbn_statuses)  # results, and none of them served or quarantined
    if RunStatus.FAILED in statuses or trained_nothing:
        return RunStatus.FAILED
    return RunStatus.SUCCEEDED


def finish(store: RunStore, run_id: str, index: int, status: str, results: dict[str, dict] | None = None,
           error: str = "", zenml_run_id: str = "") -> tuple[bool, dict | None]:
    """Record the shard's end: whether this call recorded it (the first ending wins: a shard
    reaped as dead that later reports keeps its recorded ending), and, when it was the run's
    last shard, the run's summary as the run is closed. ``results`` join the ones reported
    while it ran: a shard that fails late keeps the ISBNs it already served."""
    ref = store.col(Collection.SHARDS).document(shard_id(run_id, index))
    run_ref = store.col(Collection.RUNS).document(run_id)

    def work(transaction) -> tuple[bool, dict | None]:
        run = run_ref.get(transaction=transaction).to_dict()
        count = run.get("shards") or 1
        shards = store.read_many(transaction, {i: store.col(Collection.SHARDS).document(shard_id(run_id, i))
                                               for i in range(count)})
        mine = shards.get(index)
        if mine is None or mine["status"] in TERMINAL_RUN:
            return False, None
        known = {**(mine.get("results") or {}), **(results or {})}
        ended = {"status": status, "finished_at": now(), "error": error[:2000], "zenml_run_id": zenml_run_id,
                 "results": known, "compute_seconds": round(sum(r.get("seconds", 0.0) for r in known.values()), 2)}
        if status == RunStatus.FAILED:
            ended["retry"] = ShardRetry.PENDING
        transaction.update(ref, ended)
        shards[index] = {**mine, **ended}
        if run["status"] in TERMINAL_RUN or any(s is None or s["status"] not in TERMINAL_RUN for s in shards.values()):
            return True, None
        isbn_statuses = [r["status"] for s in shards.values() for r in (s.get("results") or {}).values()]
        summary = {"status": run_status([s["status"] for s in shards.values()], isbn_statuses),
                   "counts": dict(Counter(isbn_statuses)),
                   "shards_failed": sum(s["status"] == RunStatus.FAILED for s in shards.values()),
                   "compute_seconds": round(sum(s.get("compute_seconds", 0.0) for s in shards.values()), 2)}
        errors = [f"shard {i}: {s['error']}" for i, s in sorted(shards.items()) if s.get("error")]
        transaction.update(run_ref, {**summary, "error": "; ".join(errors)[:2000], "updated_at": now(),
                                     "finished_at": now()})
        return True, summary

    return store.in_transaction(work)


def request_cancel(store: RunStore, run_id: str, index: int | None = None) -> list[int]:
    """Ask the run's shards (or one) to stop; each worker sees it within a heartbeat. Returns
    the shards asked."""
    asked = []
    for shard in store.run_shards(run_id):
        if (index is None or shard["index"] == index) and shard["status"] not in TERMINAL_RUN:
            store.col(Collection.SHARDS).document(shard_id(run_id, shard["index"])).update({"cancel_requested": True})
            asked.append(shard["index"])
    return asked


def cancel_requested(store: RunStore, run_id: str, index: int) -> bool:
    return bool((get(store, run_id, index) or {}).get("cancel_requested"))


def index_from_environment(environ: dict[str, str] | None = None) -> tuple[int, bool]:
    """This replica's shard, from Vertex AI's CLUSTER_SPEC: the primary (workerpool0) trains
    shard 0, replica j of workerpool1 trains shard j + 1. Also whether this is the primary of
    a multi-replica job, which must outlive the others: the job's state is the primary's."""
    spec = json.loads((environ if environ is not None else os.environ).get("CLUSTER_SPEC") or "{}")
    task = spec.get("task") or {}
    replicas = sum(len(members) for members in (spec.get("cluster") or {}).values())
    if task.get("type") == "workerpool1":
        return int(task.get("index", 0)) + 1, False
    return 0, replicas > 1


def failed_unretried(store: RunStore, limit: int = 200) -> list[dict]:
    """Failed shards whose retry is still to be decided (retried, or given up on)."""
    from google.cloud import firestore

    query = store.col(Collection.SHARDS).where(filter=firestore.FieldFilter("retry", "==", ShardRetry.PENDING)).limit(limit)
    return [d.to_dict() for d in query.stream()]


def settle_retry(store: RunStore, run_id: str, index: int, state: ShardRetry, retried_as: str | None = None,
                 transaction=None) -> None:
    fields = {"retry": state, **({"retried_as": retried_as} if retried_as else {})}
    ref = store.col(Collection.SHARDS).document(shard_id(run_id, index))
    (transaction.update(ref, fields) if transaction is not None else ref.update(fields))


@dataclass(frozen=True)
class ShardRef:
    """What announcing a shard's ending needs to know about it."""
    run_id: str
    index: int
    count: int
    correlation_id: str
    launcher: str
    isbns: list[str]

    @classmethod
    def of_job(cls, job) -> "ShardRef":
        return cls(job.run_id, job.shard or 0, job.shards, job.correlation_id, job.launcher, job.isbns)

    @classmethod
    def of_run(cls, run: dict, shard: dict) -> "ShardRef":
        return cls(run["run_id"], shard["index"], shard.get("count", 1), run.get("correlation_id", run["run_id"]),
                   run.get("launcher", "local"), shard["isbns"])


def close(cfg, store: RunStore, ref: ShardRef, status: RunStatus, results: list[dict], reason: str,
          zenml_run_id: str = "") -> dict | None:
    """Record the shard's ending and announce it with its results; when it was the run's
    last shard, announce the run's ending too (with counts, not results: each shard's event
    carried its own). Returns the run's summary if the run closed."""
    from shared.events import IsbnResult, Topics, TrainingEvent
    from shared.pubsub import publish

    recorded, run = finish(store, ref.run_id, ref.index, status, {r["isbn"]: r for r in results},
                           error="" if status in ENDED_WELL else reason, zenml_run_id=zenml_run_id)
    if not recorded:  # its ending was recorded before (reaped as dead, or a second report): announced then
        log.info("shard %d of %s had ended already; not %s again", ref.index, ref.run_id, status)
        return None
    publish(cfg, Topics.TRAINING_EVENTS, TrainingEvent(
        correlation_id=ref.correlation_id, run_id=ref.run_id, status=status, isbns=ref.isbns, launcher=ref.launcher,
        results=[IsbnResult(**r) for r in results], reason=reason, shard=label(ref.index, ref.count)))
    if run is not None:
        counts = ", ".join(f"{n} {s}" for s, n in sorted(run["counts"].items())) or "no results"
        publish(cfg, Topics.TRAINING_EVENTS, TrainingEvent(
            correlation_id=ref.correlation_id, run_id=ref.run_id, status=run["status"], isbns=[],
            launcher=ref.launcher, reason=f"{ref.count} shard(s), {run['shards_failed']} failed: {counts}"))
        log.info("training run %s %s: %s", ref.run_id, run["status"], counts, extra={"run_id": ref.run_id})
    return run
