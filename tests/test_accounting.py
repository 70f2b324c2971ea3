"""Every message ends in exactly one way: sent = applied + superseded + flushed + overflowed + in flight.

Checked for every algorithm x transport x capacity (the defaults, and the tightest a config accepts: a
queue of one boundary's messages and 2 snapshot slots, in a setting that overflows them); hypothesis draws
only the numbers (seed, bandwidths, latency, stragglers, step time, tick), which keep the shapes, so each
of the 16 cases compiles once and its further examples run in milliseconds.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from divjax import engine
from divjax.config import ALGORITHMS, TRANSPORTS, NetworkConfig, TaskConfig
from tests.helpers import tiny

# The accounting does not depend on the model: a linear least-squares model compiles in ~60% of the
# synthetic MLP's time and, with 294 parameters (the tiny MLP's), sends messages of the same size.
# lr: a step's curvature is about dim / batch_size = 73, so 0.01 keeps every node's SGD stable.
TASK = TaskConfig(name="quadratic", dim=294, samples_per_node=16)
CAPACITIES = ("default", "tight")


@st.composite
def configs(draw, algorithm: str, transport: str, capacity: str):
    tight = capacity == "tight"
    if tight and algorithm == "divshare":
        # DivShare flushes what it has not finished sending, so only records that have landed at a receiver
        # that has not mixed yet fill its queue: compute stragglers 3-4 times slower (boundaries off the
        # others'), on a network fast enough that the records to them land within the iteration.
        comm = dict(stragglers=draw(st.integers(0, 3)), slowdown=draw(st.floats(1.0, 4.0)),
                    fast_mbps=draw(st.floats(0.5, 2.0)))
        compute = dict(compute_stragglers=draw(st.integers(1, 2)),
                       compute_slowdown=draw(st.sampled_from([3.0, 4.0])))
    elif tight:
        # Swift, AD-PSGD, D-PSGD: stragglers' links of 0.1-1 kbit/s (the others' 100-500 kbit/s), on which a
        # 9.4 kbit model takes longer than the run. Swift's and AD-PSGD's backlogs outgrow any queue and ring;
        # D-PSGD's straggler holds up its neighbours, whose other neighbours move on to the next round before
        # those have mixed the last one: its queue overflows (never its ring: a node sends round t + 2 only
        # once its neighbours have mixed round t). One D-PSGD straggler: with more, FIFO uplinks stuck behind
        # them can hold every node of the ring in the first round.
        comm = dict(stragglers=draw(st.integers(1, 1 if algorithm == "dpsgd" else 3)),
                    slowdown=draw(st.floats(500.0, 1000.0)), fast_mbps=draw(st.floats(0.1, 0.5)))
        compute = dict(compute_stragglers=draw(st.integers(0, 2)),
                       compute_slowdown=draw(st.sampled_from([1.0, 2.0, 3.0])))
    else:
        comm = dict(stragglers=draw(st.integers(0, 3)), slowdown=draw(st.floats(1.0, 20.0)),
                    fast_mbps=draw(st.floats(0.02, 2.0)))
        compute = dict(compute_stragglers=draw(st.integers(0, 2)),
                       compute_slowdown=draw(st.sampled_from([1.0, 2.0, 3.0])))
    network = NetworkConfig(preset="stragglers", latency_ms=draw(st.floats(0.0, 80.0)), transport=transport,
                            **comm)
    step_time = draw(st.sampled_from([0.125, 0.25]))
    cfg = tiny(algorithm=algorithm, task=TASK, lr=0.01, network=network, step_time=step_time,
               dt=step_time / draw(st.sampled_from([1, 2])), seed=draw(st.integers(0, 1000)), duration=6.0,
               **compute)
    if tight:  # the smallest capacities build() accepts
        cfg = cfg.replace(queue_capacity=engine.build(cfg).spec.out_width, snapshot_slots=2)
    return cfg


@pytest.mark.parametrize("capacity", CAPACITIES)
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
@settings(max_examples=3, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_every_message_is_accounted_for(algorithm, transport, capacity, data):
    cfg = data.draw(configs(algorithm, transport, capacity), label="config")
    sim = engine.build(cfg)
    assert (sim.spec.algorithm, sim.spec.transport) == (algorithm, transport)
    if capacity == "tight":
        assert (sim.spec.queue_capacity, sim.spec.snapshot_slots) == (sim.spec.out_width, 2)
    state = engine.advance(sim, sim.initial_state(), engine.ticks_for(cfg.duration, cfg.tick))
    c = {k: np.asarray(getattr(state.counters, k)) for k in
         ("sent", "applied", "superseded", "flushed", "overflow_queue", "overflow_snapshot", "delivered",
          "received")}
    in_flight = np.asarray(state.queue.live.sum(axis=1))
    ended = c["applied"] + c["superseded"] + c["flushed"] + c["overflow_queue"] + c["overflow_snapshot"]
    np.testing.assert_array_equal(c["sent"], ended + in_flight)
    assert c["sent"].sum() > 0
    assert np.all(c["delivered"] <= c["sent"])
    assert c["delivered"].sum() == c["received"].sum()
    if algorithm != "divshare":
        assert c["flushed"].sum() == 0
    if capacity == "tight":  # the overflow paths really ran: a full queue, and a reused snapshot slot
        assert c["overflow_queue"].sum() > 0
        assert c["overflow_snapshot"].sum() > 0 or algorithm == "dpsgd"
    else:  # messages went through (in the tight settings, FIFO uplinks may all be stuck behind stragglers)
        assert c["applied"].sum() > 0
    assert np.all(np.isfinite(np.asarray(engine.flatten_models(state.params))))
