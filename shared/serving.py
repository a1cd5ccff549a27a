"""The forecast service: validates requests, follows the serving alias, answers fast.

Models are the precomputed serving artifacts (mean and standard error for 104 weeks),
cached in-process. A configured share of callers (``promotion.canary_share``, chosen by a
hash of the caller key) is served an ISBN's ``challenger`` when it has one; every answer
names the alias and version it came from. An ISBN's alias is re-resolved at most every
``alias_ttl_seconds``, so a promotion or rollback is served within that bound; each ISBN
in a response comes from one cached entry, never a mix. If MLflow is unreachable the last loaded model keeps serving,
marked stale; with nothing loaded the answer is 503. Once MLflow has failed, requests stop
waiting on it (a circuit breaker): they are answered from the cache at once while one
background probe at a time finds out whether it is back.
"""
from __future__ import annotations

import csv
import hashlib
import io
import threading
import time
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from shared import isbn as isbn_rules
from shared import model_store
from shared.api_errors import ApiError, first_problem
from shared.config import Settings
from shared.forecasting.serving import from_artifact
from shared.logs import get_logger
from shared.registry import CHALLENGER
from shared.states import HealthStatus
from shared.version_tags import VersionTags

log = get_logger(__name__)


class ForecastQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    isbns: list[str] = Field(min_length=1)
    horizon: int = Field(26, ge=1, le=104)
    interval: float = Field(0.95, gt=0.5, lt=1.0)
    format: Literal["json", "csv", "png"] = "json"
    caller: str | None = Field(None, min_length=1, max_length=200,
                               description="who asks: decides canary serving (default: X-Caller header or client IP)")

    @field_validator("isbns")
    @classmethod
    def valid_isbns(cls, values: list[str]) -> list[str]:
        problems = [p for p in (isbn_rules.problem(v) for v in values) if p]
        if problems:
            raise ValueError("; ".join(problems))
        return list(dict.fromkeys(isbn_rules.normalise(v) for v in values))


def parse_query(method: str, content_type: str | None, args: dict[str, list[str]], body: bytes, max_isbns: int,
                max_horizon: int) -> ForecastQuery:
    if method == "GET":
        raw: dict = {"isbns": [i for v in args.get("isbn", []) for i in v.split(",") if i]}
        for key in ("horizon", "interval", "format", "caller"):
            if key in args:
                raw[key] = args[key][-1]
        unknown = sorted(set(args) - {"isbn", "horizon", "interval", "format", "caller"})
        if unknown:
            raise ApiError(400, "unknown_parameter", f"unknown query parameter(s) {unknown}; "
                           "use isbn, horizon, interval, format, caller")
    elif method == "POST":
        if not (content_type or "").startswith("application/json"):
            raise ApiError(415, "unsupported_media_type",
                           f"send JSON with Content-Type: application/json (got {content_type or 'none'})")
        import json

        try:
            raw = json.loads(body or b"")
        except ValueError as error:
            raise ApiError(400, "malformed_json", f"request body is not valid JSON: {error}") from None
        if not isinstance(raw, dict):
            raise ApiError(400, "malformed_json", 'body must be an object like {"isbns": [...], "horizon": 26}')
        if "isbn" in raw and "isbns" not in raw:
            raw["isbns"] = [raw.pop("isbn")]
    else:
        raise ApiError(405, "method_not_allowed", f"{method} is not supported; use GET or POST")
    if isinstance(raw.get("isbns"), list) and len(raw["isbns"]) > max_isbns:
        raise ApiError(400, "too_many_isbns", f"{len(raw['isbns'])} ISBNs requested; at most {max_isbns} per request",
                       field="isbns")
    if "isbns" not in raw or raw["isbns"] == []:
        raise ApiError(400, "missing_isbn", "give at least one ISBN-13: ?isbn=978... or {\"isbns\": [...]}",
                       field="isbns")
    try:
        query = ForecastQuery.model_validate(raw)
    except ValidationError as error:
        field, message = first_problem(error)
        if field == "horizon":
            message = f"horizon must be a whole number of weeks from 1 to {max_horizon}"
        elif field == "format":
            message = "format must be json, csv or png"
        elif field == "interval":
            message = "interval must be a probability between 0.5 and 1, e.g. 0.95"
        raise ApiError(400, "invalid_" + (field or "request").split(".")[0], message, field=field) from None
    if query.horizon > max_horizon:
        raise ApiError(400, "invalid_horizon", f"horizon must be a whole number of weeks from 1 to {max_horizon}",
                       field="horizon")
    return query


ANSWER_CACHE_SIZE = 4096


@dataclass(frozen=True)
class ServedModel:
    target: model_store.AliasTarget | None  # None: the alias points nowhere (no challenger on trial)
    artifact: dict
    checked_at: float


def in_canary(caller: str | None, share: float) -> bool:
    """Whether a caller is among the ``share`` served challengers: a hash of the caller
    key, so the same caller always gets the same answer."""
    if not caller or share <= 0:
        return False
    return int.from_bytes(hashlib.sha256(caller.encode()).digest()[:8], "big") / 2 ** 64 < share


class RegistryBreaker:
    """Open for ``open_seconds`` after the registry failed: nobody waits on it meanwhile."""

    def __init__(self, open_seconds: float):
        self.open_seconds = open_seconds
        self.open_until = 0.0
        self.probing = threading.Lock()

    def is_open(self) -> bool:
        return time.monotonic() < self.open_until

    def trip(self) -> None:
        self.open_until = time.monotonic() + self.open_seconds

    def close(self) -> None:
        self.open_until = 0.0


class ForecastService:
    def __init__(self, cfg: Settings):
        self.cfg = cfg
        self.cache: dict[tuple[str, str], ServedModel] = {}  # (isbn, alias)
        self.locks: dict[str, threading.Lock] = {}
        self.guard = threading.Lock()
        self.answers: dict[tuple, dict] = {}
        self.breaker = RegistryBreaker(cfg.serving.registry_retry_seconds)

    def _lock(self, isbn: str) -> threading.Lock:
        with self.guard:
            return self.locks.setdefault(isbn, threading.Lock())

    def _fresh(self, cached: ServedModel | None) -> bool:
        return bool(cached) and time.monotonic() - cached.checked_at < self.cfg.serving.alias_ttl_seconds

    def model(self, isbn: str, alias: str | None = None) -> tuple[ServedModel | None, bool]:
        """(model, stale). None means the ISBN has no servable model under ``alias``."""
        served, stale = self._model(isbn, alias or self.cfg.serving.alias)
        return (served if served and served.target else None), stale

    def _model(self, isbn: str, alias: str) -> tuple[ServedModel | None, bool]:
        cached = self.cache.get((isbn, alias))
        if self._fresh(cached):
            return cached, False
        if self.breaker.is_open():
            self._probe_in_background(isbn, alias)
            return self._stale(isbn, cached)
        with self._lock(isbn):
            cached = self.cache.get((isbn, alias))
            if self._fresh(cached):
                return cached, False
            try:
                return self._load(isbn, cached, alias), False
            except model_store.RegistryUnavailable as error:
                self.breaker.trip()
                log.warning("MLflow unreachable for %s: %s", isbn, error)
                return self._stale(isbn, cached)

    def _stale(self, isbn: str, cached: ServedModel | None) -> tuple[ServedModel, bool]:
        if cached:
            return cached, True
        raise ApiError(503, "registry_unavailable",
                       f"no model loaded for {isbn} and the model registry is unreachable; retry shortly")

    def _load(self, isbn: str, cached: ServedModel | None, alias: str) -> ServedModel | None:
        """Resolve the alias and fetch the artifact if the version changed; cache the result."""
        target = model_store.resolve(self.cfg, isbn, alias)
        if target is None:
            if alias == CHALLENGER:  # most ISBNs have none: canary callers do not ask again until the TTL
                self.cache[(isbn, alias)] = ServedModel(None, {}, time.monotonic())
            else:
                self.cache.pop((isbn, alias), None)
            return None
        if cached and cached.target and cached.target.version == target.version:
            artifact = cached.artifact
        else:
            artifact = model_store.serving_forecast(self.cfg, target.run_id)
            log.info("serving %s v%s as %s", isbn, target.version, alias,
                     extra={"isbn": isbn, "version": target.version, "alias": alias,
                            "previous": cached.target.version if cached and cached.target else None})
        served = ServedModel(target, artifact, time.monotonic())
        self.cache[(isbn, alias)] = served
        return served

    def _probe_in_background(self, isbn: str, alias: str) -> None:
        """One request at a time asks the registry again, off the request path."""
        if not self.breaker.probing.acquire(blocking=False):
            return

        def probe() -> None:
            try:
                self._load(isbn, self.cache.get((isbn, alias)), alias)
                self.breaker.close()
                log.info("MLflow reachable again")
            except model_store.RegistryUnavailable:
                self.breaker.trip()
            finally:
                self.breaker.probing.release()

        threading.Thread(target=probe, name="registry-probe", daemon=True).start()

    def forecast(self, query: ForecastQuery, caller: str | None = None) -> dict:
        """The answer for ``query``; ``caller`` (the query's own, else the function's choice)
        decides whether challengers serve it."""
        answers, unknown = [], []
        canary = in_canary(query.caller or caller, self.cfg.promotion.canary_share)
        for isbn in query.isbns:
            served, stale = self.challenger(isbn) if canary else (None, False)
            if served is None:
                served, stale = self.model(isbn)
            if served is None:
                unknown.append(isbn)
                continue
            answers.append(self._answer(isbn, served, stale, query))
        if unknown:
            raise ApiError(404, "unknown_isbn", f"no model is serving {', '.join(unknown)}", isbns=unknown)
        return {"horizon": query.horizon, "interval": query.interval, "stale": any(a["stale"] for a in answers),
                "forecasts": answers}

    def challenger(self, isbn: str) -> tuple[ServedModel | None, bool]:
        """The ISBN's challenger for a canary caller; None (the champion serves) when it has
        none, or when the registry cannot say and none is cached."""
        try:
            return self.model(isbn, CHALLENGER)
        except ApiError:
            return None, False

    def _answer(self, isbn: str, served: ServedModel, stale: bool, query: ForecastQuery) -> dict:
        # A version's forecast never changes: answers are cached per (alias, version, horizon, interval).
        key = (isbn, served.target.alias, served.target.version, served.target.run_id, query.horizon, query.interval)
        answer = self.answers.get(key)
        if answer is None:
            answer = self._compute(isbn, served, query)
            if len(self.answers) >= ANSWER_CACHE_SIZE:
                self.answers.pop(next(iter(self.answers)))
            self.answers[key] = answer
        return {**answer, "stale": stale}

    def _compute(self, isbn: str, served: ServedModel, query: ForecastQuery) -> dict:
        weeks, mean, lower, upper = from_artifact(served.artifact, query.horizon, query.interval)
        target = served.target
        return {
            "isbn": isbn, "model_name": target.model_name, "version": target.version, "alias": target.alias,
            "trained_at": target.created_at.isoformat(), "data_end": served.artifact["data_end"],
            "model": served.artifact.get("label"), "baseline": VersionTags(target.tags).is_baseline,
            "forecast": [{"week": w.isoformat(), "mean": round(float(m), 2), "lower": round(float(lo), 2),
                          "upper": round(float(hi), 2)} for w, m, lo, hi in zip(weeks, mean, lower, upper)],
        }

    def history(self, isbn: str, alias: str) -> tuple[list, list]:
        from datetime import date, timedelta

        artifact = self.cache[(isbn, alias)].artifact
        start = date.fromisoformat(artifact["history_start"])
        return [start + timedelta(weeks=i) for i in range(len(artifact["history"]))], artifact["history"]

    def health(self) -> dict:
        return {"status": HealthStatus.OK, "models_cached": sum(1 for m in self.cache.values() if m.target),
                "alias": self.cfg.serving.alias,
                "registry_reachable": model_store.healthy(self.cfg)}


def served_header(result: dict) -> str:
    """``isbn=alias:version`` per answered ISBN, for the X-Bookcast-Served header."""
    return ",".join(f"{a['isbn']}={a['alias']}:{a['version']}" for a in result["forecasts"])


def to_csv(result: dict) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["isbn", "version", "week", "mean", "lower", "upper"])
    for answer in result["forecasts"]:
        for row in answer["forecast"]:
            writer.writerow([answer["isbn"], answer["version"], row["week"], row["mean"], row["lower"], row["upper"]])
    return out.getvalue()


def to_png(service: ForecastService, result: dict) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from shared.plots import forecast_figure, png_bytes

    figures = []
    for answer in result["forecasts"][:6]:
        weeks, units = service.history(answer["isbn"], answer["alias"])
        rows = answer["forecast"]
        figures.append(forecast_figure(
            f"{answer['isbn']} · v{answer['version']} ({answer['model']})" + (" · STALE" if answer["stale"] else ""),
            weeks, units, [r["week"] for r in rows], [r["mean"] for r in rows], [r["lower"] for r in rows],
            [r["upper"] for r in rows], level=result["interval"],
            subtitle=f"trained {answer['trained_at'][:10]} · data to {answer['data_end']}", data_end=answer["data_end"]))
    if len(figures) == 1:
        return png_bytes(figures[0])
    # Several ISBNs: stack the single plots into one image.
    import numpy as np

    images = [plt.imread(io.BytesIO(png_bytes(f))) for f in figures]
    stacked = np.vstack(images)
    out = io.BytesIO()
    plt.imsave(out, stacked, format="png")
    return out.getvalue()
