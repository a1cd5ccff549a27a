"""The training job request, and the decided series it trains on.

A job trains on exactly the series its decision saw: trigger_training writes each leased
ISBN's merged series into immutable snapshot documents (in the same transaction as the
decision), and the request names those documents and each series' ``data_hash``. The job
never re-reads uploads, so an object overwritten or deleted since cannot fail it, and the
hash it tags the model with is the hash the next decision compares against.
"""
from __future__ import annotations

import subprocess
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared import sales
from shared.config import Settings
from shared.layout import Collection

# ISBNs per snapshot document: at most ~2,900 weeks each (sales.FIRST_WEEK), ~25 KB as
# Firestore stores them, so a document stays far below 1 MiB.
SNAPSHOT_ISBNS = 8


class DecidedSeries(BaseModel):
    """One ISBN's consecutive weekly series from ``start``, as it was decided."""
    model_config = ConfigDict(extra="forbid", frozen=True)
    start: date
    units: list[int]
    data_hash: str
    sources: list[str] = []

    @classmethod
    def of(cls, weeks: dict[str, int], sources: list[str]) -> "DecidedSeries":
        ordered = sorted(weeks)
        if sales.missing_weeks([date.fromisoformat(w) for w in ordered]):
            raise ValueError("a decided series has no gaps: its units are stored by position from its start")
        return cls(start=date.fromisoformat(ordered[0]), units=[int(weeks[w]) for w in ordered],
                   data_hash=sales.series_hash(weeks), sources=sources)

    def weeks(self) -> dict[str, int]:
        return {(self.start + timedelta(weeks=i)).isoformat(): u for i, u in enumerate(self.units)}


class Refresh(BaseModel):
    """Refresh an ISBN's served version on its decided series instead of re-tuning it."""
    model_config = ConfigDict(extra="forbid")
    version: str
    unseen_weeks: int = 0           # error totals on weeks the parameters never saw, carried on
    unseen_abs_error: float = 0.0


class TrainingJob(BaseModel):
    """Everything a training job needs, as JSON: it travels in a file or a Vertex argument,
    so it holds references, not data."""
    model_config = ConfigDict(extra="forbid")
    run_id: str = Field(min_length=1)
    correlation_id: str = Field(min_length=1)
    cause: dict[str, Any]
    launcher: Literal["local", "vertex"]
    attempt: int = Field(1, ge=1)
    code_version: str
    data_hashes: dict[str, str] = Field(description="per ISBN, the hash of the series that was decided")
    snapshot: list[str] = Field(description="the snapshot documents holding those series")
    refreshes: dict[str, Refresh] = Field(default_factory=dict, description="ISBNs to refresh rather than retrain")
    settings: dict[str, Any]
    shards: int = Field(1, ge=1, description="workers the run is split into (shared/lifecycle/shards.py)")
    shard: int | None = Field(None, ge=0, description="set on the part one worker trains")

    @property
    def isbns(self) -> list[str]:
        return sorted(self.data_hashes)

    def for_shard(self, index: int, isbns: list[str]) -> "TrainingJob":
        """The part of the run one worker trains: its ISBNs, their hashes and refreshes."""
        mine = set(isbns)
        return self.model_copy(update={"shard": index, "data_hashes": {i: h for i, h in self.data_hashes.items() if i in mine},
                                       "refreshes": {i: r for i, r in self.refreshes.items() if i in mine}})


def settings_snapshot(cfg: Settings) -> dict[str, Any]:
    """The launching process's settings for the job; secrets are excluded by their fields."""
    return cfg.model_dump(mode="json")


def snapshot_id(run_id: str, part: int) -> str:
    return f"{run_id}-s{part:04d}"


def snapshot_document(run_id: str, series: dict[str, DecidedSeries]) -> dict[str, Any]:
    """The series packed into one value (runstore.pack): a catalogue's snapshots are written
    in its decisions' transactions, where encoding every week separately cost seconds."""
    from shared.runstore import pack

    return {"run_id": run_id, "isbns": sorted(series),
            "packed": pack({isbn: s.model_dump(mode="json") for isbn, s in series.items()})}


def snapshot_series(document: dict) -> dict[str, dict]:
    from shared.runstore import unpack

    return unpack(document["packed"]) if document.get("packed") else {}


def write_snapshot(store, run_id: str, series: dict[str, DecidedSeries]) -> list[str]:
    """Store series for a run outside a decision (the CLI, a file given by hand)."""
    isbns = sorted(series)
    ids = []
    for part, start in enumerate(range(0, len(isbns), SNAPSHOT_ISBNS)):
        chunk = {i: series[i] for i in isbns[start:start + SNAPSHOT_ISBNS]}
        ids.append(snapshot_id(run_id, part))
        store.col(Collection.SNAPSHOTS).document(ids[-1]).create(snapshot_document(run_id, chunk))
    return ids


SNAPSHOT_BATCH = 100  # documents per batched read: each holds up to a group's packed series


def read_snapshot(store, job: TrainingJob) -> dict[str, dict]:
    """The stored series of the job's ISBNs (a shard's among a catalogue's), as stored."""
    wanted = set(job.data_hashes)
    return {isbn: series for document in store.read_batched(Collection.SNAPSHOTS, job.snapshot, batch=SNAPSHOT_BATCH).values()
            for isbn, series in snapshot_series(document).items() if isbn in wanted}


def verify(job: TrainingJob, stored: dict[str, dict]) -> tuple[dict[str, DecidedSeries], dict[str, str]]:
    """The job's series, each checked against the hash it was decided with; per-ISBN
    refusals for any that is missing or does not match."""
    series, refusals = {}, {}
    for isbn, expected in job.data_hashes.items():
        decided = DecidedSeries.model_validate(stored[isbn]) if isbn in stored else None
        if decided is None:
            refusals[isbn] = "its decided series is missing from the run's snapshot"
        elif not (decided.data_hash == expected == sales.series_hash(decided.weeks())):
            refusals[isbn] = f"its snapshot does not hash to the decided {expected[:12]}: not trained on other data"
        else:
            series[isbn] = decided
    return series, refusals


def code_version(cfg: Settings) -> str:
    """The deployed version (BOOKCAST_CODE_VERSION, set by the deploy); in a checkout, git's."""
    if cfg.code_version != "dev":
        return cfg.code_version
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=5).stdout.strip() or cfg.code_version
    except (OSError, subprocess.SubprocessError):
        return cfg.code_version


def training_job(cfg: Settings, run_id: str, data_hashes: dict[str, str], snapshot: list[str],
                 correlation_id: str, cause: dict, launcher: str, attempt: int = 1,
                 refreshes: dict[str, dict] | None = None, shards: int = 1) -> TrainingJob:
    # A retried run re-tunes: whatever made the first attempt fail may have been the refresh.
    return TrainingJob(run_id=run_id, correlation_id=correlation_id, cause=cause, launcher=launcher, attempt=attempt,
                       code_version=code_version(cfg), data_hashes=data_hashes, snapshot=snapshot,
                       refreshes=(refreshes or {}) if attempt == 1 else {}, settings=settings_snapshot(cfg),
                       shards=shards)


def decided_from_files(paths: list[str], rules: sales.UploadRules) -> tuple[dict[str, DecidedSeries], dict[str, str]]:
    """Series from local files given by hand, merged by the one merge rule with later files
    as newer uploads; per-ISBN problems for series with gaps. A rejected file raises."""
    from pathlib import Path

    uploads = [(f"file-{position:06d}", sales.parse_upload(f"{rules.prefix}{Path(p).name}", Path(p).read_bytes(), rules))
               for position, p in enumerate(paths)]
    return decided({isbn: (merged.weeks, [str(Path(p).resolve()) for p, (_, rows) in zip(paths, uploads)
                                          if isbn in set(rows["isbn"])])
                    for isbn, merged in sales.merge_uploads(uploads).items()})


def decided(weeks_and_sources: dict[str, tuple[dict[str, int], list[str]]]) -> tuple[dict[str, DecidedSeries],
                                                                                      dict[str, str]]:
    """Per ISBN its DecidedSeries, or the problem that keeps it from being trained."""
    series, problems = {}, {}
    for isbn, (weeks, sources) in weeks_and_sources.items():
        try:
            series[isbn] = DecidedSeries.of(weeks, sources)
        except ValueError:
            problems[isbn] = "series has missing weeks: send those weeks to train"
    return series, problems


def prepare_run(cfg: Settings, store, series: dict[str, DecidedSeries], cause: dict, correlation_id: str,
                launcher: str) -> TrainingJob:
    """A run for series decided by hand (`bookcast train`): snapshot, run record, one shard
    (trained here, in the foreground), request."""
    from shared.lifecycle import shards

    run_id = store.create_run(sorted(series), cause, correlation_id, launcher,
                              data_hashes={i: s.data_hash for i, s in series.items()})
    snapshot = write_snapshot(store, run_id, series)
    store.update_run(run_id, snapshot=snapshot)
    shards.create(store, run_id, [sorted(series)], attempt=1, leased=False)
    return training_job(cfg, run_id, {i: s.data_hash for i, s in series.items()}, snapshot, correlation_id, cause,
                        launcher)
