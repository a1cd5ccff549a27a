"""The training pipeline's steps as plain functions; shared/training/pipeline.py wraps each
in a ZenML step. Keeping them plain lets the launcher, the CLI and tests call the same code.
"""
from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from datetime import date, datetime, timezone
from multiprocessing import get_context
from typing import TYPE_CHECKING

from shared.config import Settings
from shared.decisions import parameter_age_days
from shared.events import IsbnResult
from shared.forecasting import gates
from shared.forecasting.models import BASELINE, ModelSpec
from shared.jobs import DecidedSeries, Refresh, TrainingJob, read_snapshot, verify
from shared.lifecycle import shards
from shared.logs import get_logger
from shared.states import SERVABLE, AliasMove, IsbnStatus, TrainStatus
from shared.training import report
from shared.training.per_isbn import CHAMPION, Candidate, gate, serving_forecast, train_isbn
from shared.version_tags import Gate, Tag, VersionKind, VersionTags, contract

if TYPE_CHECKING:
    from shared.runstore import RunStore

log = get_logger(__name__)
ACTOR = "training"  # who moves aliases from here, in alias history


@dataclass(frozen=True)
class JobContext:
    """One worker's job, validated once, with the settings and store every step uses."""
    job: TrainingJob
    cfg: Settings
    store: RunStore
    zenml_run_id: str = ""

    @property
    def shard(self) -> int:
        return self.job.shard or 0


_contexts: dict[tuple, JobContext] = {}


def _key(job: dict) -> tuple:
    return job["run_id"], job.get("shard"), job.get("attempt", 1)


def bind_job(job: TrainingJob) -> JobContext:
    """This worker's context for ``job``, replacing any one of the same run, shard and attempt."""
    from shared.runstore import RunStore

    cfg = Settings.from_snapshot(job.settings)
    context = _contexts[_key(job.model_dump(include={"run_id", "shard", "attempt"}))] = JobContext(
        job=job, cfg=cfg, store=RunStore(cfg))
    return context


def job_context(request: dict, zenml_run_id: str = "") -> JobContext:
    """The context the worker bound to the job each ZenML step is handed as JSON (built
    from it, once, when a step runs in a process of its own)."""
    context = _contexts.get(_key(request)) or bind_job(TrainingJob.model_validate(request))
    return replace(context, zenml_run_id=zenml_run_id) if zenml_run_id else context


# --- load, validate, preprocess: the decided series, exactly ----------------------------------
def load(request: dict) -> dict[str, dict]:
    """The series the run's decisions saw, from the snapshot the request names."""
    context = job_context(request)
    stored = read_snapshot(context.store, context.job)
    log.info("loaded %d decided series from %d snapshot document(s)", len(stored), len(context.job.snapshot),
             extra={"run_id": context.job.run_id})
    return stored


def validate(request: dict, stored: dict[str, dict]) -> tuple[dict[str, dict], dict[str, str]]:
    """The series whose content still hashes to what was decided, and per-ISBN refusals."""
    series, refusals = verify(job_context(request).job, stored)
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
                candidate = Candidate(isbn=isbn, status=TrainStatus.FAILED, reason=f"worker died: {error!r}")
            progress.update(task, advance=1, description=f"{isbn} {candidate.status}")
            log.info("trained %d/%d: %s %s", done, len(jobs), isbn, candidate.status,
                     extra={"isbn": isbn, "status": candidate.status, "seconds": round(candidate.seconds, 2),
                            "reason": candidate.reason, "progress": f"{done}/{len(jobs)}"})
            yield candidate


def train_and_register(request: dict, series: dict[str, dict], problems: dict[str, str],
                       zenml_run_id: str = "") -> list[dict]:
    """Refresh what the decisions said to refresh, tune the rest; gate, register and promote
    each ISBN as soon as it is ready, so champions appear while the run goes on."""
    from concurrent.futures import ThreadPoolExecutor

    context = job_context(request, zenml_run_id)
    cfg, job = context.cfg, context.job
    results = [IsbnResult(isbn=i, status=IsbnStatus.REFUSED, reason=r) for i, r in sorted(problems.items())]
    to_train = dict(series)

    def reported(future) -> None:  # each ISBN's result on its shard as soon as it is registered
        if future.exception() is None:
            shards.report(context.store, job.run_id, context.shard, future.result().model_dump())

    with ThreadPoolExecutor(REGISTRATION_THREADS, thread_name_prefix="register") as registrar:
        pending = []

        def register(*work) -> None:
            pending.append(registrar.submit(*work))
            pending[-1].add_done_callback(reported)

        for isbn in sorted(set(job.refreshes) & set(series)):
            refreshed = refresh_candidate(cfg, isbn, series[isbn], job.refreshes[isbn])
            if refreshed is not None:
                del to_train[isbn]
                register(register_refresh, context, refreshed, series[isbn], job.refreshes[isbn])
        for candidate in trained(cfg, to_train, job.shards):
            register(gate_and_register, context, candidate, series[candidate.isbn])
        results += [future.result() for future in pending]
    return [r.model_dump() for r in sorted(results, key=lambda r: r.isbn)]


def register_version(context: JobContext, kind: VersionKind, candidate: Candidate, info: dict, *, model: dict,
                     family: str, spec: dict | str | None, baseline: bool, metrics: dict, params: dict,
                     alias_move: AliasMove | None = None, reason: str = "", quarantined: bool = False,
                     gate: Gate | None = None, study: dict | None = None, plot_png: bytes = b"",
                     **tags: str):
    """Register one version of the ISBN's model under the tag contract (shared/version_tags.py):
    its kind, family, spec and flags, the run's lineage, and ``tags`` (each a Tag's name);
    with ``alias_move``, serve it at once. Returns the registration."""
    from shared import registry

    job = context.job
    lineage = {Tag.ISBN: candidate.isbn, Tag.DATA_HASH: info["data_hash"],
               Tag.SOURCE_OBJECTS: ",".join(info["sources"])[:4000], Tag.PIPELINE_RUN_ID: job.run_id,
               Tag.ZENML_RUN_ID: context.zenml_run_id, Tag.CODE_VERSION: job.code_version,
               Tag.TRAIN_WINDOW_START: candidate.train_window[0], Tag.TRAIN_WINDOW_END: candidate.train_window[1],
               Tag.HOLDOUT_WEEKS: str(candidate.holdout_weeks), Tag.CORRELATION_ID: job.correlation_id}
    if kind != VersionKind.REFRESH:  # a refresh keeps its parameters' age: it estimated nothing
        lineage[Tag.FITTED_AT] = datetime.now(timezone.utc).isoformat()
    registration = registry.register(
        context.cfg, candidate.isbn, model,
        candidate.serving if model is candidate.model else serving_forecast(model),  # a fallback or refit: its own
        params={Tag.KIND: kind, Tag.FAMILY: family, **params}, metrics=metrics, study=study, plot_png=plot_png,
        tags=contract(kind, family=family, spec=spec, baseline=baseline, quarantined=quarantined, gate=gate,
                      **{**lineage, **tags}))
    if alias_move is not None:
        registry.move_alias(context.cfg, context.store, candidate.isbn, registration.version, alias_move, reason, ACTOR,
                            job.correlation_id)
    return registration


def gate_and_register(context: JobContext, candidate: Candidate, info: dict) -> IsbnResult:
    if candidate.status != TrainStatus.TRAINED:
        return IsbnResult(isbn=candidate.isbn, status=candidate.status, reason=candidate.reason, seconds=candidate.seconds)
    result = _gate_and_register(context, candidate, info)
    return result.model_copy(update={"seconds": round(candidate.seconds, 3)})


def _gate_and_register(context: JobContext, candidate: Candidate, info: dict) -> IsbnResult:
    from shared import registry

    cfg = context.cfg
    verdict = gate(candidate, cfg.gates)
    naive = candidate.fallbacks[BASELINE]["metrics"]
    metrics = {**candidate.metrics, **verdict.evidence, "cv_score": candidate.study["cv_score"],
               **{f"naive_{k}": v for k, v in naive.items() if k in ("mae", "rmse", "wape", "smape", "coverage_80", "coverage_95")},
               **{f"champion_{k}": v for k, v in candidate.champion_metrics.items() if k in ("mae", "mase")}}
    registration = register_version(
        context, VersionKind.CANDIDATE, candidate, info, model=candidate.model, family=candidate.spec["kind"],
        spec=candidate.spec, baseline=False, quarantined=not verdict.passed,
        gate=Gate.PASSED if verdict.passed else Gate.FAILED, metrics=metrics, study=candidate.study,
        plot_png=candidate.plot_png,
        params={**candidate.spec, "trials": cfg.training.trials, "holdout_weeks": candidate.holdout_weeks,
                "cv_metric": candidate.study["cv_metric"], "cv_folds_end": ",".join(candidate.study["validation_folds_end"])},
        quarantine_reason="; ".join(verdict.reasons))
    if verdict.passed:  # champion at once, or challenger on trial when risky (shared/promotion.py)
        from shared import promotion

        reference = serving_forecast(candidate.champion_refit) if candidate.champion_refit else None
        outcome = promotion.after_gates(cfg, context.store, candidate.isbn, registration.version, candidate.spec["kind"],
                                        candidate.serving, reference, context.job.correlation_id)
        reason = outcome.reason
        if outcome.status == IsbnStatus.CHALLENGER:  # the champion serves on during the trial
            reason += refit_if_behind(context, candidate, info, registry.version_by_alias(cfg, candidate.isbn))
        return IsbnResult(isbn=candidate.isbn, status=outcome.status, version=registration.version,
                          mlflow_run_id=registration.run_id, reason=reason, metrics=_round(candidate.metrics))
    reason = "quarantined: " + "; ".join(verdict.reasons)
    champion = registry.version_by_alias(cfg, candidate.isbn)
    # The champion serves on when it is the best fallback on the backtests (or could not be
    # backtested: a version without a spec is not replaced by a guess).
    if champion is not None and (verdict.fallback == CHAMPION or CHAMPION not in candidate.backtests):
        reason += f"; the champion v{champion.version} serves on" + (f": {verdict.fallback_reason}" if verdict.fallback == CHAMPION else "")
        reason += refit_if_behind(context, candidate, info, champion)
        return IsbnResult(isbn=candidate.isbn, status=IsbnStatus.QUARANTINED, version=registration.version,
                          mlflow_run_id=registration.run_id, reason=reason, metrics=_round(candidate.metrics))
    return register_fallback(context, candidate, info, verdict, reason, champion)


def register_fallback(context: JobContext, candidate: Candidate, info: dict, verdict, reason: str,
                      champion) -> IsbnResult:
    """Every ISBN with enough data must be servable: the robust fallback that did best on the
    backtests (seasonal naive or the plain combination) is registered and serves."""
    fallback = candidate.fallbacks[verdict.fallback]
    spec = fallback["model"]["spec"]
    evidence = gates.backtest_evidence(candidate.backtest(verdict.fallback), candidate.backtest(BASELINE),
                                       context.cfg.gates)
    replaces = f"it replaces the champion v{champion.version}" if champion is not None else "no champion existed"
    registration = register_version(
        context, VersionKind.BASELINE, candidate, info, model=fallback["model"], family=spec["kind"], spec=spec,
        baseline=True, gate=Gate.BASELINE, metrics={**fallback["metrics"], **evidence}, params={},
        alias_move=AliasMove.BASELINE,
        reason=f"no candidate passed and {replaces}: {verdict.fallback_reason} (refused: {'; '.join(verdict.reasons)})")
    label = ModelSpec.from_dict(spec).label()
    return IsbnResult(isbn=candidate.isbn, status=IsbnStatus.BASELINE, version=registration.version,
                      mlflow_run_id=registration.run_id,
                      reason=f"{reason}; {label} v{registration.version} serves: {verdict.fallback_reason}",
                      metrics=_round(fallback["metrics"]))  # what serves is the fallback: its metrics


def refit_if_behind(context: JobContext, candidate: Candidate, info: dict, champion) -> str:
    """For a champion that serves on (the candidate lost, or is on trial as challenger): if
    its data is behind or its parameters are past the age limit, re-estimate it on the
    decided series, so its forecast starts after the newest week and the next decision does
    not retrain it again for its data or its parameters' age. What was done, for the reason."""
    created = datetime.fromtimestamp(int(champion.creation_timestamp) / 1000, timezone.utc)
    behind = (VersionTags(champion.tags).data_hash != info["data_hash"]
              or parameter_age_days(champion.tags, created, datetime.now(timezone.utc))
              > context.cfg.decision.max_model_age_days)
    if not (candidate.champion_refit and behind):
        return ""
    refit = register_refit(context, candidate, info, champion)
    return f"; champion v{champion.version} re-estimated on the new data as v{refit}"


def register_refit(context: JobContext, candidate: Candidate, info: dict, champion) -> str:
    """Register the champion's structure re-estimated on all the decided data and serve it."""
    carried = VersionTags(champion.tags)
    registration = register_version(
        context, VersionKind.REFIT, candidate, info, model=candidate.champion_refit, family=carried.family,
        spec=carried.get(Tag.SPEC) or None, baseline=carried.is_baseline, metrics=candidate.champion_metrics,
        params={"refits": champion.version}, alias_move=AliasMove.REFIT,
        reason=f"the candidate lost to v{champion.version}, whose structure is re-estimated on the new data",
        refreshes=champion.version)
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
    tags = VersionTags(version.tags)
    return Candidate(isbn=isbn, status=TrainStatus.REFRESHED, spec=model["spec"], model=model, serving=serving,
                     metrics=gates.metrics_from_tags(version.tags) or {}, reason=f"refreshed v{refresh.version} with {len(weeks) - fitted.n_obs} new week(s)",
                     train_window=(tags.get(Tag.TRAIN_WINDOW_START), tags.get(Tag.TRAIN_WINDOW_END)),
                     holdout_weeks=int(tags.get(Tag.HOLDOUT_WEEKS, "0")),
                     study={"refreshed_from": refresh.version, "tags": version.tags},
                     seconds=time.process_time() - started)


def register_refresh(context: JobContext, candidate: Candidate, info: dict, refresh: Refresh) -> IsbnResult:
    """A refresh is the served model with new weeks filtered in: no new estimate to gate, so
    it is registered as a new version (kind refresh, lineage to the version it refreshes)
    and served at once; its parameters keep the age of the version it refreshes."""
    previous = VersionTags(candidate.study["tags"])
    registration = register_version(
        context, VersionKind.REFRESH, candidate, info, model=candidate.model, family=previous.family,
        spec=previous.get(Tag.SPEC) or None, baseline=previous.is_baseline, metrics=candidate.metrics,
        params={Tag.REFRESHES: refresh.version}, alias_move=AliasMove.REFRESH, reason=candidate.reason,
        refreshes=refresh.version, unseen_weeks=str(refresh.unseen_weeks),
        unseen_abs_error=f"{refresh.unseen_abs_error:.6g}",
        **({Tag.FITTED_AT: previous.get(Tag.FITTED_AT)} if previous.get(Tag.FITTED_AT) else {}))
    status = IsbnStatus.BASELINE if previous.is_baseline else IsbnStatus.PROMOTED
    return IsbnResult(isbn=candidate.isbn, status=status, version=registration.version,
                      mlflow_run_id=registration.run_id, reason=candidate.reason, metrics=_round(candidate.metrics),
                      seconds=round(candidate.seconds, 3))


def _round(metrics: dict) -> dict:
    return {k: round(float(v), 4) for k, v in metrics.items()}


def record_and_publish(request: dict, results: list[dict], zenml_run_id: str = "") -> dict:
    """The shard's results into its shard document; the run is closed by its last shard."""
    context = job_context(request, zenml_run_id)
    status = shards.run_status([], [r["status"] for r in results])
    servable = sum(r["status"] in SERVABLE for r in results)
    if shards.close(context.cfg, context.store, shards.ShardRef.of_job(context.job), status, results,
                    f"{servable} of {len(results)} servable", zenml_run_id=zenml_run_id):
        report.log_run_report(context.cfg, context.store, context.job.run_id)  # the run closed: every shard's ISBNs
    return {"status": status, "results": results, "finished_at": datetime.now(timezone.utc).isoformat()}
