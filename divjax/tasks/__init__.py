"""Learning tasks: a model with its loss and metrics (:class:`Task`) and per-node data (:class:`TaskData`)."""

from __future__ import annotations

import jax

from divjax.config import TaskConfig
from divjax.tasks.base import NodeShards, Task, TaskData
from divjax.tasks.cifar10 import Cifar10Task
from divjax.tasks.movielens import MovieLensTask
from divjax.tasks.quadratic import QuadraticTask
from divjax.tasks.synthetic import SyntheticTask

__all__ = ["Cifar10Task", "MovieLensTask", "NodeShards", "QuadraticTask", "SyntheticTask", "Task", "TaskData",
           "build"]


def conv_for_backend(choice: str) -> str:
    """``auto`` resolves to native convolutions: vmapped on accelerators, node by node on CPU."""
    if choice != "auto":
        return choice
    return "per-node" if jax.default_backend() == "cpu" else "xla"


def build(cfg: TaskConfig, nodes: int, seed: int) -> tuple[Task, TaskData]:
    """The task a :class:`~divjax.config.TaskConfig` names, with its data for ``nodes`` nodes."""
    from divjax.tasks import cifar10, movielens, quadratic, synthetic

    if cfg.name == "cifar10":
        return cifar10.build(cfg, nodes, conv_for_backend(cfg.conv))
    if cfg.name == "movielens":
        return movielens.build(cfg, nodes)
    if cfg.name == "quadratic":
        return quadratic.build(cfg, nodes, seed)
    return SyntheticTask(hidden=cfg.hidden), synthetic.generate(cfg, nodes, seed)
