"""An upload through the GCS emulator, with nothing else done, ends in decisions, a run and
new champions; identical data trains nothing; a changed ISBN retrains alone."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from shared import model_store
from shared.runstore import RunStore
from tests.helpers import sample
from tests.test_trigger import upload

pytestmark = pytest.mark.usefixtures("mlflow_server")


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def finished_runs(store: RunStore, count: int):
    runs = [r for r in store.runs() if r["status"] in ("succeeded", "failed", "quarantined")]
    return runs if len(runs) >= count else None


def test_uploads_drive_decisions_runs_and_champions(cfg, probe, trigger_function):
    store = RunStore(cfg)
    frame = sample(2, years=2, seed=41)
    isbns = sorted(frame["isbn"].unique())

    upload(cfg, "2026-w47.csv", frame)
    (run,) = wait_for(lambda: finished_runs(store, 1), 240, "the first training run")
    assert run["status"] == "succeeded", run.get("error")
    assert run["isbns"] == isbns and run["cause"]["kind"] == "upload"
    assert run["correlation_id"] == "cid-2026-w47.csv"
    champions = {i: model_store.resolve(cfg, i) for i in isbns}
    assert all(champions.values())
    assert {d["isbn"]: d["reasons"] for d in store.decisions()} == {i: ["no model yet"] for i in isbns}

    upload(cfg, "2026-w47-resent.csv", frame)  # same data, another file
    skips = wait_for(lambda: [d for d in store.decisions() if d["cause"]["object"].endswith("resent.csv")] or None,
                     30, "decisions on the identical upload")
    assert {d["action"] for d in skips} == {"skip"}
    assert all("unchanged and healthy" in d["reasons"][0] for d in skips)
    assert len(store.runs()) == 1

    changed_isbn = isbns[0]
    changed = frame[frame["isbn"] == changed_isbn].copy()
    changed.loc[changed.index[-1], "units"] += 25  # a late correction of the newest week
    upload(cfg, "2026-w47-correction.csv", changed)
    second = wait_for(lambda: [r for r in store.runs() if r["run_id"] != run["run_id"]
                               and r["status"] in ("succeeded", "failed", "quarantined")] or None, 240,
                      "the correction's training run")[0]
    assert second["isbns"] == [changed_isbn]
    reasons = store.run(second["run_id"])["decisions"][changed_isbn]  # per-ISBN maps live in the run's parts
    assert reasons == [f"history revised since v{champions[changed_isbn].version} "
                       f"(its data up to {changed['week'].max()} changed)"]
    assert model_store.resolve(cfg, isbns[1]).version == champions[isbns[1]].version

    # What an operator sees with the CLI.
    env = {**os.environ, "BOOKCAST_PROJECT_ID": cfg.project_id}
    runs = subprocess.run([sys.executable, "-m", "shared.cli", "runs"], capture_output=True, text=True, env=env)
    assert run["run_id"] in runs.stdout and second["run_id"] in runs.stdout and "succeeded" in runs.stdout
    uploads = subprocess.run([sys.executable, "-m", "shared.cli", "uploads"], capture_output=True, text=True, env=env)
    assert "sales/2026-w47-resent.csv" in uploads.stdout and "2 skip" in uploads.stdout
    decisions = subprocess.run([sys.executable, "-m", "shared.cli", "decisions", "--isbn", changed_isbn],
                               capture_output=True, text=True, env=env)
    assert "history revised" in decisions.stdout and "no model yet" in decisions.stdout
    trace = subprocess.run([sys.executable, "-m", "shared.cli", "trace", "cid-2026-w47.csv"], capture_output=True,
                           text=True, env=env)
    steps = [line.split("│")[2].strip() for line in trace.stdout.splitlines() if line.count("│") >= 3]
    assert steps[0] == "cause" and {"decision", "run", "alias"} <= set(steps)
    assert f"{run['run_id']} succeeded" in trace.stdout
