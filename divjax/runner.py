"""Running a simulation from the host: evaluation intervals, progress in simulated time, results.

>>> import divjax
>>> result = divjax.run(divjax.Config(algorithm="divshare", nodes=16, duration=60))
>>> result.history["mean_accuracy"]          # one value per evaluation
>>> print(divjax.summary_table([result.summary()]))

The tick loop is compiled once per shape (:class:`~divjax.state.SimSpec`) and reused by every later run
with the same shapes, whatever the numbers (seed, learning rate, bandwidths).
"""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Iterator, Sequence

import jax
import numpy as np
from tqdm.auto import tqdm

from divjax import engine, metrics, sharding
from divjax.config import Config
from divjax.engine import Simulation
from divjax.network import Network
from divjax.queue import Counters
from divjax.state import SimState

COUNTER_NAMES = ("sent", "applied", "superseded", "flushed", "overflow_queue", "overflow_snapshot",
                 "delivered", "received")
STATE_LEAF = "state_"  # a checkpoint holds the state's leaves as arrays state_00000, state_00001, ...


@dataclass
class RunResult:
    """What a run measured.

    Attributes:
      config: the configuration that ran.
      history: one array per metric, one entry per evaluation (``time`` in simulated seconds, then
        ``mean_accuracy``, ``min_accuracy``, ``max_accuracy``, ``mean_test_loss``, ``average_model_accuracy``,
        ``average_model_test_loss``, ``consensus_distance``, ``train_loss``, ``diverged_nodes``: nodes whose
        model or loss is not finite).
      node_accuracy: ``[evaluations, len(eval_nodes)]`` test accuracy of every evaluated node.
      eval_nodes: the nodes evaluated (all unless ``task.eval_nodes`` says fewer).
      counters: per-node message accounting at the end (``sent``, ``applied``, ...) and ``in_flight``.
      iterations: ``[n]`` iterations each node completed.
      stragglers: ids of the communication stragglers (:meth:`divjax.network.Network.stragglers`).
      compile_seconds, wall_seconds: host time spent compiling, and in all (compilation included).
      node_steps: local SGD steps summed over nodes.
      state: the final simulation state (for diagnostics).
    """

    config: Config
    history: dict[str, np.ndarray]
    node_accuracy: np.ndarray
    eval_nodes: np.ndarray
    counters: dict[str, np.ndarray]
    iterations: np.ndarray
    stragglers: np.ndarray
    compile_seconds: float
    wall_seconds: float
    node_steps: int
    state: Any = field(default=None, repr=False)

    @property
    def time_to_target(self) -> float:
        """First evaluation time (simulated s) at which the mean accuracy reached the config's target."""
        return metrics.time_to_target(self.history["time"], self.history["mean_accuracy"],
                                      self.config.target_accuracy)

    @property
    def lost_to_capacity(self) -> int:
        """Messages dropped because a queue or snapshot ring was full (0 in a faithful run)."""
        return int(self.counters["overflow_queue"].sum() + self.counters["overflow_snapshot"].sum())

    @property
    def node_steps_per_second(self) -> float:
        """Local SGD steps (summed over nodes) per second of wall time, compilation excluded."""
        return self.node_steps / max(self.wall_seconds - self.compile_seconds, 1e-9)

    def delivery_ratio(self, stragglers: bool) -> float:
        """Share of the messages sent by the stragglers (or by the other nodes) that landed."""
        is_straggler = np.zeros(self.config.nodes, bool)
        is_straggler[self.stragglers] = True
        nodes = np.flatnonzero(is_straggler if stragglers else ~is_straggler)
        return metrics.delivery_ratio(self.counters["delivered"], self.counters["sent"], nodes)

    def summary(self) -> dict[str, Any]:
        """The headline figures of the run, as plain numbers."""
        return {
            "algorithm": self.config.algorithm,
            "final_mean_accuracy": float(self.history["mean_accuracy"][-1]),
            "final_mean_test_loss": float(self.history["mean_test_loss"][-1]),
            "time_to_target_s": self.time_to_target,
            "target_accuracy": self.config.target_accuracy,
            "delivery_ratio_stragglers": self.delivery_ratio(True),
            "delivery_ratio_fast": self.delivery_ratio(False),
            "mean_iterations": float(self.iterations.mean()),
            "messages_lost_to_capacity": self.lost_to_capacity,
            "wall_seconds": self.wall_seconds,
            "compile_seconds": self.compile_seconds,
            "node_steps_per_second": self.node_steps_per_second,
            **{f"messages_{k}": int(v.sum()) for k, v in self.counters.items()},
        }

    def entries(self) -> list[dict[str, float]]:
        """The history, one dict per evaluation."""
        return [{k: float(v[i]) for k, v in self.history.items()} for i in range(len(self.history["time"]))]

    def rows(self) -> list[dict[str, Any]]:
        """The history as tidy rows: one per evaluation, labelled with the algorithm."""
        return [{"algorithm": self.config.algorithm, **entry} for entry in self.entries()]

    def to_dataframe(self):
        """The history as a pandas DataFrame (needs pandas)."""
        try:
            import pandas as pd
        except ImportError as err:  # pragma: no cover - depends on the user's environment
            raise ImportError("to_dataframe needs pandas: pip install pandas") from err
        return pd.DataFrame(self.rows())


def _counters_to_numpy(counters: Counters, state: SimState) -> dict[str, np.ndarray]:
    out = {name: getattr(counters, name) for name in COUNTER_NAMES}
    out["in_flight"] = state.queue.live.sum(axis=1)
    return sharding.to_host(out)


def _history_entry(t: float, ev: dict[str, jax.Array]) -> dict[str, float]:
    acc = np.asarray(ev["node_accuracy"])
    train_loss = np.asarray(ev["train_loss"])
    return {
        "time": t, "mean_accuracy": float(acc.mean()), "min_accuracy": float(acc.min()),
        "max_accuracy": float(acc.max()), "mean_test_loss": float(np.mean(ev["node_loss"])),
        "average_model_accuracy": float(ev["average_model_accuracy"]),
        "average_model_test_loss": float(ev["average_model_loss"]),
        "consensus_distance": float(ev["consensus_distance"]),
        "train_loss": float(np.nanmean(train_loss)) if np.any(np.isfinite(train_loss)) else float("nan"),
        "diverged_nodes": float(np.sum(~np.asarray(ev["finite"]))),
    }


class CapacityError(RuntimeError):
    """Messages were lost to a full queue or snapshot ring (``config.on_capacity == "error"``)."""


def _capacity_advice(sim: Simulation) -> str:
    return (f"raise queue_capacity (now {sim.spec.queue_capacity}) and snapshot_slots "
            f"(now {sim.spec.snapshot_slots})")


class DivergenceError(RuntimeError):
    """Some node's model or training loss became NaN or infinite (``config.on_divergence == "stop"``)."""

    def __init__(self, algorithm: str, nodes: np.ndarray, time: float):
        self.nodes, self.time = nodes, time
        shown = ", ".join(map(str, nodes[:10])) + (" ..." if len(nodes) > 10 else "")
        super().__init__(
            f"{algorithm}: the models or losses of {len(nodes)} node(s) ({shown}) hold NaN or inf at t = {time:g} s "
            "(detected at that evaluation); lower lr, or set on_divergence='continue' to carry on with those "
            "nodes marked. What was measured up to then is kept.")


@dataclass
class Progress:
    """Where a run stands after an evaluation: everything a checkpoint holds to resume bit for bit."""

    state: SimState
    entries: list[dict[str, float]]
    node_accuracy: list[np.ndarray]
    done: int  # ticks simulated

    def write(self, file: BinaryIO) -> None:
        """Write this progress to ``file`` as an uncompressed ``.npz``, one state leaf after another.

        numpy streams each array into the archive in 16 MiB chunks, so a checkpoint costs no second copy of
        the state in memory (serialising it to one ``bytes`` object first cost ~3 copies: 20 GB for the
        MovieLens baselines' 6.5 GB snapshot ring)."""
        leaves = {f"{STATE_LEAF}{i:05d}": leaf for i, leaf in enumerate(jax.tree.leaves(self.state))}
        np.savez(file, entries=np.array(json.dumps(self.entries)), node_accuracy=np.stack(self.node_accuracy),
                 done=np.array(self.done), **leaves)

    @classmethod
    def read(cls, sim: Simulation, path: str | os.PathLike) -> "Progress":
        """The progress :meth:`write` wrote to ``path``, for ``sim`` (its leaves checked against ``sim``'s state)."""
        like = jax.eval_shape(sim.initial_state)  # the state's structure, without allocating it
        expected = jax.tree.leaves(like)
        leaves = []
        with np.load(path, allow_pickle=False) as data:
            for i, want in enumerate(expected):
                leaf = data[f"{STATE_LEAF}{i:05d}"]  # one leaf on the host at a time
                if leaf.shape != want.shape or leaf.dtype != want.dtype:
                    raise ValueError(f"{path}: a state array is {leaf.dtype}{list(leaf.shape)}, the simulation "
                                     f"expects {want.dtype}{list(want.shape)}: not a checkpoint of this run")
                leaves.append(jax.device_put(leaf))  # one copy (jnp.asarray makes two)
            state = jax.tree.unflatten(jax.tree.structure(like), leaves)
            return cls(state=state, entries=json.loads(str(data["entries"])),
                       node_accuracy=list(data["node_accuracy"]), done=int(data["done"]))


class Recorder:
    """Evaluates a run's states into its :class:`Progress`, and enforces ``on_capacity`` and ``on_divergence``.

    Calling it with a state appends one evaluation, calls ``after_evaluation`` (the run directory writes
    metrics and checkpoints there) and returns the state with a fresh training-loss window.
    """

    def __init__(self, sim: Simulation, run: Progress, after_evaluation: Callable[[Progress], None] | None = None):
        self.sim, self.run, self.after_evaluation = sim, run, after_evaluation
        self.warned = False

    def __call__(self, state: SimState) -> SimState:
        sim, run, cfg = self.sim, self.run, self.sim.config
        ev = sharding.to_host(metrics.evaluate(sim.spec, sim.params, state, sim.eval_nodes))
        run.node_accuracy.append(np.asarray(ev["node_accuracy"]))
        run.entries.append(_history_entry(int(state.tick) * sim.dt, ev))
        run.state = metrics.reset_train_loss(state)
        if self.after_evaluation is not None:
            self.after_evaluation(run)
        lost = int(state.counters.overflow_queue.sum() + state.counters.overflow_snapshot.sum())
        if lost and cfg.on_capacity == "error":
            raise CapacityError(f"{cfg.algorithm}: {lost} messages were lost to capacity by t = "
                                f"{run.entries[-1]['time']:g} s ({_capacity_advice(sim)}); on_capacity='error'")
        diverged = np.flatnonzero(~np.asarray(ev["finite"]))
        if diverged.size and cfg.on_divergence == "stop":
            raise DivergenceError(cfg.algorithm, diverged, run.entries[-1]["time"])
        if diverged.size and not self.warned:
            self.warned = True
            warnings.warn(str(DivergenceError(cfg.algorithm, diverged, run.entries[-1]["time"])), stacklevel=3)
        return run.state


def evaluation_intervals(sim: Simulation, done: int) -> Iterator[int]:
    """Ticks of each evaluation interval left after ``done`` ticks, up to ``config.duration``."""
    total = engine.ticks_for(sim.config.duration, sim.dt)
    chunk = engine.ticks_for(sim.config.evaluation_period, sim.dt)
    while done < total:
        ticks = min(chunk, total - done)
        done += ticks
        yield ticks


def progress_bar(sim: Simulation, done: int, progress: bool, label: str) -> tqdm:
    """A progress bar in simulated seconds, from ``done`` ticks to ``config.duration``."""
    total = engine.ticks_for(sim.config.duration, sim.dt)
    return tqdm(total=round(total * sim.dt, 6), initial=round(done * sim.dt, 6), unit="sim s",
                disable=not progress, leave=True, desc=label,
                bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} sim s [{elapsed}<{remaining}]")


def simulate(sim: Simulation, *, progress: bool = True, label: str | None = None, resume: Progress | None = None,
             after_evaluation: Callable[[Progress], None] | None = None) -> RunResult:
    """Run a built simulation for ``config.duration`` simulated seconds, evaluating every
    ``config.evaluation_period``.

    ``after_evaluation`` is called with the :class:`Progress` after every evaluation (the run directory
    writes metrics and checkpoints there); ``resume`` continues from such a progress, bit for bit.
    """
    start = time.perf_counter()
    state = resume.state if resume is not None else sim.initial_state()
    state = engine.advance(sim, state, 0)  # compiles the tick loop (a no-op run)
    jax.block_until_ready(state)
    compile_seconds = time.perf_counter() - start

    if resume is not None:
        resume.state = state  # the no-op run consumed (donated) the state it resumed from
    run = resume or Progress(state=state, entries=[], node_accuracy=[], done=0)
    record = Recorder(sim, run, after_evaluation)
    if resume is None:
        state = record(state)
    bar = progress_bar(sim, run.done, progress, label or sim.config.algorithm)
    for ticks in evaluation_intervals(sim, run.done):
        state = engine.advance(sim, state, ticks)
        run.done += ticks
        state = record(state)
        bar.update(round(ticks * sim.dt, 6))
        bar.set_postfix(acc=f"{run.entries[-1]['mean_accuracy']:.3f}", refresh=False)
    bar.close()
    return result_of(sim, run, compile_seconds, time.perf_counter() - start)


def result_of(sim: Simulation, run: Progress, compile_seconds: float, wall_seconds: float) -> RunResult:
    """The :class:`RunResult` of a finished run (warning if messages were lost to capacity)."""
    cfg, state = sim.config, run.state
    history = {k: np.array([e[k] for e in run.entries]) for k in run.entries[0]}
    iterations, step_in_iter = sharding.to_host((state.iteration, state.step_in_iter))
    node_steps = int(iterations.sum()) * cfg.local_steps + int(step_in_iter.sum())
    result = RunResult(config=cfg, history=history, node_accuracy=np.stack(run.node_accuracy),
                       eval_nodes=np.asarray(sim.eval_nodes),
                       counters=_counters_to_numpy(state.counters, state), iterations=iterations,
                       stragglers=sim.network.stragglers(), compile_seconds=compile_seconds, wall_seconds=wall_seconds,
                       node_steps=node_steps, state=state)
    _warn_if_capacity_overflowed(result, sim)
    return result


def _warn_if_capacity_overflowed(result: RunResult, sim: Simulation) -> None:
    if not result.lost_to_capacity:
        return
    c = result.counters
    warnings.warn(
        f"{result.config.algorithm}: {result.lost_to_capacity} of {int(c['sent'].sum())} messages were lost to "
        f"capacity ({int(c['overflow_queue'].sum())} found the sender's queue full, "
        f"{int(c['overflow_snapshot'].sum())} lost their snapshot slot), so this run differs from the "
        f"unbounded reference. Slow senders build backlogs without a flush: {_capacity_advice(sim)}.",
        stacklevel=3)


def run(config: Config, *, network: Network | None = None, progress: bool = True) -> RunResult:
    """Validate, build and run one configuration."""
    return simulate(engine.build(config, network=network), progress=progress)


def run_many(configs: Sequence[Config], *, progress: bool = True) -> list[RunResult]:
    """Run several configurations one after another (all are validated before the first starts)."""
    for cfg in configs:
        cfg.validate()
    return [run(cfg, progress=progress) for cfg in configs]
