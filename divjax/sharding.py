"""The node axis sharded over devices: several accelerators in one process, or several hosts.

A simulation's per-node arrays (params, optimiser state, queues, counters, data shards, links: axis 0;
the fragment-major snapshot ring ``[m, n, S, L]``: axis 1) are split over a 1-D mesh whose axis is
``"nodes"``; every other array is replicated. ``jit`` then partitions the compiled tick loop itself
(GSPMD) and adds the collectives that mixing and message delivery need. Placement decides where numbers
are computed, not which: a sharded run has the unsharded run's messages, fates and iterations exactly, and
its models and metrics to float32 rounding (sums over nodes become sums of per-device partial sums; about
1e-7 on the tested tiny runs over 8 host CPU devices).

>>> sim = divjax.sharding.shard(divjax.build(config))     # over every device JAX sees
>>> result = divjax.simulate(sim)

The node count must be a multiple of the device count: JAX shards evenly, and padding with phantom nodes
would change the simulation (random draws range over the nodes).

Several hosts: every host runs the same program, which calls ``jax.distributed.initialize`` before
anything else; ``jax.devices()`` then lists the devices of all hosts, every process builds the same
simulation (JAX checks it when placing it) and keeps its own nodes' shards, and the runner reads results
through :func:`to_host`, which gathers them (tested with two CPU processes).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Sequence, TypeVar

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from divjax.state import SimState

if TYPE_CHECKING:  # the engine imports this module
    from divjax.engine import Simulation

AXIS = "nodes"

Tree = TypeVar("Tree")


def node_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh over ``devices`` (default: every device, on every host) with the axis ``"nodes"``."""
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("devices is empty: expected at least one device to shard the nodes over")
    return Mesh(np.asarray(devices), (AXIS,), axis_types=(AxisType.Auto,))


def check_divisible(nodes: int, mesh: Mesh) -> None:
    """Refuse a node count that does not split evenly over the mesh, naming both."""
    count = mesh.devices.size
    if nodes % count:
        raise ValueError(f"cannot shard nodes={nodes} over {count} devices: the node count must be a multiple "
                         f"of the device count (pass a device count that divides {nodes}, or do not shard)")


def place(tree: Tree, nodes: int, mesh: Mesh) -> Tree:
    """Put ``tree`` (a :class:`~divjax.state.SimParams` or :class:`~divjax.state.SimState`) on ``mesh``:
    the node axis split, every other array replicated.

    A leaf's node axis is its leading axis when that has ``nodes`` entries; the snapshot ring's is its
    second. (A leaf whose leading size merely equals ``nodes`` is split too: that changes where it lives,
    not what it holds.)
    """
    check_divisible(nodes, mesh)
    split, whole = NamedSharding(mesh, PartitionSpec(AXIS)), NamedSharding(mesh, PartitionSpec())
    shardings = jax.tree.map(lambda x: split if np.ndim(x) and np.shape(x)[0] == nodes else whole, tree)
    if isinstance(tree, SimState):
        shardings = shardings.replace(snapshots=NamedSharding(mesh, PartitionSpec(None, AXIS)))
    return jax.tree.map(_put, tree, shardings)


def _put(x: jax.Array, sharding: NamedSharding) -> jax.Array:
    """``device_put`` that also works with several processes: every process passes the same host array
    (checked by JAX) and keeps its own shards; an array already spread over the processes is resharded."""
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):  # typed keys travel as their raw bits
        return jax.random.wrap_key_data(_put(jax.random.key_data(x), sharding), impl=jax.random.key_impl(x))
    return jax.device_put(np.asarray(x) if x.is_fully_addressable else x, sharding)


def shard(sim: Simulation, devices: Sequence[jax.Device] | Mesh | None = None) -> Simulation:
    """``sim`` with its node axis sharded over ``devices`` (default: all; or a mesh from :func:`node_mesh`):
    its params are placed now, its initial states as they are made."""
    mesh = devices if isinstance(devices, Mesh) else node_mesh(devices)
    return dataclasses.replace(sim, params=place(sim.params, sim.spec.nodes, mesh), mesh=mesh)


def to_host(tree: Tree) -> Tree:
    """NumPy copies of ``tree``'s arrays; an array spread over several processes is gathered from all of
    them (a collective: every process must call this, in the same order)."""
    def fetch(x: jax.Array) -> np.ndarray:
        whole = x.is_fully_addressable or x.is_fully_replicated
        return np.asarray(x if whole else multihost_utils.process_allgather(x, tiled=True))

    return jax.tree.map(fetch, tree)
