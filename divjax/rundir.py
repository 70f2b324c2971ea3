"""A run directory that is always consistent: written as the run goes, atomically, and resumable.

Layout::

    config.json        the algorithms and the configuration (written first; `divjax run --config` reads it)
    status.json        complete or not, which algorithms finished, versions and source commit, backend, config hash,
                       and the checksum of the current checkpoint
    metrics.csv        tidy: one row per algorithm x evaluation, rewritten after every evaluation
    checkpoint-<sha256>.npz  the whole simulation state of the algorithm running (models, optimiser states, queue,
                       clocks) and its metrics so far, after its latest evaluation (streamed to disk
                       array by array: see :meth:`divjax.runner.Progress.write`)
    summary.json, accuracy.png   once every algorithm has finished

Every file is written to a temporary name, flushed to disk, then renamed over the old one, so a run killed
at any moment (SIGINT, SIGTERM, SIGKILL) leaves complete files describing its last evaluation, and a
``status.json`` saying it is incomplete. ``divjax resume DIR`` continues it from its checkpoint; the
simulation is deterministic, so the resumed run is bit-identical to an uninterrupted one on the same backend.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import jax
import numpy as np

from divjax.config import Config, ConfigError

CONFIG, STATUS, METRICS = "config.json", "status.json", "metrics.csv"
RESULTS = ("summary.json", "accuracy.png")  # written once the run is complete
# A checkpoint's file is named after its digest and written before status.json points to it, so a kill between
# the two leaves the previous checkpoint, still named in status.json, intact; stale ones are removed after.
CHECKPOINTS = "checkpoint-*"  # the .npz ones, and the .msgpack ones of earlier versions (not resumable)
CHECKPOINT_SUFFIX = ".npz"
HASH_CHUNK = 1 << 24  # checkpoints are hashed 16 MiB at a time, never read whole
METRIC_COLUMNS_FIRST = ("algorithm", "time")


class RunDirectoryError(RuntimeError):
    """A run directory is missing, would be overwritten, or holds a damaged file."""


def check_one_configuration(configs: Sequence[Config]) -> None:
    """A run directory records one configuration (``configs[0]``'s) and keys its runs by algorithm, so the
    configs must differ in their algorithm alone, each algorithm once: refuse anything else (seeds, say)
    rather than lose it, with a :class:`~divjax.config.ConfigError`. Write each configuration to its own
    directory."""
    if not configs:
        raise ConfigError("algorithms=[] is not allowed: a run directory needs at least one algorithm")
    algorithms = [c.algorithm for c in configs]
    if len(set(algorithms)) < len(algorithms):
        raise ConfigError(f"algorithms={','.join(map(str, algorithms))} is not allowed: name each algorithm once (a "
                          "run directory holds one run per algorithm; compare seeds with `divjax reproduce`)")
    first, base = configs[0], configs[0].to_dict()
    for config in configs[1:]:
        if config.replace(algorithm=first.algorithm) != first:
            changed = sorted(k for k, v in config.to_dict().items() if k != "algorithm" and v != base[k])
            raise ConfigError(f"the {config.algorithm} config differs from the {first.algorithm} one in "
                             f"{', '.join(changed)}; a run directory holds one configuration (write each to its "
                             "own directory)")


def _write_synced(tmp: Path, write: Callable[[BinaryIO], None]) -> None:
    """Let ``write`` fill ``tmp`` and make it durable, so that renaming it over a path is atomic."""
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that the path always holds either the old or the whole new content."""
    tmp = path.with_name(path.name + ".tmp")
    _write_synced(tmp, lambda f: f.write(data))
    os.replace(tmp, path)


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_streamed(directory: Path, prefix: str, suffix: str, write: Callable[[BinaryIO], None]) -> tuple[str, str]:
    """Let ``write`` stream a file into ``directory``, then name it ``<prefix><sha256[:16]><suffix>`` atomically.

    Returns ``(name, sha256)``. Until the rename, the file only exists under a temporary name."""
    tmp = directory / f".{prefix}writing.tmp"
    _write_synced(tmp, write)
    digest = _sha256_of(tmp)
    name = f"{prefix}{digest[:16]}{suffix}"
    os.replace(tmp, directory / name)
    return name, digest


def _json(data: Any) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()


def config_hash(configs: Sequence[Config]) -> str:
    text = json.dumps([c.to_dict() for c in configs], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def source_commit() -> str:
    """The git commit divjax was imported from (``+dirty`` when its ``divjax/`` has uncommitted changes), or
    ``unknown`` outside a divjax checkout (an installed wheel): which code produced a result, beyond its version."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True, timeout=10,
                              cwd=root).stdout.strip()  # pathspecs from the checkout's root
    try:
        if Path(git("rev-parse", "--show-toplevel")).resolve() != root:  # site-packages inside someone's repo
            return "unknown"
        return git("rev-parse", "--short", "HEAD") + ("+dirty" if git("status", "--porcelain", "--", "divjax") else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment() -> dict[str, str]:
    """Versions, source commit, backend and devices of this process (recorded in every run directory)."""
    import flax
    import optax

    from divjax import __version__

    return {"divjax": __version__, "commit": source_commit(), "jax": jax.__version__, "flax": flax.__version__,
            "optax": optax.__version__, "numpy": np.__version__, "python": platform.python_version(),
            "backend": jax.default_backend(), "devices": ", ".join(sorted({d.device_kind for d in jax.devices()}))}


def _finite_or_none(value: Any) -> Any:
    """JSON has no inf or nan: they are written as null."""
    return None if isinstance(value, float) and not np.isfinite(value) else value


def _csv_value(value: Any) -> str:
    return repr(float(value)) if isinstance(value, (float, np.floating)) else str(value)


def _remove_checkpoints(path: Path, keep: str | None) -> None:
    for stale in path.glob(CHECKPOINTS):
        if stale.name != keep:
            stale.unlink(missing_ok=True)


def check_new(path: str | os.PathLike, overwrite: bool = False) -> None:
    """Refuse a ``path`` that cannot become a new run directory: one that is, or lies under, something other
    than a directory, or an existing non-empty directory unless ``overwrite``. Checks only, writing nothing,
    so that it can be called before a run is built."""
    path = Path(path)
    for where in (path, *path.parents):
        if where.exists():  # False below a file: look further up
            if not where.is_dir():
                raise RunDirectoryError(f"{path} is not a directory: choose another --out" if where == path else
                                        f"{path} cannot be a directory: {where} is a file; choose another --out")
            break
    try:
        taken = path.is_dir() and any(path.iterdir())
    except OSError as err:
        raise RunDirectoryError(f"{path} cannot be read: {err.strerror or err}") from None
    if taken and not overwrite:
        raise RunDirectoryError(f"{path} already exists and is not empty: choose another --out, "
                                f"continue it with `divjax resume {path}`, or pass --overwrite")


def _read_json(path: Path) -> Any:
    """The JSON content of a run directory's file; unreadable or invalid JSON is a :class:`RunDirectoryError`."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise RunDirectoryError(f"{path} cannot be read: {err.strerror or err}") from None
    try:
        return json.loads(data.decode("utf-8"))  # as written (json.loads would guess UTF-16 from some bytes)
    except UnicodeDecodeError as err:
        raise RunDirectoryError(f"{path} is damaged: it is not UTF-8 text ({err.reason} at byte {err.start})") from None
    except ValueError as err:
        raise RunDirectoryError(f"{path} is damaged: it is not valid JSON ({err})") from None


def _found(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def configs_from_json(content: Any) -> list[Config]:
    """The configurations that the content of a run directory's ``config.json`` describes, one per algorithm
    (``{"algorithms": [names], "config": {fields}}``); a :class:`~divjax.config.ConfigError` if it is not such."""
    if not (isinstance(content, dict) and isinstance(content.get("algorithms"), list)
            and all(isinstance(a, str) for a in content["algorithms"]) and isinstance(content.get("config"), dict)):
        raise ConfigError('it should hold {"algorithms": [names], "config": {fields}} '
                          f"(found {_found(content)})")
    configs = [Config.from_dict({**content["config"], "algorithm": a}) for a in content["algorithms"]]
    check_one_configuration(configs)
    return configs


def _check_status(path: Path, status: Any, configs: Sequence[Config]) -> None:
    """Check the shape of ``status.json``'s content (``status``) against the run's configs, so that every later
    ``status[...]`` holds what it is used as. Refuses a file damaged or edited by hand with a message naming
    the field, what it should be and what was found; a config.json edited by hand (its hash differs) likewise."""
    where = f"{path}/{STATUS}"
    if not isinstance(status, dict):
        raise RunDirectoryError(f"{where} is damaged: it should hold a JSON object (found {_found(status)})")
    if status.get("config_hash") != config_hash(configs):
        raise RunDirectoryError(f"{path}/{CONFIG} does not match the run that {STATUS} records "
                                "(edited by hand?): start a new run instead")
    algorithms = [c.algorithm for c in configs]

    def require(ok: bool, key: str, allowed: str) -> None:
        if not ok:
            found = f"found {_found(status[key])}" if key in status else "missing"
            raise RunDirectoryError(f"{where} is damaged: {key!r} should be {allowed} ({found})")

    require(isinstance(status.get("complete"), bool), "complete", "true or false")
    finished = status.get("finished")
    require(isinstance(finished, list) and all(isinstance(a, str) and a in algorithms for a in finished)
            and len(set(finished)) == len(finished), "finished",
            f"a list of algorithm names, each once, out of {', '.join(algorithms)}")
    require(not status["complete"] or set(finished) == set(algorithms), "finished",
            f"every algorithm ({', '.join(algorithms)}) since 'complete' is true")
    require(isinstance(status.get("environment"), dict), "environment", "an object of versions")
    record = status.get("checkpoint")
    require(record is None or (isinstance(record, dict) and record.get("algorithm") in algorithms
                               and isinstance(record.get("file"), str) and record["file"].startswith("checkpoint-")
                               and "/" not in record["file"] and isinstance(record.get("sha256"), str)),
            "checkpoint", 'null or {"algorithm": name, "file": "checkpoint-...", "sha256": digest}')
    summaries = status.get("summaries", {})  # written when the first algorithm finishes
    require(isinstance(summaries, dict) and all(isinstance(summaries.get(a), dict) for a in finished),
            "summaries", f"an object holding the summary of every finished algorithm ({', '.join(finished)})")


@dataclass
class RunDirectory:
    """A run directory on disk (see the module docstring)."""

    path: Path
    configs: list[Config]
    status: dict[str, Any]

    # ------------------------------------------------------------------ opening
    @classmethod
    def create(cls, path: str | os.PathLike, configs: Sequence[Config], overwrite: bool = False) -> RunDirectory:
        """Start a new run directory; an existing non-empty one is an error unless ``overwrite``."""
        check_one_configuration(configs)
        path = Path(path)
        check_new(path, overwrite)
        try:
            if path.is_dir():  # empty, or to be overwritten
                for name in (STATUS, CONFIG, METRICS, *RESULTS):  # status.json first: the rest is no run then
                    (path / name).unlink(missing_ok=True)
                _remove_checkpoints(path, keep=None)
            path.mkdir(parents=True, exist_ok=True)
            base = configs[0].to_dict()
            write_atomic(path / CONFIG, _json({"algorithms": [c.algorithm for c in configs], "config": base}))
            write_atomic(path / METRICS, b"")
            run = cls(path=path, configs=list(configs), status={
                "complete": False, "finished": [], "config_hash": config_hash(configs), "environment": environment(),
                "checkpoint": None})
            run._write_status()  # last: a directory with a status.json has every file `open` needs
        except OSError as err:  # permissions, a full disk, a name taken by a directory: not a divjax bug
            raise RunDirectoryError(f"cannot write the run directory {path}: {err.strerror or err}") from None
        return run

    @classmethod
    def open(cls, path: str | os.PathLike) -> RunDirectory:
        """An existing run directory, to resume. Every file it needs is checked here, before anything is
        compiled, so that a damaged or hand-edited one is a clear error rather than a crash where it is used."""
        path = Path(path)
        for name in (CONFIG, STATUS):
            if not (path / name).is_file():
                raise RunDirectoryError(f"{path} is not a divjax run directory: {name} is missing")
        if not (path / METRICS).is_file():
            raise RunDirectoryError(f"{path}/{METRICS} is missing: the run directory is damaged; start the run again")
        try:
            configs = configs_from_json(_read_json(path / CONFIG))
        except ConfigError as err:
            raise RunDirectoryError(f"{path}/{CONFIG} is damaged: {err}") from None
        status = _read_json(path / STATUS)
        _check_status(path, status, configs)
        return cls(path=path, configs=configs, status=status)

    # ------------------------------------------------------------------ progress
    @property
    def complete(self) -> bool:
        return bool(self.status["complete"])

    @property
    def finished(self) -> list[str]:
        return list(self.status["finished"])

    def _write_status(self) -> None:
        write_atomic(self.path / STATUS, _json(self.status))

    def rows(self) -> list[dict[str, str]]:
        """The metrics written so far."""
        text = (self.path / METRICS).read_text()
        lines = text.splitlines()
        if not lines:
            return []
        header = lines[0].split(",")
        return [dict(zip(header, line.split(","))) for line in lines[1:]]

    def save_progress(self, algorithm: str, entries: list[dict[str, float]],
                      checkpoint: Callable[[BinaryIO], None] | None) -> None:
        """After an evaluation: every finished algorithm's rows plus ``algorithm``'s so far, and its checkpoint
        (``checkpoint`` streams it into an open file, e.g. :meth:`divjax.runner.Progress.write`)."""
        kept = [r for r in self.rows() if r["algorithm"] in self.finished]
        new = [{"algorithm": algorithm, **{k: _csv_value(v) for k, v in e.items()}} for e in entries]
        rows = kept + new
        # A fixed column order: entries restored from a checkpoint do not keep their keys' order.
        header = list(METRIC_COLUMNS_FIRST) + sorted(set(rows[0]) - set(METRIC_COLUMNS_FIRST)) if rows else list(
            METRIC_COLUMNS_FIRST)
        buffer = io.StringIO()
        buffer.write(",".join(header) + "\n")
        for row in rows:
            buffer.write(",".join(row[k] for k in header) + "\n")
        if checkpoint is not None:
            name, digest = write_streamed(self.path, "checkpoint-", CHECKPOINT_SUFFIX, checkpoint)
            self.status["checkpoint"] = {"algorithm": algorithm, "file": name, "sha256": digest}
        write_atomic(self.path / METRICS, buffer.getvalue().encode())
        self._write_status()
        if checkpoint is not None:
            _remove_checkpoints(self.path, keep=self.status["checkpoint"]["file"])

    def finish_algorithm(self, algorithm: str, summary: dict[str, Any]) -> None:
        """``algorithm`` is done: keep its summary, drop its checkpoint."""
        self.status["finished"].append(algorithm)
        self.status.setdefault("summaries", {})[algorithm] = {k: _finite_or_none(v) for k, v in summary.items()}
        self.status["checkpoint"] = None
        self._write_status()
        _remove_checkpoints(self.path, keep=None)

    def load_checkpoint(self, algorithm: str) -> Path | None:
        """The path of ``algorithm``'s verified checkpoint, or ``None`` if it had not reached its first one."""
        record = self.status.get("checkpoint")
        if not record or record.get("algorithm") != algorithm:
            return None
        path = self.path / record["file"]
        if not path.is_file():
            raise RunDirectoryError(f"{path} is missing but status.json records it: the run directory is damaged")
        if path.suffix != CHECKPOINT_SUFFIX:
            raise RunDirectoryError(f"{path} was written by an older divjax in another format: it cannot be "
                                    "resumed; start the run again")
        digest = _sha256_of(path)
        if digest != record["sha256"]:
            raise RunDirectoryError(f"{path} is corrupted (sha256 {digest[:12]}..., expected "
                                    f"{record['sha256'][:12]}...): it cannot be resumed; start the run again")
        return path

    def histories(self) -> list[tuple[str, dict[str, np.ndarray]]]:
        """Every algorithm's metrics from ``metrics.csv``, as arrays."""
        by_algorithm: dict[str, list[dict[str, str]]] = {}
        for row in self.rows():
            by_algorithm.setdefault(row["algorithm"], []).append(row)
        return [(a, {k: np.array([float(r[k]) for r in rows]) for k in rows[0] if k != "algorithm"})
                for a, rows in by_algorithm.items()]

    def copy_to(self, path: str | os.PathLike, source: str) -> RunDirectory:
        """This complete run's files as the run directory ``path`` (which must not hold a run yet), its
        ``status.json`` saying ``copied_from: source``. The simulation is deterministic, so a run of the same
        configuration on the same backend would write these very files: copying them is running it again."""
        if not self.complete:
            raise RunDirectoryError(f"{self.path} is not complete: only a finished run can be copied")
        path = Path(path)
        if (path / STATUS).is_file():
            raise RunDirectoryError(f"{path} already holds a run: a run is copied into a new directory")
        path.mkdir(parents=True, exist_ok=True)
        for name in (CONFIG, METRICS, *RESULTS):
            if (self.path / name).is_file():
                write_atomic(path / name, (self.path / name).read_bytes())
        copy = RunDirectory(path=path, configs=list(self.configs), status={**self.status, "copied_from": source})
        copy._write_status()  # last: the copy is complete only once every other file is there
        return copy

    def mark_complete(self) -> None:
        self.status["complete"] = True
        self._write_status()
