"""trigger_training's logic: uploads, scheduled ticks and manual requests become recorded
decisions and at most one training run per cause.

Messages are routed by the topic they arrived on and parsed as that topic's schema; what
does not parse is a PermanentFailure (recorded, acknowledged, alerted once), never a retry.

At-least-once delivery is absorbed by the cause document (keyed by upload (bucket, object,
generation), tick time or request id). A cause is decided in ISBN groups, one Firestore
transaction each (merge, decisions, leases, the decided series' snapshot, and a marker for
the group), so no transaction nears Firestore's limits whatever the file's size, and a
redelivery, a concurrent delivery or the reconciler resumes with the groups not yet done.
A last transaction creates the run from the groups' markers. Work after that (launching,
publishing) is marked done on the cause, so a redelivery finishes what a crash
interrupted instead of doing it twice.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache

from google.api_core.exceptions import AlreadyExists, NotFound
from google.cloud.firestore_v1.field_path import FieldPath

from shared import champions, model_store, promotion, sales
from shared.causes import Cause, CauseKind, upload_cause_key
from shared.config import Settings
from shared.decisions import REFRESH, SKIP, TRAIN, Decision, decide
from shared.events import (CONTINUATION, GcsObject, PubSubMessage, RejectedInput, ScheduleTick, Topics,
                           TrainingRequest)
from shared.failures import PermanentFailure, Unfinished, parse
from shared.jobs import DecidedSeries, snapshot_document, snapshot_id
from shared.layout import GROUPS, Collection
from shared.lifecycle import leases
from shared.lifecycle.runs import claim_launch, launch_run, reap_expired_leases, reap_shard, retry_failed_shards
from shared.logs import correlated, get_logger
from shared.runstore import RunStore, now, pack, pack_series, unpack_isbns, unpack_series
from shared.states import CauseStatus, TriggerOutcome

log = get_logger(__name__)

# ISBNs are decided in groups, one transaction each, which writes their series, decisions,
# leases and snapshot, the weeks packed (runstore.pack: ~10 bytes a week). A group holds at
# most GROUP_WEEKS weeks (well under 1 MB, against the 4 MiB gRPC message and 10 MiB request
# limits) and GROUP_MAX_ISBNS ISBNs (at most 4 writes each: series, decision, degradation measure, lease;
# plus the snapshot and the marker, against 500 per commit): 100 three-year series, or 13 of the
# longest possible (~2,900 weeks, sales.FIRST_WEEK).
GROUP_WEEKS = 40_000
GROUP_MAX_ISBNS = 100
UNKNOWN_SERIES_WEEKS = 520  # a series stored before its length was recorded: assume ten years
COALESCE = "coalesce"  # wanted training, but the ISBN is training: a follow-up when that run ends
ACTIONS = (TRAIN, REFRESH, SKIP, COALESCE)


@dataclass
class Outcome:
    status: TriggerOutcome
    detail: str
    run_id: str | None = None
    decisions: list[Decision] = field(default_factory=list)


# --- entry point ------------------------------------------------------------------------------
def handle(cfg: Settings, message: PubSubMessage, store: RunStore | None = None) -> Outcome:
    route = ROUTES.get(message.topic or "")
    if route is None:
        raise PermanentFailure(f"trigger_training does not consume topic {message.topic!r}")
    store = store or RunStore(cfg)
    if store.get(Collection.MESSAGES, message.delivery_key):
        return Outcome(TriggerOutcome.DUPLICATE, f"message {message.message_id} was already handled")
    try:
        return route(cfg, store, message)
    except Unfinished as unfinished:
        return continue_later(cfg, message, str(unfinished))


def continue_later(cfg: Settings, message: PubSubMessage, why: str) -> Outcome:
    """Work that stopped at its budget goes on at once in a new delivery: the message is
    published again, as the same cause (its delivery key and publish time travel along), and
    this one acknowledged. A failed push would wait for Pub/Sub's growing backoff instead,
    and a catalogue would use up its delivery attempts and be dead-lettered. Every delivery
    decides at least one group, so the chain ends."""
    from shared.pubsub import publish_raw

    attributes = message.continuation_attributes()
    publish_raw(cfg, message.topic, message.data, attributes)
    log.info("continued in a new delivery (%s): %s", attributes[CONTINUATION], why,
             extra={"correlation_id": message.correlation_id})
    return Outcome(TriggerOutcome.CONTINUED, why)


def on_upload(cfg: Settings, store: RunStore, message: PubSubMessage) -> Outcome:
    if not message.is_gcs_notification:
        raise PermanentFailure(f"not a GCS object notification on {message.topic}: attributes {message.attributes}")
    obj = parse(GcsObject, message)
    return handle_upload(cfg, store, obj, message.message_id, message.delivery_key)


def on_tick(cfg: Settings, store: RunStore, message: PubSubMessage) -> Outcome:
    tick = parse(ScheduleTick, message)
    key = f"tick-{tick.job}-{message.first_published:%Y%m%dT%H%M}"
    cause = Cause(key=key, kind=CauseKind.SCHEDULE, correlation_id=key, message_id=message.message_id,
                  delivery_key=message.delivery_key,
                  detail={"job": tick.job, "publish_time": message.first_published.isoformat()})
    return handle_isbns(cfg, store, cause, isbns=None)


def on_request(cfg: Settings, store: RunStore, message: PubSubMessage) -> Outcome:
    # A hand-published request (`gcloud pubsub topics publish training-requests --message '{}'`)
    # carries no correlation id: it gets one of the message's own, so `{}` asks, like
    # `bookcast request`, for a decision on every known ISBN.
    request = parse(TrainingRequest, message, defaults={
        "correlation_id": message.correlation_id or f"request-{message.delivery_key[:16]}"})
    cause = Cause(key=f"request-{message.delivery_key}", kind=CauseKind.FOLLOW_UP if CauseKind.FOLLOW_UP in request.requested_by
                  else CauseKind.REQUEST, correlation_id=request.correlation_id, message_id=message.message_id,
                  delivery_key=message.delivery_key,
                  forced=request.force, detail={"requested_by": request.requested_by, "reason": request.reason})
    return handle_isbns(cfg, store, cause, isbns=request.isbns or None)


def on_reconcile_tick(cfg: Settings, store: RunStore, message: PubSubMessage) -> Outcome:
    from shared.reconcile import reconcile

    parse(ScheduleTick, message)
    replayed = reconcile(cfg, store, handle_upload)
    flushed = leases.flush_follow_ups(store)
    # trigger_training owns launching: dead and failed runs are retried from its own tick.
    retried = reap_expired_leases(cfg, store) + retry_failed_shards(cfg, store)
    return Outcome(TriggerOutcome.ACCEPTED, f"reconciled: {len(replayed)} upload(s) replayed, {flushed} follow-up(s) requested, "
                               f"{len(retried)} dead or failed run(s) retried")


ROUTES = {Topics.SALES_UPLOADS: on_upload, Topics.RETRAIN_TICKS: on_tick,
          Topics.TRAINING_REQUESTS: on_request, Topics.RECONCILE_TICKS: on_reconcile_tick}


# --- uploads ----------------------------------------------------------------------------------
def handle_upload(cfg: Settings, store: RunStore, obj: GcsObject, message_id: str, delivery_key: str) -> Outcome:
    source = f"gs://{obj.bucket}/{obj.name}#{obj.generation}"
    cause = Cause(key=upload_cause_key(obj), kind=CauseKind.UPLOAD, correlation_id=obj.correlation_id,
                  message_id=message_id, delivery_key=delivery_key,
                  detail={"bucket": obj.bucket, "object": obj.name, "generation": obj.generation})
    with correlated(cause.correlation_id):
        existing = store.get(Collection.CAUSES, cause.key)
        if existing and existing["status"] != CauseStatus.DECIDING:
            finish_pending(cfg, store, existing)
            return Outcome(TriggerOutcome.DUPLICATE, f"{source} was already handled", run_id=existing.get("run_id"))
        if obj.bucket != cfg.data_bucket:
            return reject(cfg, store, cause, obj, [f"gs://{obj.bucket}/{obj.name}: bucket: uploads are accepted "
                                                   f"only in gs://{cfg.data_bucket}"])
        try:
            incoming = upload_weeks(cfg, obj)
        except sales.UploadRejected as rejected:
            return reject(cfg, store, cause, obj, rejected.reasons)
        return decide_cause(cfg, store, cause, sorted(incoming), Upload(incoming, obj.upload_order, source))


def upload_weeks(cfg: Settings, obj: GcsObject) -> dict[str, dict[str, int]]:
    """The upload's weeks per ISBN. The last upload read is kept: a catalogue is decided over
    several deliveries (the work budget), and each would otherwise spend its budget reading
    and parsing the same object generation again."""
    return _upload_weeks(obj.bucket, obj.name, obj.generation, obj.size, cfg.project_id, cfg.upload_prefix,
                         cfg.training.max_upload_bytes)


@lru_cache(maxsize=1)
def _upload_weeks(bucket: str, name: str, generation: str, size: int, project: str, prefix: str,
                  max_bytes: int) -> dict[str, dict[str, int]]:
    obj = GcsObject(bucket=bucket, name=name, generation=generation, size=size)
    rules = sales.UploadRules(prefix=prefix, max_bytes=max_bytes)
    return sales.weeks_by_isbn(read_upload(project, rules, obj))


def read_upload(project: str, rules: sales.UploadRules, obj: GcsObject):
    from shared.gcs import storage_client

    if not obj.name.startswith(rules.prefix):
        raise sales.UploadRejected(obj.name, [f"{obj.name}: location: uploads belong under {rules.prefix!r}"])
    if obj.size > rules.max_bytes:
        raise sales.UploadRejected(obj.name, [f"{obj.name}: size: {obj.size} bytes exceeds the limit of {rules.max_bytes}"])
    blob = storage_client(project).bucket(obj.bucket).blob(obj.name, generation=int(obj.generation))
    try:
        content = blob.download_as_bytes()
    except NotFound:
        raise sales.UploadRejected(obj.name, [f"{obj.name}: generation {obj.generation} no longer exists"]) from None
    return sales.parse_upload(obj.name, content, rules)


def reject(cfg: Settings, store: RunStore, cause: Cause, obj: GcsObject, reasons: list[str]) -> Outcome:
    doc = {**cause.as_dict(), "status": CauseStatus.REJECTED, "reasons": reasons, "received_at": cause.received_at,
           "published": False}

    def record(transaction) -> bool:
        ref = store.col(Collection.CAUSES).document(cause.key)
        snap = ref.get(transaction=transaction)
        if snap.exists and snap.to_dict()["status"] != CauseStatus.DECIDING:
            return False
        transaction.set(ref, doc)
        transaction.set(store.col(Collection.MESSAGES).document(cause.delivery_key), {"cause": cause.key, "at": now()})
        return True

    if store.in_transaction(record):
        log.warning("rejected upload gs://%s/%s: %s", obj.bucket, obj.name, "; ".join(reasons[:3]),
                    extra={"reasons": reasons, "cause": cause.key})
    finish_pending(cfg, store, store.get(Collection.CAUSES, cause.key))
    return Outcome(TriggerOutcome.REJECTED, "; ".join(reasons))


# --- ticks and requests -----------------------------------------------------------------------
def handle_isbns(cfg: Settings, store: RunStore, cause: Cause, isbns: list[str] | None) -> Outcome:
    with correlated(cause.correlation_id):
        existing = store.get(Collection.CAUSES, cause.key)
        if existing and existing["status"] != CauseStatus.DECIDING:
            finish_pending(cfg, store, existing)
            return Outcome(TriggerOutcome.DUPLICATE, f"{cause.key} was already handled", run_id=existing.get("run_id"))
        if cause.kind == CauseKind.SCHEDULE:
            reap_expired_leases(cfg, store)
        known = store.series_isbns()
        wanted = isbns or sorted(known)
        unknown = [i for i in wanted if i not in known]
        if unknown:
            log.warning("no data for requested ISBNs %s", unknown, extra={"cause": cause.key})
        return decide_cause(cfg, store, cause, [i for i in wanted if i in known], upload=None)


# --- deciding, group by group -----------------------------------------------------------------
@dataclass(frozen=True)
class Upload:
    """What an upload brings to its ISBNs' series."""
    weeks_by_isbn: dict[str, dict[str, int]]
    order: str                     # sales.upload_order: newer uploads win week by week
    source: str


def stored_weeks(store: RunStore, isbns: list[str]) -> dict[str, int]:
    """How many weeks each ISBN's stored series has, read without its weeks."""
    return {isbn: doc.get("n_weeks", UNKNOWN_SERIES_WEEKS)
            for isbn, doc in store.read_batched(Collection.SERIES, isbns, field_paths=["n_weeks"]).items()}


def group_ends(isbns: list[str], weeks: dict[str, int]) -> list[int]:
    """Where each group of the sorted ISBNs ends: as many ISBNs as fit GROUP_WEEKS merged
    weeks (at least one), at most GROUP_MAX_ISBNS."""
    ends, in_group, weeks_in_group = [], 0, 0
    for position, isbn in enumerate(isbns):
        if in_group and (in_group == GROUP_MAX_ISBNS or weeks_in_group + weeks[isbn] > GROUP_WEEKS):
            ends.append(position)
            in_group, weeks_in_group = 0, 0
        in_group += 1
        weeks_in_group += weeks[isbn]
    return ends + ([len(isbns)] if isbns else [])


def open_cause(store: RunStore, cause: Cause, isbns: list[str], upload: Upload | None) -> dict:
    """The cause's document, created on first sight with the run id, the ISBNs and where
    its groups end, so every resumption cuts the same groups."""
    existing = store.get(Collection.CAUSES, cause.key)
    if existing:
        return unpack_isbns(existing)
    planned = sorted(isbns)
    stored = stored_weeks(store, planned)
    new_weeks = {i: len(upload.weeks_by_isbn[i]) for i in planned} if upload else {}
    ends = group_ends(planned, {i: stored.get(i, 0) + new_weeks.get(i, 0) for i in planned})
    doc = {**cause.as_dict(), "status": CauseStatus.DECIDING, "received_at": cause.received_at, "isbns": pack(planned),
           "group_ends": ends, "run_id": f"run-{now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}", "published": True}
    try:  # a create is atomic on its own: no transaction for concurrent deliveries to collide in
        store.col(Collection.CAUSES).document(cause.key).create(doc)
        return unpack_isbns(doc)
    except AlreadyExists:  # a concurrent delivery opened it first
        return unpack_isbns(store.get(Collection.CAUSES, cause.key))


def decide_cause(cfg: Settings, store: RunStore, cause: Cause, isbns: list[str], upload: Upload | None) -> Outcome:
    opened = open_cause(store, cause, isbns, upload)
    if opened["status"] != CauseStatus.DECIDING:
        finish_pending(cfg, store, opened)
        return Outcome(TriggerOutcome.DUPLICATE, f"{cause.key} was handled concurrently", run_id=opened.get("run_id"))
    run_id, planned, ends = opened["run_id"], opened["isbns"], opened["group_ends"]
    groups = [planned[start:end] for start, end in zip([0] + ends[:-1], ends)]
    done = {snap.id for snap in store.col(Collection.CAUSES).document(cause.key).collection(GROUPS).select([]).stream()}
    decisions: list[Decision] = []
    versions = model_store.champion_versions(cfg)  # which version serves each ISBN: one paged search
    for index, group in enumerate(groups):
        if group_id(index) in done:
            continue
        # Every attempt decides at least one group, so even a late redelivery makes progress.
        if decisions and (now() - cause.received_at).total_seconds() > cfg.decision.work_budget_seconds:
            log_decisions(cause, decisions)
            raise Unfinished(f"{cause.key}: {len(groups) - index} of {len(groups)} ISBN groups left at the "
                             f"{cfg.decision.work_budget_seconds:g} s budget; a redelivery resumes them")
        decisions += decide_group(cfg, store, cause, run_id, index, group, upload, versions)
    log_decisions(cause, decisions)
    closed = close_cause(store, cause, run_id, len(groups))
    finish_pending(cfg, store, store.get(Collection.CAUSES, cause.key))
    if closed is None:
        return Outcome(TriggerOutcome.DUPLICATE, f"{cause.key} was handled concurrently", run_id=opened.get("run_id"))
    leased, summary = closed
    return Outcome(CauseStatus.ACCEPTED, f"{summary[TRAIN]} to retrain, {summary[REFRESH]} to refresh, {summary[SKIP]} skipped, "
                             f"{summary[COALESCE]} coalesced",
                   run_id=run_id if leased else None, decisions=decisions)


def log_decisions(cause: Cause, decisions: list[Decision]) -> None:
    for d in decisions:
        log.info("decision %s: %s (%s)", d.isbn, d.action, "; ".join(d.reasons),
                 extra={"isbn": d.isbn, "action": d.action, "cause": cause.key})


def refresh_of(decision: Decision) -> dict:
    """What a refresh job needs from its decision: the version to refresh and the running
    error totals on unseen weeks, which the refreshed version carries on."""
    measured = decision.inputs.get("degradation") or {}
    return {"version": decision.inputs["refreshes"], "unseen_weeks": measured.get("unseen_weeks", 0),
            "unseen_abs_error": measured.get("unseen_abs_error", 0.0)}


def group_id(index: int) -> str:
    return f"{index:05d}"


def decide_group(cfg: Settings, store: RunStore, cause: Cause, run_id: str, index: int, isbns: list[str],
                 upload: Upload | None, versions: dict[str, str]) -> list[Decision]:
    """Merge, decide, lease and snapshot one group of ISBNs, with its marker: atomically."""
    if upload:  # challengers on trial are scored on the new weeks first: one that won is decided as champion
        promotion.score_upload(cfg, store, {i: upload.weeks_by_isbn[i] for i in isbns}, upload.order,
                               cause.correlation_id)
    current = champions.served(cfg, store, isbns, versions)  # outside the transaction: MLflow is not transactional
    decided_at = now()

    dead_shards: list[tuple[str, int]] = []  # expired leases this group takes over

    def apply(transaction) -> list[Decision]:
        marker = store.col(Collection.CAUSES).document(cause.key).collection(GROUPS).document(group_id(index))
        if marker.get(transaction=transaction).exists:
            return []
        series_refs = {i: store.col(Collection.SERIES).document(i) for i in isbns}
        series = {i: unpack_series(doc) for i, doc in store.read_many(transaction, series_refs).items()}
        held = leases.read(store, transaction, isbns)
        decisions, decided = [], {}
        for isbn in isbns:
            prior = series[isbn] or {"weeks": {}, "week_orders": {}, "sources": []}
            merged = sales.MergedSeries(prior["weeks"], prior.get("week_orders", {}))
            sources = prior["sources"]
            if upload:
                merged = merged.merged(upload.weeks_by_isbn[isbn], upload.order)
                sources = sources + ([upload.source] if upload.source not in sources else [])
            target, forecast = current[isbn]
            decision = decide(isbn, merged.weeks, target, forecast, cfg.decision, cause.forced, decided_at)
            missing = sales.missing_weeks(sorted(datetime.fromisoformat(w).date() for w in merged.weeks))
            if missing:
                decision = Decision(isbn, SKIP, [f"series has {len(missing)} missing week(s) between uploads, "
                                                   f"first {missing[0]}: send those weeks to train"], decision.inputs)
            else:
                decided[isbn] = DecidedSeries.of(merged.weeks, sources)
            decisions.append(decision)
            if upload:
                transaction.set(series_refs[isbn], pack_series({
                    "isbn": isbn, "weeks": merged.weeks, "week_orders": merged.orders, "n_weeks": len(merged.weeks),
                    "sources": sources, "data_hash": decision.inputs["data_hash"], "updated_at": now(),
                    "last_cause": cause.key}))
        to_train = [d.isbn for d in decisions if d.action in (TRAIN, REFRESH)]
        dead_shards[:] = leases.taken_over(held, run_id)
        leased, busy = leases.claim(store, transaction, held, to_train, run_id, cfg.training.lease_ttl_seconds,
                                    cause.as_dict())
        for d in decisions:
            if d.isbn in busy:
                d.action = COALESCE
                d.reasons = d.reasons + [f"already training in {held[d.isbn]['run_id']}: queued as a follow-up"]
            store.record_decision(d.isbn, d.action, d.reasons, d.inputs, cause.as_dict(), cause.correlation_id,
                                  run_id=run_id if d.isbn in leased else None, transaction=transaction)
        snapshot = snapshot_id(run_id, index) if leased else None
        if snapshot:
            transaction.create(store.col(Collection.SNAPSHOTS).document(snapshot),
                               snapshot_document(run_id, {i: decided[i] for i in leased}))
        transaction.create(marker, {
            "leased": leased, "snapshot": snapshot, "data_hashes": {i: decided[i].data_hash for i in leased},
            "decisions": {d.isbn: d.reasons for d in decisions if d.isbn in leased},
            "refreshes": {d.isbn: refresh_of(d) for d in decisions if d.isbn in leased and d.action == REFRESH},
            "summary": {a: sum(d.action == a for d in decisions) for a in ACTIONS}})
        return decisions

    try:
        decisions = store.in_transaction(apply)
    except AlreadyExists:  # the emulator may check a create's precondition before the conflict
        return []          # a concurrent delivery decided this group
    for dead_run, index in sorted(dead_shards):
        reap_shard(cfg, store, dead_run, index)
    return decisions


def close_cause(store: RunStore, cause: Cause, run_id: str, groups: int) -> tuple[list[str], dict] | None:
    """Create the run from the groups' markers and mark the cause accepted; None if another
    delivery closed it first. The markers are read before the transaction (once written
    they never change): a catalogue's are megabytes, which the transaction need not hold."""
    ref = store.col(Collection.CAUSES).document(cause.key)
    markers = [m.to_dict() for m in ref.collection(GROUPS).order_by(FieldPath.document_id()).stream()]
    if len(markers) != groups:  # every group is decided before closing: a partial run is a fault, retried
        raise RuntimeError(f"{cause.key}: {len(markers)} of {groups} group markers readable; a redelivery closes it")
    leased = sorted(i for m in markers for i in m["leased"])
    summary = {a: sum(m["summary"].get(a, 0) for m in markers) for a in ACTIONS}
    if leased:  # a catalogue's parts are many commits: written once, before the run's transaction
        store.write_run_parts(run_id, leased, {
            "data_hashes": {i: h for m in markers for i, h in m["data_hashes"].items()},
            "decisions": {i: r for m in markers for i, r in m["decisions"].items()},
            "refreshes": {i: r for m in markers for i, r in m.get("refreshes", {}).items()}})

    def work(transaction):
        opened = ref.get(transaction=transaction).to_dict()
        if opened["status"] != CauseStatus.DECIDING:
            return None
        if leased:
            store.create_run(leased, cause.as_dict(), cause.correlation_id, store.cfg.launcher, run_id=run_id,
                             transaction=transaction, snapshot=sorted(m["snapshot"] for m in markers if m["snapshot"]))
        transaction.update(ref, {"status": CauseStatus.ACCEPTED, "run_id": run_id if leased else None, "launched": not leased,
                                 "summary": summary, "decided_at": now()})
        transaction.set(store.col(Collection.MESSAGES).document(cause.delivery_key), {"cause": cause.key, "at": now()})
        return leased, summary

    try:
        return store.in_transaction(work)
    except AlreadyExists:  # the run exists: a concurrent delivery closed the cause
        return None


# --- after the commit -------------------------------------------------------------------------
def finish_pending(cfg: Settings, store: RunStore, cause: dict | None) -> None:
    """Launch and publish what a committed cause still owes; safe to repeat."""
    if not cause:
        return
    from shared.pubsub import publish

    ref = store.col(Collection.CAUSES).document(cause["key"])
    if cause["status"] == CauseStatus.REJECTED and not cause.get("published"):
        publish(cfg, Topics.REJECTED_INPUT, RejectedInput(correlation_id=cause["correlation_id"], bucket=cause["bucket"],
                                                     object_name=cause["object"], generation=cause["generation"],
                                                     reasons=cause["reasons"]))
        ref.update({"published": True})
    if cause["status"] == CauseStatus.ACCEPTED and cause.get("run_id") and not cause.get("launched"):
        if claim_launch(store, cause["run_id"]):
            launch_run(cfg, store, cause["run_id"])
        ref.update({"launched": True})
