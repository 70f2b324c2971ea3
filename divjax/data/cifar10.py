"""CIFAR-10 from a folder the user names, in any of three layouts, as uint8 HWC arrays in original order.

Layouts, looked for in this order in ``data_dir``:

1. ``cifar10_jpeg.npz`` (the offline copy described in its SOURCES.md): all 60,000 images as JPEG q75
   bytes. They are decoded with Pillow once and cached (see ``divjax.data.cache``). If
   ``cifar10_lossless_subset.npz`` sits beside it, its 9,085 exact original images replace the JPEG
   versions at their indices.
2. ``cifar-10-python.tar.gz``: the official archive (pickled ``data_batch_1..5`` and ``test_batch``).
3. ``cifar-10-batches-py/`` extracted from it, or ``data_dir`` being that folder.

"Original order" is data_batch_1..5 end to end, then test_batch: the order torchvision (the reference's
loader), keras and tfds use, so partitions computed from the labels match the reference's.

The pickles are only unpickled after their published md5 matched (``verify=True``, the default): with
``verify=False`` only load files you trust, since unpickling can run code.
"""

import io
import os
import pickle
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from divjax.data.cache import cached_arrays, default_cache_dir
from divjax.data.errors import DataError
from divjax.data.files import existing_dir, file_digest, verify_file

IMAGE_SHAPE = (32, 32, 3)
NUM_CLASSES = 10

JPEG_NPZ = "cifar10_jpeg.npz"
JPEG_SHA256 = "c3ee8d274f14c9a3a6b9a16b04e92850a704ee8eda065e25f214d1b26a388a94"
LOSSLESS_NPZ = "cifar10_lossless_subset.npz"
LOSSLESS_SHA256 = "e21628827d52340d859612bc98b060d14c6e232d75d288a6f64edac6909c7d22"
ARCHIVE = "cifar-10-python.tar.gz"
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
BATCH_DIR = "cifar-10-batches-py"
# torchvision's published md5s of the extracted batches.
BATCH_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
TRAIN_BATCHES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5")
TEST_BATCH = "test_batch"


@dataclass(frozen=True)
class ImageDataset:
    """A labelled image data set: uint8 images [N, 32, 32, 3] (HWC, RGB) and int32 labels [N], in original order.

    ``source`` says which layout and path the arrays came from. Construction checks shapes, dtypes and
    label range, and raises DataError naming ``source`` if they are wrong.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.dtype != np.uint8 or x.shape != (len(y), *IMAGE_SHAPE):
                raise DataError(
                    f"{self.source}: x_{split} is {x.dtype} {x.shape}, expected uint8 "
                    f"{(len(y), *IMAGE_SHAPE)} (one 32x32 RGB image per label)"
                )
            if y.dtype != np.int32 or y.ndim != 1 or (y.size and not 0 <= y.min() <= y.max() < NUM_CLASSES):
                raise DataError(f"{self.source}: y_{split} must be int32 [N] with values in 0..{NUM_CLASSES - 1}")


def load_cifar10(
    data_dir: str | os.PathLike, *, verify: bool = True, cache_dir: str | os.PathLike | None = None
) -> ImageDataset:
    """Load CIFAR-10 from ``data_dir`` (layouts in the module docstring), checking published checksums.

    ``verify=False`` skips the checksum comparison (for files you made yourself) but not the structural
    checks. ``cache_dir`` is where decoded JPEGs are kept (default ``$DIVJAX_CACHE_DIR``, else
    ``~/.cache/divjax``); it is only used by the JPEG layout.
    """
    root = existing_dir(data_dir)
    if (root / JPEG_NPZ).is_file():
        return _load_jpeg_npz(root, verify, default_cache_dir(cache_dir))
    if (root / ARCHIVE).is_file():
        return _load_archive(root / ARCHIVE, verify)
    for folder in (root / BATCH_DIR, root):
        if (folder / TRAIN_BATCHES[0]).is_file():
            return _load_batch_folder(folder, verify)
    raise DataError(
        f"{root}: no CIFAR-10 found; expected {JPEG_NPZ} (with an optional {LOSSLESS_NPZ}), {ARCHIVE}, "
        f"or a {BATCH_DIR}/ folder holding {', '.join(TRAIN_BATCHES)} and {TEST_BATCH}"
    )


def normalize(x: np.ndarray) -> np.ndarray:
    """uint8 pixels to float32 in [-1, 1], as the reference's ``ToTensor`` then ``Normalize(0.5, 0.5)``.

    Layout is kept (HWC, which flax convolutions expect); the reference's tensors are CHW.
    """
    return (x.astype(np.float32) / np.float32(255) - np.float32(0.5)) / np.float32(0.5)


# --- layout 1: JPEG npz (+ lossless subset) -------------------------------------------------------------


def _load_jpeg_npz(root: Path, verify: bool, cache_dir: Path) -> ImageDataset:
    """Decode (or fetch from the cache) the JPEGs, then restore the lossless subset if present.

    Both files are checked and read before the (slow) decoding starts.
    """
    path, lossless = root / JPEG_NPZ, root / LOSSLESS_NPZ
    sha = verify_file(path, "sha256", JPEG_SHA256) if verify else file_digest(path, "sha256")
    npz = _read_npz(path, ("train_jpeg", "train_offsets", "y_train", "test_jpeg", "test_offsets", "y_test"))
    for split in ("train", "test"):
        _check_offsets(path, split, npz)
    subset = _read_lossless(lossless, verify) if lossless.is_file() else None
    pixels = cached_arrays(
        cache_dir / f"cifar10_jpeg-{sha[:16]}-decoded.npz",
        lambda: {f"x_{s}": _decode_jpegs(path, s, npz[f"{s}_jpeg"], npz[f"{s}_offsets"]) for s in ("train", "test")},
    )
    x_train, x_test = pixels["x_train"], pixels["x_test"]
    y_train, y_test = npz["y_train"].astype(np.int32), npz["y_test"].astype(np.int32)
    if subset is None:
        return ImageDataset(x_train, y_train, x_test, y_test, f"{JPEG_NPZ} (JPEG q75) at {root}")
    _restore_lossless(lossless, subset, {"train": (x_train, y_train), "test": (x_test, y_test)})
    return ImageDataset(x_train, y_train, x_test, y_test, f"{JPEG_NPZ} (JPEG q75) + {LOSSLESS_NPZ} at {root}")


def _read_npz(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Read ``keys`` from an .npz (no pickles); DataError if it is unreadable or lacks one of them."""
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in keys if k in f.files}
    except (OSError, ValueError, EOFError, zlib.error, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: cannot be read as an .npz file ({e}); it is corrupted or truncated") from e
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise DataError(f"{path}: lacks the arrays {missing}; expected {list(keys)}")
    return arrays


def _check_offsets(path: Path, split: str, npz: dict[str, np.ndarray]) -> None:
    """The offsets must cut the byte buffer into exactly one JPEG per label."""
    buf, off, y = npz[f"{split}_jpeg"], npz[f"{split}_offsets"], npz[f"y_{split}"]
    if off.shape != (len(y) + 1,) or off[0] != 0 or off[-1] != len(buf) or np.any(np.diff(off) <= 0):
        raise DataError(
            f"{path}: {split}_offsets must be increasing, start at 0 and end at len({split}_jpeg) = {len(buf)}, "
            f"with one entry more than y_{split} ({len(y)})"
        )


def _decode_jpegs(path: Path, split: str, buf: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Decode the JPEGs joined end to end in ``buf`` into uint8 [N, 32, 32, 3] with Pillow (~12 s for 60k)."""
    out = np.empty((len(offsets) - 1, *IMAGE_SHAPE), np.uint8)
    for i in range(len(out)):
        try:
            with Image.open(io.BytesIO(buf[offsets[i] : offsets[i + 1]].tobytes())) as image:
                out[i] = np.asarray(image.convert("RGB"))
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: {split} image {i} is not a decodable 32x32 JPEG ({e})") from e
    return out


def _read_lossless(path: Path, verify: bool) -> dict[str, np.ndarray]:
    """The lossless subset's arrays, after its sha256 check."""
    if verify:
        verify_file(path, "sha256", LOSSLESS_SHA256)
    return _read_npz(path, ("x_train", "idx_train", "y_train", "x_test", "idx_test", "y_test"))


def _restore_lossless(
    path: Path, subset: dict[str, np.ndarray], splits: dict[str, tuple[np.ndarray, np.ndarray]]
) -> None:
    """Write the subset's exact original pixels into the decoded arrays, after checking its labels agree."""
    for split, (x, y) in splits.items():
        rows, idx = subset[f"x_{split}"], subset[f"idx_{split}"]
        if not np.array_equal(subset[f"y_{split}"], y):
            raise DataError(f"{path}: y_{split} differs from the labels of {JPEG_NPZ}; expected identical arrays")
        if rows.shape != (len(idx), *IMAGE_SHAPE) or (idx.size and not 0 <= idx.min() <= idx.max() < len(x)):
            raise DataError(f"{path}: x_{split} must be [len(idx_{split}), 32, 32, 3] with indices in 0..{len(x) - 1}")
        x[idx] = rows


# --- layouts 2 and 3: the official python pickles -------------------------------------------------------


def _load_archive(path: Path, verify: bool) -> ImageDataset:
    """Read the six pickles straight out of ``cifar-10-python.tar.gz`` (no extraction to disk)."""
    if verify:
        verify_file(path, "md5", ARCHIVE_MD5)
    raw = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for name in (*TRAIN_BATCHES, TEST_BATCH):
                member = f"{BATCH_DIR}/{name}"
                try:
                    raw[name] = tar.extractfile(member).read()
                except KeyError:
                    raise DataError(
                        f"{path}: has no member {member}; expected {BATCH_DIR}/ with the six batches"
                    ) from None
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot be read as a .tar.gz archive ({e}); it is corrupted or truncated") from e
    return _from_batches(path, raw, ARCHIVE)


def _load_batch_folder(folder: Path, verify: bool) -> ImageDataset:
    """Read the six pickles of an extracted ``cifar-10-batches-py/`` folder."""
    files = {name: folder / name for name in (*TRAIN_BATCHES, TEST_BATCH)}
    missing = [name for name, file in files.items() if not file.is_file()]
    if missing:
        raise DataError(f"{folder}: lacks {missing}; expected {', '.join(files)}")
    if verify:
        for name, file in files.items():
            verify_file(file, "md5", BATCH_MD5[name])
    return _from_batches(folder, {name: file.read_bytes() for name, file in files.items()}, BATCH_DIR)


def _from_batches(where: Path, raw: dict[str, bytes], layout: str) -> ImageDataset:
    """Join the five training batches in order; the test batch is the test set."""
    train = [_unpickle_batch(where, name, raw[name]) for name in TRAIN_BATCHES]
    x_test, y_test = _unpickle_batch(where, TEST_BATCH, raw[TEST_BATCH])
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    return ImageDataset(x_train, y_train, x_test, y_test, f"{layout} at {where}")


def _unpickle_batch(where: Path, name: str, raw: bytes) -> tuple[np.ndarray, np.ndarray]:
    """One batch dict (``b"data"``: uint8 [n, 3072] rows, CHW; ``b"labels"``: n ints) as HWC images + labels."""
    try:
        batch = pickle.loads(raw, encoding="bytes")
    except Exception as e:  # a damaged pickle can raise nearly anything
        raise DataError(f"{where}: {name} cannot be unpickled ({type(e).__name__}: {e}); it is corrupted") from e
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DataError(f"{where}: {name} is not a CIFAR batch; expected a dict with b'data' and b'labels'")
    data, labels = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != (len(data),):
        raise DataError(
            f"{where}: {name} has data {data.dtype} {data.shape} and {labels.shape} labels; "
            f"expected uint8 [n, 3072] and n labels"
        )
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # rows are CHW (1024 R, 1024 G, 1024 B)
    return np.ascontiguousarray(images), labels.astype(np.int32)
