"""What a run leaves behind: a summary table, a run directory (config, tidy metrics, plot).

Files are written atomically (to a temporary name, then renamed), so a directory never holds a
half-written file that looks complete.
"""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from divjax.config import Config
from divjax.rundir import RunDirectory, write_atomic
from divjax.runner import RunResult


def _seconds(value: float) -> str:
    return "never" if not math.isfinite(value) else f"{value:.0f} s"


def summary_table(summaries: Sequence[dict[str, Any]]) -> str:
    """A fixed-width table, one row per run summary (:meth:`RunResult.summary`)."""
    if not summaries:
        return "(no runs)"
    target = summaries[0]["target_accuracy"]
    header = ("algorithm", "final acc", "final loss", f"time to {target:.0%}", "deliv. stragglers",
              "deliv. fast", "lost (capacity)", "wall", "node-steps/s")
    rows = []
    for s in summaries:
        s = {k: (float("nan") if v is None else v) for k, v in s.items()}
        rows.append((s["algorithm"], f"{s['final_mean_accuracy']:.3f}", f"{s['final_mean_test_loss']:.3f}",
                     _seconds(s["time_to_target_s"]),
                     f"{s['delivery_ratio_stragglers']:.1%}" if not math.isnan(s["delivery_ratio_stragglers"]) else "-",
                     f"{s['delivery_ratio_fast']:.1%}", f"{s['messages_lost_to_capacity']:,}",
                     f"{s['wall_seconds']:.1f} s",
                     f"{s['node_steps_per_second']:,.0f}"))
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(row) for row in rows)])


def plot(histories: Sequence[tuple[str, dict[str, np.ndarray]]], config: Config, path: Path) -> None:
    """Mean test accuracy across nodes (band: min to max) and consensus distance, against simulated time,
    one line per (algorithm, history)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    acc_ax, cons_ax = fig.subplots(1, 2, width_ratios=(3, 2))
    for algorithm, h in histories:
        line, = acc_ax.plot(h["time"], h["mean_accuracy"], label=algorithm)
        acc_ax.fill_between(h["time"], h["min_accuracy"], h["max_accuracy"], color=line.get_color(), alpha=0.15)
        later = h["time"] > 0  # at t = 0 every node holds the same model: distance 0
        cons_ax.plot(h["time"][later], h["consensus_distance"][later], color=line.get_color(), label=algorithm)
    acc_ax.axhline(config.target_accuracy, color="grey", ls=":", lw=1, label=f"target {config.target_accuracy:.0%}")
    acc_ax.set(xlabel="simulated time (s)", ylabel="test accuracy (mean; band: min-max over nodes)",
               title=f"{config.nodes} nodes, {config.task.name}, {_network_label(config)}")
    acc_ax.legend(loc="lower right")
    acc_ax.grid(alpha=0.3)
    cons_ax.set(xlabel="simulated time (s)", ylabel="consensus distance", yscale="log",
                title="(1/n) sum ||x_i - mean x||^2")
    cons_ax.grid(alpha=0.3)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    write_atomic(path, buffer.getvalue())


def _network_label(cfg: Config) -> str:
    net = cfg.network
    if net.preset == "stragglers" and net.stragglers:
        return f"{net.stragglers} stragglers x{net.slowdown:g} ({net.transport})"
    return f"{net.preset} network ({net.transport})"


def finalize(run: RunDirectory) -> None:
    """Once every algorithm has finished: ``summary.json`` and ``accuracy.png``; the run is complete."""
    summaries = [run.status["summaries"][c.algorithm] for c in run.configs]
    write_atomic(run.path / "summary.json", (json.dumps(summaries, indent=2) + "\n").encode())
    plot(run.histories(), run.configs[0], run.path / "accuracy.png")
    run.mark_complete()


def write_run_dir(results: Sequence[RunResult], out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write the run directory of finished runs (``config.json``, ``metrics.csv``, ``summary.json``,
    ``accuracy.png``, ``status.json``) into ``out``: one configuration, one run per algorithm, as
    ``divjax run`` writes. Results that differ in anything else (seeds, say) are refused: the directory
    records one configuration and keys its rows by algorithm; write each configuration to its own."""
    run = RunDirectory.create(out, [r.config for r in results], overwrite=overwrite)
    for r in results:
        run.save_progress(r.config.algorithm, r.entries(), None)
        run.finish_algorithm(r.config.algorithm, r.summary())
    finalize(run)
    return run.path
