"""Replays a realistic upload sequence through the real local cloud and prints how many
trainings the decision policy skipped, whether it missed any change, and how long an
upload takes to become a recorded decision.

The sequence: a catalogue of N ISBNs uploaded in full, then R weekly full re-exports in
which only some books have new weeks (reports arrive in staggered monthly batches), one past
week is corrected, and every third export is sent twice. Training itself is replaced by
registering each decided ISBN's seasonal-naive baseline with the data hash it was decided
on (the Vertex launcher runs in dry-run mode), so the benchmark measures decisions, not
model fitting.

    .venv/bin/python -m bench.decisions [--isbns 30] [--rounds 8]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import timedelta

import numpy as np
from rich.console import Console
from rich.table import Table

from shared.logs import configure

from bench.common import trigger_stack
from shared.sales import series_hash, to_csv, weeks_of
from shared.sample_data import generate
from shared.layout import Collection
from shared.states import RunStatus
from shared.version_tags import Tag, VersionKind


def complete_runs(cfg, store, trained_hashes: dict[str, str]) -> None:
    """Stand in for the training job: register a baseline per leased ISBN, end the run."""
    from shared import registry
    from shared.lifecycle import leases
    from shared.forecasting import models
    from shared.forecasting.models import ModelSpec
    from shared.training.per_isbn import serving_forecast

    for run in store.runs(status=RunStatus.QUEUED):
        for isbn in run["isbns"]:
            series = store.series(isbn)
            weeks = sorted(series["weeks"])
            y = np.array([series["weeks"][w] for w in weeks], float)
            from datetime import date

            fitted = models.fit(y, date.fromisoformat(weeks[0]), ModelSpec(kind="seasonal_naive")).to_dict()
            version = registry.register(cfg, isbn, fitted, serving_forecast(fitted), params={"kind": "seasonal_naive"},
                                        metrics={"mae": float(np.abs(np.diff(y[-60:])).mean() or 1.0)},
                                        tags={Tag.DATA_HASH: series["data_hash"], Tag.TRAIN_WINDOW_END: weeks[-1],
                                              Tag.KIND: VersionKind.BASELINE, Tag.PIPELINE_RUN_ID: run["run_id"]})
            registry.move_alias(cfg, store, isbn, version.version, "promote", "bench", "bench", run["correlation_id"],
                                publish=False)
            trained_hashes[isbn] = series["data_hash"]
        store.update_run(run["run_id"], status=RunStatus.SUCCEEDED)
        leases.release_all(store, run["run_id"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--isbns", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    configure("WARNING")
    console = Console(width=140)
    with trigger_stack(vertex_dry_run=True) as (stack, cfg):
        project = stack.project
        from shared.gcs import storage_client
        from shared.runstore import RunStore

        store = RunStore(cfg)
        bucket = storage_client(project).bucket(cfg.data_bucket)
        full = generate(args.isbns, 2 + args.rounds / 52, seed=99)
        isbns = sorted(full["isbn"].unique())
        last_week = full["week"].max()
        rounds = []
        cutoff = {isbn: last_week - timedelta(weeks=args.rounds) for isbn in isbns}
        for r in range(args.rounds + 1):
            if r > 0:
                # A quarter of the catalogue reports each week, in monthly batches.
                for i, isbn in enumerate(isbns):
                    if i % 4 == r % 4:
                        cutoff[isbn] = last_week - timedelta(weeks=args.rounds - r)
            visible = full[[w <= cutoff[i] for i, w in zip(full["isbn"], full["week"])]].copy()
            if r > 0 and r % 2 == 0:
                row = visible.index[r * 7 % len(visible)]
                visible.loc[row, "units"] += 3  # a late correction of one past week
            rounds.append(visible)
            if r > 0 and r % 3 == 0:
                rounds.append(visible)  # the same export sent twice

        trained_hashes: dict[str, str] = {}
        latencies, decisions_total, trained_total, missed = [], 0, 0, 0
        for n, frame in enumerate(rounds):
            correlation_id = f"bench-{n}"
            blob = bucket.blob(f"sales/export-{n:02d}.csv")
            blob.metadata = {"correlation_id": correlation_id}
            expected_changed = {i for i, rows in frame.groupby("isbn")
                                if trained_hashes.get(i) != series_hash(weeks_of(rows))}
            t0 = time.perf_counter()
            blob.upload_from_string(to_csv(frame), content_type="text/csv")
            while True:
                cause = [d for d in store.stream(Collection.CAUSES) if d.get("correlation_id") == correlation_id]
                if cause:
                    break
                time.sleep(0.02)
            latencies.append(time.perf_counter() - t0)
            decided = [d for d in store.decisions(limit=1000) if d["correlation_id"] == correlation_id]
            trained = {d["isbn"] for d in decided if d["action"] == "train"}
            missed += len(expected_changed - trained)
            decisions_total += len(decided)
            trained_total += len(trained)
            console.print(f"upload {n:2d}: {len(decided)} decisions, {len(trained):2d} train, "
                          f"{len(expected_changed):2d} changed, {latencies[-1] * 1000:.0f} ms to decision", highlight=False)
            complete_runs(cfg, store, trained_hashes)

        table = Table(title=f"decision benchmark: {args.isbns} ISBNs, {len(rounds)} uploads")
        for column in ("ISBN decisions", "trainings", "skipped", "missed changes", "upload→decision p50", "max"):
            table.add_column(column, justify="right")
        table.add_row(str(decisions_total), str(trained_total), f"{1 - trained_total / decisions_total:.0%}", str(missed),
                      f"{statistics.median(latencies) * 1000:.0f} ms", f"{max(latencies) * 1000:.0f} ms")
        console.print(table)
        console.print(json.dumps({"skipped_share": round(1 - trained_total / decisions_total, 3), "missed": missed,
                                  "latency_p50_ms": round(statistics.median(latencies) * 1000),
                                  "latency_max_ms": round(max(latencies) * 1000)}))


if __name__ == "__main__":
    main()
