"""Fixed gossip graphs for synchronous D-PSGD, and their Metropolis-Hastings mixing weights.

Graphs are undirected, without self-loops, returned as sorted neighbour lists. Metropolis weights:
``W_ij = 1 / (1 + max(deg_i, deg_j))`` on edges and ``W_ii = 1 - sum_j W_ij``: symmetric and doubly
stochastic for any graph.
"""

from __future__ import annotations

import math

import numpy as np

from divjax.config import ConfigError


def _from_edges(n: int, edges: set[tuple[int, int]]) -> list[list[int]]:
    neighbours: list[set[int]] = [set() for _ in range(n)]
    for a, b in edges:
        if a != b:
            neighbours[a].add(b)
            neighbours[b].add(a)
    return [sorted(s) for s in neighbours]


def ring(n: int) -> list[list[int]]:
    return _from_edges(n, {(i, (i + 1) % n) for i in range(n)})


def torus(n: int) -> list[list[int]]:
    """A rows x cols wrap-around grid with rows the largest divisor of n not above sqrt(n)."""
    rows = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
    cols = n // rows
    edges = set()
    for r in range(rows):
        for c in range(cols):
            i = r * cols + c
            edges.add((i, r * cols + (c + 1) % cols))
            edges.add((i, ((r + 1) % rows) * cols + c))
    return _from_edges(n, edges)


def exponential(n: int) -> list[list[int]]:
    """Node i linked to i + 2^k (mod n) for every 2^k < n (the undirected exponential graph)."""
    edges = set()
    for i in range(n):
        k = 1
        while k < n:
            edges.add((i, (i + k) % n))
            k *= 2
    return _from_edges(n, edges)


def complete(n: int) -> list[list[int]]:
    return [[j for j in range(n) if j != i] for i in range(n)]


def random_regular(n: int, degree: int, seed: int, attempts: int = 1000) -> list[list[int]]:
    """A uniform-ish random simple d-regular graph: pair free stubs at random, restart when stuck."""
    if degree >= n or (n * degree) % 2:
        raise ConfigError(f"degree={degree} is not allowed for a random regular graph on {n} nodes: "
                          "need degree < n and degree * n even")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x7E6]))
    for _ in range(attempts):
        free = np.full(n, degree)
        neighbours: list[set[int]] = [set() for _ in range(n)]
        stuck = False
        while free.sum() and not stuck:
            a = rng.choice(n, p=free / free.sum())
            options = [b for b in np.flatnonzero(free) if b != a and b not in neighbours[a]]
            if not options:
                stuck = True
                break
            weights = free[options] / free[options].sum()
            b = options[rng.choice(len(options), p=weights)]
            neighbours[a].add(b)
            neighbours[b].add(a)
            free[a] -= 1
            free[b] -= 1
        if not stuck:
            return [sorted(s) for s in neighbours]
    raise ConfigError(f"could not draw a {degree}-regular graph on {n} nodes in {attempts} attempts")


def build(name: str, n: int, degree: int, seed: int) -> list[list[int]]:
    """The neighbour lists of a named topology."""
    if name == "regular":
        return random_regular(n, degree, seed)
    return {"ring": ring, "torus": torus, "exponential": exponential, "complete": complete}[name](n)


def metropolis(neighbours: list[list[int]]) -> np.ndarray:
    """The ``[n, n]`` Metropolis-Hastings mixing matrix of a graph."""
    n = len(neighbours)
    deg = np.array([len(nb) for nb in neighbours])
    w = np.zeros((n, n))
    for i, nb in enumerate(neighbours):
        for j in nb:
            w[i, j] = 1.0 / (1 + max(deg[i], deg[j]))
    w[np.diag_indices(n)] = 1.0 - w.sum(axis=1)
    return w
