"""The dashboard in a real headless Chromium (Debian's, driven by Playwright), over data made
by the real stack: a trained run (registry, alias moves, champion index), uploads handled by
trigger_training (one accepted with new weeks, so its decision measures drift, one
rejected), and an alert sent through shared/alerting to the local receivers. The dashboard
runs as `make up` runs it: the `dashboard` function under functions-framework.
A screenshot of every page is saved under .state/screenshots/."""
from __future__ import annotations

import shutil
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr

from emulators.processes import free_port, http_ok, spawn, stop, wait_healthy
from emulators.wiring import create_topics
from shared import alerting
from shared.config import load_settings
from shared.dashboard import inbox
from shared.events import PubSubMessage
from shared.gcs import storage_client
from shared.runstore import RunStore
from shared.sales import to_csv
from shared.trigger import handle
from tests.helpers import run_training, sample, write_csv

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = ROOT / ".state" / "screenshots"
NEW_WEEKS = 6
pytestmark = pytest.mark.slow


def uploaded(cfg, subscriber, subscription: str, name: str, content: bytes, correlation_id: str) -> PubSubMessage:
    """Upload to the test's fake-gcs-server as a publisher would; the genuine notification."""
    blob = storage_client(cfg.project_id).bucket(cfg.data_bucket).blob(f"sales/{name}")
    blob.metadata = {"correlation_id": correlation_id}
    blob.upload_from_string(content, content_type="text/csv")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        response = subscriber.pull(subscription=subscription, max_messages=1, timeout=5)
        for m in response.received_messages:
            subscriber.acknowledge(subscription=subscription, ack_ids=[m.ack_id])
            return PubSubMessage(message_id=m.message.message_id, publish_time=m.message.publish_time,
                                 attributes=dict(m.message.attributes), data=m.message.data, topic="sales-uploads")
    raise AssertionError(f"no notification for {name}")


@pytest.fixture(scope="module")
def site(cloud, mlflow_server, tmp_path_factory):
    """Seeds a project through the real stack, starts the receivers and the dashboard."""
    from google.cloud import pubsub_v1

    project = f"t-{uuid.uuid4().hex[:12]}"
    state = tmp_path_factory.mktemp("dashboard")
    cfg = load_settings("test").model_copy(update={
        "project_id": project, "mlflow_tracking_uri": mlflow_server, "model_name_prefix": f"{project}-",
        "state_dir": str(state)})
    started = []
    with pytest.MonkeyPatch.context() as patch:
        gcs_port = free_port()
        started.append(cloud.start_gcs(project=project, name=f"gcs-{project}", port=gcs_port, backend="memory"))
        patch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{gcs_port}")
        try:
            create_topics(cloud.topology, project)
            subscriber = pubsub_v1.SubscriberClient()
            uploads = subscriber.subscription_path(project, "probe-uploads")
            subscriber.create_subscription(name=uploads, topic=f"projects/{project}/topics/sales-uploads")
            storage_client(project).create_bucket(cfg.data_bucket)

            frame = sample(2, years=3, seed=5)
            isbns = sorted(frame["isbn"].unique())
            cut = frame["week"].max() - timedelta(weeks=NEW_WEEKS)
            run_id, summary = run_training(cfg, [write_csv(frame[frame["week"] <= cut], state)])
            assert summary["status"] == "succeeded", summary
            # New weeks for the first ISBN: decided (on Vertex, dry run) as a refresh, with
            # its served version's error on the weeks it never saw.
            dry = cfg.model_copy(update={"launcher": "vertex"})
            accepted_id = f"upload-{uuid.uuid4().hex[:8]}"
            message = uploaded(cfg, subscriber, uploads, "week-new.csv", to_csv(frame[frame["isbn"] == isbns[0]]),
                               accepted_id)
            assert handle(dry, message).status == "accepted"
            rejected_id = f"upload-{uuid.uuid4().hex[:8]}"
            bad = b"isbn,week,units\n9780306406158,2026-11-16,5\n9780306406157,2026-11-17,-3\n"
            assert handle(dry, uploaded(cfg, subscriber, uploads, "broken.csv", bad, rejected_id)).status == "rejected"

            webhook, smtp = free_port(), free_port()
            started.append(spawn(f"receivers-{project}", [sys.executable, "-m", "emulators.receivers",
                                                          "--webhook-port", str(webhook), "--smtp-port", str(smtp),
                                                          "--inbox", str(inbox.path(cfg))],
                                 webhook, cloud.log_dir, cwd=str(ROOT)))
            wait_healthy(started[-1], http_ok(f"http://127.0.0.1:{webhook}/"), timeout=30)
            alerting_cfg = cfg.model_copy(update={"alerts": cfg.alerts.model_copy(update={
                "slack_webhook_url": SecretStr(f"http://127.0.0.1:{webhook}/services/local"),
                "email_to": ["ops@bookcast.local"], "smtp_host": "127.0.0.1", "smtp_port": smtp})})
            alert = alerting.Alert(f"test:{project}", alerting.WARNING, f"Dashboard test alert {project}",
                                   "sent through shared/alerting to the local receivers", accepted_id)
            assert alerting.send(alerting_cfg, RunStore(cfg), alert)

            port = free_port()
            started.append(cloud.start_function("dashboard", project=project, port=port, extra_env={
                "BOOKCAST_PROFILE": "test", "BOOKCAST_MODEL_NAME_PREFIX": cfg.model_name_prefix,
                "BOOKCAST_STATE_DIR": str(state)}))
            yield {"url": f"http://127.0.0.1:{port}", "cfg": cfg, "isbns": isbns, "run_id": run_id,
                   "accepted": accepted_id, "rejected": rejected_id, "alert": alert}
        finally:
            for proc in reversed(started):
                stop(proc)


@pytest.fixture(scope="module")
def browser(request):
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    if not chromium:
        pytest.fail("Chromium is missing: `make setup` installs it (scripts/install_chromium.sh)")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        # Debian's Chromium, never a browser Playwright would download.
        launched = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield launched
        launched.close()
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter and capture:  # past pytest's capture, so the path shows in the run's output
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"\ndashboard screenshots: {SCREENSHOTS}")


@pytest.fixture
def page(browser, site):
    context = browser.new_context(viewport={"width": 1400, "height": 900}, base_url=site["url"])
    opened = context.new_page()
    failed = []
    opened.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    yield opened
    context.close()
    assert not failed, f"requests that failed: {failed}"


def shot(page, name: str) -> None:
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def rows(page, table: str) -> list[str]:
    return page.locator(f"#{table} tbody tr").all_inner_texts()


def image_loaded(page, selector: str) -> bool:
    return page.eval_on_selector(selector, "img => img.complete && img.naturalWidth > 0")


def test_fleet_shows_every_isbn_filters_sorts_and_links_to_its_page(page, site):
    first, second = site["isbns"]
    page.goto("/")
    shot(page, "fleet")
    assert page.locator("h1").inner_text() == "Fleet: 2 ISBNs"
    listed = page.locator("#fleet tbody tr")
    assert [listed.nth(i).get_attribute("data-isbn") for i in range(2)] and listed.count() == 2
    # The first ISBN's new weeks were decided on Vertex (a dry run): its lease is held.
    assert page.locator(f'#fleet tr[data-isbn="{first}"]').get_attribute("data-state") == "training"
    assert page.locator(f'#fleet tr[data-isbn="{second}"]').get_attribute("data-state") in ("healthy", "baseline")
    assert page.locator('#counts a[data-state="training"] b').inner_text() == "1"

    page.fill("input[name=q]", second[-5:])
    page.click("button[type=submit]")
    assert [r.get_attribute("data-isbn") for r in page.locator("#fleet tbody tr").all()] == [second]
    page.goto("/?state=training")
    assert [r.get_attribute("data-isbn") for r in page.locator("#fleet tbody tr").all()] == [first]
    page.goto("/?state=degraded")
    assert "no ISBN matches" in page.locator("#fleet tbody").inner_text()

    page.goto("/?sort=isbn&order=desc")
    assert [r.get_attribute("data-isbn") for r in page.locator("#fleet tbody tr").all()] == [second, first]
    page.click("#fleet th >> text=ISBN")  # sorted descending: the header turns it ascending
    assert [r.get_attribute("data-isbn") for r in page.locator("#fleet tbody tr").all()] == [first, second]

    page.click(f"#fleet a:text('{second}')")
    assert page.locator("h1").inner_text() == second


def test_isbn_page_shows_forecast_versions_decisions_moves_and_the_rollback_command(page, site):
    isbn = site["isbns"][0]
    page.goto(f"/isbn/{isbn}")
    page.wait_for_load_state("networkidle")
    shot(page, "isbn")
    assert image_loaded(page, "#forecast") and image_loaded(page, "#trend")
    assert "champion" in page.locator("#versions tbody tr").first.inner_text()
    assert "promote" in page.locator("#moves").inner_text() or "baseline" in page.locator("#moves").inner_text()
    decisions = page.locator("#decisions tbody").inner_text()
    assert "refresh" in decisions and f"{NEW_WEEKS} new week(s)" in decisions
    command = page.locator("#rollback-command").inner_text()
    assert "gcloud functions call rollback" in command and f'"isbns": ["{isbn}"]' in command
    assert f'bookcast rollback {isbn} --to previous' in page.locator("#rollback-cli").inner_text()

    page.click("#decisions a:text('upload')")  # the decision's cause: its trace
    assert page.locator("h1").inner_text() == f"Trace of {site['accepted']}"
    steps = page.locator("#trace tbody tr")
    kinds = [steps.nth(i).get_attribute("data-step") for i in range(steps.count())]
    assert kinds[0] == "cause" and "decision" in kinds and "run" in kinds
    times = [steps.nth(i).locator("td").first.inner_text() for i in range(steps.count())]
    assert times == sorted(times), "in time order"
    shot(page, "trace")


def test_runs_and_uploads_link_to_their_results_and_traces(page, site):
    page.goto("/runs")
    shot(page, "runs")
    assert page.locator("#runs tbody tr").count() == 2  # the training run and the queued refresh
    trained = page.locator(f'#runs tr[data-run="{site["run_id"]}"]')
    assert "succeeded" in trained.inner_text() and " s" in trained.locator("td").nth(3).inner_text()
    trained.locator("a").first.click()
    shot(page, "run")
    results = page.locator("#results tbody tr")
    assert sorted(r.get_attribute("data-isbn") for r in results.all()) == site["isbns"]

    page.goto("/uploads")
    shot(page, "uploads")
    rejected = page.locator('#uploads tr[data-status="rejected"]')
    assert "broken.csv" in rejected.inner_text() and "check digit" in rejected.inner_text()
    assert "refresh" in page.locator('#uploads tr[data-status="accepted"]').inner_text()
    rejected.locator(f"a:text('{site['rejected']}')").click()
    assert "rejected" in page.locator("#trace").inner_text()


def test_alerts_page_shows_alert_state_and_what_the_local_receivers_got(page, site):
    page.goto("/alerts")
    shot(page, "alerts")
    title = site["alert"].title
    assert title in page.locator("#alerts").inner_text()
    received = page.locator("#received tbody")
    assert title in received.locator('tr[data-channel="slack"]').inner_text()
    assert title in received.locator('tr[data-channel="email"]').inner_text()
    assert "ops@bookcast.local" in received.inner_text()


def test_drift_page_shows_the_error_on_unseen_weeks(page, site):
    page.goto("/drift")
    page.wait_for_load_state("networkidle")
    shot(page, "drift")
    assert image_loaded(page, "#drift-chart")
    measured = page.locator(f'#drift tr[data-isbn="{site["isbns"][0]}"]')
    assert measured.locator("td").nth(3).inner_text() == str(NEW_WEEKS)
    assert float(measured.locator("td").nth(6).inner_text()) > 0
