"""The training pipeline's steps as plain functions; shared/training/pipeline.py wraps each
in a ZenML step. Keeping them plain lets the launcher, the CLI and tests call the same code.
"""
from __future__ import annotations

import json
import os
import sys
import time
from contextlib import contextmanager
from concurrent.futures import ProcessPoolExecutor, as_completed
from datetime import date, datetime, timezone
from multiprocessing import get_context

from shared.config import Settings
from shared import shards
from shared.events import IsbnResult
from shared.decisions import parameter_age_days
from shared.forecasting import gates
from shared.jobs import DecidedSeries, Refresh, TrainingJob, read_snapshot, verify
from shared.registry import Tags
from shared.logs import get_logger
from shared.training import report
from shared.forecasting.models import BASELINE, ModelSpec
from shared.training.per_isbn import CHAMPION, Candidate, gate, serving_forecast, train_isbn

log = get_logger(__name__)


def settings_of(request: dict) -> Settings:
    return Settings.from_snapshot(request["settings"])


# --- load, validate, preprocess: the decided series, exactly ----------------------------------
def load(request: dict) -> dict[str, dict]:
    """The series the run's decisions saw, from the snapshot the request names."""
    from shared.runstore import RunStore

    job = TrainingJob.model_validate(request)
    stored = read_snapshot(RunStore(settings_of(request)), job)
    log.info("loaded %d decided series from %d snapshot document(s)", len(stored), len(job.snapshot),
             extra={"run_id": job.run_id})
    return stored


def validate(request: dict, stored: dict[str, dict]) -> tuple[dict[str, dict], dict[str, str]]:
    """The series whose content still hashes to what was decided, and per-ISBN refusals."""
    series, refusals = verify(TrainingJob.model_validate(request), stored)
    return {isbn: s.model_dump(mode="json") for isbn, s in series.items()}, refusals


def preprocess(valid: dict[str, dict]) -> dict[str, dict]:
    """One regular weekly series per ISBN, with its content hash and sources."""
    series = {}
    for isbn, raw in sorted(valid.items()):
        decided = DecidedSeries.model_validate(raw)
        series[isbn] = {"weeks": list(decided.weeks()), "units": [float(u) for u in decided.units],
                        "data_hash": decided.data_hash, "sources": decided.sources}
    return series


# --- train, gate, register, promote: each ISBN as soon as it is ready -------------------------
REFIT = "refit"  # kind and alias action: the champion's structure re-estimated after a candidate lost to it
REGISTRATION_THREADS = 4  # registration is MLflow round trips: overlap them with each other and with training


def _train_one(args: tuple) -> Candidate:
    isbn, weeks, units, training_json, champion_spec = args
    from shared.config import TrainingSettings

    return train_isbn(isbn, [date.fromisoformat(w) for w in weeks], units,
                      TrainingSettings.model_validate_json(training_json), champion_spec)


def champion_specs(cfg: Settings, isbns: list[str]) -> dict[str, dict | None]:
    from shared import registry

    specs = {}
    for isbn in isbns:
        version = registry.version_by_alias(cfg, isbn)
        specs[isbn] = registry.version_spec(version)
    return specs


@contextmanager
def single_threaded_blas():
    """One BLAS thread per worker process, so two workers do not fight over two cores."""
    saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    os.environ.update({k: "1" for k in saved})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def shard_workers(cfg: Settings, shards: int) -> int:
    """Training processes for one shard: its machine's cores on Vertex AI; locally the
    machine's cores shared among the run's shards, which run side by side."""
    workers = cfg.training.workers or os.cpu_count() or 1
    return max(1, workers // shards) if cfg.launcher == "local" else workers


def trained(cfg: Settings, series: dict[str, dict], shards: int = 1):
    """Tune, fit and evaluate every ISBN in parallel worker processes, yielding each
    candidate as it finishes (with progress on a terminal)."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    if not series:
        return
    specs = champion_specs(cfg, list(series))
    workers = shard_workers(cfg, shards)
    jobs = [(isbn, s["weeks"], s["units"], cfg.training.model_dump_json(), specs.get(isbn)) for isbn, s in series.items()]
    progress = Progress(TextColumn("training"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.description}"),
                        disable=not sys.stderr.isatty(), transient=False)
    # spawn, not fork: the parent holds gRPC channels that do not survive a fork. No
    # max_tasks_per_child: on Python 3.11 a pool whose workers retire after N tasks hangs
    # for good once every worker has retired (a 47-ISBN run stopped at 2 x 20 = 40).
    pool = ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=get_context("spawn"))
    with single_threaded_blas(), progress, pool:
        task = progress.add_task("", total=len(jobs))
        futures = {pool.submit(_train_one, job): job[0] for job in jobs}
        for done, future in enumerate(as_completed(futures), 1):
            isbn = futures[future]
            try:
                candidate = future.result()
            except Exception as error:  # a worker crash (e.g. killed for memory) is that ISBN's failure
                candidate = Candidate(isbn=isbn, status="failed", reason=f"worker died: {error!r}")
            progress.update(task, advance=1, description=f"{isbn} {candidate.status}")
            log.info("trained %d/%d: %s %s", done, len(jobs), isbn, candidate.status,
                     extra={"isbn": isbn, "status": candidate.status, "seconds": round(candidate.seconds, 2),
                            "reason": candidate.reason, "progress": f"{done}/{len(jobs)}"})
            yield candidate


def train_and_register(request: dict, series: dict[str, dict], problems: dict[str, str]) -> list[dict]:
    """Refresh what the decisions said to refresh, tune the rest; gate, register and promote
    each ISBN as soon as it is ready, so champions appear while the run goes on."""
    from concurrent.futures import ThreadPoolExecutor

    from shared.runstore import RunStore

    cfg = settings_of(request)
    refreshes = {isbn: Refresh.model_validate(r) for isbn, r in (request.get("refreshes") or {}).items()}
    store = RunStore(cfg)
    results = [IsbnResult(isbn=i, status="refused", reason=r) for i, r in sorted(problems.items())]
    to_train = dict(series)
    shard = request.get("shard") or 0

    def reported(future) -> None:  # each ISBN's result on its shard as soon as it is registered
        if future.exception() is None:
            shards.report(store, request["run_id"], shard, future.result().model_dump())

    with ThreadPoolExecutor(REGISTRATION_THREADS, thread_name_prefix="register") as registrar:
        pending = []

        def register(*work) -> None:
            pending.append(registrar.submit(*work))
            pending[-1].add_done_callback(reported)

        for isbn in sorted(set(refreshes) & set(series)):
            refreshed = refresh_candidate(cfg, isbn, series[isbn], refreshes[isbn])
            if refreshed is not None:
                del to_train[isbn]
                register(register_refresh, cfg, store, request, refreshed, series[isbn], refreshes[isbn])
        for candidate in trained(cfg, to_train, request.get("shards", 1)):
            register(gate_and_register, cfg, store, request, candidate, series[candidate.isbn])
        results += [future.result() for future in pending]
    return [r.model_dump() for r in sorted(results, key=lambda r: r.isbn)]


def _lineage(request: dict, isbn: str, info: dict, train_window: tuple[str, str], holdout_weeks: int) -> dict:
    return {"isbn": isbn, "data_hash": info["data_hash"], "source_objects": ",".join(info["sources"])[:4000],
            "pipeline_run_id": request["run_id"], "zenml_run_id": request.get("zenml_run_id", ""),
            "code_version": request.get("code_version", "unknown"), "train_window_start": train_window[0],
            "train_window_end": train_window[1], "holdout_weeks": str(holdout_weeks),
            "correlation_id": request["correlation_id"]}


def gate_and_register(cfg: Settings, store, request: dict, candidate: Candidate, info: dict) -> IsbnResult:
    from shared import registry

    if candidate.status != "trained":
        return IsbnResult(isbn=candidate.isbn, status=candidate.status, reason=candidate.reason, seconds=candidate.seconds)
    result = _gate_and_register(cfg, store, request, candidate, info)
    return result.model_copy(update={"seconds": round(candidate.seconds, 3)})


def _gate_and_register(cfg: Settings, store, request: dict, candidate: Candidate, info: dict) -> IsbnResult:
    from shared import registry

    lineage = {**_lineage(request, candidate.isbn, info, candidate.train_window, candidate.holdout_weeks),
               Tags.FITTED_AT: datetime.now(timezone.utc).isoformat()}
    verdict = gate(candidate, cfg.gates)
    naive = candidate.fallbacks[BASELINE]["metrics"]
    metrics = {**candidate.metrics, **verdict.evidence, "cv_score": candidate.study["cv_score"],
               **{f"naive_{k}": v for k, v in naive.items() if k in ("mae", "rmse", "wape", "smape", "coverage_80", "coverage_95")},
               **{f"champion_{k}": v for k, v in candidate.champion_metrics.items() if k in ("mae", "mase")}}
    registration = registry.register(
        cfg, candidate.isbn, candidate.model, candidate.serving,
        params={**candidate.spec, "family": candidate.spec["kind"], "trials": cfg.training.trials,
                "holdout_weeks": candidate.holdout_weeks, "cv_metric": candidate.study["cv_metric"],
                "cv_folds_end": ",".join(candidate.study["validation_folds_end"])},
        metrics=metrics, study=candidate.study, plot_png=candidate.plot_png,
        tags={**lineage, "spec": json.dumps(candidate.spec), Tags.KIND: "candidate", "family": candidate.spec["kind"],
              "gate": "passed" if verdict.passed else "failed", "quarantined": str(not verdict.passed).lower(),
              "quarantine_reason": "; ".join(verdict.reasons)})
    if verdict.passed:  # champion at once, or challenger on trial when risky (shared/promotion.py)
        from shared import promotion

        reference = serving_forecast(candidate.champion_refit) if candidate.champion_refit else None
        outcome = promotion.after_gates(cfg, store, candidate.isbn, registration.version, candidate.spec["kind"],
                                        candidate.serving, reference, request["correlation_id"])
        reason = outcome.reason
        if outcome.status == "challenger":  # the champion serves on during the trial
            reason += refit_if_behind(cfg, store, request, candidate, info, registry.version_by_alias(cfg, candidate.isbn))
        return IsbnResult(isbn=candidate.isbn, status=outcome.status, version=registration.version,
                          mlflow_run_id=registration.run_id, reason=reason, metrics=_round(candidate.metrics))
    reason = "quarantined: " + "; ".join(verdict.reasons)
    champion = registry.version_by_alias(cfg, candidate.isbn)
    # The champion serves on when it is the best fallback on the backtests (or could not be
    # backtested: a version without a spec is not replaced by a guess).
    if champion is not None and (verdict.fallback == CHAMPION or CHAMPION not in candidate.backtests):
        reason += f"; the champion v{champion.version} serves on" + (f": {verdict.fallback_reason}" if verdict.fallback == CHAMPION else "")
        reason += refit_if_behind(cfg, store, request, candidate, info, champion)
        return IsbnResult(isbn=candidate.isbn, status="quarantined", version=registration.version,
                          mlflow_run_id=registration.run_id, reason=reason, metrics=_round(candidate.metrics))
    return register_fallback(cfg, store, request, candidate, lineage, verdict, reason, champion)


def register_fallback(cfg: Settings, store, request: dict, candidate: Candidate, lineage: dict, verdict,
                      reason: str, champion) -> IsbnResult:
    """Every ISBN with enough data must be servable: the robust fallback that did best on the
    backtests (seasonal naive or the plain combination) is registered and serves."""
    from shared import registry

    fallback = candidate.fallbacks[verdict.fallback]
    spec = fallback["model"]["spec"]
    family = spec["kind"]
    evidence = gates.backtest_evidence(candidate.backtest(verdict.fallback), candidate.backtest(BASELINE), cfg.gates)
    registration = registry.register(
        cfg, candidate.isbn, fallback["model"], serving_forecast(fallback["model"]),
        params={"kind": family, "family": family}, metrics={**fallback["metrics"], **evidence},
        tags={**lineage, "spec": json.dumps(spec), Tags.KIND: "baseline", "family": family,
              "baseline": "true", "gate": "baseline", "quarantined": "false"})
    replaces = f"it replaces the champion v{champion.version}" if champion is not None else "no champion existed"
    registry.move_alias(cfg, store, candidate.isbn, registration.version, "baseline",
                        f"no candidate passed and {replaces}: {verdict.fallback_reason} "
                        f"(refused: {'; '.join(verdict.reasons)})", "training", request["correlation_id"])
    label = ModelSpec.from_dict(spec).label()
    return IsbnResult(isbn=candidate.isbn, status="baseline", version=registration.version,
                      mlflow_run_id=registration.run_id,
                      reason=f"{reason}; {label} v{registration.version} serves: {verdict.fallback_reason}",
                      metrics=_round(fallback["metrics"]))  # what serves is the fallback: its metrics


def refit_if_behind(cfg: Settings, store, request: dict, candidate: Candidate, info: dict, champion) -> str:
    """For a champion that serves on (the candidate lost, or is on trial as challenger): if
    its data is behind or its parameters are past the age limit, re-estimate it on the
    decided series, so its forecast starts after the newest week and the next decision does
    not retrain it again for its data or its parameters' age. What was done, for the reason."""
    created = datetime.fromtimestamp(int(champion.creation_timestamp) / 1000, timezone.utc)
    behind = (champion.tags.get(Tags.DATA_HASH) != info["data_hash"]
              or parameter_age_days(champion.tags, created, datetime.now(timezone.utc)) > cfg.decision.max_model_age_days)
    if not (candidate.champion_refit and behind):
        return ""
    refit = register_refit(cfg, store, request, candidate, info, champion)
    return f"; champion v{champion.version} re-estimated on the new data as v{refit}"


def register_refit(cfg: Settings, store, request: dict, candidate: Candidate, info: dict, champion) -> str:
    """Register the champion's structure re-estimated on all the decided data and serve it."""
    from shared import registry

    carried = {k: champion.tags[k] for k in ("family", "spec", "baseline") if k in champion.tags}
    registration = registry.register(
        cfg, candidate.isbn, candidate.champion_refit, serving_forecast(candidate.champion_refit),
        params={"kind": REFIT, "refits": champion.version, "family": carried.get("family", "")},
        metrics=candidate.champion_metrics,
        tags={**_lineage(request, candidate.isbn, info, candidate.train_window, candidate.holdout_weeks), **carried,
              Tags.KIND: REFIT, Tags.REFRESHES: champion.version, Tags.FITTED_AT: datetime.now(timezone.utc).isoformat(),
              "quarantined": "false"})
    registry.move_alias(cfg, store, candidate.isbn, registration.version, REFIT,
                        f"the candidate lost to v{champion.version}, whose structure is re-estimated on the new data",
                        "training", request["correlation_id"])
    return registration.version


def refresh_candidate(cfg: Settings, isbn: str, info: dict, refresh: Refresh) -> Candidate | None:
    """The served version's fitted model conditioned on the decided series, or None (with
    the reason logged) when that is impossible and the ISBN must be re-tuned instead."""
    from shared import registry
    from shared.forecasting import models
    from shared.forecasting.models import FittedModel

    started = time.process_time()
    try:
        version = registry.client(cfg).get_model_version(cfg.model_name(isbn), refresh.version)
        fitted = FittedModel.from_dict(registry.fitted_model(cfg, version.run_id))
        weeks = [date.fromisoformat(w) for w in info["weeks"]]
        if weeks[0] != fitted.start:
            raise ValueError(f"the series now starts {weeks[0]}, the model's data started {fitted.start}")
        model = models.refresh(fitted, info["units"]).to_dict()
        serving = serving_forecast(model)  # a refreshed model that cannot forecast is re-tuned instead
    except Exception as error:  # noqa: BLE001 - any failure means: re-tune this ISBN instead
        log.warning("cannot refresh %s v%s, re-tuning it: %s", isbn, refresh.version, error, extra={"isbn": isbn})
        return None
    return Candidate(isbn=isbn, status="refreshed", spec=model["spec"], model=model, serving=serving,
                     metrics=gates.metrics_from_tags(version.tags) or {},
                     reason=f"refreshed v{refresh.version} with {len(weeks) - fitted.n_obs} new week(s)",
                     train_window=(version.tags.get("train_window_start", ""), version.tags.get("train_window_end", "")),
                     holdout_weeks=int(version.tags.get("holdout_weeks", 0)),
                     study={"refreshed_from": refresh.version, "tags": version.tags},
                     seconds=time.process_time() - started)


def register_refresh(cfg: Settings, store, request: dict, candidate: Candidate, info: dict,
                     refresh: Refresh) -> IsbnResult:
    """A refresh is the served model with new weeks filtered in: no new estimate to gate, so
    it is registered as a new version (kind refresh, lineage to the version it refreshes)
    and served at once."""
    from shared import registry

    previous = candidate.study["tags"]
    carried = {k: previous[k] for k in ("family", "spec", Tags.FITTED_AT, "baseline") if k in previous}
    registration = registry.register(
        cfg, candidate.isbn, candidate.model, candidate.serving,
        params={"kind": "refresh", "refreshes": refresh.version, "family": previous.get("family", "")},
        metrics=candidate.metrics,
        tags={**_lineage(request, candidate.isbn, info, candidate.train_window, candidate.holdout_weeks), **carried,
              Tags.KIND: "refresh", Tags.REFRESHES: refresh.version, Tags.UNSEEN_WEEKS: str(refresh.unseen_weeks),
              Tags.UNSEEN_ABS_ERROR: f"{refresh.unseen_abs_error:.6g}", "quarantined": "false"})
    registry.move_alias(cfg, store, candidate.isbn, registration.version, "refresh", candidate.reason, "training",
                        request["correlation_id"])
    status = "baseline" if previous.get("baseline") == "true" else "promoted"
    return IsbnResult(isbn=candidate.isbn, status=status, version=registration.version,
                      mlflow_run_id=registration.run_id, reason=candidate.reason, metrics=_round(candidate.metrics),
                      seconds=round(candidate.seconds, 3))


def _round(metrics: dict) -> dict:
    return {k: round(float(v), 4) for k, v in metrics.items()}


def record_and_publish(request: dict, results: list[dict]) -> dict:
    """The shard's results into its shard document; the run is closed by its last shard."""
    from shared.runstore import RunStore

    cfg = settings_of(request)
    job = TrainingJob.model_validate({k: v for k, v in request.items() if k != "zenml_run_id"})  # a step's addition
    status = shards.run_status([], [r["status"] for r in results])
    servable = sum(r["status"] in shards.SERVABLE for r in results)
    store = RunStore(cfg)
    if shards.close(cfg, store, shards.ShardRef.of_job(job), status, results,
                    f"{servable} of {len(results)} servable", zenml_run_id=request.get("zenml_run_id", "")):
        report.log_run_report(cfg, store, job.run_id)  # the run closed: its report covers every shard's ISBNs
    return {"status": status, "results": results, "finished_at": datetime.now(timezone.utc).isoformat()}
