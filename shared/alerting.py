"""Alerts to Slack (incoming webhook) and email, deduplicated in Firestore.

An alert has a key (what it is about: a run, an ISBN's baseline model, a rejected file); the
same key is sent at most once per dedup window, however many deliveries or ticks raise it.
The claim is a Firestore transaction, so two instances handling duplicate events cannot
both send.

Critical alerts go out at once, one message each. The warnings one monitor tick finds go
out together, as one digest per channel, with the conditions that cleared since they were
alerted (resolve notices): an alert about a `Condition` stays open once delivered, and is
resolved once when a later check of it finds nothing. Nothing counts as sent unless some
channel took it: the claim of a message that reached nobody is undone, so the next tick
sends it again (events are not raised again by a tick, so their alerts are kept pending for
it). Hourly counters (`alert_counts/`) feed the daily summary.
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
from shared.layout import Collection

log = get_logger(__name__)
CRITICAL, WARNING, INFO = "critical", "warning", "info"
ICONS = {CRITICAL: ":red_circle:", WARNING: ":large_orange_circle:", INFO: ":large_blue_circle:"}
MAX_DETAIL_BYTES = 3000  # Slack truncates long messages; the full story is in the logs and Firestore
MAX_LISTED = 5  # per condition in a digest; every alert is also logged on its own
CLAIM_BATCH = 100  # alerts claimed per transaction: a tick over a catalogue stays a few commits
NEVER = datetime(1970, 1, 1, tzinfo=timezone.utc)
SENT, MESSAGES, SUPPRESSED, RESOLVED, UNDELIVERED = "sent", "messages", "suppressed", "resolved", "undelivered"
OPEN, PENDING, LAST_SENT_AT = "open", "pending", "last_sent_at"  # fields of an alert's document


@dataclass(frozen=True)
class Condition:
    """A state the monitor checks on every tick, about one ISBN or about the whole system.
    ``heading`` follows a count of ISBNs in a digest; ``cleared`` says that it is over."""
    name: str
    severity: str
    heading: str
    cleared: str

    def key(self, subject: str | None = None) -> str:
        return f"{self.name}:{subject}" if subject else self.name

    def alert(self, subject: str | None, title: str, detail: str) -> "Alert":
        return Alert(self.key(subject), self.severity, title, detail, condition=self, subject=subject)


@dataclass(frozen=True)
class Alert:
    key: str
    severity: str          # CRITICAL | WARNING | INFO
    title: str
    detail: str
    correlation_id: str | None = None
    condition: Condition | None = None   # None: an event, raised once
    subject: str | None = None           # the ISBN a condition is about

    @property
    def doc_id(self) -> str:
        return doc_id(self.key)


def doc_id(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Notice:
    """One message on every channel: an alert, a digest or a summary."""
    severity: str
    title: str
    body: str
    correlation_id: str | None = None


def notice_of(alert: Alert) -> Notice:
    return Notice(alert.severity, alert.title, alert.detail, alert.correlation_id)


# --- channels -----------------------------------------------------------------------------
@retry(stop=stop_after_attempt(3), wait=wait_exponential(multiplier=0.5, max=4), reraise=True)
def _post_slack(url: str, notice: Notice) -> None:
    # Titles and details carry uploaded cell text and event fields: shown, never interpreted.
    text = f"{ICONS.get(notice.severity, '')} *{slack_escaped(notice.title)}*\n{slack_escaped(clip(notice.body, MAX_DETAIL_BYTES))}"
    if notice.correlation_id:
        text += f"\n_correlation id: {slack_escaped(notice.correlation_id)}_"
    requests.post(url, json={"text": text}, timeout=10).raise_for_status()


@retry(stop=stop_after_attempt(3), wait=wait_exponential(multiplier=0.5, max=4), reraise=True)
def _send_email(cfg: Settings, notice: Notice) -> None:
    message = EmailMessage()
    message["Subject"] = one_line(f"[bookcast {notice.severity}] {notice.title}")
    message["From"] = cfg.alerts.email_from
    message["To"] = ", ".join(cfg.alerts.email_to)
    message.set_content(clip(notice.body, MAX_DETAIL_BYTES)
                        + (f"\n\ncorrelation id: {notice.correlation_id}" if notice.correlation_id else ""))
    with smtplib.SMTP(cfg.alerts.smtp_host, cfg.alerts.smtp_port, timeout=10) as smtp:
        smtp.send_message(message)


def deliver(cfg: Settings, store: RunStore, notice: Notice) -> bool:
    """Post to every configured channel; False only if there are channels and all failed.
    A failing channel is logged and does not stop the other."""
    channels = []
    if cfg.alerts.slack_webhook_url:
        channels.append(("slack", lambda: _post_slack(cfg.alerts.slack_webhook_url.get_secret_value(), notice)))
    if cfg.alerts.email_to and cfg.alerts.smtp_host:
        channels.append(("email", lambda: _send_email(cfg, notice)))
    delivered = 0
    for name, post in channels:
        try:
            post()
            delivered += 1
        except Exception:
            log.exception("alert channel %s failed for %s", name, notice.title)
    if channels and not delivered:
        return False
    count(store, **{MESSAGES: 1})
    return True


# --- state: claims, open conditions, pending events, counters --------------------------------
def claim(store: RunStore, alerts: list[Alert], window_minutes: int) -> list[Alert]:
    """The alerts to send now: each key at most once per window. Repeats are counted as
    suppressed, on the alert and in the hour's counters."""
    unique = list({a.key: a for a in alerts}.values())
    claimed: list[Alert] = []
    for start in range(0, len(unique), CLAIM_BATCH):
        chunk = unique[start:start + CLAIM_BATCH]

        def work(transaction, chunk=chunk) -> list[Alert]:
            refs = {a.key: store.col(Collection.ALERTS).document(a.doc_id) for a in chunk}
            states = store.read_many(transaction, refs)
            at, fresh = now(), []
            for alert in chunk:
                state = states[alert.key]
                if state and state[LAST_SENT_AT] > at - timedelta(minutes=window_minutes):
                    transaction.update(refs[alert.key], {SUPPRESSED: state.get(SUPPRESSED, 0) + 1, "last_seen_at": at})
                    continue
                transaction.set(refs[alert.key], {
                    "key": alert.key, "severity": alert.severity, "title": alert.title, "detail": alert.detail,
                    "correlation_id": alert.correlation_id, LAST_SENT_AT: at, "last_seen_at": at, SUPPRESSED: 0,
                    SENT: (state or {}).get(SENT, 0) + 1, UNDELIVERED: (state or {}).get(UNDELIVERED, 0),
                    "condition": alert.condition.name if alert.condition else None, "subject": alert.subject,
                    "cleared": alert.condition.cleared if alert.condition else None,
                    # Whether it is open (resolvable) changes only once delivery is known.
                    OPEN: (state or {}).get(OPEN, False), PENDING: False})
                fresh.append(alert)
            return fresh

        claimed += store.in_transaction(work)
    count(store, **{SUPPRESSED: len(unique) - len(claimed)})
    return claimed


def settle(store: RunStore, alerts: list[Alert], delivered: bool) -> None:
    """Record the outcome of sending claimed alerts. Delivered: a condition is open until it
    clears. Undelivered: the claim is undone, so the next occurrence is sent, not suppressed,
    and an event's alert waits for the next tick (nothing else would raise it again)."""
    from google.cloud import firestore

    undone = {LAST_SENT_AT: NEVER, SENT: firestore.Increment(-1), UNDELIVERED: firestore.Increment(1)}
    update_all(store, {a.key: {OPEN: a.condition is not None} if delivered
                       else {**undone, PENDING: a.condition is None} for a in alerts})
    count(store, **{SENT if delivered else UNDELIVERED: len(alerts)})


def close(store: RunStore, keys: set[str]) -> list[dict]:
    """Mark the open alerts with these keys resolved; returns those this call closed (a
    duplicate tick finds them closed already, so each clears once)."""
    from google.cloud import firestore

    ordered, closed = sorted(keys), []
    for start in range(0, len(ordered), CLAIM_BATCH):
        def work(transaction, chunk=ordered[start:start + CLAIM_BATCH]) -> list[dict]:
            refs = {key: store.col(Collection.ALERTS).document(doc_id(key)) for key in chunk}
            states = [s for s in store.read_many(transaction, refs).values() if s and s.get(OPEN)]
            for state in states:
                transaction.update(refs[state["key"]], {OPEN: False, "resolved_at": firestore.SERVER_TIMESTAMP})
            return states

        closed += store.in_transaction(work)
    return closed


def reopen(store: RunStore, closed: list[dict]) -> None:
    """Undo ``close`` for resolve notices that reached nobody: the next tick resolves them again."""
    update_all(store, {state["key"]: {OPEN: True} for state in closed})


def update_all(store: RunStore, updates: dict[str, dict]) -> None:
    """Update alert documents by key, in commits within Firestore's limit on writes."""
    items = list(updates.items())
    for start in range(0, len(items), CLAIM_BATCH):
        batch = store.db.batch()
        for key, fields in items[start:start + CLAIM_BATCH]:
            batch.update(store.col(Collection.ALERTS).document(doc_id(key)), fields)
        batch.commit()


def open_keys(store: RunStore) -> set[str]:
    from google.cloud import firestore

    query = store.col(Collection.ALERTS).where(filter=firestore.FieldFilter(OPEN, "==", True)).select(["key"])
    return {snap.get("key") for snap in query.stream()}


def pending(store: RunStore) -> list[Alert]:
    """Event alerts that reached nobody, to be sent again."""
    from google.cloud import firestore

    query = store.col(Collection.ALERTS).where(filter=firestore.FieldFilter(PENDING, "==", True))
    return [Alert(s["key"], s["severity"], s["title"], s["detail"], s.get("correlation_id"))
            for s in (snap.to_dict() for snap in query.stream())]


def hour_id(at: datetime) -> str:
    return f"{at.astimezone(timezone.utc):%Y-%m-%dT%H}"


def count(store: RunStore, **increments: int) -> None:
    from google.cloud import firestore

    if any(increments.values()):
        store.col(Collection.ALERT_COUNTS).document(hour_id(now())).set(
            {"hour": hour_id(now()), **{k: firestore.Increment(v) for k, v in increments.items() if v}}, merge=True)


def counts(store: RunStore, since: datetime, until: datetime) -> dict[str, int]:
    """The counters of the hours from ``since`` to ``until``, added up."""
    hours, at = [], since
    while at <= until:
        hours.append(hour_id(at))
        at += timedelta(hours=1)
    totals = dict.fromkeys((SENT, MESSAGES, SUPPRESSED, RESOLVED, UNDELIVERED), 0)
    found = store.read_many(None, {h: store.col(Collection.ALERT_COUNTS).document(h) for h in hours})
    for bucket in filter(None, found.values()):
        for name in totals:
            totals[name] += int(bucket.get(name, 0))
    return totals


# --- sending --------------------------------------------------------------------------------
def send(cfg: Settings, store: RunStore, alert: Alert, window_minutes: int | None = None) -> bool:
    """Deliver one alert as its own message unless a duplicate; returns whether it was sent."""
    window = cfg.alerts.dedup_window_minutes if window_minutes is None else window_minutes
    if not claim(store, [alert], window):
        log.info("alert suppressed (duplicate): %s", alert.title, extra={"alert_key": alert.key})
        return False
    log_alert(alert)
    delivered = deliver(cfg, store, notice_of(alert))
    settle(store, [alert], delivered)
    return delivered


def log_alert(alert: Alert) -> None:
    log.warning("ALERT %s: %s: %s", alert.severity, alert.title, alert.detail,
                extra={"alert_key": alert.key, "severity_level": alert.severity})


def report(cfg: Settings, store: RunStore, found: list[Alert], checked: set[str]) -> dict[str, list[str]]:
    """Send what one monitor tick found: each critical alert at once on its own; the other
    new alerts and every condition that cleared (among the ``checked`` keys, open but not
    found again) as one digest; then the event alerts an earlier tick could not deliver."""
    critical = [a for a in found if a.severity == CRITICAL]
    sent = [a.key for a in critical if send(cfg, store, a)]
    fresh = claim(store, [a for a in found if a.severity != CRITICAL], cfg.alerts.dedup_window_minutes)
    found_keys = {a.key for a in found}
    cleared = close(store, (open_keys(store) & checked) - found_keys)
    resolved: list[str] = []
    if fresh or cleared:
        for alert in fresh:
            log_alert(alert)
        delivered = deliver(cfg, store, digest(fresh, cleared))
        settle(store, fresh, delivered)
        if delivered:
            sent += [a.key for a in fresh]
            resolved = [state["key"] for state in cleared]
            count(store, **{RESOLVED: len(resolved)})
        else:
            reopen(store, cleared)
    resent = [a.key for a in pending(store) if a.key not in found_keys and send(cfg, store, a)]
    return {"sent": sent + resent, "resolved": resolved}


def digest(alerts: list[Alert], cleared: list[dict]) -> Notice:
    """One message for a tick: per condition, how many ISBNs and the first few with their
    detail ("45 ISBNs served by a fallback, not a tuned candidate: ... and 40 more"); then what
    cleared, the same way. Only conditions about ISBNs are digested: the conditions of the
    whole system are critical, sent on their own."""
    lines: list[str] = []
    by_condition: dict[str, list[Alert]] = {}
    for alert in sorted(alerts, key=lambda a: (a.severity != WARNING, a.key)):
        by_condition.setdefault(alert.condition.name, []).append(alert)
    for group in by_condition.values():
        lines.append(f"{counted(len(group), 'ISBN')} {group[0].condition.heading}:")
        lines += [f"• {a.subject}: {a.detail}" for a in group[:MAX_LISTED]]
        lines += [f"… and {len(group) - MAX_LISTED} more"] if len(group) > MAX_LISTED else []
    resolved: dict[str, list[dict]] = {}
    for state in sorted(cleared, key=lambda s: s["key"]):
        resolved.setdefault(state["condition"], []).append(state)
    if resolved:
        lines.append("Resolved:")
    for group in resolved.values():
        subjects = [s["subject"] for s in group if s["subject"]]
        if not subjects:  # a condition of the whole system, such as MLflow's health
            lines.append(f"• {group[0]['cleared']}")
            continue
        listed = ", ".join(subjects[:MAX_LISTED]) + (f" and {len(subjects) - MAX_LISTED} more"
                                                     if len(subjects) > MAX_LISTED else "")
        lines.append(f"• {counted(len(subjects), 'ISBN')} {group[0]['cleared']}: {listed}")
    parts = [f"{counted(len(alerts), 'new alert')}"] if alerts else []
    parts += [f"{len(cleared)} resolved"] if cleared else []
    severity = WARNING if any(a.severity == WARNING for a in alerts) else INFO
    return Notice(severity, f"Monitor digest: {', '.join(parts)}", "\n".join(lines))


def counted(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
