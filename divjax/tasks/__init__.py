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
           "build", "check_data"]


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


def check_data(cfg: TaskConfig) -> None:
    """Read and verify the files the task of ``cfg`` needs, raising :class:`~divjax.data.DataError` when they
    are missing or damaged: a caller that writes directories checks this first. Generated tasks read none."""
    from divjax.data import load_cifar10, load_movielens

    if cfg.name == "cifar10":
        load_cifar10(cfg.data_dir)
    elif cfg.name == "movielens":
        load_movielens(cfg.data_dir, variant=cfg.variant)
