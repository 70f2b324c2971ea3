"""Synchronous D-PSGD (Lian et al. 2017) on a fixed graph, with Metropolis weights.

At its boundary a node sends its model to each neighbour and waits. Once the round-t models of all its
neighbours have landed it sets ``x_i <- W_ii x_i + sum_j W_ij x_j`` and starts round t + 1. There are no
global rounds: a node waits only for its own neighbours. A released node's next step starts at the end of
the tick in which its last awaited message landed (the one place where the tick rounds time).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from divjax import topology
from divjax.algorithms.base import Algorithm, boundary_outbox
from divjax.config import Config
from divjax.mixing import set_models, weighted_average
from divjax.queue import FATE_APPLIED, Outbox, end, per_receiver
from divjax.state import SimParams, SimSpec, SimState


@struct.dataclass
class Graph:
    """A gossip graph as padded neighbour tables.

    Attributes:
      neighbours: ``[n, D]`` neighbour ids, -1 for padding.
      weights: ``[n, D]`` Metropolis weights ``W_ij`` of those neighbours.
      self_weight: ``[n]`` ``W_ii``.
      degree: ``[n]`` number of neighbours.
    """

    neighbours: jax.Array
    weights: jax.Array
    self_weight: jax.Array
    degree: jax.Array


def init(config: Config) -> Graph:
    lists = topology.build(config.topology, config.nodes, config.degree, config.seed)
    w = topology.metropolis(lists)
    width = max(len(nb) for nb in lists)
    neighbours = np.full((config.nodes, width), -1, np.int32)
    weights = np.zeros((config.nodes, width), np.float32)
    for i, nb in enumerate(lists):
        neighbours[i, : len(nb)] = nb
        weights[i, : len(nb)] = w[i, nb]
    return Graph(neighbours=jnp.asarray(neighbours), weights=jnp.asarray(weights),
                 self_weight=jnp.asarray(np.diag(w), jnp.float32),
                 degree=jnp.asarray([len(nb) for nb in lists], jnp.int32))


def outbox(spec: SimSpec, p: SimParams, s: SimState, at_boundary: jax.Array, now: jax.Array) -> Outbox:
    return boundary_outbox(s, at_boundary, p.algo.neighbours, jnp.zeros((), jnp.int32), now)


def mix_nothing(spec: SimSpec, p: SimParams, s: SimState, at_boundary: jax.Array, own: jax.Array,
                now: jax.Array) -> SimState:
    return s  # D-PSGD mixes when its neighbours' models are all in (release), not at its boundary


def release(spec: SimSpec, p: SimParams, s: SimState, now: jax.Array) -> SimState:
    """Mix and restart every waiting node whose neighbours' models of its round have all landed."""
    graph: Graph = p.algo
    q = s.queue
    round_of_receiver = s.iteration[q.receiver] - 1
    awaited = q.landed_by(now) & s.waiting[q.receiver] & (q.sender_iter == round_of_receiver)
    ready = s.waiting & (per_receiver(awaited, q.receiver, spec.nodes) == graph.degree)
    apply = awaited & ready[q.receiver]
    sender = jnp.arange(spec.nodes)[:, None, None]
    is_sender = graph.neighbours[q.receiver] == sender  # [n, Q, D]: which neighbour slot the sender is
    weight = jnp.sum(jnp.where(is_sender, graph.weights[q.receiver], 0.0), axis=2)
    own = s.snapshots[:, jnp.arange(spec.nodes), s.latest_slot]  # a waiting node's model is its snapshot
    mixed = weighted_average(spec, s.snapshots, q, own, apply, weight, graph.self_weight)
    queue, counters = end(q, s.counters, apply, FATE_APPLIED, now)
    tick = now.astype(jnp.int32)
    return s.replace(
        params=set_models(s.params, p, ready, mixed), queue=queue, counters=counters,
        waiting=s.waiting & ~ready,
        next_step_tick=jnp.where(ready, tick + p.step_ticks, s.next_step_tick),
    )


ALGORITHM = Algorithm(name="dpsgd", out_width=lambda cfg, graph: int(graph.neighbours.shape[1]), init=init,
                      outbox=outbox, mix=mix_nothing, waits=True, release=release)
