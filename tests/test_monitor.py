"""The monitor: failure events and scheduled checks become Slack and email alerts, sent
once per dedup window however often they are raised."""
from __future__ import annotations

import email
import json
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from functools import lru_cache

import pytest
from google.cloud import firestore
from pydantic import SecretStr

from emulators.processes import stop
from emulators.stack import Ports
from emulators.wiring import wire
from shared import champions, monitoring, registry
from shared.lifecycle import leases
from shared.alerting import Alert
from shared.dashboard.fleet import measured_degraded
from shared.events import IsbnResult, PubSubMessage, RejectedInput, TrainingEvent
from shared.signing import encode
from shared.forecasting import models
from shared.forecasting.models import ModelSpec
from shared.monitoring import on_message, worsening
from shared.model_store import resolve
from shared.pubsub import publish
from shared.runstore import RunStore, now
from shared.layout import Collection
from shared.training.per_isbn import serving_forecast
from tests.helpers import Inbox, sample

pytestmark = pytest.mark.usefixtures("mlflow_server")


@pytest.fixture
def inbox():
    box = Inbox()
    yield box
    box.close()


@pytest.fixture
def alerting_cfg(cfg, inbox):
    return cfg.model_copy(update={"alerts": cfg.alerts.model_copy(update={
        "slack_webhook_url": SecretStr(inbox.webhook_url), "email_to": ["ops@example.com"], "smtp_host": "127.0.0.1",
        "smtp_port": inbox.smtp_port})})


def delivered(event, message_id: str) -> PubSubMessage:
    data, attributes = encode(event)
    return PubSubMessage(message_id=message_id, publish_time=now(), attributes=attributes, data=data)


def tick(message_id: str, at: datetime | None = None) -> PubSubMessage:
    """A monitor tick; by default at midnight, before the daily summary is due."""
    at = at or now().replace(hour=0, minute=0, second=0, microsecond=0)
    return PubSubMessage(message_id=message_id, publish_time=at, attributes={"event_type": "schedule.tick"},
                         data=b'{"job": "monitor"}')


def with_data(store: RunStore, isbns: list[str]) -> None:
    batch = store.db.batch()
    for isbn in isbns:
        batch.set(store.col("series").document(isbn), {"isbn": isbn, "weeks": {}, "sources": []})
    batch.commit()


@lru_cache(maxsize=1)
def seasonal_naive() -> dict:
    frame = sample(1, years=2)
    return models.fit(frame["units"].to_numpy(float), frame["week"].iloc[0], ModelSpec(kind="seasonal_naive")).to_dict()


def serve(cfg, store, isbn: str, metrics: dict, tags: dict, action: str = "promote") -> str:
    """Register a version (its model does not matter here, its metrics and tags do) and move
    the champion alias to it, as training does."""
    fitted = seasonal_naive()
    version = registry.register(cfg, isbn, fitted, serving_forecast(fitted), params={}, metrics=metrics,
                                tags=tags).version
    registry.move_alias(cfg, store, isbn, version, action, "test", "pytest", "c", publish=False)
    return version


def unreachable_channels(cfg):
    return cfg.model_copy(update={"alerts": cfg.alerts.model_copy(update={
        "slack_webhook_url": SecretStr("http://127.0.0.1:9/hook"), "smtp_port": 9})})


def failed_run(run_id: str = "run-1") -> TrainingEvent:
    return TrainingEvent(correlation_id="cid-9", run_id=run_id, status="failed", isbns=["9780306406157"],
                         reason="ValueError: boom", shard="1/1",
                         results=[IsbnResult(isbn="9780306406157", status="failed", reason="worker died")])


def test_failed_run_alerts_once_on_slack_and_email(alerting_cfg, inbox):
    first = on_message(alerting_cfg, delivered(failed_run(), "m1"))
    again = on_message(alerting_cfg, delivered(failed_run(), "m2"))  # at-least-once delivery
    assert first["sent"] == ["run:run-1:1/1:failed"] and again["sent"] == []
    (post,) = inbox.slack
    assert "Training run run-1 shard 1/1 failed" in post["text"] and "worker died" in post["text"] and "cid-9" in post["text"]
    (mail,) = inbox.mail
    assert "Subject: [bookcast critical] Training run run-1 shard 1/1 failed" in mail and "To: ops@example.com" in mail
    state = RunStore(alerting_cfg).get("alerts", Alert("run:run-1:1/1:failed", "critical", "", "").doc_id)
    assert state["sent"] == 1 and state["suppressed"] == 1


def test_partly_failed_run_is_reported(alerting_cfg, inbox):
    event = TrainingEvent(correlation_id="c", run_id="run-2", status="succeeded", isbns=["a", "b"], shard="1/1",
                          results=[IsbnResult(isbn="a", status="promoted"),
                                   IsbnResult(isbn="b", status="refused", reason="only 12 weeks of history")])
    assert on_message(alerting_cfg, delivered(event, "m1"))["sent"] == ["run:run-2:1/1:partial"]
    assert "b: refused only 12 weeks of history" in inbox.slack[0]["text"]


def test_rejected_upload_alert_lists_the_reasons(alerting_cfg, inbox):
    event = RejectedInput(correlation_id="c", bucket="b", object_name="sales/x.csv", generation="7",
                          reasons=["sales/x.csv:3: units: negative value -2"])
    assert on_message(alerting_cfg, delivered(event, "m1"))["sent"]
    assert "units: negative value -2" in inbox.slack[0]["text"]


def test_tick_checks_models_and_health_and_resolves_what_cleared(alerting_cfg, inbox):
    store = RunStore(alerting_cfg)
    isbn, worse = sample(1, years=2)["isbn"].iloc[0], sample(1, years=2, seed=99)["isbn"].iloc[0]
    with_data(store, [isbn, worse, "9780306406157"])
    version = serve(alerting_cfg, store, isbn, {"rmse": 250.0, "mape": 0.2}, {"baseline": "true"}, "baseline")
    # A tuned model that serves although its holdout metrics fail today's gates.
    breaching = serve(alerting_cfg, store, worse, {"rmse": 250.0, "mae": 200.0, "wape": 0.3, "relative_mae": 1.25},
                      {"kind": "candidate"})
    strict = alerting_cfg.model_copy(update={"decision": alerting_cfg.decision.model_copy(
        update={"max_model_age_days": -1})})
    result = on_message(strict, tick("t1"))
    assert set(result["sent"]) == {f"stale:{isbn}", f"baseline:{isbn}", f"stale:{worse}", f"thresholds:{worse}",
                                   "unserved:9780306406157"}
    (digest,) = inbox.slack  # five warnings, one message
    assert "does not beat seasonal naive" in digest["text"] and "1.25×" in digest["text"]
    assert f"1 ISBN served by a fallback, not a tuned candidate:\n• {isbn}: v{version}" in digest["text"]
    assert f"v{breaching}" in digest["text"]
    assert on_message(strict, tick("t2"))["sent"] == [] and len(inbox.slack) == 1

    unreachable = strict.model_copy(update={"mlflow_tracking_uri": "http://127.0.0.1:9"})
    down = on_message(unreachable, tick("t3"))
    assert down["sent"] == ["health:mlflow"] and down["resolved"] == []  # models unchecked: nothing cleared
    assert "MLflow is unreachable" in inbox.slack[-1]["text"]
    up = on_message(strict, tick("t4"))
    assert up["sent"] == [] and up["resolved"] == ["health:mlflow"]
    assert "Resolved:\n• MLflow is reachable again" in inbox.slack[-1]["text"]
    assert len(inbox.slack) == len(inbox.mail) == 3


def test_a_tick_over_50_baseline_isbns_sends_one_digest_and_resolves_when_one_clears(alerting_cfg, inbox):
    store = RunStore(alerting_cfg)
    isbns = sorted(set(sample(50, years=1)["isbn"]))
    assert len(isbns) == 50
    with_data(store, isbns)
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda i: serve(alerting_cfg, store, i, {"rmse": 9.0}, {"baseline": "true"}, "baseline"), isbns))

    first = on_message(alerting_cfg, tick("t1"))
    assert sorted(first["sent"]) == sorted(f"baseline:{i}" for i in isbns)
    assert len(inbox.slack) == len(inbox.mail) == 1  # one digest per channel, not 50 messages
    text = inbox.slack[0]["text"]
    assert "50 ISBNs served by a fallback, not a tuned candidate:" in text and "… and 45 more" in text
    assert sum(i in text for i in isbns) == 5
    assert "Subject: [bookcast info] Monitor digest: 50 new alerts" in inbox.mail[0]
    assert on_message(alerting_cfg, tick("t2"))["sent"] == [] and len(inbox.slack) == 1  # deduplicated per ISBN

    tuned = serve(alerting_cfg, store, isbns[7], {"rmse": 5.0, "mae": 4.0, "wape": 0.2, "relative_mae": 0.7},
                  {"kind": "candidate"})
    cleared = on_message(alerting_cfg, tick("t3"))
    assert cleared["sent"] == [] and cleared["resolved"] == [f"baseline:{isbns[7]}"]
    assert len(inbox.slack) == 2 and f"1 ISBN no longer served by a fallback: {isbns[7]}" in inbox.slack[1]["text"]
    assert on_message(alerting_cfg, tick("t4"))["resolved"] == [] and len(inbox.slack) == 2  # resolved once
    assert resolve(alerting_cfg, isbns[7]).version == tuned


def test_no_unserved_alert_while_the_first_training_holds_a_lease(alerting_cfg, inbox):
    store = RunStore(alerting_cfg)
    training, idle = "9780306406157", "9781861972712"
    with_data(store, [training, idle])
    store.in_transaction(lambda t: leases.claim(store, t, leases.read(store, t, [training]), [training], "run-first",
                                                600, {"key": "upload-1"}))
    assert on_message(alerting_cfg, tick("t1"))["sent"] == [f"unserved:{idle}"]
    # The first training ended without a servable model: now the ISBN is unserved for real.
    store.col(Collection.LEASES).document(training).delete()
    assert on_message(alerting_cfg, tick("t2"))["sent"] == [f"unserved:{training}"]
    assert len(inbox.slack) == 2 and training not in inbox.slack[0]["text"]


def test_alerts_no_channel_took_are_sent_on_the_next_tick(alerting_cfg, inbox):
    store = RunStore(alerting_cfg)
    isbns = ["9780306406157", "9781861972712", "9780262033848"]
    with_data(store, isbns)
    down = unreachable_channels(alerting_cfg)
    assert on_message(down, tick("t1"))["sent"] == []
    assert on_message(down, delivered(failed_run("run-lost"), "m1"))["sent"] == []
    state = store.get("alerts", Alert(f"unserved:{isbns[0]}", "warning", "", "").doc_id)
    assert state["sent"] == 0 and state["undelivered"] == 1 and not state["open"]

    retried = on_message(alerting_cfg, tick("t2"))
    assert sorted(retried["sent"]) == sorted([f"unserved:{i}" for i in isbns] + ["run:run-lost:1/1:failed"])
    digest, event = inbox.slack  # the digest, and the event's alert nothing would have raised again
    assert "3 ISBNs with data but no served model" in digest["text"] and "run-lost" in event["text"]
    assert on_message(alerting_cfg, tick("t3"))["sent"] == [] and len(inbox.slack) == len(inbox.mail) == 2

    # A resolve notice nobody received is given again.
    serve(alerting_cfg, store, isbns[0], {"rmse": 5.0, "mae": 4.0, "wape": 0.2, "relative_mae": 0.7}, {})
    assert on_message(down, tick("t4"))["resolved"] == []
    assert on_message(alerting_cfg, tick("t5"))["resolved"] == [f"unserved:{isbns[0]}"]
    assert len(inbox.slack) == 3 and f"1 ISBN served now: {isbns[0]}" in inbox.slack[-1]["text"]


def test_daily_summary_is_sent_once_a_day_however_often_the_tick_arrives(alerting_cfg, inbox):
    store = RunStore(alerting_cfg)
    with_data(store, ["9780306406157"])
    for run_id, status in (("run-ok", "succeeded"), ("run-bad", "failed")):
        store.create_run(["9780306406157"], {"kind": "test"}, "c", "local", run_id=run_id)
        store.update_run(run_id, status=status, error="worker died" if status == "failed" else "")
    at = now()
    # No dedup window for alerts: the summary's once a day must not rest on it.
    cfg = alerting_cfg.model_copy(update={"alerts": alerting_cfg.alerts.model_copy(
        update={"daily_summary_hour_utc": at.hour, "dedup_window_minutes": 0})})

    def summaries() -> list[str]:
        return [p["text"] for p in inbox.slack if "Daily summary" in p["text"]]

    assert f"daily-summary:{at:%Y-%m-%d}" in on_message(cfg, tick("t1", at))["sent"]
    (summary,) = summaries()
    assert f"Daily summary {at:%Y-%m-%d}" in summary
    assert "Fleet: 1 ISBN with data, 0 served (0 by a fallback), 1 unserved" in summary
    assert "Runs in the last 24 h: 2 (1 failed, 1 succeeded)" in summary and "• run-bad: worker died" in summary
    # Before it: the failed run's alert and the digest with the unserved ISBN, two messages.
    assert "Alerts: 2 sent in 2 message(s), 0 suppressed as repeats" in summary
    on_message(cfg, tick("t1", at))  # the same tick, delivered again
    on_message(cfg, tick("t2", at + timedelta(minutes=15)))
    assert len(summaries()) == 1
    tomorrow = at + timedelta(days=1)
    assert f"daily-summary:{tomorrow:%Y-%m-%d}" in on_message(cfg, tick("t3", tomorrow))["sent"]
    assert len(summaries()) == 2


def test_a_new_champion_worse_than_the_one_it_replaced_is_alerted(alerting_cfg, inbox):
    store = RunStore(alerting_cfg)
    worse, similar = "9780306406157", "9781861972712"
    with_data(store, [worse, similar])
    good = {"mae": 80.0, "relative_mae": 0.8, "zero_weeks_in_holdout": 0.0}
    first = serve(alerting_cfg, store, worse, {**good, "rmse": 100.0, "wape": 0.2, "mape": 0.2}, {})
    second = serve(alerting_cfg, store, worse, {**good, "rmse": 125.0, "wape": 0.21, "mape": 0.24}, {})
    # Within the limits, and a MAPE that is undefined with zero weeks in the holdout.
    serve(alerting_cfg, store, similar, {**good, "rmse": 100.0, "wape": 0.2, "mape": 0.2,
                                         "zero_weeks_in_holdout": 2.0}, {})
    serve(alerting_cfg, store, similar, {**good, "rmse": 110.0, "wape": 0.22, "mape": 0.5,
                                         "zero_weeks_in_holdout": 2.0}, {})
    assert on_message(alerting_cfg, tick("t1"))["sent"] == [f"worsened:{worse}"]
    text = inbox.slack[0]["text"]
    assert (f"1 ISBN served by a new champion worse than the one it replaced:\n"
            f"• {worse}: holdout RMSE 125 vs 100 (+25%") in text
    assert "MAPE 0.24 vs 0.2 (+20%" in text and "WAPE" not in text
    # A refresh keeps the parameters and metrics of the version it refreshes: still worse than v1.
    refreshed = serve(alerting_cfg, store, worse, {**good, "rmse": 125.0, "wape": 0.21, "mape": 0.24},
                      {"kind": "refresh", "refreshes": second}, "refresh")
    target = resolve(alerting_cfg, worse)
    title, _ = worsening(alerting_cfg, target, champions.lineages(alerting_cfg, store, {worse: target.version})[worse])
    assert title == f"{worse} v{refreshed} is worse than v{first}, the champion it replaced"
    # An entry indexed before lineage was kept has it worked out once, and kept.
    entry = store.col(Collection.CHAMPIONS).document(worse)
    entry.update({champions.LINEAGE: firestore.DELETE_FIELD})
    assert champions.lineages(alerting_cfg, store, {worse: refreshed})[worse]["version"] == first
    assert entry.get().to_dict()[champions.LINEAGE] == {"of": refreshed, "version": first, "metrics": {
        **good, "rmse": 100.0, "wape": 0.2, "mape": 0.2}}


def test_degradation_on_new_weeks_is_alerted_on_the_next_tick(alerting_cfg, inbox):
    store = RunStore(alerting_cfg)
    isbn = "9780306406157"
    with_data(store, [isbn])
    version = serve(alerting_cfg, store, isbn, {"mae": 10.0, "relative_mae": 0.8, "wape": 0.2, "rmse": 12.0}, {})
    measured = {"unseen_weeks": 3, "unseen_abs_error": 60.0, "new_weeks_scored": 3, "unseen_mae": 20.0,
                "holdout_mae": 10.0, "ratio": 2.0}
    store.record_decision(isbn, "skip", [], {"champion_version": version, "degradation": measured},
                          {"key": "u1"}, "c")
    assert on_message(alerting_cfg, tick("t1"))["sent"] == []  # 3 weeks: too few to judge
    store.record_decision(isbn, "train", ["degraded"], {"champion_version": version, "degradation": {
        **measured, "unseen_weeks": 5, "unseen_mae": 13.0, "ratio": 1.3}}, {"key": "u2"}, "c")
    assert on_message(alerting_cfg, tick("t2"))["sent"] == [f"degraded:{isbn}"]
    assert "MAE 13.0 on 5 weeks it never saw vs 10.0 on its holdout (+30%, at most +25%)" in inbox.slack[0]["text"]


def test_an_isbn_decided_before_measures_were_kept_is_judged_once_they_are_worked_out(alerting_cfg, inbox,
                                                                                     monkeypatch):
    store = RunStore(alerting_cfg)
    isbn = "9780306406157"
    with_data(store, [isbn])
    version = serve(alerting_cfg, store, isbn, {"mae": 10.0, "relative_mae": 0.8, "wape": 0.2, "rmse": 12.0}, {})
    store.record_decision(isbn, "train", ["degraded"], {"champion_version": version, "degradation": {
        "unseen_weeks": 5, "unseen_abs_error": 65.0, "new_weeks_scored": 5, "unseen_mae": 13.0, "holdout_mae": 10.0,
        "ratio": 1.3}}, {"key": "u1"}, "c")
    measure = store.col(Collection.DEGRADATION).document(isbn)
    measure.delete()  # as a deployment from before measures were kept left it
    assert on_message(alerting_cfg, tick("t1"))["sent"] == [f"degraded:{isbn}"]  # found in its decisions
    assert measure.get().to_dict()["version"] == version  # and kept: the next tick reads it
    assert measured_degraded(alerting_cfg, store) == {(isbn, version)}  # the dashboard's degraded state agrees
    # A tick out of time to work it out leaves the ISBN unjudged: its open alert stays open.
    measure.delete()
    monkeypatch.setattr(monitoring, "BACKFILL_SECONDS", -1.0)
    assert f"degraded:{isbn}" not in on_message(alerting_cfg, tick("t2"))["resolved"]
    assert not measure.get().exists
    monkeypatch.setattr(monitoring, "BACKFILL_SECONDS", 40.0)
    store.record_decision(isbn, "skip", [], {"champion_version": version, "degradation": {
        "unseen_weeks": 6, "unseen_abs_error": 60.0, "new_weeks_scored": 6, "unseen_mae": 10.0, "holdout_mae": 10.0,
        "ratio": 1.0}}, {"key": "u2"}, "c")
    assert on_message(alerting_cfg, tick("t3"))["resolved"] == [f"degraded:{isbn}"]
    assert measured_degraded(alerting_cfg, store) == set()


def test_monitor_function_receives_failures_pushed_by_pubsub(cloud, alerting_cfg, inbox):
    ports = Ports.free().functions
    alerts = alerting_cfg.alerts
    proc = cloud.start_function("monitor", project=alerting_cfg.project_id, port=ports["monitor"], extra_env={
        "BOOKCAST_ALERTS__SLACK_WEBHOOK_URL": alerts.slack_webhook_url.get_secret_value(),
        "BOOKCAST_MODEL_NAME_PREFIX": alerting_cfg.model_name_prefix})
    try:
        wire(cloud.topology, alerting_cfg.project_id, cloud.ports, function_ports=ports, buckets=False,
             only_functions={"monitor"})
        publish(alerting_cfg, "training-events", failed_run("run-pushed"))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not inbox.slack:
            time.sleep(0.2)
        assert inbox.slack and "run-pushed" in inbox.slack[0]["text"]
        log = [json.loads(line) for line in open(proc.log) if line.startswith("{")]
        assert any(e.get("correlation_id") == "cid-9" and e["message"].startswith("ALERT critical") for e in log)
    finally:
        stop(proc)


def test_a_message_that_keeps_failing_is_dead_lettered_and_alerted(cloud, alerting_cfg, inbox, project_gcs):
    """trigger-training cannot reach MLflow, so it fails (5xx) on an upload; after the
    subscription's attempts the message goes to dead-letters, and the monitor alerts."""
    from google.cloud import pubsub_v1
    from google.protobuf import duration_pb2

    from emulators.wiring import create_topics, push_endpoint
    from shared.gcs import storage_client
    from shared.sales import to_csv

    project = alerting_cfg.project_id
    create_topics(cloud.topology, project)
    ports = Ports.free().functions
    trigger = cloud.start_function("trigger-training", project=project, port=ports["trigger-training"], extra_env={
        "BOOKCAST_MLFLOW_TRACKING_URI": "http://127.0.0.1:9", "STORAGE_EMULATOR_HOST": project_gcs,
        "BOOKCAST_MODEL_NAME_PREFIX": alerting_cfg.model_name_prefix})
    monitor = cloud.start_function("monitor", project=project, port=ports["monitor"], extra_env={
        "BOOKCAST_ALERTS__SLACK_WEBHOOK_URL": alerting_cfg.alerts.slack_webhook_url.get_secret_value()})
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    try:
        wire(cloud.topology, project, cloud.ports, function_ports=ports, only_functions={"monitor"})
        subscriber.create_subscription(request={  # as the topology's, with a one-second backoff for the test
            "name": subscriber.subscription_path(project, "trigger-training-uploads"),
            "topic": publisher.topic_path(project, "sales-uploads"),
            "push_config": {"push_endpoint": push_endpoint(ports["trigger-training"], project, "sales-uploads")},
            "retry_policy": {"minimum_backoff": duration_pb2.Duration(seconds=1),
                             "maximum_backoff": duration_pb2.Duration(seconds=1)},
            "dead_letter_policy": {"dead_letter_topic": publisher.topic_path(project, "dead-letters"),
                                   "max_delivery_attempts": 5}})
        blob = storage_client(project).bucket("bookcast-uploads").blob("sales/doomed.csv")
        blob.upload_from_string(to_csv(sample(1, years=1)))
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not inbox.slack:
            time.sleep(0.5)
        assert inbox.slack, "no dead-letter alert"
        assert "could not be processed" in inbox.slack[0]["text"] and "trigger-training-uploads" in inbox.slack[0]["text"]
        attempts = [line for line in open(trigger.log) if '"message": "received OBJECT_FINALIZE' in line]
        assert len(attempts) == 5
    finally:
        stop(trigger)
        stop(monitor)


def test_alert_text_is_shown_not_interpreted_by_slack_or_mail(alerting_cfg, inbox):
    event = RejectedInput(correlation_id="c", bucket="b", object_name="sales/<!channel>\nBcc: all@example.com",
                          generation="7", reasons=["sales/x.csv:2: isbn: '<http://evil.example|click me>' is not"])
    assert on_message(alerting_cfg, delivered(event, "m1"))["sent"]
    (post,) = inbox.slack
    assert "<!channel>" not in post["text"] and "&lt;!channel&gt;" in post["text"]
    assert "<http://evil.example|click me>" not in post["text"] and "&lt;http://evil.example|click me&gt;" in post["text"]
    (mail,) = inbox.mail
    headers = email.message_from_string(mail)
    assert headers["Bcc"] is None and "sales/<!channel> Bcc: all@example.com" in headers["Subject"]


def test_an_alert_nobody_received_is_not_suppressed(alerting_cfg, inbox):
    assert on_message(unreachable_channels(alerting_cfg), delivered(failed_run("run-lost"), "m1"))["sent"] == []
    assert on_message(alerting_cfg, delivered(failed_run("run-lost"), "m2"))["sent"] == ["run:run-lost:1/1:failed"]
    assert len(inbox.slack) == len(inbox.mail) == 1
