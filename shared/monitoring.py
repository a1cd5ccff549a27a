"""The monitor function's logic.

On failure events it alerts at once: a failed or fully quarantined training run, a
rejected upload, a message that went to the dead-letter topic, a rollback. On each
scheduled tick it checks health (MLflow, the forecast function), every served model (age,
baseline, holdout metrics against the gates), recent failed runs, and fails and retries runs
whose training job died (expired lease). Alerts are deduplicated (shared/alerting.py).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import requests

from shared import model_store
from shared.alerting import Alert, send
from shared.config import Settings
from shared.events import MessageRejected, PubSubMessage, Topics
from shared.failures import PermanentFailure, parse
from shared.logs import get_logger
from shared.runstore import RunStore, now

log = get_logger(__name__)


def event_alerts(message: PubSubMessage) -> list[Alert]:
    cid = message.correlation_id
    if message.topic == Topics.DEAD_LETTERS or "CloudPubSubDeadLetterSourceSubscription" in message.attributes:
        source = message.attributes.get("CloudPubSubDeadLetterSourceSubscription", "unknown subscription")
        return [Alert(f"dead-letter:{message.message_id}", "critical", "A message could not be processed",
                      f"after every retry from {source}; attributes {message.attributes}", cid)]
    try:
        event = message.payload() if message.data else {}
    except ValueError:
        raise PermanentFailure(f"event on {message.topic} is not JSON") from None
    kind = message.attributes.get("event_type")
    if kind == "training.status":
        failed = [r for r in event.get("results", []) if r["status"] in ("failed", "refused")]
        if event.get("status") in ("failed", "quarantined"):
            severity = "critical" if event["status"] == "failed" else "warning"
            lines = [f"{r['isbn']}: {r['status']} {r.get('reason', '')}" for r in event.get("results", [])
                     if r["status"] != "promoted"]
            return [Alert(f"run:{event['run_id']}:{event['status']}", severity,
                          f"Training run {event['run_id']} {event['status']}",
                          "\n".join([event.get("reason", "")] + lines).strip(), cid)]
        if event.get("status") == "succeeded" and failed:
            # A run succeeds when any ISBN is servable; the ones that failed still need eyes.
            return [Alert(f"run:{event['run_id']}:partial", "warning",
                          f"Training run {event['run_id']}: {len(failed)} ISBN(s) not trained",
                          "\n".join(f"{r['isbn']}: {r['status']} {r.get('reason', '')}" for r in failed), cid)]
    if kind == "input.rejected":
        return [Alert(f"rejected:{event['bucket']}/{event['object_name']}#{event['generation']}", "warning",
                      f"Upload rejected: {event['object_name']}", "\n".join(event["reasons"][:20]), cid)]
    if kind == "message.rejected":
        rejected = parse(MessageRejected, message)
        return [Alert(f"rejected-message:{rejected.delivery_key}", "warning",
                      f"{rejected.function} rejected a message on {rejected.topic} for good",
                      f"message {rejected.message_id}: {rejected.reason}", cid)]
    if kind == "model.changed" and event.get("action") == "rollback":
        return [Alert(f"rollback:{event['isbn']}:{event['to_version']}", "warning",
                      f"{event['isbn']} rolled back v{event['from_version']} → v{event['to_version']}",
                      event.get("reason", ""), cid)]
    return []


def model_alerts(cfg: Settings, isbns: list[str]) -> list[Alert]:
    def check(isbn: str) -> list[Alert]:
        target = model_store.resolve(cfg, isbn)
        if target is None:
            return [Alert(f"unserved:{isbn}", "warning", f"{isbn} has data but no served model",
                          "no champion alias: the ISBN cannot be forecast")]
        found = []
        age = (now() - target.created_at).days
        if age > cfg.decision.max_model_age_days:
            found.append(Alert(f"stale:{isbn}:{target.version}", "warning", f"{isbn} model v{target.version} is stale",
                               f"{age} days old (limit {cfg.decision.max_model_age_days}) and not retrained"))
        if target.tags.get("baseline") == "true":
            found.append(Alert(f"baseline:{isbn}:{target.version}", "info", f"{isbn} is served by the seasonal-naive baseline",
                               "no tuned model has passed the quality gates yet"))
        # The same gates as promotion, on the served version's holdout metrics (a baseline is
        # reported above, not measured against the naive it is).
        from shared.forecasting import gates

        metrics = gates.metrics_from_tags(target.tags) if target.tags.get("baseline") != "true" else None
        breaches = gates.breaches(metrics, cfg.gates) if metrics else []
        if breaches:
            found.append(Alert(f"thresholds:{isbn}:{target.version}", "warning",
                               f"{isbn} v{target.version} serves above the metric thresholds", "; ".join(breaches)))
        return found

    with ThreadPoolExecutor(max_workers=8) as pool:
        return [a for alerts in pool.map(check, isbns) for a in alerts]


def health_alerts(cfg: Settings) -> list[Alert]:
    found = []
    if not model_store.healthy(cfg):
        found.append(Alert("health:mlflow", "critical", "MLflow is unreachable",
                           f"{cfg.mlflow_tracking_uri}/health did not answer: forecasts are served stale"))
    if cfg.alerts.forecast_health_url:
        try:
            ok = requests.get(cfg.alerts.forecast_health_url, timeout=5).ok
        except requests.RequestException:
            ok = False
        if not ok:
            found.append(Alert("health:forecast", "critical", "The forecast function is unhealthy",
                               f"{cfg.alerts.forecast_health_url} did not answer 200"))
    return found


def failed_run_alerts(cfg: Settings, store: RunStore) -> list[Alert]:
    since = now() - timedelta(hours=cfg.alerts.failed_run_lookback_hours)
    return [Alert(f"run:{r['run_id']}:failed", "critical", f"Training run {r['run_id']} failed",
                  r.get("error", ""), r.get("correlation_id"))
            for r in store.runs(limit=200, status="failed") if r.get("updated_at", now()) >= since]


def on_message(cfg: Settings, message: PubSubMessage, store: RunStore | None = None) -> dict:
    """Handle one monitor message; returns what it did (retried runs, alerts sent)."""
    store = store or RunStore(cfg)
    retried: list[str] = []
    if message.attributes.get("event_type") == "schedule.tick":
        from shared.trigger import reap_expired_leases

        retried = reap_expired_leases(cfg, store)
        alerts = health_alerts(cfg) + failed_run_alerts(cfg, store)
        if model_store.healthy(cfg):
            alerts += model_alerts(cfg, sorted(store.series_isbns()))
    else:
        alerts = event_alerts(message)
    sent = [a.key for a in alerts if send(cfg, store, a)]
    return {"retried": retried, "alerts": [a.key for a in alerts], "sent": sent}
