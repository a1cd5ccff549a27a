"""Which version serves each ISBN, with its tags and serving forecast, for a whole catalogue
at once: one paged registry search for the serving alias (1,000 models a page), then the
champion index in Firestore (runstore.record_champion, written at every alias move) in
batched reads. Only an ISBN whose entry is missing or behind (an alias moved outside
bookcast) costs registry round trips, and its entry is rewritten. Decisions, the monitor
and the export all read champions this way.

An entry also keeps the served version's lineage: the champion it replaced and that
version's holdout metrics, worked out once when the alias moves, so the monitor compares
a whole catalogue with what it replaced without an alias-history query per ISBN.
"""
from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import requests
from google.api_core.exceptions import GoogleAPIError

from shared import model_store
from shared.config import Settings
from shared.logs import get_logger
from shared.states import AliasMove
from shared.version_tags import VersionTags

log = get_logger(__name__)

# The entry's field: {"of": the served version, "version": the champion it replaced or None,
# "metrics": that champion's holdout metrics}. "of" tells a lineage from one written for an
# earlier version of the entry.
LINEAGE = "replaced"


def record(cfg: Settings, store, isbn: str, target, forecast: dict) -> None:
    """Write the ISBN's index entry for a served version already read from the registry."""
    entry = model_store.index_entry(target, forecast)
    try:
        entry[LINEAGE] = lineage(cfg, store, isbn, target.version)
    except (GoogleAPIError, model_store.RegistryUnavailable, requests.RequestException) as error:
        # The alias has moved: its entry matters more; lineages() works it out later.
        log.warning("lineage of %s v%s not kept: %s", isbn, target.version, error, extra={"isbn": isbn})
    store.record_champion(isbn, entry)


def replaced_version(history: list[dict], version: str) -> str | None:
    """The champion that the served version's lineage replaced when it was promoted: refreshes
    are followed back to the version they refreshed. None for a first champion, a baseline or
    a rollback (an operator's choice, alerted as such)."""
    for move in reversed(history):
        if move["to_version"] != version:
            continue
        if move["action"] != AliasMove.REFRESH:
            return move["from_version"] if move["action"] == AliasMove.PROMOTE else None
        version = move["from_version"]
    return None


def lineage(cfg: Settings, store, isbn: str, version: str) -> dict:
    """The champion ``version`` replaced and that version's holdout metrics (none if it
    is gone from the registry)."""
    history = [m for m in store.alias_history(isbn) if m.get("alias") == cfg.serving.alias]
    replaced = replaced_version(history, version)
    before = model_store.version_tags(cfg, isbn, replaced) if replaced else None
    return {"of": version, "version": replaced, "metrics": VersionTags(before).metrics if before else {}}


def lineages(cfg: Settings, store, versions: dict[str, str], deadline: float | None = None) -> dict[str, dict]:
    """The lineage of each ISBN's served version (``versions``), from the index in batched
    reads of one field. An entry without it (indexed before lineage was kept, or its
    lineage failed) has it worked out and kept, on 8 threads until ``deadline``
    (time.monotonic()); ISBNs left out then are unknown until a later call."""
    from shared.layout import Collection

    entries = store.read_batched(Collection.CHAMPIONS, sorted(versions), field_paths=[LINEAGE])
    found = {isbn: entries[isbn][LINEAGE] for isbn, version in versions.items()
             if (entries.get(isbn) or {}).get(LINEAGE, {}).get("of") == version}
    missing = sorted(set(versions) - set(found))

    def work(isbn: str) -> dict | None:
        if deadline is not None and time.monotonic() > deadline:
            return None
        try:
            worked = lineage(cfg, store, isbn, versions[isbn])
            store.col(Collection.CHAMPIONS).document(isbn).update({LINEAGE: worked})  # "of" guards a newer entry
        except (GoogleAPIError, model_store.RegistryUnavailable, requests.RequestException) as error:
            log.warning("lineage of %s v%s not worked out: %s", isbn, versions[isbn], error, extra={"isbn": isbn})
            return None  # unknown: a later call tries again
        return worked

    with ThreadPoolExecutor(max_workers=8) as pool:
        found.update((isbn, worked) for isbn, worked in zip(missing, pool.map(work, missing)) if worked is not None)
    return found


def index(cfg: Settings, store, isbn: str):
    """Write the ISBN's index entry from the registry; its (target, forecast)."""
    target = model_store.resolve(cfg, isbn)
    if target is None:
        return None, None
    forecast = model_store.serving_forecast(cfg, target.run_id)
    record(cfg, store, isbn, target, forecast)
    return target, forecast


def served(cfg: Settings, store, isbns: list[str] | None = None,
           versions: dict[str, str] | None = None) -> dict[str, tuple]:
    """(target, serving forecast) per ISBN; (None, None) for one that nothing serves.
    ``isbns`` defaults to every served ISBN; ``versions`` to a fresh registry search."""
    versions = model_store.champion_versions(cfg) if versions is None else versions
    isbns = sorted(versions) if isbns is None else isbns
    wanted = [i for i in isbns if i in versions]
    entries = store.champions(wanted)
    found = {i: (None, None) for i in isbns}
    behind = []
    for isbn in wanted:
        entry = entries.get(isbn)
        if entry and entry["version"] == versions[isbn]:
            found[isbn] = model_store.from_index(isbn, entry)
        else:
            behind.append(isbn)
    with ThreadPoolExecutor(max_workers=8) as pool:
        found.update(zip(behind, pool.map(lambda i: index(cfg, store, i), behind)))
    return found


SUMMARY_FIELDS = ["version", "run_id", "model_name", "alias", "created_at", "data_end", "label"]


def summaries(store, tags: list[str]) -> dict[str, tuple]:
    """(target with only these ``tags``, {data_end, label}) of every ISBN in the champion
    index, without the forecasts (one query, well under 1 KB an ISBN): the served versions as
    bookcast last moved them, for views of the whole catalogue. An entry written before its
    data end was kept as a field has it read from its forecast, in one batched read."""
    from google.cloud.firestore_v1.field_path import FieldPath

    from shared.layout import Collection

    fields = SUMMARY_FIELDS + [FieldPath("tags", tag).to_api_repr() for tag in tags]
    entries = {snap.id: snap.to_dict() for snap in store.col(Collection.CHAMPIONS).select(fields).stream()}
    older = [isbn for isbn, entry in entries.items() if "data_end" not in entry]
    for isbn, entry in store.champions(older).items():
        forecast = json.loads(entry["forecast"])
        entries[isbn].update(data_end=forecast.get("data_end"), label=forecast.get("label"))
    return {isbn: (model_store.from_index(isbn, {"tags": {}, **entry, "forecast": "{}"})[0],
                   {"data_end": entry.get("data_end"), "label": entry.get("label")})
            for isbn, entry in entries.items()}
