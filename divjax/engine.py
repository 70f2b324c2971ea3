"""The vectorised engine: every node in one stacked state, advanced tick by tick under ``jit``.

One tick k covers simulated time ``((k-1) dt, k dt]`` and does, in this order:

1. **compute**: every node whose local step completes at ``k`` takes one masked, vmapped SGD step;
2. **network**: messages move through ``(k-1, k]`` (closed form for ``fifo``; an exact event loop for
   ``shared``); landings are counted, and algorithms that answer landings (AD-PSGD) do so;
3. **boundaries**: nodes that just finished their K-th step snapshot, mix, flush and queue messages;
4. **release**: waiting nodes (D-PSGD) whose neighbours' models are all in mix and go on.

Steps 1, 3 and 4 sit behind ``lax.cond`` so ticks where nobody steps or reaches a boundary cost almost
nothing (in a vmapped sweep too: :mod:`divjax.batching`). Ticks run in a ``fori_loop`` inside one compiled
function; the host calls it once per evaluation interval. Tasks whose steps are slow stacked (GN-LeNet on
CPU: ``host_steps``) take them node by node from the host instead, with the same semantics (see below). See
docs/semantics.md for the exact model of time.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections import Counter
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from divjax import algorithms, batching, sharding, tasks
from divjax import network as network_lib
from divjax.config import INT32_LIMIT, Config, ConfigError
from divjax.fragments import FragmentLayout, build_layout, to_fragments
from divjax.mixing import choose_dense
from divjax.network import Network
from divjax.queue import FATE_EVICTED, Counters, MessageQueue, end, per_receiver
from divjax.randomness import (
    STREAM_COMM,
    STREAM_DATA,
    STREAM_INIT,
    batch_plan,
    epochs_needed,
    plan_groups,
    stream,
)
from divjax.state import SimParams, SimSpec, SimState, flatten_models, tree_select
from divjax.tasks import Task, TaskData
from divjax.tasks.base import stacked_form
from divjax.transport import Links, advance_shared, answer, flush, send

MIX_BLOCK_FLOATS = 1 << 24  # payload floats gathered at once when mixing (64 MiB of float32)
PLAN_BLOCK_SHUFFLED = 1 << 22  # shuffled shard positions the minibatch plans hold at once (16 MiB of uint32)

TRACES: Counter = Counter()  # compilations of the tick loop per SimSpec (tests assert no silent retrace)


@dataclass(frozen=True, eq=False)
class Simulation:
    """A built simulation: config, static spec, numeric params, and the objects they came from."""

    config: Config
    spec: SimSpec
    params: SimParams
    network: Network
    layout: FragmentLayout
    data: TaskData
    eval_nodes: jax.Array
    mesh: Mesh | None = None  # the node axis is sharded over this 1-D mesh (see divjax.sharding)

    @property
    def dt(self) -> float:
        return self.config.tick

    def initial_state(self) -> SimState:
        state = _initial_state(self.spec, self.params, self.config.seed)
        return state if self.mesh is None else sharding.place(state, self.spec.nodes, self.mesh)

    @property
    def step_times(self) -> np.ndarray:
        """Simulated seconds per local step of each node, after rounding to whole ticks."""
        return np.asarray(self.params.step_ticks) * self.dt


def _mix_block(queue_capacity: int, nodes: int, width: int) -> int:
    """Records whose payloads the gather form of mixing holds at once (MIX_BLOCK_FLOATS floats)."""
    return max(1, min(queue_capacity * nodes, MIX_BLOCK_FLOATS // width))


def own_fragments(p: SimParams, params) -> jax.Array:
    """Every node's model in the fragment-major layout ``[m, n, L]`` of the snapshot ring."""
    return jnp.swapaxes(to_fragments(flatten_models(params), p.fragment_index), 0, 1)


def _step_ticks(config: Config) -> np.ndarray:
    times = np.full(config.nodes, config.step_time)
    times[: config.compute_stragglers] *= config.compute_slowdown
    ticks = np.maximum(1, np.rint(times / config.tick)).astype(np.int32)
    error = np.max(np.abs(ticks * config.tick - times) / times)
    if error > 0.01:
        warnings.warn(f"step times are rounded to whole ticks of dt={config.tick}: up to {error:.1%} off; "
                      "choose a dt that divides step_time (and step_time * compute_slowdown)", stacklevel=3)
    return ticks


def build(config: Config, network: Network | None = None, task: Task | None = None,
          data: TaskData | None = None, log_messages: int = 0, mixing: str = "auto") -> Simulation:
    """Validate ``config`` and lay the simulation out (no compilation happens here).

    ``network`` replaces the preset the config names (a custom topology, say); ``task`` with ``data``
    replaces the task the config names. ``log_messages > 0`` keeps a log of that many ended messages
    (:class:`~divjax.queue.MessageLog`; for tests and diagnostics). ``mixing`` picks the implementation
    of mixing (``auto``, ``dense``, ``gather``; the same numbers, see :mod:`divjax.mixing`).
    """
    config.validate()
    if not isinstance(log_messages, int) or isinstance(log_messages, bool) or log_messages < 0:
        raise ConfigError(f"log_messages={log_messages!r} is not allowed: expected an integer >= 0 (0: no log)")
    n = config.nodes
    if network is not None and not isinstance(network, Network):
        raise ConfigError(f"network={network!r} is not allowed: expected a divjax.network.Network "
                          "(a NetworkConfig goes in config.network)")
    net = network if network is not None else network_lib.from_config(config.network, n)
    if net.nodes != n:
        raise ConfigError(f"network with {net.nodes} nodes is not allowed: expected one per node, "
                          f"config.nodes={n}")
    if (task is None) != (data is None):
        raise ValueError("pass both task and data, or neither")
    if task is None:
        task, data = tasks.build(config.task, n, config.seed)
    sizes = np.asarray(data.train.sizes)
    floor = data.train.size_floor or int(sizes.min())
    if sizes.shape != (n,) or sizes.min() < max(1, floor):
        raise ValueError(f"task data must give every one of the {n} nodes at least max(1, size_floor) samples")
    algo = algorithms.get(config.algorithm)
    algo_arrays = algo.init(config)
    out_width = algo.out_width(config, algo_arrays)
    if config.queue_capacity is not None and config.queue_capacity < out_width:
        raise ConfigError(f"queue_capacity={config.queue_capacity} is not allowed: a {config.algorithm} node "
                          f"queues {out_width} messages at each boundary; expected at least {out_width}")
    queue_capacity, slots = config.capacities(out_width)
    if n * max(queue_capacity, slots) > INT32_LIMIT:  # the queue and the snapshot ring are indexed in int32
        raise ConfigError(f"nodes={n} x {queue_capacity} queue records and {slots} snapshot slots per node is not "
                          f"allowed: expected at most {INT32_LIMIT:,} in all (lower degree, queue_capacity or "
                          "snapshot_slots)")

    init_params = task.init_params(jax.random.key(0))
    leaves = jax.tree.leaves(init_params)
    tensor_sizes = [int(np.prod(x.shape)) for x in leaves]
    if config.fragments > sum(tensor_sizes):  # every fragment past the d-th would be empty, yet still sent
        raise ConfigError(f"omega={config.omega} is not allowed: it cuts the model's "
                          f"d={sum(tensor_sizes)} parameters into m={config.fragments} fragments; "
                          f"expected omega >= 1/d = {1 / sum(tensor_sizes):.3g}")
    layout = build_layout(tensor_sizes, config.fragments, config.seed)
    width = layout.width
    spec = SimSpec(
        algorithm=config.algorithm, task=task, nodes=n, fragments=layout.num_fragments, fragment_width=width,
        dim=layout.dim, degree=config.degree, local_steps=config.local_steps, batch_size=config.batch_size,
        queue_capacity=queue_capacity, snapshot_slots=slots, out_width=out_width,
        pong_width=min(n - 1, 4 * (config.degree // 2) + 8), max_shard=int(data.train.x.shape[1]),
        epochs=epochs_needed(floor, config.local_steps, config.batch_size),
        transport=net.transport, mix_dense=choose_dense(mixing, n, slots),
        mix_block=_mix_block(queue_capacity, n, width), log_capacity=log_messages,
    )
    params = SimParams(
        lr=jnp.asarray(config.lr, jnp.float32),
        step_ticks=jnp.asarray(_step_ticks(config)),
        links=Links.from_network(net, config.tick),
        fragment_index=jnp.asarray(layout.index),
        fragment_position=jnp.asarray(layout.position),
        fragment_bits=jnp.asarray(32.0 * layout.sizes, jnp.float32),
        data=data,
        data_key=stream(config.seed, STREAM_DATA),
        comm_key=stream(config.seed, STREAM_COMM),
        algo=algo_arrays,
    )
    return Simulation(config=config, spec=spec, params=params, network=net, layout=layout, data=data,
                      eval_nodes=jnp.asarray(_eval_nodes(n, config.task.eval_nodes)))


def _eval_nodes(n: int, count: int | None) -> np.ndarray:
    """``count`` nodes spread evenly over ``0 .. n-1`` (node 0 first), or all of them."""
    if count is None or count >= n:
        return np.arange(n, dtype=np.int32)
    return np.unique(np.round(np.linspace(0, n - 1, count)).astype(np.int32))


# ------------------------------------------------------------------------------------------ state


def _plans(spec: SimSpec, p: SimParams, iteration: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Every node's minibatches for ``iteration``: each group of shard sizes (:func:`plan_groups`) is drawn
    at its own width, ``PLAN_BLOCK_SHUFFLED`` shuffled positions at a time.

    Drawn at the largest shard's width, MovieLens with a node per user (610 nodes) shuffles 147 M positions
    at every boundary, 60 times what its plans need; all at once, 2.4 GB of transients."""
    n, sizes = spec.nodes, p.data.train.sizes
    indices = jnp.zeros((n, spec.local_steps, spec.batch_size), jnp.int32)
    masks = jnp.zeros(indices.shape, bool)
    for group in plan_groups(spec.max_shard, spec.epochs, spec.local_steps, spec.batch_size):
        plan = jax.vmap(functools.partial(
            batch_plan, p.data_key, local_steps=spec.local_steps, batch_size=spec.batch_size,
            max_size=spec.max_shard, epochs=group.epochs, width=group.width))
        members = (sizes >= group.smallest) & (sizes <= group.width)
        block = max(1, min(n, PLAN_BLOCK_SHUFFLED // (group.epochs * group.width)))
        # The group's nodes first, then n (no node) enough times for a last block to be sliced whole.
        (order,) = jnp.nonzero(members, size=n + block, fill_value=n)

        def draw_block(carry, plan=plan, order=order, block=block):
            start, indices, masks = carry
            nodes = jax.lax.dynamic_slice_in_dim(order, start, block)
            safe = jnp.minimum(nodes, n - 1)  # nodes == n (past the group's end) are dropped below
            idx, mask = plan(safe, iteration[safe], sizes[safe])
            return (start + block, indices.at[nodes].set(idx, mode="drop"), masks.at[nodes].set(mask, mode="drop"))

        count = jnp.sum(members)
        _, indices, masks = jax.lax.while_loop(lambda c, count=count: c[0] < count, draw_block,
                                               (jnp.zeros((), jnp.int32), indices, masks))
    return indices, masks


@functools.partial(jax.jit, static_argnums=(0,))
def _initial_state_jit(spec: SimSpec, p: SimParams, init_key: jax.Array) -> SimState:
    n, slots = spec.nodes, spec.snapshot_slots
    model = spec.task.init_params(init_key)  # one initial model, shared by every node (the reference's)
    params = jax.tree.map(lambda x: jnp.broadcast_to(x, (n,) + x.shape), model)
    opt_state = jax.vmap(optax.sgd(p.lr).init)(params)
    zeros = jnp.zeros(n, jnp.int32)
    batch_idx, batch_mask = _plans(spec, p, zeros)
    snapshots = jnp.zeros((spec.fragments, n, slots, spec.fragment_width), jnp.float32)
    snapshots = snapshots.at[:, :, slots - 1].set(own_fragments(p, params))
    return SimState(
        tick=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state, iteration=zeros,
        step_in_iter=zeros, next_step_tick=p.step_ticks, waiting=jnp.zeros(n, bool),
        batch_idx=batch_idx, batch_mask=batch_mask, snapshots=snapshots,
        snapshot_iter=jnp.full((n, slots), -1, jnp.int32), latest_slot=jnp.full(n, slots - 1, jnp.int32),
        queue=MessageQueue.empty(n, spec.queue_capacity), counters=Counters.zeros(n, spec.log_capacity),
        train_loss_sum=jnp.zeros(n, jnp.float32), train_loss_steps=zeros,
    )


def _initial_state(spec: SimSpec, p: SimParams, seed: int) -> SimState:
    return _initial_state_jit(spec, p, stream(seed, STREAM_INIT))


# ------------------------------------------------------------------------------------------ tick


def _sgd_step(lr: jax.Array, task: Task):
    """One node's local SGD step ``(params, opt_state, x, y, mask) -> (params, opt_state, loss)``."""
    optimizer = optax.sgd(lr)
    task_step = getattr(task, "sgd_step", None)  # a task's own plain-SGD step (row-sparse MF)

    def sgd_step(params, opt_state, x, y, mask):
        if task_step is not None:
            params, loss = task_step(params, x, y, mask, lr)
            return params, opt_state, loss
        loss, grads = jax.value_and_grad(task.loss)(params, x, y, mask)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return sgd_step


def _minibatch(spec: SimSpec, train, plan: tuple, node: jax.Array):
    """Node ``node``'s minibatch ``(x, y, mask)`` for its current local step (vmap it over nodes), from the
    training shards and the plan ``(batch_idx, batch_mask, step_in_iter)`` of the state."""
    batch_idx, batch_mask, step_in_iter = plan
    step = jnp.minimum(step_in_iter[node], spec.local_steps - 1)
    idx = batch_idx[node, step]
    return train.x[node, idx], train.y[node, idx], batch_mask[node, step]  # one gather each, never a whole shard


def _plan_of(s: SimState) -> tuple:
    return s.batch_idx, s.batch_mask, s.step_in_iter


def _count_steps(p: SimParams, s: SimState, stepping: jax.Array) -> SimState:
    return s.replace(step_in_iter=s.step_in_iter + stepping,
                     next_step_tick=s.next_step_tick + jnp.where(stepping, p.step_ticks, 0))


def _local_step(spec: SimSpec, p: SimParams, s: SimState, stepping: jax.Array) -> SimState:
    task = stacked_form(spec.task)
    sgd_step = _sgd_step(p.lr, task)
    x, y, mask = jax.vmap(lambda k: _minibatch(spec, p.data.train, _plan_of(s), k))(jnp.arange(spec.nodes))
    if getattr(task, "sgd_step", None) is not None:
        # Nodes that are not stepping get an empty minibatch, hence a zero update: no select of the whole
        # (embedding) tables, which would cost more than the row-sparse step itself.
        params, opt_state, loss = jax.vmap(sgd_step)(s.params, s.opt_state, x, y, mask & stepping[:, None])
    else:
        block = getattr(task, "step_node_batch", None)  # bounds the transients of big per-node steps
        if block is not None and block < spec.nodes:
            params, opt_state, loss = jax.lax.map(lambda args: sgd_step(*args),
                                                  (s.params, s.opt_state, x, y, mask), batch_size=block)
        else:
            params, opt_state, loss = jax.vmap(sgd_step)(s.params, s.opt_state, x, y, mask)
        params = tree_select(stepping, params, s.params)
        opt_state = tree_select(stepping, opt_state, s.opt_state)
    s = s.replace(params=params, opt_state=opt_state,
                  train_loss_sum=s.train_loss_sum + jnp.where(stepping, loss, 0.0),
                  train_loss_steps=s.train_loss_steps + stepping)
    return _count_steps(p, s, stepping)


def _snapshot(spec: SimSpec, p: SimParams, s: SimState, who: jax.Array, now: jax.Array) -> SimState:
    """Store the boundary nodes' models (post-training, pre-aggregation) in ring slot ``iteration mod S``.

    Records still pointing at the model that slot held are evicted (counted as ``overflow_snapshot``):
    the ring was too small for how long that message stayed in flight.
    """
    slot = s.iteration % spec.snapshot_slots
    evicted = s.queue.live & who[:, None] & (s.queue.slot == slot[:, None])
    queue, counters = end(s.queue, s.counters, evicted, FATE_EVICTED, now)
    rows = jnp.where(who, jnp.arange(spec.nodes), spec.nodes)  # only the boundary nodes' slots are written
    target = who[:, None] & (jnp.arange(spec.snapshot_slots) == slot[:, None])  # [n, S]
    return s.replace(
        snapshots=s.snapshots.at[:, rows, slot].set(own_fragments(p, s.params), mode="drop"),
        snapshot_iter=jnp.where(target, s.iteration[:, None], s.snapshot_iter),
        latest_slot=jnp.where(who, slot, s.latest_slot), queue=queue, counters=counters,
    )


def _mix_and_send(spec: SimSpec, p: SimParams, s: SimState, at_boundary: jax.Array, now: jax.Array) -> SimState:
    """The rest of a boundary, once the snapshot is in the ring: mix, flush, queue, start the next iteration."""
    algo = algorithms.get(spec.algorithm)
    own = s.snapshots[:, jnp.arange(spec.nodes), s.latest_slot]  # [m, n, L]: the snapshot just taken
    s = algo.mix(spec, p, s, at_boundary, own, now)
    out = algo.outbox(spec, p, s, at_boundary, now)
    queue, counters = s.queue, s.counters
    if algo.flushes:
        queue, counters = flush(queue, counters, at_boundary, now)
    queue, counters = send(queue, counters, out, p.links, p.fragment_bits, spec.transport)
    iteration = s.iteration + at_boundary
    batch_idx, batch_mask = _plans(spec, p, iteration)
    keep = at_boundary[:, None, None]
    return s.replace(
        queue=queue, counters=counters, iteration=iteration,
        step_in_iter=jnp.where(at_boundary, 0, s.step_in_iter),
        waiting=s.waiting | (at_boundary & algo.waits),
        batch_idx=jnp.where(keep, batch_idx, s.batch_idx), batch_mask=jnp.where(keep, batch_mask, s.batch_mask),
    )


def _when(pred: jax.Array, fn, s: SimState, *args) -> SimState:
    """``fn(s, *args)`` if ``pred``, else ``s``. ``fn`` is masked per node, so it leaves a sweep member with
    nothing to do unchanged: under a sweep's ``vmap`` it runs when any member needs it."""
    return jax.lax.cond(batching.any_member(pred), lambda s: fn(s, *args), lambda s: s, s)


def _network(spec: SimSpec, p: SimParams, s: SimState, since: jax.Array, now: jax.Array) -> SimState:
    algo = algorithms.get(spec.algorithm)
    hook = algo.on_land(spec, p, s) if algo.on_land is not None else None
    queue, counters = s.queue, s.counters
    if spec.transport == "shared":
        queue, counters = advance_shared(queue, counters, p.links, since, now, p.fragment_bits, hook)
    elif hook is not None:
        queue, counters = answer(queue, counters, hook, since, now, p.links, p.fragment_bits, "fifo")
    landed = queue.live & (queue.land > since) & (queue.land <= now)
    counters = counters.add(delivered=jnp.sum(landed, axis=1),
                            received=per_receiver(landed, queue.receiver, spec.nodes))
    return s.replace(queue=queue, counters=counters)


def _stepping(s: SimState, tick: jax.Array) -> jax.Array:
    """Nodes whose local step completes at ``tick``."""
    return ~s.waiting & (s.next_step_tick == tick)


def _tick(spec: SimSpec, p: SimParams, s: SimState, train: bool = True) -> SimState:
    """One tick. ``train=False``: the host has already taken this tick's local steps (:func:`advance`), so
    the compute phase only counts them."""
    algo = algorithms.get(spec.algorithm)
    tick = s.tick + 1
    now = tick.astype(jnp.float32)
    stepping = _stepping(s, tick)
    if train:
        s = _when(jnp.any(stepping), lambda s: _local_step(spec, p, s, stepping), s)
    else:
        s = _count_steps(p, s, stepping)
    at_boundary = stepping & (s.step_in_iter == spec.local_steps)
    s = _network(spec, p, s, now - 1.0, now)
    # Two conds, not one: XLA copies the whole snapshot ring on every tick when one conditional both
    # writes the ring and reads it. Snapshotting before mixing changes nothing unless the ring overflows
    # (a message S iterations old, mixed at this very tick, is then evicted rather than applied).
    any_boundary = jnp.any(at_boundary)
    s = _when(any_boundary, lambda s: _snapshot(spec, p, s, at_boundary, now), s)
    s = _when(any_boundary, lambda s: _mix_and_send(spec, p, s, at_boundary, now), s)
    if algo.release is not None:  # after the boundaries: a node may go on at the boundary where it waits
        s = _when(jnp.any(s.waiting), lambda s: algo.release(spec, p, s, now), s)
    return s.replace(tick=tick)


def run_ticks(spec: SimSpec, p: SimParams, s: SimState, ticks: jax.Array) -> SimState:
    """``ticks`` ticks of the loop, traceable (``vmap`` it over stacked params and states: a sweep)."""
    return jax.lax.fori_loop(0, ticks, lambda _, s: _tick(spec, p, s), s)


@functools.partial(jax.jit, static_argnums=(0,), donate_argnums=(2,))
def _advance(spec: SimSpec, p: SimParams, s: SimState, ticks: jax.Array) -> SimState:
    TRACES[spec] += 1
    return run_ticks(spec, p, s, ticks)


# --------------------------------------------------------------------- local steps driven from the host
# On CPU a convolution inside a loop body (the tick loop) or under vmap (a grouped convolution) runs several
# times slower than the same convolution in a program of its own (DESIGN.md section 7). Tasks that say so
# (``host_steps``) therefore take their local steps one node at a time, each node's step its own compiled
# call dispatched from the host, as a client-sequential loop does; the rest of every tick stays compiled.


HOST_PUT_NODES = 64  # host-taken steps written back at once: bounds the new models held in between


@functools.partial(jax.jit, static_argnums=(0,))
def _node_step(spec: SimSpec, lr: jax.Array, train, trained: tuple, plan: tuple, node: jax.Array):
    """Node ``node``'s local step alone: its new params, optimiser state and loss (``trained`` is the stacked
    ``(params, opt_state)``; the call takes only the arrays it reads)."""
    params, opt_state = jax.tree.map(lambda a: a[node], trained)
    return _sgd_step(lr, spec.task)(params, opt_state, *_minibatch(spec, train, plan, node))


@functools.partial(jax.jit, donate_argnums=(0,))
def _put_steps(trained: tuple, nodes: jax.Array, steps: tuple) -> tuple:
    """Write the host-taken steps of ``nodes`` (one ``(params, opt_state, loss)`` each) into ``trained``:
    the stacked ``(params, opt_state, train_loss_sum, train_loss_steps)``. Compiled once per number of
    nodes stepping together, a small program."""
    params, opt_state, loss_sum, loss_steps = trained
    new_params, new_opt_state, loss = jax.tree.map(lambda *rows: jnp.stack(rows), *steps)
    put = lambda whole, rows: whole.at[nodes].set(rows)  # noqa: E731
    return (jax.tree.map(put, params, new_params), jax.tree.map(put, opt_state, new_opt_state),
            loss_sum.at[nodes].add(loss), loss_steps.at[nodes].add(1))


@functools.partial(jax.jit, static_argnums=(0,), donate_argnums=(2,))
def _ticks_between_steps(spec: SimSpec, p: SimParams, s: SimState, end: jax.Array,
                         stepped: jax.Array) -> tuple[SimState, jax.Array]:
    """If ``stepped``, the tick ``s.tick + 1`` whose local steps the host has just taken; then every tick up
    to ``end`` at which nobody steps. Returns the state and who steps at the tick after it."""
    TRACES[spec] += 1

    def more(carry):
        s, first = carry
        return (s.tick < end) & ((first & stepped) | ~jnp.any(_stepping(s, s.tick + 1)))

    s, _ = jax.lax.while_loop(more, lambda c: (_tick(spec, p, c[0], train=False), False), (s, True))
    return s, _stepping(s, s.tick + 1)


def _steps_from_host(spec: SimSpec, p: SimParams, s: SimState, nodes: np.ndarray) -> SimState:
    """The local steps of ``nodes`` at tick ``s.tick + 1``, each node's its own call (the compute phase of
    a tick that :func:`advance` drives from the host), written back HOST_PUT_NODES at a time."""
    trained = (s.params, s.opt_state, s.train_loss_sum, s.train_loss_steps)
    for start in range(0, len(nodes), HOST_PUT_NODES):
        block = nodes[start:start + HOST_PUT_NODES]
        # A block's steps read the models the previous block's write-back left: their own rows are untouched.
        steps = tuple(_node_step(spec, p.lr, p.data.train, trained[:2], _plan_of(s), node) for node in block)
        trained = _put_steps(trained, block, steps)
    return s.replace(**dict(zip(("params", "opt_state", "train_loss_sum", "train_loss_steps"), trained)))


def host_steps(sim: Simulation) -> bool:
    """Whether :func:`advance` takes local steps node by node from the host (see above)."""
    return bool(getattr(sim.spec.task, "host_steps", False)) and sim.mesh is None


def _advance_from_host(sim: Simulation, s: SimState, ticks: int) -> SimState:
    spec, p = sim.spec, sim.params
    end = int(s.tick) + ticks
    end_tick = jnp.asarray(end, jnp.int32)
    if ticks == 0:  # a no-op run is how callers compile: compile a node's step too (its result is dropped)
        _node_step(spec, p.lr, p.data.train, (s.params, s.opt_state), _plan_of(s), np.int32(0))
    s, who = _ticks_between_steps(spec, p, s, end_tick, jnp.asarray(False))
    while True:
        tick, who = jax.device_get((s.tick, who))  # the one sync per stepping tick: who steps next
        if tick >= end:
            return s
        s = _steps_from_host(spec, p, s, np.flatnonzero(who).astype(np.int32))
        s, who = _ticks_between_steps(spec, p, s, end_tick, jnp.asarray(True))


def advance(sim: Simulation, state: SimState, ticks: int) -> SimState:
    """Simulate ``ticks`` more ticks (compiled once per spec; the tick count is not static)."""
    if host_steps(sim):
        return _advance_from_host(sim, state, ticks)
    return _advance(sim.spec, sim.params, state, jnp.asarray(ticks, jnp.int32))


def ticks_for(seconds: float, dt: float) -> int:
    """Whole ticks in ``seconds`` of simulated time (rounded to the nearest tick)."""
    return max(1, math.floor(seconds / dt + 0.5))

