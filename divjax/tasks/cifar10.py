"""CIFAR-10 with GN-LeNet, as the reference trains and evaluates it (spec/reference-impl.md §7.1).

Images stay uint8 on device (a quarter of the memory) and are mapped to [-1, 1] inside the model, as the
reference's ``ToTensor`` + ``Normalize(0.5, 0.5)``. Training shards come from a partition of the 50,000
training images (KShard by default, the reference's), and every node's model is scored on the same test
set: the 10,000 test images by default, in batches of 1,024 with the test loss the mean of the per-batch
mean cross-entropies (the reference's definition; its last batch holds 784 images).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax

from divjax.config import TaskConfig
from divjax.tasks.base import NodeShards, Params, TaskData, masked_mean, stack_shards
from divjax.tasks.gn_lenet import GNLeNet

TEST_BATCH = 1024


def _images(x: jax.Array) -> jax.Array:
    return (x.astype(jnp.float32) / 255.0 - 0.5) / 0.5


# The im2col step runs this many nodes at a time: a vmapped im2col step holds ~25 MB of patches and their
# gradients per node (31 GB at n = 1,024 at once), and blocks of 64 cost no speed on CPU. Native convolutions
# (accelerators) have no patches: their steps stay vmapped over every node at once.
IM2COL_STEP_NODES = 64


@dataclass(frozen=True)
class Cifar10Task:
    """GN-LeNet on CIFAR-10. ``conv`` picks how local steps compute the convolutions (the same function):
    ``im2col`` or ``xla`` (native) vmapped over nodes, or ``per-node``: native convolutions, each node's
    step its own call from the host (``host_steps``; the fastest on CPU)."""

    conv: str = "im2col"
    name: str = "cifar10"
    eval_node_batch: int = 1  # 10,000 images x one model at a time bounds evaluation memory
    step_node_batch: int | None = None  # local steps this many nodes at a time (None: all at once)

    @property
    def host_steps(self) -> bool:
        return self.conv == "per-node"

    def stacked(self) -> Cifar10Task:
        """This task with its local steps vmapped over nodes: im2col, the fastest stacked form on CPU."""
        return dataclasses.replace(self, conv="im2col", step_node_batch=IM2COL_STEP_NODES)

    def _model(self) -> GNLeNet:
        return GNLeNet("xla" if self.conv == "per-node" else self.conv)

    def init_params(self, key: jax.Array) -> Params:
        return self._model().init(key, jnp.zeros((1, 32, 32, 3)))["params"]

    def logits(self, params: Params, x: jax.Array) -> jax.Array:
        return self._model().apply({"params": params}, _images(x))

    def loss(self, params: Params, x: jax.Array, y: jax.Array, mask: jax.Array) -> jax.Array:
        return masked_mean(optax.softmax_cross_entropy_with_integer_labels(self.logits(params, x), y), mask)

    def evaluate(self, params: Params, x: jax.Array, y: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
        batches = -(-x.shape[0] // TEST_BATCH)
        pad = batches * TEST_BATCH - x.shape[0]
        split = lambda a: jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1)).reshape(  # noqa: E731
            (batches, TEST_BATCH) + a.shape[1:])

        def batch_sums(args):
            xb, yb, mb = args
            # One model at a time (eval_node_batch = 1): native convolutions, 1.8x faster than im2col on CPU
            # (benchmarks/roofline.py), because nothing is vmapped over nodes here. Under a sweep's vmap they
            # become grouped convolutions again, which XLA CPU runs slowly.
            logits = GNLeNet("xla").apply({"params": params}, _images(xb))
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, yb)
            return (jnp.sum(mb * (jnp.argmax(logits, -1) == yb)), jnp.sum(mb * ce), jnp.sum(mb))

        correct, ce, count = jax.lax.map(batch_sums, (split(x), split(y), split(mask).astype(jnp.float32)))
        used = count > 0
        per_batch_loss = ce / jnp.maximum(count, 1.0)
        return {"accuracy": jnp.sum(correct) / jnp.maximum(jnp.sum(count), 1.0),
                "loss": jnp.sum(jnp.where(used, per_batch_loss, 0.0)) / jnp.maximum(jnp.sum(used), 1)}


def _partition(cfg: TaskConfig, labels: np.ndarray, nodes: int) -> list[np.ndarray]:
    from divjax.data import partition

    if cfg.partition == "kshard":
        return partition.kshard(labels, nodes, shards=cfg.shards, seed=cfg.partition_seed)
    if cfg.partition == "dirichlet":
        return partition.dirichlet(labels, nodes, alpha=cfg.dirichlet_alpha, seed=cfg.partition_seed)
    return partition.iid(len(labels), nodes, seed=cfg.partition_seed)


def build(cfg: TaskConfig, nodes: int, conv: str) -> tuple[Cifar10Task, TaskData]:
    """GN-LeNet and the partitioned CIFAR-10 of ``cfg.data_dir`` (the partition has its own seed)."""
    from divjax.data import load_cifar10

    data = load_cifar10(cfg.data_dir)
    labels = np.asarray(data.y_train, np.int32)
    train = stack_shards(np.asarray(data.x_train), labels, _partition(cfg, labels, nodes))
    count = cfg.test_samples or len(data.y_test)
    test = NodeShards(x=jnp.asarray(data.x_test[None, :count]), y=jnp.asarray(data.y_test[None, :count], jnp.int32),
                      sizes=jnp.asarray([count], jnp.int32))
    block = IM2COL_STEP_NODES if conv == "im2col" else None
    return Cifar10Task(conv=conv, step_node_batch=block), TaskData(train=train, test=test)
