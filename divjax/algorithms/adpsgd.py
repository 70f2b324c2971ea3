"""AD-PSGD as the reference implements it (spec/reference-impl.md §4), not Lian et al.'s atomic version.

At each boundary a node snapshots its model and pings ``J // 2`` peers drawn uniformly *with replacement*,
each ping carrying the snapshot. A node answers every ping the moment it lands with a pong carrying its own
latest snapshot (the initial model before its first boundary). At its boundary a node averages uniformly
its own model and the latest model landed from each sender. Nothing is ever flushed.

Pings landing at one node at the same instant are answered in order of sender id, then send order.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from divjax import batching
from divjax.algorithms.base import Algorithm, boundary_outbox, no_arrays
from divjax.mixing import mix_newest
from divjax.queue import KIND_PING, KIND_PONG, MessageQueue, Outbox
from divjax.randomness import ping_targets
from divjax.state import SimParams, SimSpec, SimState


def outbox(spec: SimSpec, p: SimParams, s: SimState, at_boundary: jax.Array, now: jax.Array) -> Outbox:
    targets = jax.vmap(ping_targets, (None, 0, 0, None, None))(
        p.comm_key, jnp.arange(spec.nodes), s.iteration, spec.nodes, spec.degree // 2)
    return boundary_outbox(s, at_boundary, targets, jnp.zeros((), jnp.int32), now, kind=KIND_PING)


def on_land(spec: SimSpec, p: SimParams, s: SimState):
    """Pongs for the pings that land in ``(since, until]``, each row sorted by landing time."""
    n, width = spec.nodes, spec.pong_width

    def answer(queue: MessageQueue, since: jax.Array, until: jax.Array) -> tuple[Outbox, jax.Array]:
        pinged = queue.live & (queue.kind == KIND_PING) & (queue.land > since) & (queue.land <= until)
        # Most ticks no ping lands: skip the sort then (pongs_for answers nothing when nothing is pinged).
        return jax.lax.cond(batching.any_member(jnp.any(pinged)), lambda: pongs_for(queue, pinged), no_pongs)

    def no_pongs() -> tuple[Outbox, jax.Array]:
        empty = jnp.full((n, width), -1, jnp.int32)
        zeros = jnp.zeros((n, width), jnp.int32)
        return Outbox(receiver=empty, fragment=zeros, kind=zeros, start=jnp.zeros((n, width), jnp.float32),
                      slot=zeros, sender_iter=zeros), jnp.zeros(n, jnp.int32)

    def pongs_for(queue: MessageQueue, pinged: jax.Array) -> tuple[Outbox, jax.Array]:
        responder = jnp.where(pinged, queue.receiver, n).reshape(-1)  # n sorts after every node
        requester = jnp.broadcast_to(jnp.arange(n)[:, None], pinged.shape).reshape(-1)
        land, seq = queue.land.reshape(-1), queue.seq.reshape(-1)
        order = jnp.lexsort((seq, requester, land, responder))
        responder, requester, land = responder[order], requester[order], land[order]
        rank = jnp.arange(responder.size) - jnp.searchsorted(responder, responder, side="left")
        fits = (responder < n) & (rank < width)
        rows, cols = jnp.where(fits, responder, n), jnp.where(fits, rank, width)
        table = lambda fill, values, dtype: jnp.full((n, width), fill, dtype).at[rows, cols].set(  # noqa: E731
            values.astype(dtype), mode="drop")
        slot = s.latest_slot[:, None]
        pongs = Outbox(receiver=table(-1, requester, jnp.int32),
                       fragment=jnp.zeros((n, width), jnp.int32),
                       kind=jnp.full((n, width), KIND_PONG, jnp.int32),
                       start=table(0.0, land, jnp.float32),
                       slot=jnp.broadcast_to(slot, (n, width)),
                       sender_iter=jnp.broadcast_to(
                           jnp.take_along_axis(s.snapshot_iter, slot, axis=1), (n, width)))
        excess = jnp.zeros(n, jnp.int32).at[responder].add(((responder < n) & ~fits).astype(jnp.int32),
                                                           mode="drop")
        return pongs, excess

    return answer


ALGORITHM = Algorithm(name="adpsgd", out_width=lambda cfg, _: cfg.degree // 2, init=no_arrays,
                      outbox=outbox, mix=mix_newest, on_land=on_land)
