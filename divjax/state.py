"""The simulation's three parts: static shapes (:class:`SimSpec`), numeric inputs (:class:`SimParams`)
and the evolving state (:class:`SimState`).

``SimSpec`` is hashable and is the only static argument of the compiled tick loop, so every run with the
same shapes reuses one compilation; everything numeric (rates, learning rate, data, seeds) is an array in
``SimParams`` and can be swept or ``vmap``ped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from jax.flatten_util import ravel_pytree

from divjax.queue import Counters, MessageQueue
from divjax.tasks.base import Task, TaskData
from divjax.transport import Links


@dataclass(frozen=True)
class SimSpec:
    """Static structure of a simulation (hashable; changing it recompiles).

    Attributes:
      algorithm: registry name of the algorithm.
      task: the task (model, loss, metrics).
      nodes, fragments (m), fragment_width (L), dim (d): sizes of the stacked model layouts.
      degree: J.
      local_steps, batch_size: K and B.
      queue_capacity (Q), snapshot_slots (S): per-sender capacities.
      out_width: messages a node queues at one boundary; pong_width: replies it can queue in one tick.
      max_shard, epochs: shapes of the minibatch plan.
      transport: ``fifo`` or ``shared``.
      mix_dense: mix with the dense form (small n) rather than the gather form (see :mod:`divjax.mixing`).
      mix_block: records whose payloads the gather form of mixing holds at once (bounds its memory).
      log_capacity: entries of the opt-in message log (0: off, compiled out).
    """

    algorithm: str
    task: Task
    nodes: int
    fragments: int
    fragment_width: int
    dim: int
    degree: int
    local_steps: int
    batch_size: int
    queue_capacity: int
    snapshot_slots: int
    out_width: int
    pong_width: int
    max_shard: int
    epochs: int
    transport: str
    mix_dense: bool
    mix_block: int
    log_capacity: int = 0


@struct.dataclass
class SimParams:
    """Numeric inputs of a simulation (a pytree: sweepable, never baked into the compiled code).

    Attributes:
      lr: SGD learning rate.
      step_ticks: ``[n]`` ticks per local step of each node.
      links: the network in ticks and bits per tick.
      fragment_index, fragment_position: the fragment layout (see :mod:`divjax.fragments`).
      fragment_bits: ``[m]`` payload bits of each fragment.
      data: the task's node shards and test set.
      data_key, comm_key: PRNG streams of minibatches and of communication draws.
      algo: the algorithm's own arrays (D-PSGD's neighbour table), or ``None``.
    """

    lr: jax.Array
    step_ticks: jax.Array
    links: Links
    fragment_index: jax.Array
    fragment_position: jax.Array
    fragment_bits: jax.Array
    data: TaskData
    data_key: jax.Array
    comm_key: jax.Array
    algo: Any = None


@struct.dataclass
class SimState:
    """Everything that evolves, stacked over nodes on the leading axis.

    Attributes:
      tick: ticks simulated so far (the simulated time is ``tick * dt``).
      params, opt_state: every node's model and optimiser state.
      iteration: iterations each node has completed; step_in_iter: local steps done in the current one.
      next_step_tick: the tick at which each node's next local step completes.
      waiting: nodes blocked at a boundary (synchronous D-PSGD waits for its neighbours).
      batch_idx, batch_mask: ``[n, K, B]`` the current iteration's minibatches.
      snapshots: ``[m, n, S, L]`` each sender's ring of sent models (fragment-major, see
        :mod:`divjax.mixing`); snapshot_iter: ``[n, S]`` their
        iterations (-1: the initial model); latest_slot: ``[n]`` the newest one.
      queue, counters: the delay queue and its accounting.
      train_loss_sum, train_loss_steps: ``[n]`` training loss since the last evaluation.
    """

    tick: jax.Array
    params: Any
    opt_state: Any
    iteration: jax.Array
    step_in_iter: jax.Array
    next_step_tick: jax.Array
    waiting: jax.Array
    batch_idx: jax.Array
    batch_mask: jax.Array
    snapshots: jax.Array
    snapshot_iter: jax.Array
    latest_slot: jax.Array
    queue: MessageQueue
    counters: Counters
    train_loss_sum: jax.Array
    train_loss_steps: jax.Array


def flatten_models(params: Any) -> jax.Array:
    """Stacked pytree ``[n, ...]`` -> ``[n, d]`` in the order of ``ravel_pytree``."""
    return jax.vmap(lambda p: ravel_pytree(p)[0])(params)


def unflatten_models(flat: jax.Array, like: Any) -> Any:
    """``[n, d]`` -> a stacked pytree shaped like ``like``."""
    _, unravel = ravel_pytree(jax.tree.map(lambda x: x[0], like))
    return jax.vmap(unravel)(flat)


def tree_select(mask: jax.Array, new: Any, old: Any) -> Any:
    """Per node (leading axis), take ``new`` where ``mask`` holds, else ``old``."""
    def pick(a: jax.Array, b: jax.Array) -> jax.Array:
        return jnp.where(mask.reshape(mask.shape + (1,) * (a.ndim - 1)), a, b)

    return jax.tree.map(pick, new, old)
