"""trigger_training's logic: uploads, scheduled ticks and manual requests become recorded
decisions and at most one training run per cause.

At-least-once delivery is absorbed in one Firestore transaction per cause: the cause
document (keyed by upload (bucket, object, generation), tick time or request id), the
message id, the series, the decisions, the leases and the run are written together or not
at all. Work after the commit (launching, publishing) is marked done on the cause, so a
redelivery finishes what a crash interrupted instead of doing it twice.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime

from google.api_core.exceptions import NotFound

from shared import leases, model_store, sales
from shared.config import Settings
from shared.decisions import Decision, decide
from shared.events import GcsObject, PubSubMessage, RejectedInput, TrainingEvent, TrainingRequest
from shared.logs import correlated, get_logger
from shared.runstore import RunStore, now

log = get_logger(__name__)


@dataclass
class Cause:
    key: str
    kind: str                      # upload | schedule | request | follow-up
    correlation_id: str
    message_id: str
    delivery_key: str
    forced: bool = False
    detail: dict = field(default_factory=dict)
    received_at: datetime = field(default_factory=now)

    def as_dict(self) -> dict:
        return {"key": self.key, "kind": self.kind, "correlation_id": self.correlation_id,
                "message_id": self.message_id, "forced": self.forced, **self.detail}


@dataclass
class Outcome:
    status: str                    # accepted | rejected | duplicate | ignored
    detail: str
    run_id: str | None = None
    decisions: list[Decision] = field(default_factory=list)


# --- entry point ------------------------------------------------------------------------------
def handle(cfg: Settings, message: PubSubMessage, store: RunStore | None = None) -> Outcome:
    store = store or RunStore(cfg)
    if store.get("messages", message.delivery_key):
        return Outcome("duplicate", f"message {message.message_id} was already handled")
    if message.is_gcs_notification:
        return handle_upload(cfg, store, message)
    event_type = message.attributes.get("event_type") or _payload_type(message)
    if event_type == "schedule.tick":
        job = (message.payload() or {}).get("job", "unknown")
        cause = Cause(key=f"tick-{job}-{message.publish_time:%Y%m%dT%H%M}", kind="schedule",
                      correlation_id=f"tick-{job}-{message.publish_time:%Y%m%dT%H%M}", message_id=message.message_id,
                      delivery_key=message.delivery_key,
                      detail={"job": job, "publish_time": message.publish_time.isoformat()})
        return handle_isbns(cfg, store, cause, isbns=None)
    if event_type == "training.requested":
        request = TrainingRequest.model_validate(message.payload())
        cause = Cause(key=f"request-{message.delivery_key}", kind="follow-up" if "follow-up" in request.requested_by
                      else "request", correlation_id=request.correlation_id, message_id=message.message_id,
                      delivery_key=message.delivery_key,
                      forced=request.force, detail={"requested_by": request.requested_by, "reason": request.reason})
        return handle_isbns(cfg, store, cause, isbns=request.isbns or None)
    log.warning("ignored a message of unknown type %r", event_type, extra={"attributes": message.attributes})
    return Outcome("ignored", f"unknown event type {event_type!r}")


def _payload_type(message: PubSubMessage) -> str | None:
    """Hand-published messages (`gcloud pubsub topics publish`) often carry no attributes;
    our events also name their type in the payload."""
    try:
        payload = message.payload()
    except ValueError:
        return None
    return payload.get("event_type") if isinstance(payload, dict) else None


# --- uploads ----------------------------------------------------------------------------------
def handle_upload(cfg: Settings, store: RunStore, message: PubSubMessage) -> Outcome:
    obj = message.gcs_object()
    cause = Cause(key=f"upload-{obj.upload_key}", kind="upload", correlation_id=obj.correlation_id,
                  message_id=message.message_id, delivery_key=message.delivery_key,
                  detail={"bucket": obj.bucket, "object": obj.name, "generation": obj.generation})
    with correlated(cause.correlation_id):
        existing = store.get("causes", cause.key)
        if existing:
            finish_pending(cfg, store, existing)
            return Outcome("duplicate", f"gs://{obj.bucket}/{obj.name}#{obj.generation} was already handled",
                           run_id=existing.get("run_id"))
        try:
            rows = read_upload(cfg, obj)
        except sales.UploadRejected as rejected:
            return reject(cfg, store, cause, obj, rejected.reasons)
        weeks_by_isbn = {isbn: sales.weeks_of(group) for isbn, group in rows.groupby("isbn")}
        return commit(cfg, store, cause, weeks_by_isbn, source=f"gs://{obj.bucket}/{obj.name}#{obj.generation}")


def read_upload(cfg: Settings, obj: GcsObject):
    from shared.gcs import storage_client

    rules = sales.UploadRules(prefix=cfg.upload_prefix, max_bytes=cfg.training.max_upload_bytes)
    if not obj.name.startswith(rules.prefix):
        raise sales.UploadRejected(obj.name, [f"{obj.name}: location: uploads belong under {rules.prefix!r}"])
    if obj.size > rules.max_bytes:
        raise sales.UploadRejected(obj.name, [f"{obj.name}: size: {obj.size} bytes exceeds the limit of {rules.max_bytes}"])
    blob = storage_client(cfg.project_id).bucket(obj.bucket).blob(obj.name, generation=int(obj.generation))
    try:
        content = blob.download_as_bytes()
    except NotFound:
        raise sales.UploadRejected(obj.name, [f"{obj.name}: generation {obj.generation} no longer exists"]) from None
    return sales.parse_upload(obj.name, content, rules)


def reject(cfg: Settings, store: RunStore, cause: Cause, obj: GcsObject, reasons: list[str]) -> Outcome:
    doc = {**cause.as_dict(), "status": "rejected", "reasons": reasons, "received_at": cause.received_at, "published": False}
    def record(transaction) -> bool:
        ref = store.col("causes").document(cause.key)
        if ref.get(transaction=transaction).exists:
            return False
        transaction.set(ref, doc)
        transaction.set(store.col("messages").document(cause.delivery_key), {"cause": cause.key, "at": now()})
        return True

    if store.in_transaction(record):
        log.warning("rejected upload gs://%s/%s: %s", obj.bucket, obj.name, "; ".join(reasons[:3]),
                    extra={"reasons": reasons, "cause": cause.key})
    finish_pending(cfg, store, store.get("causes", cause.key))
    return Outcome("rejected", "; ".join(reasons))


# --- ticks and requests -----------------------------------------------------------------------
def handle_isbns(cfg: Settings, store: RunStore, cause: Cause, isbns: list[str] | None) -> Outcome:
    with correlated(cause.correlation_id):
        existing = store.get("causes", cause.key)
        if existing:
            finish_pending(cfg, store, existing)
            return Outcome("duplicate", f"{cause.key} was already handled", run_id=existing.get("run_id"))
        if cause.kind == "schedule":
            reap_expired_leases(cfg, store)
        known = store.all_series()
        wanted = isbns or sorted(known)
        unknown = [i for i in wanted if i not in known]
        if unknown:
            log.warning("no data for requested ISBNs %s", unknown, extra={"cause": cause.key})
        weeks_by_isbn = {i: known[i]["weeks"] for i in wanted if i in known}
        return commit(cfg, store, cause, weeks_by_isbn, source=None, merge=False)


# --- the transaction --------------------------------------------------------------------------
def champions(cfg: Settings, isbns: list[str]) -> dict[str, tuple]:
    """Each ISBN's champion and its serving forecast; looked up concurrently, since a
    catalogue upload needs two registry round trips per ISBN."""
    from concurrent.futures import ThreadPoolExecutor

    def lookup(isbn: str) -> tuple:
        target = model_store.resolve(cfg, isbn)
        return target, model_store.serving_forecast(cfg, target.run_id) if target else None

    with ThreadPoolExecutor(max_workers=8) as pool:
        return dict(zip(isbns, pool.map(lookup, isbns)))


def commit(cfg: Settings, store: RunStore, cause: Cause, weeks_by_isbn: dict[str, dict], source: str | None,
           merge: bool = True) -> Outcome:
    """Record the cause, merge the data, decide per ISBN, lease and create the run: atomically."""
    isbns = sorted(weeks_by_isbn)
    current = champions(cfg, isbns)  # outside the transaction: MLflow is not transactional
    run_id = f"run-{now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"
    decided_at = now()

    def apply(transaction):
        cause_ref = store.col("causes").document(cause.key)
        if cause_ref.get(transaction=transaction).exists:
            return None
        series_refs = {i: store.col("series").document(i) for i in isbns}
        series = store.read_many(transaction, series_refs)
        held = leases.read(store, transaction, isbns)
        decisions, sources_of = [], {}
        for isbn in isbns:
            prior = series[isbn] or {"weeks": {}, "sources": []}
            sources_of[isbn] = prior["sources"] + ([source] if source and source not in prior["sources"] else [])
            weeks = {**prior["weeks"], **weeks_by_isbn[isbn]} if merge else dict(prior["weeks"])
            missing = sales.missing_weeks(sorted(datetime.fromisoformat(w).date() for w in weeks))
            target, forecast = current[isbn]
            decision = decide(isbn, weeks, target, forecast, cfg.decision, cause.forced, decided_at)
            if missing:
                decision = Decision(isbn, "skip", [f"series has {len(missing)} missing week(s) between uploads, "
                                                   f"first {missing[0]}: send those weeks to train"], decision.inputs)
            decisions.append(decision)
            if merge:
                transaction.set(series_refs[isbn], {"isbn": isbn, "weeks": weeks, "sources": sources_of[isbn],
                                                    "data_hash": decision.inputs["data_hash"], "updated_at": now(),
                                                    "last_cause": cause.key})
        to_train = [d.isbn for d in decisions if d.action == "train"]
        leased, busy = leases.claim(store, transaction, held, to_train, run_id, cfg.training.lease_ttl_seconds,
                                    cause.as_dict())
        for d in decisions:
            if d.isbn in busy:
                d.action = "coalesce"
                d.reasons = d.reasons + [f"already training in {held[d.isbn]['run_id']}: queued as a follow-up"]
            store.record_decision(d.isbn, d.action, d.reasons, d.inputs, cause.as_dict(), cause.correlation_id,
                                  run_id=run_id if d.isbn in leased else None, transaction=transaction)
        sources = sorted({s for i in leased for s in sources_of[i]})
        if leased:
            store.create_run(leased, cause.as_dict(), cause.correlation_id, cfg.launcher, run_id=run_id,
                             transaction=transaction, sources=sources,
                             decisions={d.isbn: d.reasons for d in decisions if d.isbn in leased})
        transaction.set(cause_ref, {**cause.as_dict(), "status": "accepted", "received_at": cause.received_at,
                                    "isbns": isbns, "run_id": run_id if leased else None,
                                    "launched": not leased, "published": True,
                                    "summary": {a: sum(d.action == a for d in decisions) for a in ("train", "skip", "coalesce")}})
        transaction.set(store.col("messages").document(cause.delivery_key), {"cause": cause.key, "at": now()})
        return decisions, leased

    result = store.in_transaction(apply)
    if result is None:
        existing = store.get("causes", cause.key)
        finish_pending(cfg, store, existing)
        return Outcome("duplicate", f"{cause.key} was handled concurrently", run_id=existing.get("run_id"))
    decisions, leased = result
    for d in decisions:
        log.info("decision %s: %s (%s)", d.isbn, d.action, "; ".join(d.reasons),
                 extra={"isbn": d.isbn, "action": d.action, "cause": cause.key})
    finish_pending(cfg, store, store.get("causes", cause.key))
    return Outcome("accepted", f"{len(leased)} to train, {sum(d.action == 'skip' for d in decisions)} skipped, "
                               f"{sum(d.action == 'coalesce' for d in decisions)} coalesced",
                   run_id=run_id if leased else None, decisions=decisions)


# --- after the commit -------------------------------------------------------------------------
def finish_pending(cfg: Settings, store: RunStore, cause: dict | None) -> None:
    """Launch and publish what a committed cause still owes; safe to repeat."""
    if not cause:
        return
    from shared.pubsub import publish

    ref = store.col("causes").document(cause["key"])
    if cause["status"] == "rejected" and not cause.get("published"):
        publish(cfg, "rejected-input", RejectedInput(correlation_id=cause["correlation_id"], bucket=cause["bucket"],
                                                     object_name=cause["object"], generation=cause["generation"],
                                                     reasons=cause["reasons"]))
        ref.update({"published": True})
    if cause["status"] == "accepted" and cause.get("run_id") and not cause.get("launched"):
        if claim_launch(store, cause["run_id"]):
            launch_run(cfg, store, cause["run_id"])
        ref.update({"launched": True})


def claim_launch(store: RunStore, run_id: str) -> bool:
    """Exactly one launcher per run, even when two deliveries race to finish it."""
    def claim(transaction) -> bool:
        ref = store.col("runs").document(run_id)
        run = ref.get(transaction=transaction).to_dict()
        if run.get("launch_claimed"):
            return False
        transaction.update(ref, {"launch_claimed": now()})
        return True

    return store.in_transaction(claim)


def launch_run(cfg: Settings, store: RunStore, run_id: str, attempt: int = 1) -> None:
    from shared.launch import launcher_for, training_request
    from shared.pubsub import publish

    run = store.run(run_id)
    request = training_request(cfg, run_id, run["isbns"], run["sources"], run["correlation_id"], run["cause"],
                               cfg.launcher, attempt=attempt)
    info = launcher_for(cfg).launch(request)
    store.update_run(run_id, launch={**info.detail, "handle": info.handle}, attempt=attempt)
    publish(cfg, "training-events", TrainingEvent(correlation_id=run["correlation_id"], run_id=run_id, status="queued",
                                                  isbns=run["isbns"], launcher=info.launcher,
                                                  reason="; ".join(f"{i}: {', '.join(r)}" for i, r in
                                                                   (run.get("decisions") or {}).items())[:1000]))


def reap_expired_leases(cfg: Settings, store: RunStore) -> list[str]:
    """Runs whose job died (their lease expired): mark each failed and retry it once, as a
    new run that names the one it retries."""
    retries = []
    for old_run_id in sorted({lease["run_id"] for lease in leases.expired(store)}):
        old = store.run(old_run_id) or {}
        store.update_run(old_run_id, status="failed", error="lease expired: the training job stopped reporting")
        follow_ups = leases.release_all(store, old_run_id, request_follow_ups=False)
        if old.get("attempt", 1) >= 2 or not old.get("isbns"):
            log.warning("run %s lost its lease after its retry; not retried again", old_run_id)
            continue
        cause = Cause(key=f"retry-{old_run_id}", kind="retry", correlation_id=old.get("correlation_id", old_run_id),
                      message_id=f"retry-{old_run_id}", delivery_key=f"retry-{old_run_id}", forced=True, detail={"retry_of": old_run_id})
        run_id = f"{old_run_id}-retry"

        def relaunch(transaction) -> bool:
            if store.col("runs").document(run_id).get(transaction=transaction).exists:
                return False
            held = leases.read(store, transaction, old["isbns"])
            leased, _ = leases.claim(store, transaction, held, old["isbns"], run_id,
                                     cfg.training.lease_ttl_seconds, cause.as_dict())
            store.create_run(leased, cause.as_dict(), cause.correlation_id, cfg.launcher, run_id=run_id,
                             transaction=transaction, sources=old.get("sources", []), attempt=2, retry_of=old_run_id,
                             decisions={i: [f"retry of {old_run_id} after its lease expired"] for i in leased})
            return bool(leased)

        if store.in_transaction(relaunch) and claim_launch(store, run_id):
            launch_run(cfg, store, run_id, attempt=2)
            retries.append(run_id)
        if follow_ups:
            leases.request_follow_up(store, old_run_id, follow_ups)
        log.warning("run %s lost its lease; retried as %s", old_run_id, run_id)
    return retries
