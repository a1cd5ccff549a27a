"""Library messages stay out of our output: in the cloud every stderr line is an ERROR
entry, and locally a worker's log is one JSON object per line."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

REGISTER_TWICE = """
from shared.config import load_settings
from shared.logs import configure
configure()
from shared import registry
from shared.forecasting import models
from shared.forecasting.models import ModelSpec
from shared.training.per_isbn import serving_forecast
from tests.helpers import sample

cfg = load_settings("test").model_copy(update={"project_id": "%(project)s", "mlflow_tracking_uri": "%(uri)s",
                                              "model_name_prefix": "%(project)s-"})
frame = sample(1, years=2)
fitted = models.fit(frame["units"].to_numpy(float), frame["week"].iloc[0], ModelSpec(kind="seasonal_naive")).to_dict()
for _ in range(2):  # a new registered model, then a new version of it
    registration = registry.register(cfg, frame["isbn"].iloc[0], fitted, serving_forecast(fitted), params={},
                                     metrics={"mae": 1.0}, tags={"kind": "candidate"})
version = registry.client(cfg).get_model_version(cfg.model_name(frame["isbn"].iloc[0]), registration.version)
assert version.run_id == registration.run_id and version.version == "2", version
"""


def test_registering_versions_writes_only_json_log_lines(cfg, mlflow_server):
    done = subprocess.run([sys.executable, "-c", REGISTER_TWICE % {"project": cfg.project_id, "uri": mlflow_server}],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONWARNINGS": ""})
    assert done.returncode == 0, done.stderr
    for line in (done.stdout + done.stderr).splitlines():
        assert isinstance(json.loads(line), dict), line
