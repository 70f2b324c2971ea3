"""Running the configurations of a run directory to completion, checkpointing as they go.

Shared by ``divjax run``, ``divjax resume`` and ``divjax reproduce``: each algorithm of the run directory
that has not finished runs from its verified checkpoint (or from the start), its metrics are written after
every evaluation, and its whole state at most every ``checkpoint_seconds`` of wall time.
"""

from __future__ import annotations

import time
from typing import Any

from divjax import engine, report, runner
from divjax.rundir import RunDirectory


def execute(run: RunDirectory, progress: bool = True, checkpoint_seconds: float = 30.0,
            first: engine.Simulation | None = None, label: str | None = None) -> list[dict[str, Any]]:
    """Run every algorithm of ``run`` that has not finished and finalise the directory; return the summaries
    of all its algorithms. ``first``: the first algorithm's simulation, if already built; ``label``: prefix
    of the progress bar."""
    for cfg in run.configs:
        if cfg.algorithm in run.finished:
            continue
        sim = first if first is not None and first.config == cfg else engine.build(cfg)
        saved = run.load_checkpoint(cfg.algorithm)
        resume = runner.Progress.read(sim, saved) if saved is not None else None
        last = time.monotonic()

        def save(progress_now: runner.Progress) -> None:
            nonlocal last
            due = time.monotonic() - last >= checkpoint_seconds
            run.save_progress(cfg.algorithm, progress_now.entries, progress_now.write if due else None)
            if due:
                last = time.monotonic()

        bar = f"{label} {cfg.algorithm}" if label else cfg.algorithm
        result = runner.simulate(sim, progress=progress, resume=resume, after_evaluation=save, label=bar)
        run.finish_algorithm(cfg.algorithm, result.summary())
    report.finalize(run)
    return [run.status["summaries"][cfg.algorithm] for cfg in run.configs]
