"""Seeds of the paper's CIFAR-10 run vmapped in one compiled program (``divjax.sweep``) against one run.

The issue's target: 8 seeds of the 60-node CIFAR-10 run in at most 3x the wall time of one, on a GPU. Both
are timed twice in the same process, the first time compiling, the second with everything compiled (the
ratio reported). The preset's evaluation (every node on the 10,000 test images every 10 iterations) is
included, as in a real run. Run from the repository root::

    PYTHONPATH=. python benchmarks/seeds.py --data-dir DATA/cifar10 [--seeds 8 --duration 40 --nodes 60]
        [--eval-nodes 6 --test-samples 2000]   # the README's CPU evaluation
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from benchmarks.common import machine
from divjax import engine, runner, sweep
from divjax.config import Config
from divjax.tasks.base import stacked_form


def wall_seconds(run) -> tuple[float, float]:
    """Wall seconds of ``run()`` the first time (compiling) and the second (compiled)."""
    times = []
    for _ in range(2):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return times[0], times[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="directory of the CIFAR-10 files")
    parser.add_argument("--nodes", type=int, default=60)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--duration", type=float, default=40.0, help="simulated seconds of each run")
    parser.add_argument("--eval-nodes", type=int, help="evaluate this many nodes (default: all, the preset)")
    parser.add_argument("--test-samples", type=int, help="on this many test images (default: all 10,000)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()
    config = Config.for_task("cifar10", args.data_dir, nodes=args.nodes, duration=args.duration)
    config = config.replace(task=dataclasses.replace(config.task, eval_nodes=args.eval_nodes,
                                                     test_samples=args.test_samples))
    one = engine.build(config)
    many = sweep.stack([engine.build(config.replace(seed=seed)) for seed in range(args.seeds)])
    one_first, one_s = wall_seconds(lambda: runner.simulate(one, progress=False))
    many_first, many_s = wall_seconds(lambda: sweep.simulate(many, progress=False))
    result = {"machine": machine(), "nodes": args.nodes, "seeds": args.seeds, "simulated_s": args.duration,
              "eval_nodes": args.eval_nodes, "test_samples": args.test_samples,
              "conv": one.spec.task.conv, "vmapped_conv": stacked_form(one.spec.task).conv, "one_run_s": one_s, "one_run_first_s": one_first,
              "vmapped_seeds_s": many_s, "vmapped_seeds_first_s": many_first,
              "vmapped_over_one": many_s / one_s, "target": "<= 3x"}
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
