"""The quadratic task: its optimum is exact, its metrics measure the distance to it, and training reaches it."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import divjax
from divjax import tasks
from divjax.config import Config, ConfigError, TaskConfig
from divjax.tasks import quadratic
from tests.helpers import tiny

TASK = TaskConfig(name="quadratic", dim=8, zeta=1.0, sigma=0.5, samples_per_node=32, tolerance=0.2)


def _build(cfg=TASK, nodes=8, seed=0):
    task, data = tasks.build(cfg, nodes, seed)
    return task, data, quadratic.objective(data)


def test_optimum_is_exact_and_the_objective_is_the_mean_node_loss():
    task, data, obj = _build()
    assert obj.gradient_norm2({"w": obj.optimum}) < 1e-24
    assert obj.value(obj.optimum) == pytest.approx(obj.optimal_value, abs=1e-12)

    def mean_loss(w):
        return jnp.mean(jax.vmap(task.loss, (None, 0, 0, 0))({"w": w}, data.train.x, data.train.y, data.train.mask()))

    rng = np.random.default_rng(0)
    for _ in range(3):
        x = obj.optimum + rng.normal(0, 0.3, 8)
        assert obj.value(x) > obj.optimal_value
        # f is the mean of the node losses the engine trains on, and grad f their mean gradient.
        assert float(mean_loss(jnp.asarray(x, jnp.float32))) == pytest.approx(obj.value(x), rel=1e-5)
        np.testing.assert_allclose(jax.grad(mean_loss)(jnp.asarray(x, jnp.float32)), obj.gradient(x),
                                   rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(obj.node_gradients(x).mean(axis=0), obj.gradient(x), atol=1e-12)
    # Stacked node models: the gradient is taken at their average.
    stacked = obj.optimum + rng.normal(0, 0.3, (8, 8))
    assert obj.gradient_norm2({"w": stacked}) == pytest.approx(np.sum(obj.gradient(stacked.mean(0)) ** 2))


def test_zeta_and_sigma_set_heterogeneity_and_noise():
    _, _, same = _build(TaskConfig(name="quadratic", dim=8, zeta=0.0, sigma=0.0, samples_per_node=32))
    assert same.heterogeneity() < 1e-10 and same.gradient_variance() < 1e-10
    _, _, far = _build(TaskConfig(name="quadratic", dim=8, zeta=2.0, sigma=0.0, samples_per_node=256), nodes=32)
    assert 0.6 * 4.0 < far.heterogeneity() < 1.4 * 4.0  # about zeta^2
    _, _, noisy = _build(TaskConfig(name="quadratic", dim=8, zeta=0.0, sigma=1.0, samples_per_node=256), nodes=32)
    assert noisy.heterogeneity() < 0.1 and 0.7 * 8 < noisy.gradient_variance() < 1.3 * 8  # about sigma^2 d


def test_accuracy_is_the_distance_to_the_optimum():
    task, data, obj = _build()
    x, y, mask = data.test.x[0], data.test.y[0], data.test.mask()[0]
    at_optimum = task.evaluate({"w": jnp.asarray(obj.optimum, jnp.float32)}, x, y, mask)
    assert float(at_optimum["accuracy"]) == 1.0 and float(at_optimum["loss"]) < 1e-10
    direction = np.random.default_rng(1).normal(size=8)
    off = obj.optimum + TASK.tolerance * direction / np.linalg.norm(direction)  # ||x - x*|| = tolerance
    metrics = task.evaluate({"w": jnp.asarray(off, jnp.float32)}, x, y, mask)
    assert float(metrics["accuracy"]) == pytest.approx(math.erf(1 / math.sqrt(2)), abs=0.05)
    assert float(metrics["loss"]) == pytest.approx(TASK.tolerance ** 2 / 2, rel=0.15)


def test_config():
    with pytest.raises(ConfigError, match="task.dim"):
        TaskConfig(name="quadratic", dim=0).validate(4)
    with pytest.raises(ConfigError, match="task.tolerance"):
        TaskConfig(name="quadratic", tolerance=0.0).validate(4)
    cfg = Config.for_task("quadratic").validate()
    assert cfg.task.name == "quadratic" and cfg.target_accuracy == 0.9


def test_training_drives_the_global_gradient_down():
    cfg = tiny(nodes=8, task=TASK, duration=20.0, eval_every=5.0)
    result = divjax.run(cfg, progress=False)
    obj = quadratic.objective(tasks.build(cfg.task, cfg.nodes, cfg.seed)[1])
    start = obj.gradient_norm2({"w": np.zeros(8)})  # every node starts from 0
    end = obj.gradient_norm2(result.state.params)
    assert end < 0.1 * start
    accuracy = result.history["mean_accuracy"]
    assert accuracy[-1] > accuracy[0] + 0.3
    assert result.history["mean_test_loss"][-1] < 0.1 * result.history["mean_test_loss"][0]
