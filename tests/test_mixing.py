"""The two implementations of mixing (dense matmul, compacted gather) give the same simulation."""

import numpy as np
import pytest

from divjax import diagnostics, engine
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
    """Mixing must not spread NaN through zero weights (a dense matmul would: 0 * NaN = NaN): the dense form
    falls back to the gather form when its sum is not finite, so both leave non-finite exactly the NaN node
    and the fragments that other nodes applied from it, as the message log says."""
    import jax.numpy as jnp

    # Two iterations: node 3's NaN copies, sent at the first boundary (tick 4), land and are mixed at the
    # second (tick 8), by one matmul over the ring slot they sit in.
    cfg = tiny(duration=2.0, eval_every=1.0, on_divergence="continue")
    nan_node, ticks = 3, engine.ticks_for(2.0, cfg.tick)
    nonfinite, models, expected = {}, {}, {}
    for mixing in ("dense", "gather"):
        sim = engine.build(cfg, mixing=mixing, log_messages=256)
        assert sim.spec.mix_dense == (mixing == "dense")
        state = sim.initial_state()
        params = {k: {n: v.at[nan_node].set(jnp.nan) for n, v in layer.items()} for k, layer in state.params.items()}
        state = engine.advance(sim, state.replace(params=params), ticks)
        frags = np.asarray(engine.own_fragments(sim.params, state.params))  # [m, n, L], padding is 0
        nonfinite[mixing] = ~np.isfinite(frags).all(axis=2)
        models[mixing] = np.asarray(engine.flatten_models(state.params))

        # What the log says should be non-finite: node 3, and each fragment another node applied from it.
        rec = diagnostics.applied_messages(sim, state)
        from_nan = rec.sender == nan_node
        assert from_nan.any(), "no node applied a copy of the NaN model: advance further"
        # The premise: those copies were mixed at the last tick, so no local step has spread the NaN over the
        # rest of their receivers' models yet, and no receiver has passed it on (what it sent at that tick is
        # its snapshot from before mixing).
        assert np.all(rec.applied_time[from_nan] == ticks * sim.dt)
        want = np.zeros_like(nonfinite[mixing])
        want[:, nan_node] = True
        want[rec.fragment[from_nan], rec.receiver[from_nan]] = True
        expected[mixing] = want
    np.testing.assert_array_equal(expected["dense"], expected["gather"])  # the same messages, the same fates
    want = expected["dense"]
    reached = set(np.flatnonzero(want.any(axis=0)).tolist())
    assert reached > {nan_node} and len(reached) < cfg.nodes, reached  # some nodes are reached, some are not
    for mixing in ("dense", "gather"):
        np.testing.assert_array_equal(nonfinite[mixing], want, err_msg=f"{mixing}: non-finite [fragment, node]")
        assert set(np.flatnonzero(nonfinite[mixing].any(axis=0)).tolist()) == reached, mixing
    # And the two forms agree on the finite coordinates (and NaN in the same ones).
    np.testing.assert_allclose(models["dense"], models["gather"], rtol=1e-5, atol=1e-6)
