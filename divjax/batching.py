"""Predicates that stay unbatched when a simulation is ``vmap``ped over a sweep (see :mod:`divjax.sweep`).

Under ``vmap``, a ``lax.cond`` whose predicate differs per sweep member becomes a select that runs both
branches for every member. The engine skips most of a tick behind conds whose false branch is a shortcut
(nobody steps, nobody is at a boundary, no ping landed), so a naive sweep would run all of them on every
tick. Reducing such a predicate over the members keeps the cond a cond:

* ``lax.cond(any_member(pred), general, shortcut)``: the shortcut is taken only when every member may take
  it. ``general`` must give, for a member whose ``pred`` is false, what the shortcut gives (the engine's
  branch bodies are masked per node, so a member with nothing to do is left unchanged).
* ``lax.cond(all_members(pred), fast, general)``: the fast form runs only when every member may use it.

Outside ``vmap`` both are the identity, so an unbatched simulation compiles and runs exactly as before.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax.custom_batching import custom_vmap


def _over_members(reduce: Callable[..., jax.Array], doc: str) -> custom_vmap:
    @custom_vmap
    def predicate(pred: jax.Array) -> jax.Array:
        return pred

    @predicate.def_vmap
    def rule(axis_size: int, in_batched: list[bool], pred: jax.Array) -> tuple[jax.Array, bool]:
        return (reduce(pred, axis=0) if in_batched[0] else pred), False

    predicate.__doc__ = doc
    return predicate


any_member = _over_members(jnp.any, "``pred``; under ``vmap``, whether it holds for any member (unbatched).")
all_members = _over_members(jnp.all, "``pred``; under ``vmap``, whether it holds for every member (unbatched).")
