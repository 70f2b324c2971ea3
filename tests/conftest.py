"""Test-wide settings. XLA's backend optimisation level 1 halves compile times on CPU and, measured on
this project's tick loop, does not slow it down; tests compile many small configurations."""

import os

import pytest

os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")


@pytest.fixture(autouse=True)
def _free_compiled_programs():
    """After each test, drop JAX's compiled programs if they hold half the memory mappings the kernel allows,
    as ``divjax.execution`` does between runs: XLA CPU maps each program's code into mappings of its own, and
    the whole suite compiles enough programs to reach the limit (vm.max_map_count, 65,530 by default), where
    the compiler crashes with a segmentation fault. Below it, programs are kept for later tests."""
    yield
    from divjax import execution

    execution.free_compiled_programs_if_many()
