"""A custom Network is checked as strictly as a NetworkConfig: a bad field is a ConfigError naming it, the
value and what is allowed, raised when the Network is made (so before anything compiles)."""

import dataclasses

import numpy as np
import pytest

from divjax import engine, network
from divjax.config import ConfigError, NetworkConfig
from tests.helpers import tiny

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    "changes, message",
    [
        # Latencies: finite and within NetworkConfig's bound (the reviewer's NaN delivered nothing, silently).
        (dict(group_latency_s=[[NAN]]), r"network\.group_latency_s\[0, 0\]=nan is not allowed"),
        (dict(group_latency_s=[[-100.0]]), r"network\.group_latency_s\[0, 0\]=-100\.0 is not allowed"),
        (dict(group_latency_s=[[INF]]), r"network\.group_latency_s\[0, 0\]=inf is not allowed"),
        (dict(latency_s=[0.001, 1e7, 0.001, 0.001]), r"network\.latency_s\[1\]=10000000\.0 is not allowed"),
        # Bandwidths: within the bounds a preset gets (1e-40 bit/s underflows to 0 bits per tick on device).
        (dict(up_bps=[1e6, 1e6, 1e-40, 1e6]), r"network\.up_bps\[2\]=1e-40 is not allowed.*bit/s"),
        (dict(up_bps=[1e6, 0.5, 1e6, 1e6]), r"network\.up_bps\[1\]=0\.5 is not allowed"),  # below a preset's floor
        (dict(down_bps=[1e16, 1e6, 1e6, 1e6]), r"network\.down_bps\[0\]=1e\+16 is not allowed"),
        (dict(group_cap_bps=[[1e-40]]), r"network\.group_cap_bps\[0, 0\]=1e-40 is not allowed"),
        (dict(up_bps=1e6), r"network\.up_bps=.*\(shape \(\)\) is not allowed: expected a 1-D array"),
        (dict(up_bps=["fast"] * 4), r"network\.up_bps=.*fast.* is not allowed"),
        # Header bits: a non-negative integer (a negative one broke the delivery accounting).
        (dict(header_bits=-10**9), r"network\.header_bits=-1000000000 is not allowed"),
        (dict(header_bits=8.5), r"network\.header_bits=8\.5 is not allowed"),
        (dict(header_bits=10**40), r"network\.header_bits=1000.* is not allowed"),
        # Group ids index the [G, G] matrices (5 was a raw IndexError; -1 silently meant the last group).
        (dict(group=[0, 5, 0, 0]), r"network\.group\[1\]=5 is not allowed: expected integer group ids in \[0, 0\]"),
        (dict(group=[0, 0, -1, 0]), r"network\.group\[2\]=-1 is not allowed"),
        (dict(group=[0.0, 0.0, 0.0, 0.0]), r"network\.group has dtype float64"),
        # Shapes agree with each other.
        (dict(group_cap_bps=[[INF, INF]]), r"network\.group_cap_bps has shape \(1, 2\)"),
        (dict(group_latency_s=np.zeros((2, 2))), r"network\.group_latency_s has shape \(2, 2\): expected \(1, 1\)"),
    ],
    ids=lambda v: "-".join(v) if isinstance(v, dict) else "",
)
def test_bad_custom_network_is_refused(changes, message):
    with pytest.raises(ConfigError, match=message):
        dataclasses.replace(network.uniform(4, 1.5), **changes)


def test_the_slowest_link_a_preset_may_have_is_a_valid_custom_network():
    slowest = network.MIN_BPS  # 1 bit/s, NetworkConfig's MIN_MBPS
    assert dataclasses.replace(network.uniform(4), up_bps=np.full(4, slowest)).up_bps.min() == slowest
    assert network.from_config(NetworkConfig(preset="uniform", stragglers=0, fast_mbps=1e-6), 4).up_bps.min() == slowest


def test_network_of_the_wrong_size_or_kind_is_refused_before_the_task_is_built(monkeypatch):
    cfg = tiny()  # 6 nodes
    monkeypatch.setattr(engine.tasks, "build", lambda *a, **k: pytest.fail("built the task before the network"))
    with pytest.raises(ConfigError, match=r"network with 4 nodes is not allowed: .*config\.nodes=6"):
        engine.build(cfg, network=network.uniform(4))
    with pytest.raises(ConfigError, match=r"network=NetworkConfig\(.*\) is not allowed: expected a divjax\.network"):
        engine.build(cfg, network=NetworkConfig())


def test_network_keeps_its_own_read_only_copy_of_what_was_checked():
    latency = [0.001] * 4  # a list is accepted and stored as an array
    up = np.full(4, 1e6)
    net = dataclasses.replace(network.uniform(4), up_bps=up, latency_s=latency, header_bits=np.int64(8))
    up[0] = NAN  # a later change to the caller's array cannot slip past the checks
    assert net.up_bps[0] == 1e6 and net.latency_s.dtype == np.float64 and net.header_bits == 8
    with pytest.raises(ValueError, match="read-only"):
        net.up_bps[0] = NAN


def test_presets_still_build_and_are_read_only():
    presets = [network.uniform(4), network.stragglers(60, 7, 5.0),
               network.diablo(60),  # reads the packaged inter-site bandwidth matrix
               network.from_config(NetworkConfig(fast_mbps=1e9, slowdown=1e9), 10)]  # the bounds' ends
    assert [p.nodes for p in presets] == [4, 60, 60, 10]
    assert presets[1].stragglers().tolist() == list(range(7)) and presets[2].group_cap_bps.shape == (10, 10)
    for net in presets:
        assert not any(getattr(net, f).flags.writeable for f in ("up_bps", "down_bps", "latency_s", "group",
                                                                   "group_cap_bps", "group_latency_s"))
