"""What smart retraining saves: a year of weekly uploads replayed through the decision and
training code (shared/decisions.decide, shared/training/per_isbn.train_isbn, the gates and
shared/forecasting/models.refresh), against retraining every ISBN every week.

    .venv/bin/python -m bench.savings [--isbns 100] [--weeks 52] [--always-every 4]

Each ISBN starts with two years of history and then reports every week; every 8th week a
tenth of the catalogue sends a correction of an earlier week (history revised), and every
5th week's upload is sent twice (the resend must skip). The first training and registration are left out on both
sides (it is the same per version; bench/registration.py measures it). Always-retrain is
run on every ``--always-every``-th week and its compute scaled up, which keeps the run short;
both strategies are scored on the same weeks: the served forecast after an upload against
the next week's actual, MASE scaled by the ISBN's in-sample lag-52 MAE.
"""
from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import date, datetime, time as clock, timedelta, timezone
from multiprocessing import get_context

import numpy as np
from rich.console import Console
from rich.table import Table

HISTORY_YEARS = 2
END = date(2026, 11, 23)


@dataclass
class Served:
    """An ISBN's champion as the decisions see it: tags, serving artifact, fitted model."""
    model: dict
    forecast: dict
    tags: dict
    fitted_at: datetime

    def target(self, isbn: str):
        from shared.model_store import AliasTarget

        return AliasTarget(isbn=isbn, model_name=isbn, alias="champion", version=self.tags["version"], run_id="",
                           created_at=self.fitted_at, tags=self.tags)


@dataclass
class Tally:
    actions: dict = field(default_factory=lambda: {"skip": 0, "refresh": 0, "train": 0})
    seconds: float = 0.0
    errors: list = field(default_factory=list)   # (week index, scaled absolute error)
    stale: int = 0


def _week_dict(start: date, units: np.ndarray) -> dict[str, int]:
    return {(start + timedelta(weeks=i)).isoformat(): int(u) for i, u in enumerate(units)}


def _train(isbn, start, y, training, gates, champion_spec, now):
    from shared.forecasting.models import FittedModel
    from shared.version_tags import Tag, metric_tag
    from shared.sales import series_hash
    from shared.states import TrainStatus
    from shared.training.per_isbn import CHAMPION, gate, serving_forecast, train_isbn

    weeks = [start + timedelta(weeks=i) for i in range(len(y))]
    candidate = train_isbn(isbn, weeks, list(y), training, champion_spec)
    if candidate.status != TrainStatus.TRAINED:  # as the pipeline: nothing new to serve
        return None, False
    verdict = gate(candidate, gates)
    passed = verdict.passed
    # As the pipeline: the candidate if it passed, else the fallback that did best on the
    # backtests (the champion's structure re-estimated, or a registered fallback).
    if passed:
        model, metrics = candidate.model, candidate.metrics
    elif verdict.fallback == CHAMPION:
        model, metrics = candidate.champion_refit, candidate.champion_metrics
    else:
        model, metrics = candidate.fallbacks[verdict.fallback]["model"], candidate.fallbacks[verdict.fallback]["metrics"]
    tags = {Tag.DATA_HASH: series_hash(_week_dict(start, y)), metric_tag("mae"): str(metrics["mae"]),
            Tag.SPEC: FittedModel.from_dict(model).spec.to_dict(), Tag.FITTED_AT: now.isoformat()}
    return Served(model, serving_forecast(model), tags, now), passed


def replay_one(args) -> tuple[Tally, Tally]:
    """One ISBN through every weekly upload, smart and always-retrain side by side."""
    isbn, start, units, n_history, corrections, resends, always_every, profile = args
    from shared.config import load_settings
    from shared.decisions import REFRESH, SKIP, decide
    from shared.forecasting import models
    from shared.forecasting.metrics import seasonal_naive_scale
    from shared.forecasting.models import FittedModel
    from shared.version_tags import Tag
    from shared.training.per_isbn import serving_forecast

    cfg = load_settings(profile)
    smart, always = Tally(), Tally()
    truth = np.asarray(units, float)
    scale = seasonal_naive_scale(truth[:n_history], 52)
    observed = truth[:n_history].copy()

    def at(week_index: int) -> datetime:
        return datetime.combine(start + timedelta(weeks=week_index), clock(12), timezone.utc)

    # The first training is the same for both strategies: left out of both.
    champion, _ = _train(isbn, start, observed, cfg.training, cfg.gates, None, at(n_history))
    if champion is None:
        raise RuntimeError(f"{isbn}: the first training produced no model")
    champion.tags["version"] = "1"
    versions = 1
    for step in range(len(truth) - n_history - 1):
        t = n_history + step  # the new week's index
        observed = np.append(observed, truth[t])
        if step in corrections:  # a revised past week
            observed[t - 10] = max(0, round(observed[t - 10] * 1.2 + 3))
        deliveries = 2 if step in resends else 1
        now = at(t + 1)
        for _ in range(deliveries):
            weeks = _week_dict(start, observed)
            decision = decide(isbn, weeks, champion.target(isbn), champion.forecast, cfg.decision, False, now)
            smart.actions[decision.action] += 1
            began = time.process_time()
            if decision.action == REFRESH:
                model = models.refresh(FittedModel.from_dict(champion.model), observed).to_dict()
                measured = decision.inputs.get("degradation") or {}
                tags = {**champion.tags, Tag.DATA_HASH: decision.inputs["data_hash"],
                        Tag.UNSEEN_WEEKS: str(measured.get("unseen_weeks", 0)),
                        Tag.UNSEEN_ABS_ERROR: str(measured.get("unseen_abs_error", 0.0))}
                champion = Served(model, serving_forecast(model), tags, champion.fitted_at)
            elif decision.action != SKIP:
                trained, _ = _train(isbn, start, observed, cfg.training, cfg.gates, champion.tags[Tag.SPEC], now)
                if trained is not None:
                    champion = trained
                versions += 1
                champion.tags["version"] = str(versions)
            smart.seconds += time.process_time() - began
        if date.fromisoformat(champion.forecast["start"]) != start + timedelta(weeks=t + 1):
            smart.stale += 1
        if step % always_every == 0:
            smart.errors.append((step, abs(_next_week(champion.forecast) - truth[t + 1]) / scale))
            began = time.process_time()
            retrained, _ = _train(isbn, start, observed, cfg.training, cfg.gates, None, now)
            always.seconds += (time.process_time() - began) * always_every
            always.actions["train"] += always_every
            if retrained is not None:
                always.errors.append((step, abs(_next_week(retrained.forecast) - truth[t + 1]) / scale))
    return smart, always


def _next_week(forecast: dict) -> float:
    from shared.forecasting.serving import from_artifact

    return float(from_artifact(forecast, 1, 0.8)[1][0])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--isbns", type=int, default=100)
    parser.add_argument("--weeks", type=int, default=52)
    parser.add_argument("--always-every", type=int, default=4)
    parser.add_argument("--profile", default="test")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    from shared.logs import configure
    from shared.sample_data import generate

    configure("WARNING")
    frame = generate(args.isbns, HISTORY_YEARS + (args.weeks + 1) / 52.18, end=END, seed=77)
    rng = np.random.default_rng(5)
    jobs = []
    for isbn, rows in frame.groupby("isbn"):
        units = rows["units"].to_numpy(float)
        n_history = len(units) - args.weeks - 1
        corrections = {s for s in range(args.weeks) if s % 8 == 7 and rng.random() < 0.1}
        resends = {s for s in range(args.weeks) if s % 5 == 4}
        jobs.append((isbn, rows["week"].iloc[0], units, n_history, corrections, resends, args.always_every,
                     args.profile))
    os.environ.update({"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"})
    console = Console(width=140)
    console.print(f"{args.isbns} ISBNs × {args.weeks} weekly uploads (profile {args.profile}); always-retrain sampled "
                  f"every {args.always_every} weeks", highlight=False)
    started = time.perf_counter()
    tallies, failed = [], []
    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(replay_one, job): job[0] for job in jobs}
        for done, future in enumerate(as_completed(futures), 1):
            try:
                tallies.append(future.result())
            except Exception as error:  # one ISBN's failure is reported, not the end of the replay
                failed.append(f"{futures[future]}: {error!r}")
            if done % 10 == 0:
                console.print(f"{done}/{len(jobs)} ISBNs replayed ({time.perf_counter() - started:.0f} s)",
                              highlight=False)
    for failure in failed:
        console.print(f"[red]failed[/] {failure}")
    wall = time.perf_counter() - started
    smart = [s for s, _ in tallies]
    always = [a for _, a in tallies]
    counts = {k: sum(t.actions[k] for t in smart) for k in ("skip", "refresh", "train")}
    total = sum(counts.values())
    smart_seconds, always_seconds = sum(t.seconds for t in smart), sum(t.seconds for t in always)
    paired = [(dict(s.errors), dict(a.errors)) for s, a in zip(smart, always)]
    smart_mase = np.mean([e for s, a in paired for k, e in s.items() if k in a])
    always_mase = np.mean([e for s, a in paired for k, e in a.items() if k in s])
    stale = sum(t.stale for t in smart)
    table = Table(title=f"smart retraining vs always-retrain ({wall:.0f} s wall on {args.workers} processes)")
    for column in ("measure", "smart", "always-retrain", "target"):
        table.add_column(column, justify="right")
    table.add_row("ISBN-weeks skipped / refreshed / retrained",
                  f"{counts['skip'] / total:.0%} / {counts['refresh'] / total:.0%} / {counts['train'] / total:.0%}",
                  "0% / 0% / 100%", "")
    table.add_row("ISBN-weeks without re-tuning", f"{1 - counts['train'] / total:.0%}", "0%", "≥ 80%")
    table.add_row("compute, CPU seconds", f"{smart_seconds:.0f}", f"{always_seconds:.0f} (scaled)",
                  f"≤ 25%: {smart_seconds / always_seconds:.0%}")
    table.add_row("next-week MASE of the served forecast", f"{smart_mase:.3f}", f"{always_mase:.3f}",
                  f"within 3%: {smart_mase / always_mase - 1:+.1%}")
    table.add_row("served forecasts starting in the past", str(stale), "–", "0")
    console.print(table)


if __name__ == "__main__":
    main()
