"""divjax.data: real CIFAR-10 / MovieLens loading, the reference's partitions, the decode cache, the TFDS route.

Real data come from ``$DIVJAX_TEST_DATA`` (default: ``shared/data`` beside the repository); tests that need
it skip with a reason when it is absent. Everything else runs on small files made here.
"""

import collections
import io
import pickle
import re
import shutil
import sys
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest

from divjax.data import (
    DataError,
    ImageDataset,
    Ratings,
    cache,
    cifar10,
    dirichlet,
    iid,
    kshard,
    load_cifar10,
    load_cifar10_tfds,
    load_movielens,
    load_movielens_tfds,
    movielens_split,
    normalize,
    user_blocks,
)
from tests.helpers import CIFAR, MOVIELENS, needs_cifar, needs_movielens

# --- CIFAR-10, offline npz layout (real data) -----------------------------------------------------------------


@pytest.fixture(scope="module")
def cifar_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("divjax-cache")


@pytest.fixture(scope="module")
def cifar(cifar_cache) -> ImageDataset:
    """The real data set, decoded once for the module (~12 s) into a module-private cache."""
    if not (CIFAR / "cifar10_jpeg.npz").is_file():
        pytest.skip(f"real CIFAR-10 not found under {CIFAR}")
    return load_cifar10(CIFAR, cache_dir=cifar_cache)


@pytest.fixture(scope="module")
def lossless() -> dict[str, np.ndarray]:
    with np.load(CIFAR / "cifar10_lossless_subset.npz") as f:
        return {k: f[k] for k in ("x_train", "idx_train", "y_train", "x_test", "idx_test", "y_test")}


@pytest.fixture(scope="module")
def jpeg_only(cifar, cifar_cache, tmp_path_factory) -> ImageDataset:
    """The JPEG pixels alone: a folder holding only a link to the npz (same sha256, so the cache is hit)."""
    folder = tmp_path_factory.mktemp("jpeg-only")
    (folder / "cifar10_jpeg.npz").symlink_to(CIFAR / "cifar10_jpeg.npz")
    return load_cifar10(folder, cache_dir=cifar_cache)


@needs_cifar
def test_cifar10_npz_has_all_images_with_original_labels(cifar, lossless):
    assert cifar.x_train.shape == (50_000, 32, 32, 3) and cifar.x_test.shape == (10_000, 32, 32, 3)
    assert cifar.x_train.dtype == np.uint8 and cifar.y_train.dtype == np.int32
    np.testing.assert_array_equal(cifar.y_train, lossless["y_train"])
    np.testing.assert_array_equal(cifar.y_test, lossless["y_test"])
    assert np.bincount(cifar.y_test).tolist() == [1000] * 10
    assert "lossless" in cifar.source


@needs_cifar
def test_cifar10_lossless_subset_pixels_are_exact(cifar, lossless):
    np.testing.assert_array_equal(cifar.x_train[lossless["idx_train"]], lossless["x_train"])
    np.testing.assert_array_equal(cifar.x_test[lossless["idx_test"]], lossless["x_test"])


@needs_cifar
def test_cifar10_jpeg_pixels_are_close_to_the_originals(jpeg_only, lossless):
    assert "lossless" not in jpeg_only.source
    for split in ("train", "test"):
        decoded = getattr(jpeg_only, f"x_{split}")[lossless[f"idx_{split}"]].astype(np.float64)
        error = np.abs(decoded - lossless[f"x_{split}"]).mean()
        assert 1 < error < 10, (split, error)  # lossy (q75) but the same images


@needs_cifar
def test_cifar10_cache_is_reused(cifar, cifar_cache, monkeypatch):
    def no_decoding(*args):
        raise AssertionError("decoded again although the cache holds the images")

    monkeypatch.setattr(cifar10, "_decode_jpegs", no_decoding)
    again = load_cifar10(CIFAR, cache_dir=cifar_cache)
    np.testing.assert_array_equal(again.x_train, cifar.x_train)
    np.testing.assert_array_equal(again.x_test, cifar.x_test)


@needs_cifar
def test_cifar10_corrupted_cache_is_rebuilt(cifar_cache, cifar, tmp_path, monkeypatch):
    (cached,) = cifar_cache.glob("cifar10_jpeg-*-decoded.npz")
    fresh = tmp_path / "cache"
    fresh.mkdir()
    corrupted = fresh / cached.name
    shutil.copyfile(cached, corrupted)
    with open(corrupted, "r+b") as f:  # flip one pixel byte in the middle of x_train
        f.seek(cached.stat().st_size // 3)
        byte = f.read(1)
        f.seek(-1, io.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    calls = []

    def gray_decoding(path, split, buf, offsets):
        calls.append(split)
        return np.full((len(offsets) - 1, 32, 32, 3), 7, np.uint8)

    monkeypatch.setattr(cifar10, "_decode_jpegs", gray_decoding)
    with pytest.warns(UserWarning, match="unusable .*; rebuilding it"):
        rebuilt = load_cifar10(CIFAR, cache_dir=fresh)
    assert calls == ["train", "test"]
    assert (rebuilt.x_train[5000] == 7).all() and not (rebuilt.x_train[0] == 7).all()  # 0 is in the lossless subset
    monkeypatch.setattr(cifar10, "_decode_jpegs", lambda *a: pytest.fail("the rebuilt cache was not written"))
    assert (load_cifar10(CIFAR, cache_dir=fresh).x_train[5000] == 7).all()  # index 5000 is not lossless


def test_normalize_matches_to_tensor_then_normalize_half():
    x = np.array([0, 1, 127, 128, 254, 255], np.uint8)
    y = normalize(x)
    assert y.dtype == np.float32
    expected = (x.astype(np.float32) / np.float32(255) - np.float32(0.5)) / np.float32(0.5)
    np.testing.assert_array_equal(y, expected)
    assert y[0] == -1 and y[-1] == 1


@needs_cifar
def test_normalize_real_images_lie_in_minus_one_one(cifar):
    y = normalize(cifar.x_test[:500])
    assert y.shape == (500, 32, 32, 3) and y.min() == -1 and y.max() == 1


def _fake_jpeg_npz(folder: Path, n_train: int = 5, n_test: int = 3) -> dict[str, np.ndarray]:
    """A small file in the layout of cifar10_jpeg.npz (smooth images, so JPEG keeps them close); returns the pixels."""
    from PIL import Image

    rng = np.random.default_rng(1)
    arrays, pixels = {}, {}
    for split, n in (("train", n_train), ("test", n_test)):
        ramp = np.add.outer(np.arange(32), np.arange(32))[None, :, :, None] * 3
        x = (ramp + rng.integers(0, 60, (n, 1, 1, 3))).astype(np.uint8)
        blobs = []
        for image in x:
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="JPEG", quality=75)
            blobs.append(np.frombuffer(buffer.getvalue(), np.uint8))
        arrays[f"{split}_jpeg"] = np.concatenate(blobs)
        arrays[f"{split}_offsets"] = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
        arrays[f"y_{split}"] = (np.arange(n) % 10).astype(np.uint8)
        pixels[split] = x
    np.savez(folder / "cifar10_jpeg.npz", **arrays)
    return pixels


def test_cifar10_npz_layout_on_a_small_file(tmp_path):
    pixels = _fake_jpeg_npz(tmp_path)
    ds = load_cifar10(tmp_path, verify=False, cache_dir=tmp_path / "cache")
    assert ds.x_train.shape == (5, 32, 32, 3) and ds.y_test.tolist() == [0, 1, 2]
    assert np.abs(ds.x_train.astype(int) - pixels["train"]).mean() < 3
    lossless = {
        "x_train": pixels["train"][[1, 3]], "idx_train": np.array([1, 3]), "y_train": ds.y_train.astype(np.uint8),
        "x_test": pixels["test"][:1], "idx_test": np.array([0]), "y_test": ds.y_test.astype(np.uint8),
    }
    np.savez(tmp_path / "cifar10_lossless_subset.npz", **lossless)
    restored = load_cifar10(tmp_path, verify=False, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(restored.x_train[[1, 3]], pixels["train"][[1, 3]])
    np.testing.assert_array_equal(restored.x_train[[0, 2, 4]], ds.x_train[[0, 2, 4]])
    np.testing.assert_array_equal(restored.x_test[0], pixels["test"][0])
    with pytest.raises(DataError, match=r"cifar10_jpeg.npz: sha256 is .*, expected c3ee8d27"):
        load_cifar10(tmp_path, cache_dir=tmp_path / "cache")
    np.savez(tmp_path / "cifar10_lossless_subset.npz", **{**lossless, "y_test": np.array([0, 1, 3], np.uint8)})
    with pytest.raises(DataError, match="y_test differs from the labels of cifar10_jpeg.npz"):
        load_cifar10(tmp_path, verify=False, cache_dir=tmp_path / "cache")


def test_cifar10_npz_with_bad_offsets_or_bytes_is_a_data_error(tmp_path, monkeypatch):
    _fake_jpeg_npz(tmp_path)
    with np.load(tmp_path / "cifar10_jpeg.npz") as f:
        arrays = dict(f)
    np.savez(tmp_path / "cifar10_jpeg.npz", **{**arrays, "test_offsets": arrays["test_offsets"][:-1]})
    with pytest.raises(DataError, match="test_offsets must be increasing"):
        load_cifar10(tmp_path, verify=False, cache_dir=tmp_path)
    np.savez(tmp_path / "cifar10_jpeg.npz", **{**arrays, "train_jpeg": np.zeros_like(arrays["train_jpeg"])})
    with pytest.raises(DataError, match="train image 0 is not a decodable 32x32 JPEG"):
        load_cifar10(tmp_path, verify=False, cache_dir=tmp_path)
    np.savez(tmp_path / "cifar10_jpeg.npz", **{k: v for k, v in arrays.items() if k != "y_test"})
    with pytest.raises(DataError, match=r"lacks the arrays \['y_test'\]"):
        load_cifar10(tmp_path, verify=False, cache_dir=tmp_path)


# --- the decode cache on tiny arrays --------------------------------------------------------------------------


def test_cache_writes_once_then_reads(tmp_path):
    path = tmp_path / "c" / "a.npz"
    arrays = {"x": np.arange(12, dtype=np.uint8).reshape(3, 4), "y": np.array([1.5, 2.5])}
    assert cache.cached_arrays(path, lambda: arrays) is arrays
    read = cache.cached_arrays(path, lambda: pytest.fail("rebuilt an intact cache"))
    assert read.keys() == arrays.keys() and all(np.array_equal(read[k], arrays[k]) for k in arrays)
    assert [p.name for p in path.parent.iterdir()] == ["a.npz"]  # no temporary file left behind


@pytest.mark.parametrize("damage", ["truncate", "garbage", "no digest", "other arrays"])
def test_cache_damaged_file_is_rebuilt(tmp_path, damage):
    path = tmp_path / "a.npz"
    arrays = {"x": np.arange(1000, dtype=np.int64)}
    cache.cached_arrays(path, lambda: arrays)
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:500])
    elif damage == "garbage":
        path.write_bytes(b"not an npz at all")
    elif damage == "no digest":
        np.savez(path, x=np.zeros(1000, np.int64))
    else:  # right format, digest of different arrays
        np.savez(path, x=np.zeros(1000, np.int64), __sha256__=np.array(cache.arrays_digest(arrays)))
    with pytest.warns(UserWarning, match=re.escape(str(path))):
        read = cache.cached_arrays(path, lambda: arrays)
    np.testing.assert_array_equal(read["x"], arrays["x"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(cache.cached_arrays(path, lambda: pytest.fail("not rewritten"))["x"], arrays["x"])


def test_cache_dir_defaults(monkeypatch, tmp_path):
    monkeypatch.setenv("DIVJAX_CACHE_DIR", str(tmp_path))
    assert cache.default_cache_dir() == tmp_path
    assert cache.default_cache_dir(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv("DIVJAX_CACHE_DIR")
    assert cache.default_cache_dir() == Path.home() / ".cache" / "divjax"


# --- CIFAR-10, original python layouts (fake files) -----------------------------------------------------------

BATCHES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch")


def _fake_batches(folder: Path, per_batch: int = 3) -> dict[str, dict]:
    """Pickled dicts shaped like the real batches (uint8 [n, 3072] CHW rows, n labels), written to ``folder``."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    batches = {}
    for name in BATCHES:
        batches[name] = {
            b"batch_label": name.encode(),
            b"labels": rng.integers(0, 10, per_batch).tolist(),
            b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            b"filenames": [b"x.png"] * per_batch,
        }
        (folder / name).write_bytes(pickle.dumps(batches[name], protocol=2))
    return batches


def _tar(folder: Path, archive: Path) -> None:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")


def test_cifar10_batch_folder_converts_chw_rows_to_hwc(tmp_path):
    batches = _fake_batches(tmp_path / "cifar-10-batches-py")
    for data_dir in (tmp_path, tmp_path / "cifar-10-batches-py"):
        ds = load_cifar10(data_dir, verify=False)
        assert ds.x_train.shape == (15, 32, 32, 3) and ds.x_test.shape == (3, 32, 32, 3)
        rows = np.concatenate([batches[name][b"data"] for name in BATCHES[:5]])
        # pixel (row r, column c, channel ch) is byte ch * 1024 + r * 32 + c of the CHW row
        assert ds.x_train[4, 2, 5, 1] == rows[4, 1 * 1024 + 2 * 32 + 5]
        np.testing.assert_array_equal(ds.x_train, rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        np.testing.assert_array_equal(ds.y_train, sum((batches[name][b"labels"] for name in BATCHES[:5]), []))
        np.testing.assert_array_equal(ds.y_test, batches["test_batch"][b"labels"])
        assert ds.y_train.dtype == np.int32


def test_cifar10_archive_reads_the_same_as_the_folder(tmp_path):
    _fake_batches(tmp_path / "src" / "cifar-10-batches-py")
    _tar(tmp_path / "src" / "cifar-10-batches-py", tmp_path / "cifar-10-python.tar.gz")
    from_archive = load_cifar10(tmp_path, verify=False)
    from_folder = load_cifar10(tmp_path / "src", verify=False)
    np.testing.assert_array_equal(from_archive.x_train, from_folder.x_train)
    np.testing.assert_array_equal(from_archive.y_test, from_folder.y_test)
    assert "cifar-10-python.tar.gz" in from_archive.source


def test_cifar10_wrong_md5_is_a_data_error(tmp_path):
    _fake_batches(tmp_path / "cifar-10-batches-py")
    with pytest.raises(DataError, match=r"data_batch_1: md5 is .*, expected c99cafc152244af753f735de768cd75f"):
        load_cifar10(tmp_path)
    _tar(tmp_path / "cifar-10-batches-py", tmp_path / "cifar-10-python.tar.gz")
    with pytest.raises(DataError, match=r"cifar-10-python.tar.gz: md5 is .*, expected c58f30108f718f92721af3b9"):
        load_cifar10(tmp_path)


def test_cifar10_damaged_python_layouts_are_data_errors(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    _fake_batches(folder)
    (folder / "test_batch").unlink()
    with pytest.raises(DataError, match=r"cifar-10-batches-py: lacks \['test_batch'\]"):
        load_cifar10(tmp_path, verify=False)
    (folder / "test_batch").write_bytes(b"\x80\x02garbage")
    with pytest.raises(DataError, match="test_batch cannot be unpickled"):
        load_cifar10(tmp_path, verify=False)
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(DataError, match=r"test_batch has data uint8 \(2, 100\).*expected uint8 \[n, 3072\]"):
        load_cifar10(tmp_path, verify=False)
    _fake_batches(folder)
    _tar(folder, tmp_path / "cifar-10-python.tar.gz")
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(archive.read_bytes()[:2000])
    with pytest.raises(DataError, match=f"{re.escape(str(archive))}: cannot be read as a .tar.gz archive"):
        load_cifar10(tmp_path, verify=False)


# --- wrong paths, missing and corrupted files -----------------------------------------------------------------


@pytest.mark.parametrize("loader", [load_cifar10, load_movielens])
def test_missing_folder_or_data_is_a_data_error_naming_the_path(loader, tmp_path):
    with pytest.raises(DataError, match=f"{re.escape(str(tmp_path / 'nowhere'))}: does not exist"):
        loader(tmp_path / "nowhere")
    (tmp_path / "a_file").write_text("")
    with pytest.raises(DataError, match="is not a folder"):
        loader(tmp_path / "a_file")
    with pytest.raises(DataError, match=f"{re.escape(str(tmp_path))}: no "):
        loader(tmp_path)


@needs_cifar
def test_truncated_cifar_npz_is_a_data_error(tmp_path, monkeypatch):
    with open(CIFAR / "cifar10_jpeg.npz", "rb") as f:
        (tmp_path / "cifar10_jpeg.npz").write_bytes(f.read(1 << 20))
    path = tmp_path / "cifar10_jpeg.npz"
    with pytest.raises(DataError, match=f"{re.escape(str(path))}: sha256 is .*, expected c3ee8d27"):
        load_cifar10(tmp_path, cache_dir=tmp_path)
    with pytest.raises(DataError, match=f"{re.escape(str(path))}: cannot be read as an .npz file"):
        load_cifar10(tmp_path, verify=False, cache_dir=tmp_path)
    (tmp_path / "cifar10_jpeg.npz").unlink()
    (tmp_path / "cifar10_jpeg.npz").symlink_to(CIFAR / "cifar10_jpeg.npz")
    subset = tmp_path / "cifar10_lossless_subset.npz"
    subset.write_bytes((CIFAR / "cifar10_lossless_subset.npz").read_bytes()[:100_000])
    monkeypatch.setattr(cifar10, "_decode_jpegs", lambda *a: pytest.fail("decoding started before the checks"))
    with pytest.raises(DataError, match=f"{re.escape(str(subset))}: sha256 is .*, expected e2162882"):
        load_cifar10(tmp_path, cache_dir=tmp_path)
    with pytest.raises(DataError, match=f"{re.escape(str(subset))}: cannot be read as an .npz file"):
        load_cifar10(tmp_path, verify=False, cache_dir=tmp_path)


@needs_movielens
def test_truncated_or_altered_movielens_is_a_data_error(tmp_path):
    archive = tmp_path / "ml-latest-small.zip"
    archive.write_bytes((MOVIELENS / "ml-latest-small.zip").read_bytes()[:400_000])
    with pytest.raises(DataError, match=f"{re.escape(str(archive))}: sha256 is .*, expected 696d65a3"):
        load_movielens(tmp_path)
    with pytest.raises(DataError, match=f"{re.escape(str(archive))}: cannot be read as a zip archive"):
        load_movielens(tmp_path, verify=False)
    csv = tmp_path / "ml-latest-small" / "ratings.csv"
    csv.parent.mkdir()
    csv.write_text("userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,x,4.0,964981247\n")
    archive.unlink()
    with pytest.raises(DataError, match=f"{re.escape(str(csv))}: sha256 is"):
        load_movielens(tmp_path)
    with pytest.raises(DataError, match=f"{re.escape(str(csv))}: malformed rows"):
        load_movielens(tmp_path, verify=False)
    with pytest.raises(ValueError, match="variant='ml-1m'"):
        load_movielens(tmp_path, "ml-1m")


# --- MovieLens (real data) ------------------------------------------------------------------------------------


@needs_movielens
def test_movielens_latest_small_from_zip_and_folder(tmp_path):
    shutil.copyfile(MOVIELENS / "ml-latest-small.zip", tmp_path / "ml-latest-small.zip")
    from_zip = load_movielens(tmp_path)
    from_folder = load_movielens(MOVIELENS / "ml-latest-small")
    assert from_zip.source.endswith("ml-latest-small.zip") and from_folder.source.endswith("ratings.csv")
    for r in (from_zip, from_folder):
        assert (len(r.rating), r.n_users, r.n_items) == (100_836, 610, 9_724)
        assert r.user.dtype == r.item.dtype == np.int32 and r.rating.dtype == np.float32
    for field in ("user", "item", "rating"):
        np.testing.assert_array_equal(getattr(from_zip, field), getattr(from_folder, field))
    assert np.unique(from_zip.rating).tolist() == [0.5 * k for k in range(1, 11)]
    assert from_zip.user[0] == 0 and from_zip.user[-1] == 609  # userIds 1..610, file sorted by user


@needs_movielens
def test_movielens_100k():
    for data_dir in (MOVIELENS, MOVIELENS / "ml-100k"):
        r = load_movielens(data_dir, "ml-100k")
        assert (len(r.rating), r.n_users, r.n_items) == (100_000, 943, 1_682)
    assert np.bincount(r.rating.astype(int))[1:].tolist() == [6110, 11370, 27145, 34174, 21201]
    assert (r.user[0], r.item[0], r.rating[0]) == (195, 241, 3.0)  # first row of u.data: 196 242 3


# --- partitions -----------------------------------------------------------------------------------------------


def _disjoint(parts: list[np.ndarray]) -> bool:
    joined = np.concatenate(parts)
    return len(np.unique(joined)) == len(joined)


@needs_cifar
def test_kshard_replays_the_reference_on_real_labels(lossless):
    labels = lossless["y_train"]
    parts = kshard(labels, 60, shards=5, seed=1234)
    assert [len(p) for p in parts] == [830] * 59 + [850]
    assert _disjoint(parts) and all(p.dtype == np.int64 for p in parts)
    classes = [len(np.unique(labels[p])) for p in parts]
    assert dict(collections.Counter(classes)) == {2: 1, 3: 15, 4: 18, 5: 20, 6: 4, 8: 1, 9: 1}
    assert np.mean(classes) == pytest.approx(4.3333, abs=1e-4)
    assert dict(collections.Counter(labels[parts[0]].tolist())) == {0: 166, 1: 332, 5: 166, 7: 166}


def test_kshard_is_deterministic_and_disjoint():
    labels = np.random.default_rng(0).integers(0, 10, 5000)
    a, b, c = kshard(labels, 12, seed=1), kshard(labels, 12, seed=1), kshard(labels, 12, seed=2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    assert _disjoint(a) and [len(p) for p in a] == [415] * 11 + [420]
    # runs are contiguous in class order, so a node holds few classes
    assert np.mean([len(np.unique(labels[p])) for p in a]) < 7


def test_dirichlet_covers_every_sample_once_and_is_deterministic():
    labels = np.random.default_rng(0).integers(0, 10, 6000)
    parts = dirichlet(labels, 20, alpha=0.1, seed=7)
    joined = np.concatenate(parts)
    assert len(parts) == 20 and np.array_equal(np.sort(joined), np.arange(6000))
    assert min(len(p) for p in parts) >= 10  # the reference's retry rule: every node holds >= num_classes
    assert all(np.array_equal(x, y) for x, y in zip(parts, dirichlet(labels, 20, alpha=0.1, seed=7)))
    assert not all(np.array_equal(x, y) for x, y in zip(parts, dirichlet(labels, 20, alpha=0.1, seed=8)))
    skewed = np.mean([len(np.unique(labels[p])) for p in parts])
    mixed = np.mean([len(np.unique(labels[p])) for p in dirichlet(labels, 20, alpha=100.0, seed=7)])
    assert skewed < mixed == 10


def test_iid_sizes_follow_the_reference_rule():
    parts = iid(50_000, 60, seed=1234)
    assert [len(p) for p in parts] == [833] * 59 + [852]  # the float sizes rule leaves one sample out
    assert _disjoint(parts) and len(np.concatenate(parts)) == 49_999
    assert all(np.array_equal(x, y) for x, y in zip(parts, iid(50_000, 60, seed=1234)))
    assert not np.array_equal(parts[0], iid(50_000, 60, seed=1)[0])
    even = iid(1000, 8, seed=0)
    assert np.array_equal(np.sort(np.concatenate(even)), np.arange(1000))


@needs_movielens
def test_movielens_split_by_user_blocks():
    ratings = load_movielens(MOVIELENS / "ml-latest-small")
    train, test = movielens_split(ratings, 60, seed=1234)
    blocks = user_blocks(ratings.n_users, 60)
    assert [len(b) for b in blocks] == [11] * 10 + [10] * 50
    assert _disjoint(train + test)
    assert len(np.concatenate(train + test)) == len(ratings.rating)
    per_user = np.bincount(ratings.user, minlength=ratings.n_users)
    train_per_user = np.bincount(ratings.user[np.concatenate(train)], minlength=ratings.n_users)
    assert train_per_user.tolist() == [round(0.7 * n) for n in per_user]
    for node, block in enumerate(blocks):
        assert set(np.unique(ratings.user[train[node]])) == set(block)
        assert set(np.unique(ratings.user[test[node]])) <= set(block)
    again, _ = movielens_split(ratings, 60, seed=1234)
    other, _ = movielens_split(ratings, 60, seed=1)
    assert all(np.array_equal(x, y) for x, y in zip(train, again))
    assert not all(np.array_equal(x, y) for x, y in zip(train, other))


@needs_movielens
def test_movielens_split_replays_pandas_sample_of_the_reference():
    """The reference splits each user with ``df_user.sample(frac=0.7, random_state=seed)``; same rows here."""
    pd = pytest.importorskip("pandas")
    ratings = load_movielens(MOVIELENS / "ml-latest-small")
    train, test = movielens_split(ratings, 60, seed=1234)
    table = pd.read_csv(MOVIELENS / "ml-latest-small" / "ratings.csv")
    for node in (0, 10):
        expected_train, expected_test = [], []
        for user in user_blocks(ratings.n_users, 60)[node]:
            rows = table[table.userId == user + 1]
            sampled = rows.sample(frac=0.7, random_state=1234)
            expected_train.append(sampled.index.to_numpy())
            expected_test.append(rows.index.difference(sampled.index).to_numpy())
        np.testing.assert_array_equal(train[node], np.concatenate(expected_train))
        np.testing.assert_array_equal(test[node], np.concatenate(expected_test))


def test_movielens_split_small_example():
    ratings = Ratings(np.array([2, 0, 0, 1, 0, 2], np.int32), np.zeros(6, np.int32), np.ones(6, np.float32), 3, 1, "t")
    train, test = movielens_split(ratings, 2, seed=0, train_fraction=0.5)
    assert [b for b in user_blocks(3, 2)] == [range(0, 2), range(2, 3)]
    assert sorted(np.concatenate([train[0], test[0]]).tolist()) == [1, 2, 3, 4]
    assert len(train[0]) == round(0.5 * 3) + round(0.5 * 1) and len(train[1]) == 1


@pytest.mark.parametrize(
    "call, argument",
    [
        (lambda: kshard(np.arange(10) % 2, 0), "nodes=0"),
        (lambda: kshard(np.arange(10) % 2, 11), "nodes=11"),
        (lambda: kshard(np.arange(10) % 2, 2, shards=0), "shards=0"),
        (lambda: kshard(np.arange(10) % 2, 2, shards=6), "shards=6"),
        (lambda: kshard(np.array([0.5, 1.5]), 1), "labels"),
        (lambda: dirichlet(np.arange(10) % 2, 2, alpha=0), "alpha=0"),
        (lambda: dirichlet(np.arange(10) % 2, 2, alpha=-1.0), "alpha=-1.0"),
        (lambda: dirichlet(np.arange(10) % 2, 6, alpha=1.0), "nodes=6"),
        (lambda: dirichlet(np.arange(10) % 3, 2, alpha=1.0, num_classes=2), "num_classes=2"),
        (lambda: iid(5, 0), "nodes=0"),
        (lambda: iid(5, 6), "nodes=6"),
        (lambda: user_blocks(3, 4), "nodes=4"),
    ],
)
def test_partition_arguments_are_validated(call, argument):
    with pytest.raises(ValueError, match=argument):
        call()


# --- TFDS route (tensorflow-datasets without TensorFlow, mocked data) ----------------------------------------


def _cifar_examples(split: str) -> list[dict]:
    """TFDS-cifar10-like examples (``id`` = split_NNNNN, HWC image, label) in a shuffled storage order."""
    n = 6 if split == "train" else 3
    order = np.random.default_rng(len(split)).permutation(n)
    return [{"id": f"{split}_{i:05d}", "image": np.full((32, 32, 3), i, np.uint8), "label": np.int64(i % 10)}
            for i in order]


def test_tfds_cifar10_is_put_back_in_original_order(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(as_data_source_fn=lambda self, split, **kwargs: _cifar_examples(split)):
        ds = load_cifar10_tfds(tmp_path)
    assert ds.x_train.shape == (6, 32, 32, 3) and ds.x_test.shape == (3, 32, 32, 3)
    assert ds.x_train[:, 5, 7, 2].tolist() == list(range(6)) and ds.y_train.tolist() == list(range(6))
    assert ds.y_test.dtype == np.int32 and ds.source == f"tfds cifar10 at {tmp_path}"


def test_tfds_cifar10_through_the_generic_mock_rejects_non_cifar_ids(tmp_path):
    """The unmodified data_source path (ArrayRecord mock, numpy decoding) runs; its random ids are refused."""
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=4, policy=tfds.testing.MockPolicy.USE_CODE):
        with pytest.raises(DataError, match="is not of the form train_NNNNN"):
            load_cifar10_tfds(tmp_path)


def test_tfds_movielens_ids_are_renumbered_in_sorted_order(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    rows = [("2", "10", 4.0), ("10", "2", 5.0), ("1", "31", 2.5), ("1", "2", 3.0)]
    examples = [{"user_id": u, "movie_id": m, "user_rating": np.float32(r)} for u, m, r in rows]
    with tfds.testing.mock_data(as_data_source_fn=lambda self, split, **kwargs: examples):
        r = load_movielens_tfds(tmp_path)
    # sorted by (user, movie) numerically: (1,2) (1,31) (2,10) (10,2)
    assert r.user.tolist() == [0, 0, 1, 2] and r.item.tolist() == [0, 2, 1, 0]
    assert r.rating.tolist() == [3.0, 2.5, 4.0, 5.0] and (r.n_users, r.n_items) == (3, 3)


def test_tfds_unprepared_data_dir_is_a_data_error(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(DataError, match=f"{re.escape(str(tmp_path))}: no TFDS 'cifar10' split 'train' readable"):
        load_cifar10_tfds(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        load_movielens_tfds(tmp_path / "nowhere")


def test_tfds_missing_package_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    with pytest.raises(ImportError, match=r"pip install 'divjax\[tfds\]'"):
        load_cifar10_tfds(tmp_path)
