"""A self-checking on-disk cache for arrays that are slow to build (decoded images).

Each cache file is an uncompressed ``.npz`` holding the arrays plus a SHA-256 over their names, dtypes,
shapes and bytes. A file that cannot be read, lacks an array, or fails that digest is rebuilt (with a
warning), never trusted. Files are written to a temporary name and moved into place with ``os.replace``,
so a crash or a concurrent reader never sees half a file.
"""

import hashlib
import os
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

_DIGEST_KEY = "__sha256__"


def default_cache_dir(explicit: str | os.PathLike | None = None) -> Path:
    """``explicit`` if given, else ``$DIVJAX_CACHE_DIR``, else ``~/.cache/divjax``."""
    if explicit is not None:
        return Path(explicit)
    env = os.environ.get("DIVJAX_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "divjax"


def arrays_digest(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over every array's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        digest.update(a.data)
    return digest.hexdigest()


def cached_arrays(path: Path, build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The arrays stored at ``path`` if that file is intact, else ``build()``'s, written to ``path``."""
    if path.exists():
        arrays, problem = _read(path)
        if arrays is not None:
            return arrays
        warnings.warn(f"{path}: cache file is unusable ({problem}); rebuilding it", stacklevel=2)
    arrays = build()
    _write(path, arrays)
    return arrays


def _read(path: Path) -> tuple[dict[str, np.ndarray] | None, str]:
    """Load and check a cache file: (arrays, "") when intact, (None, why) otherwise."""
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {name: f[name] for name in f.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        return None, f"cannot be read: {e}"
    stored = arrays.pop(_DIGEST_KEY, None)
    if stored is None:
        return None, f"no {_DIGEST_KEY} entry"
    if str(stored) != arrays_digest(arrays):
        return None, "checksum mismatch"
    return arrays, ""


def _write(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write atomically (temporary file in the same folder, then ``os.replace``); warn if impossible."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    except OSError as e:
        warnings.warn(f"{path}: cannot write the cache ({e}); continuing without it", stacklevel=3)
        return
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays, **{_DIGEST_KEY: np.array(arrays_digest(arrays))})
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        warnings.warn(f"{path}: cannot write the cache ({e}); continuing without it", stacklevel=3)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
