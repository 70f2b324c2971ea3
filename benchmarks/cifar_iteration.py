"""Wall time of one 128-step iteration of GN-LeNet for 60 nodes (the reference's CIFAR-10 setting).

The engine (on CPU its local steps run node by node from the host, with native convolutions; on
accelerators vmapped) against a client-sequential loop (one jitted single-node SGD step called node after
node, the way most FL simulators run clients) doing the same local work, in the same process. Run from the
repository root::

    PYTHONPATH=. python benchmarks/cifar_iteration.py --data-dir ../shared/data/cifar10 [--nodes 60]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import jax
import jax.numpy as jnp
import optax

from divjax import engine
from divjax.config import Config
from divjax.tasks import Cifar10Task


def time_engine(cfg: Config) -> tuple[float, str]:
    sim = engine.build(cfg)
    state = engine.advance(sim, sim.initial_state(), 0)  # compile
    jax.block_until_ready(state)
    start = time.perf_counter()
    state = engine.advance(sim, state, cfg.local_steps)  # one iteration: K steps, then the boundary
    jax.block_until_ready(state)
    assert int(state.iteration.min()) == 1
    return time.perf_counter() - start, sim.spec.task.conv


def time_sequential_loop(cfg: Config, data) -> float:
    task = Cifar10Task(conv="xla")  # single-node convolutions are native and fastest outside vmap
    optimizer = optax.sgd(cfg.lr)

    @jax.jit
    def step(params, state, x, y):
        grads = jax.grad(task.loss)(params, x, y, jnp.ones(y.shape[0], bool))
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    params = [task.init_params(jax.random.key(0)) for _ in range(cfg.nodes)]
    states = [optimizer.init(p) for p in params]
    x = jnp.asarray(data.train.x[0, : cfg.batch_size])
    y = jnp.asarray(data.train.y[0, : cfg.batch_size])
    jax.block_until_ready(step(params[0], states[0], x, y))  # compile
    start = time.perf_counter()
    for _ in range(cfg.local_steps):
        for i in range(cfg.nodes):
            params[i], states[i] = step(params[i], states[i], x, y)
    jax.block_until_ready(params)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--nodes", type=int, default=60)
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args()
    cfg = Config.for_task("cifar10", args.data_dir, nodes=args.nodes)
    engine_s, conv = time_engine(cfg)
    loop_s = time_sequential_loop(cfg, engine.build(cfg).data)
    steps = cfg.nodes * cfg.local_steps
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {jax.device_count()} {jax.default_backend()} device(s)",
        "jax": jax.__version__, "date": time.strftime("%Y-%m-%d"), "nodes": cfg.nodes,
        "local_steps": cfg.local_steps, "engine_conv": conv,
        "engine_seconds_per_iteration": engine_s, "engine_node_steps_per_s": steps / engine_s,
        "loop_seconds_per_iteration": loop_s, "loop_node_steps_per_s": steps / loop_s,
        "engine_speedup_over_loop": loop_s / engine_s,
    }
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
