"""The plots of a reproduction experiment: metric against simulated time per method (one panel per setting),
and per-setting bars of time-to-accuracy and final accuracy (or final RMSE on MovieLens).

Seeds are aggregated: lines and bars are means over seeds, bands and error bars their minimum to maximum.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from divjax.rundir import write_atomic

# One colour per method in every plot (matplotlib's tab10 order).
COLOURS = {"divshare-0.1": "tab:blue", "divshare-0.5": "tab:cyan", "divshare-1": "tab:purple",
           "adpsgd": "tab:red", "swift": "tab:orange"}


def _figure(panels: int, height: float = 3.4):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = min(panels, 4)
    rows = math.ceil(panels / cols)
    fig = Figure(figsize=(4.2 * cols, height * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax in axes[panels:]:
        ax.set_visible(False)
    return fig, axes[:panels]


def _save(fig, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    write_atomic(path, buffer.getvalue())


def _ordered(values: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(values))


def _metric(task: str) -> tuple[str, str]:
    """(column, label) of the headline metric of a task: RMSE for MovieLens, accuracy otherwise."""
    if task == "movielens":
        return "mean_test_loss", "test RMSE (mean over nodes)"
    return "mean_accuracy", "test accuracy (mean over nodes)"


def curves(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Headline metric against simulated time: a panel per setting, a line per method (mean over seeds,
    band: min-max over seeds)."""
    column, ylabel = _metric(rows[0]["task"])
    settings = _ordered([r["setting"] for r in rows])
    fig, axes = _figure(len(settings))
    for ax, setting in zip(axes, settings):
        here = [r for r in rows if r["setting"] == setting]
        for method in _ordered([r["method"] for r in here]):
            mine = [r for r in here if r["method"] == method]
            seeds = _ordered([r["seed"] for r in mine])
            times = np.array(sorted({r["time"] for r in mine}))
            values = np.full((len(seeds), len(times)), np.nan)
            for r in mine:
                values[seeds.index(r["seed"]), np.searchsorted(times, r["time"])] = r[column]
            ax.plot(times, np.nanmean(values, 0), color=COLOURS[method], label=mine[0]["method_label"])
            if len(seeds) > 1:
                ax.fill_between(times, np.nanmin(values, 0), np.nanmax(values, 0), color=COLOURS[method], alpha=0.2)
        seeds = len({r["seed"] for r in here})
        title = setting + (f"\n({seeds} seeds: mean, band min-max)" if seeds > 1 else "")
        ax.set(title=title, xlabel="simulated time (s)", ylabel=ylabel)
        ax.grid(alpha=0.3)
    _legend(fig, axes)
    _save(fig, path)


def _legend(fig, axes, **kwargs) -> None:
    """One legend for the figure, with every method of every panel once."""
    entries: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    fig.legend(list(entries.values()), list(entries), loc="outside right upper", fontsize=8, **kwargs)


def bars(summaries: Sequence[dict[str, Any]], path: Path) -> None:
    """Per setting and method: time to the target accuracy (hatched, at the top: never reached) and the
    final accuracy; on MovieLens the final RMSE. Means over seeds, error bars min-max."""
    task = summaries[0]["task"]
    panels = [("final_mean_test_loss", "final test RMSE")] if task == "movielens" else [
        ("time_to_target_s", f"time to {summaries[0]['target_accuracy']:.0%} accuracy (simulated s)"),
        ("final_mean_accuracy", "final test accuracy")]
    settings = _ordered([s["setting"] for s in summaries])
    methods = _ordered([s["method"] for s in summaries])
    fig, axes = _figure(len(panels), height=3.8)
    fig.set_size_inches(max(6.0, 1.2 * len(settings) * len(methods) / 2.5) * len(panels), 3.8)
    width = 0.8 / len(methods)
    labels = {s["method"]: s["method_label"] for s in summaries}
    for ax, (column, ylabel) in zip(axes, panels):
        finite = [_value(s[column]) for s in summaries if math.isfinite(_value(s[column]))]
        ceiling = 1.1 * max(finite) if finite else 1.0
        for j, method in enumerate(methods):
            for i, setting in enumerate(settings):
                values = np.array([_value(s[column]) for s in summaries
                                   if s["method"] == method and s["setting"] == setting])
                if not values.size:
                    continue
                x = i + (j - (len(methods) - 1) / 2) * width
                label = labels[method]
                if not np.all(np.isfinite(values)):  # some seed never reached the target
                    ax.bar(x, ceiling, width, color="none", edgecolor=COLOURS[method], hatch="//", label=label)
                    continue
                mean = values.mean()
                ax.bar(x, mean, width, color=COLOURS[method], label=label,
                       yerr=[[mean - values.min()], [values.max() - mean]] if values.size > 1 else None)
        ax.set_xticks(range(len(settings)), settings, rotation=20, ha="right", fontsize=8)
        ax.set(ylabel=ylabel)
        ax.grid(alpha=0.3, axis="y")
    _legend(fig, axes, title="hatched: never\nreached" if task != "movielens" else None, title_fontsize=7)
    _save(fig, path)


def _value(value: Any) -> float:
    return math.inf if value is None else float(value)
