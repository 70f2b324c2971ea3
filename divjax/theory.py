"""Mixing matrices in theory: closed forms, exact finite sums, and Monte Carlo (what a run measures is in
:mod:`divjax.diagnostics`).

Notation. ``W`` is the random mixing matrix of one round (one coordinate): row i holds the weights node i
gives to the models it averages, ``x <- W x``. ``Pi = I - 11^T/n`` projects off consensus. The two numbers
the theory uses (spec/paper.md §5.2-§5.4) are

    lambda_2 = ||E[W] Pi||_2                     (``lambda2``: how fast the expected models contract)
    rho      = lambda_max(Pi E[W^T Pi W] Pi)     (``rho``: E||Pi W x||^2 <= rho ||Pi x||^2 when W1 = 1)

**DivShare** (and the reference's Swift, which is DivShare with m = 1 and no flush: per coordinate it is
the same W). Each node sends the coordinate's fragment to J distinct peers drawn uniformly among the other
n - 1; a message from sender s is applied with probability p_s (``delivery``; 1 for every node with full
delivery, less for stragglers whose messages are flushed or late), independently. So node i receives from
s with probability ``q_s = p_s J/(n-1)``, independently over senders, ``R_i`` senders in all, and sets
``x_i <- (x_i + sum received)/(1 + R_i)`` (spec/reference-impl.md §3.5: own value at weight 1). Using
``1/(1+R) = int_0^1 t^R dt`` every expectation becomes a polynomial integral, computed exactly by
Gauss-Legendre quadrature (see ``divshare_expected_mixing`` and ``divshare_second_moment``). With full
delivery (spec/paper.md §5.4)

    E[W] = a I + (1 - a)/(n - 1) (1 1^T - I),   a = E[1/(1+R)] = (1 - (1-q)^n) / (n q),   q = J/(n-1),

doubly stochastic, with lambda_2 = a - (1 - a)/(n - 1). With stragglers (p_s < 1) E[W] is row- but not
column-stochastic: straggler columns sum to less than 1 and its Perron vector weighs stragglers less. E[W]
(not the second moment) also takes probabilities per (sender, receiver) pair: with the reference's
stragglers, slow both ways, a fast node's copies to a straggler arrive less often than its other copies.

**AD-PSGD** as the reference implements it (spec/reference-impl.md §4), in a synchronous-round
idealisation: every node pings P = floor(J/2) peers drawn uniformly with replacement, every ping and pong
is delivered before the next boundary, and a pong carries the responder's snapshot of this round. Node i
then averages uniformly over itself and S_i = {nodes it pinged} U {nodes that pinged it} (so s is in S_i
iff i is in S_s), and E[W] has the same uniform form as DivShare's with ``a = E[1/(1 + |S_i|)]``.

**D-PSGD** mixes with the fixed Metropolis matrix of its graph (``divjax.topology``); E[W] = W.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from divjax import topology as topo
from divjax.metrics import consensus_distance

# ---------------------------------------------------------------------------------------------- spectra


def consensus_projector(n: int) -> np.ndarray:
    """``Pi = I - 11^T/n``."""
    return np.eye(n) - 1.0 / n


def lambda2(w: np.ndarray) -> float:
    """``||W Pi||_2``: the largest singular value of W off the consensus direction (for a symmetric doubly
    stochastic W, its second-largest eigenvalue in modulus)."""
    return float(np.linalg.norm(w @ consensus_projector(w.shape[0]), 2))


def rho(second_moment: np.ndarray) -> float:
    """``lambda_max(Pi S Pi)`` for ``S = E[W^T Pi W]``: the worst-case factor by which one round shrinks the
    expected consensus distance, ``E||Pi W x||^2 <= rho ||Pi x||^2`` (W row-stochastic)."""
    p = consensus_projector(second_moment.shape[0])
    return float(np.linalg.eigvalsh(p @ ((second_moment + second_moment.T) / 2) @ p)[-1])


def mean_nontrivial_eigenvalue(w: np.ndarray) -> float:
    """``trace(P W P)/(n-1)`` with ``P = I - 11^T/n``: the mean eigenvalue of W off the consensus direction
    (equal to lambda_2 when, as for DivShare's E[W], all n-1 of them coincide)."""
    p = consensus_projector(w.shape[0])
    return float(np.trace(p @ w @ p) / (w.shape[0] - 1))


def consensus_second_moment(w: np.ndarray) -> np.ndarray:
    """``W^T Pi W`` of one (deterministic) mixing matrix."""
    return w.T @ consensus_projector(w.shape[0]) @ w


def perron_vector(w: np.ndarray) -> np.ndarray:
    """The stationary vector ``pi^T W = pi^T``, ``sum pi = 1``, of a row-stochastic (expected) W: the weight
    each node's model has in the network's fixed point ``x_inf = (pi^T x) 1``; uniform, ``1/n``, iff W is
    doubly stochastic. All ``nan`` when it is not unique (eigenvalue 1 repeated: the network falls apart
    into groups that never hear from one another)."""
    values, vectors = np.linalg.eig(w.T)
    distance = np.abs(values - 1.0)
    if np.sum(distance < 1e-9) > 1:
        return np.full(w.shape[0], np.nan)
    v = np.real(vectors[:, np.argmin(distance)])
    return v / v.sum()


def uniform_mixing(n: int, self_weight: float) -> np.ndarray:
    """``a I + (1 - a)/(n - 1) (11^T - I)``: the E[W] of any algorithm whose nodes are exchangeable."""
    off = (1.0 - self_weight) / (n - 1)
    return np.full((n, n), off) + (self_weight - off) * np.eye(n)


def uniform_lambda2(n: int, self_weight: float) -> float:
    """The n-1 equal non-trivial eigenvalues of ``uniform_mixing(n, a)``: ``a - (1 - a)/(n - 1)``."""
    return self_weight - (1.0 - self_weight) / (n - 1)


def _gauss01(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre nodes and weights on [0, 1], exact for polynomials of degree <= n (so for every
    integrand here, whose degree is at most n - 1 per variable)."""
    t, w = np.polynomial.legendre.leggauss(n // 2 + 1)
    return (t + 1) / 2, w / 2


# ---------------------------------------------------------------------------------------------- DivShare


def divshare_self_weight(n: int, degree: int) -> float:
    """``a = E[1/(1+R)] = (1 - (1-q)^n)/(n q)`` with ``R ~ Bin(n-1, q)``, ``q = J/(n-1)`` (full delivery)."""
    q = degree / (n - 1)
    return (1.0 - (1.0 - q) ** n) / (n * q)


def divshare_lambda2(n: int, degree: int) -> float:
    """Second eigenvalue of DivShare's E[W] with full delivery: ``a - (1 - a)/(n - 1)``."""
    return uniform_lambda2(n, divshare_self_weight(n, degree))


def _check_degree(n: int, degree: int) -> None:
    if not 1 <= degree <= n - 1:
        raise ValueError(f"degree={degree} must be in [1, n-1] for n={n}")


def receive_probabilities(n: int, degree: int, delivery: np.ndarray | None = None) -> np.ndarray:
    """``q_s = p_s J/(n-1)``: the probability that a given other node applies sender s's copy of a
    coordinate (``delivery``: p_s per sender, all ones if omitted)."""
    p = np.ones(n) if delivery is None else np.asarray(delivery, float)
    if p.shape != (n,) or np.any(p < 0) or np.any(p > 1):
        raise ValueError(f"delivery must hold n={n} per-sender probabilities in [0, 1], got {p!r}")
    _check_degree(n, degree)
    return p * degree / (n - 1)


def delivery_matrix(n: int, delivery: np.ndarray | None = None) -> np.ndarray:
    """``[n, n]``: ``p[s, r]``, the probability that r applies a copy s sent it, from ``delivery`` given per
    sender (``[n]``), per (sender, receiver) pair (``[n, n]``; the diagonal is ignored) or omitted (1)."""
    p = np.ones(n) if delivery is None else np.asarray(delivery, float)
    if p.shape == (n,):
        p = np.repeat(p[:, None], n, axis=1)
    if p.shape != (n, n) or np.any(p < 0) or np.any(p > 1):
        raise ValueError(f"delivery must hold n={n} per-sender or n x n per-pair probabilities in [0, 1], "
                         f"got shape {p.shape}")
    return p


def divshare_expected_mixing(n: int, degree: int, delivery: np.ndarray | None = None) -> np.ndarray:
    """DivShare's E[W] for one coordinate.

    Full delivery (``delivery=None``): ``uniform_mixing(n, a)``, the closed form above. Otherwise, with
    ``q_sr = p_sr J/(n-1)`` (:func:`delivery_matrix`: per sender or per (sender, receiver) pair),
    ``psi_sr(t) = 1 - q_sr + q_sr t`` and ``G_r(t) = prod_{s != r} psi_sr(t)``:

        E[W]_rr = E[1/(1+R_r)]     = int_0^1 G_r(t) dt
        E[W]_rs = E[B_rs/(1+R_r)]  = q_sr int_0^1 t G_r(t) / psi_sr(t) dt      (s != r)

    (B_rs: r applies s's copy, independently over senders; ``1/(2 + R_{r,-s}) = int t^{1+R_{r,-s}} dt``.)
    Rows sum to 1; column s sums to less than 1 when s's copies arrive less often than the others'.
    Memory: ``n^3/2`` floats.
    """
    if delivery is None:
        return uniform_mixing(n, divshare_self_weight(n, degree))
    _check_degree(n, degree)
    q = delivery_matrix(n, delivery) * degree / (n - 1)
    q[np.diag_indices(n)] = 0.0
    t, weight = _gauss01(n)
    psi = 1.0 - q + q * t[:, None, None]  # [points, sender, receiver]
    g = weight[:, None] * np.exp(np.log(psi).sum(axis=1))  # [points, receiver]: quadrature weight x G_r(t)
    w = np.einsum("p,pr,psr->rs", t, g, q / psi)
    w[np.diag_indices(n)] = g.sum(axis=0)
    return w


def divshare_second_moment(n: int, degree: int, delivery: np.ndarray | None = None) -> np.ndarray:
    """DivShare's ``E[W^T Pi W]`` for one coordinate, exactly.

    ``E[W^T Pi W] = (1 - 1/n) E[W^T W] - (1/n) sum_{i != k} E[w_i w_k^T]`` (rows w_i; ``W1 = 1``).
    Each term is a double integral ``E[ind x^{R_i} y^{R_k}]`` over [0,1]^2 of a generating function that
    factorises over senders, because senders choose their peers independently:

    * same row (``E[W^T W]``, ``1/(1+R)^2 = int int (xy)^R``): sender s contributes
      ``phi_s = 1 - q_s + q_s xy``, and ``A_s = q_s xy/phi_s`` when i applied s's copy;
    * two rows i != k: sender s not in {i, k} reaches both with probability
      ``P11_s = p_s^2 J(J-1)/((n-1)(n-2))`` (J distinct peers), so it contributes
      ``phi_s = 1 + q_s(x + y - 2) + P11_s (1-x)(1-y)`` and, when it reaches i, k or both,
      ``A_s = x(q_s - P11_s + P11_s y)/phi_s``, ``B_s = y(q_s - P11_s + P11_s x)/phi_s``,
      ``C_s = P11_s xy/phi_s``; sender k reaches i alone (``psi_k(x) = 1 - q_k + q_k x``), sender i
      reaches k alone (``psi_i(y)``).

    The sums over rows are taken inside the integrand in O(n^2) per quadrature point (see
    ``_pair_rows`` and ``_same_rows``).
    """
    q = receive_probabilities(n, degree, delivery)
    t, weight = _gauss01(n)
    x, y = np.repeat(t, t.size), np.tile(t, t.size)
    point_weight = np.repeat(weight, t.size) * np.tile(weight, t.size)
    same = _same_rows(q, x * y, point_weight)
    both = q ** 2 * (degree - 1) * (n - 1) / (degree * (n - 2)) if n > 2 else np.zeros(n)
    pairs = _pair_rows(q, both, x, y, point_weight)
    return (1.0 - 1.0 / n) * same - pairs / n


def _weighted_outer(c: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``sum_p c_p u_p v_p^T`` over quadrature points p (u, v: ``[points, n]``)."""
    return (c[:, None] * u).T @ v


def _same_rows(q: np.ndarray, tau: np.ndarray, point_weight: np.ndarray) -> np.ndarray:
    """``E[W^T W] = sum_i E[w_i w_i^T]``. At ``tau = xy``, with ``kappa_i = 1/phi_i``, ``d_i = 1 - A_i``:
    ``sum_i kappa_i [(A + d_i e_i)(A + d_i e_i)^T + diag_{a != i}(A_a - A_a^2)]`` times ``prod_s phi_s``."""
    phi = 1.0 - q + q * tau[:, None]
    c = point_weight * np.exp(np.log(phi).sum(axis=1))
    a = q * tau[:, None] / phi
    kappa, d = 1.0 / phi, 1.0 - a
    var = a - a ** 2
    sk = kappa.sum(axis=1)
    out = _weighted_outer(c * sk, a, a) + _weighted_outer(c, kappa * d, a) + _weighted_outer(c, a, kappa * d)
    out[np.diag_indices(q.size)] += c @ (kappa * d ** 2 - kappa * var + sk[:, None] * var)
    return out


def _pair_rows(q: np.ndarray, both: np.ndarray, x: np.ndarray, y: np.ndarray,
               point_weight: np.ndarray) -> np.ndarray:
    """``sum_{i != k} E[w_i w_k^T]``. At (x, y): ``E[w_i w_k^T] = Phi alpha_k beta_i (u v^T + D)`` with
    ``Phi = prod_s phi_s``, ``alpha_k = psi_k(x)/phi_k``, ``beta_i = psi_i(y)/phi_i``,
    ``u = A + (1 - A_i) e_i + (q_k x/psi_k(x) - A_k) e_k``, ``v = B + (1 - B_k) e_k + (q_i y/psi_i(y) - B_i) e_i``
    and ``D = diag_{a not in {i,k}}(C_a - A_a B_a)``; summed over ordered pairs term by term."""
    xs, ys = x[:, None], y[:, None]
    phi = 1.0 + q * (xs + ys - 2.0) + both * (1.0 - xs) * (1.0 - ys)
    c = point_weight * np.exp(np.log(phi).sum(axis=1))
    psi_x, psi_y = 1.0 - q + q * xs, 1.0 - q + q * ys
    a = xs * (q - both + both * ys) / phi
    b = ys * (q - both + both * xs) / phi
    joint = both * xs * ys / phi
    alpha, beta = psi_x / phi, psi_y / phi
    delta, epsilon = 1.0 - a, 1.0 - b  # own weight 1 in place of A_i, B_k
    gamma, eta = q * xs / psi_x - a, q * ys / psi_y - b  # k's weight in row i, i's weight in row k
    sa, sb = alpha.sum(axis=1, keepdims=True), beta.sum(axis=1, keepdims=True)
    sab = (alpha * beta).sum(axis=1, keepdims=True)
    out = _weighted_outer(c * (sa * sb - sab)[:, 0], a, b)
    out += _weighted_outer(c, a, alpha * epsilon * (sb - beta) + beta * eta * (sa - alpha))
    out += _weighted_outer(c, beta * delta * (sa - alpha) + alpha * gamma * (sb - beta), b)
    out += _weighted_outer(c, beta * delta, alpha * epsilon) + _weighted_outer(c, alpha * gamma, beta * eta)
    diagonal = (-beta * delta * alpha * epsilon - alpha * gamma * beta * eta
                + beta * delta * eta * (sa - alpha) + alpha * gamma * epsilon * (sb - beta)
                + (joint - a * b) * ((sa - alpha) * (sb - beta) - (sab - alpha * beta)))
    out[np.diag_indices(q.size)] += c @ diagonal
    return out


def divshare_rho(n: int, degree: int, delivery: np.ndarray | None = None) -> float:
    """``rho`` of DivShare's ``E[W^T Pi W]`` (exact)."""
    return rho(divshare_second_moment(n, degree, delivery))


# ---------------------------------------------------------------------------------------------- AD-PSGD


def adpsgd_pings(degree: int) -> int:
    """The reference's AD-PSGD pings ``floor(J/2)`` peers per iteration."""
    return max(1, degree // 2)


def _distinct_draws(pings: int, choices: int) -> np.ndarray:
    """Distribution of the number of distinct values among ``pings`` uniform draws with replacement from
    ``choices`` values (the occupancy distribution), by dynamic programming over draws."""
    dist = np.zeros(pings + 1)
    dist[0] = 1.0
    for _ in range(pings):
        new = dist * np.arange(pings + 1) / choices
        new[1:] += dist[:-1] * (choices - np.arange(pings)) / choices
        dist = new
    return dist


def adpsgd_self_weight(n: int, degree: int) -> float:
    """``a = E[1/(1+|S_i|)]`` for the reference's AD-PSGD in the synchronous-round idealisation.

    ``|S_i| = D + X``: D distinct peers among node i's P pings (occupancy distribution over n - 1), and
    ``X ~ Bin(n - 1 - D, h)`` others that pinged i, ``h = 1 - (1 - 1/(n-1))^P``. So
    ``a = sum_d P(D=d) int_0^1 t^d (1 - h + h t)^(n-1-d) dt``.
    """
    pings = adpsgd_pings(degree)
    h = 1.0 - (1.0 - 1.0 / (n - 1)) ** pings
    t, weight = _gauss01(n)
    d = np.arange(pings + 1)
    integrals = (weight[:, None] * t[:, None] ** d * (1.0 - h + h * t[:, None]) ** (n - 1 - d)).sum(axis=0)
    return float(_distinct_draws(pings, n - 1) @ integrals)


def adpsgd_expected_mixing(n: int, degree: int) -> np.ndarray:
    """The reference's AD-PSGD E[W] per round (synchronous idealisation): ``uniform_mixing(n, a)`` with
    ``a = adpsgd_self_weight(n, degree)``; doubly stochastic by exchangeability."""
    return uniform_mixing(n, adpsgd_self_weight(n, degree))


# ---------------------------------------------------------------------------------------------- D-PSGD


def dpsgd_mixing(graph: str, n: int, degree: int = 4, seed: int = 0) -> np.ndarray:
    """D-PSGD's (deterministic) mixing matrix: the Metropolis weights of ``divjax.topology.build`` (what
    ``divjax.algorithms.dpsgd`` mixes with)."""
    return topo.metropolis(topo.build(graph, n, degree, seed))


def _cycle_spectrum(length: int, offsets: list[int]) -> tuple[np.ndarray, int]:
    """Adjacency eigenvalues of the circulant graph on ``length`` nodes linking i to i +- o for o in
    ``offsets``: ``sum_{s in S} cos(2 pi k s / length)``, S the distinct nonzero residues ``+-o``; and |S|,
    the degree."""
    residues = sorted(({o % length for o in offsets} | {-o % length for o in offsets}) - {0})
    k = np.arange(length)[:, None]
    return np.cos(2 * np.pi * k * np.array(residues, float)[None, :] / length).sum(axis=1), len(residues)


def gossip_spectrum(graph: str, n: int) -> np.ndarray:
    """Closed-form eigenvalues (ascending) of the Metropolis matrix of a vertex-transitive D-PSGD graph.

    The graph is d-regular, so ``W = (I + Adj)/(1 + d)``. Ring, exponential (offsets 2^k) and complete are
    circulant: ``1/(1+d) (1 + sum_{s in S} cos(2 pi k s/n))`` (ring, n >= 3: ``1/3 + 2/3 cos(2 pi k/n)``;
    complete: 1 once and 0 n-1 times). The r x c torus is a Kronecker sum of two cycles:
    ``(1 + mu_j + nu_k)/(1 + d)`` with mu, nu the cycles' adjacency eigenvalues (``2 cos(2 pi j/r)``).
    """
    if graph == "torus":
        rows = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
        mu, d_rows = _cycle_spectrum(rows, [1])
        nu, d_cols = _cycle_spectrum(n // rows, [1])
        adjacency, degree = (mu[:, None] + nu[None, :]).ravel(), d_rows + d_cols
    else:
        offsets = {"ring": [1], "complete": list(range(1, n)),
                   "exponential": [2 ** k for k in range(max(1, (n - 1).bit_length()))]}[graph]
        adjacency, degree = _cycle_spectrum(n, offsets)
    return np.sort((1.0 + adjacency) / (1.0 + degree))


# ---------------------------------------------------------------------------------------------- dispatch


def expected_mixing(algorithm: str, n: int, degree: int, delivery: np.ndarray | None = None,
                    graph: str = "ring", seed: int = 0) -> np.ndarray:
    """E[W] of one round of ``algorithm``. ``swift`` is the reference's Swift, DivShare with m = 1 and no
    flush: per coordinate exactly DivShare's matrix (``delivery`` then means: applied by the next boundary).
    ``adpsgd`` takes full delivery only; ``dpsgd`` mixes with ``dpsgd_mixing(graph, n, degree, seed)``."""
    if algorithm in ("divshare", "swift"):
        return divshare_expected_mixing(n, degree, delivery)
    if delivery is not None:
        raise ValueError(f"{algorithm}: the closed form assumes full delivery")
    if algorithm == "adpsgd":
        return adpsgd_expected_mixing(n, degree)
    if algorithm == "dpsgd":
        return dpsgd_mixing(graph, n, degree, seed)
    raise ValueError(f"unknown algorithm {algorithm!r}")


# ---------------------------------------------------------------------------------------------- Monte Carlo

Sampler = Callable[[np.random.Generator, int], np.ndarray]


def divshare_sampler(n: int, degree: int, delivery: np.ndarray | None = None) -> Sampler:
    """Draws ``[count, n, n]`` DivShare (or Swift) matrices W of one coordinate: every sender picks J
    distinct peers, each copy s -> r is applied with probability ``p[s, r]`` (:func:`delivery_matrix`),
    independently; rows average self + applied copies."""
    _check_degree(n, degree)
    p = delivery_matrix(n, delivery)

    def sample(rng: np.random.Generator, count: int) -> np.ndarray:
        keys = rng.random((count, n, n))  # [sample, sender, receiver]
        keys[:, np.arange(n), np.arange(n)] = np.inf
        kth = np.partition(keys, degree - 1, axis=2)[..., degree - 1: degree]
        sent = (keys <= kth) & (rng.random((count, n, n)) < p[None])
        return _average_rows(np.swapaxes(sent, 1, 2))

    return sample


def adpsgd_sampler(n: int, degree: int) -> Sampler:
    """Draws AD-PSGD matrices of one synchronous round: node i pings P peers with replacement and averages
    uniformly over itself and everyone it pinged or was pinged by."""
    pings = adpsgd_pings(degree)

    def sample(rng: np.random.Generator, count: int) -> np.ndarray:
        own = np.arange(n)[None, :, None]
        target = rng.integers(0, n - 1, (count, n, pings))
        target += target >= own  # uniform over the other n - 1
        pinged = np.zeros((count, n, n), bool)
        np.put_along_axis(pinged, target, True, axis=2)
        return _average_rows(pinged | np.swapaxes(pinged, 1, 2))

    return sample


def _average_rows(received: np.ndarray) -> np.ndarray:
    """``W = (I + M)/(1 + M 1)`` row by row, for 0/1 matrices M ``[count, n, n]`` (``M_is``: i averages
    in s's model)."""
    w = received.astype(float) + np.eye(received.shape[-1])
    return w / w.sum(axis=2, keepdims=True)


@dataclass
class MonteCarloMixing:
    """Monte-Carlo estimates of E[W] and E[W^T Pi W], with standard errors.

    Attributes:
      samples: number of W in the first pass (the second holds about as many).
      mean, mean_se: E[W], entry by entry, and the standard error of each entry.
      second, second_se: E[W^T Pi W], likewise.
      lambda2, lambda2_se: ``u^T W v`` averaged over a second, independent pass, with (u, v) the top
        singular pair of ``M Pi`` for M the reference matrix if one was given (then an unbiased estimate of
        the reference's lambda_2 if the reference is right), else the first pass's mean (an unbiased,
        slightly low, estimate of lambda_2: plugging the noisy mean into ``lambda2`` instead is biased
        upward by about ``2 sqrt(n) * mean_se``).
      rho, rho_se: ``||Pi W Pi v||^2`` averaged over the second pass, v the top eigenvector of
        ``Pi S Pi`` (S the reference second moment, else the first pass's), likewise.
    """

    samples: int
    mean: np.ndarray
    mean_se: np.ndarray
    second: np.ndarray
    second_se: np.ndarray
    lambda2: float
    lambda2_se: float
    rho: float
    rho_se: float


def monte_carlo(sample: Sampler, samples: int, seed: int = 0, reference_mean: np.ndarray | None = None,
                reference_second: np.ndarray | None = None, batch: int = 256) -> MonteCarloMixing:
    """Estimate E[W], E[W^T Pi W], lambda_2 and rho from ``samples`` draws of ``sample`` (two independent
    seeded passes: moments, then the two projections; see :class:`MonteCarloMixing`)."""
    first, second = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    return estimate_mixing((sample(first, count) for count in _batches(samples, batch)),
                           (sample(second, count) for count in _batches(samples, batch)),
                           reference_mean, reference_second)


def estimate_mixing(first: Iterable[np.ndarray], second: Iterable[np.ndarray],
                    reference_mean: np.ndarray | None = None,
                    reference_second: np.ndarray | None = None) -> MonteCarloMixing:
    """:class:`MonteCarloMixing` from two independent sets of draws of W, each given as batches
    ``[b, n, n]``: the moments from ``first``, the projections ``u^T W v`` and ``||Pi W Pi v||^2`` from
    ``second`` (drawn by :func:`monte_carlo`, or measured from a run by :mod:`divjax.diagnostics`)."""
    sums, samples = None, 0
    for w in first:
        n = w.shape[-1]
        samples += w.shape[0]
        pw = w - w.mean(axis=1, keepdims=True)  # Pi W
        moments = (w, np.einsum("bki,bkj->bij", pw, pw))
        stats = [x for m in moments for x in (m.sum(axis=0), (m ** 2).sum(axis=0))]
        sums = stats if sums is None else [a + b for a, b in zip(sums, stats)]
    if sums is None:
        raise ValueError("estimate_mixing needs at least one draw in each pass")
    (m1, m1sq, s1, s1sq) = (x / samples for x in sums)
    proj = consensus_projector(n)
    u_mat, _, vt = np.linalg.svd((m1 if reference_mean is None else reference_mean) @ proj)
    u, v = u_mat[:, 0], proj @ vt[0]
    s_ref = s1 if reference_second is None else reference_second
    top = proj @ np.linalg.eigh(proj @ ((s_ref + s_ref.T) / 2) @ proj)[1][:, -1]
    lam, contraction = [], []
    for w in second:
        lam.append(np.einsum("i,bij,j->b", u, w, v))
        moved = w @ top
        contraction.append(((moved - moved.mean(axis=1, keepdims=True)) ** 2).sum(axis=1))
    if not lam:
        raise ValueError("estimate_mixing needs at least one draw in each pass")
    lam, contraction = np.concatenate(lam), np.concatenate(contraction)
    return MonteCarloMixing(samples=samples, mean=m1, mean_se=_standard_error(m1, m1sq, samples), second=s1,
                            second_se=_standard_error(s1, s1sq, samples),
                            lambda2=float(lam.mean()), lambda2_se=_mean_se(lam),
                            rho=float(contraction.mean()), rho_se=_mean_se(contraction))


def _standard_error(mean: np.ndarray, mean_square: np.ndarray, samples: int) -> np.ndarray:
    """Entry-wise standard error of a sample mean from the means of the values and of their squares."""
    return np.sqrt(np.maximum(mean_square - mean ** 2, 0.0) / max(samples - 1, 1))


def _mean_se(values: np.ndarray) -> float:
    return float(values.std(ddof=1) / np.sqrt(values.size))


def _batches(total: int, batch: int) -> list[int]:
    return [min(batch, total - start) for start in range(0, total, batch)]


# ---------------------------------------------------------------------------------------------- pure averaging


def averaging_curve(sample: Sampler, rounds: int, delayed: bool = False, dim: int = 16, repeats: int = 64,
                    seed: int = 0) -> np.ndarray:
    """``E[Xi_t] / E[Xi_0]``, t = 0..rounds, of pure averaging (no gradient steps) from independent N(0, 1)
    models, ``Xi = (1/n) sum_i ||x_i - x_bar||^2``, estimated over ``repeats`` runs of ``dim`` coordinates
    that share each round's W (one fragment).

    * ``delayed=False``: the synchronous round of the theory, ``x_{t+1} = W_t x_t``. Then
      ``E[Xi_{t+1} | x_t] = x_t^T Pi S Pi x_t / n <= rho Xi_t`` (S = E[W^T Pi W], W1 = 1), with equality
      when ``Pi S Pi = rho Pi`` (DivShare with full delivery): ``E[Xi_t] = rho^t Xi_0``.
    * ``delayed=True``: the reference's order of operations when every message arrives within the
      iteration. A node sends its pre-aggregation model at a boundary and, at the next one, mixes the copies
      received since, which their senders took one iteration earlier:
      ``x_{t+1} = diag(W_t) x_t + (W_t - diag(W_t)) x_{t-1}``, ``x_{-1} = x_0``.
    """
    rng = np.random.default_rng(seed)
    n = sample(rng, 1).shape[-1]
    x = rng.standard_normal((repeats, n, dim))
    previous = x
    curve = [_mean_consensus(x)]
    for _ in range(rounds):
        w = sample(rng, repeats)
        if delayed:
            own = np.diagonal(w, axis1=1, axis2=2)[..., None]
            x, previous = own * x + (w - own * np.eye(n)) @ previous, x
        else:
            x = w @ x
        curve.append(_mean_consensus(x))
    return np.array(curve) / curve[0]


def _mean_consensus(x: np.ndarray) -> float:
    """The consensus distance averaged over a batch of model sets ``[batch, n, dim]``."""
    return float(consensus_distance(np.moveaxis(x, 1, 0).reshape(x.shape[1], -1))) / x.shape[0]
