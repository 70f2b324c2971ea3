"""How messages move: the ``fifo`` and ``shared`` transports, in exact event time.

``fifo`` (the paper's description): a sender's uplink sends its queue one message at a time, each at the
path rate ``min(up[s], down[r], cap[s, r])``. Nothing else shares that rate, so a message's completion
time is known the moment it is queued: ``complete = max(uplink free, queued at) + bits / rate``. The engine
computes it in closed form and never has to step the network.

``shared`` (the reference deployment on the wire): each (sender, receiver) pair is its own FIFO, and the
head messages of all pairs are concurrent flows that share every sender's uplink and every receiver's
downlink max-min fairly (a fluid model; per-pair caps bound single flows). Rates change whenever a flow
starts or ends, so :func:`advance_shared` runs an event loop inside each tick: rates, next completion,
advance, repeat. Within that loop, hooks can react to landings at their exact time (AD-PSGD's pongs).

Either way a message lands at ``complete + latency(s, r)``. Times are float32 tick counts.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from divjax import batching
from divjax.network import Network
from divjax.queue import (
    FATE_FLUSHED,
    Counters,
    MessageQueue,
    Outbox,
    end,
    insert,
    placement,
)

# Reacts to records landing in (since, until]: the messages to queue in response (AD-PSGD's pongs), each
# row sorted by start time, and per node how many replies did not fit in the outbox.
LandingHook = Callable[[MessageQueue, jax.Array, jax.Array], tuple[Outbox, jax.Array]]


@struct.dataclass
class Links:
    """The network on device, in bits per tick and ticks."""

    up: jax.Array  # [n] bits per tick
    down: jax.Array  # [n]
    latency: jax.Array  # [n] ticks
    group: jax.Array  # [n]
    group_cap: jax.Array  # [G, G] bits per tick
    group_latency: jax.Array  # [G, G] ticks
    header_bits: jax.Array  # scalar

    @classmethod
    def from_network(cls, net: Network, dt: float) -> "Links":
        # Convert in float64 on the host so that exactly representable rates stay exact in float32.
        per_tick = lambda bps: jnp.asarray(np.asarray(bps, np.float64) * dt, jnp.float32)  # noqa: E731
        ticks = lambda s: jnp.asarray(np.asarray(s, np.float64) / dt, jnp.float32)  # noqa: E731
        return cls(up=per_tick(net.up_bps), down=per_tick(net.down_bps), latency=ticks(net.latency_s),
                   group=jnp.asarray(net.group, jnp.int32), group_cap=per_tick(net.group_cap_bps),
                   group_latency=ticks(net.group_latency_s),
                   header_bits=jnp.asarray(net.header_bits, jnp.float32))

    def pair_cap(self, sender: jax.Array, receiver: jax.Array) -> jax.Array:
        return self.group_cap[self.group[sender], self.group[receiver]]

    def rate(self, sender: jax.Array, receiver: jax.Array) -> jax.Array:
        """Bits per tick of the path sender -> receiver carrying one message alone."""
        return jnp.minimum(jnp.minimum(self.up[sender], self.down[receiver]), self.pair_cap(sender, receiver))

    def path_latency(self, sender: jax.Array, receiver: jax.Array) -> jax.Array:
        return (self.latency[sender] + self.latency[receiver]
                + self.group_latency[self.group[sender], self.group[receiver]])


def _senders(shape: tuple[int, int]) -> jax.Array:
    return jnp.broadcast_to(jnp.arange(shape[0], dtype=jnp.int32)[:, None], shape)


def _fifo_schedule(uplink_free: jax.Array, start: jax.Array, duration: jax.Array,
                   fits: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Completion times of messages queued in order on one FIFO uplink per row.

    ``c_j = max(c_{j-1}, start_j) + dur_j`` with ``c_{-1} = uplink_free``, solved without a loop:
    ``c_j = S_j + max(free, max_{i<=j} (start_i - S_{i-1}))`` where S is the running sum of durations.
    """
    duration = jnp.where(fits, duration, 0.0)
    total = jnp.cumsum(duration, axis=1)
    ready = jnp.where(fits, start - (total - duration), -jnp.inf)
    complete = total + jnp.maximum(uplink_free[:, None], jax.lax.cummax(ready, axis=1))
    new_free = jnp.max(jnp.where(fits, complete, uplink_free[:, None]), axis=1)
    return jnp.where(fits, complete, jnp.inf), jnp.maximum(uplink_free, new_free)


def send(queue: MessageQueue, counters: Counters, out: Outbox, links: Links, fragment_bits: jax.Array,
         transport: str) -> tuple[MessageQueue, Counters]:
    """Queue an outbox (entries in send order, each row sorted by start time).

    Entries that find no free record are counted as ``overflow_queue``; they never occupy the link.
    """
    valid = out.valid
    fits, column = placement(queue, valid)
    senders = _senders(valid.shape)
    receivers = jnp.maximum(out.receiver, 0)
    bits = fragment_bits[out.fragment] + links.header_bits
    if transport == "fifo":
        duration = bits / links.rate(senders, receivers)
        complete, uplink_free = _fifo_schedule(queue.uplink_free, out.start, duration, fits)
        land = complete + links.path_latency(senders, receivers)
        queue = queue.replace(uplink_free=uplink_free)
    else:
        complete = land = jnp.full(valid.shape, jnp.inf, jnp.float32)
    queue = insert(queue, out, fits, column, bits=bits, complete=complete, land=land)
    counters = counters.add(sent=jnp.sum(valid, axis=1), overflow_queue=jnp.sum(valid & ~fits, axis=1))
    return queue, counters


def flush(queue: MessageQueue, counters: Counters, who: jax.Array, now: jax.Array
          ) -> tuple[MessageQueue, Counters]:
    """Drop every message of the senders in ``who`` whose last bit has not left by ``now``."""
    dropped = queue.in_transfer_at(now) & who[:, None]
    never = jnp.full_like(queue.land, jnp.inf)  # fifo had scheduled them: they now never complete or land
    queue = queue.replace(complete=jnp.where(dropped, never, queue.complete), land=jnp.where(dropped, never, queue.land))
    queue, counters = end(queue, counters, dropped, FATE_FLUSHED, now)
    return queue.replace(uplink_free=jnp.where(who, jnp.minimum(queue.uplink_free, now), queue.uplink_free)), counters


def answer(queue: MessageQueue, counters: Counters, on_land: LandingHook, since: jax.Array, until: jax.Array,
           links: Links, fragment_bits: jax.Array, transport: str) -> tuple[MessageQueue, Counters]:
    """Queue the replies ``on_land`` makes to what lands in ``(since, until]``."""
    replies, excess = on_land(queue, since, until)
    queue, counters = jax.lax.cond(  # sending nothing changes nothing: skip it unless some member sends
        batching.any_member(jnp.any(replies.valid)),
        lambda: send(queue, counters, replies, links, fragment_bits, transport), lambda: (queue, counters))
    return queue, counters.add(sent=excess, overflow_queue=excess)


# ---------------------------------------------------------------------------------------- shared


def pair_heads(queue: MessageQueue, now: jax.Array) -> jax.Array:
    """The message each (sender, receiver) pair is transferring at ``now``: the earliest queued one."""
    pending = queue.live & jnp.isinf(queue.complete) & (queue.start <= now)
    earlier_same_peer = (pending[:, None, :] & (queue.receiver[:, None, :] == queue.receiver[:, :, None])
                         & (queue.seq[:, None, :] < queue.seq[:, :, None]))
    return pending & ~jnp.any(earlier_same_peer, axis=2)


def max_min_rates(active: jax.Array, receiver: jax.Array, links: Links) -> jax.Array:
    """Max-min fair rates (bits per tick) of the ``[n, Q]`` active flows, by progressive filling.

    Every unfrozen flow grows at the same pace until a link it crosses is full (its sender's uplink, its
    receiver's downlink) or it reaches its own pair cap; those flows freeze, the rest keep growing.
    """
    n = active.shape[0]
    cap = links.pair_cap(_senders(active.shape), receiver)

    def grow(carry):
        rate, frozen, up_left, down_left = carry
        growing = ~frozen
        up_count = jnp.sum(growing, axis=1)
        down_count = jnp.zeros(n, jnp.int32).at[receiver.reshape(-1)].add(growing.reshape(-1).astype(jnp.int32))
        up_share = up_left / jnp.maximum(up_count, 1)
        down_share = down_left / jnp.maximum(down_count, 1)
        headroom = jnp.minimum(jnp.minimum(up_share[:, None], down_share[receiver]), cap - rate)
        # Rounding can leave a full link a hair below zero: never shrink a rate.
        step = jnp.maximum(jnp.min(jnp.where(growing, headroom, jnp.inf)), 0.0)
        rate = rate + jnp.where(growing, step, 0.0)
        up_left = jnp.maximum(up_left - step * up_count, 0.0)
        down_left = jnp.maximum(down_left - step * down_count, 0.0)
        # The flows that set the step are frozen (at least one, so the loop ends), and any within
        # rounding of it.
        frozen = frozen | (growing & (headroom <= step * (1 + 1e-6)))
        return rate, frozen, up_left, down_left

    init = (jnp.zeros(active.shape, jnp.float32), ~active, links.up, links.down)
    rate, *_ = jax.lax.while_loop(lambda c: jnp.any(~c[1]), grow, init)
    return rate


def advance_shared(queue: MessageQueue, counters: Counters, links: Links, since: jax.Array, until: jax.Array,
                   fragment_bits: jax.Array, on_land: LandingHook | None = None, *, max_events: int | None = None,
                   ) -> tuple[MessageQueue, Counters] | tuple[MessageQueue, Counters, jax.Array]:
    """Move bits over ``(since, until]``, event by event (completions, and landings if ``on_land``).

    ``max_events`` (for tests, see tests/test_reference.py): when given, the loop also counts its events,
    stops after that many even short of ``until``, and the call returns ``(queue, counters, events)``. The
    engine never passes it, so its loop carries no counter and compiles exactly as without it.
    """
    senders = _senders(queue.live.shape)
    counting = max_events is not None

    def not_done(carry):
        return (carry[2] < until) & (carry[3] < max_events) if counting else carry[2] < until

    def event(carry):
        queue, counters, now, *events = carry
        heads = pair_heads(queue, now)
        rate = max_min_rates(heads, queue.receiver, links)
        time_left = jnp.where(heads & (rate > 0), queue.bits_left / jnp.where(rate > 0, rate, 1.0), jnp.inf)
        step = jnp.min(time_left)
        first_completion = now + step
        next_time = jnp.minimum(first_completion, until)
        if on_land is not None:
            upcoming = queue.live & (queue.land > now)
            next_time = jnp.minimum(next_time, jnp.min(jnp.where(upcoming, queue.land, jnp.inf)))
        elapsed = next_time - now
        # Decide completions from time_left, not from the rounded clock: when step is below the clock's
        # float resolution, now + step == now, and the flows that set it must still finish.
        completion_event = first_completion <= next_time
        finished = heads & jnp.where(completion_event, time_left <= step, time_left <= elapsed)
        bits_left = jnp.where(finished, 0.0, queue.bits_left - rate * elapsed)
        complete = jnp.where(finished, next_time, queue.complete)
        land = jnp.where(finished, next_time + links.path_latency(senders, queue.receiver), queue.land)
        queue = queue.replace(bits_left=bits_left, complete=complete, land=land)
        if on_land is not None:
            queue, counters = answer(queue, counters, on_land, now, next_time, links, fragment_bits, "shared")
        return (queue, counters, next_time, *(count + 1 for count in events))

    init = (queue, counters, since, *([jnp.zeros((), jnp.int32)] if counting else []))
    queue, counters, _, *events = jax.lax.while_loop(not_done, event, init)
    return (queue, counters, *events)
