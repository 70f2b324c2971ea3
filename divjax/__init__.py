"""divjax: a vectorised simulator of asynchronous decentralized learning (DivShare and its baselines).

Five lines from config to metrics::

    import divjax
    config = divjax.Config(algorithm="divshare", nodes=60, omega=0.1)
    result = divjax.run(config)
    result.history["mean_accuracy"], result.summary()

See ``docs/semantics.md`` for exactly what is simulated.
"""

from divjax import network, sharding, sweep
from divjax.config import Config, ConfigError, NetworkConfig, TaskConfig
from divjax.engine import Simulation, advance, build
from divjax.report import summary_table, write_run_dir
from divjax.runner import RunResult, run, run_many, simulate

__version__ = "0.1.0"

__all__ = [
    "Config", "ConfigError", "NetworkConfig", "RunResult", "Simulation", "TaskConfig", "advance", "build",
    "network", "run", "run_many", "sharding", "simulate", "summary_table", "sweep", "write_run_dir",
]
