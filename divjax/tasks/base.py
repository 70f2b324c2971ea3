"""What a learning task gives the simulator: a model, a loss, metrics, and per-node data.

A :class:`Task` is a small frozen (hashable) object that defines the model; its data lives apart in a
:class:`TaskData` pytree. Keeping the two apart is what lets a compiled simulation be reused across runs
with the same shapes: the task is a static argument of ``jit``, the data an ordinary one.
"""

from __future__ import annotations

from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

Params = Any


@struct.dataclass
class NodeShards:
    """Samples of several nodes, padded to the largest (rows past a node's size are never used).

    Attributes:
      x: ``[k, max_size, ...]`` inputs.
      y: ``[k, max_size]`` targets.
      sizes: ``[k]`` number of real samples of each node.
      size_floor: optional lower bound on every size that does not depend on the seed (static: it fixes
        how many shuffles a minibatch plan holds, so runs with other seeds reuse the compiled code);
        ``None`` uses the smallest size.
    """

    x: jax.Array
    y: jax.Array
    sizes: jax.Array
    size_floor: int | None = struct.field(pytree_node=False, default=None)

    def mask(self) -> jax.Array:
        """``[k, max_size]``: which rows are real samples."""
        return jnp.arange(self.y.shape[1]) < self.sizes[:, None]


@struct.dataclass
class TaskData:
    """A task's data: every node's training shard, and the test set(s) models are evaluated on.

    ``test`` holds one set per node (``[n, ...]``: a node's model is evaluated on its own test set, as
    MovieLens's users' held-out ratings) or a single set shared by every node (``[1, ...]``: CIFAR-10's
    10,000 test images).
    """

    train: NodeShards
    test: NodeShards

    @property
    def shared_test(self) -> bool:
        return self.test.y.shape[0] == 1


class Task(Protocol):
    """The model side of a task. Implementations are frozen dataclasses (hashable, compared by value).

    Attributes:
      name: short name.
      eval_node_batch: how many nodes' models are evaluated at once (bounds evaluation memory).

    A task may also define ``sgd_step(params, x, y, mask, lr) -> (params, loss)``, a plain-SGD step that
    the engine then uses instead of autodiff + optax (MovieLens's row-sparse embedding update), and
    ``step_node_batch``: take local steps that many nodes at a time rather than all at once (bounds the
    transient memory of models whose step needs much of it, as GN-LeNet's im2col patches).

    ``host_steps = True`` asks the engine to take local steps one node at a time, each its own compiled call
    from the host (GN-LeNet on CPU, where convolutions are slow under ``vmap`` and inside loops); the task
    then also defines ``stacked() -> Task``, the same model in a form to step vmapped over nodes, which
    sweeps and sharded runs use instead.
    """

    name: str
    eval_node_batch: int

    def init_params(self, key: jax.Array) -> Params:
        """The parameters of one node's model."""

    def loss(self, params: Params, x: jax.Array, y: jax.Array, mask: jax.Array) -> jax.Array:
        """Mean training loss over the samples of a minibatch where ``mask`` is true."""

    def evaluate(self, params: Params, x: jax.Array, y: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
        """Test metrics of one model on one test set (rows where ``mask`` holds); must include
        ``accuracy`` and ``loss``."""


def stacked_form(task: Task) -> Task:
    """The form of ``task`` whose local steps run vmapped over nodes (see :class:`Task`)."""
    return task.stacked() if getattr(task, "host_steps", False) else task


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of ``values`` where ``mask`` holds (0 where it never does)."""
    mask = mask.astype(values.dtype)
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def stack_shards(x: np.ndarray, y: np.ndarray, parts: list[np.ndarray]) -> NodeShards:
    """Every node's samples ``x[part], y[part]``, stacked and padded with zeros to the largest part."""
    width = max(1, max(len(part) for part in parts))
    xs = np.zeros((len(parts), width) + x.shape[1:], x.dtype)
    ys = np.zeros((len(parts), width), y.dtype)
    for k, part in enumerate(parts):
        xs[k, : len(part)], ys[k, : len(part)] = x[part], y[part]
    sizes = np.array([len(part) for part in parts], np.int32)
    # device_put, not jnp.asarray: on CPU the latter makes two copies of what can be gigabytes of padding.
    return NodeShards(x=jax.device_put(xs), y=jax.device_put(ys), sizes=jnp.asarray(sizes),
                      size_floor=int(sizes.min()))
