"""Equity curve and drawdown, one PNG (matplotlib's Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: headless servers and CI have no display

import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from backtest.metrics import drawdown  # noqa: E402

MAX_POINTS = 5000  # plotted per curve; a year of minutes is 525,600


def _thin(times: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    step = max(1, len(times) // MAX_POINTS)
    return times[::step], values[::step]


def equity_png(
    path: str | Path,
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    initial: float,
    title: str = "Equity and drawdown",
) -> Path:
    """curves: name -> (times ms, equity).  Top: equity; bottom: drawdown in percent."""
    fig, (ax_eq, ax_dd) = plt.subplots(
        2, 1, figsize=(11, 7), sharex=True, gridspec_kw={"height_ratios": [3, 1.4]}
    )
    try:
        for name, (times, equity) in curves.items():
            t, e = _thin(np.asarray(times), np.asarray(equity, dtype=np.float64))
            x = np.asarray(t, dtype="datetime64[ms]")
            ax_eq.plot(x, e, label=name, linewidth=1.1)
            ax_dd.plot(x, -100.0 * drawdown(e, initial), linewidth=0.9, label=name)
        ax_eq.axhline(initial, color="grey", linewidth=0.6, linestyle="--")
        ax_eq.set_ylabel("equity (USDT)")
        ax_eq.set_title(title)
        ax_eq.legend(loc="best", fontsize=8)
        ax_eq.grid(alpha=0.3)
        ax_dd.set_ylabel("drawdown (%)")
        ax_dd.grid(alpha=0.3)
        ax_dd.xaxis.set_major_formatter(mdates.DateFormatter("%Y-%m-%d"))
        fig.autofmt_xdate()
        fig.tight_layout()
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=110)
    finally:
        plt.close(fig)
    return out
