"""The dashboard's PNG charts (matplotlib, as shared/plots.py): metric trends over an
ISBN's versions, and degradation ratios over time."""
from __future__ import annotations

from datetime import timedelta

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

from shared.plots import png_bytes  # noqa: E402
from shared.version_tags import VersionTags  # noqa: E402

TREND_METRICS = (("mase", "MASE"), ("wape", "WAPE"), ("relative_mae", "MAE / naive MAE"))
DRIFT_LINES = 10  # ISBNs drawn on the drift chart: those with the highest latest ratio


def version_trend(isbn: str, versions) -> bytes:
    """Holdout metrics per version (refreshes carry their model's metrics; baselines are
    marked), one panel per metric."""
    fig, axes = plt.subplots(1, len(TREND_METRICS), figsize=(10, 2.6), dpi=100)
    numbers = [int(v.version) for v in versions]
    for ax, (metric, title) in zip(axes, TREND_METRICS):
        values = [VersionTags(v.tags).metric(metric) for v in versions]
        points = [(n, y) for n, y in zip(numbers, values) if y is not None]
        if points:
            ax.plot(*zip(*points), marker="o", color="#1a56db", lw=1.2)
        for v, n, y in zip(versions, numbers, values):
            if y is not None and VersionTags(v.tags).is_quarantined:
                ax.plot(n, y, "x", color="#c2255c", ms=9, mew=2)
            elif y is not None and VersionTags(v.tags).is_baseline:
                ax.plot(n, y, "s", color="#e8590c", ms=6)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("version", fontsize=8)
        ax.set_xticks(numbers)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{isbn}: holdout metrics per version (× quarantined, ■ baseline)", fontsize=9)
    fig.tight_layout()
    return png_bytes(fig)


def drift(measurements: list[dict], limit: float) -> bytes:
    """Error on unseen weeks / holdout error over time, per ISBN, with the degradation limit."""
    fig, ax = plt.subplots(figsize=(10, 3.4), dpi=100)
    by_isbn: dict[str, list[dict]] = {}
    for m in measurements:
        by_isbn.setdefault(m["isbn"], []).append(m)
    worst = sorted(by_isbn, key=lambda i: by_isbn[i][-1]["ratio"], reverse=True)[:DRIFT_LINES]
    for isbn in worst:
        points = by_isbn[isbn]
        ax.plot([p["at"] for p in points], [min(p["ratio"], 10.0) for p in points], marker="o", ms=3, lw=1,
                label=isbn)
    ax.axhline(limit, color="#c2255c", ls="--", lw=1, label=f"degraded above {limit:.2f}")
    times = [m["at"] for m in measurements]
    if times:  # a week either side, so a first measurement is not lost on an axis of years
        ax.set_xlim(min(times) - timedelta(days=7), max(times) + timedelta(days=7))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%d %b %Y"))
    ax.set_ylabel("unseen MAE / holdout MAE")
    ax.grid(alpha=0.3)
    if by_isbn:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=7, frameon=False)
    else:
        ax.text(0.5, 0.5, "no measurements yet", transform=ax.transAxes, ha="center", color="#777")
    fig.tight_layout()
    return png_bytes(fig)
