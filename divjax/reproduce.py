"""The paper's experiments as named grids of runs: ``divjax reproduce``.

An *experiment* crosses methods (DivShare at Ω = 0.1, 0.5, 1; AD-PSGD; Swift) with the settings the paper's
artifact sweeps (spec/paper.md §3-§4, spec/reference-impl.md §6-§8):

==========  ======================================================================  =======
experiment  settings                                                                methods
==========  ======================================================================  =======
main        no stragglers; 7 of 60 communication stragglers x5 (Fig. 4/5)           all 5
degree      J in {3, 6, 9, 12}, 7 stragglers x5                                      3 core
stragglers  none; {7, 30} of 60 stragglers x {2, 5, 10}                               3 core
diablo      the 10-site geo-distributed network                                     all 5
transport   fifo and shared links, 7 stragglers x5                                   3 core
compute     compute time per iteration (not recorded by the reference), 7 x5          3 core
==========  ======================================================================  =======

(core: DivShare Ω = 0.1, AD-PSGD, Swift.) Each (method, setting, seed) runs into its own run directory
``OUT/<task>-<experiment>/<method>/<setting>/seed<k>`` (see :mod:`divjax.rundir`): an interrupted
reproduction continues where it stopped when the same command is run again, and a row whose configuration
another experiment has already run (main's 7 x5 straggler row is also degree J = 6, transport fifo, the
compute row at the preset's iteration time and a stragglers row) is copied from it, not run twice. After
every row (all its seeds) the experiment's tidy ``curves.csv`` and ``summary.csv`` and its plots are
rebuilt from every finished run, and :func:`write_report` turns all experiments under ``OUT`` into
``REPRODUCTION.md``.

*Scales*: ``full`` is the paper's configuration (60 nodes, 800 simulated seconds, every node evaluated);
``reduced`` keeps the mechanisms (same network, J, Ω, stragglers, compute-to-communication ratio) at a cost a
2-core CPU can pay (see :data:`REDUCED`); ``tiny`` runs in seconds and exists for the tests.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import json
import math
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from divjax import execution, tasks
from divjax.config import TRANSPORTS, Config, ConfigError
from divjax.rundir import RunDirectory, RunDirectoryError, config_hash, environment, write_atomic

EXPERIMENT_FILE = "experiment.json"  # task, experiment, scale, machine, configuration, the command to rerun it
EXPERIMENTS = ("main", "degree", "stragglers", "diablo", "transport", "compute")
SCALES = ("full", "reduced", "tiny")
REPRODUCE_TASKS = ("cifar10", "movielens", "synthetic")
REFERENCE_NODES = 60  # straggler counts are given "of 60", as in the paper; other n scale them


@dataclass(frozen=True)
class Method:
    """One line of the paper's plots: an algorithm and its fragment fraction."""

    slug: str
    label: str
    algorithm: str
    omega: float = 1.0


METHODS = (
    Method("divshare-0.1", "DivShare Ω=0.1", "divshare", 0.1),
    Method("divshare-0.5", "DivShare Ω=0.5", "divshare", 0.5),
    Method("divshare-1", "DivShare Ω=1", "divshare", 1.0),
    Method("adpsgd", "AD-PSGD", "adpsgd"),
    Method("swift", "Swift", "swift"),
)
CORE_METHODS = ("divshare-0.1", "adpsgd", "swift")
BASELINES = ("adpsgd", "swift")

# Compute time of one iteration (all local steps), swept because the reference did not record it; the
# middle value is each task's preset (spec/reference-impl.md §6.3).
ITERATION_SECONDS = {"cifar10": (1.5, 2.5, 5.0), "movielens": (0.64, 1.28, 2.56), "synthetic": (0.8, 1.6, 3.2)}

# What the reduced scale changes, per task, and why. CIFAR-10: 60 GN-LeNets take ~90 node-steps/s on 2 CPU
# cores, so the paper's 800 s (3,072 node-steps per simulated second) would take ~8 h a run. The reduced run
# keeps the 60 nodes, the network, J, Omega and the 2.5 s iteration (so communication and compute keep their
# ratio) but takes 8 local steps per iteration and 120 simulated seconds, evaluates every 8 iterations, scores
# 6 nodes on 2,000 test images, and its time-to-accuracy target is 30 % (60 % is out of reach in 384 steps).
# MovieLens: MF steps are cheap, but Swift and AD-PSGD never drop a message, so a straggler's backlog of
# snapshots grows all run long (spec/reference-impl.md §5): 200 simulated seconds keep that backlog within
# ``backlog_slots`` snapshots per node (6.5 GB for 60 MF models), so nothing is lost to capacity.
REDUCED: dict[str, dict[str, Any]] = {
    "cifar10": dict(local_steps=8, step_time=2.5 / 8, duration=120.0, eval_every_iterations=8,
                    target_accuracy=0.3, task=dict(eval_nodes=6, test_samples=2000)),
    "movielens": dict(duration=200.0, backlog_slots=130),  # ends at 192 s: 15 evaluations of 10 iterations
    "synthetic": dict(duration=400.0, backlog_slots=502),  # 400 s of 0.8 s iterations (the compute sweep)
}
# Snapshot slots per node that Swift and AD-PSGD (no flush) get at full scale: enough for 800 s of backlog.
FULL: dict[str, dict[str, Any]] = {"cifar10": dict(backlog_slots=330), "movielens": dict(backlog_slots=630),
                                   "synthetic": dict(backlog_slots=1002)}
TINY: dict[str, Any] = dict(nodes=20, local_steps=2, batch_size=4, duration=8.0, eval_every_iterations=4,
                            task=dict(eval_nodes=2, test_samples=64, hidden=4, samples_mean_log=3.0,
                                                     samples_sigma_log=0.3, samples_cap=80))


@dataclass(frozen=True)
class Row:
    """One (method, setting) of an experiment; it runs once per seed."""

    experiment: str
    method: Method
    setting: str
    config: Config


# ---------------------------------------------------------------------------------------------- the grids
def _grid(experiment: str, task: str) -> tuple[tuple[str, ...], list[dict[str, Any]]]:
    """(method slugs, settings) of an experiment. A setting names what differs from the task's preset."""
    slow = dict(stragglers=7, slowdown=5.0)
    all_methods = tuple(m.slug for m in METHODS)
    if experiment == "main":
        return all_methods, [dict(stragglers=0, slowdown=1.0), slow]
    if experiment == "degree":
        return CORE_METHODS, [dict(slow, degree=j) for j in (3, 6, 9, 12)]
    if experiment == "stragglers":
        return CORE_METHODS, [dict(stragglers=0, slowdown=1.0)] + [
            dict(stragglers=s, slowdown=f) for s, f in itertools.product((7, 30), (2.0, 5.0, 10.0))]
    if experiment == "diablo":
        return all_methods, [dict(network="diablo")]
    if experiment == "transport":
        return CORE_METHODS, [dict(slow, transport=t) for t in TRANSPORTS]
    if experiment == "compute":
        return CORE_METHODS, [dict(slow, iteration_s=s) for s in ITERATION_SECONDS[task]]
    raise ConfigError(f"experiment={experiment!r} is not allowed: expected one of {', '.join(EXPERIMENTS)}")


def setting_slug(setting: dict[str, Any]) -> str:
    """A setting as a directory name: ``stragglers7x5``, ``degree3-stragglers7x5``, ``diablo`` ..."""
    parts = []
    if "degree" in setting:
        parts.append(f"degree{setting['degree']}")
    if "iteration_s" in setting:
        parts.append(f"iteration{setting['iteration_s']:g}s")
    if "transport" in setting:
        parts.append(setting["transport"])
    if "network" in setting:
        parts.append(setting["network"])
    if "stragglers" in setting:
        count, slowdown = setting["stragglers"], setting["slowdown"]
        parts.append(f"stragglers{count}x{slowdown:g}" if count else "no-stragglers")
    return "-".join(parts)


def _scaled(base: Config, scale: str) -> tuple[Config, int | None]:
    """The task's preset at a scale, and the snapshot slots Swift and AD-PSGD get there (``None``: default)."""
    if scale not in SCALES:
        raise ConfigError(f"scale={scale!r} is not allowed: expected one of {', '.join(SCALES)}")
    changes = dict({"full": FULL[base.task.name], "reduced": REDUCED[base.task.name], "tiny": TINY}[scale])
    task_changes = {k: v for k, v in changes.pop("task", {}).items()
                    if base.task.name == "synthetic" or k not in ("hidden", "samples_mean_log",
                                                                  "samples_sigma_log", "samples_cap")}
    if base.task.name != "cifar10":
        task_changes.pop("test_samples", None)
    if scale == "tiny":  # keep the preset's iteration/communication ratio at the tiny step count
        changes["step_time"] = base.step_time * base.local_steps / changes["local_steps"]
    backlog = changes.pop("backlog_slots", None)
    return base.replace(task=dataclasses.replace(base.task, **task_changes), **changes), backlog


def _configure(base: Config, method: Method, setting: dict[str, Any], backlog: int | None) -> Config:
    network = base.network
    if "network" in setting:
        network = dataclasses.replace(network, preset=setting["network"], stragglers=0)
    if "stragglers" in setting:
        count = round(setting["stragglers"] * base.nodes / REFERENCE_NODES)
        network = dataclasses.replace(network, preset="stragglers", stragglers=count, slowdown=setting["slowdown"])
    if "transport" in setting:
        network = dataclasses.replace(network, transport=setting["transport"])
    changes: dict[str, Any] = dict(algorithm=method.algorithm, omega=method.omega, network=network)
    if "degree" in setting:
        changes["degree"] = setting["degree"]
    if "iteration_s" in setting:
        changes["step_time"] = setting["iteration_s"] / base.local_steps
    if backlog and method.algorithm in ("swift", "adpsgd"):  # no flush: room for the stragglers' backlog
        changes.update(snapshot_slots=backlog, queue_capacity=backlog * setting.get("degree", base.degree))
    return _whole_evaluations(base.replace(**changes))


def _whole_evaluations(config: Config) -> Config:
    """End the run at its last evaluation on the grid, as the reference's last test is at the last multiple of
    10 iterations before its time budget: a final evaluation in the middle of an iteration would score the
    models at another phase (after local steps rather than right after mixing) than every earlier one."""
    period = config.evaluation_period
    return config.replace(duration=period * max(1, math.floor(config.duration / period + 1e-9)))


def experiment_rows(experiment: str, task: str, scale: str = "full", data_dir: str | None = None,
                    methods: Sequence[str] | None = None, settings: Sequence[str] | None = None) -> list[Row]:
    """The validated rows of an experiment, optionally only some ``methods`` / ``settings`` (by slug)."""
    if task not in REPRODUCE_TASKS:
        raise ConfigError(f"task={task!r} is not allowed: the paper's experiments run on {', '.join(REPRODUCE_TASKS)}")
    slugs, grid = _grid(experiment, task)
    known = {m.slug: m for m in METHODS}
    for name, chosen, allowed in (("methods", methods, slugs), ("settings", settings,
                                                                [setting_slug(s) for s in grid])):
        bad = sorted(set(chosen or ()) - set(allowed))
        if bad:
            raise ConfigError(f"{name}={','.join(bad)} is not allowed for the {experiment} experiment: "
                              f"expected some of {', '.join(allowed)}")
    base, backlog = _scaled(Config.for_task(task, data_dir), scale)
    base.validate()  # names a bad --data-dir before any row
    rows = [Row(experiment, known[slug], setting_slug(s), _configure(base, known[slug], s, backlog))
            for s in grid for slug in slugs
            if (not methods or slug in methods) and (not settings or setting_slug(s) in settings)]
    for row in rows:
        row.config.validate()
    return rows


# ---------------------------------------------------------------------------------------------- running
def experiment_dir(out: Path, task: str, experiment: str) -> Path:
    return Path(out) / f"{task}-{experiment}"


def run_experiment(experiment: str, task: str, out: str | Path, *, scale: str = "full",
                   data_dir: str | None = None, seeds: Sequence[int] = (0,), methods: Sequence[str] | None = None,
                   settings: Sequence[str] | None = None, progress: bool = True,
                   checkpoint_seconds: float = 60.0, vmap_seeds: bool = False) -> Path:
    """Run (or continue) every row x seed of an experiment that has not finished, then rebuild its tables
    and plots; return the experiment's directory.

    ``vmap_seeds``: a row's seeds that have not started run as one vmapped program (:mod:`divjax.sweep`),
    where their shapes allow (otherwise one after another, saying why); seeds with a checkpoint resume on
    their own. One compilation for all of them, and on an accelerator the seeds share the device's width;
    memory grows with the number of seeds, and an interrupted group starts again (no checkpoints). Members
    match separate runs up to float32 rounding (see :mod:`divjax.sweep`), so a vmapped run is never copied
    into another experiment's row."""
    rows = experiment_rows(experiment, task, scale, data_dir, methods, settings)
    for seed in seeds:
        Config().replace(seed=seed).validate()
    tasks.check_data(rows[0].config.task)  # a bad data directory fails before any directory is written
    where = experiment_dir(Path(out), task, experiment)
    _record_experiment(where, task, experiment, scale, base=_scaled(Config.for_task(task, data_dir), scale)[0])
    done = 0
    for row in rows:
        label = f"[{done + 1}-{done + len(seeds)}/{len(rows) * len(seeds)}] {task}-{experiment} {row.setting}"
        todo = [run for seed in seeds if (run := _prepare(Path(out), where, row, seed, progress)) is not None]
        fresh = [run for run in todo if execution.fresh(run)]  # the others resume from their checkpoints
        if vmap_seeds and len(fresh) > 1:
            try:
                execution.execute_together(fresh, progress=progress, checkpoint_seconds=checkpoint_seconds,
                                           label=f"{label} {row.method.slug}, {len(fresh)} seeds vmapped")
            except execution.CannotRunTogether as err:
                print(f"{label} {row.method.slug}: the seeds run one after another ({err})")
        for run in todo:
            if not run.complete:
                execution.execute(run, progress=progress, checkpoint_seconds=checkpoint_seconds,
                                  label=f"{label} seed{run.configs[0].seed}")
        done += len(seeds)
        collect(where)
    return where


def _prepare(out: Path, where: Path, row: Row, seed: int, progress: bool) -> RunDirectory | None:
    """The run directory of ``row`` at ``seed``, opened or created, if it still has to run; ``None`` when it
    is finished (before, or just now copied from an identical run of another experiment)."""
    path = where / row.method.slug / row.setting / f"seed{seed}"
    config = row.config.replace(seed=seed)
    label = f"{where.name} {row.setting} seed{seed} {row.method.slug}"
    twin = None if (path / "status.json").is_file() else _finished_twin(out, config)
    if twin is not None:
        copy = twin.copy_to(path, source=twin.status.get("copied_from") or twin.path.relative_to(out).as_posix())
        if progress:
            print(f"{label}: the same configuration as {copy.status['copied_from']}, copied")
        return None
    run = _open_or_create(path, config)
    if run.complete:
        if progress:
            print(f"{label}: done before, kept")
        return None
    return run


def _record_experiment(where: Path, task: str, experiment: str, scale: str, base: Config) -> None:
    """Write ``experiment.json``, or check that the directory holds the same experiment at the same scale."""
    path = where / EXPERIMENT_FILE
    if path.is_file():
        known = json.loads(path.read_text())
        if known.get("scale") != scale:
            raise RunDirectoryError(f"{where} holds the {known.get('scale')} scale of this experiment, not {scale}: "
                                    "choose another --out")
        return
    where.mkdir(parents=True, exist_ok=True)
    config = (f"{base.nodes} nodes, J = {base.degree}, {base.local_steps} local steps of batch {base.batch_size}, "
              f"lr {base.lr:g}, {base.step_time * base.local_steps:g} s per iteration, {base.duration:g} simulated s, "
              f"evaluation every {base.evaluation_period:g} s, target {base.target_accuracy:.0%}, "
              f"{base.network.fast_mbps:g} Mbit/s links, {base.network.transport} transport")
    data = "" if task == "synthetic" else " --data-dir DATA"
    write_atomic(path, (json.dumps({
        "task": task, "experiment": experiment, "scale": scale, "machine": machine(), "config": config,
        "command": f"divjax reproduce {experiment} --task {task} --scale {scale}{data} --out OUT"},
        indent=2) + "\n").encode())


def machine() -> str:
    """The machine, in words: processor, cores, accelerator, versions."""
    import os

    import jax

    env = environment()
    return (f"{platform.machine()} with {os.cpu_count()} cores, {jax.device_count()} x {env['devices']} "
            f"({env['backend']}), Python {env['python']}, jax {env['jax']}")


def _finished_twin(out: Path, config: Config) -> RunDirectory | None:
    """A finished run of exactly ``config`` in another experiment under ``out``, run alone (not vmapped with
    other seeds) on this backend with these versions of jax and divjax, if any.

    Grids overlap: the 7 x5 straggler row of ``main`` is also ``degree`` J = 6, ``transport`` fifo,
    ``compute`` at the preset's iteration time and a row of ``stragglers``, as is main's no-straggler row.
    Runs are deterministic, so such a row is copied, not run again.
    """
    want, here = config_hash([config]), environment()
    for status_path in sorted(Path(out).glob("*/*/*/seed*/status.json")):
        try:
            run = RunDirectory.open(status_path.parent)
        except RunDirectoryError:
            continue  # a damaged run is no twin; its own experiment reports it when that one is rerun
        status = run.status
        if (run.complete and status.get("config_hash") == want and "vmapped_with" not in status
                and all(status["environment"].get(k) == here[k] for k in ("backend", "devices", "jax", "divjax"))):
            return run
    return None


def _open_or_create(path: Path, config: Config) -> RunDirectory:
    if (path / "status.json").is_file():
        run = RunDirectory.open(path)
        if run.configs != [config]:
            raise RunDirectoryError(f"{path} holds a run of another configuration (the grid or scale changed?): "
                                    "move it away or choose another --out")
        return run
    return RunDirectory.create(path, [config], overwrite=True)  # an empty or half-created directory


# ---------------------------------------------------------------------------------------------- tables
SUMMARY_COLUMNS = ("final_mean_accuracy", "final_mean_test_loss", "time_to_target_s", "target_accuracy",
                   "delivery_ratio_stragglers", "delivery_ratio_fast", "messages_lost_to_capacity",
                   "mean_iterations", "wall_seconds", "compile_seconds", "node_steps_per_second")
CURVE_COLUMNS = ("time", "mean_accuracy", "min_accuracy", "max_accuracy", "mean_test_loss",
                 "average_model_accuracy", "consensus_distance", "train_loss")


def describe(config: Config) -> dict[str, Any]:
    """The method and the swept quantities of a run, read from its configuration."""
    method = next(m for m in METHODS if m.algorithm == config.algorithm
                  and (config.algorithm != "divshare" or m.omega == config.omega))
    net = config.network
    return {"task": config.task.name, "method": method.slug, "method_label": method.label, "seed": config.seed,
            "nodes": config.nodes, "network": net.preset,
            "stragglers": net.stragglers if net.preset == "stragglers" else 0,
            "slowdown": net.slowdown if net.preset == "stragglers" and net.stragglers else 1.0,
            "degree": config.degree, "transport": net.transport,
            "iteration_s": round(config.step_time * config.local_steps, 6), "duration": config.duration}


def _rank(names: Sequence[str], name: str) -> int:
    """Where ``name`` stands in ``names`` (unknown names last): the sort key of the report's orders."""
    return names.index(name) if name in names else len(names)


def _run_dirs(where: Path, task: str, experiment: str) -> list[RunDirectory]:
    """The run directories of an experiment in the grid's order: settings as the experiment lists them
    (degree 3, 6, 9, 12, not 12, 3, 6, 9), then methods as :data:`METHODS` does, then seeds."""
    settings = [setting_slug(s) for s in _grid(experiment, task)[1]]
    methods = [m.slug for m in METHODS]

    def order(status: Path) -> tuple:
        seed, setting, method = status.parent.name, status.parent.parent.name, status.parent.parent.parent.name
        number = seed.removeprefix("seed")
        return (_rank(settings, setting), setting, _rank(methods, method), method,
                int(number) if number.isdigit() else -1, seed)

    return [RunDirectory.open(s.parent) for s in sorted(where.glob("*/*/seed*/status.json"), key=order)]


def collect(where: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rebuild ``curves.csv``, ``summary.csv`` and the plots of an experiment directory from its finished
    runs; return (curve rows, summary rows)."""
    info = json.loads((where / EXPERIMENT_FILE).read_text())
    curves, summaries = [], []
    for run in _run_dirs(where, info["task"], info["experiment"]):
        if not run.complete:
            continue
        (config,) = run.configs
        key = {"experiment": info["experiment"], "scale": info["scale"], "setting": run.path.parent.name, **describe(config)}
        summaries.append({**key, **{c: run.status["summaries"][config.algorithm][c] for c in SUMMARY_COLUMNS},
                          "copied_from": run.status.get("copied_from", ""),
                          "commit": run.status["environment"].get("commit", "")})  # "": run before commits were recorded
        for row in run.rows():
            curves.append({**key, **{c: float(row[c]) for c in CURVE_COLUMNS}})
    _write_csv(where / "curves.csv", curves)
    _write_csv(where / "summary.csv", summaries)
    if summaries:
        from divjax import reproduce_plots

        reproduce_plots.curves(curves, where / "curves.png")
        reproduce_plots.bars(summaries, where / "bars.png")
    return curves, summaries


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
    write_atomic(path, buffer.getvalue().encode())


def read_summaries(out: str | Path) -> list[dict[str, Any]]:
    """Every experiment's ``summary.csv`` under ``out``, with numbers as floats (``inf`` for never), task by
    task and each task's experiments in the order of :data:`EXPERIMENTS` (``main`` first)."""
    def order(path: Path) -> tuple:
        task, _, experiment = path.parent.name.partition("-")
        return task, _rank(EXPERIMENTS, experiment), experiment

    rows = []
    for path in sorted(Path(out).glob("*/summary.csv"), key=order):
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                rows.append({k: _number(k, v) for k, v in row.items()})
    return rows


def _number(key: str, value: str) -> Any:
    if key in ("task", "experiment", "scale", "setting", "method", "method_label", "network", "transport",
               "copied_from", "commit"):
        return value
    if value == "":
        return math.inf if key == "time_to_target_s" else math.nan
    return float(value)


__all__ = ["EXPERIMENTS", "METHODS", "SCALES", "Method", "Row", "collect", "describe", "experiment_rows",
           "read_summaries", "run_experiment", "setting_slug"]
