"""How fast the dashboard's fleet page answers for a catalogue: N ISBNs registered in a real
MLflow (each with a champion version and its tags, some with a newer quarantined version),
their champion index entries, series, a few live leases and degradation measurements in
the Firestore emulator; the dashboard served as `make up` serves it (the `dashboard`
function under functions-framework). Prints the fleet page's load time beside its target.

    .venv/bin/python -m bench.dashboard [--isbns 500] [--requests 20]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime, timedelta, timezone

import requests
from rich.console import Console
from rich.table import Table

from bench.common import bench_settings, private_stack, stop_stack
from shared.logs import configure
from shared.layout import Collection
from shared.version_tags import Gate, Tag, VersionKind, contract, flag, metric_tags

TARGET_MS = 300
HORIZON = 104
DATA_END = date(2026, 11, 16)


def isbn_of(n: int) -> str:
    """A valid ISBN-13 (978 prefix, check digit computed)."""
    body = f"978{n:09d}"
    check = (10 - sum(int(d) * (1 if i % 2 == 0 else 3) for i, d in enumerate(body)) % 10) % 10
    return body + str(check)


def version_tags(n: int, isbn: str) -> dict[str, str]:
    family = ("combination", "arima", "ets", "theta", "tsb")[n % 5]
    metrics = {"mase": 0.4 + (n % 17) / 20, "wape": 0.2 + (n % 13) / 40, "relative_mae": 0.5 + (n % 11) / 20,
               "mae": 10 + n % 30, "rmse": 14 + n % 40}
    return {**contract(VersionKind.CANDIDATE, family=family, spec=None, baseline=n % 23 == 0, gate=Gate.PASSED,
                       isbn=isbn, fitted_at=(datetime.now(timezone.utc) - timedelta(days=n % 120)).isoformat(),
                       data_hash=f"{n:064x}", train_window_start="2023-11-27", train_window_end="2026-05-18",
                       holdout_weeks="26", pipeline_run_id="run-bench", correlation_id="bench"),
            **metric_tags(metrics)}


def serving_forecast(n: int) -> dict:
    """The shape of a serving artifact (shared/training/per_isbn.serving_forecast)."""
    return {"start": (DATA_END + timedelta(weeks=1)).isoformat(), "data_end": DATA_END.isoformat(),
            "mean": [round(50 + (w * 7 + n) % 40 + 0.123, 3) for w in range(HORIZON)],
            "se": [round(0.2 + w / 500, 4) for w in range(HORIZON)], "transform": "log1p",
            "interval_scale": [[0.5, 0.7], [0.8, 1.3], [0.9, 1.7], [0.95, 2.0]], "label": "bench model"}


def seed(cfg, store, isbns: list[str], quarantined: int, degraded: int, leased: int) -> None:
    from mlflow import MlflowClient

    from shared import model_store
    from shared.runstore import expires

    mlflow = MlflowClient(tracking_uri=cfg.mlflow_tracking_uri, registry_uri=cfg.mlflow_tracking_uri)
    run_id = mlflow.create_run(mlflow.create_experiment("bench-dashboard")).info.run_id
    source = f"runs:/{run_id}/model"  # every version points at one run: the page reads tags, not models

    def register(item: tuple[int, str]) -> None:
        n, isbn = item
        name = cfg.model_name(isbn)
        mlflow.create_registered_model(name)
        tags = version_tags(n, isbn)
        version = mlflow.create_model_version(name, source, run_id=run_id, tags=tags)
        mlflow.set_registered_model_alias(name, cfg.serving.alias, version.version)
        if n < quarantined:
            mlflow.create_model_version(name, source, run_id=run_id,
                                        tags={**tags, Tag.QUARANTINED: flag(True), Tag.GATE: Gate.FAILED})
        target = model_store.AliasTarget(isbn=isbn, model_name=name, alias=cfg.serving.alias,
                                         version=str(version.version), run_id=run_id,
                                         created_at=datetime.now(timezone.utc), tags=tags)
        store.record_champion(isbn, model_store.index_entry(target, serving_forecast(n)))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(register, enumerate(isbns)))
    weeks = {(DATA_END - timedelta(weeks=w)).isoformat(): 40 + w % 9 for w in range(156)}
    for start in range(0, len(isbns), 200):
        batch = store.db.batch()
        for isbn in isbns[start:start + 200]:
            batch.set(store.col(Collection.SERIES).document(isbn), {"isbn": isbn, "weeks": weeks, "sources": ["bench.csv"],
                                                            "data_hash": "bench"})
        batch.commit()
    for isbn in isbns[:leased]:
        store.col(Collection.LEASES).document(isbn).set({"isbn": isbn, "run_id": "run-bench", "expires_at": expires(1800)})
    for isbn in isbns[-degraded:]:
        store.record_decision(isbn, "train", ["degraded"], {"champion_version": "1", "degradation": {
            "unseen_weeks": 6, "unseen_abs_error": 120.0, "new_weeks_scored": 6, "unseen_mae": 20.0,
            "holdout_mae": 12.0, "ratio": 1.667}}, {"kind": "upload", "key": "bench-upload"}, "bench")


def timed(url: str, count: int) -> list[float]:
    session = requests.Session()
    times = []
    for _ in range(count):
        started = time.perf_counter()
        response = session.get(url, timeout=30)
        response.raise_for_status()
        times.append((time.perf_counter() - started) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--isbns", type=int, default=500)
    parser.add_argument("--requests", type=int, default=20)
    args = parser.parse_args()
    configure("WARNING")
    console = Console(width=140)
    stack = private_stack()
    started = []
    try:
        for start in (stack.start_pubsub, stack.start_firestore, stack.start_mlflow):
            started.append(start())
        cfg = bench_settings(stack)
        from shared.runstore import RunStore

        store = RunStore(cfg)
        isbns = [isbn_of(n) for n in range(args.isbns)]
        began = time.monotonic()
        seed(cfg, store, isbns, quarantined=args.isbns // 20, degraded=args.isbns // 25, leased=args.isbns // 50)
        console.print(f"seeded {args.isbns} ISBNs in {time.monotonic() - began:.0f} s")
        started.append(stack.start_function("dashboard", extra_env={"BOOKCAST_PROFILE": "test"}))
        base = stack.function_url("dashboard")
        page = requests.get(base + "/", timeout=60)
        assert page.ok and page.text.count('<tr data-isbn="') == args.isbns, "the fleet page lists every ISBN"
        table = Table(title=f"dashboard pages, {args.isbns} ISBNs, {args.requests} requests each after one warm-up")
        for column in ("page", "first (ms)", "median (ms)", "p90 (ms)", "target"):
            table.add_column(column, justify="right" if column != "page" else "left")
        for label, path, target in (("fleet", "/", f"< {TARGET_MS} ms"),
                                    ("fleet, filtered (state=degraded)", "/?state=degraded&sort=wape&order=desc", ""),
                                    ("one ISBN (registry reads)", f"/isbn/{isbns[0]}", ""),
                                    ("runs", "/runs", ""), ("alerts", "/alerts", ""), ("drift", "/drift", "")):
            first = timed(base + path, 1)[0]
            times = sorted(timed(base + path, args.requests))
            median = statistics.median(times)
            verdict = "" if not target else (" [green]met[/]" if median < TARGET_MS else " [red]missed[/]")
            table.add_row(label, f"{first:.0f}", f"{median:.0f}", f"{times[int(0.9 * (len(times) - 1))]:.0f}",
                          target + verdict)
        console.print(table)
        console.print("load average during the run (2 cores shared): " + " / ".join(f"{v:.1f}" for v in os.getloadavg()))
    finally:
        stop_stack(stack, started)


if __name__ == "__main__":
    main()
