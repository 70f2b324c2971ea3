"""DivShare's measured mixing matrix agrees with its closed form (spec/paper.md §5.4)."""

import numpy as np
import pytest

from divjax import engine, theory
from divjax.config import NetworkConfig
from tests.helpers import tiny


def test_closed_form_matches_the_paper_table():
    # spec/paper.md §5.4, n = 60: a and lambda for J = 3, 6, 9, 12.
    for degree, a, lam in [(3, 0.314, 0.302), (6, 0.164, 0.150), (9, 0.109, 0.094), (12, 0.082, 0.066)]:
        assert theory.divshare_self_weight(60, degree) == pytest.approx(a, abs=1e-3)
        assert theory.divshare_lambda2(60, degree) == pytest.approx(lam, abs=1e-3)
        w = theory.divshare_expected_mixing(60, degree)
        np.testing.assert_allclose(w.sum(0), 1.0)
        np.testing.assert_allclose(w.sum(1), 1.0)
        assert np.sort(np.linalg.eigvalsh(w))[-2] == pytest.approx(lam, abs=1e-3)


def test_measured_mixing_of_divshare_matches_closed_form():
    n, degree = 16, 3
    cfg = tiny(nodes=n, degree=degree, omega=0.5, duration=300.0,
               network=NetworkConfig(preset="uniform", stragglers=0, fast_mbps=10.0, latency_ms=1.0))
    sim = engine.build(cfg, log_messages=40_000)
    state = engine.advance(sim, sim.initial_state(), engine.ticks_for(cfg.duration, cfg.tick))
    counters = state.counters
    assert int(counters.flushed.sum()) == 0 and int(counters.superseded.sum()) == 0  # full delivery
    iterations = np.asarray(state.iteration)
    # Skip the first boundary, at which nothing has been sent yet.
    w = theory.empirical_mixing(counters.log, n, cfg.fragments, iterations - 1, after_tick=1.5 * 4)
    expected = theory.divshare_expected_mixing(n, degree)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-9)  # rows: exactly stochastic
    # Columns: stochastic to sampling error (about 600 draws of each row).
    np.testing.assert_allclose(w.sum(axis=0), 1.0, atol=0.05)
    assert theory.mean_nontrivial_eigenvalue(w) == pytest.approx(theory.divshare_lambda2(n, degree), abs=0.01)
    second = np.sort(np.linalg.eigvalsh((w + w.T) / 2))[-2]
    assert second == pytest.approx(theory.divshare_lambda2(n, degree), abs=0.05)
    assert np.linalg.norm(w - expected, 2) < 0.06
