"""Run configuration: frozen dataclasses, validated before anything compiles.

A :class:`Config` fully describes one simulation. It round-trips through JSON (``to_dict`` /
``from_dict``), which is how the CLI and ``config.json`` in a run directory share it with the Python API.
Every check raises :class:`ConfigError` naming the field, the bad value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ALGORITHMS = ("divshare", "swift", "adpsgd", "dpsgd")
TRANSPORTS = ("fifo", "shared")
ON_CAPACITY = ("warn", "error")  # Config.on_capacity
ON_DIVERGENCE = ("stop", "continue")  # Config.on_divergence
NETWORK_PRESETS = ("uniform", "stragglers", "diablo")
TOPOLOGIES = ("ring", "torus", "exponential", "complete", "regular")
TASKS = ("synthetic", "cifar10", "movielens", "quadratic")
PARTITIONS = ("kshard", "dirichlet", "iid")
CONV_IMPLEMENTATIONS = ("auto", "per-node", "im2col", "xla")
MOVIELENS_VARIANTS = ("ml-latest-small", "ml-100k")
GENERATED_TASKS = ("synthetic", "quadratic")  # the tasks that make their own data (no data_dir)


class ConfigError(ValueError):
    """A configuration value is out of range or inconsistent with another one."""


def _require(ok: bool, name: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{name}={value!r} is not allowed: {allowed}")


# Numbers reach the device as float32 (and products of them, e.g. bits per tick), so they are bounded well
# inside its range: a value that would overflow to inf is refused here rather than silently simulated.
FLOAT_LIMIT = 1e9
# Integers reach the device as int32 indices and array sizes. These bounds keep every derived size inside
# int32 (a larger run would not fit in memory anyway); what does fit is then limited only by the machine.
INT32_LIMIT = 2**31 - 1
MAX_SAMPLES_PER_NODE = 10**6
MAX_QUEUE_RECORDS = 2**24  # message records per sender
MAX_SNAPSHOT_SLOTS = 2**16  # whole-model snapshots per sender
MIN_OMEGA = 1e-9  # m = int(1/omega) fragments; the model's size bounds m again when the model is known
MIN_MBPS = 1e-6  # one bit per second: a slower link would never deliver a model within FLOAT_LIMIT seconds


def _is_number(value: Any) -> bool:
    """A finite int or float; ``True`` and ``False`` are not numbers here (JSON's ``true`` would pass as 1)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _finite_positive(name: str, value: Any, high: float = FLOAT_LIMIT) -> None:
    _require(_is_number(value) and 0 < value <= high, name, value, f"expected a finite number in (0, {high:g}]")


def _finite_in(name: str, value: Any, low: float, high: float, why: str = "") -> None:
    _require(_is_number(value) and low <= value <= high, name, value,
             f"expected a finite number in [{low:g}, {high:g}]{why}")


def _integer(name: str, value: Any, low: int, high: float = math.inf) -> None:
    _require(
        isinstance(value, int) and not isinstance(value, bool) and low <= value <= high,
        name, value, f"expected an integer in [{low}, {high}]",
    )


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    _require(value in allowed, name, value, f"expected one of {', '.join(allowed)}")


@dataclass(frozen=True)
class NetworkConfig:
    """Which network to build (see :mod:`divjax.network`).

    Attributes:
      preset: ``uniform`` (every node at ``fast_mbps``), ``stragglers`` (the first ``stragglers`` nodes at
        ``fast_mbps / slowdown``, both ways, as the reference's Kollaps topology) or ``diablo`` (10 sites x
        ``nodes/10`` nodes with the measured inter-site bandwidth matrix; needs ``nodes`` divisible by 10).
      stragglers: number of communication stragglers (node ids ``0 .. stragglers-1``, as in the reference).
      slowdown: bandwidth divisor of a straggler (5 in the reference's ``60n7cs5`` topology).
      fast_mbps: up and down bandwidth of a regular node in Mbit/s (60 in the reference).
      latency_ms: one-way latency of each node's link in ms; a path crosses two links (sender, receiver).
      transport: ``fifo`` (one message at a time per uplink; the paper's description) or ``shared`` (per-peer
        flows share the links max-min fairly; how the reference deployment behaves on the wire).
      header_bytes: bytes added to every message on top of its float32 payload.
    """

    preset: str = "stragglers"
    stragglers: int = 7
    slowdown: float = 5.0
    fast_mbps: float = 60.0
    latency_ms: float = 1.0
    transport: str = "fifo"
    header_bytes: int = 0

    def validate(self, nodes: int) -> None:
        _choice("network.preset", self.preset, NETWORK_PRESETS)
        _choice("network.transport", self.transport, TRANSPORTS)
        _integer("network.stragglers", self.stragglers, 0, nodes)
        _finite_positive("network.slowdown", self.slowdown)
        _finite_in("network.fast_mbps", self.fast_mbps, MIN_MBPS, FLOAT_LIMIT)
        slowed = self.preset == "stragglers" and self.stragglers > 0
        _require(not slowed or self.fast_mbps / self.slowdown >= MIN_MBPS, "network.slowdown", self.slowdown,
                 f"a straggler's link (fast_mbps / slowdown = {self.fast_mbps / self.slowdown:.3g} Mbit/s) must "
                 f"carry at least {MIN_MBPS:g} Mbit/s (one bit per second)")
        _finite_in("network.latency_ms", self.latency_ms, 0, FLOAT_LIMIT)
        _integer("network.header_bytes", self.header_bytes, 0, INT32_LIMIT)
        if self.preset == "diablo":
            _require(nodes % 10 == 0, "nodes", nodes, "the diablo preset needs a multiple of 10 (10 sites)")


@dataclass(frozen=True)
class TaskConfig:
    """Which learning task every node trains on (see :mod:`divjax.tasks`).

    Attributes:
      name: ``synthetic`` (embedded; FedProx Synthetic(alpha, beta)), ``cifar10`` (GN-LeNet),
        ``movielens`` (matrix factorisation) or ``quadratic`` (least squares with a known optimum).

      Synthetic only:
      alpha, beta: heterogeneity of the labelling functions and of the inputs across nodes.
      hidden: width of the hidden layer of the MLP (0 gives multinomial logistic regression).
      samples_mean_log, samples_sigma_log: node training-sample counts are ``50 + LogNormal(mean, sigma)``,
        capped at ``samples_cap``; the test set holds 50 more samples from each node's distribution.

      Real data (cifar10, movielens):
      data_dir: directory holding the data (see divjax.data); required.
      partition: CIFAR-10 partition: ``kshard`` (the reference's), ``dirichlet`` or ``iid``.
      shards: KShard's shards per node (5 in the reference).
      dirichlet_alpha: concentration of the Dirichlet partition.
      partition_seed: seed of the partition (the reference's dataset seed, 1234); apart from the run seed,
        so that runs with other seeds share the data layout (and the compiled code).
      conv: how GN-LeNet's local steps run: ``per-node`` (native convolutions, one node at a time from the
        host: fastest on CPU), ``im2col`` (matrix products, vmapped over nodes: the fastest vmapped form on
        CPU, used by sweeps), ``xla`` (native convolutions vmapped: for accelerators) or ``auto``
        (``xla`` on accelerators, ``per-node`` on CPU). The same function; floats round differently.
      variant: MovieLens data set: ``ml-latest-small`` (the reference's) or ``ml-100k``.
      eval_nodes: evaluate this many nodes (evenly spread, node 0 included); ``None``: all, as the
        reference. Scoring 60 GN-LeNets on 10,000 images costs ~15 TFLOP: on a CPU, evaluate fewer.
      test_samples: score on the first this-many CIFAR-10 test images; ``None``: all 10,000.

      Quadratic only (see divjax.tasks.quadratic):
      dim: number of parameters d.
      zeta: heterogeneity: node i's targets come from ``x0 + zeta u_i``, ``u_i ~ N(0, I/d)``,
        so ``(1/n) sum_i ||grad f_i(x*)||^2`` is about ``zeta^2``.
      sigma: standard deviation of the noise on every target (gradient noise at the optimum).
      samples_per_node: training samples (rows of A_i) of every node.
      tolerance: a test prediction counts as accurate within this distance of the optimum's prediction.
    """

    name: str = "synthetic"
    alpha: float = 0.5
    beta: float = 0.5
    hidden: int = 32
    samples_mean_log: float = 5.0
    samples_sigma_log: float = 0.5
    samples_cap: int = 800
    data_dir: str | None = None
    partition: str = "kshard"
    shards: int = 5
    dirichlet_alpha: float = 0.1
    partition_seed: int = 1234
    conv: str = "auto"
    variant: str = "ml-latest-small"
    eval_nodes: int | None = None
    test_samples: int | None = None
    dim: int = 10
    zeta: float = 1.0
    sigma: float = 0.5
    samples_per_node: int = 64
    tolerance: float = 0.1

    def validate(self, nodes: int) -> None:
        _choice("task.name", self.name, TASKS)
        for name in ("alpha", "beta", "samples_sigma_log", "zeta", "sigma"):
            _finite_in(f"task.{name}", getattr(self, name), 0, 100)
        _finite_in("task.samples_mean_log", self.samples_mean_log, -20, 20,
                   " (sample counts are capped at samples_cap anyway)")
        _integer("task.hidden", self.hidden, 0, 4096)
        _integer("task.samples_cap", self.samples_cap, 50, MAX_SAMPLES_PER_NODE)
        _choice("task.partition", self.partition, PARTITIONS)
        _integer("task.shards", self.shards, 1, INT32_LIMIT)
        _finite_positive("task.dirichlet_alpha", self.dirichlet_alpha)
        _integer("task.partition_seed", self.partition_seed, 0, 2**32 - 1)
        _choice("task.conv", self.conv, CONV_IMPLEMENTATIONS)
        _choice("task.variant", self.variant, MOVIELENS_VARIANTS)
        if self.eval_nodes is not None:
            _integer("task.eval_nodes", self.eval_nodes, 1, nodes)
        if self.test_samples is not None:
            _integer("task.test_samples", self.test_samples, 1, 10_000)
        _integer("task.dim", self.dim, 1, 10_000)
        _integer("task.samples_per_node", self.samples_per_node, 1, MAX_SAMPLES_PER_NODE)
        _finite_positive("task.tolerance", self.tolerance)
        # A test-set size or a data directory given to a task that has no use for them is a mistake worth
        # naming (the task-specific sizes, such as hidden or dim, keep their defaults in every config).
        if self.test_samples is not None:
            _require(self.name == "cifar10", "task.test_samples", self.test_samples,
                     f"only the cifar10 task reads it (task is {self.name})")
        if self.name in GENERATED_TASKS:
            _require(self.data_dir is None, "task.data_dir", self.data_dir,
                     f"the {self.name} task generates its data and reads no directory; leave it unset")
        else:
            _require(isinstance(self.data_dir, str) and bool(self.data_dir), "task.data_dir", self.data_dir,
                     f"the {self.name} task reads its data from a directory you name (--data-dir)")
            _require(Path(self.data_dir).is_dir(), "task.data_dir", self.data_dir,
                     "expected an existing directory")


# The default (synthetic) run keeps the reference's ratio of communication to computation: its 2,282-parameter
# model at 1.5 Mbit/s takes as long to send as GN-LeNet's 89,834 parameters at the reference's 60 Mbit/s
# (48 ms), and an iteration of 32 steps of 50 ms (1.6 s) sits in the 1.5-5 s range the reference implies.
SYNTHETIC_FAST_MBPS = 1.5


@dataclass(frozen=True)
class Config:
    """One simulation run. Times are simulated seconds. The defaults are the embedded synthetic task on the
    reference's straggler topology (7 of 60 nodes at 1/5 of the bandwidth), scaled to the small model.

    Attributes:
      algorithm: ``divshare``, ``swift``, ``adpsgd`` or ``dpsgd``.
      nodes: number of nodes n.
      degree: J, recipients per fragment (divshare, swift); ``degree // 2`` pings per iteration (adpsgd);
        the degree of the ``regular`` topology (dpsgd).
      omega: DivShare's fragment fraction; ``m = max(1, int(1/omega))`` fragments. Swift and AD-PSGD always
        send the whole model (m = 1); D-PSGD too.
      local_steps: H, minibatch SGD steps per iteration.
      batch_size: minibatch size.
      lr: SGD learning rate (plain SGD, no momentum, as the reference).
      step_time: simulated seconds of one local SGD step on a regular node.
      compute_stragglers: nodes ``0 .. compute_stragglers-1`` take ``compute_slowdown`` times longer per step.
      dt: the tick in simulated seconds; ``None`` means ``step_time``. Step times are rounded to a whole
        number of ticks (see docs/semantics.md); network events keep their exact times.
      duration: simulated seconds to run.
      eval_every: simulated seconds between evaluations (rounded to whole ticks). Nodes of equal speed reach
        their boundaries together, so a period that is a multiple of the iteration (here 10 iterations, as
        the reference's ``test_after = 10``) evaluates every time right after mixing.
      eval_every_iterations: if set, evaluate every this many iterations of a regular node instead
        (``eval_every_iterations * local_steps * step_time`` seconds; the reference tests every 10).
      target_accuracy: the mean test accuracy across nodes whose first crossing is the time-to-accuracy.
      seed: seeds the task data, the initial model (shared by all nodes), minibatches and recipients.
      topology: D-PSGD's gossip graph.
      queue_capacity: message records per sender; ``None`` chooses from the algorithm (see ``capacities``).
      snapshot_slots: model snapshots kept per sender for in-flight messages; ``None`` chooses.
      on_capacity: when messages are lost to a full queue or snapshot ring: ``warn`` (and count them) or
        ``error`` (stop the run with the counts).
      on_divergence: when a node's model or loss becomes NaN or inf (checked at every evaluation): ``stop``
        with a clear error (what was measured is kept) or ``continue`` with the node marked.
      network, task: see :class:`NetworkConfig`, :class:`TaskConfig`.
    """

    algorithm: str = "divshare"
    nodes: int = 60
    degree: int = 6
    omega: float = 0.1
    local_steps: int = 32
    batch_size: int = 8
    lr: float = 0.05
    step_time: float = 0.05
    compute_stragglers: int = 0
    compute_slowdown: float = 1.0
    dt: float | None = None
    duration: float = 800.0
    eval_every: float = 16.0
    eval_every_iterations: int | None = None
    target_accuracy: float = 0.8
    seed: int = 0
    topology: str = "ring"
    queue_capacity: int | None = None
    snapshot_slots: int | None = None
    on_capacity: str = "warn"
    on_divergence: str = "stop"
    network: NetworkConfig = field(default_factory=lambda: NetworkConfig(fast_mbps=SYNTHETIC_FAST_MBPS))
    task: TaskConfig = field(default_factory=TaskConfig)

    # ------------------------------------------------------------------ derived quantities
    @property
    def tick(self) -> float:
        """The tick length in simulated seconds."""
        return self.step_time if self.dt is None else self.dt

    @property
    def evaluation_period(self) -> float:
        """Simulated seconds between evaluations."""
        if self.eval_every_iterations is not None:
            return self.eval_every_iterations * self.local_steps * self.step_time
        return self.eval_every

    @property
    def fragments(self) -> int:
        """m, the number of model fragments per message round."""
        if self.algorithm == "divshare":
            return max(1, int(1.0 / self.omega))
        return 1

    @property
    def messages_per_iteration(self) -> int:
        """Messages a node queues at each iteration boundary (pongs excluded)."""
        if self.algorithm in ("divshare", "swift"):
            return self.degree * self.fragments
        if self.algorithm == "adpsgd":
            return self.degree // 2
        return -1  # dpsgd: the node's degree in its topology, known once the graph is built

    def capacities(self, max_out: int) -> tuple[int, int]:
        """(queue records per sender, snapshot slots per sender), from the config or the defaults.

        Defaults leave room for several iterations of backlog: DivShare flushes, so about two iterations
        are alive at once; Swift and AD-PSGD never drop, so a slow sender builds a backlog; the overflow
        of either capacity is counted and reported, never silent.
        """
        backlog = {"divshare": 3, "swift": 8, "adpsgd": 8, "dpsgd": 3}[self.algorithm]
        queue = self.queue_capacity or backlog * max_out
        slots = self.snapshot_slots or backlog + 1
        return queue, slots

    # ------------------------------------------------------------------ validation
    def validate(self) -> "Config":
        """Raise :class:`ConfigError` on the first bad field; return ``self`` so calls chain."""
        _choice("algorithm", self.algorithm, ALGORITHMS)
        _integer("nodes", self.nodes, 2, 1_000_000)
        _integer("degree", self.degree, 1, 2**16)
        if self.algorithm in ("divshare", "swift"):
            _require(self.degree < self.nodes, "degree", self.degree,
                     f"J must be < nodes={self.nodes} (J distinct peers among the n-1 others)")
        if self.algorithm == "adpsgd":
            _require(2 <= self.degree <= 2 * self.nodes, "degree", self.degree,
                     f"AD-PSGD sends degree // 2 pings: need 2 <= degree <= 2 * nodes = {2 * self.nodes}")
        _finite_in("omega", self.omega, MIN_OMEGA, 1, " (a fragment fraction; m = int(1/omega) fragments)")
        _integer("local_steps", self.local_steps, 1, INT32_LIMIT)
        _integer("batch_size", self.batch_size, 1, INT32_LIMIT)
        plan = self.nodes * self.local_steps * self.batch_size
        _require(plan <= INT32_LIMIT, "nodes * local_steps * batch_size", plan,
                 f"an iteration's minibatch plan holds that many sample indices; expected at most {INT32_LIMIT:,}")
        _finite_positive("lr", self.lr)
        _finite_positive("step_time", self.step_time)
        _integer("compute_stragglers", self.compute_stragglers, 0, self.nodes)
        _finite_in("compute_slowdown", self.compute_slowdown, 1, FLOAT_LIMIT)
        if self.dt is not None:
            _finite_positive("dt", self.dt)
            _require(self.dt <= self.step_time * (1 + 1e-9), "dt", self.dt,
                     f"the tick must not exceed step_time={self.step_time} (a node takes at most one step a tick)")
        _finite_positive("duration", self.duration)
        _finite_positive("eval_every", self.eval_every)
        if self.eval_every_iterations is not None:
            _integer("eval_every_iterations", self.eval_every_iterations, 1, INT32_LIMIT)
        _require(self.evaluation_period >= self.tick * (1 - 1e-9), "eval_every", self.eval_every,
                 f"expected at least one tick ({self.tick} s)")
        _finite_in("target_accuracy", self.target_accuracy, 0, 1, " (a fraction)")
        _integer("seed", self.seed, 0, INT32_LIMIT)
        _choice("topology", self.topology, TOPOLOGIES)
        if self.algorithm == "dpsgd" and self.topology == "regular":
            _require(self.degree < self.nodes and (self.degree * self.nodes) % 2 == 0, "degree", self.degree,
                     "a random d-regular graph needs degree < nodes and degree * nodes even")
        if self.queue_capacity is not None:
            _integer("queue_capacity", self.queue_capacity, 1, MAX_QUEUE_RECORDS)
        if self.snapshot_slots is not None:
            _integer("snapshot_slots", self.snapshot_slots, 2, MAX_SNAPSHOT_SLOTS)
        _choice("on_capacity", self.on_capacity, ON_CAPACITY)
        _choice("on_divergence", self.on_divergence, ON_DIVERGENCE)
        ticks = self.duration / self.tick
        _require(1 <= ticks < 2**24, "duration", self.duration,
                 f"between one tick and 2**24 ticks per run (duration / dt = {ticks:.3g})")
        slowest = self.step_time * self.compute_slowdown / self.tick
        _require(slowest < 2**24, "dt", self.dt,
                 f"a step must last fewer than 2**24 ticks (step_time * compute_slowdown / dt = {slowest:.3g})")
        _require(isinstance(self.network, NetworkConfig), "network", self.network, "expected a NetworkConfig")
        _require(isinstance(self.task, TaskConfig), "task", self.task, "expected a TaskConfig")
        self.network.validate(self.nodes)
        self.task.validate(self.nodes)
        return self

    # ------------------------------------------------------------------ presets
    @classmethod
    def for_task(cls, name: str, data_dir: str | None = None, **changes: Any) -> "Config":
        """The reference's setting for a task, with ``changes`` on top (see :data:`TASK_PRESETS`)."""
        _choice("task", name, TASKS)
        preset = dict(TASK_PRESETS[name])
        task = dataclasses.replace(preset.pop("task", TaskConfig()), name=name, data_dir=data_dir)
        return cls(**{**preset, "task": task, **changes})

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Config":
        """Build a config from a (possibly partial) dict; unknown keys are an error."""
        _require(isinstance(data, dict), "config", data, "expected a dict (JSON object) of config fields")
        data = dict(data)
        nested = {"network": NetworkConfig, "task": TaskConfig}
        for key, sub_cls in nested.items():
            if key in data:
                _require(isinstance(data[key], dict), key, data[key],
                         f"expected a dict (JSON object) of {sub_cls.__name__} fields")
                data[key] = _build(sub_cls, data[key], prefix=f"{key}.")
        return _build(cls, data)

    def replace(self, **changes: Any) -> "Config":
        return dataclasses.replace(self, **changes)


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown config field(s) {', '.join(prefix + u for u in unknown)}; "
                          f"allowed: {', '.join(sorted(prefix + n for n in names))}")
    return cls(**data)


# The reference's hyper-parameters per task (spec/reference-impl.md §3.7, §7, §8). Compute time per step was
# not recorded: CIFAR-10 takes 2.5 s per 128-step iteration (the middle of the 1.5-5 s the reference implies);
# MovieLens's steps are far cheaper: 10 ms, so that an iteration (1.28 s) leaves a 60 Mbit/s node the time
# to send its J = 6 models of 6.6 Mbit (0.66 s) while a 12 Mbit/s straggler cannot (3.3 s). The reference's
# MovieLens settings are unknown: batch 16 and lr 0.1 are decentralizepy's own MovieLens config, with
# DivShare's 128 local steps.
TASK_PRESETS: dict[str, dict[str, Any]] = {
    "synthetic": {},
    "quadratic": dict(target_accuracy=0.9),
    "cifar10": dict(local_steps=128, batch_size=8, lr=0.05, step_time=2.5 / 128, duration=800.0,
                    eval_every_iterations=10, target_accuracy=0.6, network=NetworkConfig()),
    "movielens": dict(local_steps=128, batch_size=16, lr=0.1, step_time=0.01, duration=800.0,
                      eval_every_iterations=10, target_accuracy=0.2, network=NetworkConfig()),
}
