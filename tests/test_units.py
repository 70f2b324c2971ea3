"""Building blocks: fragments, random draws, network presets, transports."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from divjax import network, randomness, topology
from divjax.fragments import build_layout, to_flat, to_fragments
from divjax.queue import MessageQueue
from divjax.transport import Links, _fifo_schedule, max_min_rates

GN_LENET_TENSORS = [2400, 32, 32, 32, 25600, 32, 32, 32, 51200, 64, 64, 64, 10240, 10]  # 89,834 parameters


@pytest.mark.parametrize("m, first, last", [(1, 89_834, 89_834), (2, 44_917, 44_917), (10, 8_981, 9_005),
                                            (20, 4_487, 4_581), (100, 894, 1_328)])
def test_fragment_sizes_match_the_reference_table(m, first, last):
    # spec/reference-impl.md §3.1: sizes for GN-LeNet's state_dict.
    layout = build_layout(GN_LENET_TENSORS, m, seed=1234)
    assert layout.sizes.sum() == 89_834
    assert layout.sizes[0] == first and layout.sizes[-1] == last


def test_fragments_partition_every_tensor_and_round_trip():
    sizes = [7, 30, 3, 12]
    layout = build_layout(sizes, 4, seed=0)
    sets = layout.index_sets()
    assert sorted(np.concatenate(sets).tolist()) == list(range(sum(sizes)))  # a partition
    offsets = np.cumsum([0] + sizes)
    for f, idx in enumerate(sets):  # stratified: every fragment holds size//m of each tensor (last: the rest)
        per_tensor = np.histogram(idx, bins=offsets)[0]
        expected = [s // 4 if f < 3 else s - 3 * (s // 4) for s in sizes]
        assert per_tensor.tolist() == expected
    flat = jnp.arange(2 * sum(sizes), dtype=jnp.float32).reshape(2, -1)
    frags = to_fragments(flat, jnp.asarray(layout.index))
    np.testing.assert_array_equal(to_flat(frags, jnp.asarray(layout.position)), flat)
    assert build_layout(sizes, 4, seed=0).index.tolist() == layout.index.tolist()  # same seed, same layout


def test_recipients_are_distinct_others_and_shuffled():
    key = randomness.stream(0, randomness.STREAM_COMM)
    receivers, fragments = randomness.fragment_messages(key, 3, 5, 10, 4, 6)
    receivers, fragments = np.asarray(receivers), np.asarray(fragments)
    assert sorted(fragments.tolist()) == sorted([f for f in range(4) for _ in range(6)])
    assert 3 not in receivers
    for f in range(4):
        assert len(set(receivers[fragments == f].tolist())) == 6  # J distinct peers per fragment
    assert fragments.tolist() != sorted(fragments.tolist())  # the J*m pairs are shuffled
    other = randomness.fragment_messages(key, 3, 6, 10, 4, 6)[0]
    assert np.asarray(other).tolist() != receivers.tolist()


def test_distinct_sample_is_uniform():
    keys = jax.random.split(jax.random.key(1), 4000)
    draws = np.asarray(jax.vmap(lambda k: randomness.distinct_sample(k, 5, 2))(keys))
    assert np.all(draws[:, 0] != draws[:, 1])
    counts = np.bincount(draws.ravel(), minlength=5) / draws.size
    np.testing.assert_allclose(counts, 0.2, atol=0.02)


def test_ping_targets_exclude_self():
    key = randomness.stream(0, randomness.STREAM_COMM)
    targets = np.asarray(jax.vmap(lambda i: randomness.ping_targets(key, i, 0, 4, 50))(jnp.arange(4)))
    assert all(i not in targets[i] for i in range(4))


def test_ping_targets_are_uniform_among_the_others_with_replacement():
    """semantics.md: AD-PSGD pings uniformly among the other nodes, with replacement (a peer may repeat)."""
    key = randomness.stream(0, randomness.STREAM_COMM)
    draws = np.asarray(jax.vmap(lambda it: randomness.ping_targets(key, 2, it, 5, 3))(jnp.arange(4000)))
    counts = np.bincount(draws.ravel(), minlength=5) / draws.size
    np.testing.assert_allclose(counts, [0.25, 0.25, 0.0, 0.25, 0.25], atol=0.015)  # 12,000 draws: s.e. 0.004
    repeats = np.mean([len(set(row)) < 3 for row in draws.tolist()])
    assert repeats == pytest.approx(1 - (3 * 2) / 4**2, abs=0.03)  # P(3 draws of 4 peers not all distinct)


def test_fragment_receivers_are_uniform_among_the_others():
    """Each fragment goes to J distinct peers drawn uniformly from the n - 1 others."""
    key = randomness.stream(0, randomness.STREAM_COMM)
    receivers = np.asarray(jax.vmap(lambda it: randomness.fragment_messages(key, 1, it, 6, 2, 3)[0])(
        jnp.arange(2000)))
    counts = np.bincount(receivers.ravel(), minlength=6) / receivers.size
    np.testing.assert_allclose(counts, [0.2, 0.0, 0.2, 0.2, 0.2, 0.2], atol=0.015)


@pytest.mark.parametrize("n, degree, seed", [(10, 3, 0), (12, 5, 1), (60, 6, 2), (7, 6, 3)])
def test_random_regular_graphs_are_simple_and_regular(n, degree, seed):
    neighbours = topology.random_regular(n, degree, seed)
    adjacency = np.zeros((n, n), bool)
    for i, nb in enumerate(neighbours):
        adjacency[i, nb] = True
    assert not adjacency.diagonal().any() and (adjacency == adjacency.T).all()  # no self-loops, undirected
    assert (adjacency.sum(axis=1) == degree).all() and all(len(nb) == degree for nb in neighbours)
    w = topology.metropolis(neighbours)
    np.testing.assert_allclose(w, w.T)
    np.testing.assert_allclose(w.sum(axis=0), 1.0)
    np.testing.assert_allclose(w.sum(axis=1), 1.0)
    assert (w >= 0).all()
    assert topology.random_regular(n, degree, seed) == neighbours  # a function of the seed


def test_batch_plan_visits_each_sample_once_per_epoch():
    key = randomness.stream(0, randomness.STREAM_DATA)
    size, batch, steps = 13, 4, 9  # 4 steps per epoch (the last one has 1 sample): 2.25 epochs
    idx, mask = randomness.batch_plan(key, 0, 0, size, local_steps=steps, batch_size=batch, max_size=20,
                                      epochs=randomness.epochs_needed(size, steps, batch))
    idx, mask = np.asarray(idx), np.asarray(mask)
    assert mask.sum(axis=1).tolist() == [4, 4, 4, 1, 4, 4, 4, 1, 4]
    for epoch in (slice(0, 4), slice(4, 8)):
        assert sorted(idx[epoch][mask[epoch]].tolist()) == list(range(size))
    assert idx[:4][mask[:4]].tolist() != idx[4:8][mask[4:8]].tolist()  # reshuffled each epoch


def test_plans_drawn_per_size_group_equal_plans_drawn_at_the_largest_width():
    """The engine draws each group of shard sizes at its own width; every node gets the plan it would get
    from shuffling the largest shard (as the event-driven reference draws it)."""
    import dataclasses

    from divjax import engine
    from tests.helpers import tiny

    sim = engine.build(tiny(nodes=10, local_steps=5, batch_size=3))
    sizes = jnp.asarray([1, 2, 3, 5, 7, 9, 16, 17, 33, 40], jnp.int32)
    n, steps, batch, largest = len(sizes), 5, 3, 40
    epochs = randomness.epochs_needed(1, steps, batch)
    spec = dataclasses.replace(sim.spec, nodes=n, max_shard=largest, epochs=epochs)
    train = sim.params.data.train.replace(sizes=sizes)
    params = sim.params.replace(data=sim.params.data.replace(train=train))
    assert len(randomness.plan_groups(largest, epochs, steps, batch)) > 3
    iteration = jnp.arange(n, dtype=jnp.int32) * 7
    idx, mask = engine._plans(spec, params, iteration)
    want_idx, want_mask = jax.vmap(lambda i, it, size: randomness.batch_plan(
        params.data_key, i, it, size, local_steps=steps, batch_size=batch, max_size=largest, epochs=epochs))(
        jnp.arange(n), iteration, sizes)
    np.testing.assert_array_equal(mask, want_mask)
    np.testing.assert_array_equal(idx, want_idx)


def test_straggler_preset_is_the_reference_topology():
    net = network.stragglers(60, 7, 5.0)
    assert (net.up_bps == 12e6).sum() == 7 and (net.up_bps == 60e6).sum() == 53
    np.testing.assert_array_equal(net.up_bps, net.down_bps)  # slow both ways
    assert np.all(net.up_bps[:7] == 12e6)
    lat = net.path_latency_s()
    assert lat[0, 1] == pytest.approx(0.002)  # two 1 ms links
    rate = net.path_rate_bps()
    assert rate[0, 10] == 12e6 and rate[10, 0] == 12e6 and rate[10, 11] == 60e6


def test_diablo_preset():
    net = network.diablo(60)
    rate = net.path_rate_bps()
    assert rate[0, 6] == pytest.approx(26e6)  # capetown -> tokyo
    assert rate[24, 30] == pytest.approx(405e6)  # stockholm -> milan
    assert rate[0, 1] == pytest.approx(67e6)  # capetown, same site: relayed through its best link (milan)
    lat = net.path_latency_s()
    assert lat[0, 6] == pytest.approx(0.001) and lat[0, 1] == pytest.approx(0.002)


def test_fifo_schedule_matches_a_sequential_loop():
    rng = np.random.default_rng(0)
    start = np.sort(rng.uniform(0, 5, (3, 8)), axis=1).astype(np.float32)
    dur = rng.uniform(0.1, 2, (3, 8)).astype(np.float32)
    fits = rng.uniform(size=(3, 8)) < 0.8
    free = np.array([0.0, 3.0, 10.0], np.float32)
    complete, new_free = _fifo_schedule(jnp.asarray(free), jnp.asarray(start), jnp.asarray(dur), jnp.asarray(fits))
    for row in range(3):
        t = free[row]
        for j in range(8):
            if fits[row, j]:
                t = max(t, start[row, j]) + dur[row, j]
                assert float(complete[row, j]) == pytest.approx(t, rel=1e-5)
        assert float(new_free[row]) == pytest.approx(t, rel=1e-5)


def _links(up, down, cap=np.inf):
    n = len(up)
    return Links(up=jnp.asarray(up, jnp.float32), down=jnp.asarray(down, jnp.float32), latency=jnp.zeros(n),
                 group=jnp.zeros(n, jnp.int32), group_cap=jnp.full((1, 1), cap, jnp.float32),
                 group_latency=jnp.zeros((1, 1)), header_bits=jnp.zeros(()))


def test_max_min_fairness():
    # Node 0 sends to 1, 2 and 3; node 3 also sends to 1. Uplinks 12, downlink of node 1 is 4.
    links = _links(up=[12.0, 12.0, 12.0, 12.0], down=[12.0, 4.0, 12.0, 12.0])
    active = np.zeros((4, 3), bool)
    receiver = np.zeros((4, 3), np.int32)
    active[0] = True
    receiver[0] = [1, 2, 3]
    active[3, 0], receiver[3, 0] = True, 1
    rate = np.asarray(max_min_rates(jnp.asarray(active), jnp.asarray(receiver), links))
    # Downlink of 1 is shared by 0->1 and 3->1: 2 each; node 0's other two flows split the rest: 5 each.
    np.testing.assert_allclose(rate[0], [2.0, 5.0, 5.0], rtol=1e-5)
    np.testing.assert_allclose(rate[3, 0], 2.0, rtol=1e-5)
    # A pair cap binds single flows and frees capacity for the others.
    capped = np.asarray(max_min_rates(jnp.asarray(active), jnp.asarray(receiver), _links([12.0] * 4, [12.0] * 4, cap=3.0)))
    np.testing.assert_allclose(capped[0], [3.0, 3.0, 3.0], rtol=1e-5)


def test_empty_queue_has_no_live_records():
    q = MessageQueue.empty(3, 4)
    assert not bool(q.live.any()) and q.capacity == 4
