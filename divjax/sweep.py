"""Sweeps: several configurations with the same shapes run as one compiled program.

Configurations whose simulations share one :class:`~divjax.state.SimSpec` — other seeds, learning rates,
bandwidths, straggler slowdowns — differ only in :class:`~divjax.state.SimParams` arrays. Their params and
states are stacked on a new leading *member* axis and the tick loop runs under ``vmap``: compiled once for
the whole sweep, every member advanced at every tick, evaluated at the same simulated times.

>>> results = divjax.sweep.run([config.replace(seed=s) for s in range(8)])   # one RunResult per member

Under ``vmap`` a ``lax.cond`` on a per-member predicate would become a select running both branches at
every tick; the engine's conds reduce their predicates over the members instead (:mod:`divjax.batching`),
so a tick where no member steps or reaches a boundary stays as cheap as in a single run.

Every member is its own run (:func:`divjax.runner.simulate`): the same messages, fates, times and
iterations, and the same models and metrics up to float32 rounding. XLA compiles the vmapped program with
other shapes, which may round some fused operations differently (on CPU, the softmax cross-entropy of the
16-node synthetic benchmark differs by a few ulps after one step, and its models by under 1e-6 after
40 simulated seconds; tiny test configurations come out bit for bit).

``compile_seconds`` and ``wall_seconds`` of each member's result are the whole sweep's.
"""

from __future__ import annotations

import functools
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from divjax import engine, runner
from divjax.config import Config
from divjax.engine import Simulation
from divjax.runner import Progress, Recorder, RunResult
from divjax.state import SimParams, SimSpec, SimState

TRACES: Counter = Counter()  # compilations of the vmapped tick loop per SimSpec


@dataclass(frozen=True, eq=False)
class Sweep:
    """Simulations with one spec, and their params stacked on a leading member axis."""

    sims: tuple[Simulation, ...]
    params: SimParams

    @property
    def spec(self) -> SimSpec:
        return self.sims[0].spec

    def __len__(self) -> int:
        return len(self.sims)


@jax.jit
def stack_trees(trees: Sequence[Any]) -> Any:
    """Pytrees of one structure and shapes -> one pytree with a new leading axis (one compiled call)."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


@jax.jit
def unstack_trees(tree: Any) -> list[Any]:
    """The inverse of :func:`stack_trees`: one pytree per entry of the leading axis (one compiled call)."""
    size = jax.tree.leaves(tree)[0].shape[0]
    return [jax.tree.map(lambda x: x[i], tree) for i in range(size)]


def _layout(tree: Any) -> tuple:
    return jax.tree.structure(tree), [(np.shape(x), x.dtype) for x in jax.tree.leaves(tree)]


def _check_compatible(sims: Sequence[Simulation]) -> None:
    """Members must compile to one program and be evaluated in lockstep; name what differs."""
    first = sims[0]
    for i, sim in enumerate(sims[1:], start=1):
        if sim.mesh is not None or first.mesh is not None:
            raise ValueError("sweeps of sharded simulations are not supported: sweep unsharded ones")
        if sim.spec != first.spec:
            differs = [f for f in first.spec.__dataclass_fields__ if getattr(sim.spec, f) != getattr(first.spec, f)]
            raise ValueError(f"sweep member {i} has other shapes than member 0 ({', '.join(differs)} differ): "
                             "a sweep needs configurations that differ only in numbers (seed, lr, bandwidths, ...)")
        for name, a, b in [("dt", first.dt, sim.dt), ("duration", first.config.duration, sim.config.duration),
                           ("evaluation period", first.config.evaluation_period, sim.config.evaluation_period)]:
            if a != b:
                raise ValueError(f"sweep member {i} has {name}={b} but member 0 has {a}: members run in lockstep")
        if not np.array_equal(sim.eval_nodes, first.eval_nodes):
            raise ValueError(f"sweep member {i} evaluates other nodes than member 0: members run in lockstep")
        if _layout(sim.params) != _layout(first.params):
            raise ValueError(f"sweep member {i} has params of other shapes than member 0 (its data?)")


def stack(sims: Sequence[Simulation]) -> Sweep:
    """A sweep of built simulations (at least one) that share one spec."""
    if not sims:
        raise ValueError("a sweep needs at least one simulation")
    _check_compatible(sims)
    return Sweep(sims=tuple(sims), params=stack_trees([sim.params for sim in sims]))


def initial_states(sweep: Sweep) -> SimState:
    """Every member's initial state, stacked (each made exactly as its own run makes it)."""
    return stack_trees([sim.initial_state() for sim in sweep.sims])


@functools.partial(jax.jit, static_argnums=(0,), donate_argnums=(2,))
def _advance(spec: SimSpec, p: SimParams, s: SimState, ticks: jax.Array) -> SimState:
    TRACES[spec] += 1
    return jax.vmap(lambda p, s: engine.run_ticks(spec, p, s, ticks))(p, s)


def advance(sweep: Sweep, states: SimState, ticks: int) -> SimState:
    """Simulate ``ticks`` more ticks of every member (compiled once per spec and sweep size)."""
    return _advance(sweep.spec, sweep.params, states, jnp.asarray(ticks, jnp.int32))


def simulate(sweep: Sweep, *, progress: bool = True, label: str | None = None,
             after_evaluation: Sequence[Callable[[Progress], None]] | None = None) -> list[RunResult]:
    """Run every member for ``config.duration``, evaluating every ``config.evaluation_period``: one
    :class:`~divjax.runner.RunResult` per member, as :func:`divjax.runner.simulate` would give it.
    ``after_evaluation``: one callback per member, called with its :class:`Progress` after every evaluation."""
    first = sweep.sims[0]
    start = time.perf_counter()
    states = advance(sweep, initial_states(sweep), 0)  # compiles the vmapped tick loop (a no-op run)
    jax.block_until_ready(states)
    compile_seconds = time.perf_counter() - start

    runs = [Progress(state=state, entries=[], node_accuracy=[], done=0) for state in unstack_trees(states)]
    hooks = after_evaluation if after_evaluation is not None else [None] * len(sweep)
    recorders = [Recorder(sim, run, hook) for sim, run, hook in zip(sweep.sims, runs, hooks, strict=True)]

    def record(states: SimState) -> SimState:  # each member is evaluated as its own run is
        members = unstack_trees(states)
        return stack_trees([record_member(state) for record_member, state in zip(recorders, members)])

    states = record(states)
    bar = runner.progress_bar(first, 0, progress, label or f"sweep of {len(sweep)} {first.config.algorithm}")
    for ticks in runner.evaluation_intervals(first, 0):
        states = advance(sweep, states, ticks)
        for run in runs:
            run.done += ticks
        states = record(states)
        bar.update(round(ticks * first.dt, 6))
    bar.close()
    wall = time.perf_counter() - start
    return [runner.result_of(sim, run, compile_seconds, wall) for sim, run in zip(sweep.sims, runs)]


def run(configs: Sequence[Config], *, progress: bool = True) -> list[RunResult]:
    """Validate, build and run configurations of one shape as one sweep."""
    return simulate(stack([engine.build(cfg) for cfg in configs]), progress=progress)
