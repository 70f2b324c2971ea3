"""MovieLens with matrix factorisation, as the reference (spec/reference-impl.md §7.2).

User and item embeddings of 20 factors, uniform(-0.05, 0.05), no biases; a prediction is the dot product.
Nodes hold contiguous blocks of users with 70 % of each user's ratings; a node's model is scored on its
own users' other 30 %: RMSE (the reference's "test loss") and the share of predictions that, clipped to
[0.5, 5] and rounded to the nearest half star, equal the rating (its "accuracy").

Training uses a row-sparse plain-SGD step: the gradient of an embedding lookup touches only the rows in the
minibatch, so the step scatters into those rows instead of building a dense gradient of the whole table
(identical to the dense SGD step up to float rounding; tested). It is valid for plain SGD only.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from divjax.config import TaskConfig
from divjax.tasks.base import Params, TaskData, masked_mean, stack_shards

FACTORS = 20
INIT_SCALE = 0.05


@dataclass(frozen=True)
class MovieLensTask:
    """Matrix factorisation of ``users`` x ``items`` ratings with ``factors`` factors."""

    users: int
    items: int
    factors: int = FACTORS
    name: str = "movielens"
    eval_node_batch: int = 1024

    def init_params(self, key: jax.Array) -> Params:
        user_key, item_key = jax.random.split(key)
        uniform = lambda k, rows: jax.random.uniform(k, (rows, self.factors), jnp.float32,  # noqa: E731
                                                     -INIT_SCALE, INIT_SCALE)
        return {"user": uniform(user_key, self.users), "item": uniform(item_key, self.items)}

    @staticmethod
    def predict(params: Params, x: jax.Array) -> jax.Array:
        return jnp.sum(params["user"][x[:, 0]] * params["item"][x[:, 1]], axis=-1)

    def loss(self, params: Params, x: jax.Array, y: jax.Array, mask: jax.Array) -> jax.Array:
        return masked_mean((self.predict(params, x) - y) ** 2, mask)

    def sgd_step(self, params: Params, x: jax.Array, y: jax.Array, mask: jax.Array,
                 lr: jax.Array) -> tuple[Params, jax.Array]:
        """One plain-SGD step on the MSE, updating only the embedding rows the minibatch touches."""
        user, item = x[:, 0], x[:, 1]
        p, q = params["user"][user], params["item"][item]
        weight = mask.astype(jnp.float32)
        count = jnp.maximum(jnp.sum(weight), 1.0)
        error = (jnp.sum(p * q, axis=-1) - y) * weight
        scale = (2.0 / count) * error[:, None]
        new = {"user": params["user"].at[user].add(-lr * scale * q),
               "item": params["item"].at[item].add(-lr * scale * p)}
        return new, jnp.sum(error * error) / count

    def evaluate(self, params: Params, x: jax.Array, y: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
        prediction = self.predict(params, x)
        rmse = jnp.sqrt(masked_mean((prediction - y) ** 2, mask))
        rounded = jnp.round(jnp.clip(prediction, 0.5, 5.0) * 2.0) / 2.0
        return {"accuracy": masked_mean((rounded == y).astype(jnp.float32), mask), "loss": rmse, "rmse": rmse}


def build(cfg: TaskConfig, nodes: int) -> tuple[MovieLensTask, TaskData]:
    """Matrix factorisation and the user-partitioned ratings of ``cfg.data_dir``."""
    from divjax.data import load_movielens, partition

    ratings = load_movielens(cfg.data_dir, variant=cfg.variant)
    x = np.stack([ratings.user, ratings.item], axis=1).astype(np.int32)
    y = np.asarray(ratings.rating, np.float32)
    train_parts, test_parts = partition.movielens_split(ratings, nodes, seed=cfg.partition_seed)
    task = MovieLensTask(users=ratings.n_users, items=ratings.n_items)
    return task, TaskData(train=stack_shards(x, y, train_parts), test=stack_shards(x, y, test_parts))
