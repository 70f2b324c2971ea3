"""Test-wide settings. XLA's backend optimisation level 1 halves compile times on CPU and, measured on
this project's tick loop, does not slow it down; tests compile many small configurations."""

import os

import pytest

os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
    """Drop every compiled program after each test module. XLA CPU maps each program's code into memory
    mappings of its own; the whole suite compiles enough programs to reach the kernel's limit
    (vm.max_map_count, 65,530 by default), where the compiler crashes with a segmentation fault."""
    yield
    import jax

    jax.clear_caches()
