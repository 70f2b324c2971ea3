"""DivShare, as the reference implements it (spec/reference-impl.md §3).

At each boundary a node (1) snapshots its post-training, pre-aggregation model, (2) drops every message
it has not finished sending (the flush), (3) queues ``J*m`` messages, fragment f to J distinct random
peers, in shuffled order, and (4) averages in, per coordinate, the newest landed copy of every
(sender, fragment) with weight 1, its own model included: ``x <- (x + sum) / (1 + count)``.

Swift as the reference implements it is this loop with m = 1 and no flush (:mod:`divjax.algorithms.swift`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from divjax.algorithms.base import Algorithm, boundary_outbox, no_arrays
from divjax.mixing import mix_newest
from divjax.queue import Outbox
from divjax.randomness import fragment_messages
from divjax.state import SimParams, SimSpec, SimState


def outbox(spec: SimSpec, p: SimParams, s: SimState, at_boundary: jax.Array, now: jax.Array) -> Outbox:
    nodes = jnp.arange(spec.nodes)
    receiver, fragment = jax.vmap(fragment_messages, (None, 0, 0, None, None, None))(
        p.comm_key, nodes, s.iteration, spec.nodes, spec.fragments, spec.degree)
    return boundary_outbox(s, at_boundary, receiver, fragment, now)


def make(name: str, flushes: bool) -> Algorithm:
    return Algorithm(name=name, out_width=lambda cfg, _: cfg.degree * cfg.fragments, init=no_arrays,
                     outbox=outbox, mix=mix_newest, flushes=flushes)


ALGORITHM = make("divshare", flushes=True)
