"""MovieLens ratings from a folder the user names, re-indexed to 0-based users and items.

Variants:

* ``ml-latest-small`` (the reference's workload; 100,836 ratings, 610 users, 9,724 rated movies): the
  official ``ml-latest-small.zip``, an extracted ``ml-latest-small/`` folder, or ``data_dir`` being that
  folder (``ratings.csv`` with header ``userId,movieId,rating,timestamp``).
* ``ml-100k`` (100,000 ratings, 943 users, 1,682 movies): ``u.data`` (tab-separated user, item, rating,
  timestamp) in ``data_dir/ml-100k/`` or in ``data_dir``.

Users and items are numbered 0, 1, ... in the order of their sorted original ids, as the reference does
(it numbers items 1..9724 by sorted movieId and subtracts 1 in the model). Timestamps are dropped. Rows
keep the file's order, which the seeded train/test split (``partition.movielens_split``) depends on.
"""

import io
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from divjax.data.errors import DataError
from divjax.data.files import existing_dir, verify_file

LATEST_SMALL = "ml-latest-small"
ML_100K = "ml-100k"
VARIANTS = (LATEST_SMALL, ML_100K)

LATEST_SMALL_ZIP_SHA256 = "696d65a3dfceac7c45750ad32df2c259311949efec81f0f144fdfb91ebc9e436"
LATEST_SMALL_CSV_SHA256 = "aa289ca83157595d0df6aea1be6a4ded676ddc4385472e8313a8ed9805352646"
U_DATA_SHA256 = "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490"
CSV_HEADER = "userId,movieId,rating,timestamp"


@dataclass(frozen=True)
class Ratings:
    """One rating per row: ``user`` and ``item`` int32 0-based indices, ``rating`` float32, all [N].

    ``n_users`` and ``n_items`` size the embedding tables; ``source`` says which file the rows came from.
    """

    user: np.ndarray
    item: np.ndarray
    rating: np.ndarray
    n_users: int
    n_items: int
    source: str

    def __post_init__(self) -> None:
        n = len(self.rating)
        for name, array, dtype, bound in (("user", self.user, np.int32, self.n_users),
                                          ("item", self.item, np.int32, self.n_items),
                                          ("rating", self.rating, np.float32, None)):
            if array.dtype != dtype or array.shape != (n,):
                raise DataError(
                    f"{self.source}: {name} is {array.dtype} {array.shape}, expected {np.dtype(dtype)} [{n}]"
                )
            if bound is not None and n and not 0 <= array.min() <= array.max() < bound:
                raise DataError(f"{self.source}: {name} indices must lie in 0..{bound - 1}")


def load_movielens(data_dir: str | os.PathLike, variant: str = LATEST_SMALL, *, verify: bool = True) -> Ratings:
    """Load ``variant`` ("ml-latest-small" or "ml-100k") from ``data_dir``, checking published sha256s.

    ``verify=False`` skips the checksum comparison (for files you made yourself), not the format checks.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r}: expected one of {VARIANTS}")
    root = existing_dir(data_dir)
    if variant == LATEST_SMALL:
        table, source = _read_latest_small(root, verify)
    else:
        table, source = _read_100k(root, verify)
    return ratings_from_ids(table[:, 0], table[:, 1], table[:, 2], source)


def ratings_from_ids(user_ids: np.ndarray, item_ids: np.ndarray, rating: np.ndarray, source: str) -> Ratings:
    """Number users and items 0, 1, ... by sorted original id (``np.unique`` order) and build Ratings."""
    users, user = np.unique(user_ids, return_inverse=True)
    items, item = np.unique(item_ids, return_inverse=True)
    return Ratings(user.astype(np.int32), item.astype(np.int32), np.asarray(rating, np.float32),
                   len(users), len(items), source)


def _read_latest_small(root: Path, verify: bool) -> tuple[np.ndarray, str]:
    """ratings.csv from the zip if present, else from the extracted folder."""
    archive = root / f"{LATEST_SMALL}.zip"
    if archive.is_file():
        if verify:
            verify_file(archive, "sha256", LATEST_SMALL_ZIP_SHA256)
        return _read_csv_in_zip(archive, f"{LATEST_SMALL}/ratings.csv"), str(archive)
    for csv in (root / LATEST_SMALL / "ratings.csv", root / "ratings.csv"):
        if csv.is_file():
            if verify:
                verify_file(csv, "sha256", LATEST_SMALL_CSV_SHA256)
            with open(csv, encoding="utf-8") as f:
                return _parse_csv(str(csv), f), str(csv)
    raise DataError(
        f"{root}: no {LATEST_SMALL} found; expected {LATEST_SMALL}.zip, {LATEST_SMALL}/ratings.csv or ratings.csv"
    )


def _read_csv_in_zip(archive: Path, member: str) -> np.ndarray:
    """Parse ``member`` of the zip without extracting it."""
    try:
        with zipfile.ZipFile(archive) as z, z.open(member) as f:
            return _parse_csv(f"{archive}:{member}", io.TextIOWrapper(f, encoding="utf-8"))
    except KeyError:
        raise DataError(f"{archive}: has no member {member}; expected the official {LATEST_SMALL}.zip") from None
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:
        raise DataError(f"{archive}: cannot be read as a zip archive ({e}); it is corrupted or truncated") from e


def _parse_csv(where: str, f: IO[str]) -> np.ndarray:
    """``userId,movieId,rating,timestamp`` rows after that exact header, as a float64 [N, 3] table."""
    header = f.readline().strip()
    if header != CSV_HEADER:
        raise DataError(f"{where}: header is {header!r}, expected {CSV_HEADER!r}")
    return _parse_rows(where, f, ",")


def _read_100k(root: Path, verify: bool) -> tuple[np.ndarray, str]:
    """u.data from ``root/ml-100k/`` or ``root``."""
    for path in (root / ML_100K / "u.data", root / "u.data"):
        if path.is_file():
            if verify:
                verify_file(path, "sha256", U_DATA_SHA256)
            with open(path, encoding="utf-8") as f:
                return _parse_rows(str(path), f, "\t"), str(path)
    raise DataError(f"{root}: no {ML_100K} found; expected {ML_100K}/u.data or u.data")


def _parse_rows(where: str, f: IO[str], delimiter: str) -> np.ndarray:
    """The first three columns (user id, item id, rating) of every row; ids must be integers."""
    try:
        table = np.loadtxt(f, delimiter=delimiter, usecols=(0, 1, 2), dtype=np.float64, ndmin=2)
    except (ValueError, UnicodeDecodeError, zlib.error, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{where}: malformed rows ({e}); expected user, item, rating, timestamp columns") from e
    if len(table) == 0 or np.any(table[:, :2] != np.round(table[:, :2])):
        raise DataError(f"{where}: expected at least one row, with integer user and item ids")
    return table
