"""Splitting a data set among nodes exactly as decentralizepy (the reference's data layer) does.

Every function is deterministic given its seed and returns one int64 index array per node, into the
original data set. The random streams are the reference's own (Python ``random.Random`` for IID and
KShard, numpy ``default_rng`` for Dirichlet, numpy ``RandomState`` as pandas uses it for MovieLens), so
the same seed gives the same partition as the reference.

* ``kshard``: the reference's CIFAR-10 non-IID split (``partition_niid = kshard``, 5 shards, seed 1234).
* ``dirichlet``: Dirichlet(alpha) label skew, with the reference's rebalancing and retry rule.
* ``iid``: a seeded shuffle cut into equal chunks.
* ``movielens_split``: contiguous blocks of users per node; each user's ratings split 70/30 as pandas'
  ``sample(frac=0.7, random_state=seed)`` does in the reference.
"""

from random import Random

import numpy as np

from divjax.data.movielens import Ratings

MAX_DIRICHLET_DRAWS = 1000


def equal_fractions(n_samples: int, nodes: int) -> list[float]:
    """The reference's default size fractions: ``(n // nodes) / n`` each, the last one taking the remainder.

    Kept as Python float arithmetic, because ``int(fraction * n)`` then decides each node's sample count
    (and can be one below the exact remainder for the last node, as in the reference).
    """
    frac = (n_samples // nodes) / n_samples
    sizes = [frac] * nodes
    sizes[-1] += 1.0 - frac * nodes
    return sizes


def iid(n_samples: int, nodes: int, seed: int = 1234) -> list[np.ndarray]:
    """decentralizepy's ``DataPartitioner``: shuffle ``range(n)`` with ``Random(seed)``, cut consecutive chunks.

    Node i gets ``int(equal_fractions[i] * n)`` samples; with 50,000 samples and 60 nodes that is 833 each
    and 852 for the last: the float sizes rule leaves one sample unassigned, exactly as in the reference.
    """
    _check_nodes(nodes, n_samples, "n_samples")
    indexes = list(range(n_samples))
    Random(seed).shuffle(indexes)
    parts, start = [], 0
    for frac in equal_fractions(n_samples, nodes):
        stop = start + int(frac * n_samples)
        parts.append(np.asarray(indexes[start:stop], np.int64))
        start = stop
    return parts


def kshard(labels: np.ndarray, nodes: int, shards: int = 5, seed: int = 1234) -> list[np.ndarray]:
    """decentralizepy's CIFAR-10 non-IID split: sort by class, then ``KShardDataPartitioner``.

    The samples are ordered by label (stable, so original order within a class). Each node in turn takes
    ``shards`` runs of ``int(frac * n) // shards`` consecutive samples of what is left, each starting at
    ``randint(0, len(left) - 1)`` and wrapping around the end. Since runs are contiguous in class order,
    a node holds few classes. For the real CIFAR-10 labels, 60 nodes and seed 1234, nodes hold 830
    samples (the last 850) of 2 to 9 classes (4.33 on average).
    """
    labels = _labels(labels)
    n = len(labels)
    _check_nodes(nodes, n, "len(labels)")
    if shards < 1 or shards > n // nodes:
        raise ValueError(f"shards={shards}: expected 1..{n // nodes} (at least one sample per shard)")
    by_class = np.argsort(labels, kind="stable")
    return [by_class[np.asarray(part, np.int64)] for part in _kshard_positions(n, nodes, shards, seed)]


def _kshard_positions(n: int, nodes: int, shards: int, seed: int) -> list[list[int]]:
    """``KShardDataPartitioner`` on positions 0..n-1, replayed with Python lists and ``random.Random``."""
    rng = Random(seed)
    left = list(range(n))
    parts = []
    for frac in equal_fractions(n, nodes):
        part: list[int] = []
        shard_len = int(frac * n) // shards
        for _ in range(shards):
            start = rng.randint(0, len(left) - 1)
            overflow = start + shard_len - len(left)
            if overflow > 0:  # the run wraps around the end of what is left
                part += left[start:] + left[:overflow]
                left = left[overflow:start]
            else:
                part += left[start : start + shard_len]
                left = left[:start] + left[start + shard_len :]
        parts.append(part)
    return parts


def dirichlet(
    labels: np.ndarray, nodes: int, alpha: float, seed: int = 1234, num_classes: int | None = None
) -> list[np.ndarray]:
    """decentralizepy's ``DirichletDataPartitioner``: per class, Dirichlet(alpha) shares of its samples.

    With ``rng = default_rng(seed)``, for each class in turn its indices are shuffled and cut by
    proportions drawn from Dirichlet(alpha, ..., alpha), after zeroing the proportion of every node that
    already holds ``n / nodes`` samples or more (the reference's balancing). The whole draw is repeated
    until every node holds at least ``num_classes`` samples; then each node's indices are shuffled. Every
    sample is assigned to exactly one node. ``num_classes`` defaults to ``max(labels) + 1``.
    Lower alpha means more skew.
    """
    labels = _labels(labels)
    n = len(labels)
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    _check_nodes(nodes, n, "len(labels)")
    if not alpha > 0:
        raise ValueError(f"alpha={alpha}: expected a positive concentration")
    if labels.max() >= num_classes:
        raise ValueError(f"num_classes={num_classes}: labels go up to {labels.max()}")
    if nodes * num_classes > n:
        raise ValueError(f"nodes={nodes}: every node needs num_classes={num_classes} samples, and there are {n}")
    rng = np.random.default_rng(seed)
    for _ in range(MAX_DIRICHLET_DRAWS):
        parts = _dirichlet_draw(labels, nodes, alpha, num_classes, rng)
        if min(len(p) for p in parts) >= num_classes:
            break
    else:
        raise ValueError(
            f"alpha={alpha}: after {MAX_DIRICHLET_DRAWS} draws some node still held fewer than "
            f"{num_classes} samples; use a larger alpha or fewer nodes"
        )
    for part in parts:
        rng.shuffle(part)
    return parts


def _dirichlet_draw(
    labels: np.ndarray, nodes: int, alpha: float, num_classes: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """One pass over the classes of the reference's Dirichlet partitioner."""
    parts = [np.empty(0, np.int64) for _ in range(nodes)]
    capacity = len(labels) / nodes
    for k in range(num_classes):
        members = np.flatnonzero(labels == k)
        rng.shuffle(members)
        shares = rng.dirichlet(np.repeat(alpha, nodes))
        shares = shares * (np.array([len(p) for p in parts]) < capacity)
        shares = shares / shares.sum()
        cuts = (np.cumsum(shares) * len(members)).astype(int)[:-1]
        parts = [np.concatenate([p, new]) for p, new in zip(parts, np.split(members, cuts))]
    return parts


def movielens_split(
    ratings: Ratings, nodes: int, seed: int = 1234, train_fraction: float = 0.7
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The reference's MovieLens layout: (train indices per node, test indices per node) into ``ratings``.

    Users are dealt to nodes in contiguous blocks by user index: with ``n_users = q * nodes + r``, nodes
    0..r-1 get q + 1 users and the others q (610 users on 60 nodes: 11 for nodes 0-9, 10 for the rest).
    Each user's ratings (in file order) are split as the reference's
    ``df_user.sample(frac=train_fraction, random_state=seed)`` does: a *fresh*
    ``RandomState(seed).choice(n_u, round(train_fraction * n_u), replace=False)`` per user picks the train
    ratings (in that drawn order), the rest are test (in file order). Python's round, as pandas. A fresh
    state per user means users with equal rating counts get the same positions: the reference's quirk.
    """
    _check_nodes(nodes, ratings.n_users, "n_users")
    if not 0 <= train_fraction <= 1:
        raise ValueError(f"train_fraction={train_fraction}: expected a fraction in [0, 1]")
    by_user = np.argsort(ratings.user, kind="stable")
    bounds = np.searchsorted(ratings.user[by_user], np.arange(ratings.n_users + 1))
    train, test = [], []
    for u in range(ratings.n_users):
        rows = by_user[bounds[u] : bounds[u + 1]]
        picked = np.random.RandomState(seed).choice(len(rows), round(train_fraction * len(rows)), replace=False)
        train.append(rows[picked])
        test.append(np.delete(rows, picked))
    blocks = user_blocks(ratings.n_users, nodes)
    return [np.concatenate(train[b.start : b.stop]) for b in blocks], [
        np.concatenate(test[b.start : b.stop]) for b in blocks
    ]


def user_blocks(n_users: int, nodes: int) -> list[range]:
    """The users of each node: contiguous ranges, the first ``n_users % nodes`` nodes holding one more."""
    _check_nodes(nodes, n_users, "n_users")
    q, r = divmod(n_users, nodes)
    starts = [i * q + min(i, r) for i in range(nodes + 1)]
    return [range(starts[i], starts[i + 1]) for i in range(nodes)]


def _labels(labels: np.ndarray) -> np.ndarray:
    """Labels as a non-empty 1-D array of non-negative integers."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0 or not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
        raise ValueError(
            f"labels: expected a non-empty 1-D array of non-negative integers, got {labels.dtype} {labels.shape}"
        )
    return labels


def _check_nodes(nodes: int, n: int, what: str) -> None:
    """At least one node, and no more nodes than items to share."""
    if not 1 <= nodes <= n:
        raise ValueError(f"nodes={nodes}: expected 1..{what} ({n})")
