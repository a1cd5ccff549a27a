"""`make demo`: bring the local cloud up, upload the shipped sample through the GCS
emulator, and follow that one upload (by its correlation id) through every function and
the training job, then ask the forecast function about the result."""
from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import requests
from rich.console import Console
from rich.table import Table

from emulators.stack import ROOT, Stack
from shared.layout import Collection
from shared.states import TERMINAL_RUN, CauseStatus

SAMPLE = ROOT / "data" / "sample_sales.csv"


class LogFollower:
    """Prints the JSON log entries of one correlation id as they appear in any component."""

    def __init__(self, log_dir: Path, correlation_id: str, console: Console):
        self.log_dir, self.correlation_id, self.console = log_dir, correlation_id, console
        self.offsets: dict[Path, int] = {p: p.stat().st_size for p in log_dir.glob("*.log")}

    def poll(self) -> None:
        entries = []
        for path in sorted(self.log_dir.glob("*.log")):
            offset = self.offsets.get(path, 0)
            with open(path, "rb") as log:
                log.seek(offset)
                chunk = log.read()
            complete = chunk[: chunk.rfind(b"\n") + 1]
            self.offsets[path] = offset + len(complete)
            for line in complete.decode(errors="replace").splitlines():
                if not line.startswith("{"):
                    continue
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if entry.get("correlation_id") == self.correlation_id and entry.get("severity") != "DEBUG":
                    entries.append((entry["time"], path.stem.removeprefix("function-"), entry))
        for at, component, entry in sorted(entries, key=lambda e: e[0]):
            colour = {"WARNING": "yellow", "ERROR": "red"}.get(entry["severity"], "cyan")
            self.console.print(f"[dim]{at[11:23]}[/] [{colour}]{component:>17}[/] {entry['message']}", highlight=False)


def upload(stack: Stack, name: str, correlation_id: str) -> None:
    from shared.gcs import storage_client

    blob = storage_client(stack.project).bucket("bookcast-uploads").blob(f"sales/{name}")
    blob.metadata = {"correlation_id": correlation_id}
    blob.upload_from_filename(str(SAMPLE), content_type="text/csv")


class NoDecision(RuntimeError):
    pass


def wait_for_run(store, correlation_id: str, follower: LogFollower, timeout: float = 900,
                 decision_timeout: float = 60) -> dict | None:
    started = time.monotonic()
    deadline = started + timeout
    while time.monotonic() < deadline:
        follower.poll()
        recorded = store.by_correlation(correlation_id)
        if not recorded[Collection.CAUSES] and time.monotonic() - started > decision_timeout:
            raise NoDecision(f"no decision was recorded for {correlation_id} within {decision_timeout:.0f} s")
        if any(c["status"] == CauseStatus.REJECTED or c.get("run_id") is None for c in recorded[Collection.CAUSES]):
            time.sleep(1.0)
            follower.poll()
            return None  # decided, and nothing to train (or rejected)
        runs = recorded[Collection.RUNS]
        if runs and all(r["status"] in TERMINAL_RUN for r in runs):
            time.sleep(1.0)
            follower.poll()
            return runs[0]
        time.sleep(0.5)
    return None


def run_demo(stack: Stack, console: Console) -> int:
    if not any(alive for _, alive in stack.status().values()):
        console.rule("starting the local cloud")
        stack.up(on_step=lambda m: console.print(f"[cyan]»[/] {m}"))
    os.environ.update(stack.client_env())
    from shared.cli import _results_table
    from shared.config import load_settings
    from shared.runstore import RunStore

    cfg = load_settings()
    store = RunStore(cfg)
    correlation_id = f"demo-{uuid.uuid4().hex[:8]}"
    follower = LogFollower(stack.log_dir, correlation_id, console)
    console.rule(f"uploading {SAMPLE.name} to gs://bookcast-uploads/sales/ (correlation id {correlation_id})")
    upload(stack, f"demo-{correlation_id}.csv", correlation_id)
    try:
        run = wait_for_run(store, correlation_id, follower)
    except NoDecision as error:
        console.print(f"[red]{error}[/]: see `make logs` (trigger-training)")
        return 1
    if run is None:
        decisions = [d for d in store.decisions() if d["correlation_id"] == correlation_id]
        if decisions:
            console.print("no training needed: " + "; ".join(sorted({r for d in decisions for r in d["reasons"]})))
        else:
            console.print(f"[red]no run for {correlation_id}: see `make logs`[/]")
            return 1
    else:
        console.rule(f"run {run['run_id']}: {run['status']}")
        _results_table(list(store.run(run["run_id"])["results"].values()))  # gathered from the run's shards

    console.rule("the same file again: nothing changed, so nothing should train")
    again = f"{correlation_id}-again"
    follower = LogFollower(stack.log_dir, again, console)
    upload(stack, f"demo-{again}.csv", again)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not [d for d in store.decisions() if d["correlation_id"] == again]:
        follower.poll()
        time.sleep(0.5)
    time.sleep(1)
    follower.poll()

    console.rule("forecast function")
    isbns = sorted(store.all_series())[:3]
    url = f"http://127.0.0.1:{stack.ports.functions['forecast']}"
    response = requests.post(url, json={"isbns": isbns, "horizon": 8}, timeout=30)
    if response.ok:
        table = Table(title=f"POST {url} {{isbns: {len(isbns)}, horizon: 8}}: mean (95% interval)")
        forecasts = response.json()["forecasts"]
        for column in ("isbn", "v", "model"):
            table.add_column(column, no_wrap=True)
        for row in forecasts[0]["forecast"][:4]:
            table.add_column(row["week"], justify="right")
        for answer in forecasts:
            table.add_row(answer["isbn"], answer["version"], answer["model"],
                          *[f"{r['mean']:.0f} ({r['lower']:.0f}–{r['upper']:.0f})" for r in answer["forecast"][:4]])
        console.print(table)
        png = stack.state_dir / "demo-forecast.png"
        png.write_bytes(requests.get(url, params={"isbn": isbns[0], "format": "png"}, timeout=30).content)
        console.print(f"plot: {png}")
    else:
        console.print(f"[red]forecast answered {response.status_code}: {response.text}[/]")
    console.rule("look inside")
    console.print(f"dashboard       {stack.function_url('dashboard')}   (fleet, runs, uploads, alerts, traces)\n"
                  f"MLflow UI       http://127.0.0.1:{stack.ports.mlflow}\n"
                  f"runs/decisions  eval \"$(make -s env)\"; .venv/bin/bookcast runs; .venv/bin/bookcast decisions\n"
                  f"logs            make logs   (or {stack.log_dir})\n"
                  f"stop            make down")
    return 0
