"""Running the configurations of a run directory to completion, checkpointing as they go.

Shared by ``divjax run``, ``divjax resume`` and ``divjax reproduce``: each algorithm of the run directory
that has not finished runs from its verified checkpoint (or from the start), its metrics are written after
every evaluation, and its whole state at most every ``checkpoint_seconds`` of wall time.
:func:`execute_together` runs several fresh run directories of one shape as one vmapped program.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax

from divjax import engine, report, runner, sweep
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
        free_compiled_programs_if_many()
    report.finalize(run)
    return [run.status["summaries"][cfg.algorithm] for cfg in run.configs]


class CannotRunTogether(ValueError):
    """Run directories that one vmapped program cannot run: not fresh, or not of one shape."""


def fresh(run: RunDirectory) -> bool:
    """Nothing of ``run`` has finished or been checkpointed yet: it would start from the beginning."""
    return not run.finished and not run.status.get("checkpoint")


def execute_together(runs: Sequence[RunDirectory], progress: bool = True, checkpoint_seconds: float = 30.0,
                     label: str | None = None) -> None:
    """Run fresh run directories of one algorithm each, whose configurations share their shapes (seeds,
    say), as one vmapped program (:mod:`divjax.sweep`), and finalise each (``status.json`` records
    ``vmapped_with``: the group's size). Their metrics are written after every evaluation but no checkpoint
    is taken (a member's state alone does not resume the vmapped program): interrupted, they start again.

    Raises :class:`CannotRunTogether` before anything runs when the runs are not fresh or do not share their
    shapes. When a member stops the program (divergence under ``on_divergence='stop'``, lost messages under
    ``on_capacity='error'``), every member runs again on its own (:func:`execute`), in order: the members
    before the failing one finish, and the error is raised by its own run."""
    if not all(len(run.configs) == 1 and fresh(run) for run in runs):
        raise CannotRunTogether("only fresh run directories of one algorithm each run together")
    sims = [engine.build(run.configs[0]) for run in runs]
    try:
        together = sweep.stack(sims)
    except ValueError as err:  # other shapes, data or evaluation times
        raise CannotRunTogether(str(err)) from None
    hooks = [functools.partial(_save_metrics, run) for run in runs]
    try:
        results = sweep.simulate(together, progress=progress, label=label, after_evaluation=hooks)
    except (runner.DivergenceError, runner.CapacityError):
        results = None  # leave the except block first: its traceback holds the group's states
    if results is None:
        del together, sims
        for run in runs:
            execute(run, progress=progress, checkpoint_seconds=checkpoint_seconds, label=label)
        return
    for run, result in zip(runs, results):
        # Each member's share of the sweep's times, so that summed over runs they count the sweep once.
        result = dataclasses.replace(result, wall_seconds=result.wall_seconds / len(runs),
                                     compile_seconds=result.compile_seconds / len(runs))
        run.status["vmapped_with"] = len(runs)
        run.finish_algorithm(run.configs[0].algorithm, result.summary())
        report.finalize(run)
    free_compiled_programs_if_many()


def _save_metrics(run: RunDirectory, progress_now: runner.Progress) -> None:
    run.save_progress(run.configs[0].algorithm, progress_now.entries, None)


def memory_mappings() -> tuple[int, int] | None:
    """(memory mappings this process holds, the kernel's limit on them), or ``None`` where ``/proc`` has no
    such figures (not Linux)."""
    try:
        with open("/proc/self/maps") as maps:
            used = sum(1 for _ in maps)
        return used, int(Path("/proc/sys/vm/max_map_count").read_text())
    except (OSError, ValueError):
        return None


def free_compiled_programs_if_many() -> None:
    """Drop JAX's compiled programs once they hold half the memory mappings the kernel allows.

    XLA CPU maps the code of every program it compiles into mappings of its own (~1,000 for a small
    simulation), and a process that compiles a few hundred programs, such as a reproduction's rows, reaches
    ``vm.max_map_count`` (65,530 by default) and crashes inside the compiler. Runs after the drop compile again.
    """
    mappings = memory_mappings()
    if mappings is not None and mappings[0] > mappings[1] // 2:
        jax.clear_caches()
