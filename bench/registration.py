"""Registration at catalogue speed: gate, register (run, params, metrics, study, plot,
serving artifact, fitted model, pyfunc model, version with tags), promote (alias, Firestore
alias history, model-changes event) for 50 and 500 ISBN versions, on the same registration
threads as a training run, against a private MLflow server, Firestore and Pub/Sub.

    .venv/bin/python -m bench.registration [--sizes 50 500]
"""
from __future__ import annotations

import argparse
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import date

from rich.console import Console
from rich.table import Table

from bench.common import bench_settings, private_stack, stop_stack


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 500])
    args = parser.parse_args()
    from emulators.wiring import create_topics
    from shared.logs import configure
    from shared.sample_data import generate
    from shared.jobs import training_job
    from shared.training.flow import REGISTRATION_THREADS, gate_and_register, bind_job
    from shared.training.per_isbn import train_isbn

    configure("WARNING")
    console = Console(width=120)
    stack = private_stack()
    procs = [stack.start_pubsub(), stack.start_firestore(), stack.start_mlflow()]
    try:
        cfg = bench_settings(stack)
        create_topics(stack.topology, cfg.project_id)
        frame = generate(1, 3, end=date(2026, 11, 23), seed=3)
        candidate = train_isbn("9780306406157", list(frame["week"]), list(frame["units"].astype(float)), cfg.training)
        info = {"data_hash": "0" * 64, "sources": ["gs://bench/sales/x.csv"]}
        table = Table(title=f"registration: gate, register, promote ({REGISTRATION_THREADS} threads, MLflow with one worker)")
        for column in ("versions", "seconds", "s / version", "target"):
            table.add_column(column, justify="right")
        for size in args.sizes:
            cfg = cfg.model_copy(update={"model_name_prefix": f"bench-{uuid.uuid4().hex[:6]}-"})
            context = bind_job(training_job(cfg, f"bench-{size}", {}, [], f"bench-{size}", {}, cfg.launcher))
            candidates = [replace(candidate, isbn=f"979{i:010d}") for i in range(size)]
            started = time.perf_counter()
            with ThreadPoolExecutor(REGISTRATION_THREADS) as pool:
                results = list(pool.map(lambda c: gate_and_register(context, c, info), candidates))
            seconds = time.perf_counter() - started
            assert all(r.version for r in results), results[:3]
            table.add_row(str(size), f"{seconds:.1f}", f"{seconds / size:.3f}", "≤ 0.5")
            console.print(f"{size} versions: {seconds:.1f} s", highlight=False)
        console.print(table)
    finally:
        stop_stack(stack, procs)


if __name__ == "__main__":
    main()
