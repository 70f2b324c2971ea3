"""Mixing received models into a node's own: a weighted average per fragment, read from snapshot rings.

Every algorithm here mixes the same way, only with other weights and another choice of records:

    x_i[f] <- (w_i * x_i[f] + sum_records w_rec * snapshot_rec[f]) / (w_i + sum_records w_rec)

DivShare, Swift and AD-PSGD take w = 1 for everything (the reference's per-coordinate count rule); D-PSGD
takes Metropolis weights (which sum to one).

The snapshot ring is fragment-major, ``[m, n, S, L]``, and there are two implementations of the sum, which
give the same numbers up to float rounding (tested):

* ``dense``: per ring slot and fragment, the ``[n, n]`` matrix of weights of which sender each receiver
  applies, times that slot's ``[n, L]`` rows: one batched matmul per slot that any applied record points
  at (the others are skipped: DivShare's applied records mostly sit in one slot of its ring). Its cost
  grows as n^2, but dense matmuls are what CPUs do best: it is the faster form for small n. (Where a
  payload is not finite the dense sum is not finite either, since a matmul spreads it through zero
  weights; the gather form then runs instead.)
* ``gather``: the applied records are compacted first, then their payloads are gathered and scattered into
  the receivers' sums a block at a time; the cost follows the records actually applied (about n*J*d floats
  per round) and the transient memory is one block. The form for large n.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from divjax import batching
from divjax.fragments import to_flat
from divjax.queue import (
    FATE_APPLIED,
    FATE_SUPERSEDED,
    MessageQueue,
    end,
    newest_per_pair,
)
from divjax.state import SimParams, SimSpec, SimState, tree_select, unflatten_models

DENSE_MAX_COLUMNS = 512  # "auto" uses the dense form while n * S stays below this


def choose_dense(choice: str, nodes: int, slots: int) -> bool:
    """``dense``, ``gather`` or ``auto`` (dense for small n * S) -> whether to use the dense form."""
    if choice not in ("auto", "dense", "gather"):
        raise ValueError(f"mixing={choice!r} is not allowed: expected auto, dense or gather")
    return choice == "dense" or (choice == "auto" and nodes * slots <= DENSE_MAX_COLUMNS)


def _dense_sums(spec: SimSpec, snapshots: jax.Array, queue: MessageQueue, apply: jax.Array,
                weight: jax.Array) -> tuple[jax.Array, jax.Array]:
    n, slots = spec.nodes, spec.snapshot_slots
    sender = jnp.broadcast_to(jnp.arange(n)[:, None], queue.slot.shape)
    weights = jnp.zeros((slots, spec.fragments, n, n), jnp.float32).at[
        queue.slot, queue.fragment, queue.receiver, sender].add(jnp.where(apply, weight, 0.0))
    active = jnp.zeros(slots, bool).at[queue.slot].max(apply)

    def add_slot(slot, total):
        def add(total):
            ring = jax.lax.dynamic_index_in_dim(snapshots, slot, axis=2, keepdims=False)  # [m, n, L]
            return total + jnp.einsum("frk,fkl->frl", weights[slot], ring, precision=jax.lax.Precision.HIGHEST)
        # Memory-bound: each slot's matmul reads all n models, so slots nobody applies are not read.
        return jax.lax.cond(batching.any_member(active[slot]), add, lambda total: total, total)

    total = jax.lax.fori_loop(0, slots, add_slot,
                              jnp.zeros((spec.fragments, n, spec.fragment_width), jnp.float32))
    return total, jnp.sum(weights, axis=(0, 3))


def _gather_sums(spec: SimSpec, snapshots: jax.Array, queue: MessageQueue, apply: jax.Array,
                 weight: jax.Array) -> tuple[jax.Array, jax.Array]:
    n, capacity = queue.live.shape
    records = n * capacity
    flat = apply.reshape(-1)
    count = jnp.sum(flat, dtype=jnp.int32)
    # The applied records first: the i-th applied record's flat index goes to position i.
    position = jnp.where(flat, jnp.cumsum(flat) - 1, records)
    order = jnp.zeros(records, jnp.int32).at[position].set(jnp.arange(records, dtype=jnp.int32), mode="drop")
    sender = order // capacity
    column = order % capacity
    block = spec.mix_block

    def add_block(carry):
        start, total, weights = carry
        idx = start + jnp.arange(block)
        valid = idx < count
        s, c = sender[jnp.minimum(idx, records - 1)], column[jnp.minimum(idx, records - 1)]
        fragment, receiver = queue.fragment[s, c], jnp.where(valid, queue.receiver[s, c], n)
        w = jnp.where(valid, weight[s, c], 0.0)
        payload = snapshots[fragment, s, queue.slot[s, c]]  # [block, L]
        total = total.at[fragment, receiver].add(w[:, None] * payload, mode="drop")
        weights = weights.at[fragment, receiver].add(w, mode="drop")
        return start + block, total, weights

    init = (jnp.zeros((), jnp.int32), jnp.zeros((spec.fragments, n, spec.fragment_width), jnp.float32),
            jnp.zeros((spec.fragments, n), jnp.float32))
    _, total, weights = jax.lax.while_loop(lambda c: c[0] < count, add_block, init)
    return total, weights


def weighted_average(spec: SimSpec, snapshots: jax.Array, queue: MessageQueue, own: jax.Array,
                     apply: jax.Array, weight: jax.Array, self_weight: jax.Array) -> jax.Array:
    """Mix the records where ``apply`` holds into ``own`` (``[m, n, L]``) with the given weights."""
    args = (snapshots, queue, apply, weight)
    gather = functools.partial(_gather_sums, spec)
    if spec.mix_dense:
        total, weights = _dense_sums(spec, *args)
        # In a matmul a zero weight times a NaN payload is NaN: a non-finite model in the ring (a diverged
        # node) makes the dense sum non-finite, and only the gather form keeps it out of the receivers that
        # did not apply it. Under a sweep's vmap the per-member cond runs both: only when some member diverged.
        finite = jnp.all(jnp.isfinite(total))
        dense = lambda *_: (total, weights)
        per_member = lambda *args: jax.lax.cond(finite, dense, gather, *args)
        total, weights = jax.lax.cond(batching.all_members(finite), dense, per_member, *args)
    else:
        total, weights = gather(*args)
    return (self_weight[None, :, None] * own + total) / (self_weight + weights)[..., None]


def set_models(params, p: SimParams, who: jax.Array, fragments: jax.Array):
    """Replace the models of the nodes in ``who`` by ``fragments`` (``[m, n, L]`` layout)."""
    new = unflatten_models(to_flat(jnp.swapaxes(fragments, 0, 1), p.fragment_position), params)
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
