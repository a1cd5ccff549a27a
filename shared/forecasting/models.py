"""The model families one ISBN can be served by, and the seasonal-naive baseline.

- ``harmonic_arima``: ARIMA errors with Fourier terms for the yearly season (dynamic
  harmonic regression) and an optional Christmas-peak regressor. Works from one year of data.
- ``sarima``: ARIMA(p,d,q)(0,1,0)52: a true seasonal difference at 52 weeks, with ARMA
  errors and a drift on the differenced series. The seasonal MA/AR terms at 52 are left out
  because they make a ~100-element state that fits in 6-18 s (bench/README.md); the seasonal
  difference is taken outside the state-space model and integrated back when forecasting,
  which keeps the state small (0.02 s instead of 0.4-9 s per fit).
- ``ets``: exponential smoothing (statsmodels ETSModel): level, optional (damped) trend,
  optional additive 52-week season when two years support its 51 initial states.
- ``theta``: the Theta method (statsmodels ThetaModel), deseasonalised when two years allow.
- ``tsb``: Teunter-Syntetos-Babai intermittent demand: smoothed demand probability times
  smoothed demand size, for slow titles with many zero weeks.
- ``combination``: the best two to four families' forecasts averaged, each weighted by the
  inverse square of its backtest error, unless it is more than a quarter worse on the folds
  than the best one alone (combinations are robust on real sales).
- ``seasonal_naive``: last year's week, the baseline every candidate must beat.
- ``plain_combination``: seasonal naive, Theta and damped ETS averaged, untuned: with seasonal
  naive and the champion, one of the fallbacks a refused candidate is replaced by.

A fitted model is kept as its spec and parameter vector (about 1 KB) plus the history it was
conditioned on, and is rebuilt without re-estimation to forecast. Intervals are normal in the
model's transformed space, widened or narrowed by ``interval_scale``: multipliers measured
on unseen weeks (shared/forecasting/calibration.py), so an 80% band covers about 80%, and
shaped over the horizon by ``horizon_shape`` (real errors grow more slowly with the
horizon than the models' standard errors say).
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field, fields
from datetime import date, timedelta
from statistics import NormalDist

import numpy as np

YEAR_WEEKS = 365.25 / 7
SEASON = 52
EPOCH = date(1970, 1, 5)  # a Monday: Fourier phases are absolute, so refits line up

ARIMA_KINDS = ("harmonic_arima", "sarima")
FAMILIES = ("harmonic_arima", "sarima", "ets", "theta", "tsb")
COMBINATION = "combination"
BASELINE = "seasonal_naive"
MAX_LOG_UNITS = np.log1p(1e9)  # no interval reaches past a billion units a week


@dataclass(frozen=True)
class ModelSpec:
    kind: str = "harmonic_arima"  # one of FAMILIES or BASELINE
    transform: str = "log1p"      # or "none"
    # ARIMA families
    p: int = 1
    d: int = 1
    q: int = 1
    fourier: int = 3
    holiday: bool = False          # a Christmas-peak regressor: too sharp for a few Fourier pairs
    seasonal_order: tuple[int, int, int, int] = (0, 0, 0, 0)
    # ets: trend "none" or "add", damped; ets and theta: seasonal (52 weeks)
    trend: str = "none"
    damped: bool = False
    seasonal: bool = False
    # tsb: smoothing of the demand size and of the demand probability
    alpha: float = 0.1
    beta: float = 0.1
    # combination: the member specs and their weights (empty: equal weights)
    members: tuple["ModelSpec", ...] = ()
    weights: tuple[float, ...] = ()

    @classmethod
    def from_dict(cls, data: dict) -> "ModelSpec":
        """From JSON (the seasonal order arrives as a list); keys of other families' or older
        specs are ignored, so every registered version stays loadable."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if "seasonal_order" in values:
            values["seasonal_order"] = tuple(values["seasonal_order"])
        if "members" in values:
            values["members"] = tuple(cls.from_dict(m) for m in values["members"])
        if "weights" in values:
            values["weights"] = tuple(float(w) for w in values["weights"])
        return cls(**values)

    def to_dict(self) -> dict:
        """Only what this family uses, so registry params and tags read plainly."""
        if self.kind == COMBINATION:
            return {"kind": self.kind, "members": [m.to_dict() for m in self.members],
                    **({"weights": list(self.weights)} if self.weights else {})}
        used = {"kind", "transform"} | {
            "harmonic_arima": {"p", "d", "q", "fourier", "holiday"},
            "sarima": {"p", "d", "q", "seasonal_order"},
            "ets": {"trend", "damped", "seasonal"},
            "theta": {"seasonal"},
            "tsb": {"alpha", "beta"},
        }.get(self.kind, set())
        data = {k: v for k, v in asdict(self).items() if k in used}
        if "seasonal_order" in data:
            data["seasonal_order"] = list(data["seasonal_order"])
        return data

    def label(self) -> str:
        if self.kind == BASELINE:
            return "seasonal naive"
        if self.kind == COMBINATION:
            parts = [m.label() for m in self.members]
            if self.weights:
                parts = [f"{part} ({weight:.0%})" for part, weight in zip(parts, self.weights)]
            return ("weighted mean of " if self.weights else "mean of ") + " and ".join(
                [", ".join(parts[:-1]), parts[-1]] if len(parts) > 1 else parts)
        if self.kind == "tsb":
            return f"TSB intermittent (alpha {self.alpha:.2f}, beta {self.beta:.2f})"
        if self.kind == "ets":
            trend = {"none": "N", "add": "Ad" if self.damped else "A"}[self.trend]
            return f"ETS(A,{trend},{'A' if self.seasonal else 'N'}){self.scale}"
        if self.kind == "theta":
            return f"Theta{' (deseasonalised)' if self.seasonal else ''}{self.scale}"
        if self.kind == "sarima":
            P, D, Q, season = self.seasonal_order
            return f"SARIMA({self.p},{self.d},{self.q})({P},{D},{Q}){season}{self.scale}"
        terms = (([f"{self.fourier} Fourier pairs"] if self.fourier else []) + (["Christmas peak"] if self.holiday else []))
        return f"ARIMA({self.p},{self.d},{self.q})" + "".join(f" + {t}" for t in terms) + self.scale

    @property
    def scale(self) -> str:
        """What the label says about the transform: fitted on log units, or (no words) on units."""
        return " on log units" if self.transform == "log1p" else ""


def plain_combination(weeks: int) -> ModelSpec:
    """The untuned fallback combination: the mean of seasonal naive, Theta and damped-trend
    ETS on log units (seasonal where two years allow). Nothing in it is chosen on the data,
    so its backtest is an honest measure, and averaging three simple forecasters is robust
    on real sales where any one of them can be far off."""
    seasonal = weeks >= 2 * SEASON + 4
    return ModelSpec(kind=COMBINATION, members=(
        ModelSpec(kind=BASELINE), ModelSpec(kind="theta", seasonal=seasonal),
        ModelSpec(kind="ets", trend="add", damped=True)))


def calibrated_multiplier(level: float, interval_scale: list[list[float]] | None) -> float:
    """The half-width of a ``level`` interval in standard errors. Without calibration it is
    the normal quantile; with it, the normal quantile times the measured ratio, interpolated
    between the calibrated levels."""
    z = NormalDist().inv_cdf(0.5 + level / 2)
    if not interval_scale:
        return z
    levels = [float(pair[0]) for pair in interval_scale]
    ratios = [float(pair[1]) for pair in interval_scale]
    return z * float(np.interp(level, levels, ratios))


def horizon_factor(steps: np.ndarray, horizon_shape: list[float] | None) -> np.ndarray:
    """How much narrower than at one week ahead the calibrated band is ``steps`` weeks
    ahead: ``[exponent, longest calibrated horizon]`` gives min(step, longest) ** -exponent,
    flat beyond the horizons the calibration saw; no shape (versions calibrated before it
    existed), 1 at every step."""
    steps = np.asarray(steps, float)
    if not horizon_shape:
        return np.ones_like(steps)
    exponent, longest = horizon_shape
    return np.minimum(steps, longest) ** -exponent


@dataclass
class Forecast:
    """Point forecast and standard errors in the transformed space, from ``start``."""
    start: date
    mean: np.ndarray
    se: np.ndarray
    transform: str
    interval_scale: list[list[float]] = field(default_factory=list)
    horizon_shape: list[float] = field(default_factory=list)  # the first week is one week ahead

    def bounds(self, level: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        width = calibrated_multiplier(level, self.interval_scale) * self.se
        if self.interval_scale:  # the shape belongs to the ratios it was measured with
            width = width * horizon_factor(np.arange(1, len(self.se) + 1), self.horizon_shape)
        back = inverse(self.transform)
        # A wide band in log space must still come back as a finite number of units.
        upper = np.minimum(self.mean + width, MAX_LOG_UNITS) if self.transform == "log1p" else self.mean + width
        return (np.clip(back(self.mean), 0, None), np.clip(back(self.mean - width), 0, None),
                np.clip(back(upper), 0, None))


def forward(transform: str):
    return np.log1p if transform == "log1p" else (lambda x: np.asarray(x, float))


def inverse(transform: str):
    return np.expm1 if transform == "log1p" else (lambda x: np.asarray(x, float))


def week_numbers(start: date, n: int) -> np.ndarray:
    return (start - EPOCH).days // 7 + np.arange(n)


def christmas_peak(start: date, n: int) -> np.ndarray:
    """Closeness of each week to 18 December (a Gaussian of about two weeks)."""
    mondays = [start + timedelta(weeks=i) for i in range(n)]
    distance = []
    for monday in mondays:
        mid = monday + timedelta(days=3)
        peaks = [date(mid.year + offset, 12, 18) for offset in (-1, 0, 1)]
        distance.append(min(abs((mid - peak).days) for peak in peaks))
    return np.exp(-0.5 * (np.asarray(distance) / 12.0) ** 2)


def regressors(start: date, n: int, spec: "ModelSpec") -> np.ndarray | None:
    columns = []
    if spec.fourier and spec.kind == "harmonic_arima":
        t = week_numbers(start, n)[:, None]
        k = np.arange(1, spec.fourier + 1)[None, :]
        angle = 2 * np.pi * k * t / YEAR_WEEKS
        columns += [np.sin(angle), np.cos(angle)]
    if spec.holiday:
        columns.append(christmas_peak(start, n)[:, None])
    return np.hstack(columns) if columns else None


@dataclass
class FittedModel:
    spec: ModelSpec
    start: date                      # first week of the fitted data
    n_obs: int
    params: list[float] = field(default_factory=list)
    history: list[float] = field(default_factory=list)  # the series the model is conditioned on
    interval_scale: list[list[float]] = field(default_factory=list)  # [level, ratio to normal]
    horizon_shape: list[float] = field(default_factory=list)         # [exponent, longest horizon]
    members: list["FittedModel"] = field(default_factory=list)       # a combination's fitted members

    def to_dict(self) -> dict:
        data = {"spec": self.spec.to_dict(), "start": self.start.isoformat(), "n_obs": self.n_obs,
                "params": self.params, "history": self.history, "interval_scale": self.interval_scale,
                "horizon_shape": self.horizon_shape}
        if self.members:  # members share the history: kept once, at the top
            data["members"] = [{"spec": m.spec.to_dict(), "params": m.params} for m in self.members]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "FittedModel":
        start, history = date.fromisoformat(data["start"]), list(data["history"])
        members = [cls(ModelSpec.from_dict(m["spec"]), start, data["n_obs"], list(m["params"]), history)
                   for m in data.get("members", [])]
        return cls(spec=ModelSpec.from_dict(data["spec"]), start=start, n_obs=data["n_obs"],
                   params=list(data["params"]), history=history,
                   interval_scale=[list(pair) for pair in data.get("interval_scale", [])],
                   horizon_shape=list(data.get("horizon_shape", [])), members=members)


# --- the families ---------------------------------------------------------------------------
def _sarimax(y: np.ndarray, spec: ModelSpec, start: date):
    """The state-space model: on the series for harmonic ARIMA, on its seasonal differences
    for SARIMA (see ``_integrate_seasonal_difference``)."""
    from statsmodels.tsa.statespace.sarimax import SARIMAX

    transformed = forward(spec.transform)(y)
    if spec.kind == "sarima":
        if len(y) <= SEASON + 4:
            raise ValueError(f"a seasonal difference needs more than {SEASON + 4} weeks, got {len(y)}")
        transformed = transformed[SEASON:] - transformed[:-SEASON]
        start = start + timedelta(weeks=SEASON)
    return SARIMAX(transformed, exog=regressors(start, len(transformed), spec),
                   order=(spec.p, spec.d, spec.q), trend="c" if spec.d == 0 else "n",
                   enforce_stationarity=False, enforce_invertibility=False)


def _integrate_seasonal_difference(transformed: np.ndarray, mean: np.ndarray, variance: np.ndarray):
    """Forecasts of the seasonal differences back to the series: each week adds its
    difference to the same week a year before (observed, or itself forecast)."""
    path, spread = list(transformed), [0.0] * len(transformed)
    for step in range(len(mean)):
        path.append(path[-SEASON] + mean[step])
        spread.append(spread[-SEASON] + variance[step])
    n = len(transformed)
    return np.asarray(path[n:]), np.sqrt(np.asarray(spread[n:]))


def _ets(y: np.ndarray, spec: ModelSpec):
    import pandas as pd
    from statsmodels.tsa.exponential_smoothing.ets import ETSModel

    # A pandas series: statsmodels' ETS prediction needs an index to label its rows.
    return ETSModel(pd.Series(forward(spec.transform)(y)), error="add",
                    trend=None if spec.trend == "none" else spec.trend, damped_trend=spec.damped and spec.trend != "none",
                    seasonal="add" if spec.seasonal else None, seasonal_periods=SEASON if spec.seasonal else None)


def _theta(y: np.ndarray, spec: ModelSpec):
    import pandas as pd
    from statsmodels.tsa.forecasting.theta import ThetaModel

    return ThetaModel(pd.Series(forward(spec.transform)(y)), period=SEASON, deseasonalize=spec.seasonal,
                      use_test=False, method="additive").fit()


def _tsb(y: np.ndarray, alpha: float, beta: float) -> tuple[float, float, float]:
    """Final demand size and probability, and the RMS of the one-step errors."""
    nonzero = y[y > 0]
    size = float(nonzero[:4].mean()) if len(nonzero) else 0.0
    probability = float(np.mean(y[: max(4, len(y) // 4)] > 0))
    errors = []
    for value in y:
        errors.append(value - size * probability)
        probability += beta * ((value > 0) - probability)
        if value > 0:
            size += alpha * (value - size)
    return size, probability, float(np.sqrt(np.mean(np.square(errors))))


def _theta_se(result, horizon: int) -> np.ndarray:
    """statsmodels' Theta variance, sigma2 (1 + (h-1)(1 + (alpha-1)^2)), with sigma2 taken
    from the one-step errors of the fitted smoothing instead of an ARIMA(0,1,1) fitted by
    maximum likelihood on every call (0.6 s, most of a Theta forecast's cost)."""
    alpha = float(result.params.iloc[1])
    y = np.asarray(result.model._y, float)
    level, errors = y[0], []
    for value in y[1:]:
        errors.append(value - level)
        level += alpha * (value - level)
    sigma2 = float(np.mean(np.square(errors))) if errors else 1.0
    return np.sqrt((1 + np.arange(horizon) * (1 + (alpha - 1) ** 2)) * sigma2)


def fit(y: np.ndarray, start: date, spec: ModelSpec) -> FittedModel:
    y = np.asarray(y, float)
    if spec.kind == BASELINE:
        season = SEASON if len(y) >= SEASON + 8 else 1
        return FittedModel(spec, start, len(y), params=[float(season)], history=y.tolist())
    if spec.kind == COMBINATION:
        return FittedModel(spec, start, len(y), history=y.tolist(), members=[fit(y, start, m) for m in spec.members])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Only the estimates are kept: return_params skips the results object statsmodels would
        # build (a final filter pass and the parameters' covariance), 28% of a fit's time.
        if spec.kind in ARIMA_KINDS:
            params = np.asarray(_sarimax(y, spec, start).fit(disp=False, maxiter=200, return_params=True))
        elif spec.kind == "ets":
            params = np.asarray(_ets(y, spec).fit(disp=False, maxiter=200, return_params=True))
        elif spec.kind == "theta":
            params = np.asarray(_theta(y, spec).params)  # closed form: kept for the record, refitted to forecast
        elif spec.kind == "tsb":
            params = np.asarray(_tsb(y, spec.alpha, spec.beta))
        else:
            raise ValueError(f"unknown model family {spec.kind!r}")
    if not np.all(np.isfinite(params)):
        raise FloatingPointError(f"{spec.label()} did not converge to finite parameters")
    return FittedModel(spec, start, len(y), params=[float(v) for v in params], history=y.tolist())


def refresh(model: FittedModel, y: np.ndarray) -> FittedModel:
    """The same model conditioned on a longer series: fitted parameters, calibration and
    start kept, the new weeks filtered in without re-estimation (state-space families run
    their filter with the stored parameters; TSB and Theta re-run their closed-form
    smoothing). ``y`` must extend the model's history unchanged."""
    y = np.asarray(y, float)
    if len(y) < model.n_obs or not np.array_equal(y[:model.n_obs], np.asarray(model.history, float)):
        raise ValueError("a refresh needs the model's own history followed by new weeks; the history was revised")
    params = model.params
    if model.spec.kind == "tsb":
        params = [float(v) for v in _tsb(y, model.spec.alpha, model.spec.beta)]
    elif model.spec.kind == "theta":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            params = [float(v) for v in np.asarray(_theta(y, model.spec).params)]
    return FittedModel(model.spec, model.start, len(y), params=list(params), history=y.tolist(),
                       interval_scale=model.interval_scale, horizon_shape=model.horizon_shape,
                       members=[refresh(m, y) for m in model.members])


def _normal_se(upper: np.ndarray, mean: np.ndarray, alpha: float) -> np.ndarray:
    return (np.asarray(upper, float) - np.asarray(mean, float)) / NormalDist().inv_cdf(1 - alpha / 2)


def _transformed_forecast(model: FittedModel, horizon: int, forecast_start: date) -> tuple[np.ndarray, np.ndarray]:
    spec, y = model.spec, np.asarray(model.history, float)
    if spec.kind in ARIMA_KINDS:
        result = _sarimax(y, spec, model.start).filter(np.asarray(model.params))
        prediction = result.get_forecast(horizon, exog=regressors(forecast_start, horizon, spec))
        mean, variance = np.asarray(prediction.predicted_mean, float), np.asarray(prediction.var_pred_mean, float)
        if spec.kind == "sarima":
            return _integrate_seasonal_difference(forward(spec.transform)(y), mean, variance)
        return mean, np.sqrt(variance)
    if spec.kind == "ets":
        result = _ets(y, spec).smooth(np.asarray(model.params))
        frame = result.get_prediction(start=len(y), end=len(y) + horizon - 1).summary_frame(alpha=0.05)
        return frame["mean"].to_numpy(float), _normal_se(frame["pi_upper"], frame["mean"], 0.05)
    if spec.kind == "theta":
        result = _theta(y, spec)
        return np.asarray(result.forecast(horizon), float), _theta_se(result, horizon)
    size, probability, sigma = model.params
    return np.full(horizon, size * probability), np.full(horizon, max(sigma, 1e-6))


def forecast(model: FittedModel, horizon: int) -> Forecast:
    forecast_start = model.start + timedelta(weeks=model.n_obs)
    y = np.asarray(model.history, float)
    if model.spec.kind == BASELINE:
        season = int(model.params[0])
        last = y[-season:]
        steps = np.arange(horizon)
        mean = last[steps % season]
        residual = y[season:] - y[:-season]
        # The naive forecast's own errors are the seasonal differences: their RMS, not their spread.
        sigma = float(np.sqrt(np.mean(residual ** 2))) if len(residual) else float(y.std() or 1.0)
        se = sigma * np.sqrt(steps // season + 1)
        return Forecast(forecast_start, mean, se, "none", model.interval_scale, model.horizon_shape)
    if model.spec.kind == COMBINATION:
        combined = combine([forecast(m, horizon) for m in model.members], model.spec.weights)
        combined.interval_scale, combined.horizon_shape = model.interval_scale, model.horizon_shape
        return combined
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mean, se = _transformed_forecast(model, horizon, forecast_start)
    transform = "none" if model.spec.kind == "tsb" else model.spec.transform
    ceiling = MAX_LOG_UNITS if transform == "log1p" else np.expm1(MAX_LOG_UNITS)
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(se)) and np.all(mean <= ceiling)):
        raise FloatingPointError(f"{model.spec.label()} produced a non-finite or implausible forecast "
                                 f"(over {np.expm1(MAX_LOG_UNITS):.0e} units a week)")
    return Forecast(forecast_start, mean, np.maximum(se, 1e-9), transform, model.interval_scale, model.horizon_shape)


def combine(forecasts: list[Forecast], weights: tuple[float, ...] = ()) -> Forecast:
    """The (weighted) mean of the members' point forecasts in units, with a log1p-space
    spread that averages theirs the same way (calibration then sets the combination's own
    interval widths). No weights: every member counts the same."""
    points = np.array([f.bounds(0.5)[0] for f in forecasts])
    log_se = np.array([f.se if f.transform == "log1p" else f.se / (1 + p) for f, p in zip(forecasts, points)])
    share = np.asarray(weights, float) if len(weights) else None
    return Forecast(forecasts[0].start, np.log1p(np.average(points, axis=0, weights=share)),
                    np.maximum(np.average(log_se, axis=0, weights=share), 1e-9), "log1p")


def point_forecast(y: np.ndarray, start: date, spec: ModelSpec, horizon: int) -> np.ndarray:
    """Fit on ``y`` and return the point forecast in units: what evaluation compares."""
    return forecast(fit(y, start, spec), horizon).bounds(0.8)[0]


def seasonal_naive(y: np.ndarray, start: date, horizon: int) -> np.ndarray:
    return point_forecast(y, start, ModelSpec(kind=BASELINE), horizon)
