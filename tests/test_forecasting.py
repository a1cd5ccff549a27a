"""The models and gates on their own: fast, no servers."""
from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pytest

from shared.config import GateSettings, load_settings
from shared.forecasting import models
from shared.forecasting.backtest import Backtest, evidence_worse
from shared.forecasting.gates import best_fallback
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
    assert m["wape"] == pytest.approx(5 / 30)
    assert m["relative_mae"] == pytest.approx((5 / 3) / (20 / 3))
    assert m["zero_weeks_in_holdout"] == 1


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
    spec = ModelSpec.from_dict(candidate.spec)
    assert not spec.fourier or spec.kind != "harmonic_arima"  # too short to identify a yearly season
    assert not any(spec.seasonal_order) and not spec.seasonal


def test_all_zero_series_is_refused():
    frame = short_series("9780306406157", 80).assign(units=0)
    assert train_isbn("9780306406157", *weekly(frame), TRAINING).status == "refused"


WINDOWS = [13, 13, 13, 26]  # a typical backtest: three folds and the holdout


def _backtest(label: str, errors, level: float = 1000.0) -> dict:
    """A backtest whose absolute errors are ``errors`` (one per week of WINDOWS)."""
    errors = np.broadcast_to(np.asarray(errors, float), (sum(WINDOWS),))
    actual = np.full(len(errors), level)
    return Backtest(label, actual.tolist(), (actual - errors).tolist(), [0.0] * len(errors), list(WINDOWS)).to_dict()


def _noisy(scale: float, seed: int) -> np.ndarray:
    return np.abs(np.random.default_rng(seed).normal(0, scale, sum(WINDOWS)))


def _candidate(ours=None, naive=None, combination=None, champion=None, level: float = 1000.0, **metrics):
    base = {"rmse": 1500.0, "mae": 1000.0, "mape": 0.1, "wape": 0.2, "mase": 0.5, "naive_mase": 1.0,
            "relative_mae": 0.5, "zero_weeks_in_holdout": 0}
    backtests = {"candidate": _backtest("candidate", _noisy(0.05 * level, 1) if ours is None else ours, level),
                 "seasonal_naive": _backtest("seasonal naive", _noisy(0.1 * level, 2) if naive is None else naive, level),
                 "combination": _backtest("combination", _noisy(0.08 * level, 3) if combination is None else combination,
                                          level)}
    if champion is not None:
        backtests["champion"] = _backtest("champion", champion, level)
    return Candidate(isbn="x", status="trained", metrics={**base, **metrics}, backtests=backtests)


def test_default_gates_are_scale_free():
    """A title selling thousands a week has an RMSE in the thousands: that alone must not
    quarantine a model that beats naive with a small error for its level."""
    gates = GateSettings()
    assert gates.max_rmse is None and gates.max_mape is None
    assert gate(_candidate(), gates).passed
    assert gate(_candidate(level=10.0, rmse=15.0, mae=10.0), gates).passed


def test_a_candidate_that_loses_one_half_year_but_wins_the_backtests_serves():
    """The holdout alone said 'worse than naive'; three folds said clearly better. Refusing
    it was what threw the better model away."""
    ours = np.concatenate([np.full(39, 20.0), np.full(26, 110.0)])
    verdict = gate(_candidate(ours=ours, naive=np.full(65, 100.0), relative_mae=1.1), GateSettings())
    assert verdict.passed, verdict.reasons
    assert verdict.evidence["backtest_relative_mae"] == pytest.approx((39 * 20 + 26 * 110) / 65 / 100)


def test_a_candidate_only_slightly_behind_naive_is_not_refused_on_thin_evidence():
    naive, ours = _noisy(100, 5), _noisy(100, 6)
    ours *= 1.05 * naive.mean() / ours.mean()  # 5% worse over 65 weeks of noisy errors
    verdict = gate(_candidate(ours=ours, naive=naive), GateSettings())
    assert verdict.passed and 0.5 < verdict.evidence["worse_than_naive"] < GateSettings().evidence
    assert verdict.evidence["backtest_relative_mae"] == pytest.approx(1.05)


def test_a_candidate_clearly_worse_than_naive_is_refused_and_the_best_fallback_serves():
    verdict = gate(_candidate(ours=_noisy(200, 1) + 100, naive=_noisy(100, 2), combination=_noisy(80, 3)),
                   GateSettings())
    assert not verdict.passed and verdict.evidence["worse_than_naive"] > 0.99
    assert verdict.reasons[0].startswith("worse than seasonal naive on the backtests: over 65 unseen weeks in 4 windows")
    # The plain combination did better than naive on the same weeks: naive serves only where it wins.
    assert verdict.fallback == "combination"
    assert verdict.fallback_reason.startswith("combination has the lowest mean absolute error of the fallbacks on 65")
    assert gate(_candidate(ours=_noisy(200, 1) + 100, naive=_noisy(50, 2), combination=_noisy(80, 3)),
                GateSettings()).fallback == "seasonal_naive"


def test_seasonal_naive_replaces_the_combination_only_when_the_backtests_are_sure_it_is_better():
    """Naive a little lower on the backtests is noise on real sales, where it is the weakest
    method: the combination serves, and the reason says why naive did not."""
    refused = _noisy(200, 1) + 100
    combination = _noisy(80, 3)
    slightly_lower = combination[::-1] * 0.97  # the same spread, 3% lower on average, weeks reordered
    verdict = gate(_candidate(ours=refused, naive=slightly_lower, combination=combination), GateSettings())
    assert not verdict.passed and verdict.fallback == "combination"
    assert verdict.fallback_reason.startswith("combination has the lowest mean absolute error of the fitted fallbacks "
                                              "on 65 backtest weeks and seasonal naive's lower error is not clear (")
    assert "90% needed" in verdict.fallback_reason
    clearly_lower = gate(_candidate(ours=refused, naive=combination * 0.5, combination=combination), GateSettings())
    assert clearly_lower.fallback == "seasonal_naive"
    assert clearly_lower.fallback_reason.startswith("seasonal naive beats combination on 65 backtest weeks (")


def test_a_fallback_worse_than_the_refused_candidate_never_serves_in_its_place():
    """Naive clearly beats the candidate, the combination is worse still, and naive's edge on
    the combination is too noisy to be sure of: replacing the refused candidate by the
    combination would serve a bigger loser, so naive serves."""
    naive = _noisy(100, 2) + 100
    refused = naive + 30  # clearly worse than naive, week after week
    combination = refused + np.repeat([-120.0, 160.0, -100.0, 45.0], WINDOWS)  # worse on average, window by window
    options = {"seasonal_naive": Backtest.from_dict(_backtest("seasonal naive", naive)),
               "combination": Backtest.from_dict(_backtest("combination", combination))}
    assert options["combination"].mae > Backtest.from_dict(_backtest("candidate", refused)).mae
    assert best_fallback(options, GateSettings(), "seasonal_naive")[0] == "combination"  # naive's edge alone: unclear
    verdict = gate(_candidate(ours=refused, naive=naive, combination=combination), GateSettings())
    assert not verdict.passed and verdict.evidence["worse_than_naive"] > 0.99
    assert verdict.fallback == "seasonal_naive"
    assert verdict.fallback_reason.startswith("seasonal naive is the only fallback that does better than the refused "
                                              "candidate on 65 backtest weeks (candidate ")

    # A configured limit refuses a candidate that no fallback beats: the reason says so.
    limited = gate(_candidate(mape=0.9), GateSettings(max_mape=0.3))
    assert not limited.passed and limited.fallback == "combination"
    assert "no fallback does better than the refused candidate's" in limited.fallback_reason


def test_each_failed_gate_is_one_plain_reason():
    gates = GateSettings(max_wape=0.05, max_rmse=80, max_mape=0.3)
    verdict = gate(_candidate(ours=_noisy(200, 1) + 100, naive=_noisy(100, 2), mape=0.45), gates)
    assert not verdict.passed
    assert len(verdict.reasons) == 4
    assert verdict.reasons[0].startswith("worse than seasonal naive on the backtests")
    assert "of the units sold in the backtest weeks (limit 5%)" in verdict.reasons[1]
    assert verdict.reasons[2].startswith("RMSE 1500.0 is not below the configured absolute limit 80")
    assert verdict.reasons[3].startswith("MAPE 45%")


def test_mape_gate_is_never_applied_to_a_holdout_with_zero_weeks():
    gates = GateSettings(max_mape=0.3)
    assert gate(_candidate(mape=0.9, zero_weeks_in_holdout=3), gates).passed
    assert not gate(_candidate(mape=0.9), gates).passed


def test_gate_rejects_a_model_clearly_worse_than_the_champion_beyond_the_margin():
    gates = GateSettings(champion_margin=0.05)
    champion = np.full(65, 50.0)
    assert gate(_candidate(ours=champion * 1.03, champion=champion), gates).passed
    verdict = gate(_candidate(ours=_noisy(10, 1) + 75, champion=champion), gates)
    assert len(verdict.reasons) == 1, verdict.reasons
    assert verdict.reasons[0].startswith("worse than the current champion refitted on the same weeks: mean absolute "
                                         "error ")
    assert "over 65 unseen weeks" in verdict.reasons[0] and "beyond the +5% allowed" in verdict.reasons[0]
    assert verdict.fallback == "champion"  # the champion did best of the fallbacks, so it serves on


def test_evidence_counts_correlated_weeks_as_less_than_independent_ones():
    """Errors of one window share a forecast origin: a run of bad weeks is one event, not 13."""
    noise = np.random.default_rng(9).normal(0, 10, 65)
    independent = noise - noise.mean() + 4
    persistent = np.repeat([-12.0, 8.0, -4.0, 14.0, -6.0], 13) + 4  # same mean, same spread, in blocks
    other = Backtest.from_dict(_backtest("other", np.full(65, 50.0)))
    sure = {name: evidence_worse(Backtest.from_dict(_backtest(name, 50 + shift)), other)
            for name, shift in (("independent", independent), ("persistent", persistent))}
    assert sure["independent"] > 0.99 and 0.5 < sure["persistent"] < 0.97
    level = Backtest.from_dict(_backtest("level", np.full(65, 50.0)))
    assert evidence_worse(level, other) == 0.5


def _weeks(n: int, start: date = date(2023, 1, 2)) -> list[date]:
    return [start + timedelta(weeks=i) for i in range(n)]


def test_slow_title_with_mostly_zero_weeks_gets_a_sensible_forecast():
    rng = np.random.default_rng(3)
    units = np.where(rng.random(150) < 0.4, rng.poisson(3, 150) + 1, 0).astype(float)
    assert np.mean(units == 0) >= 0.55
    candidate = train_isbn("9780306406157", _weeks(150), list(units), TRAINING)
    assert candidate.status == "trained", candidate.reason
    assert candidate.study["cv_metric"] == "rmse" and "tsb" in candidate.study["families_searched"]
    mean, lower, upper = models.forecast(FittedModel.from_dict(candidate.model), 26).bounds(0.8)
    assert np.all(lower >= 0) and np.all(lower <= mean) and np.all(mean <= upper)
    # Not a constant 0 for a title that sells: close to its average weekly demand.
    assert 0.5 * units.mean() < mean.mean() < 2 * units.mean()


def test_a_78_week_history_still_gets_yearly_seasonality():
    weeks = _weeks(78, date(2024, 6, 3))
    season = 1 + 0.8 * np.cos(2 * np.pi * (np.arange(78) + 22) / 52.18)  # high in winter, low in summer
    units = np.round(200 * season * np.random.default_rng(8).lognormal(0, 0.08, 78))
    candidate = train_isbn("9780306406157", weeks, list(units), TRAINING)
    assert candidate.status == "trained", candidate.reason
    spec = ModelSpec.from_dict(candidate.spec)

    def seasonal(s: ModelSpec) -> bool:
        return (s.kind == "harmonic_arima" and s.fourier > 0) or any(s.seasonal_order) or s.seasonal

    assert any(seasonal(s) for s in (spec, *spec.members)), spec  # alone or as a combination's member
    assert candidate.metrics["relative_mae"] < 1


def test_a_candidate_that_loses_to_naive_is_quarantined_with_a_readable_reason():
    # The same year again and again: seasonal naive is exact, so no candidate can beat it.
    year = np.random.default_rng(4).integers(50, 500, 52).astype(float)
    units = np.tile(year, 3)
    candidate = train_isbn("9780306406157", _weeks(len(units)), list(units), TRAINING)
    verdict = gate(candidate, GateSettings())
    assert not verdict.passed
    assert verdict.reasons[0].startswith("worse than seasonal naive on the backtests")
    assert verdict.fallback == "seasonal_naive"  # it wins here, so it serves


def test_calibration_widens_overconfident_intervals_and_narrows_timid_ones():
    from shared.forecasting.calibration import interval_scale

    rng = np.random.default_rng(0)
    wide = dict(interval_scale(np.abs(rng.normal(0, 2.0, 400))))
    narrow = dict(interval_scale(np.abs(rng.normal(0, 0.5, 400))))
    assert 1.7 < wide[0.8] < 2.3 and 1.7 < wide[0.95] < 2.3
    assert 0.4 < narrow[0.8] < 0.6
    assert interval_scale(np.ones(3)) == []  # too few unseen weeks to say anything


def test_calibrated_bands_follow_how_errors_grow_with_the_horizon():
    from shared.forecasting.calibration import calibrate, horizon_exponent, interval_scale
    from shared.forecasting.models import Forecast

    rng = np.random.default_rng(4)
    steps = np.arange(1, 27)
    # The model's standard errors grow faster than its real errors: scores fall with the horizon.
    horizons = np.tile(steps, 3)
    scores = np.abs(rng.normal(0, 1, len(horizons))) * horizons ** -0.3
    fresh = np.abs(rng.normal(0, 1, (4000, 26))) * steps ** -0.3

    def cover(ratios, shape, weeks=26):
        half = Forecast(date(2026, 1, 5), np.zeros(weeks), np.ones(weeks), "none", ratios, shape).bounds(0.8)[2]
        return (fresh <= half[:26]).mean(axis=0), half

    shaped, half = cover(*calibrate(scores, horizons, 0.3), weeks=40)
    flat, _ = cover(interval_scale(scores), [])
    assert 0.72 < shaped[:6].mean() < 0.88 and 0.72 < shaped[-6:].mean() < 0.88
    assert flat[-6:].mean() > 0.88 and flat[:6].mean() < shaped[:6].mean()  # one quantile for all: wrong at both ends
    assert half[39] == half[25] < half[0]  # no narrower beyond the longest horizon the backtests saw
    assert calibrate(np.ones(3), [1, 2, 3], 0.3) == ([], [])  # too few weeks: normal intervals, no shape
    assert calibrate(scores, horizons, 0.0)[1] == []  # seasonal naive: its standard error is flat within a year
    assert horizon_exponent(ModelSpec(kind="seasonal_naive")) == horizon_exponent(ModelSpec(kind="tsb")) == 0
    assert horizon_exponent(models.plain_combination(200)) == horizon_exponent(ModelSpec(kind="ets")) > 0


def test_calibrated_intervals_reach_the_serving_artifact():
    from shared.forecasting.serving import from_artifact

    frame = sample(1, years=3, seed=5)
    candidate = train_isbn("9780306406157", *weekly(frame), TRAINING)
    artifact = serving_forecast(candidate.model)
    assert artifact["interval_scale"] == candidate.model["interval_scale"] and artifact["interval_scale"]
    assert artifact["horizon_shape"] == candidate.model["horizon_shape"] == [0.3, 26.0]
    _, mean, lower, upper = from_artifact(artifact, 30, 0.8)
    served_by_model = models.forecast(FittedModel.from_dict(candidate.model), 30).bounds(0.8)
    np.testing.assert_allclose(np.stack([mean, lower, upper]), np.stack(served_by_model), rtol=1e-9)
    # In the model's space the band is the calibrated multiplier times the standard error,
    # narrowed by h ** -0.3; a version registered before the shape serves flat bands, as it did.
    assert artifact["transform"] == "log1p"
    se, centre = np.asarray(artifact["se"][:30]), np.asarray(artifact["mean"][:30])
    multiplier = models.calibrated_multiplier(0.8, artifact["interval_scale"])
    h = np.arange(1, 31)
    np.testing.assert_allclose(np.log1p(upper) - centre, multiplier * np.minimum(h, 26) ** -0.3 * se, rtol=1e-6)
    legacy = from_artifact({key: value for key, value in artifact.items() if key != "horizon_shape"}, 30, 0.8)
    np.testing.assert_allclose(np.log1p(legacy[3]) - centre, multiplier * se, rtol=1e-6)


@pytest.mark.parametrize("kind", ["harmonic_arima", "sarima", "ets", "theta", "tsb", "combination", "seasonal_naive"])
def test_refresh_conditions_the_same_parameters_on_new_weeks(kind):
    frame = sample(1, years=3, seed=5)
    weeks, units = weekly(frame)
    y = np.asarray(units)
    spec = {"combination": ModelSpec(kind="combination", members=(ModelSpec(kind="ets", trend="add"),
                                                                   ModelSpec(kind="theta"))),
            "sarima": ModelSpec(kind="sarima", p=1, d=0, q=0, seasonal_order=(0, 1, 0, 52))}.get(kind, ModelSpec(kind=kind))
    old = models.fit(y[:-8], weeks[0], spec)
    old.interval_scale, old.horizon_shape = [[0.8, 1.3], [0.95, 1.2]], [0.3, 26.0]
    fresh = models.refresh(FittedModel.from_dict(old.to_dict()), y)
    assert fresh.n_obs == len(y) and fresh.interval_scale == old.interval_scale
    assert fresh.horizon_shape == old.horizon_shape
    if kind not in ("tsb", "theta"):  # closed-form smoothers recompute their state; the rest keep parameters
        assert fresh.params == old.params
    prediction = models.forecast(fresh, 13)
    assert prediction.start == weeks[-1] + timedelta(weeks=1)  # starts the week after the newest week
    assert np.all(np.isfinite(prediction.mean))
    with pytest.raises(ValueError, match="history was revised"):
        models.refresh(old, np.concatenate([[y[0] + 1], y[1:]]))


def test_model_labels_are_plain_words():
    assert ModelSpec(kind="ets", transform="none").label() == "ETS(A,N,N)"
    assert ModelSpec(kind="theta", seasonal=True).label() == "Theta (deseasonalised) on log units"
    assert ModelSpec(kind="harmonic_arima", p=2, d=0, q=1, fourier=7).label() == \
        "ARIMA(2,0,1) + 7 Fourier pairs on log units"


def test_a_combination_weighs_its_members_by_their_backtest_errors():
    from shared.forecasting.tuning import combination_weights

    assert combination_weights([1.0, 2.0]) == (0.8, 0.2)  # twice as far off: a quarter of the weight
    frame = sample(1, years=3, seed=5)
    candidate = train_isbn("9780306406157", *weekly(frame), TRAINING)
    spec = ModelSpec.from_dict(candidate.spec)
    assert spec.kind == "combination" and len(spec.weights) == len(spec.members) >= 2
    assert sum(spec.weights) == pytest.approx(1, abs=1e-3)
    # Re-weighed on every window, the holdout included: not the weights the folds alone gave.
    assert list(spec.weights) != candidate.study["fold_weights"]
    assert spec.label().startswith("weighted mean of ") and f"({spec.weights[0]:.0%})" in spec.label()
    assert ModelSpec.from_dict(candidate.spec) == spec and ModelSpec.from_dict(models.plain_combination(60).to_dict()).weights == ()
    fitted = FittedModel.from_dict(candidate.model)
    members = [models.forecast(m, 8).bounds(0.5)[0] for m in fitted.members]
    np.testing.assert_allclose(models.forecast(fitted, 8).bounds(0.5)[0], np.average(members, axis=0, weights=spec.weights))
