"""The fleet: every ISBN with data or a served version, its served model and one state.

Read for a whole catalogue at once, in parallel: the ISBNs with data (keys only), the
champion index without its forecasts (shared/champions.summaries: one Firestore query, the
served versions as bookcast last moved them), the live leases, the decisions that measured
degradation, and one registry search for quarantined versions. Never a round trip per ISBN.
"""
from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime

from shared import champions, model_store, monitoring
from shared.config import Settings
from shared.decisions import parameter_age_days
from shared.forecasting.gates import REQUIRED as REQUIRED_METRICS
from shared.forecasting.gates import metrics_from_tags
from shared.runstore import RunStore, now
from shared.states import FleetState
from shared.version_tags import Tag, metric_tag

TRAINING, UNSERVED, DEGRADED, QUARANTINED, STALE, BASELINE, HEALTHY = FleetState
STATES = tuple(FleetState)  # most urgent first
STATE_MEANING = {
    TRAINING: "a training run holds its lease now",
    UNSERVED: "has data but no served version",
    DEGRADED: "a decision measured its error on weeks it never saw above its holdout error by more than "
              "the threshold",
    QUARANTINED: "its latest candidate failed the quality gates (an older version still serves)",
    STALE: "parameters older than the age limit",
    BASELINE: "served by a fallback, not a tuned candidate",
    HEALTHY: "served by a tuned model, none of the above",
}
# The served version's tags the rows show or judge by (the index holds them all).
ROW_TAGS = [Tag.FAMILY, Tag.KIND, Tag.FITTED_AT, Tag.BASELINE, metric_tag("mase"), *map(metric_tag, REQUIRED_METRICS)]
SORTABLE = ("isbn", "state", "version", "family", "age_days", "data_end", "mase", "wape", "relative_mae")  # FleetRow fields


@dataclass
class FleetRow:
    isbn: str
    state: str
    flags: list[str] = field(default_factory=list)   # every state that applies, in STATES order
    version: str | None = None
    family: str = ""
    kind: str = ""
    age_days: float | None = None
    data_end: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    label: str = ""

    def sort_value(self, column: str):
        if column in ("mase", "wape", "relative_mae"):
            return self.metrics.get(column)
        if column == "state":
            return STATES.index(self.state)
        return getattr(self, column)


def measured_degraded(cfg: Settings, store: RunStore) -> set[tuple[str, str]]:
    """(ISBN, version) pairs whose latest measure (degradation/{isbn}, what the monitor
    judges) is degraded: error on at least the minimum of unseen weeks above its holdout
    error by more than the threshold (shared/monitoring.degradation). One query; such
    measures are few."""
    from google.cloud import firestore

    from shared.layout import Collection

    policy = cfg.decision
    query = (store.col(Collection.DEGRADATION)
             .where(filter=firestore.FieldFilter("measured.ratio", ">", 1 + policy.degradation_threshold))
             .select(["version", "measured.unseen_weeks"]))
    return {(snap.id, doc["version"]) for snap in query.stream() for doc in [snap.to_dict()]
            if doc["measured"]["unseen_weeks"] >= policy.min_new_weeks_for_degradation}


def quarantined_versions(cfg: Settings) -> dict[str, str] | None:
    """The newest quarantined version per ISBN (one registry search); None if MLflow is down:
    the rest of the page does not need it."""
    try:
        return model_store.newest_quarantined(cfg)
    except model_store.RegistryUnavailable:
        return None


def fleet(cfg: Settings, store: RunStore) -> tuple[list[FleetRow], bool]:
    """Every ISBN's row, and whether the quarantined state could be read (MLflow was up)."""
    with ThreadPoolExecutor(max_workers=5) as pool:
        with_data = pool.submit(store.series_isbns)
        indexed = pool.submit(champions.summaries, store, ROW_TAGS)
        leased = pool.submit(monitoring.in_first_training, store)
        quarantined = pool.submit(quarantined_versions, cfg)
        degraded = pool.submit(measured_degraded, cfg, store)
        served, newest_quarantined, degraded = indexed.result(), quarantined.result(), degraded.result()
        isbns = sorted(with_data.result() | set(served))
        leased = leased.result()
    at = now()
    rows = []
    for isbn in isbns:
        target, summary = served.get(isbn, (None, {}))
        rows.append(row(cfg, isbn, target, summary, training=isbn in leased,
                        degraded=target is not None and (isbn, target.version) in degraded,
                        newest_quarantined=(newest_quarantined or {}).get(isbn), at=at))
    return rows, newest_quarantined is not None


def row(cfg: Settings, isbn: str, target, summary: dict, training: bool, degraded: bool,
        newest_quarantined: str | None, at: datetime) -> FleetRow:
    if target is None:
        flags = [TRAINING] if training else [UNSERVED]
        return FleetRow(isbn=isbn, state=flags[0], flags=flags)
    quarantined = newest_quarantined is not None and int(newest_quarantined) > int(target.version)
    tags = target.tags
    age_days = parameter_age_days(tags, target.created_at, at)  # what decisions and the monitor judge
    flags = [state for state, applies in (
        (TRAINING, training), (DEGRADED, degraded), (QUARANTINED, quarantined),
        (STALE, age_days > cfg.decision.max_model_age_days), (BASELINE, monitoring.is_baseline(target)))
        if applies] or [HEALTHY]
    return FleetRow(isbn=isbn, state=flags[0], flags=flags, version=target.version, family=tags.get(Tag.FAMILY, ""),
                    kind=tags.get(Tag.KIND, ""), age_days=round(age_days, 1), data_end=summary.get("data_end") or "",
                    metrics=metrics_from_tags(tags) or {},
                    label=summary.get("label") or "")


def counts(rows: list[FleetRow]) -> dict[str, int]:
    tally = Counter(r.state for r in rows)
    return {state: tally.get(state, 0) for state in STATES}


def select(rows: list[FleetRow], state: str | None = None, family: str | None = None, query: str | None = None,
           sort: str = "state", descending: bool = False) -> list[FleetRow]:
    """The rows a filter keeps, sorted by one column (empty values last either way)."""
    digits = "".join(ch for ch in (query or "") if ch.isdigit())
    kept = [r for r in rows if (not state or state in r.flags) and (not family or r.family == family)
            and (not digits or digits in r.isbn)]
    column = sort if sort in SORTABLE else "state"
    present = [r for r in kept if r.sort_value(column) is not None]
    missing = [r for r in kept if r.sort_value(column) is None]
    return sorted(present, key=lambda r: (r.sort_value(column), r.isbn), reverse=descending) + missing
