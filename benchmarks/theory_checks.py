"""Measurement next to theory (spec/paper.md §5): the three experiments of divjax.theory_checks at a
meaningful size, their tables printed and saved. Run from the repository root::

    PYTHONPATH=. python benchmarks/theory_checks.py [--out benchmarks/results] [--quick]

Writes ``theory_consensus.csv`` (pure-averaging curves, J = 3, 6, 9, 12 at n = 60), ``theory_mixing.csv``
(measured lambda_2, rho, deliveries, staleness, Perron weights against the closed forms, across Omega and
stragglers), ``theory_gradient.csv`` (DivShare's averaged ||grad f(x_bar)||^2 on the quadratic task against
n and T), a PNG of each, and ``theory_summary.md`` (the tables, the machine, the wall time).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=1")  # halves compile times on CPU

import jax  # noqa: E402
import matplotlib  # noqa: E402
import numpy as np  # noqa: E402

matplotlib.use("Agg")

from divjax import theory_checks, theory_plots  # noqa: E402

SIZES = {  # (full, --quick)
    "consensus": (dict(nodes=60, degrees=[3, 6, 9, 12], rounds=20), dict(nodes=16, degrees=[2, 4], rounds=12)),
    "mixing": (dict(nodes=60, degree=6, omegas=[1.0, 0.5, 0.2, 0.1], stragglers=7, slowdowns=[8.0, 40.0], rounds=60),
               dict(nodes=16, degree=3, omegas=[1.0, 0.2], stragglers=3, slowdowns=[8.0], rounds=30)),
    "gradient": (dict(nodes=[4, 8, 16, 32], iterations=[64, 256, 1024]), dict(nodes=[4, 8], iterations=[32, 128])),
}


def write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def markdown(rows: list[dict], columns: list[str]) -> str:
    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def consensus_rows(runs: list[theory_checks.AveragingRun]) -> list[dict]:
    return [{"degree": run.config.degree, "round": t, "measured": run.consensus[t], "delayed": run.delayed[t],
             "synchronous": run.synchronous[t], "rho_t": run.rho ** t}
            for run in runs for t in range(len(run.consensus))]


def slopes(rows: list[dict]) -> dict[str, float]:
    """Least-squares exponents of the averaged gradient norm in T (per n, averaged) and in n (per T)."""
    def fit(xs, ys):
        return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])

    nodes = sorted({r["nodes"] for r in rows})
    iterations = sorted({r["iterations"] for r in rows})
    in_t = [fit([r["iterations"] for r in rows if r["nodes"] == n], [r["avg_grad_norm2"] for r in rows if r["nodes"] == n])
            for n in nodes]
    in_n = [fit([r["nodes"] for r in rows if r["iterations"] == t], [r["avg_grad_norm2"] for r in rows if r["iterations"] == t])
            for t in iterations]
    return {"exponent_in_T": float(np.mean(in_t)), "exponent_in_n": float(np.mean(in_n))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--quick", action="store_true", help="small sizes (a minute)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    size = {k: v[args.quick] for k, v in SIZES.items()}
    start = time.perf_counter()

    consensus = theory_checks.consensus_experiment(**size["consensus"])
    write_csv(out / "theory_consensus.csv", consensus_rows(consensus))
    theory_plots.plot_consensus(consensus).savefig(out / "theory_consensus.png", dpi=120, bbox_inches="tight")

    mixing = theory_checks.mixing_experiment(**size["mixing"])
    mixing_rows = [run.row() for run in mixing]
    write_csv(out / "theory_mixing.csv", mixing_rows)
    theory_plots.plot_mixing(mixing).savefig(out / "theory_mixing.png", dpi=120, bbox_inches="tight")

    gradient = theory_checks.gradient_experiment(**size["gradient"])
    write_csv(out / "theory_gradient.csv", gradient)
    theory_plots.plot_gradient(gradient).savefig(out / "theory_gradient.png", dpi=120, bbox_inches="tight")
    wall = time.perf_counter() - start

    consensus_table = [run.row() for run in consensus]
    fits = slopes(gradient)
    summary = "\n\n".join([
        "# Theory checks: measurement next to prediction",
        f"`PYTHONPATH=. python benchmarks/theory_checks.py{' --quick' if args.quick else ''}` on "
        f"{platform.machine()}, {jax.device_count()} {jax.default_backend()} device(s), jax {jax.__version__}, "
        f"{datetime.date.today()}: {wall:.0f} s of wall time (compilation included; the machine was shared).",
        "## Pure averaging: consensus distance per mixing round (`theory_consensus.csv`, `.png`)",
        markdown(consensus_table, ["nodes", "degree", "rho_closed_form", "consensus_rate_measured",
                                   "consensus_rate_delayed", "lambda2_closed_form", "lambda2_measured", "lambda2_se"]),
        "## Mixing across Omega and stragglers (`theory_mixing.csv`, `.png`)",
        markdown(mixing_rows, ["fragments", "stragglers", "slowdown", "delivery_stragglers",
                               "flushed_per_straggler_iteration", "lambda2_closed_form", "lambda2_measured",
                               "lambda2_se", "rho_closed_form", "rho_measured", "rho_se",
                               "perron_stragglers_closed_form", "perron_stragglers_measured", "staleness_max",
                               "consensus_rate_measured", "consensus_rate_delayed"]),
        "## Averaged gradient norm on the quadratic task (`theory_gradient.csv`, `.png`)",
        markdown(gradient, ["nodes", "iterations", "lr", "avg_grad_norm2", "leading_term", "ratio"]),
        f"Fitted exponents: T^{fits['exponent_in_T']:.3f} (leading term: -0.5), "
        f"n^{fits['exponent_in_n']:.3f} (leading term: -0.5).",
    ])
    (out / "theory_summary.md").write_text(summary + "\n")
    print(summary)


if __name__ == "__main__":
    main()
