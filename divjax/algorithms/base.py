"""What an algorithm is: a few pure functions over the stacked state, in the style of optax.

At an iteration boundary the engine snapshots the boundary nodes' models (the pre-aggregation model every
algorithm here sends), asks the algorithm to ``mix`` what those nodes received, asks it for its
``outbox``, flushes the senders' unsent messages if it ``flushes``, and queues the outbox. ``on_land``
lets an algorithm answer messages the moment they land (AD-PSGD's pongs); ``release`` lets a waiting
(synchronous) node go on once what it waits for has landed (D-PSGD). Adding an algorithm means adding one
module that builds an :class:`Algorithm`, and one line in the registry.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from divjax.config import Config
from divjax.queue import KIND_DATA, MessageQueue, Outbox
from divjax.state import SimParams, SimSpec, SimState

OutboxFn = Callable[[SimSpec, SimParams, SimState, jax.Array, jax.Array], Outbox]
MixFn = Callable[[SimSpec, SimParams, SimState, jax.Array, jax.Array, jax.Array], SimState]
# Given the state, returns a hook (queue, since, until) -> (pongs, pongs that did not fit per node).
LandingFn = Callable[[SimSpec, SimParams, SimState], Callable[[MessageQueue, jax.Array, jax.Array],
                                                                tuple[Outbox, jax.Array]]]
ReleaseFn = Callable[[SimSpec, SimParams, SimState, jax.Array], SimState]


class Algorithm(NamedTuple):
    """A decentralized learning algorithm, as the engine sees it.

    Attributes:
      name: registry name.
      out_width: messages a node queues at one boundary, from the config and the algorithm's arrays.
      init: the algorithm's own arrays (``SimParams.algo``), e.g. a gossip graph; ``None`` if none.
      outbox: ``(spec, params, state, at_boundary, now) -> Outbox`` for the boundary nodes.
      mix: ``(spec, params, state, at_boundary, own_fragments, now) -> state``: fold received models in.
      flushes: drop every unsent message of a node at its boundary, before queueing the new ones.
      waits: boundary nodes stop computing until ``release`` lets them go.
      on_land: optional; see ``LandingFn``.
      release: optional; ``(spec, params, state, now) -> state``.
    """

    name: str
    out_width: Callable[[Config, Any], int]
    init: Callable[[Config], Any]
    outbox: OutboxFn
    mix: MixFn
    flushes: bool = False
    waits: bool = False
    on_land: LandingFn | None = None
    release: ReleaseFn | None = None


def no_arrays(config: Config) -> None:
    """``init`` of algorithms that need no arrays of their own."""
    return None


def boundary_outbox(s: SimState, at_boundary: jax.Array, receiver: jax.Array, fragment: jax.Array,
                    now: jax.Array, kind: int = KIND_DATA) -> Outbox:
    """Messages of the boundary nodes' newest snapshot to ``receiver`` (``[n, M]``), queued at ``now``."""
    shape = receiver.shape
    return Outbox(receiver=jnp.where(at_boundary[:, None], receiver, -1).astype(jnp.int32),
                  fragment=jnp.broadcast_to(fragment, shape).astype(jnp.int32),
                  kind=jnp.full(shape, kind, jnp.int32),
                  start=jnp.broadcast_to(now, shape).astype(jnp.float32),
                  slot=jnp.broadcast_to(s.latest_slot[:, None], shape),
                  sender_iter=jnp.broadcast_to(s.iteration[:, None], shape))
