"""Running a simulation from the host: evaluation intervals, progress in simulated time, results.

>>> import divjax
>>> result = divjax.run(divjax.Config(algorithm="divshare", nodes=16, duration=60))
>>> result.history["mean_accuracy"]          # one value per evaluation
>>> print(result.summary_table())

The tick loop is compiled once per shape (:class:`~divjax.state.SimSpec`) and reused by every later run
with the same shapes, whatever the numbers (seed, learning rate, bandwidths).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import jax
import numpy as np
from tqdm.auto import tqdm

from divjax import engine, metrics
from divjax.config import Config
from divjax.engine import Simulation
from divjax.network import Network
from divjax.queue import Counters
from divjax.state import SimState

COUNTER_NAMES = ("sent", "applied", "superseded", "flushed", "overflow_queue", "overflow_snapshot",
                 "delivered", "received")


@dataclass
class RunResult:
    """What a run measured.

    Attributes:
      config: the configuration that ran.
      history: one array per metric, one entry per evaluation (``time`` in simulated seconds, then
        ``mean_accuracy``, ``min_accuracy``, ``max_accuracy``, ``mean_test_loss``, ``average_model_accuracy``,
        ``average_model_test_loss``, ``consensus_distance``, ``train_loss``).
      node_accuracy: ``[evaluations, len(eval_nodes)]`` test accuracy of every evaluated node.
      eval_nodes: the nodes evaluated (all unless ``task.eval_nodes`` says fewer).
      counters: per-node message accounting at the end (``sent``, ``applied``, ...) and ``in_flight``.
      iterations: ``[n]`` iterations each node completed.
      stragglers: ids of the communication stragglers.
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

    def rows(self) -> list[dict[str, Any]]:
        """The history as tidy rows: one per evaluation, labelled with the algorithm."""
        keys = list(self.history)
        return [{"algorithm": self.config.algorithm, **{k: float(self.history[k][i]) for k in keys}}
                for i in range(len(self.history["time"]))]

    def to_dataframe(self):
        """The history as a pandas DataFrame (needs pandas)."""
        try:
            import pandas as pd
        except ImportError as err:  # pragma: no cover - depends on the user's environment
            raise ImportError("to_dataframe needs pandas: pip install pandas") from err
        return pd.DataFrame(self.rows())


def _counters_to_numpy(counters: Counters, state: SimState) -> dict[str, np.ndarray]:
    out = {name: np.asarray(getattr(counters, name)) for name in COUNTER_NAMES}
    out["in_flight"] = np.asarray(state.queue.live.sum(axis=1))
    return out


def _history_entry(t: float, ev: dict[str, jax.Array]) -> dict[str, float]:
    acc = np.asarray(ev["node_accuracy"])
    return {
        "time": t, "mean_accuracy": float(acc.mean()), "min_accuracy": float(acc.min()),
        "max_accuracy": float(acc.max()), "mean_test_loss": float(np.mean(ev["node_loss"])),
        "average_model_accuracy": float(ev["average_model_accuracy"]),
        "average_model_test_loss": float(ev["average_model_loss"]),
        "consensus_distance": float(ev["consensus_distance"]),
        "train_loss": float(np.nanmean(np.asarray(ev["train_loss"]))) if np.any(
            np.isfinite(np.asarray(ev["train_loss"]))) else float("nan"),
    }


def simulate(sim: Simulation, *, progress: bool = True, label: str | None = None) -> RunResult:
    """Run a built simulation for ``config.duration`` simulated seconds, evaluating every
    ``config.evaluation_period``."""
    cfg = sim.config
    start = time.perf_counter()
    state = sim.initial_state()
    state = engine.advance(sim, state, 0)  # compiles the tick loop (a no-op run)
    jax.block_until_ready(state)
    compile_seconds = time.perf_counter() - start

    total = engine.ticks_for(cfg.duration, sim.dt)
    chunk = engine.ticks_for(cfg.evaluation_period, sim.dt)
    node_accuracy = []
    entries = []

    def record(state: SimState) -> SimState:
        ev = metrics.evaluate(sim.spec, sim.params, state, sim.eval_nodes)
        node_accuracy.append(np.asarray(ev["node_accuracy"]))
        entries.append(_history_entry(int(state.tick) * sim.dt, ev))
        return metrics.reset_train_loss(state)

    state = record(state)
    bar = tqdm(total=round(total * sim.dt, 6), unit="sim s", disable=not progress, leave=True,
               desc=label or cfg.algorithm, bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} sim s [{elapsed}<{remaining}]")
    done = 0
    while done < total:
        ticks = min(chunk, total - done)
        state = engine.advance(sim, state, ticks)
        done += ticks
        state = record(state)
        bar.update(round(ticks * sim.dt, 6))
        bar.set_postfix(acc=f"{entries[-1]['mean_accuracy']:.3f}", refresh=False)
    bar.close()
    wall = time.perf_counter() - start
    history = {k: np.array([e[k] for e in entries]) for k in entries[0]}
    iterations = np.asarray(state.iteration)
    node_steps = int(iterations.sum()) * cfg.local_steps + int(np.asarray(state.step_in_iter).sum())
    stragglers = np.arange(cfg.network.stragglers if cfg.network.preset == "stragglers" else 0)
    result = RunResult(config=cfg, history=history, node_accuracy=np.stack(node_accuracy),
                       eval_nodes=np.asarray(sim.eval_nodes),
                       counters=_counters_to_numpy(state.counters, state), iterations=iterations,
                       stragglers=stragglers, compile_seconds=compile_seconds, wall_seconds=wall,
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
        f"unbounded reference. Slow senders build backlogs without a flush: raise queue_capacity "
        f"(now {sim.spec.queue_capacity}) and snapshot_slots (now {sim.spec.snapshot_slots}).", stacklevel=3)


def run(config: Config, *, network: Network | None = None, progress: bool = True) -> RunResult:
    """Validate, build and run one configuration."""
    return simulate(engine.build(config, network=network), progress=progress)


def run_many(configs: Sequence[Config], *, progress: bool = True) -> list[RunResult]:
    """Run several configurations one after another (all are validated before the first starts)."""
    for cfg in configs:
        cfg.validate()
    return [run(cfg, progress=progress) for cfg in configs]
