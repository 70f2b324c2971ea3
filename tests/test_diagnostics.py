"""Run diagnostics: staleness and delivery agree with the message accounting and with the reference; the
mixing measured from a run agrees with the closed forms; traces agree with the runner's evaluations."""

import numpy as np
import pytest

import divjax
from divjax import diagnostics, engine, reference, theory
from divjax.config import NetworkConfig, TaskConfig
from divjax.queue import KIND_DATA
from divjax.tasks import quadratic
from tests.helpers import tiny


def _run(cfg):
    sim = engine.build(cfg, log_messages=diagnostics.log_capacity(cfg))
    return sim, engine.advance(sim, sim.initial_state(), engine.ticks_for(cfg.duration, cfg.tick))


def test_staleness_and_delivery_match_the_message_accounting():
    net = NetworkConfig(preset="stragglers", stragglers=1, slowdown=4.0, fast_mbps=0.05, latency_ms=2.0)
    cfg = tiny(duration=30.0, network=net)  # the straggler needs 1.5 iterations to send its J d floats
    sim, state = _run(cfg)
    counters = diagnostics.delivery(state)
    for fate, counts in diagnostics.fate_counts(state).items():
        np.testing.assert_array_equal(counts, counters[fate])
    assert counters["flushed"][0] > counters["flushed"][1:].max()
    np.testing.assert_allclose(counters["delivery_ratio"], counters["delivered"] / counters["sent"])
    # Landed = applied + superseded (logged) + landed but not yet mixed (live at the end).
    log = diagnostics.log_columns(state)
    mixed_or_superseded = np.bincount(log["sender"][np.isin(log["fate"], [0, 1])], minlength=cfg.nodes)
    waiting = np.asarray((state.queue.live & (state.queue.land <= state.tick)).sum(axis=1))
    np.testing.assert_array_equal(counters["delivered"], mixed_or_superseded + waiting)

    applied = diagnostics.applied_messages(sim, state)
    assert len(applied.sender) == counters["applied"].sum()
    np.testing.assert_array_equal(np.bincount(applied.sender, minlength=cfg.nodes), counters["applied"])
    # Equal speeds: every applied copy is 1 or more whole iterations old, and its age is that many periods.
    period = cfg.local_steps * cfg.step_time
    assert applied.staleness.min() >= 1
    np.testing.assert_allclose(applied.age, applied.staleness * period)
    # A data message is queued at the boundary whose snapshot it carries.
    data = log["fate"] == 0
    np.testing.assert_allclose(np.sort(applied.snapshot_time[applied.kind == KIND_DATA]),
                               np.sort(log["start"][data & (log["kind"] == KIND_DATA)] * cfg.tick))
    summary = applied.summary(senders=[0])
    assert summary["messages"] == counters["applied"][0]
    assert summary["staleness_max"] >= summary["staleness_p99"] >= summary["staleness_p50"] >= 1


def test_receiver_iterations_match_the_reference():
    # Compute stragglers run fewer iterations: a fast receiver sees their copies many iterations stale, and
    # AD-PSGD's pongs may carry the initial model (iteration -1).
    cfg = tiny(algorithm="adpsgd", compute_stragglers=2, compute_slowdown=3.0, duration=20.0)
    sim, state = _run(cfg)
    ref = reference.simulate(sim, until=cfg.duration)
    applied = diagnostics.applied_messages(sim, state)
    log = diagnostics.log_columns(state)
    seq = log["seq"][log["fate"] == 0]
    mine = sorted(zip(applied.sender, seq, applied.receiver_iter, np.round(applied.age, 6)))

    def boundary(node, iteration):
        return 0.0 if iteration < 0 else ref.boundary_times[node][iteration]

    theirs = sorted((m.sender, m.seq, ref.boundary_times[m.receiver].index(m.ended_at),
                     round(m.ended_at - boundary(m.sender, m.sender_iter), 6))
                    for m in ref.messages if m.fate == "applied")
    assert mine == theirs
    assert applied.staleness.min() < 0 < applied.staleness.max()  # slow receivers, slow senders
    assert np.any(applied.sender_iter == -1)


@pytest.mark.parametrize("stragglers", [0, 4])
def test_measured_mixing_matches_the_closed_form(stragglers):
    n, degree = 16, 3
    net = NetworkConfig(preset="stragglers" if stragglers else "uniform", stragglers=stragglers, slowdown=6.0,
                        fast_mbps=0.1, latency_ms=1.0)
    cfg = tiny(nodes=n, degree=degree, omega=0.5, duration=200.0, network=net)
    sim, state = _run(cfg)
    p = diagnostics.delivery_probabilities(state)
    pairs = diagnostics.pair_delivery_probabilities(state)
    if stragglers:
        assert p[:stragglers].max() < 0.8 < p[stragglers:].min()
        # Slow both ways: fast nodes' copies to stragglers arrive less often than their other copies.
        assert pairs[stragglers:, :stragglers].mean() < pairs[stragglers:, stragglers:].mean()
    else:
        np.testing.assert_array_equal(pairs, 1.0)
    mean = theory.divshare_expected_mixing(n, degree, pairs)
    second = theory.divshare_second_moment(n, degree, p)
    measured = diagnostics.measured_mixing(sim, state, reference_mean=mean, reference_second=second)
    est = measured.estimate
    np.testing.assert_allclose(measured.mean.sum(axis=1), 1.0)  # rows: exactly stochastic
    columns, columns_se = measured.mean.sum(axis=0), np.sqrt((est.mean_se ** 2).sum(axis=0))
    if stragglers:  # columns: what a node's model weighs in the others'; a straggler's arrives less often
        assert columns[:stragglers].max() < 1.0 < columns[stragglers:].min()
    else:  # full delivery: doubly stochastic, to sampling error
        assert np.abs(columns - 1.0).max() < 4 * columns_se.max() and columns_se.max() < 0.05
    z = (est.mean - mean)[est.mean_se > 0] / est.mean_se[est.mean_se > 0]
    assert abs(np.mean(z ** 2) - 1.0) < 0.35 and np.abs(z).max() < 6.0
    assert est.lambda2 == pytest.approx(theory.lambda2(mean), abs=4 * est.lambda2_se)
    if not stragglers:  # with stragglers, a flush spends a fixed budget: deliveries are not independent
        assert est.rho == pytest.approx(theory.rho(second), abs=4 * est.rho_se)
    assert measured.running_lambda2[-1] == pytest.approx(theory.lambda2(measured.mean))
    predicted = theory.perron_vector(mean)
    np.testing.assert_allclose(measured.perron, predicted, atol=0.2 / n)
    if stragglers:  # the fixed point is biased against stragglers
        assert measured.perron[:stragglers].max() < 1 / n < measured.perron[stragglers:].min()


def test_trace_matches_the_runner_and_the_objective():
    task = TaskConfig(name="quadratic", dim=8, zeta=1.0, sigma=0.5, samples_per_node=32)
    cfg = tiny(task=task, duration=10.0, eval_every=2.0)
    result = divjax.run(cfg, progress=False)
    sim = engine.build(cfg)
    objective = quadratic.objective(sim.data)
    trace = diagnostics.trace(sim, every=2.0, objective=objective)
    np.testing.assert_allclose(trace.time, result.history["time"])
    np.testing.assert_allclose(trace.consensus_distance, result.history["consensus_distance"], rtol=1e-6)
    assert trace.consensus_distance[0] == 0.0  # every node starts from the same model
    assert trace.gradient_norm2[0] == pytest.approx(objective.gradient_norm2({"w": np.zeros(8)}))
    assert trace.gradient_norm2[-1] == pytest.approx(objective.gradient_norm2(result.state.params), rel=1e-6)
    np.testing.assert_allclose(trace.average_gradient_norm2()[-1], trace.gradient_norm2.mean())
    np.testing.assert_array_equal(trace.iterations[-1], result.iterations)
    accuracy = diagnostics.node_data_accuracy(sim, trace.state)
    assert accuracy.shape == (cfg.nodes, cfg.nodes) and np.all((accuracy >= 0) & (accuracy <= 1))


def test_log_must_be_on_and_large_enough():
    cfg = tiny(duration=5.0)
    sim = engine.build(cfg)
    state = sim.initial_state()
    with pytest.raises(ValueError, match="log_messages"):
        diagnostics.applied_messages(sim, state)
    sim = engine.build(cfg, log_messages=3)
    log = sim.initial_state().counters.log
    full = state.replace(counters=state.counters.replace(log=log.replace(count=log.count + 4)))
    with pytest.raises(ValueError, match="overflowed"):
        diagnostics.log_columns(full)
    with pytest.raises(ValueError, match="Metropolis"):
        diagnostics.mixing_matrices(engine.build(cfg.replace(algorithm="dpsgd")), state)
    assert diagnostics.log_capacity(cfg) >= cfg.nodes * cfg.messages_per_iteration * 5  # 5 boundaries
