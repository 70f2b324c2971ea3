"""The vectorised engine against the event-driven reference (:mod:`divjax.reference`).

On small configs with step times on the tick grid the engine is exact (docs/semantics.md, "Time"), so
both simulators must agree message by message: the same messages with the same receiver, fragment, kind,
iteration and fate, the same queue, landing and end times, the same counters, and the same models up to
float32 rounding. Where every time is also exactly representable (dyadic bandwidths, latencies and message
sizes, max-min shares that are halves), times must agree exactly; otherwise within a tick. D-PSGD off the
grid (a released node restarts at the end of its tick) must converge to the reference as the tick shrinks.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap
from typing import NamedTuple

import numpy as np
import pytest

from divjax import engine, network, reference
from divjax.config import Config, NetworkConfig, TaskConfig
from divjax.state import flatten_models

LOG = 4096
FATES = {0: "applied", 1: "superseded", 2: "flushed", 3: "evicted"}
KINDS = {0: "data", 1: "ping", 2: "pong"}

# A fragment of the hidden=4 MLP (d = 294, m = 2) is 147 float32 = 4704 bits, a full model 9408 bits:
# 37632 bit/s (147 * 2**8) sends a fragment in 1/8 s and a model in 1/4 s, a x4 straggler in 1/2 s and 1 s.
FAST_MBPS = 0.037632
TASK = TaskConfig(hidden=4, samples_mean_log=3.0, samples_cap=80)


def config(algorithm: str, *, nodes: int = 5, degree: int = 2, transport: str = "fifo", stragglers: int = 1,
           fast_mbps: float = FAST_MBPS, latency_ms: float = 62.5, dt: float = 0.125, **changes) -> Config:
    """A tiny config; the queue has room for the backlog slow AD-PSGD and Swift senders build up (the
    reference has no capacities, so an engine overflow would be a difference)."""
    changes.setdefault("queue_capacity", 48)
    return Config(algorithm=algorithm, nodes=nodes, degree=degree, omega=0.5, local_steps=3, batch_size=4,
                  step_time=0.25, dt=dt, duration=1.0, task=TASK,
                  network=NetworkConfig(preset="stragglers", stragglers=stragglers, slowdown=4.0,
                                        fast_mbps=fast_mbps, latency_ms=latency_ms, transport=transport),
                  **changes)


def shared_network(cfg: Config, latency_s: list[float]) -> network.Network:
    """Uniform bandwidth (max-min shares stay halves when no link carries more than two flows), with
    per-node latencies to break the symmetry."""
    net = network.from_config(cfg.network, cfg.nodes)
    return dataclasses.replace(net, latency_s=np.asarray(latency_s))


def sites_network(cfg: Config, group: list[int], cap_bps: list[list[float]], group_latency_s: list[list[float]],
                  header_bits: int, latency_s: list[float] | None = None,
                  bps: list[float] | None = None) -> network.Network:
    """The config's preset (or ``bps`` up and down, ``latency_s`` per node), its nodes split into sites
    (groups) with caps and extra latencies between them, and a header on every message."""
    net = network.from_config(cfg.network, cfg.nodes)
    changes = {} if bps is None else {"up_bps": np.asarray(bps, np.float64), "down_bps": np.asarray(bps, np.float64)}
    if latency_s is not None:
        changes["latency_s"] = np.asarray(latency_s, np.float64)
    return dataclasses.replace(net, group=np.asarray(group, np.int32), group_cap_bps=np.asarray(cap_bps, np.float64),
                               group_latency_s=np.asarray(group_latency_s, np.float64), header_bits=header_bits,
                               **changes)


class Case(NamedTuple):
    config: Config
    network: network.Network | None  # None: the config's preset
    ticks: int
    exact: bool = True  # every time dyadic: times agree to float rounding (else within a tick)


# fifo: 5 nodes, node 0 a x4 communication straggler (it cannot send its J*m fragments within an iteration,
# so flushes drop some). shared: 3 nodes (or a ring), uniform links at a quarter of the rate, node 0 a x2
# compute straggler; and once with the communication straggler, whose max-min shares are sevenths.
_SLOW = FAST_MBPS / 4
_SHARED = config("divshare", nodes=3, transport="shared", stragglers=0, fast_mbps=_SLOW,
                 compute_stragglers=1, compute_slowdown=2.0)
# Faster links and two pings an iteration, so that two models from one sender land between two mixes.
_ADPSGD_SHARED = _SHARED.replace(algorithm="adpsgd", degree=4,
                                 network=dataclasses.replace(_SHARED.network, fast_mbps=FAST_MBPS))
# D-PSGD restarts a released node at the end of its tick, so its landings must fall on the grid to be
# exact: a 4-node ring (two flows a link, shares are halves) at full rate, with latencies of whole ticks.
_DPSGD_SHARED = config("dpsgd", nodes=4, transport="shared", stragglers=0)
# Two sites (groups) with asymmetric caps and latencies between them (cap[0, 1] != cap[1, 0], latency[0, 1]
# != latency[1, 0]), a cap and a latency inside site 1, and a 147-byte header (1176 bits), so that
# transposing a site matrix, dropping the site latency or ignoring the header moves message times. fifo:
# the 5-node straggler config, sites {0, 1} and {2, 3, 4}; path rates are 37632 bit/s over 1, 2 or 4, so a
# 5880-bit message takes 5/32, 5/16 or 5/8 s. shared: 3 nodes, site 0 is node 0 alone; only node 0 has
# links of its own (C = 37632 bit/s), so a flow runs at its site cap (C/2 out of site 0 and inside site 1,
# C/4 into site 0), and node 0's C/2 flows fill its uplink exactly: every time stays dyadic.
_HEADER_BITS = 1176
_FAST_BPS = FAST_MBPS * network.MBPS
CASES = {
    "divshare-fifo": Case(config("divshare"), None, 48),
    "swift-fifo": Case(config("swift"), None, 48),
    "adpsgd-fifo": Case(config("adpsgd", degree=4), None, 48),
    "dpsgd-fifo": Case(config("dpsgd"), None, 48),
    "divshare-shared": Case(_SHARED, shared_network(_SHARED, [0.0625, 0.0, 0.125]), 64),
    "swift-shared": Case(_SHARED.replace(algorithm="swift"), shared_network(_SHARED, [0.0625, 0.0, 0.125]), 64),
    "adpsgd-shared": Case(_ADPSGD_SHARED, shared_network(_ADPSGD_SHARED, [0.0625, 0.0, 0.125]), 64),
    "dpsgd-shared": Case(_DPSGD_SHARED, shared_network(_DPSGD_SHARED, [0.125, 0.0, 0.25, 0.0]), 44),
    "divshare-shared-straggler": Case(config("divshare", transport="shared"), None, 48, exact=False),
    "divshare-fifo-sites": Case(config("divshare"), sites_network(
        config("divshare"), group=[0, 0, 1, 1, 1],
        cap_bps=[[np.inf, _FAST_BPS / 2], [_FAST_BPS / 4, _FAST_BPS / 2]],
        group_latency_s=[[0.0, 0.125], [0.25, 0.0625]], header_bits=_HEADER_BITS), 48),
    "divshare-shared-sites": Case(_SHARED, sites_network(
        _SHARED, group=[0, 1, 1], cap_bps=[[np.inf, _FAST_BPS / 2], [_FAST_BPS / 4, _FAST_BPS / 2]],
        group_latency_s=[[0.0, 0.125], [0.25, 0.0625]], header_bits=_HEADER_BITS,
        latency_s=[0.0625, 0.0, 0.125], bps=[_FAST_BPS, np.inf, np.inf]), 64),
}


@dataclasses.dataclass
class Pair:
    sim: engine.Simulation
    state: object
    ticks: int
    ref: reference.ReferenceResult


def run_both(cfg: Config, net: network.Network | None, ticks: int) -> Pair:
    sim = engine.build(cfg, network=net, log_messages=LOG)
    state = engine.advance(sim, sim.initial_state(), ticks)
    return Pair(sim, state, ticks, reference.simulate(sim, ticks * sim.dt))


@pytest.fixture(scope="module")
def runs() -> dict[str, Pair]:
    return {}


def get(runs: dict[str, Pair], name: str) -> Pair:
    if name not in runs:
        case = CASES[name]
        runs[name] = run_both(case.config, case.network, case.ticks)
    return runs[name]


# ------------------------------------------------------------------------------------------ helpers


def engine_messages(pair: Pair) -> dict[tuple[int, int], dict]:
    """Every message of the engine run, keyed by (sender, seq), times in seconds."""
    dt, end_time = pair.sim.dt, pair.ticks
    log = pair.state.counters.log
    count = int(log.count)
    assert count <= log.capacity, "message log overflowed: raise LOG"
    col = {f: np.asarray(getattr(log, f))[:count] for f in
           ("sender", "seq", "receiver", "fragment", "kind", "sender_iter", "start", "land", "ended", "fate")}
    out = {}
    for k in range(count):
        fate = FATES[int(col["fate"][k])]
        out[(int(col["sender"][k]), int(col["seq"][k]))] = dict(
            receiver=int(col["receiver"][k]), fragment=int(col["fragment"][k]), kind=KINDS[int(col["kind"][k])],
            sender_iter=int(col["sender_iter"][k]), fate=fate, queued_at=float(col["start"][k]) * dt,
            landed_at=None if fate == "flushed" else float(col["land"][k]) * dt,
            ended_at=float(col["ended"][k]) * dt)
    q = pair.state.queue
    table = {f: np.asarray(getattr(q, f)) for f in
             ("live", "seq", "receiver", "fragment", "kind", "sender_iter", "start", "land")}
    for s, c in zip(*np.nonzero(table["live"])):
        land = float(table["land"][s, c])
        out[(int(s), int(table["seq"][s, c]))] = dict(
            receiver=int(table["receiver"][s, c]), fragment=int(table["fragment"][s, c]),
            kind=KINDS[int(table["kind"][s, c])], sender_iter=int(table["sender_iter"][s, c]), fate="in_flight",
            queued_at=float(table["start"][s, c]) * dt, landed_at=land * dt if land <= end_time else None,
            ended_at=None)
    return out


def reference_messages(result: reference.ReferenceResult) -> dict[tuple[int, int], dict]:
    return {(m.sender, m.seq): dict(receiver=m.receiver, fragment=m.fragment, kind=m.kind,
                                    sender_iter=m.sender_iter, fate=m.fate, queued_at=m.queued_at,
                                    landed_at=m.landed_at, ended_at=m.ended_at)
            for m in result.messages}


def differences(eng: dict, ref: dict, tol: float) -> list[str]:
    """Human-readable differences between two message tables."""
    out = []
    for key in sorted(set(eng) | set(ref)):
        e, r = eng.get(key), ref.get(key)
        if e is None or r is None:
            out.append(f"{key}: engine {e} reference {r}")
            continue
        for field, a in e.items():
            b = r[field]
            same = (a == b if not isinstance(a, float) or b is None
                    else abs(a - b) <= tol)
            if not same:
                out.append(f"{key} {field}: engine {a} reference {b}")
    return out


# ------------------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("name", list(CASES))
def test_engine_matches_reference(runs, name):
    pair = get(runs, name)
    if pair.sim.config.algorithm == "dpsgd":  # the precondition of exactness
        assert all((m.landed_at / pair.sim.dt).is_integer() for m in pair.ref.messages if m.landed_at is not None)
    tol = 1e-6 if CASES[name].exact else pair.sim.dt
    diffs = differences(engine_messages(pair), reference_messages(pair.ref), tol=tol)
    assert not diffs, f"{len(diffs)} differences, first ones:\n" + "\n".join(diffs[:20])
    counters = pair.state.counters
    assert not np.any(np.asarray(counters.overflow_queue)) and not np.any(np.asarray(counters.overflow_snapshot))
    for counter in reference.COUNTERS:
        np.testing.assert_array_equal(np.asarray(getattr(counters, counter)), pair.ref.counters[counter],
                                      err_msg=counter)
    np.testing.assert_array_equal(np.asarray(pair.state.iteration), pair.ref.iterations)
    np.testing.assert_allclose(np.asarray(flatten_models(pair.state.params)), pair.ref.params, rtol=1e-4, atol=1e-5)


def test_cases_exercise_flushes_and_supersessions(runs):
    for name in ("divshare-fifo", "divshare-shared", "divshare-shared-straggler"):
        assert get(runs, name).ref.counters["flushed"].sum() > 0, name
    for name in ("adpsgd-fifo", "adpsgd-shared", "divshare-fifo"):
        assert get(runs, name).ref.counters["superseded"].sum() > 0, name
    for name in CASES:  # something is still in flight at the end, something has been applied
        fates = {m.fate for m in get(runs, name).ref.messages}
        assert {"applied", "in_flight"} <= fates, name
    pongs = [m for m in get(runs, "adpsgd-shared").ref.messages if m.kind == "pong"]
    assert pongs and any(m.sender_iter == -1 for m in pongs)  # some answered with the initial model
    for name in ("divshare-fifo-sites", "divshare-shared-sites"):  # messages land both ways between the
        pair = get(runs, name)  # sites and inside them, so every entry of the site matrices is checked
        group = pair.sim.network.group
        routes = {(int(group[m.sender]), int(group[m.receiver])) for m in pair.ref.messages if m.landed_at is not None}
        in_use = {(int(group[s]), int(group[r])) for s in range(len(group)) for r in range(len(group)) if s != r}
        assert routes == in_use, (name, routes, in_use)


def test_reference_accounting(runs):
    """sent = applied + superseded + flushed + in flight, per node; delivered counts the landings."""
    for name in CASES:
        ref = get(runs, name).ref
        c = ref.counters
        in_flight = np.bincount([m.sender for m in ref.messages if m.fate == "in_flight"],
                                minlength=len(c["sent"]))
        np.testing.assert_array_equal(c["sent"], c["applied"] + c["superseded"] + c["flushed"] + in_flight)
        landed = [m for m in ref.messages if m.landed_at is not None]
        assert c["delivered"].sum() == c["received"].sum() == len(landed)
        assert all(m.queued_at <= m.completed_at <= m.landed_at for m in landed)


def test_max_min_rates_by_progressive_filling():
    """Two flows out of node 0 (10 bit/s up) and one into node 2 from node 1, node 2 downlink 12 bit/s:
    0->1 and 0->2 get 5 each; 1->2 gets what node 2 has left, 7."""
    net = network.Network(up_bps=np.array([10.0, 100.0, 100.0]), down_bps=np.array([100.0, 100.0, 12.0]),
                          latency_s=np.zeros(3), group=np.zeros(3, np.int32),
                          group_cap_bps=np.full((1, 1), np.inf), group_latency_s=np.zeros((1, 1)))
    rates = reference.max_min_rates([(0, 1), (0, 2), (1, 2)], net)
    assert rates == pytest.approx({(0, 1): 5.0, (0, 2): 5.0, (1, 2): 7.0})


def _dpsgd_times(pair: Pair) -> float:
    """Largest difference (s) of queue and landing times over the messages both simulators have."""
    eng, ref = engine_messages(pair), reference_messages(pair.ref)
    worst = 0.0
    for key in set(eng) & set(ref):
        for field in ("queued_at", "landed_at"):
            if eng[key][field] is not None and ref[key][field] is not None:
                worst = max(worst, abs(eng[key][field] - ref[key][field]))
    return worst


def test_engine_converges_to_reference_as_dt_shrinks():
    """D-PSGD with off-grid latencies (0.06 s a path) and a compute straggler: a released node restarts
    at the end of its tick in the engine, exactly in the reference; the gap must shrink with dt."""
    base = config("dpsgd", stragglers=0, latency_ms=30.0, compute_stragglers=1, compute_slowdown=2.0)
    duration = 6.0
    reference_result = None
    errors = []
    for dt in (0.125, 0.03125, 0.0078125):
        sim = engine.build(base.replace(dt=dt), log_messages=LOG)
        ticks = engine.ticks_for(duration, dt)
        state = engine.advance(sim, sim.initial_state(), ticks)
        if reference_result is None:
            reference_result = reference.simulate(sim, duration)
        errors.append(_dpsgd_times(Pair(sim, state, ticks, reference_result)))
    assert all(a >= b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] <= min(0.25 * errors[0], 0.02), errors


# ------------------------------------------------------------------------------------------ regressions


def test_dpsgd_node_released_at_its_own_boundary():
    """Node 0 computes at half speed, so its neighbours' models are in when it reaches its boundary at
    1.5 s: it must go on at once (its next boundary at 3.0 s), on the grid, with no rounding."""
    pair = run_both(config("dpsgd", stragglers=0, compute_stragglers=1, compute_slowdown=2.0), None, 32)
    assert pair.ref.boundary_times[0][:2] == [1.5, 3.0]
    diffs = differences(engine_messages(pair), reference_messages(pair.ref), tol=1e-6)
    assert not diffs, "\n".join(diffs[:10])


# The subprocess timeout is a hang guard only, never the assertion (no wall-clock checks: machines are
# noisy): the event counts fail a stall deterministically, this only keeps an unforeseen hang elsewhere from
# blocking the suite. A healthy run takes seconds to a minute, depending on the machine.
HANG_GUARD_S = 600
# Stop counting a tick's events past this many: far above any bound checked, and it ends a stalled loop.
_EVENT_LIMIT = 10_000
_TICKS = 24  # 3 s: AD-PSGD's first messages land at ticks 15 and 16
_STALL = textwrap.dedent(f"""
    import json
    import jax, jax.numpy as jnp
    from divjax import algorithms, engine, transport
    from divjax.config import Config, NetworkConfig, TaskConfig
    out = {{}}
    for algorithm in ("swift", "adpsgd"):
        cfg = Config(algorithm=algorithm, nodes=3, degree=2, local_steps=3, batch_size=4, step_time=0.25,
                     dt=0.125, duration=3.0, task=TaskConfig(hidden=4, samples_mean_log=3.0, samples_cap=80),
                     network=NetworkConfig(stragglers=1, slowdown=4.0, fast_mbps=0.037632, latency_ms=62.5,
                                           transport="shared"))
        sim = engine.build(cfg)
        spec, p, on_land = sim.spec, sim.params, algorithms.get(algorithm).on_land

        @jax.jit
        def tick_events(s, since):
            # What the engine's network phase does over (since, since + 1] (engine._network), counted.
            hook = on_land(spec, p, s) if on_land is not None else None
            q, _, events = transport.advance_shared(s.queue, s.counters, p.links, since, since + 1,
                                                    p.fragment_bits, hook, max_events={_EVENT_LIMIT})
            done_before = s.queue.live & jnp.isfinite(s.queue.complete)  # records never end in the loop
            completed = jnp.sum(q.live & jnp.isfinite(q.complete) & ~done_before)
            landed = jnp.sum(q.live & (q.land > since) & (q.land <= since + 1))
            return events, completed, landed

        rows, state = [], sim.initial_state()
        for tick in range({_TICKS}):
            rows.append([int(x) for x in tick_events(state, jnp.float32(tick))])
            if rows[-1][0] >= {_EVENT_LIMIT}:
                break  # stalled: the engine would loop forever on this tick
            state = engine.advance(sim, state, 1)
        out[algorithm] = rows
    print(json.dumps(out))
""")


def test_shared_transport_event_loop_progresses():
    """Regression: the x4 straggler's flows take 1/8 of the fast links, the others 7/8, completion times
    float32 cannot hold; a residue of bits once left a flow finishing at `now + step == now`, forever (tick 9
    of the Swift run, tick 15 of the AD-PSGD one). Every event of the shared transport's loop but a tick's
    last completes a flow or, with a landing hook (AD-PSGD's pongs), reaches a landing time, so a tick takes
    at most completions + landings + 1 events. Counted per tick, before the engine runs it, by the same
    ``advance_shared`` call the engine's network phase makes, with ``max_events`` (a stall then ends at the
    limit and fails here instead of hanging). In a subprocess only as a hang guard (HANG_GUARD_S)."""
    try:
        run = subprocess.run([sys.executable, "-c", _STALL], check=False, capture_output=True, text=True,
                             timeout=HANG_GUARD_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"hung: no result within the {HANG_GUARD_S} s hang guard")
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.splitlines()[-1])
    for algorithm, rows in out.items():
        assert len(rows) == _TICKS, (algorithm, f"tick {len(rows)} stopped after {_EVENT_LIMIT} events", rows)
        for tick, (events, completed, landed) in enumerate(rows, start=1):
            bound = completed + (landed if algorithm == "adpsgd" else 0) + 1
            assert 1 <= events <= bound, (algorithm, tick, events, completed, landed)
        assert sum(row[1] for row in rows) > 0, algorithm  # flows complete: the bound is not vacuous
    assert out["swift"][8][1] > 0  # tick 9, where the residue stalled the loop, completes flows
    assert sum(row[2] for row in out["adpsgd"]) > 0  # landings are events: the hook's branch runs
