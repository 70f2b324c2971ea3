"""Sweeps (divjax.sweep): every member of a vmapped sweep is its own run, to float32 rounding."""

import numpy as np
import pytest

import divjax
from divjax import engine, sweep
from tests.helpers import tiny


def assert_same_run(member: divjax.RunResult, alone: divjax.RunResult) -> None:
    """Message counts and iterations are equal; metrics, accuracies and final models equal to float32
    rounding (XLA may round some fused operations of the vmapped program differently: see divjax.sweep)."""
    assert member.history.keys() == alone.history.keys()
    for key in alone.history:
        np.testing.assert_allclose(member.history[key], alone.history[key], rtol=1e-5, atol=1e-6, err_msg=key)
    np.testing.assert_allclose(member.node_accuracy, alone.node_accuracy, rtol=0, atol=1e-6)
    for key in alone.counters:
        np.testing.assert_array_equal(member.counters[key], alone.counters[key], err_msg=key)
    np.testing.assert_array_equal(member.iterations, alone.iterations)
    np.testing.assert_allclose(np.asarray(engine.flatten_models(member.state.params)),
                               np.asarray(engine.flatten_models(alone.state.params)), rtol=1e-5, atol=1e-6)


def test_sweep_over_seeds_equals_separate_runs():
    configs = [tiny(seed=seed, duration=10.0) for seed in (0, 1, 2)]
    members = sweep.run(configs, progress=False)
    for member, cfg in zip(members, configs):
        assert_same_run(member, divjax.run(cfg, progress=False))
    assert not np.array_equal(members[0].history["mean_accuracy"], members[1].history["mean_accuracy"])


def test_sweep_over_learning_rates_and_stragglers_equals_separate_runs():
    # Members step and reach boundaries at other ticks (compute stragglers in one): the engine's conds
    # then run for every member while only some need them, and must leave the others unchanged.
    configs = [tiny(algorithm="adpsgd", lr=0.05, duration=8.0),
               tiny(algorithm="adpsgd", lr=0.2, duration=8.0, compute_stragglers=2, compute_slowdown=3.0)]
    for member, cfg in zip(sweep.run(configs, progress=False), configs):
        assert_same_run(member, divjax.run(cfg, progress=False))


@pytest.mark.parametrize("changes, message", [
    (dict(nodes=8), r"sweep member 1 has other shapes than member 0 \(nodes, .*\)"),
    (dict(duration=10.0), r"sweep member 1 has duration=10.0 but member 0 has 20.0"),
])
def test_members_of_other_shapes_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        sweep.stack([engine.build(tiny()), engine.build(tiny(**changes))])
