"""DivShare's fixed, shared, per-tensor-stratified model fragments.

The reference (``ChunkSharingRandom``) walks the model's tensors in order, draws one random permutation of
each tensor's positions from a seed every node shares, and deals them out: fragments ``0 .. m-2`` take
``size // m`` positions each and fragment ``m-1`` the rest. Fragment f is the union of its share of every
tensor, so it holds about ``1/m`` of every layer. The partition never changes during a run.

On device, the flat model ``[.., d]`` is re-laid out as ``[.., m, L]``: row f holds fragment f's values
(padded to the largest fragment, L, with zeros), so a message is one row and mixing is a scatter of rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np


@dataclass(frozen=True, eq=False)
class FragmentLayout:
    """Where every flat coordinate lives in the ``[m, L]`` fragment layout.

    Attributes:
      sizes: ``[m]`` number of real coordinates in each fragment.
      index: ``[m, L]`` flat coordinate held at each fragment position; padding points at ``d``.
      position: ``[d]`` position ``f * L + l`` of each flat coordinate in the flattened ``[m * L]`` layout.
      fragment_of: ``[d]`` the fragment of each flat coordinate.
    """

    sizes: np.ndarray
    index: np.ndarray
    position: np.ndarray
    fragment_of: np.ndarray

    @property
    def num_fragments(self) -> int:
        return len(self.sizes)

    @property
    def width(self) -> int:
        return self.index.shape[1]

    @property
    def dim(self) -> int:
        return len(self.position)

    def index_sets(self) -> list[np.ndarray]:
        """The flat coordinates of each fragment (the reference's ``I_f``)."""
        return [self.index[f, : self.sizes[f]] for f in range(self.num_fragments)]


def build_layout(tensor_sizes: list[int], num_fragments: int, seed: int) -> FragmentLayout:
    """Deal every tensor's positions into ``num_fragments`` fragments, as the reference does."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xF7A6]))
    m = num_fragments
    members: list[list[np.ndarray]] = [[] for _ in range(m)]
    offset = 0
    for size in tensor_sizes:
        perm = offset + rng.permutation(size)
        share = size // m
        for f in range(m):
            stop = (f + 1) * share if f < m - 1 else size
            members[f].append(perm[f * share: stop])
        offset += size
    d = offset
    sets = [np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64) for parts in members]
    sizes = np.array([len(s) for s in sets], dtype=np.int32)
    width = max(1, int(sizes.max()))
    index = np.full((m, width), d, dtype=np.int32)
    fragment_of = np.empty(d, dtype=np.int32)
    position = np.empty(d, dtype=np.int32)
    for f, s in enumerate(sets):
        index[f, : len(s)] = s
        fragment_of[s] = f
        position[s] = f * width + np.arange(len(s))
    return FragmentLayout(sizes=sizes, index=index, position=position, fragment_of=fragment_of)


def to_fragments(flat: jax.Array, index: jax.Array) -> jax.Array:
    """``[.., d]`` -> ``[.., m, L]``; padding positions are 0."""
    padded = jnp.concatenate([flat, jnp.zeros(flat.shape[:-1] + (1,), flat.dtype)], axis=-1)
    return padded[..., index]


def to_flat(frags: jax.Array, position: jax.Array) -> jax.Array:
    """``[.., m, L]`` -> ``[.., d]`` (inverse of :func:`to_fragments` on the real coordinates)."""
    return frags.reshape(frags.shape[:-2] + (-1,))[..., position]
