"""The two implementations of mixing (dense matmul, compacted gather) give the same simulation."""

import numpy as np
import pytest

from divjax import engine
from divjax.config import NetworkConfig
from tests.helpers import tiny


@pytest.mark.parametrize("algorithm", ["divshare", "adpsgd", "dpsgd"])
def test_dense_and_gather_mixing_agree(algorithm):
    cfg = tiny(algorithm=algorithm, omega=0.25, duration=10.0,
               network=NetworkConfig(preset="stragglers", stragglers=2, slowdown=8.0, fast_mbps=0.05))
    states = {}
    for mixing in ("dense", "gather"):
        sim = engine.build(cfg, mixing=mixing)
        assert sim.spec.mix_dense == (mixing == "dense")
        states[mixing] = engine.advance(sim, sim.initial_state(), engine.ticks_for(cfg.duration, cfg.tick))
    dense, gather = states["dense"], states["gather"]
    assert int(dense.counters.applied.sum()) > 0
    for name in ("sent", "applied", "superseded", "flushed", "delivered"):
        np.testing.assert_array_equal(getattr(dense.counters, name), getattr(gather.counters, name), err_msg=name)
    np.testing.assert_allclose(engine.flatten_models(dense.params), engine.flatten_models(gather.params),
                               rtol=1e-5, atol=1e-6)


def test_a_diverged_model_reaches_only_the_nodes_that_apply_it():
    """Mixing must not spread NaN through zero weights (a dense matmul would: 0 * NaN = NaN)."""
    import jax.numpy as jnp


    cfg = tiny(duration=1.0, eval_every=1.0, on_divergence="continue")
    sim = engine.build(cfg, mixing="dense")
    state = sim.initial_state()
    params = {k: {n: v.at[3].set(jnp.nan) for n, v in layer.items()} for k, layer in state.params.items()}
    state = engine.advance(sim, state.replace(params=params), 4)  # one iteration: node 3's NaN is sent, not landed
    finite = np.isfinite(np.asarray(engine.flatten_models(state.params))).all(axis=1)
    assert finite.tolist() == [True, True, True, False, True, True]
