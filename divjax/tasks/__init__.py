"""Learning tasks: a model with its loss and metrics (:class:`Task`) and per-node data (:class:`TaskData`)."""

from __future__ import annotations

from divjax.config import TaskConfig
from divjax.tasks.base import NodeShards, Task, TaskData
from divjax.tasks.synthetic import SyntheticTask

__all__ = ["NodeShards", "SyntheticTask", "Task", "TaskData", "build"]


def build(cfg: TaskConfig, nodes: int, seed: int) -> tuple[Task, TaskData]:
    """The task a :class:`~divjax.config.TaskConfig` names, with its data for ``nodes`` nodes."""
    from divjax.tasks import synthetic

    if cfg.name == "synthetic":
        return SyntheticTask(hidden=cfg.hidden), synthetic.generate(cfg, nodes, seed)
    raise ValueError(f"unknown task {cfg.name!r}")  # unreachable after Config.validate
