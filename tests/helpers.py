"""Tiny configurations shared by the tests (seconds to compile and run on 2 CPU cores), and where the real
data are: ``$DIVJAX_TEST_DATA`` (default: ``shared/data`` beside the repository); tests that need them skip
with a reason when they are absent."""

import os
from pathlib import Path

import pytest

from divjax.config import Config, NetworkConfig, TaskConfig

DATA = Path(os.environ.get("DIVJAX_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
CIFAR = DATA / "cifar10"
MOVIELENS = DATA / "movielens"
needs_cifar = pytest.mark.skipif(
    not (CIFAR / "cifar10_jpeg.npz").is_file() or not (CIFAR / "cifar10_lossless_subset.npz").is_file(),
    reason=f"real CIFAR-10 not found under {CIFAR} (set DIVJAX_TEST_DATA to the shared data folder)",
)
needs_movielens = pytest.mark.skipif(
    not (MOVIELENS / "ml-latest-small.zip").is_file() or not (MOVIELENS / "ml-100k" / "u.data").is_file(),
    reason=f"real MovieLens not found under {MOVIELENS} (set DIVJAX_TEST_DATA to the shared data folder)",
)

TINY_TASK = TaskConfig(hidden=4, samples_mean_log=3.0, samples_sigma_log=0.3, samples_cap=80)


# The command-line flags of a tiny run (most of tiny()'s fields; the synthetic task's own size).
TINY_FLAGS = ["--nodes", "6", "--degree", "2", "--local-steps", "4", "--step-time", "0.25", "--stragglers", "1",
              "--fast-mbps", "0.5", "--eval-every", "1", "--no-progress"]


def tiny(**changes) -> Config:
    """6 nodes, a 294-parameter model, 4 local steps of 0.25 s, a 3 Mbit/s network with one straggler."""
    network = changes.pop("network", NetworkConfig(preset="stragglers", stragglers=1, slowdown=4.0,
                                                   fast_mbps=0.5, latency_ms=2.0))
    base = dict(algorithm="divshare", nodes=6, degree=2, omega=0.5, local_steps=4, batch_size=4, lr=0.05,
                step_time=0.25, duration=20.0, eval_every=5.0, seed=0, task=TINY_TASK, network=network)
    base.update(changes)
    return Config(**base)
