"""Mixing matrices: DivShare's expected mixing in closed form, and the mixing measured from a run.

For one coordinate of DivShare with full delivery (spec/paper.md §5.4): each node sends the coordinate's
fragment to J distinct random peers, so node i receives it from ``R_i ~ Bin(n-1, q)`` senders,
``q = J/(n-1)``, and sets ``x_i <- (x_i + sum) / (1 + R_i)``. Then

    E[W] = a I + (1 - a)/(n - 1) (1 1^T - I),   a = E[1/(1+R)] = (1 - (1-q)^n) / (n q),

doubly stochastic, with second eigenvalue ``a - (1 - a)/(n - 1)``.
"""

from __future__ import annotations

import numpy as np

from divjax.queue import FATE_APPLIED, MessageLog


def divshare_self_weight(n: int, degree: int) -> float:
    """``a = E[1/(1+R)]`` with ``R ~ Bin(n-1, J/(n-1))``."""
    q = degree / (n - 1)
    return (1.0 - (1.0 - q) ** n) / (n * q)


def divshare_expected_mixing(n: int, degree: int) -> np.ndarray:
    """DivShare's E[W] for one coordinate with full delivery."""
    a = divshare_self_weight(n, degree)
    off = (1.0 - a) / (n - 1)
    return np.full((n, n), off) + (a - off) * np.eye(n)


def divshare_lambda2(n: int, degree: int) -> float:
    """Second eigenvalue of DivShare's E[W]: ``a - (1 - a)/(n - 1)``."""
    a = divshare_self_weight(n, degree)
    return a - (1.0 - a) / (n - 1)


def empirical_mixing(log: MessageLog, n: int, fragments: int, mixes_per_node: np.ndarray,
                     after_tick: float = 0.0) -> np.ndarray:
    """E[W] measured from a run's message log, for uniform (count-rule) mixing.

    Every (node, mixing boundary, fragment) is one draw of a row of W: ``1/(1+R)`` on the node itself and
    on each of the R senders whose copy it applied. ``mixes_per_node[i]`` is the number of boundaries of
    node i that count (those after ``after_tick``), including those where nothing arrived (rows of the
    identity). Needs a log that kept every applied message.
    """
    count = int(log.count)
    if count > log.capacity:
        raise ValueError(f"the message log overflowed ({count} > {log.capacity}): raise log_messages")
    fate = np.asarray(log.fate)[:count]
    keep = (fate == FATE_APPLIED) & (np.asarray(log.ended)[:count] > after_tick)
    receiver = np.asarray(log.receiver)[:count][keep]
    sender = np.asarray(log.sender)[:count][keep]
    ended = np.asarray(log.ended)[:count][keep]
    fragment = np.asarray(log.fragment)[:count][keep]
    total = np.zeros((n, n))
    events = np.asarray(mixes_per_node, float) * fragments
    groups: dict[tuple[int, float, int], list[int]] = {}
    for r, t, f, s in zip(receiver, ended, fragment, sender):
        groups.setdefault((int(r), float(t), int(f)), []).append(int(s))
    empty = events.copy()
    for (r, _, _), senders in groups.items():
        weight = 1.0 / (1 + len(senders))
        total[r, r] += weight
        np.add.at(total[r], senders, weight)
        empty[r] -= 1
    total[np.arange(n), np.arange(n)] += empty
    return total / events[:, None]


def mean_nontrivial_eigenvalue(w: np.ndarray) -> float:
    """``trace(P W P)/(n-1)`` with ``P = I - 11^T/n``: the mean eigenvalue of W off the consensus direction
    (equal to lambda_2 when, as for DivShare's E[W], all n-1 of them coincide)."""
    n = w.shape[0]
    p = np.eye(n) - 1.0 / n
    return float(np.trace(p @ w @ p) / (n - 1))
