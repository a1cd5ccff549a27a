"""The cloud deploy builds from the same topology as the local cloud."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from deploy.__main__ import ROOT, commands
from emulators.processes import free_port, http_ok, spawn, stop, wait_healthy
from shared.topology import load


def test_deploy_creates_the_topology_the_emulators_build(tmp_path):
    topology = load()
    lines = commands(topology, "bookcast-prod", "europe-west1", tmp_path, "https://mlflow.example")
    text = [" ".join(c) for c in lines]
    for topic in topology.topics:
        assert any(f"pubsub topics create {topic.name}" in t for t in text)
    for sub in topology.subscriptions:
        (line,) = [c for c in lines if c[3:6] == ["subscriptions", "create", sub.name]]
        if sub.function:
            assert (f"--push-endpoint=https://europe-west1-bookcast-prod.cloudfunctions.net/{sub.function}"
                    f"/projects/bookcast-prod/topics/{sub.topic}") in line
        else:
            assert not any(arg.startswith("--push-endpoint") for arg in line)
        assert any(arg.startswith("--dead-letter-topic=") for arg in line) == sub.dead_letter
        assert "--min-retry-delay=10s" in line
    # Every pushed message ends somewhere that does not push it again: a dead letter the
    # monitor fails on is parked in a pull subscription, not redelivered forever.
    pushed = {s.topic: s for s in topology.subscriptions if s.function}
    parked = [s for s in topology.subscriptions if not s.function]
    assert all(s.dead_letter_to(topology.defaults) for s in pushed.values())
    assert pushed["dead-letters"].dead_letter_to(topology.defaults) in {s.topic for s in parked}
    deploys = [c for c in lines if c[2:4] == ["functions", "deploy"]]
    assert sorted(c[4] for c in deploys) == sorted(f.name for f in topology.functions)
    for fn in topology.functions:
        staged = tmp_path / fn.source.split("/")[-1]
        assert (staged / "main.py").exists() and (staged / "shared" / "serving.py").exists()
        pinned = {line.split("==")[0]: line for line in (staged / "requirements.txt").read_text().splitlines()
                  if "==" in line}
        locked = {line.split("==")[0]: line for line in (ROOT / "requirements.lock").read_text().splitlines()
                  if "==" in line}
        assert "functions-framework" in pinned and all(locked[name] == line for name, line in pinned.items())
    forecast = next(c for c in deploys if c[4] == "forecast")
    assert "--concurrency=80" in forecast and "--cpu=1" in forecast
    image = "europe-west1-docker.pkg.dev/bookcast-prod/bookcast/trainer:latest"
    assert any(c[2:4] == ["builds", "submit"] and f"--tag={image}" in c for c in lines)
    assert all(f"BOOKCAST_VERTEX__IMAGE={image}" in " ".join(c) for c in deploys)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    assert all(f"BOOKCAST_CODE_VERSION={head}" in " ".join(c) for c in deploys)  # functions have no git
    weekly = next(c for c in lines if "weekly-retrain" in c)
    assert "--schedule=0 5 * * 1" in weekly and "--topic=retrain-ticks" in weekly
    assert any("--field-config=field-path=status,order=ascending" in t for t in text)
    assert any("notifications create gs://bookcast-prod-bookcast-uploads" in t and "--object-prefix=sales/" in t
               for t in text)


LAZY_IMPORTS = {  # what each function imports while handling requests, beyond main.py's imports
    "trigger_training": "shared.trigger, shared.launch, shared.training.flow, google.cloud.aiplatform_v1.types",
    "monitor": "shared.monitoring, shared.alerting, shared.trigger, shared.launch",
    "forecast": "shared.serving, shared.plots, matplotlib.pyplot",
    "rollback": "shared.rollback, shared.registry, mlflow",
}


@pytest.fixture(scope="module")
def staged(tmp_path_factory) -> Path:
    build = tmp_path_factory.mktemp("deploy")
    commands(load(), "bookcast-prod", "europe-west1", build, "https://mlflow.example")
    return build


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
