"""The Firestore layout: every collection, named once, and the shape of its documents.
Nothing here depends on ZenML or MLflow being intact: this is the durable history.

Each name carries the configured prefix (``Settings.collection``). Large per-ISBN values are
stored packed (``runstore.pack``: zlib-compressed JSON bytes), so no document nears 1 MiB.

  runs/{run_id}               run_id, status (states.RunStatus), isbns (packed), cause, correlation_id,
                              launcher, attempt, parts, shards, snapshot, launch, counts,
                              created_at, started_at, updated_at, finished_at, error, retry_of[_shard]
  run_parts/{run_id}-pNNNN    run_id and, for its 1,000 ISBNs: data_hashes, decisions, refreshes
  shards/{run_id}-kNNN        run_id, index, count, isbns, status (RunStatus), attempt, results
                              {isbn: events.IsbnResult}, cancel_requested, handle, retry
                              (states.ShardRetry), retried_as, compute_seconds, error
  snapshots/{run_id}-sNNNN    the decided series a run trains on, packed: immutable once written
  causes/{key}                an upload (bucket, object, generation), tick or request: status
                              (states.CauseStatus), isbns (packed), run_id, reasons, launched,
                              published, correlation_id
  causes/{key}/groups/gNNNNN  one ISBN group's marker: its ISBNs, data hashes, decisions and refreshes
  messages/{delivery_key}     a Pub/Sub delivery already handled: cause, at
  rejections/{delivery_key}   a message refused for good: function, topic, reason, attributes
  series/{isbn}               the uploads that make up an ISBN's series (packed weeks), its hash
  decisions/{cause}-{isbn}    train | refresh | skip | coalesce, with every input and reason
  degradation/{isbn}          the latest decision's measure of the served version on unseen weeks
  leases/{isbn}               the run (and shard) training the ISBN, expires_at, follow_ups
  follow_ups/{run_id}-...     follow-up requests written with a lease's release, then published
  champions/{isbn}            the champion index: the served version's tags and serving forecast
  alias_history/{auto}        every alias move MLflow does not remember
  alias_backups/{backup_id}   the aliases a rollback found, before it moved any
  audit/{id}                  rollbacks, approvals, releases and refused callers (AuditKind): who, what
  alerts/{key}                an alert's state: open, pending, last_sent_at (deduplication)
  alert_counts/{hour}         alerts sent in an hour (the rate limit)
  challenges/{isbn}           the ISBN's latest challenger trial (states.TrialStatus), both forecasts
  shadow_scores/{isbn}-v{version}-{week}  both forecasts' errors on an uploaded week
  approvals/{isbn}-{version}  a risky promotion waiting for a person (states.ApprovalStatus)
"""
from __future__ import annotations

from enum import StrEnum


class Collection(StrEnum):
    RUNS = "runs"
    RUN_PARTS = "run_parts"
    SHARDS = "shards"
    SNAPSHOTS = "snapshots"
    CAUSES = "causes"
    MESSAGES = "messages"
    REJECTIONS = "rejections"
    SERIES = "series"
    DECISIONS = "decisions"
    DEGRADATION = "degradation"
    LEASES = "leases"
    FOLLOW_UPS = "follow_ups"
    CHAMPIONS = "champions"
    ALIAS_HISTORY = "alias_history"
    ALIAS_BACKUPS = "alias_backups"
    AUDIT = "audit"
    ALERTS = "alerts"
    ALERT_COUNTS = "alert_counts"
    CHALLENGES = "challenges"
    SHADOW_SCORES = "shadow_scores"
    APPROVALS = "approvals"


GROUPS = "groups"  # a cause's per-group markers: a subcollection of causes/{key}


class AuditKind(StrEnum):
    """What an audit/{id} entry records."""
    ROLLBACK = "rollback"
    APPROVAL = "approval"
    RELEASE = "release"
    REFUSED = "refused"      # a caller refused for its identity
