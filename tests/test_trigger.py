"""trigger_training through the real emulators: genuine GCS notifications, Firestore
transactions, at-least-once delivery, leases and follow-ups."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pandas as pd
import pytest

from shared.lifecycle import leases, shards
from shared.events import PubSubMessage
from shared.gcs import storage_client
from shared.runstore import RunStore, now
from shared.sales import to_csv
from shared.lifecycle.runs import reap_expired_leases
from shared.trigger import handle
from tests.helpers import sample
from shared.layout import Collection


@pytest.fixture
def dry_cfg(cfg):
    """Runs are launched on Vertex in dry-run mode: decisions and runs are real, no training."""
    return cfg.model_copy(update={"launcher": "vertex"})


def upload(cfg, name: str, frame: pd.DataFrame | None = None, content: bytes | None = None):
    blob = storage_client(cfg.project_id).bucket(cfg.data_bucket).blob(f"sales/{name}")
    blob.metadata = {"correlation_id": f"cid-{name}"}
    blob.upload_from_string(content if content is not None else to_csv(frame), content_type="text/csv")
    return blob


def notifications(probe, count: int, topic: str = "sales-uploads") -> list[PubSubMessage]:
    """The genuine messages published on ``topic`` (for uploads: fake-gcs-server's
    OBJECT_FINALIZE notifications), as a function receives them."""
    subscriber, path = probe.subscriber, probe._path(topic)
    found, deadline = [], time.monotonic() + 20
    while len(found) < count and time.monotonic() < deadline:
        response = subscriber.pull(subscription=path, max_messages=10, timeout=5)
        if response.received_messages:
            subscriber.acknowledge(subscription=path, ack_ids=[m.ack_id for m in response.received_messages])
        found += [PubSubMessage(message_id=m.message.message_id, publish_time=m.message.publish_time,
                                attributes=dict(m.message.attributes), data=m.message.data, topic=topic)
                  for m in response.received_messages]
    assert len(found) == count
    return found


@pytest.fixture
def bucket(dry_cfg, project_gcs, probe):
    storage_client(dry_cfg.project_id).create_bucket(dry_cfg.data_bucket)


pytestmark = pytest.mark.usefixtures("mlflow_server")


def test_triple_delivery_yields_one_decision_and_one_run(dry_cfg, probe, bucket):
    frame = sample(2, years=2)
    upload(dry_cfg, "week47.csv", frame)
    (message,) = notifications(probe, 1)
    redelivered = message.model_copy(update={"message_id": "other-id"})  # GCS may also re-notify
    with ThreadPoolExecutor(3) as pool:
        outcomes = list(pool.map(lambda m: handle(dry_cfg, m), [message, message, redelivered]))
    assert sorted(o.status for o in outcomes) == ["accepted", "duplicate", "duplicate"]
    store = RunStore(dry_cfg)
    runs = store.runs()
    assert len(runs) == 1 and sorted(runs[0]["isbns"]) == sorted(frame["isbn"].unique())
    assert len(store.decisions()) == 2
    assert runs[0]["launch"]["dry_run"] is True  # the Vertex request was written once
    queued = [e for e in probe.messages("training-events") if e["status"] == "queued"]
    assert len(queued) == 1 and queued[0]["run_id"] == runs[0]["run_id"]


def test_malformed_upload_is_recorded_published_and_changes_nothing(dry_cfg, probe, bucket):
    upload(dry_cfg, "broken.csv", content=b"isbn,week,units\n9780306406158,2026-11-16,5\n9780306406157,2026-11-17,-3\n")
    (message,) = notifications(probe, 1)
    outcome = handle(dry_cfg, message)
    assert outcome.status == "rejected"
    store = RunStore(dry_cfg)
    cause = store.get("causes", f"upload-{message.gcs_object().upload_key}")
    assert cause["status"] == "rejected"
    assert any("broken.csv:2: isbn" in r and "check digit" in r for r in cause["reasons"])
    assert any("broken.csv:3: units: negative" in r for r in cause["reasons"])
    (event,) = probe.messages("rejected-input")
    assert event["object_name"] == "sales/broken.csv" and event["reasons"] == cause["reasons"]
    assert store.all_series() == {} and store.runs() == [] and store.decisions() == []
    assert handle(dry_cfg, message).status == "duplicate"
    assert probe.messages("rejected-input", at_least=1, timeout=3) == []  # announced once


def test_two_concurrent_uploads_for_one_isbn_coalesce_into_a_follow_up(dry_cfg, probe, bucket):
    frame = sample(1, years=2, seed=3)
    revised = frame.assign(units=frame["units"] + 1)
    upload(dry_cfg, "a.csv", frame)
    upload(dry_cfg, "b.csv", revised)
    messages = notifications(probe, 2)
    with ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(lambda m: handle(dry_cfg, m), messages))
    assert sorted(o.status for o in outcomes) == ["accepted", "accepted"]
    store = RunStore(dry_cfg)
    runs = store.runs()
    assert len(runs) == 1, "one training per ISBN at a time"
    actions = sorted(d["action"] for d in store.decisions())
    assert actions == ["coalesce", "train"]
    isbn = frame["isbn"].iloc[0]
    assert len(store.get("leases", isbn)["follow_ups"]) == 1

    leases.release_all(store, runs[0]["run_id"])  # what the worker does when the run ends
    (follow_up,) = probe.messages("training-requests")
    assert follow_up["isbns"] == [isbn] and runs[0]["run_id"] in follow_up["requested_by"]


def test_expired_lease_fails_the_run_and_retries_it_once(dry_cfg, probe, bucket):
    short_lease = dry_cfg.model_copy(update={"training": dry_cfg.training.model_copy(update={"lease_ttl_seconds": 10})})
    upload(short_lease, "c.csv", sample(1, years=2, seed=4))
    (message,) = notifications(probe, 1)
    first = handle(short_lease, message)
    store = RunStore(short_lease)
    assert reap_expired_leases(short_lease, store) == []  # not expired yet
    expire_all(store)
    tick = PubSubMessage(message_id="m1", publish_time=now(), attributes={"event_type": "schedule.tick"},
                         data=b'{"job": "reconcile-uploads"}', topic="reconcile-ticks")
    assert "1 dead or failed run(s) retried" in handle(short_lease, tick).detail  # trigger_training's own tick
    (retry,) = [r["run_id"] for r in store.runs() if r.get("retry_of") == first.run_id]
    assert store.run(first.run_id)["status"] == "failed"
    assert store.run(retry)["attempt"] == 2 and store.run(retry)["retry_of"] == first.run_id
    expire_all(store)
    assert reap_expired_leases(short_lease, store) == []
    assert store.run(retry)["status"] == "failed" and len(store.runs()) == 2


def expire_all(store: RunStore) -> None:
    for snap in store.col("leases").stream():
        snap.reference.update({"expires_at": now() - timedelta(seconds=1)})


def test_scheduled_tick_decides_for_every_known_isbn_once(dry_cfg, probe, bucket):
    from emulators.scheduler import fire
    from shared.topology import load

    upload(dry_cfg, "d.csv", sample(2, years=2, seed=8))
    handle(dry_cfg, notifications(probe, 1)[0])
    weekly = next(j for j in load().scheduler_jobs if j.name == "weekly-retrain")
    fire(weekly, dry_cfg.project_id)
    (tick,) = notifications(probe, 1, topic="retrain-ticks")
    outcome = handle(dry_cfg, tick)
    # The ISBNs are already leased by the upload's run: the tick coalesces instead of racing it.
    assert outcome.status == "accepted" and outcome.run_id is None
    assert {d.action for d in outcome.decisions} == {"coalesce"}
    # Cloud Scheduler may deliver one tick twice: the tick time is the idempotency key.
    assert handle(dry_cfg, tick.model_copy(update={"message_id": "again"})).status == "duplicate"
    assert len(RunStore(dry_cfg).runs()) == 1


def test_a_living_job_keeps_its_lease(dry_cfg, probe, bucket):
    from shared.lifecycle.leases import Heartbeat

    short = dry_cfg.model_copy(update={"training": dry_cfg.training.model_copy(update={"lease_ttl_seconds": 3})})
    upload(short, "e.csv", sample(1, years=2, seed=6))
    outcome = handle(short, notifications(probe, 1)[0])
    store = RunStore(short)
    with Heartbeat(store, outcome.run_id, 3):
        time.sleep(4)  # longer than the TTL
        assert reap_expired_leases(short, store) == []
    assert store.run(outcome.run_id)["status"] == "queued"


def test_cli_request_is_decided_like_any_cause(dry_cfg, probe, bucket, monkeypatch):
    from shared.cli import main

    upload(dry_cfg, "f.csv", sample(1, years=2, seed=9))
    isbn = handle(dry_cfg, notifications(probe, 1)[0]).decisions[0].isbn
    store = RunStore(dry_cfg)
    for run in store.runs():  # the upload's run ended
        leases.release_all(store, run["run_id"])
    monkeypatch.setenv("BOOKCAST_PROJECT_ID", dry_cfg.project_id)
    assert main(["request", "--isbn", isbn, "--force", "--reason", "new cover"]) == 0
    (request,) = notifications(probe, 1, topic="training-requests")
    outcome = handle(dry_cfg, request)
    assert outcome.run_id and outcome.decisions[0].reasons[0] == "forced"
    assert RunStore(dry_cfg).run(outcome.run_id)["cause"]["reason"] == "new cover"


def test_a_reused_message_id_is_not_mistaken_for_a_redelivery(dry_cfg, probe, bucket):
    """Message ids are unique per topic only, and a restarted emulator counts from 1 again."""
    upload(dry_cfg, "g1.csv", sample(1, years=2, seed=12))
    upload(dry_cfg, "g2.csv", sample(1, years=2, seed=13))
    first, second = notifications(probe, 2)
    assert handle(dry_cfg, first).status == "accepted"
    reused = second.model_copy(update={"message_id": first.message_id})
    assert handle(dry_cfg, reused).status == "accepted"


def test_a_follow_up_that_could_not_be_published_is_kept_and_sent_by_the_next_reconcile(cfg, cloud):
    """Releasing the leases and recording their follow-up is one transaction; publishing it
    comes after, and if that fails (here: the topic does not exist yet) nothing is lost."""
    from google.api_core.exceptions import NotFound

    from emulators.wiring import create_topics
    from shared.runstore import expires
    from tests.conftest import Probe

    store = RunStore(cfg)
    isbn = "9780306406157"
    store.col("leases").document(isbn).set({"isbn": isbn, "run_id": "run-1", "expires_at": expires(600),
                                            "follow_ups": [{"key": "upload-x", "kind": "upload",
                                                            "correlation_id": "cid-x", "forced": False}]})
    with pytest.raises(NotFound):
        leases.release_all(store, "run-1")
    assert store.get("leases", isbn) is None  # released: a new cause may lease the ISBN
    create_topics(cloud.topology, cfg.project_id)
    probe = Probe(cfg.project_id, ["training-requests"])
    assert leases.flush_follow_ups(store) == 1
    (request,) = probe.messages("training-requests")
    assert request["isbns"] == [isbn] and request["correlation_id"] == "cid-x"
    assert leases.flush_follow_ups(store) == 0


def fail_shard(store: RunStore, run_id: str, index: int = 0, minutes_ago: float = 0) -> None:
    """What a shard's worker does when its training raises (as when MLflow was down)."""
    shard = shards.get(store, run_id, index)
    shards.close(store.cfg, store, shards.ShardRef.of_run(store.run(run_id), shard), "failed", [],
                 "RegistryUnavailable: MLflow is unreachable")
    leases.release_all(store, run_id, index)
    age_shard(store, run_id, index, minutes_ago)


def age_shard(store: RunStore, run_id: str, index: int, minutes_ago: float) -> None:
    store.col(Collection.SHARDS).document(shards.shard_id(run_id, index)).update(
        {"finished_at": now() - timedelta(minutes=minutes_ago)})


def test_a_failed_shard_is_retried_once_on_its_decided_series_after_a_pause(dry_cfg, probe, bucket):
    from shared.lifecycle.runs import retry_failed_shards

    upload(dry_cfg, "h.csv", sample(1, years=2, seed=14))
    first = handle(dry_cfg, notifications(probe, 1)[0])
    store = RunStore(dry_cfg)
    fail_shard(store, first.run_id)
    assert store.run(first.run_id)["status"] == "failed"  # its only shard failed
    assert retry_failed_shards(dry_cfg, store) == []  # not at once: the fault needs time to pass
    age_shard(store, first.run_id, 0, minutes_ago=6)
    (retry,) = retry_failed_shards(dry_cfg, store)
    run, failed = store.run(retry), store.run(first.run_id)
    assert run["attempt"] == 2 and run["retry_of"] == first.run_id and run["retry_of_shard"] == 0
    assert shards.get(store, first.run_id, 0)["retried_as"] == retry
    assert run["snapshot"] == failed["snapshot"] and run["data_hashes"] == failed["data_hashes"]
    assert run["launch"]["dry_run"] is True
    assert retry_failed_shards(dry_cfg, store) == []  # once
    fail_shard(store, retry, minutes_ago=6)
    assert retry_failed_shards(dry_cfg, store) == []  # a retry that fails is alerted, not repeated


def test_an_expired_lease_of_a_run_never_created_does_not_block_the_isbn(dry_cfg, probe, bucket):
    """A cause that stopped between its ISBN groups leased for a run it never created; once
    that lease expires, the next cause takes the ISBN over instead of failing on the run."""
    frame = sample(1, years=2, seed=15)
    isbn = frame["isbn"].iloc[0]
    store = RunStore(dry_cfg)
    store.col("leases").document(isbn).set({"isbn": isbn, "run_id": "run-never-created", "follow_ups": [],
                                            "expires_at": now() - timedelta(seconds=1)})
    upload(dry_cfg, "i.csv", frame)
    outcome = handle(dry_cfg, notifications(probe, 1)[0])
    assert outcome.status == "accepted" and store.get("leases", isbn)["run_id"] == outcome.run_id
    assert store.run("run-never-created") is None


def test_cli_train_leaves_out_a_stored_series_with_gaps_and_says_why(cfg, monkeypatch, capsys):
    from shared.cli import main

    store = RunStore(cfg)
    whole = {f"2026-{m:02d}-{d:02d}": 5 for m, d in ((11, 2), (11, 9), (11, 16))}
    store.col("series").document("9780306406157").set({"isbn": "9780306406157", "weeks": whole, "sources": ["a"]})
    store.col("series").document("9781566851718").set({"isbn": "9781566851718", "sources": ["b"],
                                                       "weeks": {"2026-11-02": 1, "2026-11-16": 1}})
    for key, value in {"BOOKCAST_PROJECT_ID": cfg.project_id, "BOOKCAST_STATE_DIR": cfg.state_dir}.items():
        monkeypatch.setenv(key, value)
    assert main(["train", "--launcher", "vertex"]) == 0  # a dry run: the request is written, nothing trains
    assert "9781566851718 not trained: series has missing weeks" in capsys.readouterr().out
    (run,) = store.runs()
    assert run["isbns"] == ["9780306406157"]
