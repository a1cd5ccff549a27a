"""Serving benchmark: 100 concurrent clients against the forecast function (run by
functions-framework as deployed: gunicorn, 1 worker, threads) and, in the same run, against
`mlflow models serve` on the same registered model. Also cold start: process start to
first health answer and to first forecast.

    .venv/bin/python -m bench.forecast [--clients 100] [--seconds 10]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import requests
from rich.console import Console
from rich.table import Table

from shared.logs import configure

from emulators.processes import free_port, http_ok, spawn, wait_healthy
from bench.common import bench_settings, private_stack, stop_stack
from emulators.stack import BIN
from shared.version_tags import Tag, VersionKind


async def load(url: str, method: str, payload: dict | None, params: dict | None, clients: int, seconds: float):
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        async def one_client(deadline: float) -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                try:
                    response = await client.request(method, url, json=payload, params=params)
                    ok = response.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors += 1

        await asyncio.gather(*(one_client(time.perf_counter() + 1.0) for _ in range(clients)))  # warm-up
        latencies.clear()
        started = time.perf_counter()
        await asyncio.gather(*(one_client(started + seconds) for _ in range(clients)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {"requests": len(latencies), "errors": errors, "rps": len(latencies) / elapsed,
            "p50": statistics.median(latencies) * 1000, "p99": latencies[int(len(latencies) * 0.99) - 1] * 1000}


def train_one_model(cfg) -> str:
    from shared import registry
    from shared.sample_data import generate
    from shared.training.per_isbn import serving_forecast, train_isbn

    frame = generate(1, 3, seed=5)
    isbn = frame["isbn"].iloc[0]
    candidate = train_isbn(isbn, list(frame["week"]), list(frame["units"].astype(float)), cfg.training)
    version = registry.register(cfg, isbn, candidate.model, serving_forecast(candidate.model), params=candidate.spec,
                                metrics=candidate.metrics, tags={Tag.KIND: VersionKind.CANDIDATE})
    registry.client(cfg).set_registered_model_alias(cfg.model_name(isbn), cfg.serving.alias, version.version)
    return isbn


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    configure("WARNING")
    console = Console(width=140)
    stack = private_stack()
    state = stack.state_dir
    started = [stack.start_mlflow()]
    try:
        cfg = bench_settings(stack)
        isbn = train_one_model(cfg)

        port = free_port()
        t0 = time.perf_counter()
        function = stack.start_function("forecast", port=port)
        started.append(function)
        health_s = time.perf_counter() - t0
        url = f"http://127.0.0.1:{port}/"
        t1 = time.perf_counter()
        first = requests.get(url, params={"isbn": isbn, "horizon": 26}, timeout=30)
        first_forecast_s = health_s + (time.perf_counter() - t1)
        assert first.ok, first.text
        imports = subprocess.run([sys.executable, "-c", "import time; t=time.perf_counter(); "
                                  "import functions.forecast.main; print(time.perf_counter()-t)"],
                                 capture_output=True, text=True, cwd=str(Path(__file__).parent.parent),
                                 env={**os.environ, **stack.client_env()})
        import_s = float(imports.stdout.strip().splitlines()[-1]) if imports.returncode == 0 else float("nan")

        serve_port = free_port()
        serve = spawn("mlflow-serve", [str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{cfg.model_name(isbn)}@champion",
                                       "-p", str(serve_port), "-h", "127.0.0.1", "--env-manager", "local"],
                      serve_port, state / "logs", env={**stack.client_env(), "PATH": f"{BIN}:{os.environ['PATH']}"})
        started.append(serve)
        wait_healthy(serve, http_ok(f"http://127.0.0.1:{serve_port}/ping"), timeout=180)

        table = Table(title=f"serving benchmark: {args.seconds:g} s per row, 26-week forecast with 95% interval, "
                            f"{os.cpu_count()} cores shared with the load generator")
        for column in ("server", "clients", "requests/s", "p50 ms", "p99 ms", "requests", "errors"):
            table.add_column(column, justify="right")
        speedups = []
        for clients in sorted({args.clients, 10}):
            ours = asyncio.run(load(url, "GET", None, {"isbn": isbn, "horizon": 26}, clients, args.seconds))
            theirs = asyncio.run(load(f"http://127.0.0.1:{serve_port}/invocations", "POST",
                                      {"dataframe_records": [{"horizon": 26, "interval": 0.95}]}, None, clients,
                                      args.seconds))
            for name, r in (("forecast function (functions-framework)", ours), ("mlflow models serve", theirs)):
                table.add_row(name, str(clients), f"{r['rps']:.0f}", f"{r['p50']:.1f}", f"{r['p99']:.1f}",
                              str(r["requests"]), str(r["errors"]))
            speedups.append(f"{clients} clients: {theirs['p50'] / ours['p50']:.1f}x")
            table.add_section()
        console.print(table)
        console.print(f"p50 speed-up over mlflow models serve: {', '.join(speedups)}")
        console.print(f"cold start: imports {import_s:.2f} s; process start to healthy {health_s:.2f} s; "
                      f"to first forecast {first_forecast_s:.2f} s")
    finally:
        stop_stack(stack, started)


if __name__ == "__main__":
    main()
