"""The reference's workloads on the real data: the settings `divjax run --task ... --data-dir` gives, and a
model trained centrally on each data set learns (needs the shared data; skipped with a reason without)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from divjax import engine
from divjax.config import Config
from divjax.data import load_cifar10, load_movielens, movielens_split
from divjax.tasks import Cifar10Task, MovieLensTask
from tests.helpers import CIFAR, MOVIELENS, needs_cifar, needs_movielens


@needs_cifar
def test_cifar10_task_is_the_reference_setting():
    cfg = Config.for_task("cifar10", str(CIFAR))
    assert (cfg.local_steps, cfg.batch_size, cfg.lr, cfg.target_accuracy) == (128, 8, 0.05, 0.6)
    sim = engine.build(cfg)
    sizes = np.asarray(sim.data.train.sizes)
    assert sizes[:59].tolist() == [830] * 59 and sizes[59] == 850  # KShard, 5 shards of 166 (170)
    assert sim.spec.dim == 89_834 and sim.spec.fragments == 10
    assert sim.data.shared_test and sim.data.test.y.shape == (1, 10_000)
    classes = [len(np.unique(np.asarray(sim.data.train.y[k, :s]))) for k, s in enumerate(sizes)]
    assert np.mean(classes) == pytest.approx(4.33, abs=0.01)  # spec/reference-impl.md §7.1


@needs_cifar
def test_gn_lenet_learns_cifar10_centrally():
    data = load_cifar10(str(CIFAR))
    task = Cifar10Task(conv="im2col")  # a conv inside a loop body is slow on XLA CPU; im2col is not
    optimizer = optax.sgd(0.05)
    x, y = jnp.asarray(data.x_train[:20_000]), jnp.asarray(data.y_train[:20_000])

    @jax.jit
    def train(params, key):
        def step(i, carry):
            params, state = carry
            idx = jax.random.randint(jax.random.fold_in(key, i), (32,), 0, x.shape[0])
            grads = jax.grad(task.loss)(params, x[idx], y[idx], jnp.ones(32, bool))
            updates, state = optimizer.update(grads, state, params)
            return optax.apply_updates(params, updates), state

        params, _ = jax.lax.fori_loop(0, 300, step, (params, optimizer.init(params)))
        return params

    params = train(task.init_params(jax.random.key(0)), jax.random.key(1))
    n = 2000
    metrics = task.evaluate(params, jnp.asarray(data.x_test[:n]), jnp.asarray(data.y_test[:n]), jnp.ones(n, bool))
    assert float(metrics["accuracy"]) > 0.25  # chance: 0.10


@needs_movielens
def test_movielens_task_is_the_reference_setting():
    sim = engine.build(Config.for_task("movielens", str(MOVIELENS)))
    assert sim.spec.dim == 206_680
    assert not sim.data.shared_test  # each node is scored on its own users' held-out ratings
    train, test = np.asarray(sim.data.train.sizes), np.asarray(sim.data.test.sizes)
    ratings = load_movielens(str(MOVIELENS))
    assert train.sum() + test.sum() == len(ratings.rating) == 100_836
    assert train.sum() / (train.sum() + test.sum()) == pytest.approx(0.7, abs=0.005)


@needs_movielens
def test_matrix_factorisation_learns_movielens_centrally():
    ratings = load_movielens(str(MOVIELENS))
    (train,), (test,) = movielens_split(ratings, 1)
    x = jnp.asarray(np.stack([ratings.user, ratings.item], 1), jnp.int32)
    y = jnp.asarray(ratings.rating)
    task = MovieLensTask(users=ratings.n_users, items=ratings.n_items)
    xtr, ytr = x[train], y[train]

    @jax.jit
    def fit(params, key):
        def step(i, params):
            idx = jax.random.randint(jax.random.fold_in(key, i), (16,), 0, xtr.shape[0])
            return task.sgd_step(params, xtr[idx], ytr[idx], jnp.ones(16, bool), 0.1)[0]

        return jax.lax.fori_loop(0, 20_000, step, params)

    params = task.init_params(jax.random.key(0))
    mask = jnp.ones(len(test), bool)
    before = task.evaluate(params, x[test], y[test], mask)
    after = task.evaluate(fit(params, jax.random.key(1)), x[test], y[test], mask)
    # Untrained predictions are ~0 (RMSE ~3.7); random half-star guesses score RMSE ~1.7 and accuracy ~0.1.
    assert float(before["rmse"]) > 3.0
    assert float(after["rmse"]) < 1.5 and float(after["accuracy"]) > 0.15
