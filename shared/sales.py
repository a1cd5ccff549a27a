"""The upload format, its validation, and the per-ISBN weekly series.

An upload is a CSV (UTF-8, header ``isbn,week,units``) or a Parquet file with those
columns, under the bucket's ``sales/`` prefix. Every row is checked; a rejected upload
lists every problem as ``file:row: rule: detail`` so the publisher can fix it in one go.
"""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from datetime import date, datetime, timezone

import pandas as pd

from shared import isbn as isbn_rules

COLUMNS = ("isbn", "week", "units")
MAX_UNITS = 1_000_000
MAX_REASONS = 50


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
    current_week = rules.current_week()
    for index, (raw_isbn, raw_week, raw_units) in enumerate(frame[list(COLUMNS)].itertuples(index=False)):
        where = f"{name}:{index + 2}"  # row 1 is the header
        problem = isbn_rules.problem(raw_isbn)
        if problem:
            reasons.append(f"{where}: isbn: {problem}")
            continue
        try:
            week = date.fromisoformat(str(raw_week).strip()[:10])
        except ValueError:
            reasons.append(f"{where}: week: {raw_week!r} is not a date (YYYY-MM-DD)")
            continue
        try:
            units_float = float(raw_units)
        except ValueError:
            reasons.append(f"{where}: units: {raw_units!r} is not a number")
            continue
        if units_float != int(units_float):
            reasons.append(f"{where}: units: {raw_units!r} is not a whole number")
        elif units_float < 0:
            reasons.append(f"{where}: units: negative value {raw_units}")
        elif units_float > MAX_UNITS:
            reasons.append(f"{where}: units: {raw_units} is implausibly large (limit {MAX_UNITS})")
        elif week.weekday() != 0:
            reasons.append(f"{where}: week: {week} is a {week:%A}; weeks are given by their Monday")
        elif week > current_week:
            reasons.append(f"{where}: week: {week} is in the future")
        else:
            rows.append((isbn_rules.normalise(raw_isbn), week, int(units_float)))
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    duplicated = table[table.duplicated(["isbn", "week"], keep=False)]
    for (isbn, week), _ in duplicated.groupby(["isbn", "week"]):
        reasons.append(f"{name}: duplicate: {isbn} week {week} appears more than once")
    for isbn, weeks in table.drop_duplicates(["isbn", "week"]).groupby("isbn")["week"]:
        gaps = missing_weeks(sorted(weeks))
        if gaps:
            reasons.append(f"{name}: gap: {isbn} has no row for {len(gaps)} week(s) from {gaps[0]} "
                           "(send 0 units for weeks without sales)")
    if reasons:
        raise UploadRejected(name, reasons)
    return table.sort_values(["isbn", "week"]).reset_index(drop=True)


def isbns_mentioned(name: str, content: bytes) -> set[str] | None:
    """The ISBNs a (possibly invalid) upload speaks of, or None if it cannot be read at all."""
    try:
        frame = _read_frame(name, content)
    except UploadRejected:
        return None
    frame.columns = [str(c).strip().lower() for c in frame.columns]
    return {isbn_rules.normalise(v) for v in frame["isbn"]} if "isbn" in frame.columns else None


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


def merge(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Later uploads override earlier ones week by week."""
    if not frames:
        return pd.DataFrame(columns=list(COLUMNS))
    combined = pd.concat(frames, ignore_index=True)
    return (combined.drop_duplicates(["isbn", "week"], keep="last")
            .sort_values(["isbn", "week"]).reset_index(drop=True))


def to_csv(frame: pd.DataFrame) -> bytes:
    out = frame[list(COLUMNS)].copy()
    out["week"] = out["week"].astype(str)
    return out.to_csv(index=False).encode()
