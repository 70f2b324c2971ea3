"""The embedded default task: FedProx's Synthetic(alpha, beta), non-IID classification, no download.

Generator (Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020, §5.1): node k draws
``u_k ~ N(0, alpha)`` and ``B_k ~ N(0, beta)``; its labelling model ``W_k ~ N(u_k, 1)`` (60 x 10) and
``b_k ~ N(u_k, 1)``; its inputs ``x ~ N(v_k, Sigma)`` with ``v_k ~ N(B_k, 1)`` and ``Sigma = diag(j^-1.2)``;
labels ``y = argmax(W_k x + b_k)``. alpha sets how much the labelling functions differ across nodes, beta
how much the inputs do. Training sample counts follow a log-normal, as in FedProx (capped here so shards
pad well). The test set on which every node's model is evaluated holds 50 fresh samples from each node's
distribution, so every node's distribution weighs the same, and its size does not depend on the seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from divjax.config import TaskConfig
from divjax.tasks.base import NodeShards, Params, TaskData, masked_mean

DIM = 60
CLASSES = 10
MIN_SAMPLES = 50
TEST_PER_NODE = 50


class _MLP(nn.Module):
    hidden: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.hidden:
            x = nn.relu(nn.Dense(self.hidden)(x))
        return nn.Dense(CLASSES)(x)


@dataclass(frozen=True)
class SyntheticTask:
    """A one-hidden-layer MLP (or softmax regression with ``hidden=0``) on Synthetic(alpha, beta)."""

    hidden: int = 32
    name: str = "synthetic"
    eval_node_batch: int = 1024  # small model and test set: every node at once

    @property
    def _module(self) -> _MLP:
        return _MLP(self.hidden)

    def init_params(self, key: jax.Array) -> Params:
        return self._module.init(key, jnp.zeros((1, DIM)))["params"]

    def logits(self, params: Params, x: jax.Array) -> jax.Array:
        return self._module.apply({"params": params}, x)

    def loss(self, params: Params, x: jax.Array, y: jax.Array, mask: jax.Array) -> jax.Array:
        ce = optax.softmax_cross_entropy_with_integer_labels(self.logits(params, x), y)
        return masked_mean(ce, mask)

    def evaluate(self, params: Params, x: jax.Array, y: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
        logits = self.logits(params, x)
        return {"accuracy": masked_mean((jnp.argmax(logits, -1) == y).astype(jnp.float32), mask),
                "loss": masked_mean(optax.softmax_cross_entropy_with_integer_labels(logits, y), mask)}


def generate(cfg: TaskConfig, nodes: int, seed: int) -> TaskData:
    """Draw the Synthetic(alpha, beta) data of ``nodes`` nodes (numpy, deterministic in ``seed``)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5E7]))
    counts = MIN_SAMPLES + rng.lognormal(cfg.samples_mean_log, cfg.samples_sigma_log, nodes).astype(np.int64)
    counts = np.minimum(counts, cfg.samples_cap)
    model_mean = rng.normal(0.0, np.sqrt(cfg.alpha), nodes) if cfg.alpha else np.zeros(nodes)
    input_mean = rng.normal(0.0, np.sqrt(cfg.beta), nodes) if cfg.beta else np.zeros(nodes)
    scale = np.arange(1, DIM + 1, dtype=np.float64) ** -0.6  # sqrt of diag(j^-1.2)
    max_size = cfg.samples_cap  # shapes independent of the seed: other seeds reuse the compiled code
    x_train = np.zeros((nodes, max_size, DIM), np.float32)
    y_train = np.zeros((nodes, max_size), np.int32)
    test_x, test_y = [], []
    for k in range(nodes):
        w = rng.normal(model_mean[k], 1.0, (DIM, CLASSES))
        b = rng.normal(model_mean[k], 1.0, CLASSES)
        center = rng.normal(input_mean[k], 1.0, DIM)
        x = center + scale * rng.standard_normal((counts[k] + TEST_PER_NODE, DIM))
        y = np.argmax(x @ w + b, axis=1)
        x_train[k, : counts[k]], y_train[k, : counts[k]] = x[: counts[k]], y[: counts[k]]
        test_x.append(x[counts[k]:])
        test_y.append(y[counts[k]:])
    return TaskData(
        train=NodeShards(x=jnp.asarray(x_train), y=jnp.asarray(y_train),
                         sizes=jnp.asarray(counts, dtype=jnp.int32), size_floor=MIN_SAMPLES),
        test=NodeShards(x=jnp.asarray(np.concatenate(test_x)[None], dtype=jnp.float32),
                        y=jnp.asarray(np.concatenate(test_y)[None], dtype=jnp.int32),
                        sizes=jnp.asarray([nodes * TEST_PER_NODE], jnp.int32)),
    )
