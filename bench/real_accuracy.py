"""Forecast accuracy on real weekly sales (bench/real_series.py): ours as served (after the
gates and, for a refused candidate, the fallback they chose), ours as candidate, our plain
fallback combination, and statsforecast's AutoARIMA, AutoETS, AutoTheta (all with a 52-week
season), the mean of those three, MSTL and seasonal naive, on the same series and the same
last 26 weeks. The third of the series marked held-out is reported on its own and was kept
out of every design decision; so are the held-out series added most recently, which no
earlier run has shown anyone; every set is also reported per source.

    .venv/bin/python -m bench.real_accuracy [--profile development] [--set design|held-out|all]

MASE is scaled by the in-sample lag-52 MAE; coverage is the share of test weeks inside the
80% / 95% intervals; seconds are per series on one core. statsforecast's results are cached
per series content in .cache/bench-data (they take minutes and never change).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from datetime import timedelta
from multiprocessing import get_context

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from bench.real_series import CACHE, FIRST_BENCHMARK, Series, load

TEST_WEEKS = 26
SEASON = 52
LEVELS = (80, 95)
STATSFORECAST = ("AutoARIMA", "AutoETS", "AutoTheta", "MSTL", "SeasonalNaive")
STATSFORECAST_MEAN = "mean of AutoARIMA, AutoETS, AutoTheta"
AVERAGED = ("AutoARIMA", "AutoETS", "AutoTheta")
SERVED, CANDIDATE, PLAIN = "bookcast as served", "bookcast candidate", "bookcast plain combination"
METHODS = (SERVED, CANDIDATE, PLAIN, "AutoARIMA", "AutoETS", "AutoTheta", STATSFORECAST_MEAN, "MSTL", "SeasonalNaive")


def score(train: np.ndarray, test: np.ndarray, mean, bounds: dict[int, tuple]) -> dict:
    from shared.forecasting.metrics import seasonal_naive_scale

    mean = np.asarray(mean, float)
    denominator = np.abs(test) + np.abs(mean)
    smape = np.where(denominator > 0, 2 * np.abs(test - mean) / np.where(denominator > 0, denominator, 1), 0)
    found = {"mase": float(np.mean(np.abs(test - mean))) / seasonal_naive_scale(train, SEASON),
             "smape": float(np.mean(smape))}
    for level, (lower, upper) in bounds.items():
        found[f"coverage_{level}"] = float(np.mean((test >= np.asarray(lower)) & (test <= np.asarray(upper))))
    return found


def ours(args: tuple) -> dict:
    """Train as the pipeline does on all but the last 26 weeks, then forecast them."""
    from shared.config import load_settings
    from shared.forecasting import models
    from shared.forecasting.models import COMBINATION, FittedModel
    from shared.states import TrainStatus
    from shared.training.per_isbn import gate, train_isbn

    series, profile = args
    cfg = load_settings(profile)
    train, test = series.units[:-TEST_WEEKS], series.units[-TEST_WEEKS:]
    weeks = [series.start + timedelta(weeks=i) for i in range(len(train))]
    started = time.process_time()
    candidate = train_isbn(series.name, weeks, list(train), cfg.training)
    seconds = time.process_time() - started
    if candidate.status != TrainStatus.TRAINED:
        raise RuntimeError(f"{series.name}: {candidate.status}: {candidate.reason}")
    verdict = gate(candidate, cfg.gates)
    served = candidate.model if verdict.passed else candidate.fallbacks[verdict.fallback]["model"]
    results = {}
    for method, model in ((CANDIDATE, candidate.model), (SERVED, served),
                          (PLAIN, candidate.fallbacks[COMBINATION]["model"])):
        prediction = models.forecast(FittedModel.from_dict(model), TEST_WEEKS)
        bounds = {level: prediction.bounds(level / 100)[1:] for level in LEVELS}
        results[method] = {**score(train, test, prediction.bounds(0.8)[0], bounds), "seconds": seconds}
    results[SERVED]["serves"] = "candidate" if verdict.passed else verdict.fallback
    results[CANDIDATE]["family"] = candidate.spec["kind"]
    return results


def _statsforecast_models():
    from statsforecast.models import MSTL, AutoARIMA, AutoETS, AutoTheta, SeasonalNaive

    return {"AutoARIMA": AutoARIMA(season_length=SEASON), "AutoETS": AutoETS(season_length=SEASON),
            "AutoTheta": AutoTheta(season_length=SEASON),
            "MSTL": MSTL(season_length=SEASON, trend_forecaster=AutoETS(model="ZZN")),
            "SeasonalNaive": SeasonalNaive(season_length=SEASON)}


def _warm_numba() -> None:
    """Compile statsforecast's numba code once per process: a service pays that once."""
    y = np.abs(np.sin(np.arange(120) / 8.3)) * 100 + 10
    for model in _statsforecast_models().values():
        model.forecast(y=y, h=2, level=[80])


def statsforecast_one(series: Series) -> dict:
    train, test = series.units[:-TEST_WEEKS], series.units[-TEST_WEEKS:]
    key = hashlib.sha1(train.tobytes() + test.tobytes() + b"sf3").hexdigest()[:16]
    cached = CACHE / f"statsforecast-{key}.json"
    if cached.exists():
        return json.loads(cached.read_text())
    results = {}
    for name, model in _statsforecast_models().items():
        started = time.process_time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = model.forecast(y=train, h=TEST_WEEKS, level=list(LEVELS))
        seconds = time.process_time() - started
        mean = np.clip(out["mean"], 0, None)
        bounds = {level: (np.clip(out[f"lo-{level}"], 0, None), np.clip(out[f"hi-{level}"], 0, None)) for level in LEVELS}
        results[name] = {**score(train, test, mean, bounds), "seconds": seconds,
                         "forecast": [mean.tolist(), {level: [b.tolist() for b in pair] for level, pair in bounds.items()}]}
    # The simple mean of three: the forecasts and each interval bound averaged.
    averaged = [results[name].pop("forecast") for name in AVERAGED]
    for name in STATSFORECAST:
        results[name].pop("forecast", None)
    mean = np.mean([np.asarray(a[0]) for a in averaged], axis=0)
    bounds = {level: tuple(np.mean([np.asarray(a[1][level][i]) for a in averaged], axis=0) for i in (0, 1))
              for level in LEVELS}
    results[STATSFORECAST_MEAN] = {**score(train, test, mean, bounds),
                                   "seconds": sum(results[name]["seconds"] for name in AVERAGED)}
    cached.write_text(json.dumps(results))
    return results


def summarise(rows: list[dict], title: str, console: Console) -> None:
    table = Table(title=title)
    for column in ("method", "mean MASE", "median MASE", "mean sMAPE", "cover 80%", "cover 95%", "s / series",
                   "beats naive"):
        table.add_column(column, justify="right")
    naive = np.array([r["SeasonalNaive"]["mase"] for r in rows])
    for method in METHODS:
        mase = np.array([r[method]["mase"] for r in rows])
        cover = {level: np.mean([r[method][f"coverage_{level}"] for r in rows]) for level in LEVELS}
        beats = "–" if method == "SeasonalNaive" else f"{np.mean(mase < naive):.0%}"
        table.add_row(method, f"{mase.mean():.3f}", f"{np.median(mase):.3f}",
                      f"{np.mean([r[method]['smape'] for r in rows]):.3f}", f"{cover[80]:.2f}", f"{cover[95]:.2f}",
                      f"{np.mean([r[method]['seconds'] for r in rows]):.2f}", beats)
    console.print(table)
    served = np.mean([r[SERVED]["mase"] for r in rows])
    candidate = np.mean([r[CANDIDATE]["mase"] for r in rows])
    arima = np.mean([r["AutoARIMA"]["mase"] for r in rows])
    serves = pd.Series([r[SERVED]["serves"] for r in rows]).value_counts().to_dict()
    families = pd.Series([r[CANDIDATE]["family"] for r in rows]).value_counts().to_dict()
    console.print(f"served / AutoARIMA mean MASE: {served / arima:.3f} (target ≤ 0.85); served / candidate: "
                  f"{served / candidate:.3f} (target ≤ 1.02); what serves: {serves}; families chosen: {families}",
                  highlight=False)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--profile", default="development")
    parser.add_argument("--set", choices=["design", "held-out", "all"], default="all",
                        help="which series to run: design decisions look at 'design' only")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    from shared.logs import configure

    configure("WARNING")
    console = Console(width=150)
    series = [s for s in load() if args.set == "all" or s.held_out == (args.set == "held-out")]
    console.print(f"{len(series)} real series ({sum(s.held_out for s in series)} held out), "
                  f"{TEST_WEEKS}-week test, profile {args.profile}", highlight=False)
    os.environ.update({"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"})
    context = get_context("spawn")
    started = time.perf_counter()
    with ProcessPoolExecutor(args.workers, mp_context=context, initializer=_warm_numba) as pool:
        baselines = list(pool.map(statsforecast_one, series))
    console.print(f"statsforecast: {time.perf_counter() - started:.0f} s", highlight=False)
    started = time.perf_counter()
    with ProcessPoolExecutor(args.workers, mp_context=context) as pool:
        mine = list(pool.map(ours, [(s, args.profile) for s in series]))
    console.print(f"bookcast: {time.perf_counter() - started:.0f} s wall on {args.workers} processes", highlight=False)
    rows = [{**theirs, **ours_} for theirs, ours_ in zip(baselines, mine)]
    sets = (("design", lambda s: not s.held_out), ("held-out", lambda s: s.held_out), ("all", lambda s: True))
    newest = max(s.first_benchmarked for s in series)
    fresh = (f"held-out, first benchmarked {newest}", lambda s: s.held_out and s.first_benchmarked == newest)
    for label, member in (*sets, *([fresh] if newest > FIRST_BENCHMARK else [])):
        chosen = [r for r, s in zip(rows, series) if member(s)]
        if chosen:
            summarise(chosen, f"{label} series ({len(chosen)})", console)
    sources = sorted({s.source for s in series})
    by_source = Table(title="mean MASE per source (design / held-out / all)")
    for column in ("source", "series", *METHODS[:3], "AutoARIMA", STATSFORECAST_MEAN, "SeasonalNaive", "served beats naive"):
        by_source.add_column(column, justify="right")
    for source in sources:
        cells = []
        for method in (*METHODS[:3], "AutoARIMA", STATSFORECAST_MEAN, "SeasonalNaive"):
            cells.append(" / ".join(
                f"{np.mean(found):.3f}" if (found := [r[method]["mase"] for r, s in zip(rows, series)
                                                      if s.source == source and member(s)]) else "–"
                for _, member in sets))
        mine = [(r[SERVED]["mase"] < r["SeasonalNaive"]["mase"]) for r, s in zip(rows, series) if s.source == source]
        count = " / ".join(str(sum(s.source == source and member(s) for s in series)) for _, member in sets)
        by_source.add_row(source, count, *cells, f"{np.mean(mine):.0%}")
    console.print(by_source)
    per_series = pd.DataFrame([{"series": s.name, "source": s.source, "held_out": s.held_out,
                                "first_benchmarked": s.first_benchmarked,
                                "family": r[CANDIDATE]["family"], "serves": r[SERVED]["serves"],
                                **{m: round(r[m]["mase"], 3) for m in METHODS}}
                               for r, s in zip(rows, series)])
    out = CACHE / "real_accuracy_last.csv"
    per_series.to_csv(out, index=False)
    console.print(f"per series: {out}", highlight=False)


if __name__ == "__main__":
    main()
