"""A training run's life after its cause is decided: launched once (claim_launch,
launch_run), each shard reaped when its worker stops reporting (its leases expire), and a
shard that failed or died retried once, as a run of its own on the same decided series.
trigger_training drives these from its deliveries and its reconcile tick; the workers
record their shards' endings (shared/lifecycle/shards.py)."""
from __future__ import annotations

import os
from datetime import timedelta

from shared.causes import Cause, CauseKind
from shared.config import Settings
from shared.events import Topics, TrainingEvent
from shared.layout import Collection
from shared.lifecycle import leases, shards
from shared.logs import get_logger
from shared.runstore import RunStore, now
from shared.states import RunEvent, RunStatus, ShardRetry

log = get_logger(__name__)


def claim_launch(store: RunStore, run_id: str) -> bool:
    """Exactly one launcher per run, even when two deliveries race to finish it."""
    def claim(transaction) -> bool:
        ref = store.col(Collection.RUNS).document(run_id)
        run = ref.get(transaction=transaction).to_dict()
        if run.get("launch_claimed"):
            return False
        transaction.update(ref, {"launch_claimed": now()})
        return True

    return store.in_transaction(claim)


def max_shards(cfg: Settings) -> int:
    """Locally the shards run side by side on this machine; on Vertex AI each is a replica."""
    if cfg.launcher == "vertex":
        return cfg.vertex.max_replicas
    return cfg.training.local_shards or os.cpu_count() or 1


def launch_run(cfg: Settings, store: RunStore, run_id: str, attempt: int = 1) -> None:
    from shared.jobs import training_job
    from shared.lifecycle.launch import launcher_for
    from shared.pubsub import publish

    run = store.run(run_id, with_results=False)
    slices = shards.plan(sorted(run["data_hashes"]), cfg.training.isbns_per_shard, max_shards(cfg))
    shards.create(store, run_id, slices, attempt)
    job = training_job(cfg, run_id, run["data_hashes"], run["snapshot"], run["correlation_id"], run["cause"],
                       cfg.launcher, attempt=attempt, refreshes=run.get("refreshes") or {}, shards=len(slices))
    info = launcher_for(cfg).launch(job)
    store.update_run(run_id, launch={**info.detail, "handle": info.handle}, attempt=attempt)
    publish(cfg, Topics.TRAINING_EVENTS, TrainingEvent(correlation_id=run["correlation_id"], run_id=run_id, status=RunEvent.QUEUED,
                                                  isbns=run["isbns"], launcher=info.launcher,
                                                  reason="; ".join(f"{i}: {', '.join(r)}" for i, r in
                                                                   (run.get("decisions") or {}).items())[:1000]))


# A run is retried once: a transient fault (MLflow or Firestore down while it ran, a job
# that died) has usually passed by then, and a deterministic one is alerted, not repeated.
MAX_ATTEMPTS = 2
RETRY_AFTER = timedelta(minutes=5)  # a failed run's retry waits for the first reconcile tick after this


LEASE_CHUNK = 400  # leases a retry claims per transaction


def retry_shard(cfg: Settings, store: RunStore, old: dict, shard: dict, why: str) -> str | None:
    """Launch the retry of a failed shard on the same decided series (the run's snapshot), as
    a run of its own, at most once; returns the retry's run id if this call launched it."""
    old_run_id, index = old["run_id"], shard["index"]
    retried = store.col(Collection.SHARDS).document(shards.shard_id(old_run_id, index))
    if old.get("attempt", 1) >= MAX_ATTEMPTS or not shard["isbns"]:
        if "run_id" in shard:  # a retry that failed is alerted, not repeated
            shards.settle_retry(store, old_run_id, index, ShardRetry.EXHAUSTED)
        return None
    key = f"retry-{shards.shard_id(old_run_id, index)}"
    cause = Cause(key=key, kind=CauseKind.RETRY, correlation_id=old.get("correlation_id", old_run_id), message_id=key,
                  delivery_key=key, forced=True, detail={"retry_of": old_run_id, "shard": index})
    run_id = f"{shards.shard_id(old_run_id, index)}-retry"
    if store.col(Collection.RUNS).document(run_id).get().exists:
        return None
    # A shard holds up to 1,000 ISBNs, a lease is a write, and a commit takes 500: the leases are
    # claimed LEASE_CHUNK a transaction first (as a cause's groups claim theirs), then the run
    # is created. Leases left for a retry that never got created expire and are freed.
    leased: list[str] = []
    for start in range(0, len(shard["isbns"]), LEASE_CHUNK):
        chunk = shard["isbns"][start:start + LEASE_CHUNK]

        def claim(transaction, chunk=chunk) -> list[str]:
            got, _ = leases.claim(store, transaction, leases.read(store, transaction, chunk), chunk, run_id,
                                  cfg.training.lease_ttl_seconds, cause.as_dict())
            return got

        leased += store.in_transaction(claim)

    def relaunch(transaction) -> bool:
        if store.col(Collection.RUNS).document(run_id).get(transaction=transaction).exists:
            return False
        has_document = retried.get(transaction=transaction).exists  # not if it never launched
        if has_document:
            shards.settle_retry(store, old_run_id, index, ShardRetry.DONE, run_id if leased else None, transaction)
        if not leased:  # every ISBN is training in a newer run already: nothing to retry
            return False
        store.create_run(leased, cause.as_dict(), cause.correlation_id, cfg.launcher, run_id=run_id,
                         transaction=transaction, attempt=old.get("attempt", 1) + 1, retry_of=old_run_id,
                         retry_of_shard=index, snapshot=old["snapshot"],
                         data_hashes={i: old["data_hashes"][i] for i in leased},
                         decisions={i: [f"retry of {old_run_id} shard {index}: {why}"] for i in leased})
        return True

    if store.in_transaction(relaunch) and claim_launch(store, run_id):
        launch_run(cfg, store, run_id, attempt=old.get("attempt", 1) + 1)
        log.warning("run %s shard %d retried as %s: %s", old_run_id, index, run_id, why)
        return run_id
    return None


LEASE_EXPIRED = "its lease expired: the shard's worker stopped reporting"


def reap_shard(cfg: Settings, store: RunStore, old_run_id: str, index: int) -> list[str]:
    """A shard whose worker stopped reporting: recorded failed (unless it ended already),
    what it still holds freed (what waited on it is requested again), and retried once as a
    new run naming it. The run's other shards go on. Returns the retries' run ids."""
    old = store.run(old_run_id, with_results=False)
    if not old:  # its cause stopped between deciding groups: resumed by redelivery or reconciling
        leases.release_all(store, old_run_id)
        return []
    shard = shards.get(store, old_run_id, index)
    if not shard:  # leased, never launched: the run as a whole failed; retried as the shards it would have had
        store.update_run(old_run_id, status=RunStatus.FAILED, error=LEASE_EXPIRED)
        leases.release_all(store, old_run_id)
        planned = shards.plan(old["isbns"], cfg.training.isbns_per_shard, max_shards(cfg))
        retries = [retry_shard(cfg, store, old, {"index": i, "isbns": isbns, "status": RunStatus.FAILED}, LEASE_EXPIRED)
                   for i, isbns in enumerate(planned)]
        return [r for r in retries if r]
    shards.close(cfg, store, shards.ShardRef.of_run(old, shard), RunStatus.FAILED, [], LEASE_EXPIRED)
    shard = shards.get(store, old_run_id, index)  # as recorded: it may have ended on its own
    leases.release_all(store, old_run_id, index)
    if shard["status"] != RunStatus.FAILED:  # it ended well and only its leases were left behind
        return []
    retry = retry_shard(cfg, store, old, shard, LEASE_EXPIRED)
    return [retry] if retry else []


def reap_expired_leases(cfg: Settings, store: RunStore) -> list[str]:
    """Every shard whose leases expired, reaped (reap_shard)."""
    expired = sorted({(lease["run_id"], lease.get("shard", 0)) for lease in leases.expired(store)})
    return [retry for run_id, index in expired for retry in reap_shard(cfg, store, run_id, index)]


def retry_failed_shards(cfg: Settings, store: RunStore) -> list[str]:
    """Shards whose worker failed (an exception, e.g. MLflow unreachable while it
    registered) are retried once, RETRY_AFTER after they failed."""
    retries = []
    for shard in shards.failed_unretried(store):
        run = store.run(shard["run_id"], with_results=False)
        if not run:
            shards.settle_retry(store, shard["run_id"], shard["index"], ShardRetry.EXHAUSTED)
        elif now() - shard.get("finished_at", now()) >= RETRY_AFTER:
            retry = retry_shard(cfg, store, run, shard, f"it failed: {str(shard.get('error', ''))[:200]}")
            retries += [retry] if retry else []
    return retries
