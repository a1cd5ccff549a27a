"""Every state a recorded thing can be in, named once. They are StrEnums: stored in
Firestore, tagged in MLflow and carried in events as their plain string values, and a value
read back compares equal to its member, so documents written before this module read the
same."""
from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    """A training run's and each of its shards' (runs/{id}, shards/{id})."""
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    QUARANTINED = "quarantined"
    CANCELLED = "cancelled"


TERMINAL_RUN = frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.QUARANTINED, RunStatus.CANCELLED})
ENDED_WELL = frozenset({RunStatus.SUCCEEDED, RunStatus.QUARANTINED})  # ended with no error to report


class RunEvent(StrEnum):
    """What a training.status event says of a run or shard: its status, or that a worker
    started it."""
    QUEUED = RunStatus.QUEUED.value
    STARTED = "started"
    SUCCEEDED = RunStatus.SUCCEEDED.value
    FAILED = RunStatus.FAILED.value
    QUARANTINED = RunStatus.QUARANTINED.value
    CANCELLED = RunStatus.CANCELLED.value


class IsbnStatus(StrEnum):
    """What training did with one ISBN (a shard's per-ISBN result)."""
    PROMOTED = "promoted"        # its candidate serves
    CHALLENGER = "challenger"    # passed the gates but risky: on trial while the champion serves
    BASELINE = "baseline"        # a fallback serves: the candidate was refused or could not be trained
    QUARANTINED = "quarantined"  # registered, serves nowhere
    REFUSED = "refused"          # its data was refused before training
    FAILED = "failed"            # training raised


class TrainStatus(StrEnum):
    """A candidate's state inside a training worker, before it is gated and registered."""
    TRAINED = "trained"
    REFRESHED = "refreshed"
    REFUSED = IsbnStatus.REFUSED.value
    FAILED = IsbnStatus.FAILED.value


SERVABLE = frozenset({IsbnStatus.PROMOTED, IsbnStatus.BASELINE, IsbnStatus.CHALLENGER})  # something serves it
UNTRAINED = frozenset({IsbnStatus.FAILED, IsbnStatus.REFUSED})  # nothing was registered


class CauseStatus(StrEnum):
    """An upload's, tick's or request's cause (causes/{key})."""
    DECIDING = "deciding"    # groups still being decided
    ACCEPTED = "accepted"    # decided: a run, or nothing to train
    REJECTED = "rejected"    # the upload was refused as a whole


class TriggerOutcome(StrEnum):
    """What one delivery to trigger_training came to."""
    ACCEPTED = CauseStatus.ACCEPTED.value
    REJECTED = CauseStatus.REJECTED.value
    DUPLICATE = "duplicate"
    CONTINUED = "continued"  # stopped at its budget, published again to go on


class ShardRetry(StrEnum):
    """A failed shard's retry (shards/{id}.retry)."""
    PENDING = "pending"
    DONE = "done"
    EXHAUSTED = "exhausted"


class TrialStatus(StrEnum):
    """A challenger's trial (challenges/{isbn})."""
    ON_TRIAL = "on_trial"
    SETTLING = "settling"    # one process is promoting or retiring it right now
    PROMOTED = "promoted"
    RETIRED = "retired"


class ApprovalStatus(StrEnum):
    """A risky promotion waiting for a person (approvals/{isbn}-{version})."""
    PENDING = "pending"
    DECIDING = "deciding"    # someone is acting on it right now
    APPROVED = "approved"
    REJECTED = "rejected"
    WITHDRAWN = "withdrawn"  # the trial ended first
    FAILED = "failed"        # approved, but the version failed validation as champion


class RollbackStatus(StrEnum):
    """One ISBN's part of a rollback."""
    ROLLED_BACK = "rolled_back"
    UNCHANGED = "unchanged"
    FAILED = "failed"


class ReleaseStatus(StrEnum):
    """One ISBN's part of a release promotion (shared/release.py)."""
    SERVING = "serving"
    WAITING = "waiting for approval"
    IMPORTED_ALREADY = "imported already"
    FAILED = "failed"


class HealthStatus(StrEnum):
    """What a function's /health answers."""
    OK = "ok"


class AliasMove(StrEnum):
    """Why an alias moved (alias_history, model.changed events)."""
    PROMOTE = "promote"
    ROLLBACK = "rollback"
    BASELINE = "baseline"    # a fallback serves
    REFRESH = "refresh"
    REFIT = "refit"
    REVERT = "revert"        # undoes a move whose version failed validation
    CHALLENGE = "challenge"  # a risky candidate goes on trial
    RETIRE = "retire"        # a challenger's trial ended without it


class FleetState(StrEnum):
    """One ISBN's state on the dashboard's fleet page: the first that applies, most urgent first."""
    TRAINING = "training"
    UNSERVED = "unserved"
    DEGRADED = "degraded"
    QUARANTINED = "quarantined"
    STALE = "stale"
    BASELINE = "baseline"
    HEALTHY = "healthy"
