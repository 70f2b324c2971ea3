"""What a learning task gives the simulator: a model, a loss, metrics, and per-node data.

A :class:`Task` is a small frozen (hashable) object that defines the model; its data lives apart in a
:class:`TaskData` pytree. Keeping the two apart is what lets a compiled simulation be reused across runs
with the same shapes: the task is a static argument of ``jit``, the data an ordinary one.
"""

from __future__ import annotations

from typing import Any, Protocol

import jax
import jax.numpy as jnp
from flax import struct

Params = Any


@struct.dataclass
class NodeShards:
    """Every node's training shard, padded to the largest one.

    Attributes:
      x: ``[n, max_size, ...]`` inputs (padding rows are zeros and never sampled).
      y: ``[n, max_size]`` labels.
      sizes: ``[n]`` number of real samples of each node.
      size_floor: optional lower bound on every size that does not depend on the seed (static: it fixes
        how many shuffles a minibatch plan holds, so runs with other seeds reuse the compiled code);
        ``None`` uses the smallest size.
    """

    x: jax.Array
    y: jax.Array
    sizes: jax.Array
    size_floor: int | None = struct.field(pytree_node=False, default=None)


@struct.dataclass
class TaskData:
    """A task's data: the node shards and a test set every node's model is evaluated on."""

    train: NodeShards
    test_x: jax.Array
    test_y: jax.Array


class Task(Protocol):
    """The model side of a task. Implementations are frozen dataclasses (hashable, compared by value)."""

    name: str

    def init_params(self, key: jax.Array) -> Params:
        """The parameters of one node's model."""

    def loss(self, params: Params, x: jax.Array, y: jax.Array, mask: jax.Array) -> jax.Array:
        """Mean training loss over the samples of a minibatch where ``mask`` is true."""

    def evaluate(self, params: Params, x: jax.Array, y: jax.Array) -> dict[str, jax.Array]:
        """Test metrics of one model on a batch of samples; must include ``accuracy`` and ``loss``."""


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of ``values`` where ``mask`` holds (0 where it never does)."""
    mask = mask.astype(values.dtype)
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)
