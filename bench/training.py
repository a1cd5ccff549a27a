"""Accuracy and time of our tuned model against statsforecast's AutoARIMA(52) and seasonal
naive on the same generated series and holdout, for 2, 12 and 50 ISBNs; and, on two series,
a SARIMAX with a seasonal order at 52, the evidence for choosing Fourier terms.

    .venv/bin/python -m bench.training [--sizes 2 12 50] [--profile development]
"""
from __future__ import annotations

import argparse
import os
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from datetime import date
from multiprocessing import get_context

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from shared.logs import configure

from shared.config import load_settings
from shared.forecasting.metrics import accuracy
from shared.forecasting.models import SEASON, seasonal_naive
from shared.sample_data import generate
from shared.states import TrainStatus
from shared.training.per_isbn import holdout_size

END = date(2026, 11, 23)


def split(frame: pd.DataFrame, holdout_weeks: int):
    for isbn, rows in frame.groupby("isbn"):
        y = rows["units"].to_numpy(float)
        cut = len(y) - holdout_size(len(y), holdout_weeks)
        yield isbn, list(rows["week"]), y, cut


def score(y, cut, predicted, start) -> dict:
    train = y[:cut]
    naive = seasonal_naive(train, start, len(y) - cut)
    return accuracy(y[cut:], predicted, naive, train, SEASON if cut > SEASON else 1)


def ours_one(args):
    from shared.config import TrainingSettings
    from shared.training.per_isbn import train_isbn

    isbn, weeks, y, training_json = args
    candidate = train_isbn(isbn, weeks, list(y), TrainingSettings.model_validate_json(training_json))
    return candidate.metrics if candidate.status == TrainStatus.TRAINED else None


def bench_ours(frame, cfg, workers):
    jobs = [(isbn, weeks, y, cfg.training.model_dump_json()) for isbn, weeks, y, _ in split(frame, cfg.training.holdout_weeks)]
    os.environ.update({"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"})
    started = time.perf_counter()
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        metrics = [m for m in pool.map(ours_one, jobs) if m]
    return time.perf_counter() - started, metrics


def bench_autoarima(frame, cfg, workers):
    from statsforecast import StatsForecast
    from statsforecast.models import AutoARIMA

    parts = list(split(frame, cfg.training.holdout_weeks))
    train = pd.concat([pd.DataFrame({"unique_id": isbn, "ds": pd.to_datetime(weeks[:cut]), "y": y[:cut]})
                       for isbn, weeks, y, cut in parts])
    horizons = {isbn: len(y) - cut for isbn, _, y, cut in parts}
    # Compile statsforecast's numba code first: a deployed service pays that once, not per fit.
    warm = train[train["unique_id"] == parts[0][0]]
    StatsForecast(models=[AutoARIMA(season_length=52)], freq="W-MON", n_jobs=1).forecast(df=warm, h=2)
    started = time.perf_counter()
    model = StatsForecast(models=[AutoARIMA(season_length=52)], freq="W-MON", n_jobs=workers)
    forecast = model.forecast(df=train, h=max(horizons.values()))
    elapsed = time.perf_counter() - started
    metrics = []
    for isbn, weeks, y, cut in parts:
        predicted = forecast[forecast["unique_id"] == isbn]["AutoARIMA"].to_numpy()[: len(y) - cut]
        metrics.append(score(y, cut, np.clip(predicted, 0, None), weeks[0]))
    return elapsed, metrics


def bench_naive(frame, cfg):
    started = time.perf_counter()
    metrics = [score(y, cut, seasonal_naive(y[:cut], weeks[0], len(y) - cut), weeks[0])
               for _, weeks, y, cut in split(frame, cfg.training.holdout_weeks)]
    return time.perf_counter() - started, metrics


def bench_seasonal_sarimax(frame, cfg):
    from statsmodels.tsa.statespace.sarimax import SARIMAX

    started = time.perf_counter()
    metrics = []
    for _, weeks, y, cut in split(frame, cfg.training.holdout_weeks):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = SARIMAX(np.log1p(y[:cut]), order=(1, 1, 1), seasonal_order=(0, 1, 1, 52)).fit(disp=False, low_memory=True)
        predicted = np.clip(np.expm1(fit.forecast(len(y) - cut)), 0, None)
        metrics.append(score(y, cut, predicted, weeks[0]))
    return time.perf_counter() - started, metrics


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[2, 12, 50])
    parser.add_argument("--profile", default="development")
    parser.add_argument("--years", type=float, default=4)
    args = parser.parse_args()
    configure("WARNING")
    cfg = load_settings(args.profile)
    workers = os.cpu_count() or 1
    console = Console(width=140)
    table = Table(title=f"training benchmark: {args.years:g} years of weekly data, {cfg.training.holdout_weeks}-week holdout, "
                        f"{workers} cores, profile {args.profile} ({cfg.training.trials} trials)")
    for column in ("ISBNs", "method", "seconds", "s / ISBN", "mean MASE", "median MASE", "mean sMAPE", "beats naive"):
        table.add_column(column, justify="right")
    for n in args.sizes:
        frame = generate(n, args.years, end=END, seed=1000 + n)
        runs = [("tuned harmonic ARIMA (ours)", bench_ours(frame, cfg, workers)),
                ("statsforecast AutoARIMA(52)", bench_autoarima(frame, cfg, workers)),
                ("seasonal naive", bench_naive(frame, cfg))]
        if n == min(args.sizes):
            runs.append(("SARIMAX(1,1,1)(0,1,1,52), 1 core", bench_seasonal_sarimax(frame, cfg)))
        for name, (seconds, metrics) in runs:
            mase = np.array([m["mase"] for m in metrics])
            smape = np.array([m["smape"] for m in metrics])
            beats = np.mean([m["relative_mae"] < 1 for m in metrics])
            table.add_row(str(n), name, f"{seconds:.1f}", f"{seconds / n:.2f}", f"{mase.mean():.3f}",
                          f"{np.median(mase):.3f}", f"{smape.mean():.3f}", f"{beats:.0%}")
            console.print(f"{n} ISBNs, {name}: {seconds:.1f} s, MASE {mase.mean():.3f}", highlight=False)
        table.add_section()
    console.print(table)


if __name__ == "__main__":
    main()
