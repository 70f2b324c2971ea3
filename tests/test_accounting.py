"""Every message ends in exactly one way: sent = applied + superseded + flushed + overflowed + in flight."""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from divjax import engine
from divjax.config import NetworkConfig
from tests.helpers import tiny


@st.composite
def configs(draw):
    algorithm = draw(st.sampled_from(["divshare", "swift", "adpsgd", "dpsgd"]))
    tight = draw(st.booleans())  # tiny capacities, so that overflow paths run too
    step_time = draw(st.sampled_from([0.125, 0.25]))
    network = NetworkConfig(
        preset="stragglers", stragglers=draw(st.integers(0, 3)), slowdown=draw(st.floats(1.0, 20.0)),
        fast_mbps=draw(st.floats(0.02, 2.0)), latency_ms=draw(st.floats(0.0, 80.0)),
        transport=draw(st.sampled_from(["fifo", "shared"])))
    return tiny(
        algorithm=algorithm, network=network, step_time=step_time,
        dt=step_time / draw(st.sampled_from([1, 2])),
        omega=draw(st.sampled_from([0.5, 1.0])) if algorithm == "divshare" else 0.5,
        compute_stragglers=draw(st.integers(0, 2)), compute_slowdown=draw(st.sampled_from([1.0, 2.0, 3.0])),
        seed=draw(st.integers(0, 1000)), duration=6.0,
        queue_capacity=4 if tight else None, snapshot_slots=2 if tight else None,  # 4: one round of J*m
    )


@settings(max_examples=24, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(configs())
def test_every_message_is_accounted_for(cfg):
    sim = engine.build(cfg)
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
    if cfg.algorithm != "divshare":
        assert c["flushed"].sum() == 0
    assert np.all(np.isfinite(np.asarray(engine.flatten_models(state.params))))
