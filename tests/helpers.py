"""Tiny configurations shared by the tests (seconds to compile and run on 2 CPU cores)."""

from divjax.config import Config, NetworkConfig, TaskConfig

TINY_TASK = TaskConfig(hidden=4, samples_mean_log=3.0, samples_sigma_log=0.3, samples_cap=80)


def tiny(**changes) -> Config:
    """6 nodes, a 294-parameter model, 4 local steps of 0.25 s, a 3 Mbit/s network with one straggler."""
    network = changes.pop("network", NetworkConfig(preset="stragglers", stragglers=1, slowdown=4.0,
                                                   fast_mbps=0.5, latency_ms=2.0))
    base = dict(algorithm="divshare", nodes=6, degree=2, omega=0.5, local_steps=4, batch_size=4, lr=0.05,
                step_time=0.25, duration=20.0, eval_every=5.0, seed=0, task=TINY_TASK, network=network)
    base.update(changes)
    return Config(**base)
