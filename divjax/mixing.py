"""Mixing received models into a node's own: a weighted average per fragment, read from snapshot rings.

Every algorithm here mixes the same way, only with other weights and another choice of records:

    x_i[f] <- (w_i * x_i[f] + sum_records w_rec * snapshot_rec[f]) / (w_i + sum_records w_rec)

DivShare, Swift and AD-PSGD take w = 1 for everything (the reference's per-coordinate count rule); D-PSGD
takes Metropolis weights (which sum to one). Payloads are gathered from the senders' snapshot rings a few
queue columns at a time, so the transient memory is ``n * mix_block * L`` floats, never ``n^2 * d``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from divjax.fragments import to_flat
from divjax.queue import FATE_APPLIED, FATE_SUPERSEDED, MessageQueue, end, newest_per_pair
from divjax.state import SimParams, SimSpec, SimState, tree_select, unflatten_models


def weighted_average(spec: SimSpec, snapshots: jax.Array, queue: MessageQueue, own: jax.Array,
                     apply: jax.Array, weight: jax.Array, self_weight: jax.Array) -> jax.Array:
    """Mix the records where ``apply`` holds into ``own`` (``[n, m, L]``) with the given weights."""
    n = spec.nodes
    rows = jnp.arange(n)[:, None]

    def add_block(block: int, carry: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        total, weights = carry
        cols = block * spec.mix_block + jnp.arange(spec.mix_block)
        receiver = jnp.where(apply[:, cols], queue.receiver[:, cols], n)  # n: dropped by the scatter
        fragment = queue.fragment[:, cols]
        w = weight[:, cols]
        payload = snapshots[rows, queue.slot[:, cols], fragment]  # [n, block, L]
        total = total.at[receiver, fragment].add(w[..., None] * payload, mode="drop")
        weights = weights.at[receiver, fragment].add(w, mode="drop")
        return total, weights

    total = own * self_weight[:, None, None]
    weights = jnp.broadcast_to(self_weight[:, None], own.shape[:2])
    carry = (total, weights)
    for block in range(spec.queue_capacity // spec.mix_block):
        carry = add_block(block, carry)
    total, weights = carry
    return total / weights[..., None]


def set_models(params: jax.Array, p: SimParams, who: jax.Array, fragments: jax.Array):
    """Replace the models of the nodes in ``who`` by ``fragments`` (``[n, m, L]`` layout)."""
    new = unflatten_models(to_flat(fragments, p.fragment_position), params)
    return tree_select(who, new, params)


def mix_newest(spec: SimSpec, p: SimParams, s: SimState, receivers: jax.Array, own: jax.Array,
               now: jax.Array) -> SimState:
    """The reference's aggregation: for each node in ``receivers``, the newest landed copy of every
    (sender, fragment) is averaged in with weight 1, its own model too; older copies are superseded."""
    eligible = s.queue.landed_by(now) & receivers[s.queue.receiver]
    newest, superseded = newest_per_pair(s.queue, eligible)
    ones = jnp.ones(newest.shape, own.dtype)
    mixed = weighted_average(spec, s.snapshots, s.queue, own, newest, ones, jnp.ones(spec.nodes, own.dtype))
    queue, counters = end(s.queue, s.counters, newest, FATE_APPLIED, now)
    queue, counters = end(queue, counters, superseded, FATE_SUPERSEDED, now)
    return s.replace(params=set_models(s.params, p, receivers, mixed), queue=queue, counters=counters)
