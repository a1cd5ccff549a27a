"""Read-only access to the registry over MLflow's REST API, for the request path.

The forecast and trigger functions only resolve an alias and fetch a small artifact;
importing the mlflow package for that would add 2-3 s to every cold start.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone

import requests
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

from shared.config import Settings
from shared.version_tags import Tag, metric_tag


class RegistryUnavailable(RuntimeError):
    """MLflow could not be reached or answered with a server error."""


@dataclass(frozen=True)
class AliasTarget:
    isbn: str
    model_name: str
    alias: str
    version: str
    run_id: str
    created_at: datetime
    tags: dict[str, str]

    @property
    def holdout_mae(self) -> float | None:
        value = self.tags.get(metric_tag("mae"))
        return float(value) if value else None


_session = requests.Session()


@retry(retry=retry_if_exception_type(RegistryUnavailable), stop=stop_after_attempt(2),
       wait=wait_exponential(multiplier=0.1, max=0.5), reraise=True)
def _get(cfg: Settings, path: str, params: dict, timeout: float = 3.0) -> requests.Response:
    try:
        response = _session.get(f"{cfg.mlflow_tracking_uri.rstrip('/')}{path}", params=params, timeout=timeout)
    except requests.RequestException as error:
        raise RegistryUnavailable(f"MLflow at {cfg.mlflow_tracking_uri} is unreachable: {error}") from error
    if response.status_code >= 500:
        raise RegistryUnavailable(f"MLflow answered {response.status_code} for {path}")
    return response


def resolve(cfg: Settings, isbn: str, alias: str | None = None) -> AliasTarget | None:
    """The version an alias points at, or None if the model or alias does not exist."""
    alias = alias or cfg.serving.alias
    name = cfg.model_name(isbn)
    response = _get(cfg, "/api/2.0/mlflow/registered-models/alias", {"name": name, "alias": alias})
    # No model: 404 or RESOURCE_DOES_NOT_EXIST; a model without this alias: 400 "alias ... not found".
    if response.status_code == 404 or (response.status_code == 400 and ("DOES_NOT_EXIST" in response.text
                                                                        or "not found" in response.text)):
        return None
    if not response.ok:
        raise RegistryUnavailable(f"MLflow answered {response.status_code}: {response.text[:200]}")
    version = response.json()["model_version"]
    return AliasTarget(isbn=isbn, model_name=name, alias=alias, version=str(version["version"]),
                       run_id=version["run_id"],
                       created_at=datetime.fromtimestamp(int(version["creation_timestamp"]) / 1000, timezone.utc),
                       tags={t["key"]: t["value"] for t in version.get("tags", [])})


def version_tags(cfg: Settings, isbn: str, version: str) -> dict[str, str] | None:
    """The tags of one registered version, or None if it does not exist."""
    response = _get(cfg, "/api/2.0/mlflow/model-versions/get", {"name": cfg.model_name(isbn), "version": version})
    if response.status_code == 404 or (response.status_code == 400 and "DOES_NOT_EXIST" in response.text):
        return None
    if not response.ok:
        raise RegistryUnavailable(f"MLflow answered {response.status_code}: {response.text[:200]}")
    return {t["key"]: t["value"] for t in response.json()["model_version"].get("tags", [])}


@dataclass(frozen=True)
class RegisteredVersion:
    version: str
    run_id: str
    created_at: datetime
    tags: dict[str, str]


def versions(cfg: Settings, isbn: str) -> list[RegisteredVersion]:
    """Every registered version of the ISBN's model with its tags, oldest first (one search)."""
    found, token = [], None
    while True:
        params = {"filter": f"name='{cfg.model_name(isbn)}'", "max_results": 1000, **({"page_token": token} if token else {})}
        response = _get(cfg, "/api/2.0/mlflow/model-versions/search", params, timeout=10.0)
        if not response.ok:
            raise RegistryUnavailable(f"MLflow answered {response.status_code}: {response.text[:200]}")
        page = response.json()
        found += [RegisteredVersion(version=str(v["version"]), run_id=v.get("run_id", ""),
                                    created_at=datetime.fromtimestamp(int(v["creation_timestamp"]) / 1000, timezone.utc),
                                    tags={t["key"]: t["value"] for t in v.get("tags", [])})
                  for v in page.get("model_versions", [])]
        token = page.get("next_page_token")
        if not token:
            return sorted(found, key=lambda v: int(v.version))


def newest_quarantined(cfg: Settings) -> dict[str, str]:
    """Per ISBN, its newest version that failed the quality gates: one search over the whole
    registry (paged), for the fleet view."""
    found: dict[str, str] = {}
    token = None
    while True:
        params = {"filter": f"name LIKE '{cfg.model_name_prefix}%' AND tags.{Tag.QUARANTINED} = 'true'",
                  "max_results": 1000, **({"page_token": token} if token else {})}
        response = _get(cfg, "/api/2.0/mlflow/model-versions/search", params, timeout=10.0)
        if not response.ok:
            raise RegistryUnavailable(f"MLflow answered {response.status_code}: {response.text[:200]}")
        page = response.json()
        for v in page.get("model_versions", []):
            isbn = v["name"].removeprefix(cfg.model_name_prefix)
            found[isbn] = max(found.get(isbn, "0"), str(v["version"]), key=int)
        token = page.get("next_page_token")
        if not token:
            return found


def index_entry(target: AliasTarget, forecast: dict) -> dict:
    """An index entry (runstore.record_champion): the version, its tags and its serving
    forecast without the history tail, about 5 KB. The forecast is kept as JSON text:
    Firestore holds no arrays inside arrays (the interval calibration pairs). Its data end
    and label are also kept as fields, so a catalogue's summary is read without the forecasts."""
    return {"version": target.version, "run_id": target.run_id, "model_name": target.model_name,
            "alias": target.alias, "created_at": target.created_at, "tags": target.tags,
            "data_end": forecast.get("data_end"), "label": forecast.get("label"),
            "forecast": json.dumps({k: v for k, v in forecast.items() if k not in ("history", "history_start")})}


def from_index(isbn: str, entry: dict) -> tuple[AliasTarget, dict]:
    target = AliasTarget(isbn=isbn, model_name=entry["model_name"], alias=entry["alias"], version=entry["version"],
                         run_id=entry["run_id"], created_at=entry["created_at"], tags=entry["tags"])
    return target, json.loads(entry["forecast"])


def champion_versions(cfg: Settings, alias: str | None = None) -> dict[str, str]:
    """Every ISBN's ``alias`` version under this deployment's prefix, from the registry's
    model search: a page of 1,000 models per round trip, however large the catalogue."""
    alias = alias or cfg.serving.alias
    found, token = {}, None
    while True:
        params = {"filter": f"name LIKE '{cfg.model_name_prefix}%'", "max_results": 1000,
                  **({"page_token": token} if token else {})}
        response = _get(cfg, "/api/2.0/mlflow/registered-models/search", params, timeout=10.0)
        if not response.ok:
            raise RegistryUnavailable(f"MLflow answered {response.status_code}: {response.text[:200]}")
        page = response.json()
        for model in page.get("registered_models", []):
            version = next((a["version"] for a in model.get("aliases", []) if a["alias"] == alias), None)
            if version is not None:
                found[model["name"].removeprefix(cfg.model_name_prefix)] = str(version)
        token = page.get("next_page_token")
        if not token:
            return found


def run_artifact(cfg: Settings, run_id: str, path: str) -> dict:
    """A JSON artifact of a version's run, over plain HTTP (no MLflow import)."""
    response = _get(cfg, "/get-artifact", {"path": path, "run_uuid": run_id}, timeout=5.0)
    if not response.ok:
        raise RegistryUnavailable(f"artifact {path} of run {run_id}: HTTP {response.status_code}")
    return json.loads(response.content)


def serving_forecast(cfg: Settings, run_id: str) -> dict:
    """The precomputed forecast logged with a version (mean and standard error, 104 weeks)."""
    return run_artifact(cfg, run_id, "serving/forecast.json")


def healthy(cfg: Settings) -> bool:
    try:
        return _session.get(f"{cfg.mlflow_tracking_uri.rstrip('/')}/health", timeout=2).ok
    except requests.RequestException:
        return False
