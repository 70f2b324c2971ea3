"""Throughput of the engine against the two ways people simulate decentralized learning today, in one process.

For each workload (``synthetic``, ``movielens``: matrix factorisation, ``cifar10``: GN-LeNet) and node count n,
on the benchmarked configuration (DivShare Ω = 0.1, J = 6, 7/60 communication stragglers; see
``benchmarks/common.py``), three simulators do the same local training:

- **engine**: divjax, every node stacked and stepped under ``vmap``, the network a tensorised delay queue.
  Timed over whole iterations (local steps *and* their boundaries: snapshot, mixing, queueing, transfers),
  after compilation, without evaluation; the boundary's share of an iteration is reported apart, since
  mixing n whole models is memory-bound work that no baseline below does faster per node.
- **client-sequential loop**: one jitted single-node SGD step called node after node, each node on its own
  parameters and its own minibatches (the engine's plan), the way FedJAX and most FL simulators run
  clients. Local training only: it does no communication at all, so it flatters the loop.
- **event-driven reference** (:mod:`divjax.reference`): one Python object per node, a heap of timed events,
  numpy mixing and a jitted single-node step, as decentralizepy or gossipy simulate; it runs the same
  simulation as the engine (communication included). Run at small n only: it is slow by design.

Figures: node-steps per second (local SGD steps summed over nodes), simulated seconds per wall second, and
the engine's speed-up over each baseline (ratios within one process, so machine noise mostly cancels).
Run from the repository root::

    PYTHONPATH=. python benchmarks/throughput.py --movielens-dir DATA/movielens --cifar10-dir DATA/cifar10 \\
        [--workloads synthetic,movielens,cifar10] [--nodes cifar10=16,60] [--out benchmarks/results/throughput_cpu]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import optax

from benchmarks.common import WORKLOADS, best_seconds, workload_config, write_results
from divjax import engine, reference
from divjax.engine import Simulation
from divjax.state import SimState

# Node counts per workload. CPU defaults stop where one measurement would take many minutes on 2 cores;
# on an accelerator pass larger ones with --nodes (e.g. cifar10=60,1024,4096).
DEFAULT_NODES = {"synthetic": (16, 60, 256, 1024, 4096), "movielens": (16, 60, 256, 610), "cifar10": (16, 60)}
ITERATIONS = {"synthetic": 3, "movielens": 3, "cifar10": 1}  # timed per measurement (best of them is kept)
REFERENCE_MAX_NODES = 60  # the event-driven reference only up to here (seconds per node-step at larger n)
LOOP_CALLS = 4000  # single-node step calls the loop makes per measurement (enough for a stable rate)


def node_steps(sim: Simulation, state: SimState) -> int:
    """Local SGD steps taken so far, summed over nodes."""
    return int(jnp.sum(state.iteration) * sim.config.local_steps + jnp.sum(state.step_in_iter))


# ------------------------------------------------------------------------------------------ engine
def time_engine(sim: Simulation, iterations: int) -> dict[str, float]:
    """Node-steps per second of whole iterations of the compiled tick loop, and where their time goes.

    Each iteration is timed in two parts: its K-1 ticks of local steps (with the network advancing every
    tick) and the tick of the K-th step, where every node also reaches its boundary (snapshot, mixing,
    flush, queueing). The best of ``iterations`` of each part is kept (noise on a shared machine only adds).
    """
    state = engine.advance(sim, sim.initial_state(), 0)  # compiles the tick loop (the tick count is dynamic)
    jax.block_until_ready(state)
    k = sim.config.local_steps
    if int(sim.params.step_ticks.max()) != 1:
        raise ValueError("the benchmark times one local step per tick: use dt = step_time (the default)")
    steps_part, boundary_part = [], []
    for _ in range(iterations):
        for ticks, times in ((k - 1, steps_part), (1, boundary_part)):
            start = time.perf_counter()
            state = engine.advance(sim, state, ticks)
            jax.block_until_ready(state)
            times.append(time.perf_counter() - start)
    if node_steps(sim, state) != iterations * k * sim.config.nodes:
        raise AssertionError("the timed ticks did not make every node take exactly K steps per iteration")
    steps_s, boundary_s = min(steps_part), min(boundary_part)
    n = sim.config.nodes
    return {"engine_node_steps_per_s": n * k / (steps_s + boundary_s),
            "engine_sim_s_per_wall_s": k * sim.dt / (steps_s + boundary_s),
            "engine_training_node_steps_per_s": n * (k - 1) / steps_s,
            "engine_iteration_s": steps_s + boundary_s, "engine_boundary_s": boundary_s,
            "engine_boundary_share": boundary_s / (steps_s + boundary_s)}


# ------------------------------------------------------------------------------------------ loop
def _single_node_step(task: Any, lr: float):
    """A jitted SGD step of one node on minibatch ``h`` of its plan: the task's own plain-SGD step when it
    has one (the engine uses it too: MF's row-sparse update), else autodiff and optax, as the engine."""
    task_step = getattr(task, "sgd_step", None)
    optimizer = optax.sgd(lr)

    @jax.jit
    def step(params, opt_state, xs, ys, plan_idx, plan_mask, h):
        x, y, mask = xs[plan_idx[h]], ys[plan_idx[h]], plan_mask[h]
        if task_step is not None:
            return task_step(params, x, y, mask, lr)[0], opt_state
        grads = jax.grad(task.loss)(params, x, y, mask)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return step, optimizer


def time_loop(sim: Simulation) -> dict[str, float]:
    """Node-steps per second of the client-sequential loop: each node's steps, then the next node's."""
    n, cfg = sim.config.nodes, sim.config
    task = sim.spec.task
    if getattr(task, "conv", None) is not None:
        task = dataclasses.replace(task, conv="xla")  # one node's convolutions are fastest native
    step, optimizer = _single_node_step(task, cfg.lr)
    model = task.init_params(jax.random.key(0))
    params = [model] * n
    opt_states = [optimizer.init(model)] * n
    state = sim.initial_state()
    data = sim.params.data.train
    xs = [data.x[i] for i in range(n)]
    ys = [data.y[i] for i in range(n)]
    plan_idx = [state.batch_idx[i] for i in range(n)]
    plan_mask = [state.batch_mask[i] for i in range(n)]
    jax.block_until_ready(step(params[0], opt_states[0], xs[0], ys[0], plan_idx[0], plan_mask[0], 0))  # compile
    steps_per_node = max(1, min(cfg.local_steps, LOOP_CALLS // n))

    def sweep_clients():
        for i in range(n):
            for h in range(steps_per_node):
                params[i], opt_states[i] = step(params[i], opt_states[i], xs[i], ys[i], plan_idx[i], plan_mask[i], h)
        return params

    wall = best_seconds(sweep_clients, repeats=2)
    return {"loop_node_steps_per_s": n * steps_per_node / wall, "loop_wall_s": wall,
            "loop_node_steps": n * steps_per_node}


# ------------------------------------------------------------------------------------------ reference
def time_reference(sim: Simulation, iterations: int) -> dict[str, float]:
    """Node-steps per second of the event-driven reference over the same simulated time as the engine."""
    reference.Reference(sim).run(sim.config.step_time)  # compiles its jitted step and draws
    until = iterations * sim.config.local_steps * float(sim.step_times.max())
    ref = reference.Reference(sim)
    start = time.perf_counter()
    ref.run(until)
    wall = time.perf_counter() - start
    steps = sum(node.iteration * sim.config.local_steps + node.steps_done for node in ref.nodes)
    return {"reference_node_steps_per_s": steps / wall, "reference_sim_s_per_wall_s": until / wall,
            "reference_wall_s": wall, "reference_node_steps": steps}


# ------------------------------------------------------------------------------------------ main
def measure(workload: str, nodes: int, data_dirs: dict[str, str | None], iterations: int) -> dict[str, Any]:
    cfg = workload_config(workload, nodes, data_dirs.get(workload))
    sim = engine.build(cfg)
    row: dict[str, Any] = {"workload": workload, "nodes": nodes, "params_per_node": sim.spec.dim,
                           "stragglers": cfg.network.stragglers, "local_steps": cfg.local_steps,
                           "iterations": iterations, "conv": getattr(sim.spec.task, "conv", "")}
    row.update(time_engine(sim, iterations))
    row.update(time_loop(sim))
    row["speedup_over_loop"] = row["engine_node_steps_per_s"] / row["loop_node_steps_per_s"]
    row["training_speedup_over_loop"] = row["engine_training_node_steps_per_s"] / row["loop_node_steps_per_s"]
    if nodes <= REFERENCE_MAX_NODES:
        row.update(time_reference(sim, iterations))
        row["speedup_over_reference"] = row["engine_node_steps_per_s"] / row["reference_node_steps_per_s"]
    return row


def print_row(row: dict[str, Any]) -> None:
    ref = row.get("speedup_over_reference")
    print(f"{row['workload']:10s} n={row['nodes']:5d}  engine {row['engine_node_steps_per_s']:10,.0f} node-steps/s "
          f"({row['engine_sim_s_per_wall_s']:7.2f} sim s/s; boundary {row['engine_boundary_share']:4.0%})  "
          f"loop {row['loop_node_steps_per_s']:8,.0f}  x{row['speedup_over_loop']:5.1f} vs loop "
          f"(training alone x{row['training_speedup_over_loop']:5.1f})"
          + (f"  x{ref:6.1f} vs reference" if ref else ""), flush=True)


def copy_bandwidth_gb_s(megabytes: int = 256) -> float:
    """This machine's memory bandwidth as XLA sees it: bytes read + written per second by ``x * 2``.

    Mixing and snapshotting whole models are bound by it, not by FLOP/s."""
    x = jnp.ones(megabytes * 2**20 // 4, jnp.float32)
    double = jax.jit(lambda x: x * 2)
    double(x).block_until_ready()
    return 2 * x.nbytes / best_seconds(lambda: double(x), repeats=5) / 1e9


def parse_nodes(text: str | None) -> dict[str, tuple[int, ...]]:
    """``cifar10=16,60;synthetic=256`` -> per-workload node counts (defaults for the rest)."""
    nodes = dict(DEFAULT_NODES)
    for part in filter(None, (text or "").split(";")):
        name, _, counts = part.partition("=")
        if name not in WORKLOADS or not counts:
            raise SystemExit(f"--nodes {part!r}: expected WORKLOAD=N,N,... with WORKLOAD in {', '.join(WORKLOADS)}")
        nodes[name] = tuple(int(c) for c in counts.split(","))
    return nodes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default="synthetic,movielens,cifar10")
    parser.add_argument("--nodes", help="per-workload node counts, e.g. 'cifar10=16,60;synthetic=256,1024'")
    parser.add_argument("--iterations", type=int, help="iterations timed per measurement (default: "
                        + ", ".join(f"{w} {k}" for w, k in ITERATIONS.items()) + ")")
    parser.add_argument("--movielens-dir", help="MovieLens data directory (ml-latest-small)")
    parser.add_argument("--cifar10-dir", help="CIFAR-10 data directory")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/throughput_cpu"),
                        help="results stem: writes STEM.csv and STEM.json")
    args = parser.parse_args()
    workloads = args.workloads.split(",")
    nodes = parse_nodes(args.nodes)
    data_dirs = {"movielens": args.movielens_dir, "cifar10": args.cifar10_dir}
    for w in workloads:  # fail before any measurement, not after an hour
        workload_config(w, 16, data_dirs.get(w))
    bandwidth = copy_bandwidth_gb_s()
    print(f"memory bandwidth (jitted x*2): {bandwidth:.1f} GB/s", flush=True)
    rows = []
    for w in workloads:
        for n in nodes[w]:
            rows.append(measure(w, n, data_dirs, args.iterations or ITERATIONS[w]))
            print_row(rows[-1])
            write_results(args.out, rows, loop_calls=LOOP_CALLS,
                          copy_bandwidth_gb_s=bandwidth,
                          reference_max_nodes=REFERENCE_MAX_NODES)


if __name__ == "__main__":
    main()
