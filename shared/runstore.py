"""Reading and writing the durable history in Firestore (its layout: shared/layout.py):
runs and their parts, decisions, series, the champion index and alias history, with the
batching and packing that keep a catalogue inside Firestore's limits.
"""
from __future__ import annotations

import random
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable

from shared.config import Settings
from shared.layout import Collection
from shared.states import TERMINAL_RUN, RunStatus

PER_ISBN_FIELDS = ("data_hashes", "decisions", "refreshes")
PART_ISBNS = 1000  # ~250 KB of hashes and reasons a part
PARTS_PER_COMMIT = 8  # ~2 MB a commit, well under Firestore's 10 MiB a request
READ_BATCH = 300  # documents per batched read
TRANSACTION_PAUSE, TRANSACTION_PAUSE_CAP = 0.05, 2.0  # seconds: the pause after a conflict grows to the cap


def now() -> datetime:
    return datetime.now(timezone.utc)


class RunStore:
    def __init__(self, cfg: Settings, client=None):
        from google.cloud import firestore

        self.cfg = cfg
        self.db = client or firestore.Client(project=cfg.project_id)
        self._firestore = firestore

    def col(self, name: str):
        return self.db.collection(self.cfg.collection(name))

    def in_transaction(self, work, attempts: int = 20):
        """Run ``work(transaction)`` in a Firestore transaction, retried on contention.

        Each attempt is a transaction of its own and a conflict is followed by a random,
        growing pause. The client would retry at once, keeping the transaction's place in
        line, which production honours; the emulator instead aborts both of two transactions
        that wait on each other ("Transaction lock timeout"), so deliveries retried in
        lockstep collide on every attempt (seen in CI: 20 attempts, all aborted)."""
        from google.api_core.exceptions import Aborted

        for attempt in range(1, attempts + 1):
            try:
                return self._firestore.transactional(work)(self.db.transaction(max_attempts=1))
            except Exception as failed:  # noqa: BLE001 - re-raised unless a conflict is behind it
                # The client wraps a conflict at commit in ValueError, and a rollback that fails
                # after it (the transaction is gone) raises its own error from the conflict.
                if attempt == attempts or not _caused_by(failed, Aborted):
                    raise
            time.sleep(random.uniform(0, min(TRANSACTION_PAUSE_CAP, TRANSACTION_PAUSE * 2 ** attempt)))

    def read_many(self, transaction, refs: dict[str, Any]) -> dict[str, dict | None]:
        """Several documents in one round trip (inside a transaction, before any write)."""
        if not refs:  # the emulator answers an empty batch get with an error
            return {}
        by_path = {ref.path: key for key, ref in refs.items()}
        found = {key: None for key in refs}
        for snap in self.db.get_all(list(refs.values()), transaction=transaction):
            if snap.exists:
                found[by_path[snap.reference.path]] = snap.to_dict()
        return found

    # --- runs -------------------------------------------------------------------------------
    def create_run(self, isbns: list[str], cause: dict, correlation_id: str, launcher: str,
                   run_id: str | None = None, transaction=None, **fields: Any) -> str:
        """The run's document, its ISBNs packed, and, for its per-ISBN maps (PER_ISBN_FIELDS),
        its part documents (``write_run_parts``) in the same commit (``transaction`` if
        given). A catalogue's parts do not fit in one commit: outside a transaction they are
        written first; in one, the caller writes them first and creates the run without the
        maps. ``run()`` puts them together again."""
        run_id = run_id or f"run-{now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"
        per_isbn = {name: fields.pop(name) for name in PER_ISBN_FIELDS if name in fields}
        ordered = sorted(isbns)
        parts = part_count(len(ordered))
        doc = {"run_id": run_id, "status": RunStatus.QUEUED, "isbns": pack(ordered),
               "cause": cause, "correlation_id": correlation_id, "launcher": launcher, "created_at": now(),
               "updated_at": now(), "attempt": 1, "parts": parts, **fields}
        writer = transaction if transaction is not None else self.db.batch()
        if per_isbn and parts <= PARTS_PER_COMMIT:
            self._add_parts(writer, run_id, ordered, per_isbn, range(parts))
        elif per_isbn and transaction is None:
            self.write_run_parts(run_id, ordered, per_isbn)
        elif per_isbn:
            raise ValueError(f"{parts} run parts do not fit in the run's transaction: write_run_parts() them first")
        writer.create(self.col(Collection.RUNS).document(run_id), doc)
        if transaction is None:
            writer.commit()
        return run_id

    def write_run_parts(self, run_id: str, isbns: list[str], per_isbn: dict[str, dict]) -> None:
        """A run's per-ISBN maps in part documents of PART_ISBNS ISBNs (a catalogue's hashes
        and reasons would not fit in one 1 MiB document), PARTS_PER_COMMIT a commit (nor all
        its parts in one 10 MiB commit). Written before the run exists, by a caller whose maps
        are fixed (a cause's group markers): one that then loses the run's creation to a
        concurrent delivery wrote the same parts."""
        ordered, count = sorted(isbns), part_count(len(isbns))
        for first in range(0, count, PARTS_PER_COMMIT):
            batch = self.db.batch()
            self._add_parts(batch, run_id, ordered, per_isbn, range(first, min(first + PARTS_PER_COMMIT, count)))
            batch.commit()

    def _add_parts(self, writer, run_id: str, ordered: list[str], per_isbn: dict[str, dict], parts: range) -> None:
        for part in parts:
            chunk = ordered[part * PART_ISBNS:(part + 1) * PART_ISBNS]  # each part looks up its own ISBNs only
            writer.set(self.col(Collection.RUN_PARTS).document(f"{run_id}-p{part:04d}"),
                       {"run_id": run_id, **{name: {i: values[i] for i in chunk if i in values}
                                             for name, values in per_isbn.items()}})

    def update_run(self, run_id: str, **fields: Any) -> None:
        if "status" in fields and fields["status"] not in tuple(RunStatus):
            raise ValueError(f"unknown run status {fields['status']!r}")
        stamp = {"updated_at": now()}
        if fields.get("status") == RunStatus.RUNNING:
            stamp["started_at"] = now()
        if fields.get("status") in TERMINAL_RUN:
            stamp["finished_at"] = now()
        self.col(Collection.RUNS).document(run_id).update({**fields, **stamp})

    def run(self, run_id: str, with_results: bool = True) -> dict | None:
        """A run with its per-ISBN maps, and its per-ISBN ``results`` gathered from its shards
        (written by shared/lifecycle/shards.py)."""
        snap = self.col(Collection.RUNS).document(run_id).get()
        if not snap.exists:
            return None
        run = unpack_isbns(snap.to_dict())
        parts = self.read_batched(Collection.RUN_PARTS, [f"{run_id}-p{part:04d}" for part in range(run.get("parts", 0))])
        for _, part in sorted(parts.items()):
            for name, values in part.items():
                if name in PER_ISBN_FIELDS:
                    run.setdefault(name, {}).update(values)
        if with_results:
            run["results"] = self.run_results(run_id)
        return run

    def run_shards(self, run_id: str) -> list[dict]:
        query = self.col(Collection.SHARDS).where(filter=self._firestore.FieldFilter("run_id", "==", run_id))
        return sorted((d.to_dict() for d in query.stream()), key=lambda s: s["index"])

    def run_results(self, run_id: str) -> dict[str, dict]:
        """Every per-ISBN result of a run, gathered from its shards."""
        return {isbn: r for shard in self.run_shards(run_id) for isbn, r in sorted((shard.get("results") or {}).items())}

    def runs(self, limit: int = 50, status: str | None = None) -> list[dict]:
        query = self.col(Collection.RUNS)
        if status:
            query = query.where(filter=self._firestore.FieldFilter("status", "==", status))
        query = query.order_by("created_at", direction=self._firestore.Query.DESCENDING).limit(limit)
        return [unpack_isbns(d.to_dict()) for d in query.stream()]

    # --- decisions --------------------------------------------------------------------------
    def record_decision(self, isbn: str, action: str, reasons: list[str], inputs: dict, cause: dict,
                        correlation_id: str, run_id: str | None = None, transaction=None) -> str:
        """The decision; one that measured the served version on weeks it never saw also
        becomes the ISBN's latest measure, which a monitor tick reads for a whole catalogue
        in batches instead of querying decisions per ISBN."""
        decision_id = f"{cause.get('key', 'manual')}-{isbn}"
        doc = {"decision_id": decision_id, "isbn": isbn, "action": action, "reasons": reasons,
               "inputs": inputs, "cause": cause, "correlation_id": correlation_id, "run_id": run_id,
               "decided_at": now()}
        writes = [(self.col(Collection.DECISIONS).document(decision_id), doc)]
        if inputs.get("degradation") and inputs.get("champion_version"):
            writes.append((self.col(Collection.DEGRADATION).document(isbn), {
                "version": inputs["champion_version"], "measured": inputs["degradation"], "decided_at": doc["decided_at"],
                "decision_id": decision_id}))
        for ref, written in writes:
            (transaction.set(ref, written) if transaction is not None else ref.set(written))
        return decision_id

    def decisions(self, limit: int = 100, isbn: str | None = None) -> list[dict]:
        if isbn:  # one book's decisions are few: filter here, sort locally, no composite index
            query = self.col(Collection.DECISIONS).where(filter=self._firestore.FieldFilter("isbn", "==", isbn))
            return sorted((d.to_dict() for d in query.stream()), key=lambda d: d["decided_at"], reverse=True)[:limit]
        query = self.col(Collection.DECISIONS).order_by("decided_at", direction=self._firestore.Query.DESCENDING).limit(limit)
        return [d.to_dict() for d in query.stream()]

    # --- series -----------------------------------------------------------------------------
    def series(self, isbn: str) -> dict | None:
        snap = self.col(Collection.SERIES).document(isbn).get()
        return unpack_series(snap.to_dict()) if snap.exists else None

    def all_series(self) -> dict[str, dict]:
        return {d.id: unpack_series(d.to_dict()) for d in self.col(Collection.SERIES).stream()}

    def series_isbns(self) -> set[str]:
        """The ISBNs with data, without reading their weeks."""
        return {d.id for d in self.col(Collection.SERIES).select([]).stream()}

    # --- alias history ----------------------------------------------------------------------
    def record_alias_move(self, isbn: str, model_name: str, alias: str, from_version: str | None,
                          to_version: str, action: str, reason: str, actor: str, correlation_id: str,
                          **extra: Any) -> None:
        self.col(Collection.ALIAS_HISTORY).document().set({
            "isbn": isbn, "model_name": model_name, "alias": alias, "from_version": from_version,
            "to_version": to_version, "action": action, "reason": reason, "actor": actor,
            "correlation_id": correlation_id, "at": now(), **extra})

    def record_champion(self, isbn: str, entry: dict) -> None:
        """The champion index: what decisions need of an ISBN's served version (its tags and
        serving forecast), kept beside the data so a catalogue is decided without a registry
        round trip per ISBN. Written at every move of the serving alias."""
        self.col(Collection.CHAMPIONS).document(isbn).set({**entry, "isbn": isbn, "indexed_at": now()})

    def champions(self, isbns: list[str]) -> dict[str, dict]:
        """Index entries of these ISBNs, read in batches."""
        return self.read_batched(Collection.CHAMPIONS, isbns)

    def read_batched(self, collection: str, ids: list[str], field_paths: list[str] | None = None,
                     batch: int = READ_BATCH) -> dict[str, dict]:
        """Documents by id (only ``field_paths`` of each, if given), ``batch`` per round trip;
        the ones that do not exist are left out."""
        found = {}
        for start in range(0, len(ids), batch):
            refs = [self.col(collection).document(i) for i in ids[start:start + batch]]
            found.update((snap.id, snap.to_dict() or {}) for snap in self.db.get_all(refs, field_paths=field_paths)
                         if snap.exists)
        return found

    def alias_history(self, isbn: str) -> list[dict]:
        query = self.col(Collection.ALIAS_HISTORY).where(filter=self._firestore.FieldFilter("isbn", "==", isbn))
        return sorted((d.to_dict() for d in query.stream()), key=lambda d: d["at"])

    def by_correlation(self, correlation_id: str) -> dict[str, list[dict]]:
        """Everything recorded for one correlation id, per collection."""
        found = {}
        for collection in (Collection.CAUSES, Collection.DECISIONS, Collection.RUNS, Collection.ALIAS_HISTORY):
            query = self.col(collection).where(filter=self._firestore.FieldFilter("correlation_id", "==", correlation_id))
            found[collection] = [unpack_isbns(d.to_dict()) for d in query.stream()]
        return found

    # --- generic helpers --------------------------------------------------------------------
    def get(self, collection: str, key: str) -> dict | None:
        snap = self.col(collection).document(key).get()
        return snap.to_dict() if snap.exists else None

    def stream(self, collection: str) -> Iterable[dict]:
        return (d.to_dict() for d in self.col(collection).stream())


def pack(value: Any) -> bytes:
    """A large structure as one compressed Firestore bytes value. Firestore's client encodes
    every map entry and list element as a protobuf message of its own (~40 µs each): a
    catalogue's weekly series, stored as maps, spent most of deciding in that encoding."""
    import json
    import zlib

    return zlib.compress(json.dumps(value, separators=(",", ":")).encode(), 6)


def unpack(packed: bytes) -> Any:
    import json
    import zlib

    return json.loads(zlib.decompress(packed))


def part_count(isbns: int) -> int:
    return -(-isbns // PART_ISBNS)


def _caused_by(error: BaseException, kind: type) -> bool:
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def unpack_isbns(doc: dict | None) -> dict | None:
    """A run or cause document with its ISBNs as a list. They are stored packed: a
    catalogue's list would pass 1 MiB near 50,000 ISBNs (100,000 pack into ~480 KB);
    documents stored before have a list already."""
    if doc and isinstance(doc.get("isbns"), bytes):
        return {**doc, "isbns": unpack(doc["isbns"])}
    return doc


def pack_series(doc: dict) -> dict:
    """A series document as stored: its weeks and their upload orders packed."""
    stored = {k: v for k, v in doc.items() if k not in ("weeks", "week_orders")}
    return {**stored, "packed": pack({"weeks": doc["weeks"], "week_orders": doc.get("week_orders", {})})}


def unpack_series(doc: dict | None) -> dict | None:
    """A series document with its weeks and upload orders as maps (a document stored before
    packing has them as maps already)."""
    if not doc or "packed" not in doc:
        return doc
    stored = {k: v for k, v in doc.items() if k != "packed"}
    return {**stored, **unpack(doc["packed"])}


def expires(seconds: int) -> datetime:
    return now() + timedelta(seconds=seconds)
