"""A run over many ISBNs is split into shards, each trained by its own worker process (on
Vertex AI: a replica of the run's job). Real emulators, real MLflow, real worker processes."""
from __future__ import annotations


import pytest

from shared import registry
from shared.lifecycle import shards
from shared.runstore import RunStore
from shared.states import TERMINAL_RUN
from shared.trigger import handle
from tests.helpers import sample
from tests.test_end_to_end import wait_for
from tests.test_trigger import notifications, upload

pytestmark = pytest.mark.usefixtures("mlflow_server")


def test_plan_cuts_sorted_isbns_into_even_contiguous_shards():
    isbns = [f"isbn-{i:04d}" for i in range(1003)][::-1]
    planned = shards.plan(isbns, isbns_per_shard=250, max_shards=100)
    assert [len(s) for s in planned] == [201, 201, 201, 200, 200]
    assert [i for s in planned for i in s] == sorted(isbns)
    assert [len(s) for s in shards.plan(isbns, isbns_per_shard=250, max_shards=2)] == [502, 501]
    catalogue = [f"isbn-{i:05d}" for i in range(3000)]  # no shard document over 1,000 ISBNs' results
    assert [len(s) for s in shards.plan(catalogue, isbns_per_shard=250, max_shards=2)] == [1000, 1000, 1000]
    assert shards.plan(["a"], isbns_per_shard=250, max_shards=2) == [["a"]]
    assert shards.plan([], isbns_per_shard=250, max_shards=2) == []


@pytest.fixture
def bucket(cfg, project_gcs, probe):
    from shared.gcs import storage_client

    storage_client(cfg.project_id).create_bucket(cfg.data_bucket)


def test_an_upload_trains_in_two_shard_workers_and_each_serves_as_it_finishes(cfg, probe, bucket):
    frame = sample(4, years=3, seed=71)
    upload(cfg, "catalogue.csv", frame)
    outcome = handle(cfg, notifications(probe, 1)[0])  # decides, then launches real local shard workers
    store = RunStore(cfg)
    run = wait_for(lambda: (r := store.run(outcome.run_id)) and r["status"] in TERMINAL_RUN and r, 400, "the run to end")

    assert run["status"] == "succeeded" and run["shards"] == 2
    parts = store.run_shards(outcome.run_id)
    assert [len(p["isbns"]) for p in parts] == [2, 2] and all(p["status"] == "succeeded" for p in parts)
    assert len({p["handle"] for p in parts}) == 2, "each shard ran in its own worker process"
    assert set(run["results"]) == set(frame["isbn"]) and sum(run["counts"].values()) == 4
    for part in parts:  # each shard reported its own ISBNs, and each ISBN is served
        assert set(part["results"]) == set(part["isbns"])
        for isbn in part["isbns"]:
            assert registry.version_by_alias(cfg, isbn).version == part["results"][isbn]["version"]
    # Champions appear as shards finish: the first shard to end had its ISBNs served before the
    # last shard ended, not when the whole run closed.
    first, last = sorted(parts, key=lambda p: p["finished_at"])
    served = [m["at"] for isbn in first["isbns"] for m in store.alias_history(isbn)]
    assert max(served) < last["finished_at"]
    events = [e for e in probe.messages("training-events", at_least=7) if e["run_id"] == outcome.run_id]
    assert sorted(e["shard"] for e in events if e["status"] == "started") == ["1/2", "2/2"]
    assert sorted(e["shard"] for e in events if e["status"] == "succeeded") == ["", "1/2", "2/2"]
    assert store.col("leases").limit(1).get() == [], "every shard released its ISBNs"


def test_one_shard_is_cancelled_while_the_other_goes_on(cfg, probe, bucket):
    from shared.cli import build_parser, run_handler

    slow = cfg.model_copy(update={"training": cfg.training.model_copy(update={"trials": 400})})
    frame = sample(4, years=3, seed=72)
    upload(cfg, "slow.csv", frame)
    outcome = handle(slow, notifications(probe, 1)[0])
    store = RunStore(cfg)
    wait_for(lambda: (parts := store.run_shards(outcome.run_id)) and all(p["status"] == "running" for p in parts),
             120,
             "both shards to run")

    assert shards.request_cancel(store, outcome.run_id, 1) == [1]
    cancelled = wait_for(lambda: (p := shards.get(store, outcome.run_id, 1))["status"] == "cancelled" and p, 30,
                         "shard 1 to stop")
    assert "asked it to stop" in cancelled["error"]
    assert shards.get(store, outcome.run_id, 0)["status"] == "running"
    still_training = set(shards.get(store, outcome.run_id, 0)["isbns"])
    wait_for(lambda: {s.id for s in store.col("leases").stream()} == still_training, 15,
             "the cancelled shard to free its ISBNs (it releases them after recording its end)")

    # The whole run, as an operator does it: the remaining shard stops too, and the run closes.
    assert run_handler(build_parser().parse_args(["cancel", outcome.run_id]), cfg) == 0
    run = wait_for(lambda: (r := store.run(outcome.run_id)) and r["status"] in TERMINAL_RUN and r, 40, "the run to close")
    assert run["status"] == "cancelled"
    wait_for(lambda: not list(store.col("leases").stream()), 15, "every ISBN to be free")
