"""Real weekly sales through the bucket, as a publisher would send them: every series of
bench/real_series.py but its last 26 weeks uploaded as one CSV to a private local cloud's
bucket (genuine GCS notification, trigger-training, local shard workers, MLflow), then each
ISBN's 26-week forecast asked of the forecast function and scored on the hidden weeks.

It checks what issue 17 promised a user: for every ISBN, what serves is at least as good on
the backtests as anything trained for it (the candidate, or a fallback with a lower backtest
error when the candidate was refused), read from the registry's own tags; and what the
forecast function serves scores as `bench.real_accuracy` says it does (that benchmark
calls the trainer directly; its last per-series results are compared when present).

    .venv/bin/python -m bench.real_upload [--set design|held-out|all] [--limit N]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import requests
from rich.console import Console
from rich.table import Table

from bench.common import trigger_stack, wait_accepted
from bench.real_accuracy import LEVELS, SERVED, TEST_WEEKS, score, statsforecast_one
from bench.real_series import CACHE, FIRST_BENCHMARK, Series, as_upload, load
from shared.version_tags import VersionKind

CORRELATION_ID = "bench-real-upload"
BATCH = 50  # the forecast function's limit per request (ServingSettings.max_isbns_per_request)
TOLERANCE = 1e-5  # metric tags keep six significant digits


def within_upload_limit(series: Series, console: Console) -> Series:
    """The series in the units an upload accepts: the US avocado market sells millions a
    week, above the plausibility limit for one title (shared/sales.py MAX_UNITS), so it goes
    up in hundreds or thousands (MASE and coverage do not depend on the unit)."""
    from shared.sales import MAX_UNITS

    factor = 1
    while series.units.max() / factor > MAX_UNITS:
        factor *= 10
    if factor == 1:
        return series
    console.print(f"  {series.name}: uploaded in units of {factor:,} (it peaks at {series.units.max():,.0f} a week)",
                  highlight=False)
    return Series(series.name, series.source, series.start, np.round(series.units / factor),
                  series.first_benchmarked)


def wait_for_run(console: Console, store, run_id: str, isbns: int) -> dict:
    from shared.states import TERMINAL_RUN

    started, polls = time.monotonic(), 0
    while True:
        run = store.run(run_id, with_results=False)
        if run and run["status"] in TERMINAL_RUN:
            return run
        polls += 1
        if polls % 6 == 0:
            done = len(store.run_results(run_id))
            console.print(f"  {time.monotonic() - started:5.0f} s: {done}/{isbns} ISBNs trained and registered",
                          highlight=False)
        time.sleep(5)


def served_forecasts(url: str, isbns: list[str]) -> dict[str, dict[int, dict]]:
    """Each ISBN's answer at every interval level, as a caller gets it."""
    found: dict[str, dict[int, dict]] = {}
    for level in LEVELS:
        for start in range(0, len(isbns), BATCH):
            response = requests.post(url, json={"isbns": isbns[start:start + BATCH], "horizon": TEST_WEEKS,
                                                "interval": level / 100}, timeout=60)
            response.raise_for_status()
            for answer in response.json()["forecasts"]:
                found.setdefault(answer["isbn"], {})[level] = answer
    return found


def backtest_check(client, cfg, isbn: str, result: dict) -> dict:
    """What serves against what was trained, on the backtests, from the registry's tags."""
    from shared import registry
    from shared.version_tags import Tag, VersionTags

    versions = [VersionTags(v.tags) for v in client.search_model_versions(f"name='{cfg.model_name(isbn)}'")]
    (candidate,) = [v for v in versions if v.get(Tag.KIND) == VersionKind.CANDIDATE]
    served = VersionTags(registry.version_by_alias(cfg, isbn).tags)
    ours, theirs = served.metric("backtest_mae"), candidate.metric("backtest_mae")
    naive = theirs / candidate.metric("backtest_relative_mae")
    return {"status": result["status"], "serves": served.get(Tag.KIND), "served_backtest_mae": ours,
            "candidate_backtest_mae": theirs, "naive_backtest_mae": naive,
            "at_least_as_good": ours <= theirs * (1 + TOLERANCE),
            "served_vs_naive": ours / naive if naive else float("nan")}


def compare_with_direct(rows: pd.DataFrame, console: Console) -> None:
    last = CACHE / "real_accuracy_last.csv"
    if not last.exists():
        console.print("no bench.real_accuracy results to compare with (run it first for the comparison)")
        return
    direct = pd.read_csv(last).set_index("series")[SERVED]
    both = rows.join(direct.rename("direct"), on="series", how="inner")
    differ = both[(both["mase"] - both["direct"]).abs() > 1e-3]
    console.print(f"served through the bucket vs bench.real_accuracy's last run ({last}): {len(both) - len(differ)} "
                  f"of {len(both)} series agree within 0.001 MASE"
                  + (f"; differing: {', '.join(f'{r.series} {r.mase:.3f} vs {r.direct:.3f}' for r in differ.itertuples())}"
                     if len(differ) else ""), highlight=False)


def summarise(rows: pd.DataFrame, console: Console, sets: list[tuple[str, pd.Series]]) -> None:
    table = Table(title=f"served through the bucket, {TEST_WEEKS} hidden weeks")
    for column in ("set", "series", "served MASE", "AutoARIMA", "served / AutoARIMA", "cover 80%", "cover 95%",
                   "beats naive", "fallbacks serving", "backtests: served ≤ candidate",
                   "backtests: served / naive, max"):
        table.add_column(column, justify="right")
    for label, member in sets:
        chosen = rows[member]
        if chosen.empty:
            continue
        table.add_row(label, str(len(chosen)), f"{chosen['mase'].mean():.3f}", f"{chosen['arima'].mean():.3f}",
                      f"{chosen['mase'].mean() / chosen['arima'].mean():.3f}x", f"{chosen['coverage_80'].mean():.2f}",
                      f"{chosen['coverage_95'].mean():.2f}", f"{(chosen['mase'] < chosen['naive']).mean():.0%}",
                      str(int((chosen['serves'] != VersionKind.CANDIDATE).sum())),
                      f"{int(chosen['at_least_as_good'].sum())} of {len(chosen)}",
                      f"{chosen['served_vs_naive'].max():.2f}")
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--set", choices=["design", "held-out", "all"], default="all")
    parser.add_argument("--limit", type=int, default=0, help="only the first N series (a quick look)")
    args = parser.parse_args()
    from shared import registry
    from shared.gcs import storage_client
    from shared.logs import configure
    from shared.runstore import RunStore
    from shared.sales import to_csv

    from emulators.processes import free_port

    configure("WARNING")
    console = Console(width=160)
    every = load()
    newest = max(s.first_benchmarked for s in every)  # the held-out series no earlier run has shown anyone
    series: list[Series] = [s for s in every if args.set == "all" or s.held_out == (args.set == "held-out")]
    series = series[:args.limit] if args.limit else series
    series = [within_upload_limit(one, console) for one in series]
    upload = as_upload([Series(s.name, s.source, s.start, s.units[:-TEST_WEEKS], s.first_benchmarked) for s in series])
    isbn_of = dict(zip([s.name for s in series], upload["isbn"].unique()))
    console.print(f"{len(series)} real series, all but the last {TEST_WEEKS} weeks uploaded as one CSV "
                  f"({len(upload)} rows), development profile", highlight=False)
    with trigger_stack("development") as (stack, cfg):
        store = RunStore(cfg)
        blob = storage_client(stack.project).bucket(cfg.data_bucket).blob(f"{cfg.upload_prefix}real-sales.csv")
        blob.metadata = {"correlation_id": CORRELATION_ID}
        started = time.monotonic()
        blob.upload_from_string(to_csv(upload), content_type="text/csv")
        cause = wait_accepted(store, CORRELATION_ID, 600)
        if "run_id" not in cause:
            raise SystemExit(f"the upload launched no run: {cause}")
        console.print(f"decided in {time.monotonic() - started:.1f} s: run {cause['run_id']}", highlight=False)
        run = wait_for_run(console, store, cause["run_id"], len(series))
        console.print(f"run {run['status']} {time.monotonic() - started:.0f} s after the upload; "
                      f"{run.get('compute_seconds', 0) / len(series):.2f} CPU s per ISBN", highlight=False)
        results = store.run_results(cause["run_id"])
        port = free_port()
        stack.start_function("forecast", port=port)  # stopped with the stack's process group
        answers = served_forecasts(f"http://127.0.0.1:{port}/", list(isbn_of.values()))
        client = registry.client(cfg)
        rows = []
        for one in series:
            isbn = isbn_of[one.name]
            train, test = one.units[:-TEST_WEEKS], one.units[-TEST_WEEKS:]
            answer = answers[isbn]
            bounds = {level: ([w["lower"] for w in answer[level]["forecast"]], [w["upper"] for w in answer[level]["forecast"]])
                      for level in LEVELS}
            mean = [w["mean"] for w in answer[LEVELS[0]]["forecast"]]
            theirs = statsforecast_one(one)
            rows.append({"series": one.name, "isbn": isbn, "held_out": one.held_out,
                         "fresh": newest > FIRST_BENCHMARK and one.first_benchmarked == newest,
                         **score(train, test, mean, bounds), "model": answer[LEVELS[0]]["model"],
                         "arima": theirs["AutoARIMA"]["mase"], "naive": theirs["SeasonalNaive"]["mase"],
                         **backtest_check(client, cfg, isbn, results[isbn])})
    frame = pd.DataFrame(rows)
    summarise(frame, console, [("design", ~frame["held_out"]), ("held out", frame["held_out"]),
                               ("fresh held out", frame["held_out"] & frame["fresh"]), ("all", frame["mase"].notna())])
    for row in frame[~frame["at_least_as_good"]].itertuples():
        console.print(f"  {row.series} ({row.isbn}): serves {row.serves} with backtest MAE {row.served_backtest_mae:.1f} "
                      f"against the candidate's {row.candidate_backtest_mae:.1f}", highlight=False)
    for row in frame[frame["serves"] != VersionKind.CANDIDATE].itertuples():
        console.print(f"  {row.series}: {row.status}, serves {row.model} ({row.serves}): MASE {row.mase:.3f}, "
                      f"AutoARIMA {row.arima:.3f}", highlight=False)
    compare_with_direct(frame, console)
    out = CACHE / "real_upload_last.csv"
    frame.to_csv(out, index=False)
    console.print(f"per series: {out}", highlight=False)


if __name__ == "__main__":
    main()
