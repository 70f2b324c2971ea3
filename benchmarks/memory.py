"""Peak memory against n for each workload, next to the analytic minimum, and the largest n that fits.

Every (workload, n) is measured in a fresh subprocess (peak RSS is per process): import jax and divjax
(the runtime's RSS is recorded then), build, take the initial state, compile the tick loop once (XLA's own
``memory_analysis`` of it is recorded), run two iteration boundaries with mixing, evaluate once, and read
``ru_maxrss`` (and, on a GPU, the device's ``peak_bytes_in_use``). Run from the repository root::

    PYTHONPATH=. python benchmarks/memory.py --data-dir-movielens ../shared/data/movielens \\
        --data-dir-cifar10 ../shared/data/cifar10 [--workloads cifar10 --nodes 16 60] [--out STEM]
    # n too large for this machine: XLA's buffer sizes only, added to the rows already there
    PYTHONPATH=. python benchmarks/memory.py --workloads cifar10 --nodes 1024 10000 --compile-only --append \\
        --data-dir-cifar10 ../shared/data/cifar10

**What runs.** The benchmarked config (:func:`common.workload_config`: DivShare Ω = 0.1, J = 6, 7/60
stragglers, the task's preset K and B: every stacked shape as in a real run). To keep GN-LeNet affordable
on CPU, the state is put right before a boundary instead of training through K steps: every node's
``step_in_iter`` is set to K-1, so tick 1 is one vmapped local step of every node followed by boundary 1
(snapshot, mix, flush, send); then no node steps for K ticks (``next_step_tick`` moved ahead: the network
alone runs, messages land) and at the K-th tick every node steps again and reaches boundary 2, mixing the
messages that landed (``applied`` > 0 is checked). Only values change, never shapes, and the memory of a
compiled XLA program is fixed by its buffers, not by how many ticks it runs. GN-LeNet on CPU runs as
``engine.advance`` takes its steps there (node by node from the host); the XLA figures are then those of
the vmapped tick loop that sweeps run. The evaluation runs over the
first ``task.eval_node_batch`` evaluated nodes (one ``lax.map`` block: the full evaluation's buffers, for a
fraction of its time; CIFAR-10 scores one model at a time on the 10,000 test images).

**Analytic minimum** (what any simulator of DivShare with flush must hold)::

    data + n * d * 4 B * 3 + n * 2 * out_width * 16 B

* 3 live model copies per node: the model being trained; the snapshot taken at its last boundary, whose
  fragments are being sent; and the snapshot before it, because fragments of that one that landed before
  the flush are kept by their receivers until the receivers' next boundary (with equal compute speeds a
  receiver's boundary comes within one iteration, so no older snapshot is ever needed: 2, not S = 4).
  Plain SGD has no optimiser state; a gradient buffer is not counted (a node-by-node loop needs only one).
* Queue records: the two iterations' messages alive (J * m = out_width each), 16 bytes each (receiver,
  fragment, snapshot slot, delivery time).
* data: the bytes of ``sim.params.data`` (training shards padded to the largest, and the test sets).

The ratio is peak RSS / analytic minimum; the marginal ratio compares the bytes per node (the slope
between the two largest measured n, which removes the runtime's constant) with the analytic ones. The
largest n that fits 24 GiB is predicted twice: along that measured slope, and from XLA's buffer sizes
(``--compile-only`` rows: build and compile, never run, so n too large for the machine costs a compile)
plus the constant the largest measured n shows on top of them; verify a prediction by measuring it with
``--nodes`` (``--append`` keeps the rows already in ``OUT.json``). The parent stops a child whose RSS
passes ``--max-rss-gib``: on a shared machine a missing row beats the out-of-memory killer. On a GPU the
same command also records the device's peak (``device_peak_bytes``), in ``memory_gpu.*`` by default.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from benchmarks.common import WORKLOADS, workload_config, write_results
from divjax import engine, metrics

GIB = 1 << 30
DEFAULT_NODES = {"synthetic": (16, 60, 256, 1024, 4096), "movielens": (16, 60, 256, 610),
                 "cifar10": (16, 60, 256, 512)}  # 1024 GN-LeNet nodes need ~30 GiB here: --compile-only
LIVE_COPIES = 3  # the trained model + the snapshot being sent + the previous one (see the docstring)
RECORD_BYTES = 16
BUDGET_BYTES = 24 * GIB
MIN_AVAILABLE_BYTES = GIB // 2  # stop a child before the machine's free memory runs out (a shared machine)
DERIVED = ("ratio", "marginal_bytes_per_node", "marginal_analytic_bytes_per_node", "marginal_ratio",
           "xla_predicted_peak_bytes")


# ------------------------------------------------------------------------------------------ child


def peak_rss() -> int:
    """This process's peak resident set so far, in bytes (``ru_maxrss`` is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def nbytes(tree: Any) -> int:
    """Bytes of the arrays (or shapes: ``jax.eval_shape``'s) of ``tree``."""
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def analytic_min(data_bytes: int, nodes: int, dim: int, out_width: int) -> int:
    """Data, three model copies per node and two iterations' message records (see the module docstring)."""
    return data_bytes + nodes * dim * 4 * LIVE_COPIES + nodes * 2 * out_width * RECORD_BYTES


def measure(workload: str, nodes: int, data_dir: str | None, compile_only: bool = False) -> dict[str, Any]:
    """One measurement, in this (fresh) process; see the module docstring for what runs.

    ``compile_only``: build and compile, never run (XLA's numbers for an n too large to run here).
    """
    start = time.perf_counter()
    seconds: dict[str, float] = {}
    rss = {"runtime": peak_rss()}

    def phase(name: str, begun: float) -> None:
        seconds[name] = time.perf_counter() - begun
        rss[name] = peak_rss()

    begun = time.perf_counter()
    sim = engine.build(workload_config(workload, nodes, data_dir))
    spec, k = sim.spec, sim.spec.local_steps
    state = jax.eval_shape(sim.initial_state) if compile_only else jax.block_until_ready(sim.initial_state())
    phase("init", begun)
    begun = time.perf_counter()
    compiled = engine._advance.lower(spec, sim.params, state, jnp.asarray(0, jnp.int32)).compile()
    analysis = compiled.memory_analysis()
    phase("compile", begun)
    eval_nodes = sim.eval_nodes[: spec.task.eval_node_batch]
    evaluate = metrics.evaluate.lower(spec, sim.params, state, eval_nodes).compile()
    row = {
        "workload": workload, "nodes": nodes, "d": spec.dim, "snapshot_slots": spec.snapshot_slots,
        "queue_capacity": spec.queue_capacity, "out_width": spec.out_width, "local_steps": k,
        "batch_size": spec.batch_size, "backend": jax.default_backend(),
        "conv": getattr(spec.task, "conv", ""), "mix_dense": spec.mix_dense, "compile_only": compile_only,
        "data_bytes": nbytes(sim.params.data), "state_bytes": nbytes(state),
        "snapshot_bytes": nbytes(state.snapshots),
        "xla_temp_bytes": analysis.temp_size_in_bytes, "xla_argument_bytes": analysis.argument_size_in_bytes,
        "xla_output_bytes": analysis.output_size_in_bytes, "xla_alias_bytes": analysis.alias_size_in_bytes,
        "xla_eval_temp_bytes": evaluate.memory_analysis().temp_size_in_bytes,
    }
    # What the tick loop holds while it runs: its inputs, its temporaries, and outputs not donated.
    row["xla_tick_loop_bytes"] = (row["xla_argument_bytes"] + row["xla_temp_bytes"] + row["xla_output_bytes"]
                                  - row["xla_alias_bytes"])
    row["analytic_min_bytes"] = analytic_min(row["data_bytes"], nodes, spec.dim, spec.out_width)
    if not compile_only:
        row.update(run_and_evaluate(sim, compiled, evaluate, state, eval_nodes, phase))
    if jax.default_backend() != "cpu":
        row["device_peak_bytes"] = jax.devices()[0].memory_stats()["peak_bytes_in_use"]
    row.update({f"{name}_rss_bytes": value for name, value in rss.items()})
    row.update({f"{name}_seconds": value for name, value in seconds.items()})
    row["peak_rss_bytes"] = peak_rss()
    row["wall_seconds"] = time.perf_counter() - start
    return row


def run_and_evaluate(sim: engine.Simulation, compiled: Any, evaluate: Any, state: Any, eval_nodes: jax.Array,
                     phase: Callable[[str, float], None]) -> dict[str, Any]:
    """Two boundaries with mixing (see the module docstring), then one evaluation."""
    n, k = sim.spec.nodes, sim.spec.local_steps

    def run(state, ticks: int):
        if engine.host_steps(sim):  # GN-LeNet on CPU: the steps node by node, as engine.advance takes them
            return jax.block_until_ready(engine.advance(sim, state, ticks))
        return jax.block_until_ready(compiled(sim.params, state, jnp.asarray(ticks, jnp.int32)))

    last_step = lambda: jnp.full(n, k - 1, jnp.int32)  # a fresh array: states are donated
    begun = time.perf_counter()
    state = run(state.replace(step_in_iter=last_step()), 1)  # a local step, then boundary 1
    # The network alone for K ticks (an iteration's worth: messages land), then a step and boundary 2.
    state = run(state.replace(step_in_iter=last_step(), next_step_tick=jnp.full(n, state.tick + k)), k)
    assert int(state.iteration.min()) == 2, "every node should have reached two boundaries"
    phase("run", begun)
    row = {"ticks": 1 + k, "stepping_ticks": 2, "messages_applied": int(state.counters.applied.sum()),
           "evaluated_nodes": int(eval_nodes.shape[0])}
    begun = time.perf_counter()
    try:
        jax.block_until_ready(evaluate(sim.params, state, eval_nodes))
    except jax.errors.JaxRuntimeError as err:  # an evaluation too big for the machine: say so, keep the rest
        row["eval_failed"] = str(err).splitlines()[0]
    phase("eval", begun)
    return row


# ------------------------------------------------------------------------------------------ parent


def available() -> int:
    """The machine's available memory in bytes (``MemAvailable``)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def rss_of(pid: int) -> int:
    """Current resident set of process ``pid`` in bytes (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_child(workload: str, nodes: int, data_dir: str | None, max_rss: int, timeout: float,
              compile_only: bool) -> dict[str, Any]:
    """:func:`measure` in a fresh interpreter, stopped if its RSS passes ``max_rss`` or the machine's free
    memory runs low (a shared machine: better a missing row than the OOM killer picking another job)."""
    cmd = [sys.executable, __file__, "--child", workload, str(nodes)] + (["--child-data", data_dir] if data_dir else [])
    cmd += ["--compile-only"] if compile_only else []
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    with tempfile.TemporaryFile("w+") as log:  # a file, not a pipe: a chatty child cannot block on it
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
        start, highest, why = time.monotonic(), 0, ""
        while proc.poll() is None:
            highest = max(highest, rss_of(proc.pid))
            if highest > max_rss:
                why = f"RSS passed {max_rss / GIB:.1f} GiB"
            elif available() < MIN_AVAILABLE_BYTES:
                why = f"stopped at RSS {highest / GIB:.1f} GiB: the machine had under {MIN_AVAILABLE_BYTES / GIB} GiB left"
            elif time.monotonic() - start > timeout:
                why = f"ran past {timeout:.0f} s"
            if why:
                proc.kill()
            time.sleep(0.1)
        out = proc.stdout.read()
        log.seek(0)
        err = log.read()
    if proc.returncode == 0:
        return json.loads(out.strip().splitlines()[-1])
    if not why and proc.returncode < 0:  # a signal we did not send: on Linux, most likely the OOM killer
        why = f"killed by signal {-proc.returncode} (out of memory?) at RSS >= {highest / GIB:.1f} GiB"
    why = why or f"exit {proc.returncode}: {err.strip().splitlines()[-1] if err.strip() else ''}"
    return {"workload": workload, "nodes": nodes, "compile_only": compile_only, "failed": why,
            "peak_rss_bytes": highest}


def measured(row: dict[str, Any]) -> bool:
    return "failed" not in row and not row["compile_only"] and "eval_failed" not in row


def xla_model_bytes(row: dict[str, Any]) -> int:
    """What XLA says the larger phase holds: the tick loop, or the state and data under one evaluation."""
    evaluation = row["state_bytes"] + row["data_bytes"] + row["xla_eval_temp_bytes"]
    return max(row["xla_tick_loop_bytes"], evaluation)


def largest_fitting(points: list[tuple[int, float]], budget: float) -> int | None:
    """The n where the piecewise-linear ``(n, bytes)`` curve reaches ``budget`` (extrapolated past the last)."""
    for (n0, b0), (n1, b1) in itertools.pairwise(points):
        if b1 > budget or (n1, b1) == points[-1]:
            slope = (b1 - b0) / (n1 - n0)
            return int(n0 + (budget - b0) / slope) if slope > 0 else None
    return None


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Ratios per row; per workload, the marginal bytes per node and the largest n predicted to fit.

    Two predictions: the measured peak extended along its slope between the two largest measured n, and
    XLA's buffer sizes (:func:`xla_model_bytes`) of every row, compiled-only ones included, plus the
    constant (runtime, compiler, allocator) that the largest measured n shows on top of them.
    """
    fits = {}
    for workload in dict.fromkeys(r["workload"] for r in rows):
        mine = sorted((r for r in rows if r["workload"] == workload and "failed" not in r), key=lambda r: r["nodes"])
        done = [r for r in mine if measured(r)]
        for r in done:
            r["ratio"] = r["peak_rss_bytes"] / r["analytic_min_bytes"]
        if len(done) < 2:
            continue
        a, b = done[-2], done[-1]
        slope = (b["peak_rss_bytes"] - a["peak_rss_bytes"]) / (b["nodes"] - a["nodes"])
        analytic_slope = (b["analytic_min_bytes"] - a["analytic_min_bytes"]) / (b["nodes"] - a["nodes"])
        b["marginal_bytes_per_node"] = slope
        b["marginal_analytic_bytes_per_node"] = analytic_slope
        b["marginal_ratio"] = slope / analytic_slope
        intercept = b["peak_rss_bytes"] - slope * b["nodes"]
        constant = b["peak_rss_bytes"] - xla_model_bytes(b)
        for r in mine:
            r["xla_predicted_peak_bytes"] = xla_model_bytes(r) + constant
        fits[workload] = {
            "slope_from_nodes": [a["nodes"], b["nodes"]], "bytes_per_node": slope, "intercept_bytes": intercept,
            "analytic_bytes_per_node": analytic_slope, "marginal_ratio": slope / analytic_slope,
            "max_nodes_24gib_from_slope": largest_fitting([(0, intercept), (b["nodes"], b["peak_rss_bytes"])],
                                                          BUDGET_BYTES),
            "constant_bytes_over_xla": constant,
            "max_nodes_24gib_from_xla": largest_fitting(
                [(r["nodes"], r["xla_predicted_peak_bytes"]) for r in mine], BUDGET_BYTES),
            "largest_measured": max((r["nodes"] for r in done if r["peak_rss_bytes"] <= BUDGET_BYTES), default=None),
        }
    return fits


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for i, workload in enumerate(dict.fromkeys(r["workload"] for r in rows)):
        done = sorted((r for r in rows if r["workload"] == workload and measured(r)), key=lambda r: r["nodes"])
        n = [r["nodes"] for r in done]
        ax.loglog(n, [r["peak_rss_bytes"] / GIB for r in done], "o-", color=f"C{i}", label=f"{workload}: peak RSS")
        ax.loglog(n, [r["analytic_min_bytes"] / GIB for r in done], "--", color=f"C{i}",
                  label=f"{workload}: analytic minimum")
        guessed = [r for r in rows if r["workload"] == workload and "xla_predicted_peak_bytes" in r
                   and r["compile_only"]]
        if guessed:
            ax.loglog([r["nodes"] for r in guessed], [r["xla_predicted_peak_bytes"] / GIB for r in guessed], "o",
                      mfc="none", color=f"C{i}", label=f"{workload}: predicted from XLA (not run)")
    ax.axhline(BUDGET_BYTES / GIB, color="grey", lw=0.8, ls=":", label="24 GiB")
    ax.set_ylim(top=max(ax.get_ylim()[1], 2 * BUDGET_BYTES / GIB))
    ax.set_xlabel("nodes n")
    ax.set_ylabel("GiB")
    ax.set_title("Peak memory of one DivShare run (CPU RSS)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def table(rows: list[dict[str, Any]]) -> str:
    header = (f"{'workload':10} {'n':>6} {'peak GiB':>9} {'analytic GiB':>12} {'ratio':>6} {'marginal':>8} "
              f"{'xla temp GiB':>12} {'eval temp':>9} {'wall s':>7}")
    lines = [header]
    for r in rows:
        if "failed" in r:
            lines.append(f"{r['workload']:10} {r['nodes']:>6} failed: {r['failed']}")
            continue
        if "eval_failed" in r:
            lines.append(f"{r['workload']:10} {r['nodes']:>6} {r['peak_rss_bytes'] / GIB:>9.3f} "
                         f"{r['analytic_min_bytes'] / GIB:>12.3f} evaluation failed: {r['eval_failed'][:60]}")
            continue
        if r["compile_only"]:  # the peak XLA's buffers predict (see summarise), not a measurement
            predicted = f"~{r['xla_predicted_peak_bytes'] / GIB:.3f}" if "xla_predicted_peak_bytes" in r else "?"
            lines.append(f"{r['workload']:10} {r['nodes']:>6} {predicted:>9} {r['analytic_min_bytes'] / GIB:>12.3f} "
                         f"{'':>6} {'':>8} {r['xla_temp_bytes'] / GIB:>12.3f} {r['xla_eval_temp_bytes'] / GIB:>9.3f}"
                         "   (compiled only)")
            continue
        marginal = f"{r['marginal_ratio']:.2f}" if "marginal_ratio" in r else ""
        lines.append(f"{r['workload']:10} {r['nodes']:>6} {r['peak_rss_bytes'] / GIB:>9.3f} "
                     f"{r['analytic_min_bytes'] / GIB:>12.3f} {r['ratio']:>6.2f} {marginal:>8} "
                     f"{r['xla_temp_bytes'] / GIB:>12.3f} {r['xla_eval_temp_bytes'] / GIB:>9.3f} {r['wall_seconds']:>7.1f}")
    return "\n".join(lines)


def key(row: dict[str, Any]) -> tuple[str, int]:
    """One row per (workload, n): a new measurement, run or compiled only, replaces the old one."""
    return row["workload"], row["nodes"]


def previous_rows(stem: Path) -> list[dict[str, Any]]:
    """The rows of an earlier run's ``stem.json``, without what :func:`summarise` derives from them."""
    if not stem.with_suffix(".json").exists():
        return []
    rows = json.loads(stem.with_suffix(".json").read_text())["rows"]
    return [{k: v for k, v in r.items() if k not in DERIVED} for r in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    parser.add_argument("--nodes", nargs="+", type=int, help="these n for every workload (default: a grid each)")
    parser.add_argument("--data-dir-movielens")
    parser.add_argument("--data-dir-cifar10")
    parser.add_argument("--max-rss-gib", type=float, default=22.0, help="stop a measurement whose RSS passes this")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per measurement")
    parser.add_argument("--out", default=f"benchmarks/results/memory_{jax.default_backend()}",
                        help="results stem (.csv, .json, .png)")
    parser.add_argument("--child", nargs=2, metavar=("WORKLOAD", "NODES"), help=argparse.SUPPRESS)
    parser.add_argument("--child-data", help=argparse.SUPPRESS)
    parser.add_argument("--compile-only", action="store_true",
                        help="only build and compile (XLA's numbers for n too large to run here)")
    parser.add_argument("--append", action="store_true",
                        help="keep the rows already in OUT.json (a row measured again replaces its old one)")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], int(args.child[1]), args.child_data, args.compile_only)))
        return

    data_dirs = {"movielens": args.data_dir_movielens, "cifar10": args.data_dir_cifar10}
    stem = Path(args.out)
    rows = previous_rows(stem) if args.append else []
    for workload in args.workloads:
        for nodes in args.nodes or DEFAULT_NODES[workload]:
            row = run_child(workload, nodes, data_dirs.get(workload), int(args.max_rss_gib * GIB), args.timeout,
                            args.compile_only)
            rows = [r for r in rows if key(r) != key(row)] + [row]
            print(json.dumps({k: row.get(k) for k in ("workload", "nodes", "peak_rss_bytes", "wall_seconds",
                                                       "failed")}), flush=True)
    rows.sort(key=lambda r: (WORKLOADS.index(r["workload"]), r["nodes"], r.get("compile_only", False)))
    fits = summarise(rows)
    write_results(stem, rows, analytic_min="data + n*d*4*3 + n*2*out_width*16", live_copies=LIVE_COPIES,
                  fits=fits)
    print(table(rows))
    print(json.dumps(fits, indent=2))
    plot(rows, stem.with_suffix(".png"))


if __name__ == "__main__":
    main()
