"""The stock `gcloud` CLI on the local cloud, with the settings `make env` prints: an upload
with `gcloud storage cp` and a training request with `gcloud pubsub topics publish` are
handled like any other."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from shared.runstore import RunStore
from shared.trigger import handle
from tests.helpers import sample, write_csv
from tests.test_trigger import bucket, dry_cfg, notifications  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.usefixtures("mlflow_server"),
              pytest.mark.skipif(shutil.which("gcloud") is None, reason="the Google Cloud CLI is not installed")]


def test_stock_gcloud_uploads_and_a_bare_request_are_decided(dry_cfg, probe, bucket, cloud, tmp_path):
    env = {**os.environ, **cloud.gcloud_env(project=dry_cfg.project_id, gcs_url=os.environ["STORAGE_EMULATOR_HOST"])}

    def gcloud(*args: str) -> str:
        done = subprocess.run(["gcloud", *args], capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout

    frame = sample(2, years=2)
    path = write_csv(frame, tmp_path)
    gcloud("storage", "cp", path, f"gs://{dry_cfg.data_bucket}/sales/by-gcloud.csv",
           "--custom-metadata=correlation_id=cid-gcloud")
    (notification,) = notifications(probe, 1)
    assert handle(dry_cfg, notification).status == "accepted"
    store = RunStore(dry_cfg)
    assert sorted(d["action"] for d in store.decisions() if d["correlation_id"] == "cid-gcloud") == ["train", "train"]

    gcloud("pubsub", "topics", "publish", "training-requests", "--message", "{}")
    (request,) = notifications(probe, 1, topic="training-requests")
    outcome = handle(dry_cfg, request)
    # `{}` asks for a decision on every known ISBN; both are training, so each becomes a follow-up.
    asked = [d for d in store.decisions() if d["cause"]["kind"] == "request"]
    assert outcome.status == "accepted" and sorted(d["isbn"] for d in asked) == sorted(frame["isbn"].unique())
    assert {d["action"] for d in asked} == {"coalesce"} and asked[0]["correlation_id"].startswith("request-")
