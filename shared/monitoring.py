"""The monitor function's logic.

On failure events it alerts at once: a failed or fully quarantined training run, a
rejected upload, a message that went to the dead-letter topic, a rollback. On each
scheduled tick it fails and retries runs whose training job died (expired lease), and
checks conditions: health (MLflow, the forecast function) and every ISBN with data (no
served model, a stale model, a fallback serving (seasonal naive or the plain combination), holdout metrics against the gates,
a new champion worse than the one it replaced, degradation on newly arrived weeks); it also
re-raises the failed runs of the last day in case their event was lost. Critical alerts go
out one by one, the rest as one digest with the conditions that cleared (shared/alerting.py),
and the first tick of the day after the summary hour sends the daily summary.
"""
from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import requests
from google.api_core.exceptions import AlreadyExists, GoogleAPIError

from shared import alerting, model_store
from shared.alerting import CRITICAL, INFO, WARNING, Alert, Condition, send
from shared.config import Settings
from shared.events import MessageRejected, PubSubMessage, ScheduleTick, Topics
from shared.failures import PermanentFailure, parse
from shared.forecasting.models import BASELINE as BASELINE_FAMILY
from shared.layout import Collection
from shared.logs import get_logger
from shared.model_store import AliasTarget
from shared.runstore import RunStore, now, unpack_isbns
from shared.states import UNTRAINED, AliasMove, IsbnStatus, RunEvent, RunStatus
from shared.version_tags import Tag, VersionTags

log = get_logger(__name__)
TICK = "schedule.tick"
EXPORT_JOB = "forecast-export"  # the scheduler job whose tick writes the weekly forecast export
REPLAY_JOB = "replay-dead-letters"  # the reconcile tick a dead-lettered upload asks for
DEAD_LETTER_SOURCE = "CloudPubSubDeadLetterSourceSubscription"  # set by Pub/Sub on a dead-lettered message
DAY = timedelta(days=1)
MAX_FAILED_RUNS_LISTED = 5

MLFLOW_DOWN = Condition("health:mlflow", CRITICAL, "", "MLflow is reachable again")
FORECAST_DOWN = Condition("health:forecast", CRITICAL, "", "the forecast function answers its health check again")
# Headings follow a count of ISBNs in a digest: "45 ISBNs served by a fallback, not a tuned candidate".
UNSERVED = Condition("unserved", WARNING, "with data but no served model", "served now")
STALE = Condition("stale", WARNING, "served by a model older than the age limit",
                  "served by a model within the age limit")
BASELINE = Condition("baseline", INFO, "served by a fallback, not a tuned candidate", "no longer served by a fallback")
THRESHOLDS = Condition("thresholds", WARNING, "served above the metric thresholds",
                       "within the metric thresholds again")
WORSENED = Condition("worsened", WARNING, "served by a new champion worse than the one it replaced",
                     "no longer served by a champion worse than the one it replaced")
DEGRADED = Condition("degraded", WARNING, "degraded on newly arrived weeks", "no longer degraded on new weeks")


@dataclass
class Findings:
    """What checks found, and every condition key they checked (found or not): an open alert
    is resolved only when its own check ran and found nothing."""
    alerts: list[Alert] = field(default_factory=list)
    checked: set[str] = field(default_factory=set)

    def check(self, condition: Condition, subject: str | None, problem: tuple[str, str] | None) -> None:
        self.checked.add(condition.key(subject))
        if problem:
            self.alerts.append(condition.alert(subject, *problem))

    def add(self, other: "Findings") -> None:
        self.alerts += other.alerts
        self.checked |= other.checked


@dataclass
class Fleet:
    with_data: int = 0
    served: int = 0
    baseline: int = 0
    unserved: int = 0
    first_training: int = 0


# --- events ---------------------------------------------------------------------------------
def event_alerts(message: PubSubMessage) -> list[Alert]:
    cid = message.correlation_id
    if is_dead_letter(message):
        source = message.attributes.get(DEAD_LETTER_SOURCE, "unknown subscription")
        return [Alert(f"dead-letter:{message.message_id}", CRITICAL, "A message could not be processed",
                      f"after every retry from {source}; attributes {message.attributes}", cid)]
    try:
        event = message.payload() if message.data else {}
    except ValueError:
        raise PermanentFailure(f"event on {message.topic} is not JSON") from None
    kind = message.attributes.get("event_type")
    if kind == "training.status" and event.get("shard"):
        # Each shard reports its own results; the run's closing event only sums them up.
        failed = [r for r in event.get("results", []) if r["status"] in UNTRAINED]
        part = f"Training run {event['run_id']} shard {event['shard']}"
        if event.get("status") in (RunEvent.FAILED, RunEvent.QUARANTINED):
            severity = CRITICAL if event["status"] == RunEvent.FAILED else WARNING
            lines = [f"{r['isbn']}: {r['status']} {r.get('reason', '')}" for r in event.get("results", [])
                     if r["status"] != IsbnStatus.PROMOTED]
            return [Alert(f"run:{event['run_id']}:{event['shard']}:{event['status']}", severity,
                          f"{part} {event['status']}", "\n".join([event.get("reason", "")] + lines).strip(), cid)]
        if event.get("status") == RunEvent.SUCCEEDED and failed:
            # A shard succeeds when any ISBN is servable; the ones that failed still need eyes.
            return [Alert(f"run:{event['run_id']}:{event['shard']}:partial", WARNING,
                          f"{part}: {len(failed)} ISBN(s) not trained",
                          "\n".join(f"{r['isbn']}: {r['status']} {r.get('reason', '')}" for r in failed), cid)]
    if kind == "input.rejected":
        return [Alert(f"rejected:{event['bucket']}/{event['object_name']}#{event['generation']}", WARNING,
                      f"Upload rejected: {event['object_name']}", "\n".join(event["reasons"][:20]), cid)]
    if kind == "message.rejected":
        rejected = parse(MessageRejected, message)
        return [Alert(f"rejected-message:{rejected.delivery_key}", WARNING,
                      f"{rejected.function} rejected a message on {rejected.topic} for good",
                      f"message {rejected.message_id}: {rejected.reason}", cid)]
    if kind == "model.changed" and event.get("action") == "revert":
        return [Alert(f"revert:{event['isbn']}:{event['from_version']}", CRITICAL,
                      f"{event['isbn']} v{event['from_version']} failed validation and was taken off serving",
                      f"now serving: {('v' + event['to_version']) if event['to_version'] else 'nothing'}; "
                      f"{event.get('reason', '')}", cid)]
    if kind == "model.changed" and event.get("action") == AliasMove.ROLLBACK:
        return [Alert(f"rollback:{event['isbn']}:{event['to_version']}", WARNING,
                      f"{event['isbn']} rolled back v{event['from_version']} → v{event['to_version']}",
                      event.get("reason", ""), cid)]
    return []


# --- model conditions -----------------------------------------------------------------------
def staleness(cfg: Settings, target: AliasTarget) -> tuple[str, str] | None:
    # A refresh is a new version with the old parameters: their age is what decisions judge.
    fitted_at = target.tags.get(Tag.FITTED_AT)
    age = (now() - (datetime.fromisoformat(fitted_at) if fitted_at else target.created_at)).days
    if age <= cfg.decision.max_model_age_days:
        return None
    return (f"{target.isbn} model v{target.version} is stale",
            f"parameters {age} days old (limit {cfg.decision.max_model_age_days}) and not retrained")


def is_baseline(target: AliasTarget) -> bool:
    return VersionTags(target.tags).is_baseline


def threshold_breaches(cfg: Settings, target: AliasTarget) -> tuple[str, str] | None:
    # The same gates as promotion, on the served version's holdout metrics (a baseline is
    # reported on its own, not measured against the naive it is).
    from shared.forecasting import gates

    metrics = None if is_baseline(target) else gates.metrics_from_tags(target.tags)
    breaches = gates.breaches(metrics, cfg.gates) if metrics else []
    if not breaches:
        return None
    return f"{target.isbn} v{target.version} serves above the metric thresholds", "; ".join(breaches)


def metric_increases(after: dict[str, float], before: dict[str, float], cfg: Settings) -> list[str]:
    limits = [("rmse", "RMSE", cfg.alerts.max_rmse_increase), ("wape", "WAPE", cfg.alerts.max_relative_error_increase)]
    if after.get("zero_weeks_in_holdout", 0) == 0 and before.get("zero_weeks_in_holdout", 0) == 0:
        limits.append(("mape", "MAPE", cfg.alerts.max_relative_error_increase))  # undefined with zero weeks
    found = []
    for name, label, limit in limits:
        new, old = after.get(name), before.get(name)
        if new is None or old is None or not (math.isfinite(new) and math.isfinite(old)) or old <= 0:
            continue
        if new > old * (1 + limit):
            found.append(f"holdout {label} {new:.4g} vs {old:.4g} ({new / old - 1:+.0%}, at most {limit:+.0%})")
    return found


def worsening(cfg: Settings, target: AliasTarget, lineage: dict) -> tuple[str, str] | None:
    """The served version against the champion it replaced (champions.lineage)."""
    replaced = lineage.get("version")
    increases = metric_increases(VersionTags(target.tags).metrics, lineage["metrics"], cfg) \
        if replaced and lineage.get("metrics") else []
    if not increases:
        return None
    return (f"{target.isbn} v{target.version} is worse than v{replaced}, the champion it replaced",
            "; ".join(increases))


def degradation(cfg: Settings, target: AliasTarget, latest: dict | None) -> tuple[str, str] | None:
    """Measured by the latest decision about the served version on the weeks it never saw
    (shared/decisions.py, kept by runstore.record_decision): a tick after it raises it."""
    measured = latest.get("measured") if latest and latest.get("version") == target.version else None
    policy = cfg.decision
    if not measured or measured["unseen_weeks"] < policy.min_new_weeks_for_degradation \
            or measured["ratio"] <= 1 + policy.degradation_threshold:
        return None
    return (f"{target.isbn} v{target.version} degraded on new weeks",
            f"MAE {measured['unseen_mae']:.1f} on {measured['unseen_weeks']} weeks it never saw vs "
            f"{measured['holdout_mae']:.1f} on its holdout ({measured['ratio'] - 1:+.0%}, at most "
            f"{policy.degradation_threshold:+.0%})")


def model_findings(cfg: Settings, isbn: str, target: AliasTarget | None, first_training: bool,
                   lineage: dict | None = None, latest_degradation: dict | None = None) -> Findings:
    """What is wrong with the ISBN's served model. A lineage or degradation measure that is
    not known yet (None: not worked out this tick) leaves its condition unchecked, so an
    open alert about it is neither raised nor resolved."""
    found = Findings()
    if target is None:
        if not first_training:  # a first training holds a lease: nothing can be served before it ends
            found.check(UNSERVED, isbn, (f"{isbn} has data but no served model",
                                         "no champion alias: the ISBN cannot be forecast"))
        return found
    found.check(UNSERVED, isbn, None)
    found.check(STALE, isbn, staleness(cfg, target))
    found.check(BASELINE, isbn, (f"{isbn} is served by a fallback",
                                 f"v{target.version} ({VersionTags(target.tags).family or BASELINE_FAMILY}): no tuned candidate "
                                 "has passed the quality gates yet")
                if is_baseline(target) else None)
    found.check(THRESHOLDS, isbn, threshold_breaches(cfg, target))
    if lineage is not None:
        found.check(WORSENED, isbn, worsening(cfg, target, lineage))
    if latest_degradation is not None:
        found.check(DEGRADED, isbn, degradation(cfg, target, latest_degradation))
    return found


# A tick's share of its timeout for working out what an upgrade left unrecorded: the lineage
# of index entries, and the degradation measures of ISBNs decided before either was kept.
BACKFILL_SECONDS = 40.0


def latest_degradation(store: RunStore, isbns: list[str], deadline: float) -> dict[str, dict]:
    """Each ISBN's latest degradation measure (degradation/{isbn}, kept by every decision
    that measures one). ISBNs with none recorded (decided before measures were kept, or
    never measured) have theirs worked out once, from one query over the decisions that
    measured something, and kept; if that misses ``deadline``, they are unknown this tick."""
    from google.cloud import firestore

    measures = store.read_batched(Collection.DEGRADATION, isbns)
    missing = set(isbns) - set(measures)
    if not missing or time.monotonic() > deadline:
        return measures
    try:
        query = (store.col(Collection.DECISIONS).where(filter=firestore.FieldFilter("inputs.degradation.ratio", ">=", 0))
                 .select(["isbn", "decision_id", "decided_at", "inputs.champion_version", "inputs.degradation"]))
        latest: dict[str, dict] = {}
        for decision in (snap.to_dict() for snap in query.stream()):
            if decision["isbn"] in missing and decision["decided_at"] > latest.get(decision["isbn"], {}).get(
                    "decided_at", datetime.min.replace(tzinfo=timezone.utc)):
                latest[decision["isbn"]] = decision
    except GoogleAPIError as error:
        log.warning("degradation measures not worked out: %s", error)
        return measures
    worked = {isbn: {"version": latest[isbn]["inputs"].get("champion_version"),
                     "measured": latest[isbn]["inputs"]["degradation"], "decided_at": latest[isbn]["decided_at"],
                     "decision_id": latest[isbn]["decision_id"]} if isbn in latest else
              {"version": None, "measured": None, "decided_at": now(), "decision_id": None} for isbn in missing}
    keep(store, Collection.DEGRADATION, worked)
    return {**measures, **worked}


def keep(store: RunStore, collection: str, docs: dict[str, dict]) -> None:
    """Create the documents that do not exist yet, 400 a commit; where one came meanwhile
    (a decision recorded a newer measure), the others of its commit are created one by one."""
    ids = sorted(docs)
    for start in range(0, len(ids), 400):
        chunk, batch = ids[start:start + 400], store.db.batch()
        for key in chunk:
            batch.create(store.col(collection).document(key), docs[key])
        try:
            batch.commit()
        except AlreadyExists:
            for key in chunk:
                try:
                    store.col(collection).document(key).create(docs[key])
                except AlreadyExists:
                    pass


def in_first_training(store: RunStore) -> set[str]:
    """ISBNs with a live lease; for one without a champion, that is its first training."""
    return {lease["isbn"] for lease in store.stream(Collection.LEASES) if lease["expires_at"] > now()}


def survey_models(cfg: Settings, store: RunStore) -> tuple[Findings, Fleet]:
    """Every ISBN's findings from batched reads only: one registry search and the champion
    index (with each version's lineage), the latest degradation measures and the leases."""
    from shared import champions

    deadline = time.monotonic() + BACKFILL_SECONDS
    training = in_first_training(store)
    isbns = sorted(store.series_isbns())
    served = champions.served(cfg, store, isbns)
    versions = {isbn: target.version for isbn, (target, _) in served.items() if target is not None}
    lineages = champions.lineages(cfg, store, versions, deadline)
    measures = latest_degradation(store, sorted(versions), deadline)
    found, fleet = Findings(), Fleet(with_data=len(isbns))
    for isbn in isbns:
        target = served[isbn][0]
        found.add(model_findings(cfg, isbn, target, isbn in training, lineages.get(isbn), measures.get(isbn)))
        fleet.served += target is not None
        fleet.baseline += target is not None and is_baseline(target)
        fleet.unserved += target is None
        fleet.first_training += target is None and isbn in training
    return found, fleet


# --- health and runs ------------------------------------------------------------------------
def health_findings(cfg: Settings, mlflow_reachable: bool) -> Findings:
    found = Findings()
    found.check(MLFLOW_DOWN, None, None if mlflow_reachable else (
        "MLflow is unreachable", f"{cfg.mlflow_tracking_uri}/health did not answer: forecasts are served stale"))
    if cfg.alerts.forecast_health_url:
        try:
            ok = requests.get(cfg.alerts.forecast_health_url, timeout=5).ok
        except requests.RequestException:
            ok = False
        found.check(FORECAST_DOWN, None, None if ok else (
            "The forecast function is unhealthy", f"{cfg.alerts.forecast_health_url} did not answer 200"))
    return found


def failed_run_alerts(cfg: Settings, store: RunStore) -> list[Alert]:
    since = now() - timedelta(hours=cfg.alerts.failed_run_lookback_hours)
    return [Alert(f"run:{r['run_id']}:failed", CRITICAL, f"Training run {r['run_id']} failed",
                  r.get("error", ""), r.get("correlation_id"))
            for r in store.runs(limit=200, status=RunStatus.FAILED) if r.get("updated_at", now()) >= since]


def runs_since(store: RunStore, since: datetime) -> list[dict]:
    from google.cloud import firestore

    query = store.col(Collection.RUNS).where(filter=firestore.FieldFilter("created_at", ">=", since))
    return [unpack_isbns(s.to_dict()) for s in query.stream()]


# --- daily summary --------------------------------------------------------------------------
def summary_key(at: datetime) -> str:
    return f"daily-summary:{at:%Y-%m-%d}"


def daily_summary(store: RunStore, at: datetime, fleet: Fleet | None) -> Alert:
    """Fleet health now; runs, failures and alerts of the 24 hours before ``at``."""
    since = at - DAY
    runs = runs_since(store, since)
    failed = sorted((r for r in runs if r["status"] == RunStatus.FAILED), key=lambda r: r["created_at"])
    isbn_failures = sum(n for r in runs for status, n in (r.get("counts") or {}).items()
                        if status in UNTRAINED)
    statuses = Counter(r["status"] for r in runs)
    tally = alerting.counts(store, since, at)
    lines = [
        (f"Fleet: {alerting.counted(fleet.with_data, 'ISBN')} with data, {fleet.served} served ({fleet.baseline} "
         f"by a fallback), {fleet.unserved} unserved ({fleet.first_training} in their first "
         "training)") if fleet
        else "Fleet: unknown (MLflow is unreachable)",
        f"Runs in the last 24 h: {len(runs)}" + (f" ({', '.join(f'{n} {s}' for s, n in sorted(statuses.items()))})"
                                                  if runs else ""),
        f"Failures: {len(failed)} failed run(s), {isbn_failures} ISBN(s) failed or refused in runs",
        *(f"• {r['run_id']}: {r.get('error', '')}" for r in failed[:MAX_FAILED_RUNS_LISTED]),
        (f"Alerts: {tally[alerting.SENT]} sent in {tally[alerting.MESSAGES]} message(s), "
         f"{tally[alerting.SUPPRESSED]} suppressed as repeats, {tally[alerting.RESOLVED]} resolved, "
         f"{tally[alerting.UNDELIVERED]} undelivered"),
    ]
    return Alert(summary_key(at), INFO, f"Daily summary {at:%Y-%m-%d}", "\n".join(lines))


def summary_due(cfg: Settings, store: RunStore, at: datetime) -> bool:
    """Due on the first tick of a day at or after the summary hour that finds it not yet
    delivered today (a tick that already failed to deliver it tries again)."""
    if at.hour < cfg.alerts.daily_summary_hour_utc:
        return False
    state = store.get(Collection.ALERTS, alerting.doc_id(summary_key(at)))
    return not state or not state.get(alerting.SENT)


# --- entry ----------------------------------------------------------------------------------
def on_tick(cfg: Settings, store: RunStore, message: PubSubMessage) -> dict:
    reachable = model_store.healthy(cfg)
    found = health_findings(cfg, reachable)
    found.alerts += failed_run_alerts(cfg, store)
    fleet = None
    if reachable:  # without MLflow no model can be judged, so none is alerted or resolved
        models, fleet = survey_models(cfg, store)
        found.add(models)
    outcome = alerting.report(cfg, store, found.alerts, found.checked)
    at = message.publish_time.astimezone(timezone.utc)
    # Once a day: the key names the day, and no dedup window shorter than a day may resend it.
    if summary_due(cfg, store, at) and send(cfg, store, daily_summary(store, at, fleet), DAY // timedelta(minutes=1)):
        outcome["sent"].append(summary_key(at))
    return {"alerts": [a.key for a in found.alerts], **outcome}


def on_message(cfg: Settings, message: PubSubMessage, store: RunStore | None = None) -> dict:
    """Handle one monitor message; returns what it did (alerts sent, resolved, an export).
    It reports only: dead jobs are reaped and retried by trigger_training's reconcile tick,
    the one owner of launching."""
    store = store or RunStore(cfg)
    if message.attributes.get("event_type") == TICK:
        if (message.payload() or {}).get("job") == EXPORT_JOB:
            from shared.export import export

            exported = export(cfg, store, at=message.publish_time, correlation_id=message.correlation_id or EXPORT_JOB)
            return {"alerts": [], "sent": [], "resolved": [], "exported": exported.as_dict()}
        return on_tick(cfg, store, message)
    alerts = event_alerts(message)
    sent = [a.key for a in alerts if send(cfg, store, a)]
    return {"alerts": [a.key for a in alerts], "sent": sent, "resolved": [], "replay": request_replay(cfg, message)}


def is_dead_letter(message: PubSubMessage) -> bool:
    return message.topic == Topics.DEAD_LETTERS or DEAD_LETTER_SOURCE in message.attributes


def request_replay(cfg: Settings, message: PubSubMessage) -> str | None:
    """A dead-lettered upload notification (trigger_training was down through every retry)
    asks the reconciler to replay the bucket now, instead of on its 10-minute tick. Its push
    retries at least once a minute (deploy/topology.yaml), so the upload is decided within a
    minute of trigger_training coming back. Idempotent: a replay handles only uploads whose
    cause is missing, so a redelivered dead letter's second request changes nothing."""
    if not (is_dead_letter(message) and message.is_gcs_notification):
        return None
    from shared.pubsub import publish

    cid = message.correlation_id or f"dead-letter-{message.message_id}"
    publish(cfg, Topics.RECONCILE_TICKS, ScheduleTick(job=REPLAY_JOB, correlation_id=cid))
    log.warning("dead-lettered upload %s: replay requested from trigger_training's reconciler",
                message.attributes.get("objectId"), extra={"correlation_id": cid})
    return REPLAY_JOB
