"""Alerts to Slack (incoming webhook) and email, deduplicated in Firestore.

An alert has a key (what it is about: a run, an ISBN's stale model, a rejected file); the
same key is sent at most once per dedup window, however many deliveries or ticks raise it.
The claim is a Firestore transaction, so two instances handling duplicate events cannot
both send.
"""
from __future__ import annotations

import hashlib
import smtplib
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.message import EmailMessage

import requests
from tenacity import retry, stop_after_attempt, wait_exponential

from shared.config import Settings
from shared.logs import get_logger
from shared.runstore import RunStore, now
from shared.text import clip, one_line, slack_escaped

log = get_logger(__name__)
MAX_DETAIL_BYTES = 3000  # Slack truncates long messages; the full story is in the logs and Firestore
NEVER = datetime(1970, 1, 1, tzinfo=timezone.utc)
ICONS = {"critical": ":red_circle:", "warning": ":large_orange_circle:", "info": ":large_blue_circle:"}


@dataclass(frozen=True)
class Alert:
    key: str
    severity: str          # critical | warning | info
    title: str
    detail: str
    correlation_id: str | None = None

    @property
    def doc_id(self) -> str:
        return hashlib.sha256(self.key.encode()).hexdigest()[:32]


def claim(store: RunStore, alert: Alert, window_minutes: int) -> bool:
    """True if this alert should be sent now; counts suppressed repeats otherwise."""
    def work(transaction) -> bool:
        ref = store.col("alerts").document(alert.doc_id)
        snap = ref.get(transaction=transaction)
        state = snap.to_dict() if snap.exists else None
        if state and state["last_sent_at"] > now() - timedelta(minutes=window_minutes):
            transaction.update(ref, {"suppressed": state.get("suppressed", 0) + 1, "last_seen_at": now()})
            return False
        transaction.set(ref, {"key": alert.key, "severity": alert.severity, "title": alert.title,
                              "detail": alert.detail, "last_sent_at": now(), "last_seen_at": now(), "suppressed": 0,
                              "sent": (state or {}).get("sent", 0) + 1, "correlation_id": alert.correlation_id})
        return True

    return store.in_transaction(work)


@retry(stop=stop_after_attempt(3), wait=wait_exponential(multiplier=0.5, max=4), reraise=True)
def _post_slack(url: str, alert: Alert) -> None:
    # Titles and details carry uploaded cell text and event fields: shown, never interpreted.
    text = f"{ICONS.get(alert.severity, '')} *{slack_escaped(alert.title)}*\n{slack_escaped(clip(alert.detail, MAX_DETAIL_BYTES))}"
    if alert.correlation_id:
        text += f"\n_correlation id: {slack_escaped(alert.correlation_id)}_"
    requests.post(url, json={"text": text}, timeout=10).raise_for_status()


@retry(stop=stop_after_attempt(3), wait=wait_exponential(multiplier=0.5, max=4), reraise=True)
def _send_email(cfg: Settings, alert: Alert) -> None:
    message = EmailMessage()
    message["Subject"] = one_line(f"[bookcast {alert.severity}] {alert.title}")
    message["From"] = cfg.alerts.email_from
    message["To"] = ", ".join(cfg.alerts.email_to)
    message.set_content(clip(alert.detail, MAX_DETAIL_BYTES)
                        + (f"\n\ncorrelation id: {alert.correlation_id}" if alert.correlation_id else ""))
    with smtplib.SMTP(cfg.alerts.smtp_host, cfg.alerts.smtp_port, timeout=10) as smtp:
        smtp.send_message(message)


def unclaim(store: RunStore, alert: Alert) -> None:
    """Undo a claim whose alert reached nobody, so the next occurrence is sent, not suppressed."""
    from google.cloud import firestore

    store.col("alerts").document(alert.doc_id).update({"last_sent_at": NEVER, "sent": firestore.Increment(-1),
                                                       "undelivered": firestore.Increment(1)})


def send(cfg: Settings, store: RunStore, alert: Alert) -> bool:
    """Deliver unless a duplicate; returns whether it was sent. A failing channel is logged
    and does not stop the other; if every configured channel fails, the claim is undone."""
    if not claim(store, alert, cfg.alerts.dedup_window_minutes):
        log.info("alert suppressed (duplicate): %s", alert.title, extra={"alert_key": alert.key})
        return False
    log.warning("ALERT %s: %s: %s", alert.severity, alert.title, alert.detail,
                extra={"alert_key": alert.key, "severity_level": alert.severity})
    channels = []
    if cfg.alerts.slack_webhook_url:
        channels.append(("slack", lambda: _post_slack(cfg.alerts.slack_webhook_url.get_secret_value(), alert)))
    if cfg.alerts.email_to and cfg.alerts.smtp_host:
        channels.append(("email", lambda: _send_email(cfg, alert)))
    delivered = 0
    for name, deliver in channels:
        try:
            deliver()
            delivered += 1
        except Exception:
            log.exception("alert channel %s failed for %s", name, alert.key)
    if channels and not delivered:
        unclaim(store, alert)
        return False
    return True
