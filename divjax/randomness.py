"""Every random draw of a simulation, as pure functions of (seed, node, iteration).

The engine calls these vmapped over nodes; the event-driven reference (:mod:`divjax.reference`) calls the
very same functions one node at a time. That is what lets the two be compared message by message: given a
seed, both see the same recipients, the same send order and the same minibatches.

Streams are separated with ``fold_in`` so that, for instance, changing the number of local steps does not
change which peers a node picks.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

STREAM_INIT = 0  # the initial model, shared by every node
STREAM_DATA = 1  # minibatch order
STREAM_COMM = 2  # recipients, send order, ping targets
STREAM_TASK = 3  # the task's own data generation (synthetic data)


def stream(seed: int | jax.Array, which: int) -> jax.Array:
    """The base key of one stream of a run seeded with ``seed``."""
    return jax.random.fold_in(jax.random.key(seed), which)


def _node_key(key: jax.Array, node: jax.Array, iteration: jax.Array) -> jax.Array:
    return jax.random.fold_in(jax.random.fold_in(key, node), iteration)


def _others(draws: jax.Array, node: jax.Array) -> jax.Array:
    """Map draws in ``[0, n-2]`` to the other nodes ``[0, n-1] minus {node}``."""
    return draws + (draws >= node)


def shuffled(key: jax.Array, size: int, valid: jax.Array | None = None, *, span: int | None = None) -> jax.Array:
    """A random order of ``range(size)``; where ``valid`` is given, the valid positions come first.

    Sorts one uint32 array whose high bits are random and low bits the position (XLA sorts a single
    array several times faster than key-value pairs). Equal random bits, rare with 2^(32-log2 size)
    values, are broken by position. ``span`` (at least ``size``; default ``size``) draws as if ``span``
    positions were shuffled: the random bits of a position do not depend on how many are drawn, so when
    the valid positions are a prefix, they come out in the same order for any ``size`` that holds them.
    """
    span = size if span is None else span
    low_bits = max(1, (span - 1).bit_length())
    low_mask = jnp.uint32((1 << low_bits) - 1)
    high = jax.random.bits(key, (size,), jnp.uint32) & ~low_mask
    if valid is not None:
        high = jnp.where(valid, high, ~low_mask)
    return (jax.lax.sort(high | jnp.arange(size, dtype=jnp.uint32)) & low_mask).astype(jnp.int32)


def distinct_sample(key: jax.Array, population: int, count: int) -> jax.Array:
    """``count`` distinct values drawn uniformly from ``range(population)`` (Floyd's algorithm, O(count^2))."""
    keys = jax.random.split(key, count)

    def draw(j: int, chosen: jax.Array) -> jax.Array:
        top = population - count + j  # candidates are 0..top
        pick = jax.random.randint(keys[j], (), 0, top + 1)
        taken = jnp.any(chosen == pick)
        return chosen.at[j].set(jnp.where(taken, top, pick))

    return jax.lax.fori_loop(0, count, draw, jnp.full(count, -1, jnp.int32))


def fragment_messages(comm_key: jax.Array, node: jax.Array, iteration: jax.Array, n: int, m: int,
                      J: int) -> tuple[jax.Array, jax.Array]:
    """DivShare's ``J*m`` messages of one iteration, in send order: ``(receivers, fragments)``.

    For each fragment independently, J distinct peers uniformly among the n - 1 others (the reference's
    ``Random.sample``); the J*m (peer, fragment) pairs are then shuffled.
    """
    pick_key, order_key = jax.random.split(_node_key(comm_key, node, iteration))
    chosen = jax.vmap(lambda k: distinct_sample(k, n - 1, J))(jax.random.split(pick_key, m))
    receivers = _others(chosen, node).reshape(-1).astype(jnp.int32)
    fragments = jnp.repeat(jnp.arange(m, dtype=jnp.int32), J)
    order = shuffled(order_key, J * m)
    return receivers[order], fragments[order]


def ping_targets(comm_key: jax.Array, node: jax.Array, iteration: jax.Array, n: int,
                 count: int) -> jax.Array:
    """AD-PSGD's ``count`` ping targets of one iteration: uniform among the others, with replacement."""
    draws = jax.random.randint(_node_key(comm_key, node, iteration), (count,), 0, n - 1)
    return _others(draws, node).astype(jnp.int32)


def batch_plan(data_key: jax.Array, node: jax.Array, iteration: jax.Array, size: jax.Array, *,
               local_steps: int, batch_size: int, max_size: int,
               epochs: int, width: int | None = None) -> tuple[jax.Array, jax.Array]:
    """The minibatches of one iteration: ``(indices [K, B], mask [K, B])``.

    As the reference's ``Training.train``: a fresh shuffle of the shard at the start of every iteration,
    ``ceil(size / B)`` steps per epoch with a short last batch (masked here), and a new shuffle whenever an
    epoch ends within the K steps. ``epochs`` must be at least ``ceil(K / ceil(size / B))``. The draws are
    those of shuffling the largest shard, ``max_size`` positions; ``width`` (default ``max_size``; at least
    ``size``) is how many are actually shuffled, which gives the same plan (see :func:`shuffled`).
    """
    width = max_size if width is None else width
    key = _node_key(data_key, node, iteration)
    valid = jnp.arange(width) < size
    perms = jax.vmap(lambda e: shuffled(jax.random.fold_in(key, e), width, valid, span=max_size))(
        jnp.arange(epochs))
    steps_per_epoch = (size + batch_size - 1) // batch_size
    step = jnp.arange(local_steps)
    epoch = jnp.minimum(step // steps_per_epoch, epochs - 1)
    pos = (step % steps_per_epoch)[:, None] * batch_size + jnp.arange(batch_size)
    mask = pos < size
    indices = perms[epoch[:, None], jnp.minimum(pos, width - 1)]
    return jnp.where(mask, indices, 0).astype(jnp.int32), mask


class PlanGroup(NamedTuple):
    """Shards of ``smallest .. width`` samples, whose plans are drawn together (see :func:`plan_groups`)."""

    smallest: int
    width: int
    epochs: int


def plan_groups(max_size: int, epochs: int, local_steps: int, batch_size: int) -> tuple[PlanGroup, ...]:
    """Shard sizes grouped by powers of two, each group's plans drawn at its own width.

    Drawn for every node at the largest shard's width and the smallest shard's epoch count, a plan costs
    ``epochs * max_size`` shuffled positions per node: 128 x 1,889 on MovieLens with a node per user, whose
    median shard has 50 ratings. A group of sizes ``(w/2, w]`` shuffles ``w`` positions as many times as
    its smallest shard needs, about ``2 K B`` positions per node, and draws the same plans
    (:func:`batch_plan`). ``epochs`` covers the smallest shard there is: it caps every group's count, and
    groups of smaller shards are left out.
    """
    groups, smallest = [], 1
    while smallest <= max_size:
        width = min(max_size, max(1, 2 * (smallest - 1)))
        if epochs_needed(width, local_steps, batch_size) <= epochs:  # else it is below the smallest shard
            groups.append(PlanGroup(smallest, width, min(epochs, epochs_needed(smallest, local_steps, batch_size))))
        smallest = width + 1
    return tuple(groups)


def epochs_needed(min_size: int, local_steps: int, batch_size: int) -> int:
    """How many shuffles one iteration can need, for the smallest shard."""
    steps_per_epoch = -(-min_size // batch_size)
    return -(-local_steps // steps_per_epoch)
