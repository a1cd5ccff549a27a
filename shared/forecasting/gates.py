"""Quality gates: the rules a candidate must pass on its holdout before it may serve.

The defaults are scale-free, so they mean the same for a title selling 5 copies a week and
one selling 50,000: beat seasonal naive (MAE ratio), keep the error small against the
title's own sales (WAPE), and never be meaningfully worse than the current champion refitted
on the same weeks. Absolute limits (RMSE, MAPE) exist for those who want them, off by
default; MAPE is never applied to a holdout with zero weeks, where it is undefined.
Every failed rule is one sentence in plain words, as the quarantine reason.
"""
from __future__ import annotations

from shared.config import GateSettings


def breaches(metrics: dict, gates: GateSettings, champion: dict | None = None) -> list[str]:
    reasons = []
    ratio = metrics["relative_mae"]
    if not ratio < gates.max_relative_mae:
        reasons.append(f"does not beat seasonal naive on the holdout: its mean absolute error is {ratio:.2f}× "
                       f"naive's (must be below {gates.max_relative_mae:.2f}×)")
    if not metrics["wape"] <= gates.max_wape:
        reasons.append(f"error too large for this title's sales: absolute errors add up to {metrics['wape']:.0%} "
                       f"of the units sold in the holdout (limit {gates.max_wape:.0%})")
    if champion and champion.get("mae") is not None and metrics["mae"] > champion["mae"] * (1 + gates.champion_margin):
        worse = metrics["mae"] / champion["mae"] - 1 if champion["mae"] else float("inf")
        reasons.append(f"worse than the current champion refitted on the same weeks: mean absolute error "
                       f"{metrics['mae']:.1f} vs {champion['mae']:.1f} ({worse:+.0%}, at most "
                       f"{gates.champion_margin:+.0%} allowed)")
    if gates.max_rmse is not None and not metrics["rmse"] < gates.max_rmse:
        reasons.append(f"RMSE {metrics['rmse']:.1f} is not below the configured absolute limit {gates.max_rmse:g}")
    if gates.max_mape is not None and metrics.get("zero_weeks_in_holdout", 0) == 0 and not metrics["mape"] < gates.max_mape:
        reasons.append(f"MAPE {metrics['mape']:.0%} is not below the configured limit {gates.max_mape:.0%}")
    return reasons


REQUIRED = ("relative_mae", "wape", "mae", "rmse")
TAG_PREFIX = "metric."


def metrics_from_tags(tags: dict[str, str]) -> dict | None:
    """A registered version's holdout metrics, from its ``metric.*`` tags; None for versions
    registered before these metrics existed."""
    metrics = {k[len(TAG_PREFIX):]: float(v) for k, v in tags.items() if k.startswith(TAG_PREFIX)}
    return metrics if all(k in metrics for k in REQUIRED) else None
