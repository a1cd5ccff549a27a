"""The registry's tag contract: what every MLflow model version carries as tags, written by
``contract()`` and read through ``VersionTags``. Decisions, serving, the monitor, the
dashboard, rollback, release and export all read versions this way, so a version lists with
no run look-up. Tag values are strings (MLflow's): flags are "true" / "false", metrics are
``metric.<name>`` with six significant digits."""
from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Mapping


class Tag(StrEnum):
    ISBN = "isbn"
    KIND = "kind"                          # VersionKind
    FAMILY = "family"                      # the model family that forecasts (models.ModelSpec.kind)
    SPEC = "spec"                          # the full model spec, JSON: a refit or backtest rebuilds it
    BASELINE = "baseline"                  # a fallback, not a tuned candidate
    GATE = "gate"                          # Gate
    QUARANTINED = "quarantined"            # refused by the gates: never serves unless forced
    QUARANTINE_REASON = "quarantine_reason"
    DATA_HASH = "data_hash"                # the series the version's forecast is conditioned on
    SOURCE_OBJECTS = "source_objects"
    PIPELINE_RUN_ID = "pipeline_run_id"
    ZENML_RUN_ID = "zenml_run_id"
    CODE_VERSION = "code_version"
    CORRELATION_ID = "correlation_id"
    TRAIN_WINDOW_START = "train_window_start"
    TRAIN_WINDOW_END = "train_window_end"
    HOLDOUT_WEEKS = "holdout_weeks"
    FITTED_AT = "fitted_at"                # when its parameters were estimated (refreshes keep it)
    REFRESHES = "refreshes"                # the version a refresh or refit was made from
    UNSEEN_WEEKS = "unseen_weeks"          # weeks scored since the parameters were fitted
    UNSEEN_ABS_ERROR = "unseen_abs_error"
    RELEASE_ID = "release_id"              # shared/release.py: a version imported from another environment
    RELEASE_MANIFEST = "release_manifest"
    RELEASED_FROM = "released_from"
    PROMOTION_CHAIN = "promotion_chain"
    PROMOTED_WITH = "promoted_with"


class VersionKind(StrEnum):
    CANDIDATE = "candidate"  # tuned and gated
    BASELINE = "baseline"    # a robust fallback that serves when no candidate passed
    REFRESH = "refresh"      # the served model conditioned on new weeks
    REFIT = "refit"          # the champion's structure re-estimated after a candidate lost to it


class Gate(StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    BASELINE = "baseline"    # a fallback is not gated: it was chosen on the backtests


METRIC_PREFIX = "metric."
LINEAGE = (Tag.FAMILY, Tag.KIND, Tag.REFRESHES, Tag.DATA_HASH, Tag.FITTED_AT, Tag.PIPELINE_RUN_ID, Tag.CODE_VERSION)


def metric_tag(name: str) -> str:
    return f"{METRIC_PREFIX}{name}"


def flag(value: bool) -> str:
    return "true" if value else "false"


def contract(kind: VersionKind, *, family: str, spec: dict | str | None, baseline: bool, quarantined: bool = False,
             gate: Gate | None = None, **more: object) -> dict[str, str]:
    """A version's tags but its metrics (``metric_tags``): its kind, family, spec and flags,
    and ``more`` (lineage and the like, each a Tag's name)."""
    tags = {Tag.KIND: kind, Tag.FAMILY: family, Tag.BASELINE: flag(baseline), Tag.QUARANTINED: flag(quarantined),
            **({Tag.SPEC: spec if isinstance(spec, str) else json.dumps(spec)} if spec is not None else {}), **({Tag.GATE: gate} if gate else {}),
            **{Tag(key): value for key, value in more.items()}}
    return {str(k): str(v) for k, v in tags.items()}


def metric_tags(metrics: Mapping[str, float]) -> dict[str, str]:
    return {metric_tag(k): f"{v:.6g}" for k, v in metrics.items()}


@dataclass(frozen=True)
class VersionTags:
    """A version's tags, read by the contract; ``raw`` is what MLflow returned."""
    raw: Mapping[str, str]

    def get(self, tag: Tag, default: str = "") -> str:
        return self.raw.get(tag, default)

    @property
    def family(self) -> str:
        return self.raw.get(Tag.FAMILY, "")

    @property
    def is_baseline(self) -> bool:
        return self.raw.get(Tag.BASELINE) == "true"

    @property
    def is_quarantined(self) -> bool:
        return self.raw.get(Tag.QUARANTINED) == "true"

    @property
    def data_hash(self) -> str | None:
        return self.raw.get(Tag.DATA_HASH)

    @property
    def metrics(self) -> dict[str, float]:
        return {k[len(METRIC_PREFIX):]: float(v) for k, v in self.raw.items() if k.startswith(METRIC_PREFIX)}

    def metric(self, name: str) -> float | None:
        value = self.raw.get(metric_tag(name))
        return float(value) if value is not None else None
