"""Experiments that put what the engine measures next to what the theory predicts (spec/paper.md §5).

* :func:`averaging_run`: **pure averaging** (a task whose loss is identically zero, so only mixing moves the
  models) from scattered models, with the message log on: the consensus distance per iteration against
  ``rho^t`` and against the one-iteration-delayed recursion that the reference's order of operations gives
  (:func:`divjax.theory.averaging_curve`); the measured E[W], lambda_2 and rho against their closed forms
  with the measured per-sender delivery probabilities; staleness and deliveries.
* :func:`consensus_experiment`, :func:`mixing_experiment`: sweeps of it over J, and over Omega and
  stragglers.
* :func:`gradient_run`, :func:`gradient_experiment`: DivShare on the quadratic task, the averaged
  ``||grad f(x_bar_t)||^2`` against iterations T and nodes n, next to the leading term every
  Theorem-1-type bound shares, ``2 sqrt(2 L (f(x_0) - f*) sigma^2 / (n T))`` (:func:`leading_term`).

Every function takes sizes as arguments: ``benchmarks/theory_checks.py`` runs them at a meaningful size,
``notebooks/theory.ipynb`` and the tests at a tiny one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from divjax import diagnostics, engine, theory
from divjax import network as network_lib
from divjax.config import Config, NetworkConfig, TaskConfig
from divjax.engine import Simulation
from divjax.state import SimState
from divjax.tasks import quadratic
from divjax.tasks.base import NodeShards, Params, TaskData

# ------------------------------------------------------------------------------------------ pure averaging


@dataclass(frozen=True)
class AveragingTask:
    """A model ``{"w": [dim]}`` whose loss is identically zero: SGD leaves it unchanged, so a run only
    averages. Its metrics are zero."""

    dim: int = 200
    name: str = "averaging"
    eval_node_batch: int = 1024

    def init_params(self, key: jax.Array) -> Params:
        return {"w": jnp.zeros(self.dim, jnp.float32)}

    def loss(self, params: Params, x: jax.Array, y: jax.Array, mask: jax.Array) -> jax.Array:
        return jnp.zeros((), jnp.float32)

    def evaluate(self, params: Params, x: jax.Array, y: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
        return {"accuracy": jnp.zeros((), jnp.float32), "loss": jnp.zeros((), jnp.float32)}


def _placeholder_data(nodes: int) -> TaskData:
    """One dummy sample per node (the minibatch plan needs a shard; the zero loss never reads it)."""
    shards = NodeShards(x=jnp.zeros((nodes, 1, 1), jnp.float32), y=jnp.zeros((nodes, 1), jnp.int32),
                        sizes=jnp.ones(nodes, jnp.int32), size_floor=1)
    return TaskData(train=shards, test=NodeShards(x=shards.x[:1], y=shards.y[:1], sizes=shards.sizes[:1]))


def averaging_config(nodes: int, degree: int, omega: float = 1.0, algorithm: str = "divshare",
                     stragglers: int = 0, slowdown: float = 1.0, rounds: int = 20, dim: int = 200,
                     load: float = 0.25, seed: int = 0) -> Config:
    """Pure averaging of ``dim``-parameter models, one iteration a second (one zero-loss step of 1 s),
    ``rounds`` mixing rounds (``task.dim`` holds the model size: build it with :func:`averaging_simulation`).

    Bandwidth: a regular node needs the fraction ``load`` of an iteration to send its ``J d`` floats
    (``fifo``, 1 ms links), so it delivers everything; a straggler ``slowdown`` times slower gets out about
    the fraction ``1 / (load * slowdown)`` of its messages before its next boundary flushes the rest.
    """
    bits = degree * dim * 32
    network = NetworkConfig(preset="stragglers" if stragglers else "uniform", stragglers=stragglers,
                            slowdown=slowdown if stragglers else 1.0, fast_mbps=bits / (load * 1e6),
                            latency_ms=1.0)
    return Config(algorithm=algorithm, nodes=nodes, degree=degree, omega=omega, local_steps=1, batch_size=1,
                  lr=1.0, step_time=1.0, duration=rounds + 1.0, eval_every=1.0, seed=seed, network=network,
                  task=TaskConfig(name="quadratic", dim=dim))


def averaging_simulation(config: Config) -> Simulation:
    """Build pure averaging for ``config`` (:class:`AveragingTask` with ``task.dim`` parameters in place of
    the task the config names), message log on."""
    return engine.build(config, task=AveragingTask(dim=config.task.dim), data=_placeholder_data(config.nodes),
                        log_messages=diagnostics.log_capacity(config))


def scattered_state(sim: Simulation, seed: int = 0) -> SimState:
    """The initial state with independent N(0, 1) models on every node (sent snapshots included)."""
    state = sim.initial_state()
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape), x.dtype), state.params)
    latest = sim.spec.snapshot_slots - 1
    return state.replace(params=params,
                         snapshots=state.snapshots.at[:, :, latest].set(engine.own_fragments(sim.params, params)))


@dataclass
class AveragingRun:
    """One pure-averaging run, measured and predicted.

    Attributes:
      config: the run.
      consensus: ``Xi_t / Xi_0`` measured after t = 0, 1, ... mixing rounds.
      synchronous, delayed: the same predicted by :func:`divjax.theory.averaging_curve` (``x <- W x``;
        the reference's one-iteration delay), with the measured per-pair delivery probabilities.
      lambda2: ``||E[W] Pi||`` of the closed-form E[W] (DivShare, Swift) with the measured per-pair delivery
        probabilities (exact when deliveries are independent).
      rho: the closed form with the measured per-sender probabilities (it takes no per-pair ones: with the
        reference's both-ways stragglers an approximation); ``nan`` for AD-PSGD (no closed form).
      delivery, pair_delivery: ``[n]`` and ``[n, n]`` measured delivery probabilities (per sender; per
        sender -> receiver pair).
      mixing: the measured mixing (lambda_2 and rho along the closed form's vectors, with standard errors).
      predicted_perron: the Perron vector of the closed-form E[W].
      applied: every applied message (staleness, age).
      counters: per-node message counters (:func:`divjax.diagnostics.delivery`).
    """

    config: Config
    consensus: np.ndarray
    synchronous: np.ndarray
    delayed: np.ndarray
    rho: float
    lambda2: float
    delivery: np.ndarray
    pair_delivery: np.ndarray
    mixing: diagnostics.MeasuredMixing
    predicted_perron: np.ndarray
    applied: diagnostics.AppliedMessages
    counters: dict[str, np.ndarray]

    @property
    def stragglers(self) -> np.ndarray:
        return network_lib.from_config(self.config.network, self.config.nodes).stragglers()

    def row(self) -> dict[str, Any]:
        """The run's headline numbers, flat (one row of a results table)."""
        cfg, est = self.config, self.mixing.estimate
        slow, n = self.stragglers, cfg.nodes
        fast = np.setdiff1d(np.arange(n), slow)
        iterations = len(self.mixing.iterations) + 1
        return {
            "algorithm": cfg.algorithm, "nodes": n, "degree": cfg.degree, "omega": cfg.omega,
            "fragments": cfg.fragments, "stragglers": len(slow), "slowdown": cfg.network.slowdown,
            "delivery_fast": float(self.delivery[fast].mean()),
            "delivery_stragglers": float(self.delivery[slow].mean()) if len(slow) else math.nan,
            "flushed_per_straggler_iteration": (float(self.counters["flushed"][slow].mean() / iterations)
                                                if len(slow) else math.nan),
            "lambda2_closed_form": self.lambda2, "lambda2_measured": est.lambda2, "lambda2_se": est.lambda2_se,
            "lambda2_plugin": theory.lambda2(self.mixing.mean),
            "rho_closed_form": self.rho, "rho_measured": est.rho, "rho_se": est.rho_se,
            "perron_stragglers_closed_form": float(self.predicted_perron[slow].mean()) if len(slow) else math.nan,
            "perron_stragglers_measured": float(self.mixing.perron[slow].mean()) if len(slow) else math.nan,
            "consensus_rate_measured": decay_rate(self.consensus),
            "consensus_rate_delayed": decay_rate(self.delayed),
            **{k: v for k, v in self.applied.summary().items() if k != "messages"},
        }


def decay_rate(curve: np.ndarray, skip: int = 1, floor: float = 1e-6) -> float:
    """The mean per-round factor ``(Xi_T / Xi_skip)^(1/(T - skip))`` of a consensus curve ``Xi_t / Xi_0``
    (after the first ``skip`` rounds: the delayed recursion alternates at first), T the last round above
    ``floor`` (float32 models stop contracting near 1e-7 relative)."""
    last = int(np.flatnonzero(curve > floor)[-1])
    return float((curve[last] / curve[skip]) ** (1.0 / (last - skip))) if last > skip else math.nan


def _predictions(config: Config, delivery: np.ndarray, pair_delivery: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray | None, theory.Sampler]:
    """(E[W], E[W^T Pi W] or None, a sampler of W) for the run's algorithm and measured deliveries."""
    n, degree = config.nodes, config.degree
    if config.algorithm in ("divshare", "swift"):
        return (theory.divshare_expected_mixing(n, degree, pair_delivery),
                theory.divshare_second_moment(n, degree, delivery),
                theory.divshare_sampler(n, degree, pair_delivery))
    if config.algorithm == "adpsgd":
        return theory.adpsgd_expected_mixing(n, degree), None, theory.adpsgd_sampler(n, degree)
    raise ValueError(f"pure averaging compares count-rule algorithms (divshare, swift, adpsgd), not {config.algorithm}")


def averaging_run(config: Config, repeats: int = 64, seed: int = 0) -> AveragingRun:
    """Run pure averaging for ``config`` (see :func:`averaging_config`) and put it next to the theory."""
    sim = averaging_simulation(config)
    trace = diagnostics.trace(sim, every=config.local_steps * config.step_time, state=scattered_state(sim, seed))
    consensus = trace.consensus_distance[1:]  # after boundary 0 (nothing to mix yet), 1, 2, ...
    delivery = diagnostics.delivery_probabilities(trace.state)
    pair_delivery = diagnostics.pair_delivery_probabilities(trace.state)
    mean, second, sample = _predictions(config, delivery, pair_delivery)
    rounds = len(consensus) - 1
    return AveragingRun(
        config=config, consensus=consensus / consensus[0],
        synchronous=theory.averaging_curve(sample, rounds, dim=1, repeats=repeats, seed=seed),
        delayed=theory.averaging_curve(sample, rounds, delayed=True, dim=1, repeats=repeats, seed=seed),
        rho=theory.rho(second) if second is not None else math.nan, lambda2=theory.lambda2(mean),
        delivery=delivery, pair_delivery=pair_delivery, mixing=diagnostics.measured_mixing(sim, trace.state, reference_mean=mean,
                                                              reference_second=second),
        predicted_perron=theory.perron_vector(mean), applied=diagnostics.applied_messages(sim, trace.state),
        counters=diagnostics.delivery(trace.state))


def consensus_experiment(nodes: int, degrees: list[int], rounds: int = 20, omega: float = 0.1,
                         dim: int = 200, seed: int = 0) -> list[AveragingRun]:
    """Pure averaging with full delivery for each J in ``degrees`` (spec/paper.md §5.4's table: J = 3, 6,
    9, 12 at n = 60)."""
    return [averaging_run(averaging_config(nodes, degree, omega, rounds=rounds, dim=dim, seed=seed), seed=seed)
            for degree in degrees]


def mixing_experiment(nodes: int, degree: int, omegas: list[float], stragglers: int,
                      slowdowns: list[float], rounds: int = 60, dim: int = 200, seed: int = 0) -> list[AveragingRun]:
    """Pure averaging for every Omega in ``omegas``, without stragglers and with ``stragglers`` nodes slowed
    by each factor in ``slowdowns`` (runs with the same Omega share one compilation)."""
    settings = [(0, 1.0)] + [(stragglers, s) for s in slowdowns]
    return [averaging_run(averaging_config(nodes, degree, omega, stragglers=count, slowdown=slow, rounds=rounds,
                                           dim=dim, seed=seed), seed=seed)
            for omega in omegas for count, slow in settings]


# ------------------------------------------------------------------------------------------ gradient norm


def quadratic_config(nodes: int, iterations: int, lr: float, degree: int = 3, omega: float = 0.5,
                     batch_size: int = 1, dim: int = 10, zeta: float = 0.0, sigma: float = 1.0,
                     samples_per_node: int = 64, seed: int = 0) -> Config:
    """DivShare on the quadratic task, one SGD step per iteration (K = 1: T iterations are T steps), full
    delivery (a uniform network far faster than needed)."""
    return Config(algorithm="divshare", nodes=nodes, degree=degree, omega=omega, local_steps=1,
                  batch_size=batch_size, lr=lr, step_time=1.0, duration=float(iterations), eval_every=1.0,
                  seed=seed, network=NetworkConfig(preset="uniform", stragglers=0, fast_mbps=100.0, latency_ms=1.0),
                  task=TaskConfig(name="quadratic", dim=dim, zeta=zeta, sigma=sigma,
                                  samples_per_node=samples_per_node))


@dataclass(frozen=True)
class LeadingTerm:
    """The leading term of a Theorem-1-type bound on ``(1/T) sum_t E||grad f(x_bar_t)||^2``.

    Minibatch SGD on f with n nodes' gradients averaged, step eta <= 1/L:
    ``(1/T) sum_t E||grad f(x_t)||^2 <= 2 Delta/(eta T) + L eta sigma^2/n`` (Delta = f(x_0) - f*, sigma^2
    the variance of one node's minibatch gradient). At ``eta* = sqrt(2 Delta n/(L sigma^2 T))`` the bound is
    ``2 sqrt(2 Delta L sigma^2/(n T))``: the sigma/sqrt(nT) term that decentralized bounds share, their
    consensus terms being of higher order in 1/T.
    """

    smoothness: float  # L = lambda_max(H)
    gap: float  # Delta = f(0) - f*
    variance: float  # sigma^2 of one node's minibatch gradient at x*

    def bound(self, nodes: int, iterations: int) -> float:
        return 2.0 * math.sqrt(2.0 * self.gap * self.smoothness * self.variance / (nodes * iterations))

    def step(self, nodes: int, iterations: int) -> float:
        """``eta*``, capped at ``1/(2L)``."""
        eta = math.sqrt(2.0 * self.gap * nodes / (self.smoothness * self.variance * iterations))
        return min(eta, 0.5 / self.smoothness)


def leading_term(objective: quadratic.QuadraticObjective, batch_size: int) -> LeadingTerm:
    """The constants of :class:`LeadingTerm` for a quadratic task's objective (every node starts at 0)."""
    origin = np.zeros_like(objective.optimum)
    return LeadingTerm(smoothness=float(np.linalg.eigvalsh(objective.hessian)[-1]),
                       gap=objective.value(origin) - objective.optimal_value,
                       variance=objective.gradient_variance() / batch_size)


def gradient_run(config: Config) -> dict[str, float]:
    """Run ``config`` (:func:`quadratic_config`) and average ``||grad f(x_bar_t)||^2`` over its T iterations
    (x_bar_t after t iterations, t = 0 .. T-1)."""
    sim = engine.build(config)
    objective = quadratic.objective(sim.data)
    trace = diagnostics.trace(sim, every=config.local_steps * config.step_time, objective=objective)
    term = leading_term(objective, config.batch_size)
    iterations = len(trace.time) - 1
    measured = float(trace.gradient_norm2[:-1].mean())  # t = 0 .. T-1, as the theorems average
    bound = term.bound(config.nodes, iterations)
    return {"nodes": config.nodes, "iterations": iterations, "lr": config.lr, "avg_grad_norm2": measured,
            "leading_term": bound, "ratio": measured / bound,
            "final_consensus_distance": float(trace.consensus_distance[-1])}


def gradient_experiment(nodes: list[int], iterations: list[int], seed: int = 0,
                        **task: Any) -> list[dict[str, float]]:
    """For every n and T: DivShare on the quadratic task with the step ``eta*(n, T)`` of
    :class:`LeadingTerm`, the measured average of ``||grad f(x_bar_t)||^2`` and the leading term
    (``task``: keyword arguments of :func:`quadratic_config`). Runs with the same n share one compilation."""
    rows = []
    for n in nodes:
        base = quadratic_config(n, max(iterations), lr=1.0, seed=seed, **task)
        _, data = quadratic.build(base.task, n, base.seed)
        term = leading_term(quadratic.objective(data), base.batch_size)
        for t in iterations:
            rows.append(gradient_run(base.replace(duration=float(t), lr=term.step(n, t))))
    return rows
