"""Realistic weekly book sales: seasonality with a Christmas peak, trends, launches and
declines, promotions and zero weeks (stock-outs). Deterministic for a given seed."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np
import pandas as pd

from shared.isbn import check_digit


def make_isbn(rng: np.random.Generator) -> str:
    first12 = "978" + "".join(str(d) for d in rng.integers(0, 10, 9))
    return first12 + check_digit(first12)


@dataclass(frozen=True)
class BookProfile:
    isbn: str
    level: float          # typical weekly units
    trend: float          # yearly relative growth
    christmas: float      # extra share at the December peak
    launch_week: int      # weeks after the series start; 0 = backlist title
    decay: float          # weekly decay of the launch boost
    promo_rate: float
    stockout_rate: float


def _week_of_year_effect(weeks: pd.DatetimeIndex, christmas: float) -> np.ndarray:
    day = weeks.day_of_year.to_numpy()
    xmas = np.exp(-0.5 * ((day - 352) / 12.0) ** 2) + np.exp(-0.5 * ((day + 365 - 352) / 12.0) ** 2)
    summer = 0.15 * np.exp(-0.5 * ((day - 200) / 20.0) ** 2)
    return 1.0 + christmas * xmas + summer


def generate(n_isbns: int = 12, years: float = 4, end: date | None = None, seed: int = 7) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    end = end or date.today()
    last_monday = end - timedelta(days=end.weekday() + 7)
    n_weeks = int(round(years * 52))
    weeks = pd.date_range(end=pd.Timestamp(last_monday), periods=n_weeks, freq="7D")
    frames = []
    for i in range(n_isbns):
        profile = BookProfile(
            isbn=make_isbn(rng),
            level=float(rng.choice([15, 40, 90, 200, 450])) * rng.uniform(0.7, 1.3),
            trend=rng.uniform(-0.25, 0.2),
            christmas=rng.uniform(0.8, 3.5),
            launch_week=0 if i % 3 else int(rng.integers(0, n_weeks // 2)),
            decay=rng.uniform(0.02, 0.12),
            promo_rate=rng.uniform(0.0, 0.04),
            stockout_rate=rng.uniform(0.0, 0.02),
        )
        frames.append(simulate(profile, weeks, rng))
    return pd.concat(frames, ignore_index=True)


def simulate(p: BookProfile, weeks: pd.DatetimeIndex, rng: np.random.Generator) -> pd.DataFrame:
    t = np.arange(len(weeks))
    mean = p.level * (1 + p.trend) ** (t / 52.0) * _week_of_year_effect(weeks, p.christmas)
    since_launch = t - p.launch_week
    if p.launch_week:
        boost = np.where(since_launch >= 0, 1 + 4 * np.exp(-p.decay * np.clip(since_launch, 0, None)), 0.0)
        mean = mean * boost
    promos = rng.random(len(t)) < p.promo_rate
    mean = mean * np.where(promos | np.roll(promos, 1), rng.uniform(1.5, 3.0), 1.0)
    units = rng.negative_binomial(n=20, p=20 / (20 + mean))
    units[rng.random(len(t)) < p.stockout_rate] = 0
    keep = since_launch >= 0 if p.launch_week else np.ones(len(t), bool)
    return pd.DataFrame({"isbn": p.isbn, "week": weeks.date[keep], "units": units[keep].astype(int)})
