"""The models and gates on their own: fast, no servers."""
from __future__ import annotations

from datetime import date

import numpy as np
import pytest

from shared.config import GateSettings, load_settings
from shared.forecasting import models
from shared.forecasting.metrics import accuracy
from shared.forecasting.models import FittedModel, ModelSpec
from shared.training.per_isbn import Candidate, gate, serving_forecast, train_isbn
from tests.helpers import sample, short_series

TRAINING = load_settings("test").training


def weekly(frame):
    return list(frame["week"]), list(frame["units"].astype(float))


def test_parameters_alone_rebuild_the_same_forecast():
    frame = sample(1, years=3)
    weeks, units = weekly(frame)
    fitted = models.fit(np.asarray(units), weeks[0], ModelSpec(p=1, d=1, q=1, fourier=3, holiday=True))
    restored = FittedModel.from_dict(fitted.to_dict())
    a, b = models.forecast(fitted, 30), models.forecast(restored, 30)
    np.testing.assert_allclose(a.mean, b.mean)
    np.testing.assert_allclose(a.se, b.se)
    mean, lower, upper = a.bounds(0.9)
    assert np.all(lower <= mean) and np.all(mean <= upper) and np.all(lower >= 0)


def test_seasonal_naive_repeats_last_year():
    y = np.arange(120, dtype=float)
    forecast = models.forecast(models.fit(y, date(2024, 1, 1), ModelSpec(kind="seasonal_naive")), 60)
    np.testing.assert_array_equal(forecast.mean[:52], y[-52:])
    np.testing.assert_array_equal(forecast.mean[52:], y[-52:][:8])
    assert forecast.se[55] > forecast.se[0]


def test_metrics_on_known_values():
    m = accuracy(np.array([10.0, 20, 0]), np.array([12.0, 18, 1]), np.array([10.0, 10, 10]),
                 train=np.arange(10, dtype=float), season=1)
    assert m["rmse"] == pytest.approx(np.sqrt((4 + 4 + 1) / 3))
    assert m["mape"] == pytest.approx((0.2 + 0.1) / 2)  # zero actuals are left out of MAPE
    assert m["relative_mase"] == pytest.approx((5 / 3) / (20 / 3))


def test_tuned_model_trains_and_beats_naive_on_a_seasonal_book():
    frame = sample(1, years=3, seed=5)
    candidate = train_isbn("9780306406157", *weekly(frame), TRAINING)
    assert candidate.status == "trained", candidate.reason
    assert candidate.study["trials"] == TRAINING.trials
    assert {"rmse", "mape", "smape", "mase", "naive_mase"} <= set(candidate.metrics)
    serving = serving_forecast(candidate.model)
    assert len(serving["mean"]) == 104 and serving["data_end"] == str(frame["week"].iloc[-1])


@pytest.mark.parametrize("weeks", [5, 20])
def test_short_history_is_refused_with_a_reason(weeks):
    frame = short_series("9780306406157", weeks)
    candidate = train_isbn("9780306406157", *weekly(frame), TRAINING)
    assert candidate.status == "refused"
    assert f"only {weeks} weeks of history" in candidate.reason


def test_one_year_of_history_still_gets_a_model():
    frame = short_series("9780306406157", 45)
    candidate = train_isbn("9780306406157", *weekly(frame), TRAINING)
    assert candidate.status == "trained", candidate.reason
    assert candidate.spec["fourier"] == 0  # too short to identify a yearly season


def test_all_zero_series_is_refused():
    frame = short_series("9780306406157", 80).assign(units=0)
    assert train_isbn("9780306406157", *weekly(frame), TRAINING).status == "refused"


def _candidate(**metrics):
    base = {"rmse": 10.0, "mape": 0.1, "mase": 0.5, "naive_mase": 1.0, "relative_mase": 0.5}
    return Candidate(isbn="x", status="trained", metrics={**base, **metrics})


def test_gates_pass_a_good_model_and_name_each_failure():
    gates = GateSettings(max_rmse=80, max_mape=0.3, champion_margin=0.05)
    assert gate(_candidate(), gates).passed
    verdict = gate(_candidate(rmse=120, mape=0.45, relative_mase=1.2), gates)
    assert not verdict.passed
    assert [r.split()[0] for r in verdict.reasons] == ["RMSE", "MAPE", "does"]


def test_gate_rejects_a_model_worse_than_the_champion_beyond_the_margin():
    gates = GateSettings(champion_margin=0.05)
    within = _candidate(rmse=10.4)
    within.champion_metrics = {"rmse": 10.0}
    beyond = _candidate(rmse=10.6)
    beyond.champion_metrics = {"rmse": 10.0}
    assert gate(within, gates).passed
    assert "worse than the champion" in gate(beyond, gates).reasons[0]
