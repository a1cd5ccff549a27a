"""PNG plots: history, holdout and forecast with the interval band."""
from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def forecast_figure(title: str, history_weeks, history_units, forecast_weeks, mean, lower, upper,
                    level: float = 0.95, actual=None, naive=None, history_tail: int = 104):
    fig, ax = plt.subplots(figsize=(10, 4.2), dpi=100)
    hw = pd.to_datetime(list(history_weeks))[-history_tail:]
    ax.plot(hw, list(history_units)[-history_tail:], color="#444", lw=1.2, label="weekly units")
    fw = pd.to_datetime(list(forecast_weeks))
    ax.fill_between(fw, lower, upper, color="#4c8bf5", alpha=0.25, label=f"{level:.0%} interval")
    ax.plot(fw, mean, color="#1a56db", lw=1.8, label="forecast")
    if actual is not None:
        ax.plot(fw, actual, color="#e8590c", lw=1.4, marker=".", label="holdout actual")
    if naive is not None:
        ax.plot(fw, naive, color="#999", lw=1, ls="--", label="seasonal naive")
    ax.set_title(title, fontsize=11)
    ax.set_ylabel("units")
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%b %Y"))
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8, ncol=3)
    fig.tight_layout()
    return fig


def png_bytes(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()
