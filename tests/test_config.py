"""Bad input is refused with a clear error naming the field, before anything compiles."""

import dataclasses
import json
import warnings

import numpy as np
import pytest

from divjax import engine, network
from divjax.config import Config, ConfigError, NetworkConfig
from tests.helpers import TINY_TASK, tiny


def NET(**changes) -> NetworkConfig:
    return NetworkConfig(**{"stragglers": 1, **changes})


@pytest.mark.parametrize(
    "changes, field",
    [
        (dict(degree=6), "degree"),  # J >= n
        (dict(degree=9), "degree"),
        (dict(omega=0.0), "omega"),
        (dict(omega=1.5), "omega"),
        (dict(omega=float("nan")), "omega"),
        (dict(dt=0.0), "dt"),
        (dict(dt=-0.1), "dt"),
        (dict(dt=1.0), "dt"),  # longer than a step
        (dict(algorithm="gossip"), "algorithm"),
        (dict(nodes=1), "nodes"),
        (dict(step_time=0.0), "step_time"),
        (dict(lr=-1.0), "lr"),
        (dict(local_steps=0), "local_steps"),
        (dict(topology="star"), "topology"),
        (dict(network=NET(fast_mbps=0.0)), "network.fast_mbps"),
        (dict(network=NET(fast_mbps=-5.0)), "network.fast_mbps"),
        (dict(network=NET(fast_mbps=1e-9)), "network.fast_mbps"),  # below a bit per second
        (dict(network=NET(fast_mbps=1e-5, slowdown=100.0)), "network.slowdown"),  # stragglers below it
        (dict(network=NET(slowdown=0.0)), "network.slowdown"),
        (dict(network=NET(transport="udp")), "network.transport"),
        (dict(network=NET(preset="mesh")), "network.preset"),
        (dict(network=NetworkConfig(stragglers=7)), "network.stragglers"),  # more than 6 nodes
        (dict(network=NET(preset="diablo")), "nodes"),  # 6 is not a multiple of 10
        # Sizes that would overflow int32 or ask for terabytes fail here, not in XLA.
        (dict(batch_size=10**9), "nodes * local_steps * batch_size"),  # the minibatch plan's size names them
        (dict(local_steps=10**9), "nodes * local_steps * batch_size"),
        (dict(queue_capacity=10**12), "queue_capacity"),
        (dict(snapshot_slots=10**12), "snapshot_slots"),
        (dict(nodes=200, queue_capacity=2**24), "nodes"),  # each within its bound, 3.4e9 records in all
        (dict(algorithm="adpsgd", degree=10**12), "degree"),
        (dict(omega=1e-4), "omega"),  # 10,000 fragments of a 294-parameter model: most would be empty
        (dict(omega=5e-324), "omega"),  # int(1/omega) would overflow
        (dict(task=dataclasses.replace(TINY_TASK, samples_cap=10**12)), "task.samples_cap"),
        # JSON's true is not a number.
        (dict(target_accuracy=True), "target_accuracy"),
        (dict(compute_slowdown=True), "compute_slowdown"),
        (dict(network=NET(latency_ms=True)), "network.latency_ms"),
        (dict(task=dataclasses.replace(TINY_TASK, alpha=True)), "task.alpha"),
        # A field the task does not read is refused rather than silently ignored.
        (dict(task=dataclasses.replace(TINY_TASK, test_samples=100)), "task.test_samples"),
        (dict(task=dataclasses.replace(TINY_TASK, data_dir="/tmp")), "task.data_dir"),
    ],
)
def test_bad_input_is_refused_before_compiling(changes, field):
    with pytest.raises(ConfigError) as err:  # engine.build compiles nothing: refused before any compile
        engine.build(tiny(**changes))
    message = str(err.value)
    assert message.startswith(f"{field}=") or f"{field}=" in message, message
    assert "allowed" in message


def test_error_names_value_and_allowed_range():
    with pytest.raises(ConfigError, match=r"degree=6 is not allowed: J must be < nodes=6"):
        tiny(degree=6).validate()
    with pytest.raises(ConfigError, match=r"omega=1.5 .*\[1e-09, 1\]"):
        tiny(omega=1.5).validate()


def test_custom_network_rejects_non_positive_bandwidth():
    net = network.uniform(4)
    with pytest.raises(ConfigError, match="up_bps"):
        network.Network(up_bps=np.array([1e6, 0.0, 1e6, 1e6]), down_bps=net.down_bps, latency_s=net.latency_s,
                        group=net.group, group_cap_bps=net.group_cap_bps, group_latency_s=net.group_latency_s)


def test_a_slow_uniform_network_is_not_refused_for_a_slowdown_it_does_not_use():
    tiny(network=NetworkConfig(preset="uniform", stragglers=0, fast_mbps=2e-6, slowdown=5.0)).validate()
    with pytest.raises(ConfigError, match=r"network.slowdown=5.0 is not allowed: a straggler's link"):
        tiny(network=NetworkConfig(preset="stragglers", stragglers=1, fast_mbps=2e-6, slowdown=5.0)).validate()


@pytest.mark.parametrize("log_messages", [-1, 2.5, True])
def test_a_message_log_size_that_is_not_a_count_is_refused(log_messages):
    with pytest.raises(ConfigError, match=rf"log_messages={log_messages!r} is not allowed: expected an integer >= 0"):
        engine.build(tiny(), log_messages=log_messages)


def test_json_round_trip_and_unknown_fields():
    cfg = tiny(algorithm="swift", seed=3)
    assert Config.from_dict(json.loads(cfg.to_json())) == cfg
    with pytest.raises(ConfigError, match="unknown config field"):
        Config.from_dict({"nodez": 3})
    with pytest.raises(ConfigError, match="network.bandwidth"):
        Config.from_dict({"network": {"bandwidth": 3}})


def test_fragment_count_truncates_like_the_reference():
    assert tiny(omega=0.3).fragments == 3  # int(1/0.3) = 3
    assert tiny(omega=0.1).fragments == 10
    assert tiny(omega=1.0).fragments == 1
    assert tiny(algorithm="swift", omega=0.1).fragments == 1


def test_step_times_off_whole_ticks_are_warned_about():
    """semantics.md, Time: step times are rounded to whole ticks, with a warning when that is > 1 % off."""
    with pytest.warns(UserWarning, match="rounded to whole ticks of dt=0.1: up to 20.0% off"):
        sim = engine.build(tiny(dt=0.1))  # a 0.25 s step is 2 ticks of 0.1 s: 0.2 s
    assert sim.params.step_ticks.tolist() == [2] * 6
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert engine.build(tiny(dt=0.125)).params.step_ticks.tolist() == [2] * 6  # exact: no warning
