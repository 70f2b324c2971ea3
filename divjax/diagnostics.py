"""What a run measured, next to what the theory needs: host-side post-processing of the opt-in message log
and of the simulation state, so it costs nothing when it is off.

Build the simulation with a log large enough for the run, run it, then read the log::

    sim = divjax.build(config, log_messages=diagnostics.log_capacity(config))
    result = divjax.simulate(sim)
    applied = diagnostics.applied_messages(sim, result.state)   # every applied fragment: who, when, how stale
    mixing = diagnostics.measured_mixing(sim, result.state)     # W of every iteration, E[W], lambda_2, rho
    diagnostics.delivery(result.state)                          # per node: sent, delivered, flushed, ratios

and, driving the engine yourself, ``trace(sim, every)`` records the consensus distance (and, on the
quadratic task, ``||grad f(x_bar)||^2``) at every ``every`` simulated seconds.

**Iterations.** A node's iteration k ends at its k-th boundary (k = 0, 1, ...), where it snapshots the
model it sends (``sender_iter = k``; -1 is the initial model an AD-PSGD pong may carry) and mixes what it
received. Except under D-PSGD nodes never wait, so node i's boundary k is at tick ``(k + 1) K s_i`` (K local
steps of ``s_i`` ticks, docs/semantics.md): the log's application tick gives the receiver's iteration and
the sender's iteration gives the snapshot's time, exactly. D-PSGD mixes, at the end of round k, exactly
the neighbours' round-k models (its release rule), so there the receiver's iteration is the sender's.

**Staleness** of an applied fragment: receiver iteration - sender iteration (1 when a copy sent at one
boundary is mixed at the receiver's next one; negative when the sender runs ahead of a slower receiver),
and its **age**: application time - snapshot time, in simulated seconds.

**Mixing.** At each boundary, for each fragment f, a node i applying copies from R senders sets
``x_i[f] <- (x_i[f] + sum_s x_s[f]) / (1 + R)`` (DivShare, Swift, AD-PSGD): row i of that iteration's
``W^(f)`` holds ``1/(1+R)`` on i and on each of the R senders (the identity row when nothing arrived).
The W of iteration t is built from every node's boundary t, so it is one round of the synchronous theory
when nodes run at equal speed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import numpy as np

from divjax import engine, metrics, theory, topology
from divjax.config import Config
from divjax.engine import Simulation
from divjax.queue import FATE_APPLIED, FATE_COUNTER
from divjax.runner import COUNTER_NAMES
from divjax.state import SimState, flatten_models
from divjax.tasks.quadratic import QuadraticObjective

# ------------------------------------------------------------------------------------------ the log


def log_capacity(config: Config, margin: float = 1.1) -> int:
    """Log entries enough for every message a run of ``config`` can end: ``n`` senders x messages per
    boundary (twice that for AD-PSGD: a pong per ping) x boundaries of the fastest node, times ``margin``
    (which also covers step times rounded to the tick, by at most 1 % without a warning)."""
    per_boundary = config.messages_per_iteration
    if config.algorithm == "dpsgd":
        per_boundary = max(map(len, topology.build(config.topology, config.nodes, config.degree, config.seed)))
    if config.algorithm == "adpsgd":
        per_boundary *= 2
    boundaries = math.floor(config.duration / (config.local_steps * config.step_time)) + 1
    return int(math.ceil(margin * config.nodes * per_boundary * boundaries))


def log_columns(state: SimState) -> dict[str, np.ndarray]:
    """The message log as numpy columns (``sender``, ``receiver``, ``fragment``, ``kind``, ``sender_iter``,
    ``seq``, ``start``, ``complete``, ``land``, ``ended`` in ticks, ``fate``), one entry per ended message.
    Raises if the run was built without a log or the log overflowed."""
    log = state.counters.log
    count = int(log.count)
    if log.capacity == 0:
        raise ValueError("this run kept no message log: build it with log_messages=diagnostics.log_capacity(config)")
    if count > log.capacity:
        raise ValueError(f"the message log overflowed ({count} ended messages > {log.capacity} entries): "
                         "build with a larger log_messages (diagnostics.log_capacity(config))")
    names = ("sender", "seq", "receiver", "fragment", "kind", "sender_iter", "start", "complete", "land",
             "ended", "fate")
    return {name: np.asarray(getattr(log, name))[:count] for name in names}


def fate_counts(state: SimState) -> dict[str, np.ndarray]:
    """Per sender, the logged messages by how they ended (``applied``, ``superseded``, ``flushed``,
    ``overflow_snapshot``): equal to the counters of the same names when the log kept everything."""
    log = log_columns(state)
    n = state.iteration.shape[0]
    return {name: np.bincount(log["sender"][log["fate"] == fate], minlength=n)
            for fate, name in FATE_COUNTER.items()}


# ------------------------------------------------------------------------------------------ applied messages


@dataclass
class AppliedMessages:
    """Every applied message of a run, one entry per (receiver, boundary, sender, fragment).

    Attributes:
      sender, receiver, fragment, kind: who sent what to whom (``queue.KIND_*``).
      sender_iter: the sender's iteration whose snapshot it carried (-1: the initial model).
      receiver_iter: the receiver's iteration at whose boundary it was mixed in.
      snapshot_time, applied_time: when the carried snapshot was taken and when it was mixed in (s).
    """

    sender: np.ndarray
    receiver: np.ndarray
    fragment: np.ndarray
    kind: np.ndarray
    sender_iter: np.ndarray
    receiver_iter: np.ndarray
    snapshot_time: np.ndarray
    applied_time: np.ndarray

    @property
    def staleness(self) -> np.ndarray:
        """Receiver iteration - sender iteration."""
        return self.receiver_iter - self.sender_iter

    @property
    def age(self) -> np.ndarray:
        """Application time - snapshot time, in simulated seconds."""
        return self.applied_time - self.snapshot_time

    def summary(self, senders: np.ndarray | None = None, quantiles: tuple[float, ...] = (0.5, 0.9, 0.99)
                ) -> dict[str, float]:
        """Max, mean and quantiles (the tail) of staleness and age, over the messages from ``senders``
        (node ids; all if omitted), and how many messages that is."""
        keep = np.ones(self.sender.size, bool) if senders is None else np.isin(self.sender, senders)
        out: dict[str, float] = {"messages": float(keep.sum())}
        for name, values in (("staleness", self.staleness[keep]), ("age_s", self.age[keep])):
            if values.size == 0:
                continue
            out[f"{name}_max"] = float(values.max())
            out[f"{name}_mean"] = float(values.mean())
            out.update({f"{name}_p{round(100 * q)}": float(np.quantile(values, q)) for q in quantiles})
        return out


def boundary_period(sim: Simulation) -> np.ndarray:
    """``[n]`` ticks from one boundary of each node to its next when it never waits: ``K s_i``."""
    return sim.config.local_steps * np.asarray(sim.params.step_ticks, np.int64)


def applied_messages(sim: Simulation, state: SimState) -> AppliedMessages:
    """Every applied message of the run, with the receiver's iteration and the snapshot's time derived
    exactly from the log and the step times (see the module docstring)."""
    log = log_columns(state)
    applied = log["fate"] == FATE_APPLIED
    col = {k: v[applied] for k, v in log.items()}
    if sim.config.algorithm == "dpsgd":
        receiver_iter, snapshot_tick = col["sender_iter"], col["start"].astype(np.float64)
    else:
        period = boundary_period(sim)
        boundaries = col["ended"].astype(np.float64) / period[col["receiver"]]
        receiver_iter = np.rint(boundaries).astype(np.int64) - 1
        if np.any(np.abs(boundaries - np.rint(boundaries)) > 1e-9):
            raise AssertionError("an applied message ended off its receiver's boundary grid")
        snapshot_tick = (col["sender_iter"] + 1.0) * period[col["sender"]]
    return AppliedMessages(
        sender=col["sender"], receiver=col["receiver"], fragment=col["fragment"], kind=col["kind"],
        sender_iter=col["sender_iter"].astype(np.int64), receiver_iter=receiver_iter.astype(np.int64),
        snapshot_time=snapshot_tick * sim.dt, applied_time=col["ended"].astype(np.float64) * sim.dt)


# ------------------------------------------------------------------------------------------ delivery


def delivery(state: SimState) -> dict[str, np.ndarray]:
    """Per node: the message counters (``sent``, ``delivered``, ``applied``, ``superseded``, ``flushed``,
    ``overflow_*``, all by sender; ``received`` by receiver), ``in_flight`` at the end, and the ratios
    ``delivery_ratio = delivered / sent`` and ``applied_ratio = applied / sent``."""
    out = {name: np.asarray(getattr(state.counters, name)) for name in COUNTER_NAMES}
    out["in_flight"] = np.asarray(state.queue.live.sum(axis=1))
    sent = np.maximum(out["sent"], 1)
    out["delivery_ratio"] = out["delivered"] / sent
    out["applied_ratio"] = out["applied"] / sent
    return out


def delivery_probabilities(state: SimState) -> np.ndarray:
    """``[n]`` the share of each sender's ended messages that were applied: the per-sender delivery
    probability p_s of :func:`divjax.theory.divshare_expected_mixing` (messages still in flight at the end,
    and AD-PSGD's pings, which a peer answers rather than only applies, count like any other)."""
    counts = delivery(state)
    ended = counts["sent"] - counts["in_flight"]
    return counts["applied"] / np.maximum(ended, 1)


def pair_delivery_probabilities(state: SimState) -> np.ndarray:
    """``[n, n]``: ``p[s, r]``, the share of the messages from s to r that ended (log) that r applied; a pair
    that exchanged none takes the sender's :func:`delivery_probabilities`. For
    :func:`divjax.theory.divshare_expected_mixing` when deliveries depend on the receiver too."""
    log = log_columns(state)
    n = state.iteration.shape[0]
    pair = log["sender"] * n + log["receiver"]
    ended = np.bincount(pair, minlength=n * n).reshape(n, n)
    applied = np.bincount(pair[log["fate"] == FATE_APPLIED], minlength=n * n).reshape(n, n)
    fallback = np.broadcast_to(delivery_probabilities(state)[:, None], (n, n))
    return np.where(ended > 0, applied / np.maximum(ended, 1), fallback)


# ------------------------------------------------------------------------------------------ mixing


def mixing_matrices(sim: Simulation, state: SimState, skip: int = 1,
                    applied: AppliedMessages | None = None) -> np.ndarray:
    """``[T, m, n, n]``: the count-rule mixing matrix of every fragment at every iteration ``skip, ...,
    skip + T - 1`` that all nodes completed (see the module docstring). ``skip = 1`` leaves out the first
    boundary, at which nothing has arrived yet."""
    if sim.config.algorithm == "dpsgd":
        raise ValueError("D-PSGD mixes with the fixed Metropolis matrix theory.dpsgd_mixing, not a count rule")
    applied = applied if applied is not None else applied_messages(sim, state)
    n, m = sim.config.nodes, sim.spec.fragments
    rounds = int(np.asarray(state.iteration).min()) - skip
    if rounds < 1:
        raise ValueError(f"no iteration past the first {skip} was completed by every node")
    t = applied.receiver_iter - skip
    keep = (t >= 0) & (t < rounds)
    t, f, r, s = t[keep], applied.fragment[keep], applied.receiver[keep], applied.sender[keep]
    received = np.zeros((rounds, m, n, n))
    received[t, f, r, s] = 1.0
    if received.sum() != keep.sum():
        raise AssertionError("a node applied two copies of one (sender, fragment) at one boundary")
    w = received + np.eye(n)
    return w / w.sum(axis=3, keepdims=True)


@dataclass
class MeasuredMixing:
    """The mixing of a run, measured.

    Attributes:
      iterations: the iterations whose matrices were measured.
      mean: E[W], the mean of every iteration's and fragment's W.
      running_lambda2: ``lambda_2`` of the running mean of W after each iteration (fragments pooled): it
        settles on ``lambda_2(E[W])`` from above, as the noise of the mean averages out.
      estimate: lambda_2, rho and the moments with standard errors (:func:`divjax.theory.estimate_mixing`:
        moments from the even iterations, projections from the odd ones).
      perron: the Perron vector of ``mean``: each node's weight in the network's fixed point.
    """

    iterations: np.ndarray
    mean: np.ndarray
    running_lambda2: np.ndarray
    estimate: theory.MonteCarloMixing
    perron: np.ndarray


def measured_mixing(sim: Simulation, state: SimState, skip: int = 1, reference_mean: np.ndarray | None = None,
                    reference_second: np.ndarray | None = None) -> MeasuredMixing:
    """Measure E[W], lambda_2, rho and the Perron vector of a run (see :class:`MeasuredMixing`). With a
    reference E[W] (and E[W^T Pi W]), lambda_2 (and rho) are measured along the reference's top singular
    (eigen) vectors: unbiased for the reference's value when the reference is right."""
    w = mixing_matrices(sim, state, skip)
    per_iteration = w.mean(axis=1)
    running = np.cumsum(per_iteration, axis=0) / np.arange(1, len(w) + 1)[:, None, None]
    flat = lambda part: [part.reshape(-1, *w.shape[2:])]  # noqa: E731
    estimate = theory.estimate_mixing(flat(w[0::2]), flat(w[1::2]) if len(w) > 1 else flat(w),
                                      reference_mean, reference_second)
    mean = per_iteration.mean(axis=0)
    return MeasuredMixing(iterations=np.arange(skip, skip + len(w)), mean=mean,
                          running_lambda2=np.array([theory.lambda2(x) for x in running]),
                          estimate=estimate, perron=theory.perron_vector(mean))


# ------------------------------------------------------------------------------------------ trajectories


@dataclass
class Trace:
    """Quantities of the stacked models over a run, one entry per recorded point.

    Attributes:
      time: simulated seconds.
      iterations: ``[points, n]`` iterations each node had completed.
      consensus_distance: ``(1/n) sum_i ||x_i - x_bar||^2``.
      gradient_norm2: ``||grad f(x_bar)||^2`` on the union of the training sets (with an ``objective``),
        else ``None``.
      state: the state at the last point.
    """

    time: np.ndarray
    iterations: np.ndarray
    consensus_distance: np.ndarray
    gradient_norm2: np.ndarray | None
    state: SimState

    def average_gradient_norm2(self) -> np.ndarray:
        """The running average ``(1/(t+1)) sum_{u <= t} ||grad f(x_bar_u)||^2`` over recorded points: the
        left-hand side of convergence theorems."""
        g = self.gradient_norm2
        return np.cumsum(g) / np.arange(1, len(g) + 1)


@jax.jit
def _consensus(params) -> jax.Array:
    return metrics.consensus_distance(flatten_models(params))


def trace(sim: Simulation, every: float, state: SimState | None = None,
          objective: QuadraticObjective | None = None, duration: float | None = None) -> Trace:
    """Advance ``sim`` from ``state`` (default: its initial state; a state passed in is consumed, as by
    :func:`divjax.engine.advance`) for ``duration`` simulated seconds (default: the config's), recording at
    the start and every ``every`` seconds the consensus distance and, given the task's ``objective``
    (:func:`divjax.tasks.quadratic.objective`), ``||grad f(x_bar)||^2``. With nodes of equal speed and
    ``every`` a multiple of the iteration, points fall right after mixing."""
    state = state if state is not None else sim.initial_state()
    total = engine.ticks_for(sim.config.duration if duration is None else duration, sim.dt)
    chunk = engine.ticks_for(every, sim.dt)
    points: list[tuple[float, np.ndarray, float, float]] = []
    done = 0
    while True:
        gradient = objective.gradient_norm2(jax.device_get(state.params)) if objective else math.nan
        points.append((done * sim.dt, np.asarray(state.iteration), float(_consensus(state.params)), gradient))
        if done >= total:
            break
        ticks = min(chunk, total - done)
        state = engine.advance(sim, state, ticks)
        done += ticks
    time, iterations, consensus, gradient = (np.array(x) for x in zip(*points))
    return Trace(time=time, iterations=iterations, consensus_distance=consensus,
                 gradient_norm2=gradient if objective else None, state=state)


# ------------------------------------------------------------------------------------------ per-node data


def node_data_accuracy(sim: Simulation, state: SimState) -> np.ndarray:
    """``[n, n]``: the accuracy of node i's model (row) on node j's training shard (column), so that
    ``acc[:, j]`` says how well the network's models fit node j's own data (a straggler's classes, say)."""
    task, train = sim.spec.task, sim.data.train
    masks = train.mask()

    def on_shards(params):
        return jax.vmap(lambda x, y, mask: task.evaluate(params, x, y, mask)["accuracy"])(train.x, train.y, masks)

    return np.asarray(jax.jit(jax.vmap(on_shards))(state.params))
