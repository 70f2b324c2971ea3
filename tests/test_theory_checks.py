"""Measurement next to theory: pure averaging in the engine is the delayed recursion, its measured mixing
is the closed form's, and DivShare's averaged gradient norm sits below the sigma/sqrt(nT) leading term."""

import numpy as np
import pytest

from divjax import theory, theory_checks


def test_engine_averaging_is_the_delayed_recursion_exactly():
    # J = n - 1 and full delivery: every W is 11^T/n, so the curve has no sampling error at all.
    n, rounds = 8, 6
    run = theory_checks.averaging_run(theory_checks.averaging_config(n, n - 1, rounds=rounds, dim=64))
    expected = theory.averaging_curve(theory.divshare_sampler(n, n - 1), rounds, delayed=True)
    np.testing.assert_allclose(run.consensus, expected, rtol=1e-3, atol=1e-9)
    assert run.consensus[1] < 1e-9 < run.consensus[2]  # consensus after one round, lost at the next
    np.testing.assert_allclose(run.mixing.mean, np.full((n, n), 1 / n))
    assert run.lambda2 == pytest.approx(0.0, abs=1e-12) and run.rho == pytest.approx(0.0, abs=1e-12)


def test_averaging_runs_against_the_closed_forms():
    n, degree = 12, 3
    runs = theory_checks.mixing_experiment(n, degree, omegas=[0.5], stragglers=3, slowdowns=[8.0], rounds=30,
                                           dim=40)
    full, slow = (run.row() for run in runs)
    rho = theory.divshare_rho(n, degree)
    assert full["rho_closed_form"] == pytest.approx(rho)
    assert full["delivery_fast"] == 1.0 and full["staleness_max"] == 1.0 and full["age_s_max"] == 1.0
    assert full["lambda2_measured"] == pytest.approx(full["lambda2_closed_form"], abs=4 * full["lambda2_se"])
    assert full["rho_measured"] == pytest.approx(rho, abs=4 * full["rho_se"])
    # The engine contracts like the delayed recursion, not like rho^t.
    # (0.456 vs 0.459 here; the recursion averages 64 sampled W, so a few % of Monte Carlo error is allowed)
    assert full["consensus_rate_measured"] == pytest.approx(full["consensus_rate_delayed"], rel=0.03)
    assert full["consensus_rate_measured"] > 1.3 * rho
    # Stragglers get out about 1/(load * slowdown) = 1/2 of their fragments, are flushed for the rest, and
    # weigh less in the fixed point.
    assert 0.3 < slow["delivery_stragglers"] < 0.7 < slow["delivery_fast"]
    assert slow["flushed_per_straggler_iteration"] > 1
    assert slow["lambda2_closed_form"] > full["lambda2_closed_form"]
    assert slow["lambda2_measured"] == pytest.approx(slow["lambda2_closed_form"], abs=4 * slow["lambda2_se"])
    assert slow["perron_stragglers_measured"] < 1 / n and slow["perron_stragglers_closed_form"] < 1 / n


def test_gradient_norm_below_the_leading_term():
    rows = theory_checks.gradient_experiment([4], [16, 128], samples_per_node=32)
    short, long = rows
    assert short["lr"] > long["lr"]  # eta* shrinks as 1/sqrt(T)
    assert long["avg_grad_norm2"] < short["avg_grad_norm2"]
    for row in rows:
        assert 0.1 < row["ratio"] < 1.0
