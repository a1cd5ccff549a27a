"""Quality gates: the rules a candidate must pass before it may serve, and what serves when
it does not.

A candidate is judged on its rolling-origin backtests (shared/forecasting/backtest.py): the
search's folds and the holdout, 40-65 unseen weeks. It is refused for being worse than
seasonal naive or than the current champion only when the evidence is clear (the
confidence that it is worse reaches ``GateSettings.evidence``), not because it lost one
half-year. The defaults are scale-free, so they mean the same for a title selling 5 copies
a week and one selling 50,000: beat seasonal naive (MAE ratio), keep the error small
against the title's own sales (WAPE), never be clearly worse than the champion refitted on
the same weeks. Absolute limits (RMSE, MAPE) exist for those who want them, off by
default, on the holdout; MAPE is never applied to a holdout with zero weeks, where it is
undefined. Versions registered before backtests existed are judged on their holdout.
Every failed rule is one sentence in plain words, as the quarantine reason.

A refused candidate is replaced by the fitted option with the lowest backtest error (the
champion refitted, a plain combination). Seasonal naive replaces that one only when the
backtests are as sure it is better as they must be to refuse a candidate: on real weekly
sales it is the weakest method there is, and a slightly lower error on a few dozen weeks
picked it where it then lost (on the 87 design series of bench/real_accuracy.py, choosing
the lower backtest error gave a fallback mean MASE of 0.962, this rule 0.926). Nor does a
fallback that does worse than the refused candidate serve in its place when naive does
better: what serves is never a bigger loser than what was refused.
"""
from __future__ import annotations

import math

from shared.config import GateSettings
from shared.forecasting.backtest import Backtest, evidence_worse


def breaches(metrics: dict, gates: GateSettings, champion: dict | None = None) -> list[str]:
    """``metrics`` are a candidate's holdout metrics with its backtest evidence
    (``backtest_evidence``); ``champion`` the champion's backtest against it, if any."""
    reasons = []
    if "worse_than_naive" in metrics:
        ratio, sure = metrics["backtest_relative_mae"], metrics["worse_than_naive"]
        if ratio >= gates.max_relative_mae and sure >= gates.evidence:
            reasons.append(f"worse than seasonal naive on the backtests: over {metrics['backtest_weeks']:.0f} unseen weeks "
                           f"in {metrics['backtest_windows']:.0f} windows its mean absolute error is {ratio:.2f}× "
                           f"naive's ({sure:.0%} sure it is not below {gates.max_relative_mae:.2f}×)")
        wape, where = metrics["backtest_wape"], "backtest"
    else:  # a version registered before backtests: its holdout is all there is
        ratio = metrics["relative_mae"]
        if not ratio < gates.max_relative_mae:
            reasons.append(f"does not beat seasonal naive on the holdout: its mean absolute error is {ratio:.2f}× "
                           f"naive's (must be below {gates.max_relative_mae:.2f}×)")
        wape, where = metrics["wape"], "holdout"
    if not wape <= gates.max_wape:
        reasons.append(f"error too large for this title's sales: absolute errors add up to {wape:.0%} "
                       f"of the units sold in the {where} weeks (limit {gates.max_wape:.0%})")
    if champion and champion.get("worse_than_champion", 0) >= gates.evidence:
        mae, theirs = metrics["backtest_mae"], champion["backtest_mae"]
        worse = mae / theirs - 1 if theirs else float("inf")
        reasons.append(f"worse than the current champion refitted on the same weeks: mean absolute error "
                       f"{mae:.1f} vs {theirs:.1f} over {metrics['backtest_weeks']:.0f} unseen weeks ({worse:+.0%}; "
                       f"{champion['worse_than_champion']:.0%} sure it is beyond the {gates.champion_margin:+.0%} allowed)")
    if gates.max_rmse is not None and not metrics["rmse"] < gates.max_rmse:
        reasons.append(f"RMSE {metrics['rmse']:.1f} is not below the configured absolute limit {gates.max_rmse:g}")
    if gates.max_mape is not None and metrics.get("zero_weeks_in_holdout", 0) == 0 and not metrics["mape"] < gates.max_mape:
        reasons.append(f"MAPE {metrics['mape']:.0%} is not below the configured limit {gates.max_mape:.0%}")
    return reasons


def backtest_evidence(candidate: Backtest, naive: Backtest, gates: GateSettings) -> dict[str, float]:
    """What the rules read from a candidate's backtest, kept with its metrics (so the
    monitor re-applies the same rules to the version that serves)."""
    return {"backtest_weeks": float(len(candidate.actual)), "backtest_windows": float(len(candidate.window_weeks)),
            "backtest_mae": candidate.mae, "backtest_wape": candidate.wape,
            "backtest_relative_mae": candidate.mae / naive.mae if naive.mae > 0 else (0.0 if candidate.mae == 0 else math.inf),
            "worse_than_naive": evidence_worse(candidate, naive, gates.max_relative_mae)}


def champion_evidence(candidate: Backtest, champion: Backtest, gates: GateSettings) -> dict[str, float]:
    return {"backtest_mae": champion.mae,
            "worse_than_champion": evidence_worse(candidate, champion, 1 + gates.champion_margin)}


def best_fallback(options: dict[str, Backtest], gates: GateSettings, simplest: str,
                  refused: Backtest | None = None) -> tuple[str, str]:
    """What serves instead of a refused candidate, and why, in words that name the others'
    errors: of ``options`` the one with the lowest backtest mean absolute error, except that
    ``simplest`` (seasonal naive) wins only when the backtests are ``gates.evidence`` sure
    it beats the best of the others, or when it is the only one that does better than the
    ``refused`` candidate: the fitted fallbacks are then worse than a forecast refused for
    being clearly worse than naive, and serving one would replace a loser by a bigger loser."""
    # sorted is stable: on a tie the caller's first option (the champion: no alias move) stays first
    best = sorted((name for name in options if name != simplest), key=lambda name: options[name].mae)[0]
    chosen, weeks = best, len(options[best].actual)
    why = f"{options[best].label} has the lowest mean absolute error of the fallbacks on {weeks} backtest weeks"
    if simplest in options and options[simplest].mae < options[best].mae:
        sure = evidence_worse(options[best], options[simplest])
        if sure >= gates.evidence:
            chosen = simplest
            why = (f"{options[simplest].label} beats {options[best].label} on {weeks} backtest weeks "
                   f"({sure:.0%} sure)")
        elif refused is not None and options[simplest].mae < refused.mae <= options[best].mae:
            chosen = simplest
            why = (f"{options[simplest].label} is the only fallback that does better than the refused candidate "
                   f"on {weeks} backtest weeks (candidate {refused.mae:.1f})")
        else:
            why = (f"{options[best].label} has the lowest mean absolute error of the fitted fallbacks on {weeks} "
                   f"backtest weeks and {options[simplest].label}'s lower error is not clear ({sure:.0%} sure, "
                   f"{gates.evidence:.0%} needed)")
    if refused is not None and options[chosen].mae >= refused.mae:
        # Only a configured limit (WAPE, RMSE, MAPE, a naive ratio below 1) refuses a candidate that every
        # fallback does worse than.
        why += (f"; no fallback does better than the refused candidate's {refused.mae:.1f} on these weeks, "
                "and the limit it broke refuses it regardless")
    others = ", ".join(f"{options[name].label} {options[name].mae:.1f}"
                       for name in sorted(options, key=lambda name: options[name].mae) if name != chosen)
    return chosen, f"{why}: {options[chosen].label} {options[chosen].mae:.1f}" + (f" (vs {others})" if others else "")


REQUIRED = ("relative_mae", "wape", "mae", "rmse")


def metrics_from_tags(tags: dict[str, str]) -> dict | None:
    """A registered version's holdout metrics, from its ``metric.*`` tags; None for versions
    registered before these metrics existed."""
    from shared.version_tags import VersionTags

    metrics = VersionTags(tags).metrics
    return metrics if all(k in metrics for k in REQUIRED) else None
