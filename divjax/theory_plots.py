"""Figures of the theory checks (:mod:`divjax.theory_checks`): measurement as markers, prediction as lines.
Each function draws on the axes it is given (new ones if none) and returns the figure."""

from __future__ import annotations

from typing import Any, Sequence

import matplotlib.pyplot as plt
import numpy as np

from divjax.theory_checks import AveragingRun


def _axes(ax: Any | None, count: int = 1, width: float = 5.0) -> tuple[Any, list[Any]]:
    if ax is None:
        fig, axes = plt.subplots(1, count, figsize=(width * count, 3.8), squeeze=False, layout="constrained")
        return fig, list(axes[0])
    axes = list(np.atleast_1d(ax))
    return axes[0].figure, axes


def plot_consensus(runs: Sequence[AveragingRun], ax: Any | None = None) -> Any:
    """``Xi_t / Xi_0`` of pure averaging per run: measured (dots), the delayed recursion (line) and
    ``rho^t`` (dashed)."""
    fig, (ax,) = _axes(ax)
    for k, run in enumerate(runs):
        color = f"C{k}"
        t = np.arange(len(run.consensus))
        cfg = run.config
        label = f"J={cfg.degree}" + (f", {len(run.stragglers)} stragglers /{cfg.network.slowdown:g}"
                                     if len(run.stragglers) else "")
        ax.semilogy(t, run.consensus, "o", color=color, ms=4, label=f"{label}: measured")
        ax.semilogy(t, run.delayed, "-", color=color, lw=1.2, label="delayed recursion" if k == 0 else None)
        ax.semilogy(t, run.rho ** t, "--", color=color, lw=1, label=r"$\rho^t$" if k == 0 else None)
    ax.set_ylim(bottom=1e-7)
    ax.set_xlabel("mixing rounds t")
    ax.set_ylabel(r"consensus distance $\Xi_t/\Xi_0$")
    ax.legend(fontsize=7, ncol=2)
    return fig


def plot_mixing(runs: Sequence[AveragingRun], axes: Any | None = None) -> Any:
    """Measured lambda_2 and rho (with 2 standard errors) against their closed forms, one point per run."""
    fig, (left, right) = _axes(axes, 2, 4.2)
    for run in runs:
        row = run.row()
        marker = {1: "o", 2: "s", 5: "^"}.get(row["fragments"], "D")
        color = "C0" if row["stragglers"] == 0 else f"C{1 + int(np.log2(max(row['slowdown'], 1))) % 8}"
        label = f"m={row['fragments']}, " + ("no stragglers" if row["stragglers"] == 0
                                              else f"{row['stragglers']} stragglers /{row['slowdown']:g}")
        for ax, name in ((left, "lambda2"), (right, "rho")):
            ax.errorbar(row[f"{name}_closed_form"], row[f"{name}_measured"], yerr=2 * row[f"{name}_se"],
                        fmt=marker, color=color, ms=5, label=label if ax is left else None)
    for ax, name in ((left, r"$\lambda_2 = \|E[W]\Pi\|$"), (right, r"$\rho = \lambda_{max}(\Pi E[W^T\Pi W]\Pi)$")):
        lo, hi = ax.get_xlim()
        ax.plot([lo, hi], [lo, hi], "k:", lw=1)
        ax.set_xlabel(f"closed form {name}")
        ax.set_ylabel("measured (±2 s.e.)")
    left.legend(fontsize=6)
    return fig


def plot_gradient(rows: Sequence[dict[str, float]], ax: Any | None = None) -> Any:
    """The averaged ``||grad f(x_bar)||^2`` against n T, per n (dots), next to the leading term
    ``2 sqrt(2 L Delta sigma^2/(n T))`` (dashed: a line of slope -1/2)."""
    fig, (ax,) = _axes(ax)
    for k, n in enumerate(sorted({int(r["nodes"]) for r in rows})):
        mine = sorted((r for r in rows if r["nodes"] == n), key=lambda r: r["iterations"])
        nt = np.array([n * r["iterations"] for r in mine])
        ax.loglog(nt, [r["avg_grad_norm2"] for r in mine], "o-", color=f"C{k}", ms=4, lw=0.8, label=f"n={n}")
        ax.loglog(nt, [r["leading_term"] for r in mine], "--", color=f"C{k}", lw=1)
    ax.set_xlabel("n T (nodes x iterations)")
    ax.set_ylabel(r"mean over $t < T$ of $\|\nabla f(\bar x_t)\|^2$")
    ax.set_title(r"dashed: $2\sqrt{2L\Delta\sigma^2/(nT)}$", fontsize=9)
    ax.legend(fontsize=7)
    return fig
