"""Batch export by alias: every served ISBN's forecast, as Parquet and CSV, in the bucket
(``forecasts/<week>/forecasts.parquet|csv``), for planners and downstream systems.

Which version serves each ISBN, its forecast and lineage come from shared/champions.py (one
paged registry search, then the champion index in batched Firestore reads). Every ISBN's forecast is validated as the serving path
would serve it, and the table as a whole before anything is written; an ISBN that fails is
left out and named in the announcement. The export is announced on ``forecast-exports``.
"""
from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta, timezone

import pandas as pd

from shared.config import Settings
from shared.forecasting.serving import from_artifact, serving_problems
from shared.logs import get_logger
from shared.version_tags import LINEAGE

log = get_logger(__name__)
EXPORT_PREFIX = "forecasts/"


@dataclass
class ExportResult:
    week: str
    isbns: int
    rows: int
    objects: list[str]
    left_out: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def current_week(at: datetime | None = None) -> date:
    day = (at or datetime.now(timezone.utc)).date()
    return day - timedelta(days=day.weekday())


def served_forecasts(cfg: Settings, store) -> tuple[dict[str, tuple], dict[str, str]]:
    """(target, serving artifact) of every served ISBN, and the ISBNs left out with why."""
    from shared import champions

    served, left_out = {}, {}
    for isbn, (target, forecast) in champions.served(cfg, store).items():
        problems = serving_problems(forecast) if forecast is not None else ["its served version could not be read"]
        if problems:
            left_out[isbn] = "; ".join(problems)
        else:
            served[isbn] = (target, forecast)
    return served, left_out


def forecast_table(served: dict[str, tuple], horizon: int, level: float, exported_at: datetime) -> pd.DataFrame:
    rows = []
    for isbn, (target, forecast) in served.items():
        weeks, mean, lower, upper = from_artifact(forecast, horizon, level)
        lineage = {f"model_{t}": target.tags.get(t, "") for t in LINEAGE}
        for week, m, lo, hi in zip(weeks, mean, lower, upper):
            rows.append({"isbn": isbn, "week": week, "mean": round(float(m), 3), "lower": round(float(lo), 3),
                         "upper": round(float(hi), 3), "interval": level, "model_version": target.version,
                         "model": forecast.get("label", ""), "data_end": forecast["data_end"], **lineage,
                         "exported_at": exported_at})
    return pd.DataFrame(rows)


def check(table: pd.DataFrame, isbns: int, horizon: int) -> None:
    """The whole table, before it is published: one row per ISBN and week, ordered bounds."""
    if len(table) != isbns * horizon or table.duplicated(["isbn", "week"]).any():
        raise ValueError(f"{len(table)} rows for {isbns} ISBNs × {horizon} weeks, or duplicated ISBN-weeks")
    if table[["mean", "lower", "upper"]].isna().any().any():
        raise ValueError("missing forecast values")
    if not ((table["lower"] <= table["mean"]) & (table["mean"] <= table["upper"])).all():
        raise ValueError("interval bounds out of order")


def export(cfg: Settings, store, horizon: int = 26, level: float = 0.8, at: datetime | None = None,
           correlation_id: str = "export") -> ExportResult:
    import time

    from shared.events import ForecastsExported, Topics
    from shared.gcs import storage_client
    from shared.pubsub import publish

    started = time.perf_counter()
    exported_at = at or datetime.now(timezone.utc)
    week = current_week(exported_at).isoformat()
    served, left_out = served_forecasts(cfg, store)
    table = forecast_table(served, horizon, level, exported_at)
    check(table, len(served), horizon)
    bucket = storage_client(cfg.project_id).bucket(cfg.data_bucket)
    parquet, text = io.BytesIO(), table.to_csv(index=False)
    table.to_parquet(parquet, index=False)
    objects = []
    for name, content, kind in ((f"{EXPORT_PREFIX}{week}/forecasts.parquet", parquet.getvalue(), "application/octet-stream"),
                                (f"{EXPORT_PREFIX}{week}/forecasts.csv", text, "text/csv")):
        bucket.blob(name).upload_from_string(content, content_type=kind)
        objects.append(f"gs://{cfg.data_bucket}/{name}")
    result = ExportResult(week=week, isbns=len(served), rows=len(table), objects=objects, left_out=left_out,
                          seconds=round(time.perf_counter() - started, 2))
    publish(cfg, Topics.FORECAST_EXPORTS, ForecastsExported(correlation_id=correlation_id, **result.as_dict()))
    log.info("exported %d ISBNs' forecasts for the week of %s (%d left out)", len(served), week, len(left_out),
             extra={"objects": objects, "left_out": len(left_out)})
    return result
