"""Sweeps: configurations per hour vmapped in one compiled program (divjax.sweep) against run one after
another (divjax.runner.simulate), in the same process; the cost of the engine's conds under vmap; compile
times, first and from JAX's persistent compilation cache (in a fresh process). Run from the repository root::

    PYTHONPATH=. python benchmarks/sweep.py [--workloads small,tiny --seeds 4 --lrs 0.05,0.1] [--out FILE]

Every member of the sweep is checked against its own run (equal message counts, numbers to float32
rounding), and the largest differences are reported.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Iterator

import flax
import jax
import jaxlib
import numpy as np

import divjax
from divjax import batching, engine, runner, sweep
from divjax.config import Config, NetworkConfig, TaskConfig

CACHE_HITS = "/jax/compilation_cache/cache_hits"
WORKLOADS = {"small": (16, 32), "tiny": (6, 4)}  # nodes, hidden units of the synthetic MLP


def configs(workload: str, seeds: int, lrs: list[float], duration: float) -> list[Config]:
    """Seeds x learning rates on the synthetic task, 2 stragglers at 1/5 of 1.5 Mbit/s: one shape."""
    nodes, hidden = WORKLOADS[workload]
    network = NetworkConfig(stragglers=2, fast_mbps=1.5)
    return [Config(nodes=nodes, degree=4, duration=duration, eval_every=duration / 4, seed=seed, lr=lr,
                   network=network, task=TaskConfig(hidden=hidden)) for lr in lrs for seed in range(seeds)]


def use_persistent_cache(directory: str) -> None:
    """Cache every compiled program in ``directory`` (however short its compilation)."""
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def timed(run: Callable[[], list[divjax.RunResult]]) -> tuple[list[divjax.RunResult], dict[str, float]]:
    """Configurations per hour of ``run``: the first time (compiling everything it needs: tick loop,
    evaluation, stacking), and again with everything compiled; and the first compilation of its tick loop."""
    figures: dict[str, float] = {}
    for when in ("first", "compiled"):
        start = time.perf_counter()
        results = run()
        wall = time.perf_counter() - start
        figures[f"configs_per_hour_{when}"] = 3600 * len(results) / wall
        figures[f"wall_s_{when}"] = wall
        if when == "first":
            figures["tick_loop_compile_s"] = results[0].compile_seconds
    return results, figures


def largest_differences(members: list[divjax.RunResult], alone: list[divjax.RunResult]) -> dict[str, float]:
    """How far the sweep's members are from their own runs: message counts must be equal, numbers equal to
    float32 rounding (see divjax.sweep)."""
    models, metrics = 0.0, 0.0
    for m, a in zip(members, alone):
        for key in a.counters:
            np.testing.assert_array_equal(m.counters[key], a.counters[key], err_msg=key)
        for key in a.history:
            metrics = max(metrics, float(np.max(np.abs(m.history[key] - a.history[key]))))
        models = max(models, float(np.max(np.abs(np.asarray(engine.flatten_models(m.state.params))
                                                 - np.asarray(engine.flatten_models(a.state.params))))))
    if models > 1e-4 or metrics > 1e-3:
        raise AssertionError(f"sweep members differ from their own runs by {models:g} (models), {metrics:g} (metrics)")
    return {"models_max_abs": models, "metrics_max_abs": metrics}


def seconds_per_tick_alone(sims: list[engine.Simulation], ticks: int) -> float:
    """Tick loop only (compiled, no evaluation): all simulations one after another, per tick."""
    states = [engine.advance(sim, sim.initial_state(), 0) for sim in sims]
    jax.block_until_ready(states)
    start = time.perf_counter()
    states = [engine.advance(sim, state, ticks) for sim, state in zip(sims, states)]
    jax.block_until_ready(states)
    return (time.perf_counter() - start) / ticks


def seconds_per_tick_vmapped(sims: list[engine.Simulation], ticks: int) -> tuple[float, float]:
    """Tick loop only of the sweep, per tick of all members; and its compile time in this process."""
    stacked = sweep.stack(sims)
    start = time.perf_counter()
    states = jax.block_until_ready(sweep.advance(stacked, sweep.initial_states(stacked), 0))
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    jax.block_until_ready(sweep.advance(stacked, states, ticks))
    return (time.perf_counter() - start) / ticks, compile_s


@contextlib.contextmanager
def plain_conds() -> Iterator[None]:
    """The engine as if its conds took per-member predicates: under vmap each becomes a select that runs
    both branches at every tick (what a naive ``vmap`` of the tick loop gives)."""
    saved = batching.any_member, batching.all_members
    batching.any_member = batching.all_members = lambda pred: pred
    jax.clear_caches()
    try:
        yield
    finally:
        batching.any_member, batching.all_members = saved
        jax.clear_caches()


def compile_probe(cache_dir: str, workload: str, seeds: int, lrs: list[float], duration: float) -> dict[str, Any]:
    """Compile the single-run and the sweep tick loops (run in a fresh process, after the main one filled
    ``cache_dir``): seconds each, and how many programs came from the persistent cache."""
    use_persistent_cache(cache_dir)
    hits: list[str] = []
    jax.monitoring.register_event_listener(lambda event, **_: hits.append(event) if event == CACHE_HITS else None)
    sims = [engine.build(cfg) for cfg in configs(workload, seeds, lrs, duration)]
    state = sims[0].initial_state()
    start = time.perf_counter()
    jax.block_until_ready(engine.advance(sims[0], state, 0))
    single_s = time.perf_counter() - start
    start = time.perf_counter()
    jax.block_until_ready(engine.advance(sims[0], sims[0].initial_state(), 0))
    in_memory_s = time.perf_counter() - start
    stacked = sweep.stack(sims)
    states = sweep.initial_states(stacked)
    start = time.perf_counter()
    jax.block_until_ready(sweep.advance(stacked, states, 0))
    sweep_s = time.perf_counter() - start
    return {"single_run_s": single_s, "single_run_again_in_process_s": in_memory_s, "sweep_s": sweep_s,
            "persistent_cache_hits": len(hits)}


def machine() -> str:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{platform.machine()} CPU, {os.cpu_count()} cores ({jax.device_count()} {jax.default_backend()} "
            f"device); shared with other jobs: load average {load} at the start")


def measure(sims: list[engine.Simulation], ticks: int, with_plain_conds: bool) -> dict[str, Any]:
    """Configurations per hour and tick-loop times of one workload, vmapped and one after another."""
    alone, alone_figures = timed(lambda: [runner.simulate(sim, progress=False) for sim in sims])
    members, sweep_figures = timed(lambda: sweep.simulate(sweep.stack(sims), progress=False))
    differences = largest_differences(members, alone)
    tick_alone = seconds_per_tick_alone(sims, ticks)
    tick_sweep, _ = seconds_per_tick_vmapped(sims, ticks)
    ticks_ms = {"one_after_another": 1e3 * tick_alone, "vmapped": 1e3 * tick_sweep,
                "vmapped_speedup": tick_alone / tick_sweep}
    compile_s = {"single_run_first": alone_figures.pop("tick_loop_compile_s"),
                 "sweep_first": sweep_figures.pop("tick_loop_compile_s")}
    if with_plain_conds:
        with plain_conds():
            tick_plain, compile_s["sweep_with_plain_conds_first"] = seconds_per_tick_vmapped(sims, ticks // 4)
        ticks_ms.update(vmapped_with_plain_conds=1e3 * tick_plain, plain_conds_slowdown=tick_plain / tick_sweep)
    cfg = sims[0].config
    return {
        "workload": {"configurations": len(sims), "nodes": cfg.nodes, "model_parameters": sims[0].spec.dim,
                     "simulated_s": cfg.duration, "ticks": engine.ticks_for(cfg.duration, sims[0].dt),
                     "evaluations": len(alone[0].history["time"])},
        "one_after_another": alone_figures,
        "vmapped_sweep": sweep_figures,
        "vmapped_over_one_after_another": {
            f"configs_per_hour_{when}": sweep_figures[f"configs_per_hour_{when}"]
            / alone_figures[f"configs_per_hour_{when}"] for when in ("first", "compiled")},
        "tick_loop_ms_per_tick_of_all_configurations": ticks_ms,
        "compile_s": compile_s,
        "members_minus_their_own_runs": differences,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default="small,tiny", help=f"comma-separated, of {', '.join(WORKLOADS)}")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--lrs", default="0.05,0.1", help="comma-separated learning rates")
    parser.add_argument("--duration", type=float, default=40.0, help="simulated seconds per configuration")
    parser.add_argument("--ticks", type=int, default=320, help="ticks timed in the tick-loop comparison")
    parser.add_argument("--out", help="write the figures as JSON here")
    parser.add_argument("--probe", help=argparse.SUPPRESS)  # internal: the fresh-process compile probe
    args = parser.parse_args()
    lrs = [float(x) for x in args.lrs.split(",")]
    workloads = args.workloads.split(",")
    unknown = [w for w in workloads if w not in WORKLOADS]
    if unknown:
        parser.error(f"--workloads {','.join(unknown)} is not allowed: expected some of {', '.join(WORKLOADS)}")
    if args.probe:
        print(json.dumps(compile_probe(args.probe, workloads[0], args.seeds, lrs, args.duration)))
        return

    started = machine()
    cache_dir = tempfile.mkdtemp(prefix="divjax-jax-cache-")
    use_persistent_cache(cache_dir)  # empty: the compilations below are first ones, and fill it
    figures = {}
    for i, workload in enumerate(workloads):  # the first one also measures plain conds
        sims = [engine.build(cfg) for cfg in configs(workload, args.seeds, lrs, args.duration)]
        figures[workload] = measure(sims, args.ticks, with_plain_conds=i == 0)
    probe_args = ["--probe", cache_dir, "--workloads", workloads[0], "--seeds", str(args.seeds), "--lrs", args.lrs,
                  "--duration", str(args.duration)]
    probe = json.loads(subprocess.run([sys.executable, __file__, *probe_args], check=True, capture_output=True,
                                      text=True, env={**os.environ, "PYTHONPATH": os.getcwd()}).stdout)
    result = {
        "machine": started, "date": time.strftime("%Y-%m-%d"), "python": platform.python_version(),
        "jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__,
        "divjax": divjax.__version__, "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "sweep": {"seeds": args.seeds, "lrs": lrs},
        **figures,
        f"compile_s_{workloads[0]}_fresh_process_persistent_cache": probe,
        "note": "the machine was loaded by other jobs while this ran: timings are noisy (up to 2x)",
    }
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
