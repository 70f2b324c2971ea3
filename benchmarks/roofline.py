"""Roofline and profile of GN-LeNet on CIFAR-10: how close local training gets to the machine's matmul
peak, and where the wall time of a DivShare run goes.

The workload is :func:`benchmarks.common.workload_config` ("cifar10"): DivShare Ω = 0.1, 128 local steps of
batch 8, J = 6, 7 of every 60 nodes communication stragglers. In one process it measures

1. the fp32 matmul peak (jitted ``a @ b``, square sizes, 2n³ flops);
2. the flops of one node-step (batch-8 forward + backward + SGD) from XLA's ``cost_analysis`` of the
   single-node jitted step, and the node-steps/s, hence GFLOP/s and % of peak, of the engine's local steps
   (vmapped, as sweeps run them; node by node from the host, as ``engine.advance`` runs them on CPU; and
   inside ``engine.advance``) and of a client-sequential loop of that single step;
3. the wall time of one iteration (128 ticks, the last with every node's boundary) split into the
   engine's phases, each timed alone (the local steps, ``_network``, ``_snapshot``, ``_mix_and_send``),
   checked against ``engine.advance`` over the same ticks; and evaluation as
   ``divjax run`` does it (``metrics.evaluate``), amortised over the iterations between evaluations, at
   the README's CPU setting (6 nodes on 2,000 images every 10 iterations) and, extrapolated from it per
   model and test batch, at the preset (all nodes on all 10,000 test images);
4. prototypes of other stacked local steps (no masked select; nodes in groups; one native convolution per
   node unrolled in one jit) against the engine's, to say why the engine is not faster than the loop.

Writes ``benchmarks/results/roofline_<backend>.{json,csv}`` and ``profile_<backend>.{md,png}``. Run from
the repository root (about 20 minutes on 2 shared CPU cores at n = 60)::

    PYTHONPATH=. python benchmarks/roofline.py --data-dir ../shared/data/cifar10 [--nodes 60] [--repeats 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.common import best_seconds, machine, workload_config, write_results
from divjax import engine, metrics
from divjax.config import Config
from divjax.engine import Simulation
from divjax.state import SimState
from divjax.tasks import Cifar10Task
from divjax.tasks.cifar10 import TEST_BATCH
from divjax.tasks.gn_lenet import CHANNELS, KERNEL

RESULTS = Path(__file__).parent / "results"
MATMUL_SIZES = (512, 1024, 2048, 4096)
WINDOW = 8  # ticks per timed engine.advance window (an iteration of 128 ticks: 15 step-only windows + 1)
PROTOTYPE_GROUP = 4  # nodes per vmapped group in the grouped-im2col prototype
UNROLLED_NODES = 12  # nodes of the per-node native-conv prototypes (unrolled, compile time grows with them)
LOOPED_STEPS = 4  # steps per call of the prototype that runs them in a fori_loop
README_EVAL = (6, 2000)  # eval nodes, test images: the README's advice for CPU runs

Tree = Any


# ------------------------------------------------------------------------------------------ peak


def matmul_piece(size: int) -> Callable[[], jax.Array]:
    """A jitted fp32 ``a @ b`` of two ``size``-square matrices (2 size³ flops), compiled."""
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (size, size), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    jax.block_until_ready(matmul(a, b))
    return lambda: matmul(a, b)


# ------------------------------------------------------------------------------------------ one node-step


def cost_flops(compiled: Any) -> float:
    """The 'flops' of a compiled function's ``cost_analysis`` (a dict, or a list of one per module)."""
    cost = compiled.cost_analysis()
    return float(sum(c.get("flops", 0.0) for c in (cost if isinstance(cost, list) else [cost])))


def sgd_step(task: Cifar10Task, lr: float) -> Callable:
    """One plain-SGD step of one node (what ``engine._local_step`` does per node, unmasked)."""
    optimizer = optax.sgd(lr)

    def step(params: Tree, opt_state: Tree, x: jax.Array, y: jax.Array) -> tuple[Tree, Tree]:
        grads = jax.grad(task.loss)(params, x, y, jnp.ones(y.shape[0], bool))
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return step


def node_batches(sim: Simulation) -> tuple[jax.Array, jax.Array]:
    """Every node's first minibatch of its own shard: ``[n, B, 32, 32, 3]`` images and ``[n, B]`` labels."""
    b = sim.config.batch_size
    return sim.params.data.train.x[:, :b], sim.params.data.train.y[:, :b]


def step_flops(task: Cifar10Task, lr: float, x: jax.Array, y: jax.Array) -> float:
    """XLA's flop count of one jitted single-node step on batch ``x, y``."""
    params = task.init_params(jax.random.key(0))
    compiled = jax.jit(sgd_step(task, lr)).lower(params, optax.sgd(lr).init(params), x, y).compile()
    return cost_flops(compiled)


# ------------------------------------------------------------------------------------------ timing

Timed = Callable[[], Any]  # one call of a timed piece, its inputs prepared beforehand


def round_robin(pieces: dict[str, Timed], repeats: int) -> dict[str, float]:
    """Best seconds of each piece, timing the pieces in turn ``repeats`` times.

    On a shared machine the load drifts; taking turns exposes every piece to the same drift, so the ratios
    between pieces (what this benchmark reports) hold better than if each were timed in its own block.
    """
    best = dict.fromkeys(pieces, math.inf)
    for _ in range(repeats):
        for name, fn in pieces.items():
            best[name] = min(best[name], best_seconds(fn, 1))
    return best


def copies(state: Tree, count: int) -> list[Tree]:
    """``count`` fresh copies of ``state`` (timed functions donate, and so consume, their inputs)."""
    return [jax.tree.map(jnp.copy, state) for _ in range(count)]


def chained(fn: Callable[[Tree], Tree], state: Tree) -> Timed:
    """A piece that feeds ``fn`` its own last output (``fn`` donates it), warmed up (compiled) once."""
    held = [jax.block_until_ready(fn(copies(state, 1)[0]))]

    def call() -> Tree:
        held[0] = fn(held[0])
        return held[0]

    return call


def from_copies(fn: Callable[[Tree], Tree], state: Tree, count: int) -> Timed:
    """A piece that runs ``fn`` on a fresh copy of ``state`` each call (at most ``count`` calls)."""
    fresh = copies(state, count)
    return lambda: fn(fresh.pop())


# ------------------------------------------------------------------------------------------ engine


def phase_pieces(sim: Simulation, state: SimState) -> dict[str, Timed]:
    """Each phase of a tick jitted alone, state donated as in the tick loop, every node active. The local
    steps are timed in both forms: vmapped (``_local_step``: im2col, what sweeps run) and node by node
    from the host (what ``engine.advance`` runs on CPU, ``host_steps``).

    ``state`` should have messages in flight (after a first boundary) so the network phase does real work.
    """
    spec, p = sim.spec, sim.params
    everyone = jnp.ones(spec.nodes, bool)
    now = state.tick.astype(jnp.float32) + 1.0
    jit = lambda f: jax.jit(f, static_argnums=(0,), donate_argnums=(2,))
    local, network = jit(engine._local_step), jit(engine._network)
    snapshot, mix = jit(engine._snapshot), jit(engine._mix_and_send)
    nodes = np.arange(spec.nodes, dtype=np.int32)
    return {
        "local_step": chained(lambda s: local(spec, p, s, everyone), state),
        "host_steps": chained(lambda s: engine._steps_from_host(spec, p, s, nodes), state),
        "network": chained(lambda s: network(spec, p, s, now - 1.0, now), state),
        "snapshot": chained(lambda s: snapshot(spec, p, s, everyone, now), state),
        "mix_and_send": chained(lambda s: mix(spec, p, s, everyone, now), state),
    }


def before_boundary(state: SimState, ticks_left: int, local_steps: int) -> SimState:
    """``state`` moved to ``ticks_left`` ticks before every node's boundary (params and queue kept):
    the window that holds a boundary can then be timed without simulating the whole iteration first."""
    tick = state.tick + (local_steps - ticks_left)
    n = state.step_in_iter.shape[0]
    return state.replace(tick=tick, next_step_tick=jnp.full(n, tick + 1),
                         step_in_iter=jnp.full(n, local_steps - ticks_left, jnp.int32))


def window_pieces(sim: Simulation, state: SimState, repeats: int) -> dict[str, Timed]:
    """``engine.advance`` over WINDOW step-only ticks, and over the WINDOW ticks that end at the boundary."""
    k = sim.config.local_steps
    advance = lambda s: engine.advance(sim, s, WINDOW)
    return {"window_steps": from_copies(advance, state, repeats),
            "window_boundary": from_copies(advance, before_boundary(state, WINDOW, k), repeats)}


# ------------------------------------------------------------------------------------------ local training


def loop_piece(sim: Simulation, conv: str) -> Timed:
    """One round of a client-sequential loop: the jitted single-node step, node after node."""
    task = Cifar10Task(conv=conv)
    step = jax.jit(sgd_step(task, sim.config.lr))
    n = sim.config.nodes
    xs, ys = node_batches(sim)
    batches = [(xs[i], ys[i]) for i in range(n)]
    params = [task.init_params(jax.random.key(0)) for _ in range(n)]
    states = [optax.sgd(sim.config.lr).init(p) for p in params]
    jax.block_until_ready(step(params[0], states[0], *batches[0]))  # compile

    def one_round() -> list[Tree]:
        for i in range(n):
            params[i], states[i] = step(params[i], states[i], *batches[i])
        return params

    return one_round


def stacked_step(task: Cifar10Task, lr: float, group: int, select: bool, form: str) -> Callable:
    """A stacked local step of every node, jitted. ``form``: ``unrolled`` vmaps nodes ``group`` at a time
    (static slices: no loop body around the convolutions); ``map`` steps one node at a time in a
    ``lax.map`` (convolutions in a loop body); ``fori`` runs LOOPED_STEPS unrolled-form steps in a
    ``fori_loop``, as the tick loop does. ``select`` adds the engine's masked select."""
    step, single = jax.vmap(sgd_step(task, lr)), sgd_step(task, lr)

    def once(params: Tree, opt_state: Tree, x: jax.Array, y: jax.Array, stepping: jax.Array) -> Tree:
        if form == "map":
            new = jax.lax.map(lambda a: single(*a), (params, opt_state, x, y))
        else:
            parts = []
            for lo in range(0, y.shape[0], group):
                sl = lambda a: a[lo:lo + group]  # noqa: B023
                parts.append(step(jax.tree.map(sl, params), jax.tree.map(sl, opt_state), sl(x), sl(y)))
            new = jax.tree.map(lambda *a: jnp.concatenate(a), *parts)
        if select:  # as engine._local_step: nodes not stepping keep their params
            pick = lambda a, b: jnp.where(stepping.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)
            new = jax.tree.map(pick, new, (params, opt_state))
        return new

    def run(params: Tree, opt_state: Tree, x: jax.Array, y: jax.Array, stepping: jax.Array) -> Tree:
        if form == "fori":
            return jax.lax.fori_loop(0, LOOPED_STEPS, lambda _, s: once(*s, x, y, stepping), (params, opt_state))
        return once(params, opt_state, x, y, stepping)

    return jax.jit(run, donate_argnums=(0, 1))


def prototype_piece(sim: Simulation, conv: str, group: int, select: bool, form: str, n: int) -> tuple[Timed, float]:
    """(piece, compile seconds) of :func:`stacked_step` for nodes ``0 .. n-1``, all stepping."""
    task = Cifar10Task(conv=conv)
    lr = sim.config.lr
    params = jax.tree.map(lambda a: jnp.broadcast_to(a, (n,) + a.shape), task.init_params(jax.random.key(0)))
    opt_state = jax.vmap(optax.sgd(lr).init)(params)
    xs, ys = (a[:n] for a in node_batches(sim))
    everyone = jnp.ones(n, bool)
    start = time.perf_counter()
    compiled = stacked_step(task, lr, group, select, form).lower(params, opt_state, xs, ys, everyone).compile()
    compile_s = time.perf_counter() - start
    return chained(lambda s: compiled(*s, xs, ys, everyone), (params, opt_state)), compile_s


PROTOTYPES = {  # name: (conv, nodes per vmapped group (None: all), masked select, form, nodes (None: all))
    "vmap im2col, all nodes, no select": ("im2col", None, False, "unrolled", None),
    f"vmap im2col, all nodes, masked select, {LOOPED_STEPS} steps in a fori_loop (per step)":
        ("im2col", None, True, "fori", None),
    f"vmap im2col in groups of {PROTOTYPE_GROUP}, masked select": ("im2col", PROTOTYPE_GROUP, True, "unrolled", None),
    f"native conv, one node at a time unrolled in one jit, masked select ({UNROLLED_NODES} nodes)":
        ("xla", 1, True, "unrolled", UNROLLED_NODES),
    f"native conv, lax.map over nodes, masked select ({UNROLLED_NODES} nodes)": ("xla", None, True, "map", UNROLLED_NODES),
}


# ------------------------------------------------------------------------------------------ evaluation


def with_test_images(sim: Simulation, count: int) -> Simulation:
    """``sim`` scoring on its first ``count`` test images only (as ``--test-samples count``)."""
    test = sim.params.data.test
    small = dataclasses.replace(test, x=test.x[:, :count], y=test.y[:, :count],
                                sizes=jnp.minimum(test.sizes, count))
    data = dataclasses.replace(sim.params.data, test=small)
    return dataclasses.replace(sim, params=sim.params.replace(data=data))


def evaluation_piece(sim: Simulation, state: SimState, nodes: int) -> Timed:
    """One evaluation as the runner does it (``metrics.evaluate``), scoring ``nodes`` nodes and the average
    model (one model at a time, with native convolutions)."""
    spec = sim.spec
    chosen = jnp.asarray(engine._eval_nodes(sim.config.nodes, nodes))
    compiled = jax.jit(metrics.evaluate, static_argnums=(0,)).lower(spec, sim.params, state, chosen).compile()
    return lambda: compiled(sim.params, state, chosen)


# ------------------------------------------------------------------------------------------ report


def percent(part: float, whole: float) -> float:
    return 100.0 * part / whole


def breakdown(phases: dict[str, float], iteration_s: float, eval_s: float, eval_every: int,
              local_steps: int) -> dict[str, float]:
    """Seconds per iteration by phase, evaluation amortised over ``eval_every`` iterations.

    The network and the boundary (snapshot, mix, send) are their phases timed alone; local training is the
    rest of the measured ``engine.advance`` iteration, so the parts add up by construction (the tick loop's
    own overhead, a ``cond`` and a loop step per tick, counts as training: it is small next to a step).
    """
    parts = {"network_queue": local_steps * phases["network"],
             "snapshot_mix_send": phases["snapshot"] + phases["mix_and_send"]}
    parts = {"local_training": iteration_s - sum(parts.values()), **parts, "evaluation": eval_s / eval_every}
    total = sum(parts.values())
    return {**{f"{k}_s": v for k, v in parts.items()}, "total_s": total,
            **{f"{k}_share": v / total for k, v in parts.items()},
            "non_training_share": 1.0 - parts["local_training"] / total}


def markdown(r: dict[str, Any]) -> str:
    """The human-readable profile (``profile_<backend>.md``), from the measurements in ``r``."""
    m, lines = r["machine"], []
    add = lines.append
    add(f"# Where the time goes: GN-LeNet on CIFAR-10, DivShare Ω = 0.1, n = {r['nodes']}, "
        f"{r['stragglers']} stragglers\n")
    add(f"Machine: {m['cpu']}, {m['cpu_cores']} cores, {m['device_count']} {m['backend']} device(s), "
        f"jax {m['jax']}; {m['date']}. Written by `benchmarks/roofline.py` (best of {r['repeats']}; the CPU "
        "is shared, so read ratios, not absolute times).\n")
    add("## Roofline\n")
    add(f"- fp32 matmul peak (jitted `a @ b`, best of sizes {', '.join(map(str, MATMUL_SIZES))}): "
        f"**{r['peak_gflops']:.1f} GFLOP/s**")
    add(f"- one node-step (batch {r['batch_size']} forward + backward + SGD), XLA `cost_analysis`: "
        f"**{r['flops_per_node_step'] / 1e9:.3f} GFLOP** (native conv; the im2col step counts "
        f"{r['flops_per_node_step_im2col'] / 1e9:.3f})\n")
    add("| local training | node-steps/s | GFLOP/s | % of peak |")
    add("|---|---:|---:|---:|")
    for name, key in (("engine `_local_step` (vmapped, im2col: sweeps), jitted alone", "engine_step"),
                      ("engine, node by node from the host (one tick's calls and their write-back), alone",
                       "engine_host_steps"),
                      ("engine inside `engine.advance` (step-only ticks, network included)", "engine_advance"),
                      ("client-sequential loop, native conv", "loop_xla"),
                      ("client-sequential loop, im2col", "loop_im2col")):
        add(f"| {name} | {r[key + '_node_steps_per_s']:.1f} | {r[key + '_gflops']:.1f} | "
            f"{r[key + '_percent_of_peak']:.1f} % |")
    met = lambda ok: "met" if ok else "not met"
    driver = "node by node from the host" if r["host_steps"] else "vmapped"
    add(f"\n`engine.advance` takes the local steps {driver} (task conv `{r['engine_conv']}`). Engine / loop "
        f"(native conv), node-steps/s: **{r['engine_advance_over_loop']:.2f}×** inside `engine.advance`, "
        f"{r['engine_over_loop']:.2f}× for the vmapped step alone: target "
        f"\"not slower\" {met(r['engine_advance_over_loop'] >= 1.0)}. Target ≥ 30 % of peak on CPU: "
        f"{met(r['engine_advance_percent_of_peak'] >= 30.0)} by the engine.\n")
    add(f"## One iteration ({r['local_steps']} ticks, boundary included)\n")
    add(f"`engine.advance` over one iteration: **{r['iteration_s']:.1f} s**, as {r['local_steps'] // WINDOW - 1} "
        f"step-only windows of {WINDOW} ticks ({r['window_steps_s']:.2f} s each) + the window that ends at every "
        f"node's boundary ({r['window_boundary_s']:.2f} s), messages in flight, timed in turn with the phases "
        f"below. The phases timed alone (local steps as `engine.advance` takes them) add up to "
        f"{r['phases_sum_s']:.1f} s: **{percent(r['phases_sum_s'], r['iteration_s']):.0f} %** of the iteration; "
        f"a tick's local steps take {r['phase_' + ('host_steps' if r['host_steps'] else 'local_step') + '_s']:.3f} s "
        f"alone and {r['window_steps_s'] / WINDOW - r['phase_network_s']:.3f} s per tick inside "
        "`engine.advance` (window per tick less the network phase).\n")
    add("| phase, jitted alone | seconds per call | calls per iteration |")
    add("|---|---:|---:|")
    for name, calls in (("local_step", r["local_steps"]), ("host_steps", r["local_steps"]), ("network", r["local_steps"]),
                        ("snapshot", 1), ("mix_and_send", 1)):
        add(f"| `{name}` | {r['phase_' + name + '_s']:.4f} | {calls} |")
    every = f"every {r['eval_every_iterations']} iterations"
    for label, key in ((f"preset: every node on all 10,000 test images {every}", "preset"),
                       (f"README CPU setting: {README_EVAL[0]} nodes on {README_EVAL[1]:,} images {every}", "readme")):
        b = r["breakdown_" + key]
        add(f"\n### Wall time per iteration, {label}\n")
        add(f"One evaluation: {r['eval_' + key + '_s']:.1f} s ({r['eval_' + key + '_images_per_s']:.0f} "
            "model-images/s)" + (", extrapolated from the README setting's cost per model and test batch"
                                 if key == "preset" else "") + ".\n")
        add("| where | seconds | share |")
        add("|---|---:|---:|")
        for part in ("local_training", "network_queue", "snapshot_mix_send", "evaluation"):
            add(f"| {part.replace('_', ' ')} | {b[part + '_s']:.2f} | {100 * b[part + '_share']:.1f} % |")
        add(f"| **total** | {b['total_s']:.2f} | 100 % |")
        add(f"\nNon-training share (1 − training / total): **{100 * b['non_training_share']:.1f} %** "
            f"(target ≤ 20 %: {met(b['non_training_share'] <= 0.2)}).")
    add("\n## The engine's local step against other stacked forms of it (prototypes, every node stepping)\n")
    add(f"Timed in turn with the engine's vmapped `_local_step` ({r['phase_local_step_s']:.3f} s per tick) and the loop. "
        f"One node's im2col patches take {r['im2col_patch_mb_per_node']:.1f} MB per forward pass: "
        f"{r['im2col_patch_mb_per_node'] * r['nodes']:.0f} MB for {r['nodes']} vmapped nodes, written and read "
        "again in the backward pass.\n")
    add("| stacked local step | seconds per call | node-steps/s | vs engine step alone | vs engine in advance "
        "| vs loop | compile s |")
    add("|---|---:|---:|---:|---:|---:|---:|")
    for row in r["prototypes"]:
        add(f"| {row['name']} | {row['seconds']:.3f} | {row['node_steps_per_s']:.1f} | "
            f"{row['speedup_over_engine_step']:.2f}× | {row['speedup_over_engine_advance']:.2f}× | "
            f"{row['over_loop']:.2f}× | {row['compile_s']:.1f} |")
    return "\n".join(lines) + "\n"


def plot(r: dict[str, Any], path: Path) -> None:
    """A stacked bar of seconds per iteration by phase, for both evaluation settings."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = ("local_training", "network_queue", "snapshot_mix_send", "evaluation")
    settings = (("preset eval", r["breakdown_preset"]), ("README CPU eval", r["breakdown_readme"]))
    fig, ax = plt.subplots(figsize=(6, 4))
    bottom = np.zeros(len(settings))
    for part in parts:
        values = np.array([max(b[part + "_s"], 0.0) for _, b in settings])
        ax.bar([name for name, _ in settings], values, bottom=bottom, label=part.replace("_", " "))
        bottom += values
    ax.set_ylabel("wall seconds per 128-step iteration")
    ax.set_title(f"GN-LeNet, DivShare Ω=0.1, n={r['nodes']} ({r['machine']['backend']})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------------------ main


def im2col_patch_mb(batch: int) -> float:
    """Megabytes of the im2col patch matrices of one node's forward pass (the three convolutions)."""
    side, channels, total = 32, 3, 0
    for features in CHANNELS:
        total += batch * side * side * KERNEL * KERNEL * channels * 4
        side, channels = side // 2, features
    return total / 1e6


def measure(cfg: Config, repeats: int) -> dict[str, Any]:
    n, k = cfg.nodes, cfg.local_steps
    r: dict[str, Any] = {"nodes": n, "stragglers": cfg.network.stragglers, "local_steps": k,
                         "batch_size": cfg.batch_size, "repeats": repeats,
                         "eval_every_iterations": cfg.eval_every_iterations,
                         "im2col_patch_mb_per_node": im2col_patch_mb(cfg.batch_size)}
    sim = engine.build(cfg)
    r["engine_conv"] = sim.spec.task.conv
    xs, ys = node_batches(sim)
    r["flops_per_node_step"] = flops = step_flops(Cifar10Task(conv="xla"), cfg.lr, xs[0], ys[0])
    r["flops_per_node_step_im2col"] = step_flops(Cifar10Task(conv="im2col"), cfg.lr, xs[0], ys[0])

    # Phases and windows are timed from the state just after the first boundary (its messages in flight),
    # reached from the start of the last window before it rather than through the whole first iteration.
    state = engine.advance(sim, sim.initial_state(), 0)  # compile
    after_one = jax.block_until_ready(engine.advance(sim, before_boundary(state, WINDOW, k), WINDOW))

    # The matmul peak is timed in turn with local training, so the load of the shared machine weighs on both.
    pieces = {**{f"matmul_{size}": matmul_piece(size) for size in MATMUL_SIZES},
              **phase_pieces(sim, after_one), **window_pieces(sim, after_one, repeats),
              "loop_xla": loop_piece(sim, "xla"), "loop_im2col": loop_piece(sim, "im2col")}
    compile_s = {}
    prototype_nodes = {name: min(nodes or n, n) for name, (*_, nodes) in PROTOTYPES.items()}
    for name, (conv, group, select, form, _) in PROTOTYPES.items():
        pieces[name], compile_s[name] = prototype_piece(sim, conv, group or n, select, form, prototype_nodes[name])
    t = round_robin(pieces, repeats)
    print({name: round(s, 4) for name, s in t.items()}, flush=True)

    r["matmul_gflops"] = {str(size): 2 * size**3 / t[f"matmul_{size}"] / 1e9 for size in MATMUL_SIZES}
    r["peak_gflops"] = peak = max(r["matmul_gflops"].values())
    r["host_steps"] = engine.host_steps(sim)
    r.update({f"phase_{name}_s": t[name] for name in ("local_step", "host_steps", "network", "snapshot", "mix_and_send")})
    local = "host_steps" if r["host_steps"] else "local_step"  # the form engine.advance runs
    phases = {name: t[name] for name in ("network", "snapshot", "mix_and_send")} | {"local_step": t[local]}
    r["window_steps_s"], r["window_boundary_s"] = t["window_steps"], t["window_boundary"]
    r["iteration_s"] = (k // WINDOW - 1) * t["window_steps"] + t["window_boundary"]
    r["phases_sum_s"] = k * (phases["local_step"] + phases["network"]) + phases["snapshot"] + phases["mix_and_send"]
    rates = {"engine_step": n / t["local_step"], "engine_host_steps": n / t["host_steps"],
             "engine_advance": WINDOW * n / t["window_steps"],
             "loop_xla": n / t["loop_xla"], "loop_im2col": n / t["loop_im2col"]}
    for key, rate in rates.items():
        r[key + "_node_steps_per_s"] = rate
        r[key + "_gflops"] = rate * flops / 1e9
        r[key + "_percent_of_peak"] = percent(rate * flops / 1e9, peak)
    r["engine_over_loop"] = rates["engine_step"] / rates["loop_xla"]
    r["engine_advance_over_loop"] = rates["engine_advance"] / rates["loop_xla"]
    r["prototypes"] = []
    for name, (conv, group, select, form, _) in PROTOTYPES.items():
        rate = prototype_nodes[name] * (LOOPED_STEPS if form == "fori" else 1) / t[name]
        r["prototypes"].append({"name": name, "conv": conv, "group": group or n, "select": select, "form": form,
                                "nodes": prototype_nodes[name], "seconds": t[name], "node_steps_per_s": rate,
                                "speedup_over_engine_step": rate / rates["engine_step"],
                                "speedup_over_engine_advance": rate / rates["engine_advance"],
                                "over_loop": rate / rates["loop_xla"], "compile_s": compile_s[name]})

    # Evaluation costs one model's pass over the test batches per scored model (the average model included;
    # consensus distance and the rest are small), so the preset's (every node, every one of the 10 batches
    # of 1,024 test images) is the README setting's cost per model-batch times its model-batches.
    readme = with_test_images(sim, README_EVAL[1])
    evals = round_robin({"readme": evaluation_piece(readme, after_one, README_EVAL[0])}, min(repeats, 2))
    batches = lambda images: -(-images // TEST_BATCH)
    model_batches = {"preset": (n + 1) * batches(10_000), "readme": (README_EVAL[0] + 1) * batches(README_EVAL[1])}
    r["eval_readme_s"] = evals["readme"]
    r["eval_preset_s"] = evals["readme"] * model_batches["preset"] / model_batches["readme"]
    for key in ("preset", "readme"):
        r[f"eval_{key}_images_per_s"] = model_batches[key] * TEST_BATCH / r[f"eval_{key}_s"]
        r["breakdown_" + key] = breakdown(phases, r["iteration_s"], r[f"eval_{key}_s"], cfg.eval_every_iterations, k)
    print({name: round(s, 2) for name, s in evals.items()}, flush=True)
    return r


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="directory of the CIFAR-10 files")
    parser.add_argument("--nodes", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3, help="best of this many timings")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    cfg = workload_config("cifar10", args.nodes, args.data_dir)
    r = {"machine": machine(), **measure(cfg, args.repeats)}
    backend = jax.default_backend()
    rows = [{"measure": key, "value": value} for key, value in r.items() if isinstance(value, (int, float, str))]
    rows += [{"measure": f"breakdown_{setting}_{key}", "value": value}
             for setting in ("preset", "readme") for key, value in r[f"breakdown_{setting}"].items()]
    rows += [{"measure": f"prototype: {p['name']}", "value": p["node_steps_per_s"]} for p in r["prototypes"]]
    meta = {key: value for key, value in r.items() if key != "machine"}
    write_results(args.out / f"roofline_{backend}", rows, **meta)
    (args.out / f"profile_{backend}.md").write_text(markdown(r))
    plot(r, args.out / f"profile_{backend}.png")
    print(markdown(r))


if __name__ == "__main__":
    main()
