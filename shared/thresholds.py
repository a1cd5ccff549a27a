"""Threshold validation from the registry's own history: every candidate version's holdout
metrics, grouped by sales volume and intermittency, and what each gate setting would have
quarantined. Answers "is RMSE < 80-100 appropriate for this domain?" with the catalogue's
numbers rather than a guess.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from shared.config import Settings
from shared.forecasting.gates import breaches, metrics_from_tags
from shared.forecasting.tuning import INTERMITTENT_ZERO_SHARE
from shared.version_tags import Tag, VersionKind

VOLUME_BANDS = ((0, 10, "under 10 a week"), (10, 100, "10-100 a week"), (100, 1_000, "100-1,000 a week"),
                (1_000, 10_000, "1,000-10,000 a week"), (10_000, math.inf, "10,000+ a week"))
LEGACY_RMSE, LEGACY_MAPE = 100.0, 0.5  # the seeds' absolute limits, for comparison
WAPE_QUANTILE = 0.9  # of candidates that beat naive: the limit keeps the usual good ones


@dataclass
class Recommendation:
    segment: str
    candidates: int
    beat_naive: float
    quarantined_now: float
    recommended_max_wape: float | None
    quarantined_recommended: float
    quarantined_by_rmse_100: float
    quarantined_by_mape_50: float


def segment_of(level: float, zero_share: float) -> str:
    band = next(name for low, high, name in VOLUME_BANDS if low <= level < high)
    return f"{band}, {'intermittent' if zero_share >= INTERMITTENT_ZERO_SHARE else 'regular'}"


def candidate_metrics(cfg: Settings) -> list[dict]:
    """Holdout metrics of every candidate version (baselines excluded) under this
    deployment's model-name prefix, read from the version tags."""
    from shared.registry import client

    mlflow = client(cfg)
    found, token = [], None
    while True:
        page = mlflow.search_model_versions(f"name LIKE '{cfg.model_name_prefix}%'", max_results=1000, page_token=token)
        for version in page:
            tags = version.tags or {}
            metrics = metrics_from_tags(tags) if tags.get(Tag.KIND) == VersionKind.CANDIDATE else None
            if metrics and "level" in metrics:
                found.append(metrics)
        token = page.token
        if not token:
            return found


def _share(flags: list[bool]) -> float:
    return float(np.mean(flags)) if flags else 0.0


def recommend(cfg: Settings, history: list[dict]) -> list[Recommendation]:
    by_segment: dict[str, list[dict]] = {}
    for metrics in history:
        by_segment.setdefault(segment_of(metrics["level"], metrics.get("zero_share", 0.0)), []).append(metrics)
    order = {name: i for i, (_, _, name) in enumerate(VOLUME_BANDS)}
    found = []
    for segment in sorted(by_segment, key=lambda s: (order[s.split(", ")[0]], s)):
        rows = by_segment[segment]
        good = [m["wape"] for m in rows if m["relative_mae"] < cfg.gates.max_relative_mae]
        limit = math.ceil(float(np.quantile(good, WAPE_QUANTILE)) * 20) / 20 if good else None
        tuned = cfg.gates.model_copy(update={"max_wape": limit}) if limit else cfg.gates
        no_zero_weeks = [m for m in rows if m.get("zero_weeks_in_holdout", 0) == 0 and "mape" in m]
        found.append(Recommendation(
            segment=segment, candidates=len(rows), beat_naive=_share([m["relative_mae"] < 1 for m in rows]),
            quarantined_now=_share([bool(breaches(m, cfg.gates)) for m in rows]),
            recommended_max_wape=limit, quarantined_recommended=_share([bool(breaches(m, tuned)) for m in rows]),
            quarantined_by_rmse_100=_share([m["rmse"] >= LEGACY_RMSE for m in rows if "rmse" in m]),
            quarantined_by_mape_50=_share([m["mape"] >= LEGACY_MAPE for m in no_zero_weeks])))
    return found


def as_dicts(recommendations: list[Recommendation]) -> list[dict]:
    return [asdict(r) for r in recommendations]
