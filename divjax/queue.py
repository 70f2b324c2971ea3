"""The delay queue: fixed-capacity tables of message *records*, never copies of parameters.

Each sender owns a row of ``Q`` records. A record says who receives which fragment of which of the
sender's model snapshots, and when its transfer completes and it lands. Payloads are read from the
sender's snapshot ring only when the receiver mixes them in. A record lives from the moment it is queued
until it is applied, superseded, flushed or evicted; every one of those ends is counted in
:class:`Counters`, so that for every node

    sent = applied + superseded + flushed + overflowed + in flight (live records).

Times are float32 tick counts (tick k ends at simulated time ``k * dt``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

KIND_DATA = 0  # a fragment (DivShare, Swift) or a full model (D-PSGD)
KIND_PING = 1  # AD-PSGD: a model that asks for a reply
KIND_PONG = 2  # AD-PSGD: the reply

NEVER = jnp.inf

# How a record ends (the message log's ``fate``); a record still live at the end is in flight.
FATE_APPLIED = 0
FATE_SUPERSEDED = 1
FATE_FLUSHED = 2
FATE_EVICTED = 3  # its snapshot slot was reused before it was applied (snapshot ring too small)
FATE_COUNTER = {FATE_APPLIED: "applied", FATE_SUPERSEDED: "superseded", FATE_FLUSHED: "flushed",
                FATE_EVICTED: "overflow_snapshot"}


@struct.dataclass
class MessageQueue:
    """``[n, Q]`` message records, one row per sender.

    Attributes:
      live: the record holds a message that has not ended yet.
      receiver, fragment, kind: who gets what.
      slot: the sender's snapshot slot holding the payload; ``sender_iter``: the iteration it was taken at.
      seq: the sender's running message number (send order; per-peer FIFO order for ``shared``).
      start: when the message was queued.
      bits_left: bits still to transfer (``shared`` transport).
      complete: when its last bit leaves the sender (``inf`` while unknown).
      land: when it reaches the receiver's buffer, ``complete + latency`` (``inf`` while unknown).
      next_seq: ``[n]`` next message number of each sender.
      uplink_free: ``[n]`` when each sender's uplink finishes what it holds (``fifo`` transport).
    """

    live: jax.Array
    receiver: jax.Array
    fragment: jax.Array
    kind: jax.Array
    slot: jax.Array
    sender_iter: jax.Array
    seq: jax.Array
    start: jax.Array
    bits_left: jax.Array
    complete: jax.Array
    land: jax.Array
    next_seq: jax.Array
    uplink_free: jax.Array

    @classmethod
    def empty(cls, n: int, capacity: int) -> "MessageQueue":
        ints = jnp.zeros((n, capacity), jnp.int32)
        never = jnp.full((n, capacity), NEVER, jnp.float32)
        return cls(live=jnp.zeros((n, capacity), bool), receiver=ints, fragment=ints, kind=ints, slot=ints,
                   sender_iter=ints, seq=ints, start=jnp.zeros((n, capacity), jnp.float32),
                   bits_left=jnp.zeros((n, capacity), jnp.float32), complete=never, land=never,
                   next_seq=jnp.zeros(n, jnp.int32), uplink_free=jnp.zeros(n, jnp.float32))

    @property
    def capacity(self) -> int:
        return self.live.shape[1]

    def landed_by(self, now: jax.Array) -> jax.Array:
        """Records that are in their receiver's buffer at time ``now``."""
        return self.live & (self.land <= now)

    def in_transfer_at(self, now: jax.Array) -> jax.Array:
        """Records whose last bit has not left the sender at time ``now``."""
        return self.live & (self.complete > now)


@struct.dataclass
class Outbox:
    """``[n, M]`` messages a step wants to send, in send order; ``receiver < 0`` marks an empty entry."""

    receiver: jax.Array
    fragment: jax.Array
    kind: jax.Array
    start: jax.Array
    slot: jax.Array
    sender_iter: jax.Array

    @property
    def valid(self) -> jax.Array:
        return self.receiver >= 0


@struct.dataclass
class MessageLog:
    """An opt-in log of every record that ended, in the order they ended (capacity 0 when off).

    Every field is ``[C]``; ``count`` says how many entries are filled (entries past the capacity are
    counted but not kept). ``ended`` is the tick at which the record ended; ``fate`` one of ``FATE_*``.
    """

    count: jax.Array
    sender: jax.Array
    seq: jax.Array
    receiver: jax.Array
    fragment: jax.Array
    kind: jax.Array
    sender_iter: jax.Array
    start: jax.Array
    complete: jax.Array
    land: jax.Array
    ended: jax.Array
    fate: jax.Array

    @classmethod
    def empty(cls, capacity: int) -> "MessageLog":
        ints = jnp.zeros(capacity, jnp.int32)
        floats = jnp.zeros(capacity, jnp.float32)
        return cls(count=jnp.zeros((), jnp.int32), sender=ints, seq=ints, receiver=ints, fragment=ints,
                   kind=ints, sender_iter=ints, start=floats, complete=floats, land=floats, ended=floats,
                   fate=ints)

    @property
    def capacity(self) -> int:
        return self.sender.shape[0]

    def append(self, queue: "MessageQueue", ended: jax.Array, fate: int, now: jax.Array) -> "MessageLog":
        if self.capacity == 0:
            return self
        flat = ended.reshape(-1)
        index = jnp.where(flat, self.count + jnp.cumsum(flat) - 1, self.capacity)  # capacity: dropped
        sender = jnp.broadcast_to(jnp.arange(ended.shape[0])[:, None], ended.shape)

        def put(column: jax.Array, values: jax.Array) -> jax.Array:
            values = jnp.broadcast_to(values, ended.shape).reshape(-1).astype(column.dtype)
            return column.at[index].set(values, mode="drop")

        return self.replace(
            count=self.count + jnp.sum(flat, dtype=jnp.int32), sender=put(self.sender, sender),
            seq=put(self.seq, queue.seq), receiver=put(self.receiver, queue.receiver),
            fragment=put(self.fragment, queue.fragment), kind=put(self.kind, queue.kind),
            sender_iter=put(self.sender_iter, queue.sender_iter), start=put(self.start, queue.start),
            complete=put(self.complete, queue.complete), land=put(self.land, queue.land),
            ended=put(self.ended, now), fate=put(self.fate, jnp.asarray(fate)))


@struct.dataclass
class Counters:
    """Per-node message accounting (all int32 ``[n]``; by sender unless noted), and the message log.

    ``sent = applied + superseded + flushed + overflow_queue + overflow_snapshot + live records``.
    ``delivered`` counts landings by sender, ``received`` by receiver (a stage, not an end).
    """

    sent: jax.Array
    applied: jax.Array
    superseded: jax.Array
    flushed: jax.Array
    overflow_queue: jax.Array
    overflow_snapshot: jax.Array
    delivered: jax.Array
    received: jax.Array
    log: MessageLog

    @classmethod
    def zeros(cls, n: int, log_capacity: int = 0) -> "Counters":
        z = jnp.zeros(n, jnp.int32)
        return cls(sent=z, applied=z, superseded=z, flushed=z, overflow_queue=z, overflow_snapshot=z,
                   delivered=z, received=z, log=MessageLog.empty(log_capacity))

    def add(self, **increments: jax.Array) -> "Counters":
        return self.replace(**{k: getattr(self, k) + v.astype(jnp.int32) for k, v in increments.items()})


def per_receiver(mask: jax.Array, receiver: jax.Array, n: int) -> jax.Array:
    """Count ``[n, Q]`` records where ``mask`` holds by their receiver."""
    return jnp.zeros(n, jnp.int32).at[receiver.reshape(-1)].add(mask.reshape(-1).astype(jnp.int32))


def placement(queue: MessageQueue, valid: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Where each valid outbox entry goes: ``(fits [n, M], column [n, M])`` in free records, in order."""
    n, capacity = queue.live.shape
    free = ~queue.live
    free_rank = jnp.where(free, jnp.cumsum(free, axis=1) - 1, capacity)
    rows = jnp.arange(n)[:, None]
    free_columns = jnp.zeros((n, capacity), jnp.int32).at[rows, free_rank].set(
        jnp.broadcast_to(jnp.arange(capacity, dtype=jnp.int32), (n, capacity)), mode="drop")
    rank = jnp.cumsum(valid, axis=1) - 1
    fits = valid & (rank < jnp.sum(free, axis=1, keepdims=True))
    column = jnp.take_along_axis(free_columns, jnp.clip(rank, 0, capacity - 1), axis=1)
    return fits, column


def insert(queue: MessageQueue, out: Outbox, fits: jax.Array, column: jax.Array, *, bits: jax.Array,
           complete: jax.Array, land: jax.Array) -> MessageQueue:
    """Write the fitting outbox entries into their free records (see :func:`placement`)."""
    n, width = fits.shape
    rows = jnp.broadcast_to(jnp.arange(n)[:, None], (n, width))
    cols = jnp.where(fits, column, queue.capacity)  # out of range: dropped by the scatter
    seq = queue.next_seq[:, None] + jnp.cumsum(fits, axis=1) - 1

    def put(table: jax.Array, values: jax.Array) -> jax.Array:
        return table.at[rows, cols].set(values.astype(table.dtype), mode="drop")

    return queue.replace(
        live=put(queue.live, jnp.ones_like(fits)), receiver=put(queue.receiver, out.receiver),
        fragment=put(queue.fragment, out.fragment), kind=put(queue.kind, out.kind),
        slot=put(queue.slot, out.slot), sender_iter=put(queue.sender_iter, out.sender_iter),
        seq=put(queue.seq, seq), start=put(queue.start, out.start), bits_left=put(queue.bits_left, bits),
        complete=put(queue.complete, complete), land=put(queue.land, land),
        next_seq=queue.next_seq + jnp.sum(fits, axis=1, dtype=jnp.int32),
    )


def end(queue: MessageQueue, counters: Counters, ended: jax.Array, fate: int, now: jax.Array
        ) -> tuple[MessageQueue, Counters]:
    """End the records where ``ended`` holds, counting (and logging) them under ``fate``."""
    counters = counters.add(**{FATE_COUNTER[fate]: jnp.sum(ended, axis=1)})
    counters = counters.replace(log=counters.log.append(queue, ended, fate, now))
    return queue.replace(live=queue.live & ~ended), counters


def newest_per_pair(queue: MessageQueue, eligible: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Split eligible records into ``(newest, superseded)`` per (sender, receiver, fragment).

    The newest is the latest to land (the reference's buffer keeps the latest arrival); equal landing
    times, which a per-peer FIFO link cannot produce, fall back to the send order.
    """
    same = ((queue.receiver[:, :, None] == queue.receiver[:, None, :])
            & (queue.fragment[:, :, None] == queue.fragment[:, None, :]) & eligible[:, None, :])
    later = ((queue.land[:, None, :] > queue.land[:, :, None])
             | ((queue.land[:, None, :] == queue.land[:, :, None]) & (queue.seq[:, None, :] > queue.seq[:, :, None])))
    superseded = eligible & jnp.any(same & later, axis=2)
    return eligible & ~superseded, superseded
