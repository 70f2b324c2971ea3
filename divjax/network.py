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
from dataclasses import dataclass

import numpy as np

from divjax.config import ConfigError, NetworkConfig

MBPS = 1e6

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
        n = len(self.up_bps)
        for field_name in ("down_bps", "latency_s", "group"):
            if len(getattr(self, field_name)) != n:
                raise ConfigError(f"network.{field_name} has {len(getattr(self, field_name))} entries, "
                                  f"expected one per node ({n})")
        for field_name in ("up_bps", "down_bps"):
            values = np.asarray(getattr(self, field_name), dtype=np.float64)
            if np.any(~(values > 0)):
                bad = values[~(values > 0)][0]
                raise ConfigError(f"network.{field_name} contains {bad!r}: bandwidths must be > 0 (inf for no cap)")
        if np.any(~np.isfinite(self.latency_s)) or np.any(np.asarray(self.latency_s) < 0):
            raise ConfigError("network.latency_s must be finite and >= 0")
        caps = np.asarray(self.group_cap_bps, dtype=np.float64)
        if np.any(~(caps > 0)):
            raise ConfigError("network.group_cap_bps must be > 0 (inf for no cap)")
        if self.transport not in ("fifo", "shared"):
            raise ConfigError(f"network.transport={self.transport!r} is not allowed: expected fifo or shared")
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
