"""The ``divjax`` command.

``divjax run`` with no arguments compares DivShare, AD-PSGD and Swift on the embedded synthetic task
(60 nodes, 7 communication stragglers), prints a table and writes a run directory (see divjax.rundir). Every
flag overrides one field of :class:`divjax.Config`; ``--config FILE`` starts from a JSON file instead of the
defaults (a run directory's ``config.json`` works). ``divjax resume DIR`` continues an interrupted run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from jax.errors import JaxRuntimeError

from divjax import claims, engine, report, reproduce, runner
from divjax.execution import execute
from divjax.config import (
    ALGORITHMS,
    CONV_IMPLEMENTATIONS,
    MOVIELENS_VARIANTS,
    NETWORK_PRESETS,
    ON_CAPACITY,
    ON_DIVERGENCE,
    PARTITIONS,
    TASKS,
    TOPOLOGIES,
    TRANSPORTS,
    Config,
    ConfigError,
)
from divjax.data import DataError
from divjax.reproduce import EXPERIMENTS, REPRODUCE_TASKS, SCALES
from divjax.rundir import RunDirectory, RunDirectoryError, check_new, check_one_configuration, configs_from_json

DEFAULT_ALGORITHMS = ("divshare", "adpsgd", "swift")

# (flag, config field, type, help). Fields of the network and the task are prefixed "network." / "task.".
_FIELDS: list[tuple[str, str, type, str]] = [
    ("--task", "task.name", str, f"learning task: {', '.join(TASKS)}; cifar10 and movielens start from the "
                                 "reference's hyper-parameters (Config.for_task)"),
    ("--data-dir", "task.data_dir", str, "directory holding the task's data (cifar10, movielens)"),
    ("--partition", "task.partition", str, f"CIFAR-10 partition: {', '.join(PARTITIONS)}"),
    ("--shards", "task.shards", int, "KShard's shards per node"),
    ("--dirichlet-alpha", "task.dirichlet_alpha", float, "concentration of the Dirichlet partition"),
    ("--variant", "task.variant", str, f"MovieLens data set: {', '.join(MOVIELENS_VARIANTS)}"),
    ("--conv", "task.conv", str, f"GN-LeNet convolutions: {', '.join(CONV_IMPLEMENTATIONS)}"),
    ("--eval-nodes", "task.eval_nodes", int, "evaluate this many nodes (evenly spread); default all"),
    ("--test-samples", "task.test_samples", int, "score on the first this-many CIFAR-10 test images; default all"),
    ("--alpha", "task.alpha", float, "synthetic task: how much the labelling functions differ across nodes"),
    ("--beta", "task.beta", float, "synthetic task: how much the inputs differ across nodes"),
    ("--hidden", "task.hidden", int, "synthetic task: hidden units of the MLP (0: logistic regression)"),
    ("--samples-mean-log", "task.samples_mean_log", float,
     "synthetic task: a node's training samples are 50 + LogNormal(this, --samples-sigma-log)"),
    ("--samples-sigma-log", "task.samples_sigma_log", float, "synthetic task: see --samples-mean-log"),
    ("--samples-cap", "task.samples_cap", int, "synthetic task: most training samples of a node"),
    ("--partition-seed", "task.partition_seed", int, "seed of the CIFAR-10 partition (the reference's: 1234)"),
    ("--dim", "task.dim", int, "quadratic task: number of parameters d"),
    ("--zeta", "task.zeta", float, "quadratic task: heterogeneity of the node optima"),
    ("--sigma", "task.sigma", float, "quadratic task: noise on every target"),
    ("--samples-per-node", "task.samples_per_node", int, "quadratic task: training samples of every node"),
    ("--tolerance", "task.tolerance", float, "quadratic task: a prediction counts as accurate within this"),
    ("--nodes", "nodes", int, "number of nodes n"),
    ("--degree", "degree", int, "J: recipients per fragment (divshare, swift); J//2 pings (adpsgd); "
                                "degree of the 'regular' topology (dpsgd)"),
    ("--omega", "omega", float, "DivShare's fragment fraction; m = int(1/omega) fragments"),
    ("--local-steps", "local_steps", int, "H: local SGD steps per iteration"),
    ("--batch-size", "batch_size", int, "minibatch size"),
    ("--lr", "lr", float, "SGD learning rate"),
    ("--step-time", "step_time", float, "simulated seconds per local step of a regular node"),
    ("--compute-stragglers", "compute_stragglers", int, "nodes 0..k-1 compute --compute-slowdown times slower"),
    ("--compute-slowdown", "compute_slowdown", float, "step-time factor of a compute straggler"),
    ("--dt", "dt", float, "tick in simulated seconds (default: the step time)"),
    ("--duration", "duration", float, "simulated seconds to run"),
    ("--eval-every", "eval_every", float, "simulated seconds between evaluations"),
    ("--eval-every-iterations", "eval_every_iterations", int,
     "evaluate every this many iterations of a regular node instead (the reference: 10)"),
    ("--target", "target_accuracy", float, "accuracy whose first crossing is the time-to-accuracy"),
    ("--seed", "seed", int, "seed of data, initial model, minibatches and recipients"),
    ("--topology", "topology", str, f"D-PSGD's graph: {', '.join(TOPOLOGIES)}"),
    ("--queue-capacity", "queue_capacity", int, "message records per sender (default: from the algorithm)"),
    ("--snapshot-slots", "snapshot_slots", int, "model snapshots kept per sender (default: from the algorithm)"),
    ("--on-capacity", "on_capacity", str, f"messages lost to a full queue or ring: {', '.join(ON_CAPACITY)}"),
    ("--on-divergence", "on_divergence", str, f"a NaN or inf model: {', '.join(ON_DIVERGENCE)} the run"),
    ("--network", "network.preset", str, f"network preset: {', '.join(NETWORK_PRESETS)}"),
    ("--stragglers", "network.stragglers", int, "communication stragglers (node ids 0..k-1)"),
    ("--slowdown", "network.slowdown", float, "bandwidth divisor of a communication straggler"),
    ("--fast-mbps", "network.fast_mbps", float, "bandwidth of a regular node, Mbit/s, up and down"),
    ("--latency-ms", "network.latency_ms", float, "one-way latency of each node's link, ms"),
    ("--transport", "network.transport", str, f"how messages share links: {', '.join(TRANSPORTS)}"),
    ("--header-bytes", "network.header_bytes", int, "bytes added to every message"),
]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="divjax", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    defaults = Config()  # the synthetic run's; --task starts from that task's preset
    run = sub.add_parser("run", help="simulate one or more algorithms and write a run directory",
                         description="Simulate one or more algorithms on one configuration; print a table and "
                                     "write config.json, metrics.csv, summary.json and accuracy.png.")
    run.add_argument("--algorithms", metavar="LIST",
                     help=f"comma-separated, from {', '.join(ALGORITHMS)} (default: a run directory's --config "
                          f"list, else {','.join(DEFAULT_ALGORITHMS)})")
    run.add_argument("--config", type=Path, metavar="FILE",
                     help="JSON config to start from: fields of divjax.Config, or a run directory's config.json")
    for flag, name, kind, text in _FIELDS:
        default = _field(defaults, name)
        suffix = "" if default is None else f" (default: {default})"  # None: the text says what happens
        run.add_argument(flag, dest=name, type=kind, default=None, metavar=kind.__name__.upper(),
                         help=text + suffix)
    run.add_argument("--out", type=Path, metavar="DIR", help="run directory (default: runs/<date>-<time>)")
    run.add_argument("--overwrite", action="store_true", help="replace the files of an existing run directory")
    resume = sub.add_parser("resume", help="continue an interrupted run from its last checkpoint",
                            description="Continue an interrupted `divjax run` from its run directory's last "
                                        "checkpoint; the result is bit-identical to an uninterrupted run.")
    resume.add_argument("directory", type=Path, help="the run directory")
    reproduce = sub.add_parser(
        "reproduce", help="run the paper's experiments (resumable) and write REPRODUCTION.md",
        description="Run the paper's experiments as grids of runs (see divjax.reproduce): each (method, setting, "
                    "seed) in its own resumable run directory under OUT/<task>-<experiment>/; running the same "
                    "command again continues what was interrupted. Then write OUT/REPRODUCTION.md.")
    reproduce.add_argument("experiments", nargs="*", metavar="EXPERIMENT",
                           help=f"from {', '.join(EXPERIMENTS)} (default: all)")
    reproduce.add_argument("--task", default="cifar10", help=f"{', '.join(REPRODUCE_TASKS)} (default: cifar10)")
    reproduce.add_argument("--data-dir", help="directory holding the task's data (cifar10, movielens)")
    reproduce.add_argument("--scale", default="full",
                           help=f"{', '.join(SCALES)}: the paper's configuration, a CPU-sized one with the same "
                                "mechanisms, or seconds-long (default: full)")
    reproduce.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 per row (default: 1)")
    reproduce.add_argument("--vmap-seeds", action="store_true",
                           help="run a row's seeds as one vmapped program where their shapes allow (one compile; "
                                "fastest on an accelerator; memory x seeds; an interrupted row restarts)")
    reproduce.add_argument("--methods", help="comma-separated method slugs to run (default: the experiment's)")
    reproduce.add_argument("--settings", help="comma-separated setting slugs to run (default: all)")
    reproduce.add_argument("--out", type=Path, default=Path("reproduction"), help="default: ./reproduction")
    reproduce.add_argument("--notes", type=Path, help="Markdown appended to REPRODUCTION.md as the discussion")
    reproduce.add_argument("--report", action="store_true", help="run nothing: rebuild the tables, plots and "
                                                                 "OUT/REPRODUCTION.md from the run directories")
    for command in (run, resume, reproduce):
        command.add_argument("--no-progress", action="store_true", help="no progress bar")
        command.add_argument("--checkpoint-every", type=_wall_seconds, default=30.0, metavar="SECONDS",
                             help="wall seconds between checkpoints (taken after evaluations; default: 30)")
    return parser


def _wall_seconds(text: str) -> float:
    """``--checkpoint-every``: a finite number of seconds >= 0 (NaN would silently never checkpoint)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed: expected a finite number of seconds >= 0")
    return value


def _field(config: Config, name: str) -> Any:
    obj = config
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def _load_config(path: Path | None, task: str | None, data_dir: str | None) -> tuple[Config, list[str] | None]:
    """The config to start from, and the algorithms a run directory's ``config.json`` lists (else None)."""
    if path is None:
        return Config.for_task(task or "synthetic", data_dir), None
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"--config {path}: not valid JSON ({err})") from None
    except OSError as err:  # a directory, no permission, ...
        raise ConfigError(f"--config {path}: cannot be read ({err.strerror})") from None
    if isinstance(data, dict) and "config" in data:  # a run directory's config.json
        try:
            configs = configs_from_json(data)
        except ConfigError as err:
            raise ConfigError(f"--config {path} (a run directory's config.json): {err}") from None
        return configs[0], [c.algorithm for c in configs]
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a JSON object of config fields")
    return Config.from_dict(data), None


def configs_from_args(args: argparse.Namespace) -> list[Config]:
    """The validated configs a ``run`` command line asks for, one per algorithm."""
    base, stored = _load_config(args.config, getattr(args, "task.name"), getattr(args, "task.data_dir"))
    top: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {"network": {}, "task": {}}
    for _, name, _, _ in _FIELDS:
        value = getattr(args, name)
        if value is not None:
            part, _, field = name.rpartition(".")
            (nested[part] if part else top)[field] = value
    if "eval_every" in top and "eval_every_iterations" in top:
        raise ConfigError(f"--eval-every={top['eval_every']} and --eval-every-iterations="
                          f"{top['eval_every_iterations']} are not allowed together: give one period")
    if "eval_every" in top:  # an explicit period in seconds replaces a preset's period in iterations
        top["eval_every_iterations"] = None
    base = dataclasses.replace(base, network=dataclasses.replace(base.network, **nested["network"]),
                               task=dataclasses.replace(base.task, **nested["task"]), **top)
    if args.algorithms is None:
        algorithms = list(stored or DEFAULT_ALGORITHMS)
    else:
        algorithms = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    if not algorithms:
        raise ConfigError(f"--algorithms={args.algorithms!r} is not allowed: name at least one of "
                          + ", ".join(ALGORITHMS))
    configs = [base.replace(algorithm=a) for a in algorithms]
    check_one_configuration(configs)
    for cfg in configs:
        cfg.validate()
    return configs


def mid_iteration_note(config: Config) -> str | None:
    """A note when ``duration`` ends mid-iteration of a regular node: its final evaluation then scores local
    models that have drifted since their last mix (lower accuracy, higher consensus distance than at a
    boundary), so the final figures are not comparable with a run that ends on a boundary."""
    iteration = config.local_steps * config.step_time
    iterations = config.duration / iteration
    if abs(iterations - round(iterations)) < 1e-9:
        return None
    below, above = math.floor(iterations) * iteration, math.ceil(iterations) * iteration
    return (f"note: --duration {config.duration:g} is not a whole number of iterations ({iteration:g} s): the final "
            f"evaluation falls mid-iteration, on local models that drifted since their last mix; "
            + (f"{below:g} or " if below > 0 else "") + f"{above:g} ends on a boundary")


def _report(run: RunDirectory, summaries: list[dict[str, Any]]) -> None:
    print()
    print(report.summary_table(summaries))
    print(f"\nwrote {run.path}/config.json, metrics.csv, summary.json, accuracy.png")


def _split(text: str | None) -> list[str] | None:
    return [part.strip() for part in text.split(",") if part.strip()] if text else None


def _reproduce(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    experiments = args.experiments or list(EXPERIMENTS)
    if args.notes is not None and not args.notes.is_file():
        parser.exit(2, f"divjax: error: --notes {args.notes}: no such file (expected a Markdown file)\n")
    try:
        if not args.report:
            _integer_flag("--seeds", args.seeds, 1)
            for experiment in experiments:  # every grid is validated before the first run starts
                reproduce.experiment_rows(experiment, args.task, args.scale, args.data_dir,
                                          _split(args.methods), _split(args.settings))
    except ConfigError as err:
        parser.exit(2, f"divjax: error: {err}\n")
    try:
        if not args.report:
            for experiment in experiments:
                reproduce.run_experiment(experiment, args.task, args.out, scale=args.scale, data_dir=args.data_dir,
                                         seeds=range(args.seeds), methods=_split(args.methods),
                                         settings=_split(args.settings), progress=not args.no_progress,
                                         checkpoint_seconds=args.checkpoint_every, vmap_seeds=args.vmap_seeds)
        else:  # rebuild every experiment's tables and plots from its run directories
            for info in sorted(args.out.glob(f"*/{reproduce.EXPERIMENT_FILE}")):
                reproduce.collect(info.parent)
        path = claims.write_report(args.out, args.notes)
    except KeyboardInterrupt:
        print(f"\ninterrupted: run the same command again to continue from the last checkpoints in {args.out} "
              "(a row of vmapped seeds starts again)", file=sys.stderr)
        return 130
    except (runner.DivergenceError, runner.CapacityError, RunDirectoryError, DataError, FileNotFoundError) as err:
        print(f"divjax: error: {err}", file=sys.stderr)
        return 1
    except (MemoryError, JaxRuntimeError) as err:
        return _exit_out_of_memory(err)
    print(f"wrote {path}")
    return 0


def _out_of_memory(err: BaseException) -> str | None:
    """The message for an allocation that failed (numpy's MemoryError, XLA's RESOURCE_EXHAUSTED), else None:
    a configuration that is valid but too big for this machine, not a bug to show as a traceback."""
    text = str(err)
    if not isinstance(err, MemoryError) and "RESOURCE_EXHAUSTED" not in text and "out of memory" not in text.lower():
        return None
    detail = text.splitlines()[0][:200] if text else type(err).__name__
    return (f"divjax: error: out of memory ({detail}); lower nodes, batch_size, local_steps, degree, "
            "snapshot_slots or queue_capacity, or run on a bigger machine")


def _exit_out_of_memory(err: BaseException, aftermath: str = "") -> int:
    """Print the one-line error for an allocation failure and return the exit status; anything else re-raised."""
    if (message := _out_of_memory(err)) is None:
        raise err
    print(message + (f"\n({aftermath})" if aftermath else ""), file=sys.stderr)
    return 1


def _integer_flag(flag: str, value: int, low: int) -> None:
    if value < low:
        raise ConfigError(f"{flag}={value} is not allowed: expected an integer >= {low}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "reproduce":
        return _reproduce(args, parser)
    first = None
    try:
        if args.command == "resume":
            run = RunDirectory.open(args.directory)
            if run.complete:
                print(f"{run.path} is complete; nothing to resume")
                _report(run, [run.status["summaries"][c.algorithm] for c in run.configs])
                return 0
        else:
            configs = configs_from_args(args)
            if (note := mid_iteration_note(configs[0])) is not None:
                print(note, file=sys.stderr)
            out = args.out or Path("runs") / time.strftime("%Y%m%d-%H%M%S")
            check_new(out, args.overwrite)  # a taken --out fails before the data is loaded and compiled
            first = engine.build(configs[0])  # loads the data: a bad data directory fails here, with no run dir
            run = RunDirectory.create(out, configs, overwrite=args.overwrite)
    except (ConfigError, DataError, RunDirectoryError) as err:
        parser.exit(2, f"divjax: error: {err}\n")
    except (MemoryError, JaxRuntimeError) as err:  # the task's data or parameters of a valid but huge configuration
        return _exit_out_of_memory(err)
    try:
        summaries = execute(run, progress=not args.no_progress, checkpoint_seconds=args.checkpoint_every,
                            first=first)
    except KeyboardInterrupt:
        print(f"\ninterrupted: {run.path} holds everything up to its last checkpoint; "
              f"continue with `divjax resume {run.path}`", file=sys.stderr)
        return 130
    except (runner.DivergenceError, runner.CapacityError, RunDirectoryError, DataError) as err:
        print(f"divjax: error: {err}\n(metrics so far are in {run.path}/metrics.csv)", file=sys.stderr)
        return 1
    except (MemoryError, JaxRuntimeError) as err:
        return _exit_out_of_memory(err, f"{run.path} is marked incomplete")
    _report(run, summaries)
    return 0


if __name__ == "__main__":
    sys.exit(main())
