"""Validation after every move of the serving alias: a version whose forecast cannot be
served as it should is taken off at once, audited, announced and alerted as critical."""
from __future__ import annotations

import copy
import json
from datetime import date, timedelta

import numpy as np
import pytest

from shared import model_store, registry
from shared.events import PubSubMessage
from shared.forecasting import models
from shared.forecasting.models import ModelSpec
from shared.forecasting.serving import serving_problems
from shared.monitoring import event_alerts
from shared.runstore import RunStore, now
from shared.training.per_isbn import serving_forecast
from tests.helpers import sample

ISBN = "9780306406157"


def artifact(seed: int = 3) -> dict:
    frame = sample(1, years=2, seed=seed)
    fitted = models.fit(frame["units"].to_numpy(float), frame["week"].iloc[0], ModelSpec(kind="ets", trend="add"))
    return serving_forecast(fitted.to_dict())


def test_a_good_forecast_passes_and_each_fault_is_named():
    good = artifact()
    assert serving_problems(good) == []
    nan = copy.deepcopy(good)
    nan["mean"][3] = float("nan")
    assert serving_problems(nan) == ["non-finite values in the forecast or its intervals"]
    swapped = {**good, "interval_scale": [[0.5, 1.0], [0.8, 2.0], [0.95, 0.5]]}  # a 95% band inside the 80% one
    assert serving_problems(swapped) == ["interval bounds out of order"]
    late = {**good, "start": (date.fromisoformat(good["start"]) - timedelta(weeks=3)).isoformat()}
    assert "not the week after its data" in serving_problems(late)[0]
    huge = {**good, "mean": (np.asarray(good["mean"]) + np.log(100)).tolist()}
    assert serving_problems(huge)[0].startswith("implausible:")
    assert serving_problems({"start": "2026-01-05"})[0].startswith("the serving artifact cannot be read")


@pytest.mark.usefixtures("mlflow_server")
def test_a_version_that_fails_validation_is_reverted_and_alerted(cfg, probe):
    store = RunStore(cfg)
    good = artifact()
    fitted = {"spec": {"kind": "seasonal_naive"}, "start": "2024-01-01", "n_obs": 0, "params": [], "history": []}
    first = registry.register(cfg, ISBN, fitted, good, params={}, metrics={}, tags={"kind": "candidate"}).version
    registry.move_alias(cfg, store, ISBN, first, "promote", "test", "pytest", "cid-validation")
    broken = {**good, "mean": [float("nan")] * len(good["mean"])}
    second = registry.register(cfg, ISBN, fitted, broken, params={}, metrics={}, tags={"kind": "candidate"}).version

    registry.move_alias(cfg, store, ISBN, second, "promote", "test", "pytest", "cid-validation")
    assert model_store.resolve(cfg, ISBN).version == first
    moves = store.alias_history(ISBN)
    assert [(m["action"], m["to_version"]) for m in moves] == [("promote", first), ("promote", second),
                                                                 ("revert", first)]
    assert moves[-1]["actor"] == "validation" and "non-finite" in moves[-1]["reason"]
    assert store.champions([ISBN])[ISBN]["version"] == first

    changes = probe.messages("model-changes", at_least=3)
    revert = next(c for c in changes if c["action"] == "revert")
    assert revert["from_version"] == second and revert["to_version"] == first
    message = PubSubMessage(message_id="m1", publish_time=now(), topic="model-changes",
                            attributes={"event_type": "model.changed", "correlation_id": "cid-validation"},
                            data=json.dumps(revert).encode())
    (alert,) = event_alerts(message)
    assert alert.severity == "critical" and f"v{second} failed validation" in alert.title
