"""CIFAR-10 and MovieLens from a TensorFlow Datasets ``data_dir``, through ``tfds.data_source``.

``tfds.data_source`` is TFDS's random-access reader of ArrayRecord files; it decodes with numpy and
needs neither TensorFlow nor a network. The data set must already be prepared in ``data_dir`` in the
``array_record`` file format, e.g. ``tfds build cifar10 --file_format=array_record --data_dir DIR``
(preparing does need TensorFlow and the download; reading here does not). Data sets prepared in TFDS's
default TFRecord format cannot be read this way.

The results equal the other loaders' where the data allow it: CIFAR-10 is put back in original order
using TFDS's ``id`` feature (``train_00042`` is original training image 42; TFDS stores the images as
PNG, so pixels are exact). MovieLens rows are sorted by (user id, movie id), which is the order of
ml-latest-small's ratings.csv, so ``movielens_split`` gives the same split as from the csv; ml-100k's
u.data is not sorted, so its split differs from the one made from u.data.

Needs the optional extra: ``pip install 'divjax[tfds]'``.
"""

import importlib
import os
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from divjax.data.cifar10 import IMAGE_SHAPE, ImageDataset
from divjax.data.errors import DataError
from divjax.data.files import existing_dir
from divjax.data.movielens import LATEST_SMALL, ML_100K, Ratings, ratings_from_ids

# TFDS builder configs holding the same ratings as the GroupLens files.
MOVIELENS_CONFIGS = {LATEST_SMALL: "movielens/latest-small-ratings", ML_100K: "movielens/100k-ratings"}


def load_cifar10_tfds(data_dir: str | os.PathLike) -> ImageDataset:
    """CIFAR-10 (TFDS ``cifar10``) from a TFDS ``data_dir``, in original order, as an ImageDataset."""
    tfds = _import_tfds()
    root = existing_dir(data_dir)
    x_train, y_train = _cifar_split(root, "train", _data_source(tfds, "cifar10", "train", root))
    x_test, y_test = _cifar_split(root, "test", _data_source(tfds, "cifar10", "test", root))
    return ImageDataset(x_train, y_train, x_test, y_test, f"tfds cifar10 at {root}")


def load_movielens_tfds(data_dir: str | os.PathLike, variant: str = LATEST_SMALL) -> Ratings:
    """MovieLens ``variant`` ("ml-latest-small" or "ml-100k") from a TFDS ``data_dir``, sorted by (user, movie)."""
    if variant not in MOVIELENS_CONFIGS:
        raise ValueError(f"variant={variant!r}: expected one of {tuple(MOVIELENS_CONFIGS)}")
    tfds = _import_tfds()
    # Without TensorFlow, TFDS's lazy registry does not find the movielens builder until its module is imported.
    importlib.import_module("tensorflow_datasets.structured.movielens")
    root = existing_dir(data_dir)
    name = MOVIELENS_CONFIGS[variant]
    source = _data_source(tfds, name, "train", root)
    user, movie, rating = (np.empty(len(source), dtype) for dtype in (np.int64, np.int64, np.float32))
    for i in range(len(source)):
        example = source[i]
        user[i], movie[i] = _integer_id(root, name, example["user_id"]), _integer_id(root, name, example["movie_id"])
        rating[i] = example["user_rating"]
    order = np.lexsort((movie, user))
    return ratings_from_ids(user[order], movie[order], rating[order], f"tfds {name} at {root}")


def _import_tfds() -> ModuleType:
    """tensorflow_datasets, imported only when a TFDS loader is called."""
    try:
        return importlib.import_module("tensorflow_datasets")
    except ImportError as e:
        raise ImportError(
            f"the TFDS loaders need tensorflow-datasets ({e}); install it with: pip install 'divjax[tfds]'"
        ) from e


def _data_source(tfds: ModuleType, name: str, split: str, root: Path) -> Sequence[Any]:
    """``tfds.data_source`` without downloading; DataError naming ``root`` if the data are not there."""
    try:
        return tfds.data_source(name, split=split, data_dir=str(root), download=False)
    except (ValueError, NotImplementedError, OSError) as e:
        raise DataError(
            f"{root}: no TFDS {name!r} split {split!r} readable in the array_record format ({e}); prepare it "
            f"with `tfds build {name} --file_format=array_record --data_dir {root}`"
        ) from e


def _cifar_split(root: Path, split: str, source: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """All examples of one split, placed at the original index their ``id`` names (``train_00042`` -> 42)."""
    n = len(source)
    x, y, index = np.empty((n, *IMAGE_SHAPE), np.uint8), np.empty(n, np.int32), np.empty(n, np.int64)
    for i in range(n):
        example = source[i]
        x[i], y[i], index[i] = example["image"], example["label"], _original_index(root, split, example["id"])
    if not np.array_equal(np.sort(index), np.arange(n)):
        raise DataError(f"{root}: the ids of tfds cifar10 {split!r} are not {split}_00000..{split}_{n - 1:05d}")
    ordered_x, ordered_y = np.empty_like(x), np.empty_like(y)
    ordered_x[index], ordered_y[index] = x, y
    return ordered_x, ordered_y


def _original_index(root: Path, split: str, example_id: str | bytes) -> int:
    """42 from TFDS's cifar10 id ``train_00042``."""
    text = example_id.decode() if isinstance(example_id, bytes) else str(example_id)
    prefix, _, number = text.rpartition("_")
    if prefix != split or not number.isdigit():
        raise DataError(f"{root}: tfds cifar10 {split!r} example id {text!r} is not of the form {split}_NNNNN")
    return int(number)


def _integer_id(root: Path, name: str, value: str | bytes) -> int:
    """A MovieLens user or movie id (TFDS keeps them as text) as an integer."""
    text = value.decode() if isinstance(value, bytes) else str(value)
    if not text.isdigit():
        raise DataError(f"{root}: tfds {name} has the id {text!r}; expected the integer ids of the GroupLens files")
    return int(text)
