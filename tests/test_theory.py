"""Mixing matrices: closed forms against exact enumeration, Monte Carlo and the engine (spec/paper.md §5.4)."""

import itertools
import math

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


# ------------------------------------------------------------------ closed forms, exact sums, Monte Carlo

def _brute_force(n, degree, delivery):
    """E[W] and E[W^T Pi W] of DivShare by enumerating every sender's recipients and deliveries."""
    outcomes = []  # per sender: (applied recipients, probability)
    for s in range(n):
        peers = [r for r in range(n) if r != s]
        mine = []
        for chosen in itertools.combinations(peers, degree):
            for applied in itertools.product([0, 1], repeat=degree):
                prob = np.prod([delivery[s] if a else 1 - delivery[s] for a in applied]) / math.comb(n - 1, degree)
                mine.append(([r for r, a in zip(chosen, applied) if a], prob))
        outcomes.append(mine)
    mean, second = np.zeros((n, n)), np.zeros((n, n))
    for combo in itertools.product(*outcomes):
        m = np.eye(n)
        for s, (recipients, _) in enumerate(combo):
            m[recipients, s] = 1.0
        w = m / m.sum(axis=1, keepdims=True)
        prob = np.prod([p for _, p in combo])
        mean += prob * w
        second += prob * theory.consensus_second_moment(w)
    return mean, second


@pytest.mark.parametrize("n,degree,delivery", [(4, 2, [1.0, 0.3, 0.8, 0.5]), (5, 1, [0.2, 1.0, 1.0, 0.6, 0.9])])
def test_divshare_exact_moments_match_enumeration(n, degree, delivery):
    mean, second = _brute_force(n, degree, delivery)
    np.testing.assert_allclose(theory.divshare_expected_mixing(n, degree, np.array(delivery)), mean, atol=1e-12)
    np.testing.assert_allclose(theory.divshare_second_moment(n, degree, np.array(delivery)), second, atol=1e-12)


def test_full_delivery_reduces_to_the_closed_form():
    for n, degree in [(60, 6), (17, 3), (8, 7)]:
        general = theory.divshare_expected_mixing(n, degree, np.ones(n))
        np.testing.assert_allclose(general, theory.divshare_expected_mixing(n, degree), atol=1e-13)
        assert theory.lambda2(general) == pytest.approx(theory.divshare_lambda2(n, degree), abs=1e-12)
        second = theory.divshare_second_moment(n, degree)
        assert theory.rho(second) >= theory.lambda2(general) ** 2  # Jensen
        np.testing.assert_allclose(second, second.T, atol=1e-13)
    # Swift as implemented is DivShare with m = 1: per coordinate the same matrix.
    np.testing.assert_array_equal(theory.expected_mixing("swift", 60, 6), theory.expected_mixing("divshare", 60, 6))


def _assert_matches(mc, mean, second):
    """Closed forms within sampling error of a Monte-Carlo run."""
    for estimate, se, exact in [(mc.mean, mc.mean_se, mean), (mc.second, mc.second_se, second)]:
        z = (estimate - exact)[se > 0] / se[se > 0]
        assert abs(np.mean(z ** 2) - 1.0) < 0.3 and np.abs(z).max() < 6.0
    assert mc.lambda2 == pytest.approx(theory.lambda2(mean), abs=4 * mc.lambda2_se)
    assert mc.rho == pytest.approx(theory.rho(second), abs=4 * mc.rho_se)


@pytest.mark.parametrize("stragglers", [0, 4])
def test_divshare_closed_form_matches_monte_carlo(stragglers):
    n, degree = 16, 3
    delivery = np.where(np.arange(n) < stragglers, 0.3, 1.0)
    mean = theory.divshare_expected_mixing(n, degree, delivery)
    second = theory.divshare_second_moment(n, degree, delivery)
    mc = theory.monte_carlo(theory.divshare_sampler(n, degree, delivery), 6000, seed=stragglers,
                            reference_mean=mean, reference_second=second)
    _assert_matches(mc, mean, second)


def test_stragglers_break_double_stochasticity():
    n, degree, slow = 60, 6, np.arange(7)
    delivery = np.ones(n)
    delivery[slow] = 0.3
    w = theory.divshare_expected_mixing(n, degree, delivery)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-12)  # rows: stochastic
    columns = w.sum(axis=0)
    assert np.all(columns[slow] < 0.8) and np.all(np.delete(columns, slow) > 1.0)
    pi = theory.perron_vector(w)
    assert pi.sum() == pytest.approx(1.0) and np.allclose(pi @ w, pi)
    assert pi[slow].max() < 1 / n < np.delete(pi, slow).min()
    # Stragglers slow the contraction, in expectation and in mean square.
    assert theory.lambda2(w) > theory.divshare_lambda2(n, degree) + 0.1
    assert theory.divshare_rho(n, degree, delivery) > theory.divshare_rho(n, degree)


def test_adpsgd_closed_form_matches_monte_carlo():
    n, degree = 20, 6
    mean = theory.adpsgd_expected_mixing(n, degree)
    assert theory.adpsgd_pings(degree) == 3
    sample = theory.adpsgd_sampler(n, degree)
    w = sample(np.random.default_rng(0), 50)
    np.testing.assert_array_equal(w > 0, np.swapaxes(w > 0, 1, 2))  # pings are answered: i hears s iff s hears i
    mc = theory.monte_carlo(sample, 6000, seed=1, reference_mean=mean)
    z = (mc.mean - mean) / mc.mean_se
    assert abs(np.mean(z ** 2) - 1.0) < 0.3 and np.abs(z).max() < 6.0
    assert mc.lambda2 == pytest.approx(theory.lambda2(mean), abs=4 * mc.lambda2_se)
    assert theory.lambda2(mean) == pytest.approx(theory.uniform_lambda2(n, theory.adpsgd_self_weight(n, degree)))


@pytest.mark.parametrize("graph", ["ring", "torus", "exponential", "complete"])
def test_dpsgd_spectra_match_closed_forms(graph):
    for n in (3, 5, 8, 12, 16, 17, 60):
        w = theory.dpsgd_mixing(graph, n)
        np.testing.assert_allclose(np.linalg.eigvalsh(w), theory.gossip_spectrum(graph, n), atol=1e-12)
        second = theory.consensus_second_moment(w)
        assert theory.rho(second) == pytest.approx(theory.lambda2(w) ** 2, abs=1e-12)
        np.testing.assert_array_equal(theory.expected_mixing("dpsgd", n, 4, graph=graph), w)


def test_known_gossip_gaps():
    for n in (5, 10, 60):  # ring, weights 1/3: eigenvalues 1/3 + 2/3 cos(2 pi k/n)
        assert theory.lambda2(theory.dpsgd_mixing("ring", n)) == pytest.approx(1 / 3 + 2 / 3 * np.cos(2 * np.pi / n))
        assert theory.lambda2(theory.dpsgd_mixing("complete", n)) == pytest.approx(0.0, abs=1e-12)
    # 4 x 4 torus: (1 + 2 cos(2 pi j/4) + 2 cos(2 pi k/4))/5, so lambda_2 = 3/5; 60 = 6 x 10.
    assert theory.lambda2(theory.dpsgd_mixing("torus", 16)) == pytest.approx(0.6)
    expected = (1 + 2 + 2 * np.cos(2 * np.pi / 10)) / 5
    assert theory.lambda2(theory.dpsgd_mixing("torus", 60)) == pytest.approx(expected)
