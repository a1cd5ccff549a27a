"""The two model families: ARIMA errors with Fourier terms for the yearly season (dynamic
harmonic regression), and the seasonal-naive baseline.

Why Fourier terms rather than a seasonal order at 52: a SARIMAX seasonal order of 52 has a
state vector of ~100, takes 8-18 s per fit (often without converging) and needs about four
years of history to difference seasonally; ARIMA + K Fourier pairs fits in ~0.1-0.3 s and
works from one year of data. bench/training.py measures both.

A fitted model is kept as its spec and parameter vector (about 1 KB); it is rebuilt with
``SARIMAX(...).filter(params)``, which forecasts exactly as the fitted result did.
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta

import numpy as np

YEAR_WEEKS = 365.25 / 7
EPOCH = date(1970, 1, 5)  # a Monday: Fourier phases are absolute, so refits line up


@dataclass(frozen=True)
class ModelSpec:
    kind: str = "harmonic_arima"  # or "seasonal_naive"
    p: int = 1
    d: int = 1
    q: int = 1
    fourier: int = 3
    transform: str = "log1p"     # or "none"
    holiday: bool = False         # a Christmas-peak regressor: too sharp for a few Fourier pairs
    seasonal_order: tuple[int, int, int, int] = (0, 0, 0, 0)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelSpec":
        """From JSON, where the seasonal order arrives as a list."""
        return cls(**{**data, "seasonal_order": tuple(data.get("seasonal_order", (0, 0, 0, 0)))})

    def label(self) -> str:
        if self.kind == "seasonal_naive":
            return "seasonal naive"
        seasonal = f"x{self.seasonal_order}" if any(self.seasonal_order) else ""
        terms = ([f"{self.fourier} Fourier pairs"] if self.fourier else []) + (["Christmas peak"] if self.holiday else [])
        return f"ARIMA({self.p},{self.d},{self.q}){seasonal}" + "".join(f" + {t}" for t in terms) + f", {self.transform}"


@dataclass
class Forecast:
    """Point forecast and standard errors in the transformed space, from ``start``."""
    start: date
    mean: np.ndarray
    se: np.ndarray
    transform: str

    def bounds(self, level: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        from statistics import NormalDist

        z = NormalDist().inv_cdf(0.5 + level / 2)
        back = inverse(self.transform)
        return (np.clip(back(self.mean), 0, None), np.clip(back(self.mean - z * self.se), 0, None),
                np.clip(back(self.mean + z * self.se), 0, None))


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
    if spec.fourier:
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
    history: list[float] = field(default_factory=list)  # seasonal naive keeps its last season

    def to_dict(self) -> dict:
        data = asdict(self)
        data["start"] = self.start.isoformat()
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "FittedModel":
        return cls(spec=ModelSpec.from_dict(data["spec"]), start=date.fromisoformat(data["start"]), n_obs=data["n_obs"],
                   params=list(data["params"]), history=list(data["history"]))


def _sarimax(y: np.ndarray, spec: ModelSpec, start: date):
    from statsmodels.tsa.statespace.sarimax import SARIMAX

    return SARIMAX(forward(spec.transform)(y), exog=regressors(start, len(y), spec),
                   order=(spec.p, spec.d, spec.q), seasonal_order=spec.seasonal_order,
                   trend="c" if spec.d == 0 else "n",
                   enforce_stationarity=False, enforce_invertibility=False)


def fit(y: np.ndarray, start: date, spec: ModelSpec) -> FittedModel:
    y = np.asarray(y, float)
    if spec.kind == "seasonal_naive":
        season = 52 if len(y) >= 52 + 8 else 1
        return FittedModel(spec, start, len(y), params=[float(season)], history=y.tolist())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = _sarimax(y, spec, start).fit(disp=False, maxiter=200, low_memory=True)
    if not np.all(np.isfinite(result.params)):
        raise FloatingPointError(f"{spec.label()} did not converge to finite parameters")
    return FittedModel(spec, start, len(y), params=[float(v) for v in result.params], history=y.tolist())


def forecast(model: FittedModel, horizon: int) -> Forecast:
    forecast_start = model.start + timedelta(weeks=model.n_obs)
    y = np.asarray(model.history, float)
    if model.spec.kind == "seasonal_naive":
        season = int(model.params[0])
        last = y[-season:]
        steps = np.arange(horizon)
        mean = last[steps % season]
        residual = y[season:] - y[:-season]
        # The naive forecast's own errors are the seasonal differences: their RMS, not their spread.
        sigma = float(np.sqrt(np.mean(residual ** 2))) if len(residual) else float(y.std() or 1.0)
        se = sigma * np.sqrt(steps // season + 1)
        return Forecast(forecast_start, mean, se, "none")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = _sarimax(y, model.spec, model.start).filter(np.asarray(model.params))
        exog = regressors(forecast_start, horizon, model.spec)
        prediction = result.get_forecast(horizon, exog=exog)
    mean = np.asarray(prediction.predicted_mean, float)
    se = np.sqrt(np.asarray(prediction.var_pred_mean, float))
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(se))):
        raise FloatingPointError(f"{model.spec.label()} produced a non-finite forecast")
    return Forecast(forecast_start, mean, se, model.spec.transform)


def point_forecast(y: np.ndarray, start: date, spec: ModelSpec, horizon: int) -> np.ndarray:
    """Fit on ``y`` and return the point forecast in units: what evaluation compares."""
    return forecast(fit(y, start, spec), horizon).bounds(0.8)[0]


def seasonal_naive(y: np.ndarray, start: date, horizon: int) -> np.ndarray:
    return point_forecast(y, start, ModelSpec(kind="seasonal_naive"), horizon)


def cap_fourier(train_len: int, requested: int) -> int:
    """Fourier pairs need at least a year of data to be identified."""
    return requested if train_len >= 60 else 0
