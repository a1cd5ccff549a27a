"""The upload format, its validation, and the per-ISBN weekly series.

An upload is a CSV (UTF-8, header ``isbn,week,units``) or a Parquet file with those
columns, under the bucket's ``sales/`` prefix. Every row is checked; a rejected upload
lists every problem as ``file:row: rule: detail`` so the publisher can fix it in one go.
"""
from __future__ import annotations

import functools
import hashlib
import io
import math
from dataclasses import dataclass
from datetime import date, datetime, timezone

import pandas as pd

from shared import isbn as isbn_rules
from shared.text import quoted

COLUMNS = ("isbn", "week", "units")
MAX_UNITS = 1_000_000
MAX_REASONS = 50
# Bounds every stored series to ~2,900 weeks, so one ISBN's documents stay far below
# Firestore's 1 MiB whatever the file says (a week of 0001-01-01 would be 105k weeks).
FIRST_WEEK = date(1970, 1, 5)


class UploadRejected(ValueError):
    def __init__(self, object_name: str, reasons: list[str]):
        self.object_name = object_name
        self.reasons = reasons[:MAX_REASONS] + (
            [f"... and {len(reasons) - MAX_REASONS} more problems"] if len(reasons) > MAX_REASONS else [])
        super().__init__(f"{object_name} rejected: " + "; ".join(self.reasons[:5]))


@dataclass(frozen=True)
class UploadRules:
    prefix: str = "sales/"
    max_bytes: int = 20 * 1024 * 1024
    today: date | None = None  # injectable for tests; defaults to the UTC date

    def current_week(self) -> date:
        today = self.today or datetime.now(timezone.utc).date()
        return date.fromordinal(today.toordinal() - today.weekday())


def _read_frame(name: str, content: bytes) -> pd.DataFrame:
    if name.endswith(".parquet"):
        try:
            frame = pd.read_parquet(io.BytesIO(content))
        except Exception as error:  # pyarrow raises several unrelated types for bad files
            raise UploadRejected(name, [f"{name}: format: not a readable Parquet file ({error})"]) from None
        return frame.astype(str)
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise UploadRejected(name, [f"{name}: encoding: not UTF-8 (byte {error.start})"]) from None
    try:
        return pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise UploadRejected(name, [f"{name}: format: not a readable CSV ({error})"]) from None


def parse_upload(name: str, content: bytes, rules: UploadRules = UploadRules()) -> pd.DataFrame:
    """Validated rows as a frame (isbn str, week date, units int), or UploadRejected."""
    if not name.startswith(rules.prefix):
        raise UploadRejected(name, [f"{name}: location: uploads belong under {rules.prefix!r}"])
    if not (name.endswith(".csv") or name.endswith(".parquet")):
        raise UploadRejected(name, [f"{name}: format: name must end in .csv or .parquet"])
    if len(content) > rules.max_bytes:
        raise UploadRejected(name, [f"{name}: size: {len(content)} bytes exceeds the limit of {rules.max_bytes}"])
    frame = _read_frame(name, content)
    frame.columns = [str(c).strip().lower() for c in frame.columns]
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise UploadRejected(name, [f"{name}: schema: missing column(s) {missing}; expected header isbn,week,units"])
    if frame.empty:
        raise UploadRejected(name, [f"{name}: schema: no data rows"])

    reasons: list[str] = []
    rows: list[tuple[str, date, int]] = []
    with_bad_rows: set[str] = set()  # a refused row is reported once, not again as a gap
    current_week = rules.current_week()
    # A catalogue repeats each ISBN on every one of its weeks: check each distinct value once.
    isbn_problem = functools.lru_cache(maxsize=None)(isbn_rules.problem)
    normalise = functools.lru_cache(maxsize=None)(isbn_rules.normalise)
    for index, (raw_isbn, raw_week, raw_units) in enumerate(frame[list(COLUMNS)].itertuples(index=False)):
        where = f"{name}:{index + 2}"  # row 1 is the header
        problem = isbn_problem(raw_isbn)
        if problem:
            reasons.append(f"{where}: isbn: {problem}")
            continue
        rows_before = len(reasons)
        try:
            week = date.fromisoformat(str(raw_week).strip()[:10])
        except ValueError:
            reasons.append(f"{where}: week: {quoted(raw_week)} is not a date (YYYY-MM-DD)")
            continue
        try:
            units_float = float(raw_units)
        except ValueError:
            reasons.append(f"{where}: units: {quoted(raw_units)} is not a number")
            continue
        if not math.isfinite(units_float):  # 'nan', 'inf' and '1e400' all parse as floats
            reasons.append(f"{where}: units: {quoted(raw_units)} is not a finite number")
        elif units_float != int(units_float):
            reasons.append(f"{where}: units: {quoted(raw_units)} is not a whole number")
        elif units_float < 0:
            reasons.append(f"{where}: units: negative value {units_float:g}")
        elif units_float > MAX_UNITS:
            reasons.append(f"{where}: units: {units_float:g} is implausibly large (limit {MAX_UNITS})")
        elif week.weekday() != 0:
            reasons.append(f"{where}: week: {week} is a {week:%A}; weeks are given by their Monday")
        elif week > current_week:
            reasons.append(f"{where}: week: {week} is in the future")
        elif week < FIRST_WEEK:
            reasons.append(f"{where}: week: {week} is before {FIRST_WEEK}")
        else:
            rows.append((normalise(raw_isbn), week, int(units_float)))
        if len(reasons) > rows_before:
            with_bad_rows.add(normalise(raw_isbn))
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    duplicated = table[table.duplicated(["isbn", "week"], keep=False)]
    for (isbn, week), _ in duplicated.groupby(["isbn", "week"]):
        reasons.append(f"{name}: duplicate: {isbn} week {week} appears more than once")
    for isbn, weeks in table.drop_duplicates(["isbn", "week"]).groupby("isbn")["week"]:
        if isbn in with_bad_rows:
            continue
        gaps = missing_weeks(sorted(weeks))
        if gaps:
            reasons.append(f"{name}: gap: {isbn} has no row for {len(gaps)} week(s) from {gaps[0]} "
                           "(send 0 units for weeks without sales)")
    if reasons:
        raise UploadRejected(name, reasons)
    return table.sort_values(["isbn", "week"]).reset_index(drop=True)


def missing_weeks(weeks: list[date]) -> list[date]:
    if not weeks:
        return []
    expected = pd.date_range(weeks[0], weeks[-1], freq="7D").date
    present = set(weeks)
    return [w for w in expected if w not in present]


def series_hash(weeks: dict[str, int]) -> str:
    """Content hash of one ISBN's series (ISO week -> units): equal data, equal hash,
    whatever files it arrived in."""
    lines = "\n".join(f"{week},{int(units)}" for week, units in sorted(weeks.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def weeks_of(rows: pd.DataFrame) -> dict[str, int]:
    return {str(w): int(u) for w, u in zip(rows["week"], rows["units"])}


def weeks_by_isbn(rows: pd.DataFrame) -> dict[str, dict[str, int]]:
    """``weeks_of`` for every ISBN of an upload in one pass over whole columns (a 10,000-ISBN
    catalogue is 1.5 million rows: a group-by per ISBN takes seconds)."""
    found: dict[str, dict[str, int]] = {}
    for isbn, week, units in zip(rows["isbn"].tolist(), rows["week"].astype(str).tolist(),
                                 rows["units"].astype("int64").tolist()):
        found.setdefault(isbn, {})[week] = units
    return found


def upload_order(time_created: datetime, generation: int | str) -> str:
    """Where an upload stands among all uploads: by the time GCS created it, then by its
    generation (microseconds, unique per object). Sorts as text; never the object's name
    and never the order in which notifications happened to be processed."""
    created = time_created.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%S.%f")
    return f"{created}/{int(generation):020d}"


@dataclass(frozen=True)
class MergedSeries:
    """An ISBN's weeks as merged from every upload, with the order of the upload that set
    each week's value (``weeks`` and ``orders`` map ISO week → units / upload order)."""
    weeks: dict[str, int]
    orders: dict[str, str]

    def merged(self, incoming: dict[str, int], order: str) -> "MergedSeries":
        """The merge rule, the only one: newest upload wins, week by week. A week takes the
        incoming value unless a newer upload already set it, so any processing order of the
        same uploads gives the same series."""
        weeks, orders = dict(self.weeks), dict(self.orders)
        for week, units in incoming.items():
            if orders.get(week, "") <= order:
                weeks[week], orders[week] = int(units), order
        return MergedSeries(weeks, orders)


def merge_uploads(uploads: list[tuple[str, pd.DataFrame]]) -> dict[str, MergedSeries]:
    """Per ISBN, the merge of (upload order, validated rows) pairs given in any order."""
    merged: dict[str, MergedSeries] = {}
    for order, rows in uploads:
        for isbn, group in rows.groupby("isbn"):
            merged[isbn] = merged.get(isbn, MergedSeries({}, {})).merged(weeks_of(group), order)
    return merged


def to_csv(frame: pd.DataFrame) -> bytes:
    out = frame[list(COLUMNS)].copy()
    out["week"] = out["week"].astype(str)
    return out.to_csv(index=False).encode()
