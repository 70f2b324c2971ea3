"""The simulated network: per-node links, optional per-group caps, and the paper's presets.

A node has an upload and a download bandwidth (bit/s) and a one-way link latency (s). Nodes may also
belong to groups (the Diablo sites) with a cap on the bandwidth between each pair of groups and an extra
latency between them: a path from s to r is capped at ``min(up[s], down[r], group_cap[g[s], g[r]])`` and
takes ``latency[s] + latency[r] + group_latency[g[s], g[r]]`` seconds once its last bit has left.

How concurrent messages share those capacities is the *transport* (``fifo`` or ``shared``), implemented
in :mod:`divjax.transport` and explained in ``docs/semantics.md``.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.resources
import numbers
from dataclasses import dataclass

import numpy as np

from divjax.config import FLOAT_LIMIT, INT32_LIMIT, MIN_MBPS, TRANSPORTS, ConfigError, NetworkConfig

MBPS = 1e6

# The bounds NetworkConfig puts on a preset (MIN_MBPS <= fast_mbps <= FLOAT_LIMIT, latency_ms <= FLOAT_LIMIT,
# header_bytes <= INT32_LIMIT), in this module's units, so that a custom Network cannot go where a preset may
# not. Rates reach the device as float32 bits per tick: a rate far below a bit per second would underflow
# there to 0 and silently never deliver, hence the lower bound.
MIN_BPS = MIN_MBPS * MBPS
MAX_BPS = FLOAT_LIMIT * MBPS
MAX_LATENCY_S = FLOAT_LIMIT / 1e3
MAX_HEADER_BITS = 8 * INT32_LIMIT

DIABLO_SITES = ("capetown", "tokyo", "mumbai", "sydney", "stockholm",
                "milan", "bahrain", "saopaulo", "ohio", "oregon")


@dataclass(frozen=True, eq=False)
class Network:
    """Link capacities and latencies of n nodes (host-side numpy arrays; seconds and bit/s).

    Attributes:
      up_bps, down_bps: ``[n]`` upload and download bandwidth; ``inf`` means no per-node cap.
      latency_s: ``[n]`` one-way latency of each node's link.
      group: ``[n]`` group (site) of each node.
      group_cap_bps: ``[G, G]`` bandwidth cap between groups; ``inf`` means none.
      group_latency_s: ``[G, G]`` latency added to a path between two groups (a relay hop, say).
      transport: ``fifo`` or ``shared``.
      header_bits: bits added to every message.
      name: a short description for tables and plots.
    """

    up_bps: np.ndarray
    down_bps: np.ndarray
    latency_s: np.ndarray
    group: np.ndarray
    group_cap_bps: np.ndarray
    group_latency_s: np.ndarray
    transport: str = "fifo"
    header_bits: int = 0
    name: str = "custom"

    def __post_init__(self) -> None:
        """Check every field (raising :class:`ConfigError` naming it, the bad value and what is allowed) and
        store the arrays as read-only numpy copies, so what was checked is what gets simulated."""
        bandwidth = f"expected a bandwidth in [{MIN_BPS:g}, {MAX_BPS:g}] bit/s, or inf for no cap"
        latency = f"expected a latency in [0, {MAX_LATENCY_S:g}] s"
        up = _checked("up_bps", self.up_bps, 1, MIN_BPS, MAX_BPS, bandwidth, allow_inf=True)
        n = len(up)
        if n == 0:
            raise ConfigError("network.up_bps is empty: expected one entry per node")
        down = _checked("down_bps", self.down_bps, 1, MIN_BPS, MAX_BPS, bandwidth, allow_inf=True)
        lat = _checked("latency_s", self.latency_s, 1, 0.0, MAX_LATENCY_S, latency)
        group = _array("group", self.group, 1, None)
        for field_name, values in (("down_bps", down), ("latency_s", lat), ("group", group)):
            if len(values) != n:
                raise ConfigError(f"network.{field_name} has {len(values)} entries, "
                                  f"expected one per node ({n}, as up_bps)")
        caps = _checked("group_cap_bps", self.group_cap_bps, 2, MIN_BPS, MAX_BPS, bandwidth, allow_inf=True)
        extra = _checked("group_latency_s", self.group_latency_s, 2, 0.0, MAX_LATENCY_S, latency)
        if caps.shape[0] != caps.shape[1] or caps.shape[0] == 0:
            raise ConfigError(f"network.group_cap_bps has shape {caps.shape}: expected [G, G] for G >= 1 groups")
        if extra.shape != caps.shape:
            raise ConfigError(f"network.group_latency_s has shape {extra.shape}: expected {caps.shape}, "
                              "the shape of group_cap_bps")
        groups = caps.shape[0]
        ids = f"expected integer group ids in [0, {groups - 1}] (rows of group_cap_bps)"
        if group.dtype.kind not in "iu":
            raise ConfigError(f"network.group has dtype {group.dtype}: {ids}")
        outside = (group < 0) | (group >= groups)
        if outside.any():
            index = int(np.argmax(outside))
            raise ConfigError(f"network.group[{index}]={group[index].item()!r} is not allowed: {ids}")
        header = self.header_bits
        if not (isinstance(header, numbers.Integral) and not isinstance(header, bool)
                and 0 <= header <= MAX_HEADER_BITS):
            raise ConfigError(f"network.header_bits={header!r} is not allowed: "
                              f"expected an integer in [0, {MAX_HEADER_BITS}]")
        if self.transport not in TRANSPORTS:
            raise ConfigError(f"network.transport={self.transport!r} is not allowed: "
                              f"expected one of {', '.join(TRANSPORTS)}")
        for field_name, values in (("up_bps", up), ("down_bps", down), ("latency_s", lat),
                                   ("group", group.astype(np.int32)), ("group_cap_bps", caps),
                                   ("group_latency_s", extra)):
            values = values.copy()  # not the caller's array, which could still change
            values.flags.writeable = False
            object.__setattr__(self, field_name, values)  # frozen: set once, here
        object.__setattr__(self, "header_bits", int(header))
        rate = self.path_rate_bps()
        if not np.all(np.isfinite(rate[~np.eye(n, dtype=bool)])):
            raise ConfigError("every pair of nodes needs a finite path bandwidth: give per-node bandwidths "
                              "or group caps that are finite")

    @property
    def nodes(self) -> int:
        return len(self.up_bps)

    def stragglers(self) -> np.ndarray:
        """Ids of the communication stragglers: nodes whose own link (the slower of its upload and download)
        is slower than the fastest node's. Empty on a uniform network, or one capped only between sites."""
        link = np.minimum(np.asarray(self.up_bps, np.float64), np.asarray(self.down_bps, np.float64))
        return np.flatnonzero(link < link.max())

    def path_rate_bps(self) -> np.ndarray:
        """``[n, n]`` bandwidth of the path s -> r when it carries a single message."""
        cap = np.asarray(self.group_cap_bps, np.float64)[np.ix_(self.group, self.group)]
        return np.minimum(np.minimum(np.asarray(self.up_bps, np.float64)[:, None],
                                     np.asarray(self.down_bps, np.float64)[None, :]), cap)

    def path_latency_s(self) -> np.ndarray:
        """``[n, n]`` one-way latency of the path s -> r."""
        lat = np.asarray(self.latency_s, np.float64)
        extra = np.asarray(self.group_latency_s, np.float64)[np.ix_(self.group, self.group)]
        return lat[:, None] + lat[None, :] + extra

    def with_transport(self, transport: str) -> "Network":
        return dataclasses.replace(self, transport=transport)


def _array(name: str, values: object, ndim: int, dtype: type | None) -> np.ndarray:
    """``values`` as a numpy array of ``ndim`` dimensions (``dtype`` None: as numpy infers it)."""
    try:
        array = np.asarray(values, dtype=dtype)
    except (TypeError, ValueError) as e:  # ragged lists, strings, ...
        raise ConfigError(f"network.{name}={values!r} is not allowed: expected a {ndim}-D array of numbers") from e
    if array.ndim != ndim:
        shown = np.array2string(array, threshold=6, edgeitems=2).replace("\n", "")  # one line, summarised
        raise ConfigError(f"network.{name}={shown} (shape {array.shape}) is not allowed: expected a {ndim}-D array")
    return array


def _checked(name: str, values: object, ndim: int, low: float, high: float, allowed: str, *,
             allow_inf: bool = False) -> np.ndarray:
    """``values`` as a float64 array of ``ndim`` dimensions, every entry in ``[low, high]`` (or ``inf``)."""
    array = _array(name, values, ndim, np.float64)
    ok = ((array >= low) & (array <= high)) | (allow_inf & (array == np.inf))  # NaN fails both
    if not ok.all():
        index = ", ".join(str(i) for i in np.argwhere(~ok)[0])
        raise ConfigError(f"network.{name}[{index}]={float(array[~ok][0])!r} is not allowed: {allowed}")
    return array


def uniform(n: int, mbps: float = 60.0, latency_ms: float = 1.0, *, transport: str = "fifo",
            header_bytes: int = 0) -> Network:
    """Every node at ``mbps`` up and down, ``latency_ms`` per link (a star through one switch)."""
    return stragglers(n, count=0, slowdown=1.0, fast_mbps=mbps, latency_ms=latency_ms,
                      transport=transport, header_bytes=header_bytes)


def stragglers(n: int, count: int = 7, slowdown: float = 5.0, fast_mbps: float = 60.0,
               latency_ms: float = 1.0, *, transport: str = "fifo", header_bytes: int = 0) -> Network:
    """Communication stragglers: nodes ``0 .. count-1`` at ``fast_mbps / slowdown`` both ways.

    The reference's ``60n7cs5`` Kollaps topology is ``stragglers(60, 7, 5)``: 53 nodes at 60 Mbit/s and 7
    at about 12 Mbit/s (10-13 there), every node on its own 1 ms link to one switch, so a path has 2 ms
    one-way latency and a capacity of min(up of sender, down of receiver).
    """
    if not 0 <= count <= n:
        raise ConfigError(f"stragglers count={count} is not allowed: expected 0 <= count <= n={n}")
    if not slowdown > 0:
        raise ConfigError(f"slowdown={slowdown!r} is not allowed: expected > 0")
    bps = np.full(n, fast_mbps * MBPS)
    bps[:count] /= slowdown
    name = f"{count} stragglers x{slowdown:g} at {fast_mbps:g} Mbps" if count else f"uniform {fast_mbps:g} Mbps"
    return Network(up_bps=bps, down_bps=bps.copy(), latency_s=np.full(n, latency_ms / 1e3),
                   group=np.zeros(n, np.int32), group_cap_bps=np.full((1, 1), np.inf),
                   group_latency_s=np.zeros((1, 1)), transport=transport, header_bits=8 * header_bytes,
                   name=name)


def diablo_matrix(path: str | None = None) -> np.ndarray:
    """The 10 x 10 inter-site bandwidth matrix (Mbit/s) of the Diablo topology, diagonal 0."""
    if path is None:
        text = importlib.resources.files("divjax.resources").joinpath("diablo_sites.csv").read_text()
    else:
        with open(path) as f:
            text = f.read()
    index = {site: i for i, site in enumerate(DIABLO_SITES)}
    mbps = np.zeros((10, 10))
    for row in csv.DictReader(text.splitlines()):
        a, b = index[row["site_a"]], index[row["site_b"]]
        mbps[a, b] = mbps[b, a] = float(row["mbps"])
    missing = [(DIABLO_SITES[a], DIABLO_SITES[b]) for a in range(10) for b in range(a + 1, 10) if mbps[a, b] <= 0]
    if missing:
        raise ConfigError(f"diablo bandwidth matrix lacks site pairs {missing}")
    return mbps


def diablo(n: int = 60, latency_ms: float = 1.0, *, transport: str = "fifo", header_bytes: int = 0,
           path: str | None = None) -> Network:
    """The reference's real-world topology: 10 sites x ``n/10`` nodes (node i at site ``i // (n/10)``).

    Kollaps gives every pair of replicas of two sites its own link at the site pair's bandwidth and
    ``latency_ms``; there is no per-node cap. Same-site pairs have no link and are relayed through a node of
    another site (two hops). divjax relays them through the best other site (capacity
    ``max_z bw[a, z]``, the bottleneck of the two equal legs) and adds one hop of latency.
    """
    if n % 10:
        raise ConfigError(f"nodes={n} is not allowed for the diablo preset: expected a multiple of 10")
    mbps = diablo_matrix(path)
    cap = mbps.copy()
    np.fill_diagonal(cap, mbps.max(axis=1))
    hop = latency_ms / 1e3
    group_latency = np.where(np.eye(10, dtype=bool), hop, 0.0)
    return Network(up_bps=np.full(n, np.inf), down_bps=np.full(n, np.inf),
                   latency_s=np.full(n, hop / 2),  # a direct path is one link: half on each end
                   group=np.repeat(np.arange(10, dtype=np.int32), n // 10),
                   group_cap_bps=cap * MBPS, group_latency_s=group_latency, transport=transport,
                   header_bits=8 * header_bytes, name="diablo 10 sites")


def from_config(cfg: NetworkConfig, n: int) -> Network:
    """Build the preset a :class:`~divjax.config.NetworkConfig` names."""
    common = dict(transport=cfg.transport, header_bytes=cfg.header_bytes)
    if cfg.preset == "diablo":
        return diablo(n, cfg.latency_ms, **common)
    count = cfg.stragglers if cfg.preset == "stragglers" else 0
    return stragglers(n, count, cfg.slowdown, cfg.fast_mbps, cfg.latency_ms, **common)
