"""Mixing matrices: closed forms against exact enumeration and Monte Carlo (spec/paper.md §5.4); pure averaging.
(The mixing measured from runs is checked in test_diagnostics.py.)"""

import itertools
import math

import numpy as np
import pytest

from divjax import theory


def test_closed_form_matches_the_paper_table():
    # spec/paper.md §5.4, n = 60: a and lambda for J = 3, 6, 9, 12.
    for degree, a, lam in [(3, 0.314, 0.302), (6, 0.164, 0.150), (9, 0.109, 0.094), (12, 0.082, 0.066)]:
        assert theory.divshare_self_weight(60, degree) == pytest.approx(a, abs=1e-3)
        assert theory.divshare_lambda2(60, degree) == pytest.approx(lam, abs=1e-3)
        w = theory.divshare_expected_mixing(60, degree)
        np.testing.assert_allclose(w.sum(0), 1.0)
        np.testing.assert_allclose(w.sum(1), 1.0)
        assert np.sort(np.linalg.eigvalsh(w))[-2] == pytest.approx(lam, abs=1e-3)


# ------------------------------------------------------------------ closed forms, exact sums, Monte Carlo

def _brute_force(n, degree, delivery):
    """E[W] and E[W^T Pi W] of DivShare by enumerating every sender's recipients and deliveries
    (``delivery``: per sender or per (sender, receiver) pair)."""
    pairs = theory.delivery_matrix(n, np.array(delivery))
    outcomes = []  # per sender: (applied recipients, probability)
    for s in range(n):
        peers = [r for r in range(n) if r != s]
        mine = []
        for chosen in itertools.combinations(peers, degree):
            for applied in itertools.product([0, 1], repeat=degree):
                p = [pairs[s, r] for r in chosen]
                prob = np.prod([p_r if a else 1 - p_r for p_r, a in zip(p, applied)]) / math.comb(n - 1, degree)
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


def test_divshare_expected_mixing_per_pair_matches_enumeration_and_monte_carlo():
    n, degree = 4, 2
    delivery = np.random.default_rng(3).uniform(0.1, 1.0, (n, n))
    mean, _ = _brute_force(n, degree, delivery)
    np.testing.assert_allclose(theory.divshare_expected_mixing(n, degree, delivery), mean, atol=1e-12)
    mc = theory.monte_carlo(theory.divshare_sampler(n, degree, delivery), 4000, seed=2, reference_mean=mean)
    z = (mc.mean - mean)[mc.mean_se > 0] / mc.mean_se[mc.mean_se > 0]
    assert np.abs(z).max() < 4.0  # the sampler draws per-pair deliveries too
    with pytest.raises(ValueError, match="per-sender"):
        theory.divshare_second_moment(n, degree, delivery)


def test_full_delivery_reduces_to_the_closed_form():
    for n, degree in [(60, 6), (17, 3), (8, 7)]:
        general = theory.divshare_expected_mixing(n, degree, np.ones(n))
        np.testing.assert_allclose(general, theory.divshare_expected_mixing(n, degree), atol=1e-13)
        assert theory.lambda2(general) == pytest.approx(theory.divshare_lambda2(n, degree), abs=1e-12)
        second = theory.divshare_second_moment(n, degree)
        assert theory.rho(second) >= theory.lambda2(general) ** 2 - 1e-12  # Jensen
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
    # A straggler that neither sends nor receives splits the network: no unique fixed point.
    cut = np.ones((n, n))
    cut[0, :] = cut[:, 0] = 0.0
    assert np.all(np.isnan(theory.perron_vector(theory.divshare_expected_mixing(n, degree, cut))))
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


def _complete_exchange_curve(n, rounds):
    """Every node hears from all others (J = n - 1): W = 11^T/n, and the delayed recursion's deviation from
    the mean obeys e_{t+1} = (e_t - e_{t-1})/n with e_{-1} = e_0 = 1, so Xi_t/Xi_0 = e_t^2."""
    e = [1.0, 1.0]
    for _ in range(rounds):
        e.append((e[-1] - e[-2]) / n)
    return np.array(e[1:]) ** 2


def test_averaging_curves():
    n, degree = 30, 4
    sample = theory.divshare_sampler(n, degree)
    rho = theory.divshare_rho(n, degree)
    synchronous = theory.averaging_curve(sample, 5, dim=8, repeats=512)
    np.testing.assert_allclose(synchronous, rho ** np.arange(6), rtol=0.08)  # E[Xi_t] = rho^t Xi_0
    delayed = theory.averaging_curve(sample, 5, delayed=True, dim=8, repeats=512)
    assert delayed[1] == pytest.approx(synchronous[1], rel=0.08)  # x_{-1} = x_0: the first round is W x_0
    assert delayed[5] > 10 * synchronous[5]  # mixing one-iteration-old copies contracts far more slowly
    complete = theory.divshare_sampler(8, 7)
    np.testing.assert_allclose(theory.averaging_curve(complete, 6, delayed=True), _complete_exchange_curve(8, 6),
                               rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(theory.averaging_curve(complete, 2), [1.0, 0.0, 0.0], atol=1e-12)
