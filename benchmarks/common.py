"""What every benchmark shares: the workloads' configurations, the machine they ran on, and result files.

The benchmarked configuration is the paper's straggler setting, scaled to n nodes: DivShare Ω = 0.1, J = 6,
and 7 of every 60 nodes communication stragglers at 1/5 of the bandwidth. ``synthetic`` is the embedded
task (no download); ``movielens`` (matrix factorisation, ml-latest-small) and ``cifar10`` (GN-LeNet) read
their data from a directory the user passes (never a hard-coded path).
"""

from __future__ import annotations

import csv
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax

from divjax.config import Config, NetworkConfig
from divjax.rundir import environment

WORKLOADS = ("synthetic", "movielens", "cifar10")
STRAGGLERS_PER_60 = 7


def stragglers_for(nodes: int) -> int:
    """The paper's 7 of 60 communication stragglers, scaled to ``nodes``."""
    return round(STRAGGLERS_PER_60 * nodes / 60)


def workload_config(workload: str, nodes: int, data_dir: str | None = None, **changes: Any) -> Config:
    """DivShare Ω = 0.1 with the paper's share of stragglers on ``workload`` at ``nodes`` nodes."""
    if workload not in WORKLOADS:
        raise ValueError(f"workload={workload!r} is not allowed: expected one of {', '.join(WORKLOADS)}")
    if workload != "synthetic" and data_dir is None:
        raise ValueError(f"workload={workload!r} needs its data directory (--data-dir)")
    base = Config() if workload == "synthetic" else Config.for_task(workload, data_dir)
    network = NetworkConfig(**{**vars(base.network), "stragglers": stragglers_for(nodes)})
    return base.replace(algorithm="divshare", omega=0.1, nodes=nodes, network=network, **changes)


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """Where, when and from which code a benchmark ran: versions, backend, devices, CPU, cores, date, commit."""
    return {**environment(), "cpu": cpu_model(), "cpu_cores": os.cpu_count(), "device_count": jax.device_count(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def best_seconds(fn: Callable[[], Any], repeats: int = 3) -> float:
    """The fastest of ``repeats`` wall-clock timings of ``fn()`` (blocking on its result).

    The minimum, not the mean: on a shared machine noise only ever adds time.
    """
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return min(times)


def write_results(stem: Path, rows: Sequence[dict[str, Any]], **meta: Any) -> None:
    """``stem.csv`` (one row per measurement) and ``stem.json`` (the machine, ``meta`` and the rows)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(stem.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    with open(stem.with_suffix(".json"), "w") as f:
        json.dump({"machine": machine(), **meta, "rows": list(rows)}, f, indent=2)
    print(f"wrote {stem.with_suffix('.csv')} and {stem.with_suffix('.json')}")
