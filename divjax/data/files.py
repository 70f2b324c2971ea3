"""Checks on the files a loader is pointed at: the folder exists, and a file's digest is the published one."""

import hashlib
import os
from pathlib import Path

from divjax.data.errors import DataError

_CHUNK = 1 << 20


def existing_dir(data_dir: str | os.PathLike) -> Path:
    """``data_dir`` as a Path, or DataError if it is not an existing folder."""
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        what = "is not a folder" if path.exists() else "does not exist"
        raise DataError(f"{path}: {what}; expected the folder that holds the data set")
    return path


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of the whole file at ``path`` (``algorithm`` is a hashlib name: "sha256", "md5")."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify_file(path: Path, algorithm: str, expected: str) -> str:
    """Check the file's digest against ``expected`` and return it; DataError naming both on mismatch."""
    actual = file_digest(path, algorithm)
    if actual != expected:
        raise DataError(
            f"{path}: {algorithm} is {actual}, expected {expected}; the file is corrupted, truncated or not the "
            f"published one (pass verify=False to load a file you made yourself)"
        )
    return actual
