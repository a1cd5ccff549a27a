"""The monitor: failure events and scheduled checks become Slack and email alerts, sent
once per dedup window however often they are raised."""
from __future__ import annotations

import email
import json
import time

import pytest
from pydantic import SecretStr

from emulators.processes import stop
from emulators.stack import Ports
from emulators.wiring import wire
from shared import registry
from shared.alerting import Alert
from shared.events import IsbnResult, PubSubMessage, RejectedInput, TrainingEvent, encode
from shared.forecasting import models
from shared.forecasting.models import ModelSpec
from shared.monitoring import on_message
from shared.pubsub import publish
from shared.runstore import RunStore, now
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


def failed_run(run_id: str = "run-1") -> TrainingEvent:
    return TrainingEvent(correlation_id="cid-9", run_id=run_id, status="failed", isbns=["9780306406157"],
                         reason="ValueError: boom",
                         results=[IsbnResult(isbn="9780306406157", status="failed", reason="worker died")])


def test_failed_run_alerts_once_on_slack_and_email(alerting_cfg, inbox):
    first = on_message(alerting_cfg, delivered(failed_run(), "m1"))
    again = on_message(alerting_cfg, delivered(failed_run(), "m2"))  # at-least-once delivery
    assert first["sent"] == ["run:run-1:failed"] and again["sent"] == []
    (post,) = inbox.slack
    assert "Training run run-1 failed" in post["text"] and "worker died" in post["text"] and "cid-9" in post["text"]
    (mail,) = inbox.mail
    assert "Subject: [bookcast critical] Training run run-1 failed" in mail and "To: ops@example.com" in mail
    state = RunStore(alerting_cfg).get("alerts", Alert("run:run-1:failed", "critical", "", "").doc_id)
    assert state["sent"] == 1 and state["suppressed"] == 1


def test_partly_failed_run_is_reported(alerting_cfg, inbox):
    event = TrainingEvent(correlation_id="c", run_id="run-2", status="succeeded", isbns=["a", "b"],
                          results=[IsbnResult(isbn="a", status="promoted"),
                                   IsbnResult(isbn="b", status="refused", reason="only 12 weeks of history")])
    assert on_message(alerting_cfg, delivered(event, "m1"))["sent"] == ["run:run-2:partial"]
    assert "b: refused only 12 weeks of history" in inbox.slack[0]["text"]


def test_rejected_upload_alert_lists_the_reasons(alerting_cfg, inbox):
    event = RejectedInput(correlation_id="c", bucket="b", object_name="sales/x.csv", generation="7",
                          reasons=["sales/x.csv:3: units: negative value -2"])
    assert on_message(alerting_cfg, delivered(event, "m1"))["sent"]
    assert "units: negative value -2" in inbox.slack[0]["text"]


def test_tick_checks_models_health_and_dead_jobs(alerting_cfg, inbox, probe):
    store = RunStore(alerting_cfg)
    frame = sample(1, years=2)
    isbn = frame["isbn"].iloc[0]
    store.col("series").document(isbn).set({"isbn": isbn, "weeks": {}, "sources": []})
    store.col("series").document("9780306406157").set({"isbn": "9780306406157", "weeks": {}, "sources": []})
    fitted = models.fit(frame["units"].to_numpy(float), frame["week"].iloc[0], ModelSpec(kind="seasonal_naive")).to_dict()
    version = registry.register(alerting_cfg, isbn, fitted, serving_forecast(fitted), params={},
                                metrics={"rmse": 250.0, "mape": 0.2}, tags={"baseline": "true"}).version
    registry.move_alias(alerting_cfg, store, isbn, version, "baseline", "test", "pytest", "c", publish=False)
    # A tuned model that serves although its holdout metrics fail today's gates.
    worse = sample(1, years=2, seed=99)["isbn"].iloc[0]
    store.col("series").document(worse).set({"isbn": worse, "weeks": {}, "sources": []})
    breaching = registry.register(alerting_cfg, worse, fitted, serving_forecast(fitted), params={},
                                  metrics={"rmse": 250.0, "mae": 200.0, "wape": 0.3, "relative_mae": 1.25},
                                  tags={"kind": "candidate"}).version
    registry.move_alias(alerting_cfg, store, worse, breaching, "promote", "test", "pytest", "c", publish=False)
    strict = alerting_cfg.model_copy(update={"decision": alerting_cfg.decision.model_copy(
        update={"max_model_age_days": -1})})
    tick = PubSubMessage(message_id="t1", publish_time=now(), attributes={"event_type": "schedule.tick"},
                         data=b'{"job": "monitor"}')
    result = on_message(strict, tick)
    assert set(result["sent"]) == {f"stale:{isbn}:{version}", f"baseline:{isbn}:{version}",
                                   f"stale:{worse}:{breaching}", f"thresholds:{worse}:{breaching}",
                                   "unserved:9780306406157"}
    texts = " ".join(p["text"] for p in inbox.slack)
    assert "does not beat seasonal naive" in texts and "1.25×" in texts and "seasonal-naive baseline" in texts
    assert on_message(strict, tick.model_copy(update={"message_id": "t2"}))["sent"] == []

    unreachable = strict.model_copy(update={"mlflow_tracking_uri": "http://127.0.0.1:9"})
    assert on_message(unreachable, tick.model_copy(update={"message_id": "t3"}))["sent"] == ["health:mlflow"]


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
    unreachable = alerting_cfg.model_copy(update={"alerts": alerting_cfg.alerts.model_copy(update={
        "slack_webhook_url": SecretStr("http://127.0.0.1:9/hook"), "smtp_port": 9})})
    assert on_message(unreachable, delivered(failed_run("run-lost"), "m1"))["sent"] == []
    assert on_message(alerting_cfg, delivered(failed_run("run-lost"), "m2"))["sent"] == ["run:run-lost:failed"]
    assert len(inbox.slack) == len(inbox.mail) == 1
