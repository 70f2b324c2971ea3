"""Stragglers deliver less; with the flush, fragments let a too-slow link deliver part of its model."""

import numpy as np

from divjax import engine, network
from tests.helpers import tiny


def _slow_uplink_network(n: int, straggler_bps: float) -> network.Network:
    net = network.uniform(n, mbps=1.0, latency_ms=1.0)
    up = net.up_bps.copy()
    up[0] = straggler_bps
    return network.Network(up_bps=up, down_bps=net.down_bps, latency_s=net.latency_s, group=net.group,
                           group_cap_bps=net.group_cap_bps, group_latency_s=net.group_latency_s)


def _delivered_and_sent(cfg, net):
    sim = engine.build(cfg, network=net)
    state = engine.advance(sim, sim.initial_state(), engine.ticks_for(cfg.duration, cfg.tick))
    return np.asarray(state.counters.delivered), np.asarray(state.counters.sent), sim


def test_flush_fragments_let_a_slow_link_contribute():
    # One iteration is 4 steps x 0.25 s = 1 s. Node 0 uploads at 4 kbit/s: one full model (294 float32 =
    # 9,408 bits) takes 2.4 s, longer than an iteration, so with the flush it never gets one out.
    net = _slow_uplink_network(6, 4_000.0)
    whole, sent_whole, sim = _delivered_and_sent(tiny(omega=1.0, duration=12.0), net)
    assert 32 * sim.spec.dim > 4_000.0 * 1.0
    assert sent_whole[0] > 0 and whole[0] == 0
    parts, sent_parts, _ = _delivered_and_sent(tiny(omega=0.1, duration=12.0), net)
    assert parts[0] > 0  # a fraction of its fragments gets through before each flush
    # ...but a smaller share than any fast node's.
    assert parts[0] / sent_parts[0] < (parts[1:] / sent_parts[1:]).min()


def test_straggler_delivers_fewer_fragments_than_fast_nodes():
    from divjax.config import NetworkConfig

    cfg = tiny(omega=0.1, duration=12.0,
               network=NetworkConfig(preset="stragglers", stragglers=1, slowdown=20.0, fast_mbps=0.2))
    sim = engine.build(cfg)
    state = engine.advance(sim, sim.initial_state(), engine.ticks_for(cfg.duration, cfg.tick))
    delivered = np.asarray(state.counters.delivered)
    assert delivered[0] < delivered[1:].min()
    assert int(state.counters.flushed[0]) > 0
