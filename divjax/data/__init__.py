"""Real data for the reference's two workloads, loaded from folders the user names and split among nodes.

* ``load_cifar10(dir)``: CIFAR-10 as uint8 HWC arrays in original order, from the offline JPEG npz (plus
  its lossless subset), the official ``cifar-10-python.tar.gz``, or its extracted folder; ``normalize``
  maps pixels to [-1, 1] as the reference's transform does.
* ``load_movielens(dir, variant)``: ml-latest-small (the reference's) or ml-100k ratings, 0-based ids.
* ``kshard``, ``dirichlet``, ``iid``, ``movielens_split``: decentralizepy's partitions, replayed exactly
  from the same seeds.
* ``load_cifar10_tfds``, ``load_movielens_tfds``: the same from a TFDS data_dir (``pip install 'divjax[tfds]'``).

Every problem with the files raises ``DataError`` naming the path, what is wrong and what was expected.
No path is built in: every loader reads the folder it is given.
"""

from divjax.data.cifar10 import ImageDataset, load_cifar10, normalize
from divjax.data.errors import DataError
from divjax.data.movielens import Ratings, load_movielens
from divjax.data.partition import (
    dirichlet,
    equal_fractions,
    iid,
    kshard,
    movielens_split,
    user_blocks,
)
from divjax.data.tfds_source import load_cifar10_tfds, load_movielens_tfds

__all__ = [
    "DataError", "ImageDataset", "Ratings", "dirichlet", "equal_fractions", "iid", "kshard", "load_cifar10",
    "load_cifar10_tfds", "load_movielens", "load_movielens_tfds", "movielens_split", "normalize", "user_blocks",
]
