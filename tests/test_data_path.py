"""One data path, nothing lost: the series a job trains on is the series that was decided,
whatever the order, names, size or fate of the uploads and their notifications."""
from __future__ import annotations

import base64
import random
import time
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
from cloudevents.http import CloudEvent
from google.cloud.firestore_v1 import _helpers
from google.cloud.firestore_v1.types import CommitRequest, Document

from emulators.scheduler import fire
from shared import model_store, trigger
from shared.lifecycle import runs, shards
from shared.events import PubSubMessage, Topics
from shared.gcs import storage_client
from shared.jobs import TrainingJob, training_job
from shared.reconcile import reconcile
from shared.runstore import RunStore, now
from shared.sales import series_hash
from shared.topology import load
from shared.training import flow
from shared.layout import GROUPS, Collection
from shared.trigger import handle
from tests.helpers import END, sample
from tests.test_trigger import dry_cfg, notifications, upload  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("mlflow_server")
FIRESTORE_DOCUMENT_LIMIT = 1_048_576
GRPC_MESSAGE_LIMIT = 4 * 1024 * 1024
FIRESTORE_REQUEST_LIMIT = 10 * 1024 * 1024
FIRESTORE_COMMIT_WRITES = 500


@pytest.fixture
def bucket(dry_cfg, project_gcs, probe):
    storage_client(dry_cfg.project_id).create_bucket(dry_cfg.data_bucket)


def stored_bytes(doc: dict) -> int:
    """A document's size as Firestore encodes it (what its 1 MiB limit is about)."""
    return Document(fields=_helpers.encode_dict(doc))._pb.ByteSize()


def job_of(cfg, store, run_id: str) -> TrainingJob:
    run = store.run(run_id)
    return training_job(cfg, run_id, run["data_hashes"], run["snapshot"], run["correlation_id"], run["cause"], "local")


def trained_series(job: TrainingJob) -> dict[str, dict]:
    """What the training pipeline's load → validate → preprocess steps hand to training."""
    request = job.model_dump(mode="json")
    valid, refusals = flow.validate(request, flow.load(request))
    assert refusals == {}
    return flow.preprocess(valid)


def test_a_correction_uploaded_later_wins_whatever_its_name_or_processing_order(dry_cfg, probe, bucket):
    frame = sample(1, years=2, seed=51)
    isbn, last = frame["isbn"].iloc[0], frame["week"].max()
    corrected = frame.assign(units=np.where(frame["week"] == last, frame["units"] + 40, frame["units"]))
    upload(dry_cfg, "2026-w47.csv", frame)
    upload(dry_cfg, "2026-w47-correction.csv", corrected)  # sorts first by name, arrives second
    original, correction = notifications(probe, 2)
    store = RunStore(dry_cfg)
    first = handle(dry_cfg, correction)  # processed in the wrong order
    assert handle(dry_cfg, original).decisions[0].action == "coalesce"
    stored = store.series(isbn)
    assert stored["weeks"][str(last)] == int(corrected["units"].iloc[-1])
    assert stored["data_hash"] == series_hash(stored["weeks"])
    # The job trains on exactly what was decided: the snapshot's hash is the stored one.
    (series,) = trained_series(job_of(dry_cfg, store, first.run_id)).values()
    assert series["data_hash"] == stored["data_hash"] and series["units"][-1] == corrected["units"].iloc[-1]


def test_in_a_burst_the_newest_upload_wins_every_week(dry_cfg, probe, bucket):
    frame = sample(3, years=1, seed=52)
    for i in range(8):
        upload(dry_cfg, f"burst-{7 - i}.csv", frame.assign(units=frame["units"] + i))  # names run backwards
    messages = notifications(probe, 8)
    random.Random(5).shuffle(messages)
    for message in messages:
        handle(dry_cfg, message)
    store = RunStore(dry_cfg)
    for isbn, rows in frame.groupby("isbn"):
        assert store.series(isbn)["weeks"] == {str(w): int(u) + 7 for w, u in zip(rows["week"], rows["units"])}


def test_training_needs_no_upload_and_tags_the_hash_the_next_tick_compares(cfg, probe, project_gcs):
    """The run trains after its upload's object name was overwritten (no older generation
    is kept), and the champion's data_hash equals the stored series' hash, so a tick skips."""
    from shared.training.worker import execute

    storage_client(cfg.project_id).create_bucket(cfg.data_bucket)
    frame = sample(1, years=2, seed=53)
    isbn = frame["isbn"].iloc[0]
    upload(cfg, "sales.csv", frame)
    store = RunStore(cfg)
    deciding = cfg.model_copy(update={"launcher": "vertex"})  # dry run: the test runs the job itself
    outcome = handle(deciding, notifications(probe, 1)[0])
    upload(cfg, "sales.csv", frame.assign(units=frame["units"] * 2))  # overwrites the generation decided on
    assert execute(job_of(cfg, store, outcome.run_id).model_dump(mode="json"))["status"] == "succeeded"
    champion = model_store.resolve(cfg, isbn)
    assert champion.tags["data_hash"] == store.series(isbn)["data_hash"]

    weekly = next(j for j in load().scheduler_jobs if j.name == "weekly-retrain")
    fire(weekly, cfg.project_id)
    tick = handle(deciding, notifications(probe, 1, topic=Topics.RETRAIN_TICKS)[0])
    assert [d.action for d in tick.decisions] == ["skip"] and tick.run_id is None


def test_a_400_isbn_500_week_file_is_decided_in_groups_that_respect_firestore_limits(dry_cfg, probe, bucket):
    rng = np.random.default_rng(7)
    isbns = [f"978{n:09d}" for n in range(100_000_000, 100_000_000 + 2000, 5)][:400]
    isbns = [i + str((10 - sum(int(d) * (1 if k % 2 == 0 else 3) for k, d in enumerate(i)) % 10) % 10) for i in isbns]
    weeks = [END - timedelta(weeks=499 - w) for w in range(500)]
    frame = pd.DataFrame({"isbn": np.repeat(isbns, 500), "week": weeks * 400,
                          "units": rng.integers(0, 5000, 200_000)})
    upload(dry_cfg, "catalogue.csv", frame)
    (message,) = notifications(probe, 1)
    attempts: list[float] = []  # a busy machine may need a continuation: deciding stops at its budget
    while True:
        started = time.monotonic()
        outcome = handle(dry_cfg, message)
        attempts.append(time.monotonic() - started)
        if outcome.status != "continued":
            break
        (message,) = notifications(probe, 1)  # the same notification, published again at once
    seconds = max(attempts)
    assert outcome.status == "accepted" and len(attempts) <= 3
    store = RunStore(dry_cfg)
    run = store.run(outcome.run_id)
    # 80 ISBNs of 500 weeks fill a group's 40,000 weeks: 5 groups, each one transaction and one snapshot.
    assert len(run["isbns"]) == 400 and len(run["snapshot"]) == 5 and len(store.decisions(limit=500)) == 400
    cause = store.col("causes").document(f"upload-{message.gcs_object().upload_key}")
    largest_group = 0
    for marker in cause.collection(GROUPS).stream():
        group = marker.to_dict()["leased"]  # everything one group transaction wrote
        written = [store.get("series", i) for i in group] + [store.get("leases", i) for i in group]  # as stored
        written += [store.get("decisions", f"{cause.id}-{i}") for i in group]
        written += [store.get(Collection.SNAPSHOTS, marker.to_dict()["snapshot"]), marker.to_dict()]
        largest_group = max(largest_group, sum(stored_bytes(d) for d in written))
    stored = [store.get("runs", outcome.run_id), cause.get().to_dict()] + [store.get("series", i) for i in isbns[:5]]
    largest_doc = max(stored_bytes(d) for d in stored)
    print(f"\n400x500 decided in {sum(attempts):.1f}s ({len(attempts)} delivery(ies)); largest group commit "
          f"{largest_group} bytes; largest document {largest_doc} bytes")
    assert largest_group < GRPC_MESSAGE_LIMIT / 4 and largest_doc < FIRESTORE_DOCUMENT_LIMIT / 4
    assert seconds < 45, "no delivery may hold its push near the 60 s ack deadline"
    job = job_of(dry_cfg, store, outcome.run_id)
    assert len(job.model_dump_json()) < 100_000  # a reference, fit for a Vertex argument
    series = trained_series(job)
    assert len(series) == 400 and all(len(s["units"]) == 500 for s in series.values())


def commit_sizes(store) -> list[tuple[int, bool, int]]:
    """The size of every commit the store sends from now on (Firestore refuses a request over
    10 MiB or 500 writes; the emulator does not), whether it ends a transaction, and its writes."""
    api, sizes = store.db._firestore_api, []
    send = api.commit

    def measured(request=None, **kwargs):
        sizes.append((CommitRequest(request)._pb.ByteSize(), bool(request.get("transaction")),
                      len(request.get("writes") or [])))
        return send(request=request, **kwargs)

    api.commit = measured
    return sizes


def test_a_catalogue_run_keeps_every_document_and_commit_under_the_firestore_limits(cfg, cloud):
    """100,000 ISBNs' hashes and reasons are ~25 MB and their list ~1.7 MB: the run's own
    document could hold neither, nor one commit all of its parts."""
    from shared.layout import Collection

    store = RunStore(cfg)
    isbns = [f"978{n:010d}" for n in range(100_000)]
    maps = {"data_hashes": {i: "ab" * 32 for i in isbns},
            "decisions": {i: ["no model yet", "forced by request"] for i in isbns},
            "refreshes": {isbns[0]: {"version": "3"}}}
    with pytest.raises(ValueError, match="write_run_parts"):  # 100 parts are no transaction's
        store.in_transaction(lambda transaction: store.create_run(isbns, {}, "c", "vertex", run_id="too-big",
                                                                  transaction=transaction, **maps))
    sizes = commit_sizes(store)
    store.write_run_parts("run-catalogue", isbns, maps)  # what closing a cause does, from its markers
    run_id = store.in_transaction(lambda transaction: store.create_run(
        isbns, {"kind": "upload"}, "cid-catalogue", "vertex", run_id="run-catalogue", transaction=transaction,
        snapshot=[f"s{n:04d}" for n in range(1000)]))
    # 13 commits of parts, then the run's document in the transaction
    assert [transactional for _, transactional, _ in sizes] == [False] * 13 + [True]
    assert max(size for size, _, _ in sizes) < FIRESTORE_REQUEST_LIMIT / 2
    parts = [d.to_dict() for d in store.col(Collection.RUN_PARTS).stream()]
    assert len(parts) == 100
    assert max(stored_bytes(d) for d in [store.get("runs", run_id)] + parts) < FIRESTORE_DOCUMENT_LIMIT / 2
    run = store.run(run_id, with_results=False)
    assert run["isbns"] == isbns and run["refreshes"] == {isbns[0]: {"version": "3"}}
    assert len(run["data_hashes"]) == len(run["decisions"]) == 100_000
    assert [r["isbns"] for r in store.runs()] == [isbns]


def test_a_failed_shard_of_1000_isbns_is_retried_in_commits_firestore_takes(dry_cfg, probe, bucket):
    """A shard holds up to 1,000 ISBNs and each lease is a write: one retry transaction
    claiming them all would pass Firestore's 500 writes a commit."""
    store = RunStore(dry_cfg)
    isbns = [f"978{n:010d}" for n in range(1000)]
    run_id = store.create_run(isbns, {"kind": "upload"}, "cid-retry", "vertex", snapshot=["s0"],
                              data_hashes={i: "ab" * 32 for i in isbns})
    shards.create(store, run_id, [isbns], attempt=1, leased=False)
    shards.finish(store, run_id, 0, "failed", error="MLflow unreachable")
    sizes = commit_sizes(store)
    retry = runs.retry_shard(dry_cfg, store, store.run(run_id, with_results=False), shards.get(store, run_id, 0),
                                "it failed")
    assert retry == f"{shards.shard_id(run_id, 0)}-retry"
    assert max(writes for _, _, writes in sizes) <= FIRESTORE_COMMIT_WRITES
    assert sorted(store.run(retry)["isbns"]) == isbns
    assert {lease["run_id"] for lease in store.stream("leases")} == {retry}
    assert runs.retry_shard(dry_cfg, store, store.run(run_id, with_results=False), shards.get(store, run_id, 0),
                               "it failed") is None  # once


def test_deciding_stops_at_its_budget_and_a_new_delivery_resumes_it_at_once(dry_cfg, probe, bucket, monkeypatch):
    monkeypatch.setattr(trigger, "GROUP_MAX_ISBNS", 8)
    hurried = dry_cfg.model_copy(update={"decision": dry_cfg.decision.model_copy(update={"work_budget_seconds": 0})})
    frame = sample(10, years=1, seed=57)  # two groups of ISBNs: 8 and 2
    upload(hurried, "two-groups.csv", frame)
    (message,) = notifications(probe, 1)
    stopped = handle(hurried, message)  # acknowledged, and handed on to a new delivery at once
    assert stopped.status == "continued" and "1 of 2 ISBN groups left" in stopped.detail
    store = RunStore(hurried)
    assert len(store.series_isbns()) == 8 and store.runs() == []
    (continuation,) = notifications(probe, 1)
    assert continuation.data == message.data and continuation.attributes["bookcast_continuation"] == "1"
    assert continuation.delivery_key == message.delivery_key, "the same cause, resumed where it stopped"
    outcome = handle(hurried, continuation)
    assert outcome.status == "accepted" and len(outcome.decisions) == 2
    assert sorted(store.run(outcome.run_id)["isbns"]) == sorted(frame["isbn"].unique())
    assert handle(hurried, message).status == "duplicate"


def test_a_continued_tick_is_the_same_cause_however_often_it_is_handed_on():
    """A tick's cause is named by its job and publish minute: a continuation published minutes
    later must still name the tick it continues, or every hand-on would start it over."""
    tick = PubSubMessage(message_id="41", publish_time=now() - timedelta(minutes=7), topic=Topics.RETRAIN_TICKS,
                         attributes={"event_type": "schedule.tick"}, data=b'{"job": "weekly-retrain"}')
    handed_on = tick
    for n in range(1, 4):
        handed_on = PubSubMessage(message_id=str(41 + n), publish_time=now(), topic=Topics.RETRAIN_TICKS,
                                  attributes=handed_on.continuation_attributes(), data=tick.data)
    assert handed_on.delivery_key == tick.delivery_key and handed_on.first_published == tick.publish_time
    assert handed_on.attributes["bookcast_continuation"] == "3"


def test_uploads_missed_during_an_outage_are_replayed_once_by_the_reconciler(dry_cfg, probe, bucket):
    upload(dry_cfg, "week#47.csv", sample(1, years=2, seed=54))  # '#' is legal in an object name
    upload(dry_cfg, "week48.csv", sample(1, years=2, seed=55))
    dead_lettered = notifications(probe, 2)  # trigger_training was down: nobody handled them
    reconciling = next(j for j in load().scheduler_jobs if j.name == "reconcile-uploads")
    fire(reconciling, dry_cfg.project_id)
    (tick,) = notifications(probe, 1, topic=Topics.RECONCILE_TICKS)
    assert handle(dry_cfg, tick).detail.startswith("reconciled: 2 upload(s) replayed")
    store = RunStore(dry_cfg)
    assert len(store.runs()) == 2
    assert reconcile(dry_cfg, store, trigger.handle_upload) == []  # idempotent
    assert {handle(dry_cfg, m).status for m in dead_lettered} == {"duplicate"}
    hashed = next(r for r in store.runs() if "#47" in r["cause"]["object"])
    assert len(trained_series(job_of(dry_cfg, store, hashed["run_id"]))) == 1


@pytest.mark.parametrize("units", ["nan", "1e400", "x" * 100_000])
def test_hostile_cells_are_rejected_with_a_stored_reason_that_fits(dry_cfg, probe, bucket, units):
    rows = "".join(f"9780306406157,{END - timedelta(weeks=k)},{units}\n" for k in range(20))
    upload(dry_cfg, "hostile.csv", content=f"isbn,week,units\n{rows}".encode())
    (message,) = notifications(probe, 1)
    assert handle(dry_cfg, message).status == "rejected"
    cause = RunStore(dry_cfg).get("causes", f"upload-{message.gcs_object().upload_key}")
    assert len(cause["reasons"]) == 20 and stored_bytes(cause) < 20_000
    (event,) = probe.messages(Topics.REJECTED_INPUT)
    assert event["reasons"] == cause["reasons"]


def test_an_upload_to_a_foreign_bucket_is_rejected_and_recorded(dry_cfg, probe, bucket):
    client = storage_client(dry_cfg.project_id)
    client.create_bucket("someone-elses-bucket")
    client.bucket("someone-elses-bucket").blob("sales/w47.csv").upload_from_string(
        sample(1, years=2, seed=56).pipe(lambda f: f.to_csv(index=False)))
    (message,) = notifications(probe, 1)
    assert handle(dry_cfg, message).status == "rejected"
    store = RunStore(dry_cfg)
    (cause,) = store.stream("causes")
    assert cause["reasons"] == ["gs://someone-elses-bucket/sales/w47.csv: bucket: uploads are accepted only in "
                                f"gs://{dry_cfg.data_bucket}"]
    assert store.runs() == [] and store.series_isbns() == set()


def pushed(topic: str, project: str, data: bytes, attributes: dict, message_id: str = "1") -> CloudEvent:
    """The CloudEvent functions-framework makes of a Pub/Sub push to ``topic``."""
    return CloudEvent({"type": "google.cloud.pubsub.topic.v1.messagePublished", "specversion": "1.0",
                       "source": f"//pubsub.googleapis.com/projects/{project}/topics/{topic}", "id": message_id},
                      {"message": {"data": base64.b64encode(data).decode(), "attributes": attributes,
                                   "messageId": message_id, "publishTime": now().isoformat()}})


@pytest.fixture
def functions_env(dry_cfg, monkeypatch):
    """The functions' process settings for this test's project (they read the environment)."""
    from shared.config import settings

    for key, value in {"BOOKCAST_PROJECT_ID": dry_cfg.project_id, "BOOKCAST_PROFILE": "test",
                       "BOOKCAST_LAUNCHER": "vertex", "BOOKCAST_STATE_DIR": dry_cfg.state_dir,
                       "BOOKCAST_MLFLOW_TRACKING_URI": dry_cfg.mlflow_tracking_uri}.items():
        monkeypatch.setenv(key, value)
    settings.cache_clear()
    yield
    settings.cache_clear()


def test_messages_no_retry_can_fix_are_recorded_acknowledged_and_alerted_once(dry_cfg, probe, functions_env):
    from functions.trigger_training.main import trigger_training

    project = dry_cfg.project_id
    tick_on_uploads = pushed(Topics.SALES_UPLOADS, project, b"", {"event_type": "schedule.tick"}, "7")
    not_a_request = pushed(Topics.TRAINING_REQUESTS, project, b'{"event_type": "training.requested", "isbns": "all"}',
                           {"event_type": "training.requested"}, "8")
    for event in (tick_on_uploads, not_a_request, not_a_request):  # returning is the 2xx; raising a retry
        trigger_training(event)
    store = RunStore(dry_cfg)
    assert store.runs() == [] and store.decisions() == []  # no retrain sweep, no training
    rejections = sorted(store.stream("rejections"), key=lambda r: r["message_id"])
    assert [r["topic"] for r in rejections] == [Topics.SALES_UPLOADS, Topics.TRAINING_REQUESTS]
    assert "not a GCS object notification" in rejections[0]["reason"]
    assert "isbns" in rejections[1]["reason"]
    announced = probe.messages(Topics.REJECTED_INPUT, at_least=3, timeout=5)
    assert sorted(e["message_id"] for e in announced) == ["7", "8"]  # the redelivery is not announced again


def test_a_poison_dead_letter_is_alerted_not_redelivered(dry_cfg, probe, functions_env):
    from functions.monitor.main import monitor

    poison = pushed(Topics.DEAD_LETTERS, dry_cfg.project_id, b"\xff not json",
                    {"payloadFormat": "JSON_API_V1", "objectId": "sales/x.csv",
                     "CloudPubSubDeadLetterSourceSubscription": "trigger-training-uploads"}, "9")
    monitor(poison)  # returns: acknowledged
    (alert,) = RunStore(dry_cfg).stream("alerts")
    assert alert["key"] == "dead-letter:9" and "trigger-training-uploads" in alert["detail"]
    # A dead-lettered upload asks trigger_training to replay the bucket now, not in 10 minutes.
    (replay,) = probe.messages(Topics.RECONCILE_TICKS, at_least=1, timeout=5)
    assert replay["event_type"] == "schedule.tick" and replay["job"] == "replay-dead-letters"


def test_forged_internal_events_are_rejected_and_counted_signed_ones_alert(dry_cfg, probe, functions_env):
    from functions.monitor.main import monitor
    from shared.events import IsbnResult, TrainingEvent
    from shared.signing import encode

    event = TrainingEvent(correlation_id="cid-f", run_id="run-forged", status="failed", isbns=["9780306406157"],
                          reason="<!channel> click http://evil.example", shard="1/1",
                          results=[IsbnResult(isbn="9780306406157", status="failed")])
    data, attributes = encode(event)
    unsigned = {k: v for k, v in attributes.items() if k != "signature"}
    monitor(pushed(Topics.TRAINING_EVENTS, dry_cfg.project_id, data, unsigned, "21"))
    monitor(pushed(Topics.TRAINING_EVENTS, dry_cfg.project_id, data.replace(b"run-forged", b"run-tamper"),
                   attributes, "22"))  # signed, then altered
    store = RunStore(dry_cfg)
    assert [a["key"] for a in store.stream("alerts")] == []  # the forger's text reached nobody
    forged = sorted(store.stream("rejections"), key=lambda r: r["message_id"])
    assert [r["message_id"] for r in forged] == ["21", "22"] and all("forged" in r["reason"] for r in forged)
    monitor(pushed(Topics.TRAINING_EVENTS, dry_cfg.project_id, data, attributes, "23"))  # ours
    assert [a["key"] for a in store.stream("alerts")] == ["run:run-forged:1/1:failed"]
