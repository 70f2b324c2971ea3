"""The reference's models: GN-LeNet and matrix factorisation (parameter counts, initialisation, numerics)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from divjax import engine
from divjax.tasks import Cifar10Task, MovieLensTask, TaskData
from divjax.tasks.base import NodeShards, stack_shards
from tests.helpers import tiny

# spec/reference-impl.md §7.1: parameters by layer.
GN_LENET_LAYERS = {"SameConv_0": 2432, "GroupNorm_0": 64, "SameConv_1": 25632, "GroupNorm_1": 64,
                   "SameConv_2": 51264, "GroupNorm_2": 128, "Dense_0": 10250}


def _count(tree) -> int:
    return sum(x.size for x in jax.tree.leaves(tree))


def test_gn_lenet_parameter_counts():
    params = Cifar10Task().init_params(jax.random.key(0))
    assert _count(params) == 89_834
    assert {name: _count(layer) for name, layer in params.items()} == GN_LENET_LAYERS


def test_gn_lenet_pytorch_initialisation():
    params = Cifar10Task().init_params(jax.random.key(0))
    for name, fan_in in [("SameConv_0", 75), ("SameConv_1", 800), ("SameConv_2", 800), ("Dense_0", 1024)]:
        bound = 1 / np.sqrt(fan_in)
        for leaf in ("kernel", "bias"):
            values = np.asarray(params[name][leaf])
            assert np.abs(values).max() <= bound
        kernel, bias = np.asarray(params[name]["kernel"]), np.asarray(params[name]["bias"])
        assert kernel.std() == pytest.approx(bound / np.sqrt(3), rel=0.1)  # uniform(+-bound)
        # PyTorch's biases are uniform(+-1/sqrt(fan_in)) too, not flax's zeros: both signs, spread to the bound.
        assert bias.max() > bound / 2 and bias.min() < -bound / 2
    for name in ("GroupNorm_0", "GroupNorm_1", "GroupNorm_2"):
        assert np.all(np.asarray(params[name]["scale"]) == 1) and np.all(np.asarray(params[name]["bias"]) == 0)


def test_im2col_and_xla_convolutions_agree():
    params = Cifar10Task().init_params(jax.random.key(1))
    x = jax.random.randint(jax.random.key(2), (4, 32, 32, 3), 0, 256).astype(jnp.uint8)
    y = jnp.arange(4) % 10
    mask = jnp.ones(4, bool)
    outputs, grads = {}, {}
    for conv in ("xla", "im2col"):
        task = Cifar10Task(conv=conv)
        outputs[conv] = task.logits(params, x)
        grads[conv] = jax.grad(task.loss)(params, x, y, mask)
    np.testing.assert_allclose(outputs["xla"], outputs["im2col"], rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(grads["xla"]), jax.tree.leaves(grads["im2col"])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_cifar_test_loss_is_the_mean_of_batch_means():
    task = Cifar10Task()
    params = task.init_params(jax.random.key(3))
    x = jax.random.randint(jax.random.key(4), (1030, 32, 32, 3), 0, 256).astype(jnp.uint8)
    y = jax.random.randint(jax.random.key(5), (1030,), 0, 10)
    metrics = task.evaluate(params, x, y, jnp.ones(1030, bool))
    ce = optax.softmax_cross_entropy_with_integer_labels(task.logits(params, x), y)
    assert float(metrics["loss"]) == pytest.approx((float(ce[:1024].mean()) + float(ce[1024:].mean())) / 2, rel=1e-5)
    accuracy = float(jnp.mean(jnp.argmax(task.logits(params, x), -1) == y))
    assert float(metrics["accuracy"]) == pytest.approx(accuracy)


def test_matrix_factorisation_size_and_init():
    params = MovieLensTask(users=610, items=9724).init_params(jax.random.key(0))
    assert _count(params) == 206_680
    assert params["user"].shape == (610, 20) and params["item"].shape == (9724, 20)
    for table in (params["user"], params["item"]):  # uniform(-0.05, 0.05): mean 0, std 0.05 / sqrt(3)
        values = np.asarray(table)
        assert np.abs(values).max() <= 0.05 and abs(values.mean()) < 0.002
        assert values.std() == pytest.approx(0.05 / np.sqrt(3), rel=0.05)
    assert not np.array_equal(params["user"][:20], params["item"][:20])  # drawn from separate keys


def test_row_sparse_sgd_equals_dense_sgd():
    task = MovieLensTask(users=7, items=9)
    params = jax.tree.map(lambda a: a * 20, task.init_params(jax.random.key(1)))  # away from 0
    x = jnp.array([[0, 1], [3, 1], [0, 2], [6, 8], [3, 1]], jnp.int32)  # repeated users and items
    y = jnp.array([4.0, 3.5, 1.0, 5.0, 2.0])
    mask = jnp.array([True, True, True, True, False])
    sparse, sparse_loss = task.sgd_step(params, x, y, mask, 0.1)
    loss, grads = jax.value_and_grad(task.loss)(params, x, y, mask)
    dense = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)
    for a, b in zip(jax.tree.leaves(sparse), jax.tree.leaves(dense)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert float(sparse_loss) == pytest.approx(float(loss), rel=1e-6)


def test_movielens_metrics():
    task = MovieLensTask(users=1, items=3, factors=1)
    params = {"user": jnp.array([[1.0]]), "item": jnp.array([[3.2], [6.0], [0.1]])}
    x = jnp.array([[0, 0], [0, 1], [0, 2]], jnp.int32)
    y = jnp.array([3.0, 5.0, 0.5])
    m = task.evaluate(params, x, y, jnp.ones(3, bool))
    # predictions 3.2, 6.0, 0.1 -> rounded to half stars and clipped: 3.0, 5.0, 0.5 (all exact)
    assert float(m["accuracy"]) == 1.0
    assert float(m["rmse"]) == pytest.approx(np.sqrt((0.2**2 + 1.0**2 + 0.4**2) / 3), rel=1e-6)


def test_engine_trains_matrix_factorisation_with_per_node_test_sets():
    rng = np.random.default_rng(0)
    users, items, nodes = 12, 40, 6
    u_true, v_true = rng.normal(0, 1, (users, 3)), rng.normal(0, 1, (items, 3))
    pairs = np.array([(u, i) for u in range(users) for i in rng.choice(items, 25, replace=False)], np.int32)
    ratings = np.clip(3 + (u_true[pairs[:, 0]] * v_true[pairs[:, 1]]).sum(1), 0.5, 5).astype(np.float32)
    by_node = [np.flatnonzero(pairs[:, 0] // 2 == k) for k in range(nodes)]  # two users per node
    train = [idx[: int(0.7 * len(idx))] for idx in by_node]
    test = [idx[int(0.7 * len(idx)):] for idx in by_node]
    task = MovieLensTask(users=users, items=items, factors=4)
    data = TaskData(train=stack_shards(pairs, ratings, train), test=stack_shards(pairs, ratings, test))
    assert isinstance(data.test, NodeShards) and not data.shared_test
    cfg = tiny(lr=0.1, local_steps=8, duration=60.0, eval_every=30.0)
    from divjax import runner

    result = runner.simulate(engine.build(cfg, task=task, data=data), progress=False)
    rmse = result.history["mean_test_loss"]
    assert rmse[-1] < 0.8 * rmse[0]


def test_gn_lenet_local_steps_in_node_blocks_equal_all_at_once():
    """``step_node_batch`` only bounds memory: the blocked local step (lax.map) gives the vmapped numbers."""
    rng = np.random.default_rng(0)
    nodes = 5
    images = rng.integers(0, 256, (nodes * 16, 32, 32, 3), np.uint8)
    labels = rng.integers(0, 10, nodes * 16).astype(np.int32)
    parts = [np.arange(k * 16, (k + 1) * 16) for k in range(nodes)]
    data = TaskData(train=stack_shards(images, labels, parts), test=stack_shards(images, labels, [parts[0]]))
    cfg = tiny(nodes=nodes, degree=2, local_steps=3, batch_size=4)
    models = {}
    for block in (2, 64):  # 2: three blocks (the last one short); 64: every node at once
        sim = engine.build(cfg, task=Cifar10Task(step_node_batch=block), data=data)
        state = engine.advance(sim, sim.initial_state(), 4)  # 3 steps, a boundary, a step
        models[block] = np.asarray(ravel_pytree(state.params)[0])
    np.testing.assert_allclose(models[2], models[64], rtol=0, atol=1e-6)
    initial = engine.build(cfg, task=Cifar10Task(), data=data).initial_state().params
    assert not np.array_equal(models[64], np.asarray(ravel_pytree(initial)[0]))  # it did train


@pytest.mark.parametrize("algorithm", ["divshare", "dpsgd"])
def test_gn_lenet_steps_from_the_host_equal_vmapped_steps(algorithm, monkeypatch):
    """``conv="per-node"`` takes each node's step in its own call from the host (engine.advance's host
    driver); it must simulate what the vmapped im2col steps do: the same steps at the same ticks (compute
    stragglers make the stepping nodes differ from tick to tick; D-PSGD's nodes wait for each other), the
    same messages, and models equal up to float rounding."""
    rng = np.random.default_rng(1)
    nodes = 5
    images = rng.integers(0, 256, (nodes * 16, 32, 32, 3), np.uint8)
    labels = rng.integers(0, 10, nodes * 16).astype(np.int32)
    parts = [np.arange(k * 16, k * 16 + 12 + k) for k in range(nodes)]
    data = TaskData(train=stack_shards(images, labels, parts), test=stack_shards(images, labels, [parts[0]]))
    cfg = tiny(algorithm=algorithm, nodes=nodes, degree=2, local_steps=3, batch_size=4, compute_stragglers=2,
               compute_slowdown=2.0)
    monkeypatch.setattr(engine, "HOST_PUT_NODES", 2)  # written back in blocks of 2, 2 and 1 nodes
    states = {}
    for conv in ("per-node", "im2col"):
        sim = engine.build(cfg, task=Cifar10Task(conv=conv), data=data)
        assert engine.host_steps(sim) == (conv == "per-node")
        state = engine.advance(sim, sim.initial_state(), 5)
        states[conv] = engine.advance(sim, state, 8)  # across calls: 13 ticks, 1-4 boundaries per node
    host, vmapped = states["per-node"], states["im2col"]
    assert int(host.tick) == int(vmapped.tick) == 13
    assert int(host.iteration.min()) >= 1
    for field in ("iteration", "step_in_iter", "next_step_tick", "waiting", "train_loss_steps", "batch_idx"):
        np.testing.assert_array_equal(getattr(host, field), getattr(vmapped, field), err_msg=field)
    for a, b in zip(jax.tree.leaves(host.counters), jax.tree.leaves(vmapped.counters)):
        np.testing.assert_array_equal(a, b)
    # Native and im2col convolutions round differently, and a ReLU whose input sits at zero turns that into
    # a different (sub)gradient: up to ~1e-3 relative on a node whose step hit one. One local step moves a
    # model by ~2-3 % here, so a step taken twice, skipped or on another node's minibatch cannot pass.
    flat = lambda params: np.asarray(jax.vmap(lambda p: ravel_pytree(p)[0])(params))  # noqa: E731
    host_models, vmapped_models = flat(host.params), flat(vmapped.params)
    moved = np.linalg.norm(vmapped_models - flat(sim.initial_state().params), axis=1)
    assert np.all(np.linalg.norm(host_models - vmapped_models, axis=1) < 0.05 * moved)
    np.testing.assert_allclose(host.train_loss_sum, vmapped.train_loss_sum, rtol=1e-3)
