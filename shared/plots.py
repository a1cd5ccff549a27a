"""PNG plots: history, holdout and forecast with the interval band, a marker where the data
ends, the legend below the axes (never over the data) and a subtitle saying when the model
was trained and how well it did."""
from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def forecast_figure(title: str, history_weeks, history_units, forecast_weeks, mean, lower, upper,
                    level: float = 0.95, actual=None, naive=None, history_tail: int = 104,
                    subtitle: str | None = None, data_end=None, data_end_label: str = "data end"):
    """``data_end``: the last week the model saw (default: the last history week); the
    holdout plot marks where training stopped instead."""
    fig, ax = plt.subplots(figsize=(10, 4.6), dpi=100)
    hw = pd.to_datetime(list(history_weeks))[-history_tail:]
    ax.plot(hw, list(history_units)[-history_tail:], color="#444", lw=1.2, label="weekly units")
    fw = pd.to_datetime(list(forecast_weeks))
    ax.fill_between(fw, lower, upper, color="#4c8bf5", alpha=0.25, label=f"{level:.0%} interval")
    ax.plot(fw, mean, color="#1a56db", lw=1.8, label="forecast")
    if actual is not None:
        ax.plot(fw, actual, color="#e8590c", lw=1.4, marker=".", label="holdout actual")
    if naive is not None:
        ax.plot(fw, naive, color="#999", lw=1, ls="--", label="seasonal naive")
    end = pd.Timestamp(data_end) if data_end is not None else (hw[-1] if len(hw) else None)
    if end is not None:
        ax.axvline(end, color="#c92a2a", lw=1, ls=":", label=f"{data_end_label} ({end:%Y-%m-%d})")
    fig.suptitle(title, fontsize=11)
    if subtitle:
        ax.set_title(subtitle, fontsize=9, color="#555")
    ax.set_ylabel("units")
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%b %Y"))
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), fontsize=8, ncol=6, frameon=False)
    fig.tight_layout()
    return fig


def metrics_subtitle(trained_at: str | None, metrics: dict, holdout_weeks: int | None = None) -> str:
    """'trained 2026-11-26 · MASE 0.40 · WAPE 22% · MAE 0.90× naive · 26-week holdout'."""
    parts = [f"trained {trained_at[:10]}"] if trained_at else []
    if "mase" in metrics:
        parts.append(f"MASE {metrics['mase']:.2f}")
    if "wape" in metrics:
        parts.append(f"WAPE {metrics['wape']:.0%}")
    if "relative_mae" in metrics:
        parts.append(f"MAE {metrics['relative_mae']:.2f}× naive")
    if holdout_weeks:
        parts.append(f"{holdout_weeks}-week holdout")
    return " · ".join(parts)


def png_bytes(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")  # keeps the legend below the axes in the image
    plt.close(fig)
    return buffer.getvalue()
