"""Test-wide settings. XLA's backend optimisation level 1 halves compile times on CPU and, measured on
this project's tick loop, does not slow it down; tests compile many small configurations."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
