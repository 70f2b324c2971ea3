"""What a run leaves behind: a summary table, a run directory (config, tidy metrics, plot).

Files are written atomically (to a temporary name, then renamed), so a directory never holds a
half-written file that looks complete.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Sequence

from divjax.runner import RunResult


def _seconds(value: float) -> str:
    return "never" if math.isinf(value) else f"{value:.0f} s"


def summary_table(results: Sequence[RunResult]) -> str:
    """A fixed-width table, one row per run."""
    if not results:
        return "(no runs)"
    target = results[0].config.target_accuracy
    header = ("algorithm", "final acc", "final loss", f"time to {target:.0%}", "deliv. stragglers",
              "deliv. fast", "lost (capacity)", "wall", "node-steps/s")
    rows = []
    for r in results:
        s = r.summary()
        rows.append((s["algorithm"], f"{s['final_mean_accuracy']:.3f}", f"{s['final_mean_test_loss']:.3f}",
                     _seconds(s["time_to_target_s"]),
                     f"{s['delivery_ratio_stragglers']:.1%}" if not math.isnan(s["delivery_ratio_stragglers"]) else "-",
                     f"{s['delivery_ratio_fast']:.1%}", f"{s['messages_lost_to_capacity']:,}",
                     f"{s['wall_seconds']:.1f} s",
                     f"{s['node_steps_per_second']:,.0f}"))
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(row) for row in rows)])


def _json_number(value):
    """JSON has no inf or nan: write them as null."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def metrics_csv(results: Sequence[RunResult]) -> str:
    """Tidy CSV: one row per algorithm x evaluation time."""
    rows = [row for r in results for row in r.rows()]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def plot(results: Sequence[RunResult], path: Path) -> None:
    """Mean test accuracy across nodes (band: min to max) and consensus distance, against simulated time."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    acc_ax, cons_ax = fig.subplots(1, 2, width_ratios=(3, 2))
    for r in results:
        h = r.history
        line, = acc_ax.plot(h["time"], h["mean_accuracy"], label=r.config.algorithm)
        acc_ax.fill_between(h["time"], h["min_accuracy"], h["max_accuracy"], color=line.get_color(), alpha=0.15)
        later = h["time"] > 0  # at t = 0 every node holds the same model: distance 0
        cons_ax.plot(h["time"][later], h["consensus_distance"][later], color=line.get_color(),
                     label=r.config.algorithm)
    cfg = results[0].config
    acc_ax.axhline(cfg.target_accuracy, color="grey", ls=":", lw=1, label=f"target {cfg.target_accuracy:.0%}")
    acc_ax.set(xlabel="simulated time (s)", ylabel="test accuracy (mean; band: min-max over nodes)",
               title=f"{cfg.nodes} nodes, {_network_label(cfg)}")
    acc_ax.legend(loc="lower right")
    acc_ax.grid(alpha=0.3)
    cons_ax.set(xlabel="simulated time (s)", ylabel="consensus distance", yscale="log",
                title="(1/n) sum ||x_i - mean x||^2")
    cons_ax.grid(alpha=0.3)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    _write_atomic(path, buffer.getvalue())


def _network_label(cfg) -> str:
    net = cfg.network
    if net.preset == "stragglers" and net.stragglers:
        return f"{net.stragglers} stragglers x{net.slowdown:g} ({net.transport})"
    return f"{net.preset} network ({net.transport})"


def write_run_dir(results: Sequence[RunResult], out: str | os.PathLike) -> Path:
    """Write ``config.json``, ``metrics.csv``, ``summary.json`` and ``accuracy.png`` into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base = results[0].config.to_dict()
    config = {"algorithms": [r.config.algorithm for r in results], "config": base}
    _write_atomic(out / "config.json", (json.dumps(config, indent=2, sort_keys=True) + "\n").encode())
    _write_atomic(out / "metrics.csv", metrics_csv(results).encode())
    summary = [{k: _json_number(v) for k, v in r.summary().items()} for r in results]
    _write_atomic(out / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
    plot(results, out / "accuracy.png")
    return out
