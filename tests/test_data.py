"""Datasets: reading, verification, download, corrupt files, user .npz files."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.server
import io
import shutil
import socket
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

from conftest import MNIST_ROOT
from hets_ep.data import augment, formats, load_dataset, registry, train_batches, validation_split
from hets_ep.data.download import fetch
from hets_ep.errors import ConfigError, DataError

FILES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
         "t10k-labels-idx1-ubyte.gz"]


def test_mnist_statistics(mnist):
    assert mnist.x_train.shape == (60000, 28, 28, 1) and mnist.x_test.shape == (10000, 28, 28, 1)
    assert np.bincount(mnist.y_train).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert mnist.x_train.mean() * 255 == pytest.approx(33.318, abs=1e-3)
    assert mnist.classes == 10


def test_shipped_mnist_is_the_original():
    paths = registry.locate("mnist")
    assert paths["train-images-idx3-ubyte.gz"].parent.name == "mnist"
    for name in FILES:
        assert paths[name].read_bytes() == (MNIST_ROOT / name).read_bytes()


def test_subset_and_deterministic_shuffle():
    d = load_dataset("mnist", root=str(MNIST_ROOT), subset=500)
    assert len(d.x_train) == 500 and len(d.x_test) == 10000
    a, b, c = train_batches(500, 64, 0, 3), train_batches(500, 64, 0, 3), train_batches(500, 64, 0, 4)
    assert len(a) == 7 and all(len(i) == 64 for i in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(np.concatenate(a), np.concatenate(c))


@pytest.fixture
def mnist_copy(tmp_path):
    for name in FILES:
        shutil.copy(MNIST_ROOT / name, tmp_path / name)
    return tmp_path


def test_truncated_file_in_root_is_named(mnist_copy):
    path = mnist_copy / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz: SHA-256 mismatch"):
        load_dataset("mnist", root=str(mnist_copy))


def test_missing_file_in_root_is_named(mnist_copy):
    (mnist_copy / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataError, match="lacks t10k-images-idx3-ubyte.gz"):
        load_dataset("mnist", root=str(mnist_copy))


def _gz(path: Path, payload: bytes) -> Path:
    path.write_bytes(gzip.compress(payload))
    return path


def _idx(dims: tuple[int, ...], code: int = 0x08, payload: bytes | None = None) -> bytes:
    header = bytes([0, 0, code, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)
    return header + (payload if payload is not None else bytes(int(np.prod(dims))))


@pytest.mark.parametrize("case, message", [
    ("truncated_gzip", "cannot decompress"),
    ("wrong_magic", "bad magic"),
    ("short_payload", "payload is"),
    ("empty", "bad magic number empty"),
    ("directory", "is a directory"),
    ("wrong_ndim", "has 1 dimensions, expected 3"),
])
def test_corrupt_idx_files(tmp_path, case, message):
    path = tmp_path / "images.gz"
    if case == "truncated_gzip":
        path.write_bytes(gzip.compress(_idx((5, 28, 28)))[:40])
    elif case == "wrong_magic":
        _gz(path, b"\x00\x01\x08\x03" + bytes(100))
    elif case == "short_payload":
        _gz(path, _idx((5, 28, 28), payload=bytes(100)))
    elif case == "empty":
        _gz(path, b"")
    elif case == "directory":
        path.mkdir()
    elif case == "wrong_ndim":
        _gz(path, _idx((5,)))
    with pytest.raises(DataError, match=message) as err:
        formats.read_idx(path, 3)
    assert str(path) in str(err.value)


def test_image_label_count_mismatch_and_wrong_size(tmp_path):
    images, labels = _gz(tmp_path / "i.gz", _idx((5, 28, 28))), _gz(tmp_path / "l.gz", _idx((4,)))
    with pytest.raises(DataError, match="has 5 images but .* has 4 labels"):
        formats.read_idx_pair(images, labels, (28, 28))
    small = _gz(tmp_path / "s.gz", _idx((4, 20, 20)))
    with pytest.raises(DataError, match="images are 20×20, expected 28×28"):
        formats.read_idx_pair(small, labels, (28, 28))


class _Server:
    """Serves a folder over HTTP on loopback."""

    def __init__(self, folder: Path):
        handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(folder), **k)  # noqa: E731
        http.server.SimpleHTTPRequestHandler.log_message = lambda *a: None
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


@pytest.fixture
def server(mnist_copy):
    s = _Server(mnist_copy)
    yield s
    s.close()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_download_verifies_and_moves_into_place(server, tmp_path):
    dest = tmp_path / "cache" / "train-labels-idx1-ubyte.gz"
    fetch((server.url + dest.name,), dest, _sha(MNIST_ROOT / dest.name))
    assert dest.read_bytes() == (MNIST_ROOT / dest.name).read_bytes()


def test_download_with_wrong_checksum_leaves_nothing(server, tmp_path):
    dest = tmp_path / "cache" / "train-labels-idx1-ubyte.gz"
    with pytest.raises(DataError, match="SHA-256"):
        fetch((server.url + dest.name,), dest, "0" * 64)
    assert not dest.parent.exists()  # the folder made for the download goes with it
    dest.parent.mkdir()
    (dest.parent / "other.gz").write_bytes(b"kept")
    with pytest.raises(DataError, match="SHA-256"):
        fetch((server.url + dest.name,), dest, "0" * 64)
    assert [p.name for p in dest.parent.iterdir()] == ["other.gz"]  # a folder that was there stays


def test_offline_error_says_where_to_put_the_file(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    dest = tmp_path / "cache" / "x.gz"
    with pytest.raises(DataError, match="offline") as err:
        fetch((f"http://127.0.0.1:{port}/x.gz",), dest, "0" * 64, timeout=5)
    assert str(dest) in str(err.value) and not dest.exists()


def test_offline_a_dataset_names_every_missing_file(tmp_path, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sums = {name: "0" * 64 for name in FILES}
    monkeypatch.setitem(registry.SOURCES, "fashion_mnist", registry.Source(
        registry._idx_files((f"http://127.0.0.1:{port}/",), sums), registry._read_idx_dataset, (28, 28, 1), 10, 60000))
    monkeypatch.setenv("HETS_EP_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DataError, match="could not download 4 of the 4 fashion_mnist files") as err:
        load_dataset("fashion_mnist")
    assert all(f"{name} from http://127.0.0.1:{port}/{name}" in str(err.value) for name in FILES)
    assert str(tmp_path / "cache" / "fashion_mnist") in str(err.value)
    assert not (tmp_path / "cache" / "fashion_mnist").exists()  # no empty folder left behind


def test_test_subset_keeps_the_first_test_examples():
    d = load_dataset("mnist", root=str(MNIST_ROOT), subset=100, test_subset=250)
    full = load_dataset("mnist", root=str(MNIST_ROOT), subset=100)
    assert len(d.x_test) == 250 and np.array_equal(d.y_test, full.y_test[:250])


def test_validation_split_is_per_seed_and_leaves_the_rest_for_training():
    train, val = validation_split(1000, 100, seed=3)
    assert len(val) == 100 and len(train) == 900 and not set(train) & set(val)
    assert np.array_equal(val, validation_split(1000, 100, seed=3)[1])
    assert not np.array_equal(val, validation_split(1000, 100, seed=4)[1])
    assert np.array_equal(validation_split(1000, 0, seed=3)[0], np.arange(1000))
    with pytest.raises(ConfigError, match="dataset.val_size: 1000 leaves none of the 1000"):
        validation_split(1000, 1000, seed=0)


def test_dataset_downloads_into_cache_on_first_use(server, tmp_path, monkeypatch):
    """A registry entry served over HTTP with real bytes: download, verify, read; then offline reuse."""
    sums = {name: _sha(MNIST_ROOT / name) for name in FILES}
    source = registry.Source(registry._idx_files((server.url,), sums), registry._read_idx_dataset, (28, 28, 1), 10,
                             60000)
    monkeypatch.setitem(registry.SOURCES, "fashion_mnist", source)
    monkeypatch.setenv("HETS_EP_CACHE", str(tmp_path / "cache"))
    d = load_dataset("fashion_mnist", subset=100)
    assert d.x_train.shape == (100, 28, 28, 1) and len(d.y_test) == 10000
    assert sorted(p.name for p in (tmp_path / "cache" / "fashion_mnist").iterdir()) == sorted(FILES)
    server.close()
    assert len(load_dataset("fashion_mnist", subset=10).x_train) == 10  # from the cache
    cached = tmp_path / "cache" / "fashion_mnist" / FILES[0]
    cached.write_bytes(cached.read_bytes()[:-10])
    with pytest.raises(DataError, match=f"{FILES[0]}: SHA-256 mismatch.*delete it"):
        load_dataset("fashion_mnist")


def test_cifar_binary_reader(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(7, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, size=7, dtype=np.uint8)
    records = np.concatenate([labels[:, None], images.reshape(7, -1)], axis=1).tobytes()
    archive = tmp_path / "cifar-10-binary.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-bin/test_batch.bin")
        info.size = len(records)
        tar.addfile(info, io.BytesIO(records))
    x, y = formats.read_cifar_tar(archive, ["test_batch.bin"])
    assert x.shape == (7, 32, 32, 3)
    np.testing.assert_array_equal(x, images.transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(y, labels)
    with pytest.raises(DataError, match="lacks"):
        formats.read_cifar_tar(archive, ["data_batch_1.bin"])


def _npz(path: Path, **over):
    arrays = dict(x_train=np.zeros((20, 8, 8), np.uint8), y_train=np.arange(20) % 3,
                  x_test=np.zeros((5, 8, 8), np.uint8), y_test=np.arange(5) % 3)
    arrays.update(over)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def test_npz_dataset(tmp_path):
    d = load_dataset("npz", path=str(_npz(tmp_path / "d.npz")))
    assert d.x_train.shape == (20, 8, 8, 1) and d.classes == 3


@pytest.mark.parametrize("over, message", [
    (dict(y_test=None), "missing arrays y_test"),
    (dict(x_train=np.zeros((20, 8), np.uint8)), "expected \\(N, H, W\\)"),
    (dict(y_train=np.arange(19)), "20 samples but y_train has 19"),
    (dict(y_train=np.linspace(0, 1, 20)), "1-D integer array"),
    (dict(y_train=-np.arange(20)), "negative labels"),
    (dict(x_test=np.zeros((5, 9, 9), np.uint8)), "differ in shape"),
    (dict(x_train=np.full((20, 8, 8), np.nan, np.float32)), "NaN"),
    (dict(x_train=np.zeros((20, 8, 8), np.int64)), "dtype int64"),
])
def test_npz_validation(tmp_path, over, message):
    with pytest.raises(DataError, match=message):
        load_dataset("npz", path=str(_npz(tmp_path / "d.npz", **over)))


def test_npz_not_a_zip_names_the_format_and_never_pickle(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip, and more than the few bytes numpy sniffs for a pickle")
    with pytest.raises(DataError, match="bad.npz: not an .npz archive") as err:
        load_dataset("npz", path=str(bad))
    assert "pickle" not in str(err.value)


def test_augment_crops_and_flips_deterministically():
    x = np.arange(2 * 8 * 8 * 3, dtype=np.float32).reshape(2, 8, 8, 3)
    a = augment(x, np.random.default_rng(0), pad=2)
    b = augment(x, np.random.default_rng(0), pad=2)
    assert a.shape == x.shape and np.array_equal(a, b)
    assert not np.array_equal(a, x)
    # Every output row is a (possibly flipped, shifted) crop of the zero-padded input.
    assert set(np.unique(a)) <= set(np.unique(x)) | {0.0}


def _idx_gz(path: Path, array: np.ndarray) -> Path:
    """``array`` (uint8) as a gzipped IDX file (magic: 0, 0, dtype 0x08, rank; then big-endian dims)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(gzip.compress(header + array.tobytes()))
    return path


def test_kmnist_is_read_and_verified_from_its_four_idx_files(tmp_path, monkeypatch):
    """KMNIST cannot be downloaded here: files made by the test, verified against their own
    SHA-256 in place of the published ones, are read as the dataset; a file that differs from its
    checksum is refused by name."""
    published = registry.SOURCES["kmnist"]
    assert [f.name for f in published.files] == FILES
    assert all(f.urls == (f"https://codh.rois.ac.jp/kmnist/dataset/kmnist/{f.name}",) for f in published.files)
    assert published.files[0].sha256 == "51467d22d8cc72929e2a028a0428f2086b092bb31cfb79c69cc0a90ce135fde4"
    rng = np.random.default_rng(0)
    arrays = {FILES[0]: rng.integers(0, 256, (30, 28, 28), dtype=np.uint8), FILES[1]: np.arange(30, dtype=np.uint8) % 10,
              FILES[2]: rng.integers(0, 256, (12, 28, 28), dtype=np.uint8), FILES[3]: np.arange(12, dtype=np.uint8) % 10}
    made = {name: _idx_gz(tmp_path / name, a) for name, a in arrays.items()}
    files = tuple(registry.RemoteFile(f.name, _sha(made[f.name]), f.urls) for f in published.files)
    monkeypatch.setitem(registry.SOURCES, "kmnist", dataclasses.replace(published, files=files))
    d = load_dataset("kmnist", root=str(tmp_path))
    assert d.x_train.shape == (30, 28, 28, 1) and d.x_test.shape == (12, 28, 28, 1) and d.classes == 10
    np.testing.assert_array_equal(d.x_train[..., 0], arrays[FILES[0]] / np.float32(255))
    np.testing.assert_array_equal(d.y_test, arrays[FILES[3]])
    made[FILES[2]].write_bytes(made[FILES[2]].read_bytes()[:-5])
    with pytest.raises(DataError, match=f"{FILES[2]}: SHA-256 mismatch"):
        load_dataset("kmnist", root=str(tmp_path))
