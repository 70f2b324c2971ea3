"""Same-shape configurations reuse the compiled code: another seed, learning rate or bandwidth compiles
nothing, for a single run and for a sweep."""

import contextlib

import jax

import divjax
from divjax import sweep
from tests.helpers import tiny

BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def count_compilations():
    """Count XLA compilations (of anything: the tick loop, evaluation, eager ops) inside the block."""
    compiled = []

    def listen(event: str, duration_secs: float, **kwargs) -> None:
        if event == BACKEND_COMPILE:
            compiled.append(kwargs.get("fun_name", "?"))

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        yield compiled
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)


def other_numbers(**changes) -> divjax.Config:
    """The tiny configuration with another seed, learning rate and bandwidths: the same shapes."""
    network = divjax.NetworkConfig(preset="stragglers", stragglers=2, slowdown=6.0, fast_mbps=0.3, latency_ms=5.0)
    return tiny(seed=11, lr=0.1, network=network, **changes)


def test_second_run_with_other_numbers_compiles_nothing():
    divjax.run(tiny(duration=4.0), progress=False)
    with count_compilations() as compiled:
        divjax.run(other_numbers(duration=4.0), progress=False)
    assert compiled == []


def test_second_sweep_with_other_numbers_compiles_nothing():
    sweep.run([tiny(duration=4.0), tiny(seed=1, duration=4.0)], progress=False)
    traces = sweep.TRACES.copy()
    with count_compilations() as compiled:
        sweep.run([other_numbers(duration=4.0), tiny(seed=5, lr=0.02, duration=4.0)], progress=False)
    assert compiled == []
    assert sweep.TRACES == traces


def test_the_counter_sees_a_compilation():
    with count_compilations() as compiled:
        jax.jit(lambda x: x + 1)(1.0)
    assert len(compiled) == 1
