"""Batch export by alias, for a catalogue of 1,000 served ISBNs: Parquet and CSV in the
bucket with version, model, data end and lineage columns, validated, announced."""
from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import pandas as pd
import pytest
import requests

from shared import model_store
from shared.events import PubSubMessage
from shared.gcs import storage_client
from shared.isbn import check_digit
from shared.monitoring import EXPORT_JOB, on_message
from shared.runstore import RunStore
from tests.test_validation import artifact

CATALOGUE = 1000
AT = datetime(2026, 11, 25, 6, 0, tzinfo=timezone.utc)  # a Wednesday: the export's week is Monday 23 November


def isbn(number: int) -> str:
    first12 = f"979{800000000 + number:09d}"
    return first12 + check_digit(first12)


def served_catalogue(cfg, store: RunStore, forecast: dict) -> list[str]:
    """Registered models with a champion alias and their index entries, made directly (no
    training): the export reads exactly these."""
    api = f"{cfg.mlflow_tracking_uri}/api/2.0/mlflow"
    session = requests.Session()

    def serve(number: int) -> str:
        name = cfg.model_name(isbn(number))
        session.post(f"{api}/registered-models/create", json={"name": name}).raise_for_status()
        session.post(f"{api}/model-versions/create", json={"name": name, "source": "s3://bookcast-test/model"}).raise_for_status()
        session.post(f"{api}/registered-models/alias", json={"name": name, "alias": "champion", "version": "1"}
                     ).raise_for_status()
        target = model_store.AliasTarget(isbn=isbn(number), model_name=name, alias="champion", version="1",
                                         run_id=f"run-{number}", created_at=AT,
                                         tags={"family": "ets", "kind": "candidate", "data_hash": f"h{number}"})
        store.record_champion(isbn(number), model_store.index_entry(target, forecast))
        return isbn(number)

    with ThreadPoolExecutor(8) as pool:
        return sorted(pool.map(serve, range(CATALOGUE)))


@pytest.mark.usefixtures("mlflow_server")
def test_a_catalogue_is_exported_validated_and_announced(cfg, probe, project_gcs):
    store = RunStore(cfg)
    storage_client(cfg.project_id).create_bucket(cfg.data_bucket)
    good = artifact()
    isbns = served_catalogue(cfg, store, good)
    broken = isbns[7]
    target, _ = model_store.from_index(broken, store.champions([broken])[broken])
    store.record_champion(broken, model_store.index_entry(target, {**good, "mean": [float("nan")] * len(good["mean"])}))

    tick = PubSubMessage(message_id="export-1", publish_time=AT, topic="monitor-ticks",
                         attributes={"event_type": "schedule.tick", "correlation_id": "scheduler-forecast-export"},
                         data=json.dumps({"job": EXPORT_JOB}).encode())
    result = on_message(cfg, tick, store)["exported"]

    assert result["week"] == "2026-11-23" and result["isbns"] == CATALOGUE - 1 and result["rows"] == 26 * (CATALOGUE - 1)
    assert list(result["left_out"]) == [broken] and "non-finite" in result["left_out"][broken]
    bucket = storage_client(cfg.project_id).bucket(cfg.data_bucket)
    table = pd.read_parquet(io.BytesIO(bucket.blob("forecasts/2026-11-23/forecasts.parquet").download_as_bytes()))
    as_csv = pd.read_csv(io.BytesIO(bucket.blob("forecasts/2026-11-23/forecasts.csv").download_as_bytes()), dtype={"isbn": str})
    assert len(table) == len(as_csv) == 26 * (CATALOGUE - 1) and set(table["isbn"]) == set(isbns) - {broken}
    assert {"model_version", "model", "data_end", "model_family", "model_data_hash", "interval"} <= set(table.columns)
    first = table[table["isbn"] == isbns[0]].sort_values("week")
    assert str(first["week"].iloc[0]) == good["start"] and (first["lower"] <= first["mean"]).all()
    assert first["model_data_hash"].iloc[0] == "h0" and first["data_end"].iloc[0] == good["data_end"]
    (announced,) = probe.messages("forecast-exports")
    assert announced["objects"] == [f"gs://{cfg.data_bucket}/forecasts/2026-11-23/forecasts.parquet",
                                    f"gs://{cfg.data_bucket}/forecasts/2026-11-23/forecasts.csv"]
