"""An event-driven reference simulator: docs/semantics.md, one event at a time, in plain Python.

This is an independent second implementation of what :mod:`divjax.engine` simulates, written to be read
and checked by eye: one :class:`Node` object per node, a heap of timed events, float64 times, numpy for
the model arithmetic, and a jitted single-node SGD step. It shares with the engine only what *defines* a
run: the built :class:`~divjax.engine.Simulation` (config, network, fragment layout, data, step times)
and the random draws of :mod:`divjax.randomness` (recipients, ping targets, minibatches). Queues,
transports and mixing are re-implemented here from the semantics, not reused.

Unlike the engine it has no tick: every event happens at its exact time, including the restart of a
D-PSGD node released by a landing. Simultaneous events run in the documented order (step completions,
then landings and AD-PSGD pongs, then D-PSGD releases, then iteration boundaries); transfer completions
come just before landings, so a flush at time t keeps a message whose last bit left at t.

Usage::

    sim = divjax.engine.build(config)
    result = divjax.reference.simulate(sim, until=10.0)
    result.params, result.counters["flushed"], result.messages[0]
"""

from __future__ import annotations

import functools
import heapq
import itertools
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any, Callable

import jax
import numpy as np
from jax.flatten_util import ravel_pytree

from divjax import topology
from divjax.randomness import (
    STREAM_INIT,
    batch_plan,
    fragment_messages,
    ping_targets,
    stream,
)

# Priorities of simultaneous events: lower runs first.
STEP, COMPLETE, LAND, RELEASE, BOUNDARY = range(5)

FATES = ("applied", "superseded", "flushed")
COUNTERS = ("sent", *FATES, "delivered", "received")

# Relative slack when deciding which flows a full link freezes (float64 rounding only).
_EPS = 1e-12


@dataclass(eq=False)
class MessageRecord:
    """One message, from the moment it is queued to its end.

    Attributes:
      sender, seq: who sent it and its number among that sender's messages (0, 1, 2, ... in queue order).
      receiver, fragment: where it goes and which fragment of the model it carries (0 for full models).
      kind: ``data`` (DivShare, Swift, D-PSGD), ``ping`` or ``pong`` (AD-PSGD).
      sender_iter: the sender's iteration whose snapshot it carries (-1: the initial model, pongs only).
      values: the carried parameters (the snapshot at the fragment's coordinates).
      bits: its size on the wire.
      queued_at, completed_at, landed_at: when it was queued, its last bit left, it reached the receiver.
      fate: ``applied``, ``superseded``, ``flushed`` or ``in_flight``; ended_at: when it ended.
    """

    sender: int
    seq: int
    receiver: int
    fragment: int
    kind: str
    sender_iter: int
    values: np.ndarray
    bits: float
    queued_at: float
    completed_at: float | None = None
    landed_at: float | None = None
    fate: str = "in_flight"
    ended_at: float | None = None


@dataclass
class ReferenceResult:
    """What :func:`simulate` returns.

    Attributes:
      params: ``[n, d]`` float32 flat models at the end (``ravel_pytree`` order).
      messages: every message queued, in queue order.
      counters: per node ``sent``, ``applied``, ``superseded``, ``flushed``, ``delivered`` (by sender) and
        ``received`` (landings, by receiver).
      iterations: ``[n]`` completed iterations.
      boundary_times: per node, the time of each of its iteration boundaries.
    """

    params: np.ndarray
    messages: list[MessageRecord]
    counters: dict[str, np.ndarray]
    iterations: np.ndarray
    boundary_times: list[list[float]]


class Node:
    """One node: its model, where it is in its iteration, its latest snapshot and its receive buffer."""

    def __init__(self, index: int, model: np.ndarray, step_time: float):
        self.index = index
        self.model = model.copy()
        self.step_time = step_time
        self.iteration = 0  # iterations completed; the current one is `iteration` (0-based)
        self.steps_done = 0  # local steps done in the current iteration
        self.batches: tuple[np.ndarray, np.ndarray] | None = None  # (indices [K, B], mask [K, B])
        self.snapshot = model.copy()  # the latest pre-aggregation model (θ₀ before the first boundary)
        self.snapshot_iter = -1
        self.buffer: list[MessageRecord] = []  # landed, not yet mixed
        self.waiting = False  # D-PSGD: blocked at a boundary until its neighbours' models are in
        self.next_seq = 0
        self.boundary_times: list[float] = []


# ------------------------------------------------------------------------------------------ transports


class FifoTransport:
    """``fifo``: each sender's uplink sends its messages one at a time, in queue order, at the path rate."""

    def __init__(self, ref: "Reference"):
        self.ref = ref
        self.waiting: list[deque[MessageRecord]] = [deque() for _ in ref.nodes]
        self.sending: list[MessageRecord | None] = [None for _ in ref.nodes]

    def queue(self, msg: MessageRecord) -> None:
        self.waiting[msg.sender].append(msg)
        if self.sending[msg.sender] is None:
            self._start_next(msg.sender)

    def flush(self, sender: int) -> list[MessageRecord]:
        """Drop the sender's message in transfer and everything queued behind it."""
        dropped = [m for m in (self.sending[sender], *self.waiting[sender]) if m is not None]
        self.sending[sender] = None
        self.waiting[sender].clear()
        return dropped

    def _start_next(self, sender: int) -> None:
        if not self.waiting[sender]:
            self.sending[sender] = None
            return
        msg = self.waiting[sender].popleft()
        self.sending[sender] = msg
        duration = msg.bits / float(self.ref.path_rate[sender, msg.receiver])
        self.ref.schedule(self.ref.now + duration, COMPLETE, self._on_complete, msg)

    def _on_complete(self, msg: MessageRecord) -> None:
        if self.sending[msg.sender] is not msg:
            return  # flushed while in transfer
        self.ref.complete(msg)
        self._start_next(msg.sender)


class SharedTransport:
    """``shared``: one FIFO per (sender, receiver) pair; the pairs' head messages are concurrent flows
    sharing the uplinks and downlinks max-min fairly (a fluid model, rates recomputed at every change)."""

    def __init__(self, ref: "Reference"):
        self.ref = ref
        self.pairs: dict[tuple[int, int], deque[MessageRecord]] = {}
        self.bits_left: dict[MessageRecord, float] = {}
        self.rates: dict[tuple[int, int], float] = {}
        self.finish_at: dict[tuple[int, int], float] = {}  # when each head completes at the current rates
        self.progress_at = 0.0  # the time up to which `bits_left` is current
        self.version = 0  # invalidates scheduled completions when the rates change

    def queue(self, msg: MessageRecord) -> None:
        self._progress()
        self.pairs.setdefault((msg.sender, msg.receiver), deque()).append(msg)
        self.bits_left[msg] = msg.bits
        self._reschedule()

    def flush(self, sender: int) -> list[MessageRecord]:
        """Drop every unfinished message of the sender, the ones in transfer included."""
        self._progress()
        dropped = []
        for pair in [p for p in self.pairs if p[0] == sender]:
            dropped.extend(self.pairs.pop(pair))
        for msg in dropped:
            del self.bits_left[msg]
        self._reschedule()
        return dropped

    def _heads(self) -> dict[tuple[int, int], MessageRecord]:
        return {pair: fifo[0] for pair, fifo in self.pairs.items()}

    def _progress(self) -> None:
        """Move every flow's bits from `progress_at` to now at the current rates."""
        elapsed = self.ref.now - self.progress_at
        for pair, head in self._heads().items():
            self.bits_left[head] = max(0.0, self.bits_left[head] - self.rates[pair] * elapsed)
        self.progress_at = self.ref.now

    def _reschedule(self) -> None:
        self.rates = max_min_rates(list(self.pairs), self.ref.network)
        self.finish_at = {pair: self.ref.now + self.bits_left[head] / self.rates[pair]
                          for pair, head in self._heads().items()}
        self.version += 1
        if self.finish_at:
            self.ref.schedule(min(self.finish_at.values()), COMPLETE, self._on_complete, self.version)

    def _on_complete(self, version: int) -> None:
        """The heads predicted to finish now do (at least one: no rounding residue can stall the loop)."""
        if version != self.version:
            return  # the rates changed since this completion was predicted
        self._progress()
        for pair, head in self._heads().items():
            if self.finish_at[pair] <= self.ref.now:
                self.pairs[pair].popleft()
                if not self.pairs[pair]:
                    del self.pairs[pair]
                del self.bits_left[head]
                self.ref.complete(head)
        self._reschedule()


def max_min_rates(flows: list[tuple[int, int]], network: Any) -> dict[tuple[int, int], float]:
    """Max-min fair rates (bit/s) of (sender, receiver) flows, by progressive filling.

    Every flow that is not frozen grows at the same pace until its sender's uplink or its receiver's
    downlink is full, or it reaches its pair's cap; then it freezes and the others keep growing. A flow's
    headroom is the least of its links' fair shares of what is left and of its distance to its cap; the
    flows whose headroom is the smallest freeze at each round (at least one, so the loop ends).
    """
    cap = {f: float(network.group_cap_bps[network.group[f[0]], network.group[f[1]]]) for f in flows}
    rate = dict.fromkeys(flows, 0.0)
    up_left = {s: float(network.up_bps[s]) for s, _ in flows}
    down_left = {r: float(network.down_bps[r]) for _, r in flows}
    growing = set(flows)
    while growing:
        up_count = Counter(s for s, _ in growing)
        down_count = Counter(r for _, r in growing)
        headroom = {f: min(up_left[f[0]] / up_count[f[0]], down_left[f[1]] / down_count[f[1]], cap[f] - rate[f])
                    for f in growing}
        step = min(headroom.values())
        for f in growing:
            rate[f] += step
        for s, c in up_count.items():
            up_left[s] -= step * c
        for r, c in down_count.items():
            down_left[r] -= step * c
        growing = {f for f in growing if headroom[f] > step * (1 + _EPS)}
    return rate


# ------------------------------------------------------------------------------------------ simulator


class Reference:
    """The event loop and the algorithms. Build one per run; :func:`simulate` is the entry point."""

    def __init__(self, sim: Any):
        cfg = sim.config
        self.sim = sim
        self.config = cfg
        self.algorithm = cfg.algorithm
        self.network = sim.network
        self.path_rate = sim.network.path_rate_bps()
        self.path_latency = sim.network.path_latency_s()
        self.index_sets = sim.layout.index_sets()
        self.now = 0.0
        self.events: list = []
        self._order = itertools.count()  # last tiebreak: scheduling order
        self.messages: list[MessageRecord] = []
        self.counters = {name: np.zeros(cfg.nodes, np.int64) for name in COUNTERS}

        task = sim.spec.task
        flat0, unravel = ravel_pytree(task.init_params(stream(cfg.seed, STREAM_INIT)))
        self.nodes = [Node(i, np.asarray(flat0, np.float32), float(t)) for i, t in enumerate(sim.step_times)]
        self.train_x = np.asarray(sim.data.train.x)
        self.train_y = np.asarray(sim.data.train.y)
        self.train_sizes = np.asarray(sim.data.train.sizes)
        self._sgd_step = _make_sgd_step(task, unravel, cfg.lr)
        self._batch_plan = jax.jit(functools.partial(
            batch_plan, local_steps=cfg.local_steps, batch_size=cfg.batch_size,
            max_size=sim.spec.max_shard, epochs=sim.spec.epochs))
        if self.algorithm == "dpsgd":
            self.neighbours = topology.build(cfg.topology, cfg.nodes, cfg.degree, cfg.seed)
            self.mixing_matrix = topology.metropolis(self.neighbours)
        # What the algorithm does at a boundary, after the snapshot.
        self._act = {"divshare": self._divshare, "swift": self._swift, "adpsgd": self._adpsgd,
                     "dpsgd": self._dpsgd_send}[self.algorithm]
        self.transport = {"fifo": FifoTransport, "shared": SharedTransport}[self.network.transport](self)
        for node in self.nodes:
            node.batches = self._batches(node)
            self.schedule(node.step_time, STEP, self._on_step, node)

    # -------------------------------------------------------------- event loop

    def schedule(self, time: float, priority: int, handler: Callable, arg: Any, tiebreak: tuple = ()) -> None:
        """Run ``handler(arg)`` at ``time``; equal times run by priority, then tiebreak, then order."""
        heapq.heappush(self.events, (time, priority, tiebreak, next(self._order), handler, arg))

    def run(self, until: float) -> ReferenceResult:
        """Process every event at a time <= ``until``."""
        while self.events and self.events[0][0] <= until:
            time, _, _, _, handler, arg = heapq.heappop(self.events)
            self.now = time
            handler(arg)
        return ReferenceResult(
            params=np.stack([node.model for node in self.nodes]),
            messages=self.messages,
            counters=self.counters,
            iterations=np.array([node.iteration for node in self.nodes]),
            boundary_times=[node.boundary_times for node in self.nodes],
        )

    # -------------------------------------------------------------- computation

    def _batches(self, node: Node) -> tuple[np.ndarray, np.ndarray]:
        """The minibatches of the node's current iteration."""
        idx, mask = self._batch_plan(self.sim.params.data_key, node.index, node.iteration,
                                     self.train_sizes[node.index])
        return np.asarray(idx), np.asarray(mask)

    def _on_step(self, node: Node) -> None:
        """A local SGD step completes; after the K-th, the iteration boundary follows at the same time."""
        idx, mask = node.batches
        h, i = node.steps_done, node.index
        node.model = np.asarray(self._sgd_step(node.model, self.train_x[i][idx[h]], self.train_y[i][idx[h]],
                                               mask[h]))
        node.steps_done += 1
        if node.steps_done == self.config.local_steps:
            self.schedule(self.now, BOUNDARY, self._on_boundary, node)
        else:
            self.schedule(self.now + node.step_time, STEP, self._on_step, node)

    def _on_boundary(self, node: Node) -> None:
        """Snapshot, let the algorithm act, start the next iteration (D-PSGD: wait for the neighbours)."""
        node.boundary_times.append(self.now)
        node.snapshot, node.snapshot_iter = node.model.copy(), node.iteration
        self._act(node)
        node.iteration += 1
        node.steps_done = 0
        node.batches = self._batches(node)
        if self.algorithm == "dpsgd":
            node.waiting = True
            self._on_release(node)
        else:
            self.schedule(self.now + node.step_time, STEP, self._on_step, node)

    # -------------------------------------------------------------- messages

    def send(self, node: Node, receiver: int, fragment: int, kind: str) -> None:
        """Queue a message carrying the node's latest snapshot at the fragment's coordinates."""
        values = node.snapshot[self.index_sets[fragment]]
        msg = MessageRecord(sender=node.index, seq=node.next_seq, receiver=int(receiver), fragment=int(fragment),
                            kind=kind, sender_iter=node.snapshot_iter, values=values,
                            bits=32.0 * len(values) + self.network.header_bits, queued_at=self.now)
        node.next_seq += 1
        self.messages.append(msg)
        self.counters["sent"][node.index] += 1
        self.transport.queue(msg)

    def complete(self, msg: MessageRecord) -> None:
        """The message's last bit has left the sender: it lands one path latency later."""
        msg.completed_at = self.now
        self.schedule(self.now + float(self.path_latency[msg.sender, msg.receiver]), LAND, self._on_land, msg,
                      tiebreak=(msg.sender, msg.seq))

    def _on_land(self, msg: MessageRecord) -> None:
        msg.landed_at = self.now
        self.counters["delivered"][msg.sender] += 1
        self.counters["received"][msg.receiver] += 1
        receiver = self.nodes[msg.receiver]
        receiver.buffer.append(msg)
        if msg.kind == "ping":
            self.send(receiver, msg.sender, 0, "pong")
        if receiver.waiting:
            self.schedule(self.now, RELEASE, self._on_release, receiver)

    def end(self, msg: MessageRecord, fate: str) -> None:
        msg.fate, msg.ended_at = fate, self.now
        self.counters[fate][msg.sender] += 1

    # -------------------------------------------------------------- algorithms

    def _divshare(self, node: Node) -> None:
        for msg in self.transport.flush(node.index):
            self.end(msg, "flushed")
        self._swift(node)

    def _swift(self, node: Node) -> None:
        """Queue the J*m (receiver, fragment) messages in their drawn order, then mix."""
        receivers, fragments = _fragment_messages(self.sim.params.comm_key, node.index, node.iteration,
                                                  self.config.nodes, self.config.fragments, self.config.degree)
        for receiver, fragment in zip(np.asarray(receivers), np.asarray(fragments)):
            self.send(node, receiver, fragment, "data")
        self._mix_newest(node)

    def _adpsgd(self, node: Node) -> None:
        targets = _ping_targets(self.sim.params.comm_key, node.index, node.iteration, self.config.nodes,
                                self.config.degree // 2)
        for receiver in np.asarray(targets):
            self.send(node, receiver, 0, "ping")
        self._mix_newest(node)

    def _mix_newest(self, node: Node) -> None:
        """Per coordinate, ``x <- (x + sum of received) / (1 + count)`` over the newest landed copy of
        every (sender, fragment); older copies are superseded."""
        newest: dict[tuple[int, int], MessageRecord] = {}
        for msg in sorted(node.buffer, key=lambda m: (m.landed_at, m.seq)):
            key = (msg.sender, msg.fragment)
            if key in newest:
                self.end(newest[key], "superseded")
            newest[key] = msg
        total = node.model.astype(np.float64)
        count = np.ones_like(total)
        for msg in newest.values():
            coords = self.index_sets[msg.fragment]
            total[coords] += msg.values
            count[coords] += 1
            self.end(msg, "applied")
        node.model = (total / count).astype(np.float32)
        node.buffer = []

    def _dpsgd_send(self, node: Node) -> None:
        for receiver in self.neighbours[node.index]:
            self.send(node, receiver, 0, "data")

    def _on_release(self, node: Node) -> None:
        """D-PSGD: once the models of the round just finished have landed from every neighbour, mix them
        with Metropolis weights and start the next iteration."""
        round_ = node.iteration - 1
        awaited = [msg for msg in node.buffer if msg.sender_iter == round_]
        if not node.waiting or len(awaited) < len(self.neighbours[node.index]):
            return
        weights = self.mixing_matrix[node.index]
        total = weights[node.index] * node.model.astype(np.float64)
        for msg in awaited:
            total += weights[msg.sender] * msg.values
            self.end(msg, "applied")
        node.model = total.astype(np.float32)
        node.buffer = [msg for msg in node.buffer if msg.sender_iter != round_]
        node.waiting = False
        self.schedule(self.now + node.step_time, STEP, self._on_step, node)


_fragment_messages = jax.jit(fragment_messages, static_argnums=(3, 4, 5))
_ping_targets = jax.jit(ping_targets, static_argnums=(3, 4))


def _make_sgd_step(task: Any, unravel: Callable, lr: float) -> Callable:
    """One plain-SGD step of one node on its flat model, jitted."""

    @jax.jit
    def step(flat, x, y, mask):
        params = unravel(flat)
        grads = jax.grad(task.loss)(params, x, y, mask)
        return ravel_pytree(jax.tree.map(lambda p, g: p - lr * g, params, grads))[0]

    return step


def simulate(sim: Any, until: float) -> ReferenceResult:
    """Run the built simulation ``sim`` (:func:`divjax.engine.build`) up to simulated time ``until``."""
    return Reference(sim).run(until)
