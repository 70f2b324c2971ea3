"""The node axis sharded over 8 host CPU devices, in one process or in two (jax.distributed), gives the
unsharded run's numbers.

XLA_FLAGS must be set before JAX starts, so sharded runs go in subprocesses. XLA splits the sums over
nodes (mixing, the consensus distance) into per-device partial sums, which reorders float additions:
models and metrics agree to 1e-6, message counts and iterations exactly.
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

import divjax
from divjax import engine
from tests.helpers import tiny

ROOT = Path(__file__).resolve().parents[1]

ONE_PROCESS = """
import jax
import numpy as np
import divjax
from divjax import engine, sharding
from tests.helpers import tiny

assert jax.device_count() == 8, jax.devices()
config = tiny(nodes=8, duration=6.0, eval_every=3.0)
alone = divjax.simulate(divjax.build(config), progress=False)
sharded = divjax.simulate(sharding.shard(divjax.build(config)), progress=False)
leaf = jax.tree.leaves(sharded.state.params)[0]
assert len(leaf.sharding.device_set) == 8 and leaf.addressable_shards[0].data.shape[0] == 1, leaf.sharding
assert sharded.state.snapshots.sharding.spec == jax.sharding.PartitionSpec(None, "nodes")
for key in alone.history:
    np.testing.assert_allclose(sharded.history[key], alone.history[key], rtol=1e-6, atol=1e-6, err_msg=key)
np.testing.assert_allclose(sharded.node_accuracy, alone.node_accuracy, rtol=0, atol=1e-6)
for key in alone.counters:
    np.testing.assert_array_equal(sharded.counters[key], alone.counters[key], err_msg=key)
np.testing.assert_array_equal(sharded.iterations, alone.iterations)
np.testing.assert_allclose(np.asarray(engine.flatten_models(sharded.state.params)),
                           np.asarray(engine.flatten_models(alone.state.params)), rtol=0, atol=1e-6)
try:
    sharding.shard(divjax.build(tiny()), jax.devices()[:4])
except ValueError as err:
    assert "cannot shard nodes=6 over 4 devices" in str(err), err
else:
    raise AssertionError("6 nodes were sharded over 4 devices")
print("sharded == unsharded")
"""


def host_devices(count: int) -> dict[str, str]:
    """The environment of a subprocess whose JAX sees ``count`` CPU devices."""
    return {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT),
            "XLA_FLAGS": f"--xla_force_host_platform_device_count={count} --xla_backend_optimization_level=1"}


def test_sharded_run_equals_unsharded_run():
    done = subprocess.run([sys.executable, "-c", ONE_PROCESS], cwd=ROOT, env=host_devices(8), capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "sharded == unsharded" in done.stdout


TWO_PROCESSES = """
import sys
import jax

jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU collectives across processes
jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
import numpy as np
import divjax
from divjax import engine, sharding
from tests.helpers import tiny

assert jax.device_count() == 8 and jax.local_device_count() == 4
result = divjax.simulate(sharding.shard(divjax.build(tiny(nodes=8, duration=4.0, eval_every=2.0))), progress=False)
models = sharding.to_host(engine.flatten_models(result.state.params))  # every process gathers
if jax.process_index() == 0:
    np.savez(sys.argv[3], models=models, iterations=result.iterations, sent=result.counters["sent"],
             **result.history)
"""


def test_two_processes_equal_one(tmp_path):
    with socket.socket() as s:  # a free port for the coordinator
        s.bind(("localhost", 0))
        address = f"localhost:{s.getsockname()[1]}"
    out = tmp_path / "two_processes.npz"
    procs = [subprocess.Popen([sys.executable, "-c", TWO_PROCESSES, address, str(i), str(out)], cwd=ROOT,
                              env=host_devices(4), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    try:
        logs = [p.communicate(timeout=900)[0] for p in procs]
    finally:  # a process whose peer failed would wait for it
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], "\n".join(log[-3000:] for log in logs)
    sharded = np.load(out)
    alone = divjax.run(tiny(nodes=8, duration=4.0, eval_every=2.0), progress=False)
    for key in alone.history:
        np.testing.assert_allclose(sharded[key], alone.history[key], rtol=1e-6, atol=1e-6, err_msg=key)
    np.testing.assert_array_equal(sharded["iterations"], alone.iterations)
    np.testing.assert_array_equal(sharded["sent"], alone.counters["sent"])
    np.testing.assert_allclose(sharded["models"], np.asarray(engine.flatten_models(alone.state.params)),
                               rtol=0, atol=1e-6)
