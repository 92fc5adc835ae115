"""Datasets by name: where their files live, how they are verified and read.

Resolution of a dataset's files, in order:

1. ``dataset.root=DIR``: the files are read from DIR (no download); missing ones are named.
2. shipped with the package (MNIST): read from the installed package, no network needed.
3. otherwise the cache ``$HETS_EP_CACHE`` (default ``~/.cache/hets-ep``)/<name>/; missing
   files are downloaded from their official location and verified by SHA-256.

Every file is checked against its SHA-256 on every load.
"""

from __future__ import annotations

import dataclasses
import os
from importlib import resources
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from hets_ep.data import formats
from hets_ep.data.download import DownloadError, fetch, verify
from hets_ep.errors import DataError


@dataclasses.dataclass(frozen=True)
class RemoteFile:
    name: str
    sha256: str
    urls: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Source:
    files: tuple[RemoteFile, ...]
    read: Callable[[dict[str, Path]], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]
    input_shape: tuple[int, ...]   # one image (H, W, C)
    classes: int
    train_size: int
    shipped: bool = False


def _idx_files(base_urls: tuple[str, ...], sums: dict[str, str]) -> tuple[RemoteFile, ...]:
    return tuple(RemoteFile(name, sha, tuple(u + name for u in base_urls)) for name, sha in sums.items())


def _read_idx_dataset(paths: dict[str, Path]):
    x_train, y_train = formats.read_idx_pair(paths["train-images-idx3-ubyte.gz"],
                                             paths["train-labels-idx1-ubyte.gz"], (28, 28))
    x_test, y_test = formats.read_idx_pair(paths["t10k-images-idx3-ubyte.gz"],
                                           paths["t10k-labels-idx1-ubyte.gz"], (28, 28))
    return x_train, y_train, x_test, y_test


def _read_cifar10(paths: dict[str, Path]):
    archive = paths["cifar-10-binary.tar.gz"]
    x_train, y_train = formats.read_cifar_tar(archive, [f"data_batch_{i}.bin" for i in range(1, 6)])
    x_test, y_test = formats.read_cifar_tar(archive, ["test_batch.bin"])
    return x_train, y_train, x_test, y_test


SOURCES: dict[str, Source] = {
    "mnist": Source(
        _idx_files(
            ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
            {
                "train-images-idx3-ubyte.gz": "d2cebd02927d553943b2679536bf602ec0cdcb6555ad87dda5d640e1d425faaf",
                "train-labels-idx1-ubyte.gz": "2a107763ddf1eef92815bfbb1b855b662a7228add9dfab29de697c644d666cda",
                "t10k-images-idx3-ubyte.gz": "4e612d6003de73386763f2c35c044ab376e830da80adb2347651a1f182f103a1",
                "t10k-labels-idx1-ubyte.gz": "909a5aeb9fcec3f171b427c45622a55f69dc15dd80bd0624413cbfbe12553c1c",
            },
        ),
        _read_idx_dataset,
        (28, 28, 1), 10, 60000,
        shipped=True,
    ),
    "fashion_mnist": Source(
        _idx_files(
            ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
            {
                "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
                "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
                "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
                "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
            },
        ),
        _read_idx_dataset,
        (28, 28, 1), 10, 60000,
    ),
    "kmnist": Source(
        _idx_files(
            ("https://codh.rois.ac.jp/kmnist/dataset/kmnist/",),
            {
                "train-images-idx3-ubyte.gz": "51467d22d8cc72929e2a028a0428f2086b092bb31cfb79c69cc0a90ce135fde4",
                "train-labels-idx1-ubyte.gz": "e38f9ebcd0f3ebcdec7fc8eabdcdaef93bb0df8ea12bee65224341c8183d8e17",
                "t10k-images-idx3-ubyte.gz": "edd7a857845ad6bb1d0ba43fe7e794d164fe2dce499a1694695a792adfac43c5",
                "t10k-labels-idx1-ubyte.gz": "20bb9a0ef54c7db3efc55a92eef5582c109615df22683c380526788f98e42a1c",
            },
        ),
        _read_idx_dataset,
        (28, 28, 1), 10, 60000,
    ),
    "cifar10": Source(
        (RemoteFile("cifar-10-binary.tar.gz", "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
                    ("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",)),),
        _read_cifar10,
        (32, 32, 3), 10, 50000,
    ),
}
NAMES = (*SOURCES, "npz")


def cache_dir() -> Path:
    return Path(os.environ.get("HETS_EP_CACHE", Path.home() / ".cache" / "hets-ep"))


def _shipped_dir(name: str) -> Path:
    return Path(str(resources.files("hets_ep.data") / name))


def locate(name: str, root: Optional[str] = None) -> dict[str, Path]:
    """Paths of ``name``'s files, verified; downloads into the cache what is missing there."""
    source = SOURCES[name]
    if root is not None:
        folder, remedy = Path(root).expanduser(), "replace it with a good copy"
        missing = [f.name for f in source.files if not (folder / f.name).exists()]
        if missing:
            raise DataError(f"dataset.root={folder} lacks {', '.join(missing)}; place the files there "
                            f"(from {source.files[0].urls[0].rsplit('/', 1)[0]}/) or drop dataset.root")
    elif source.shipped:
        folder, remedy = _shipped_dir(name), "reinstall hets-ep"
    else:
        folder, remedy = cache_dir() / name, "delete it and run again to download it afresh"
        failed = []
        for f in source.files:
            if not (folder / f.name).exists():
                try:
                    fetch(f.urls, folder / f.name, f.sha256)
                except DownloadError as err:
                    failed.append((f, err))
        if failed:
            raise DataError(
                f"could not download {len(failed)} of the {len(source.files)} {name} files ({failed[0][1].reason}). If "
                f"this machine is offline, fetch them elsewhere and place them in {folder} (or pass dataset.root=DIR): "
                + "; ".join(f"{f.name} from {f.urls[0]}" for f, _ in failed))
    paths = {f.name: folder / f.name for f in source.files}
    for f in source.files:
        verify(paths[f.name], f.sha256, remedy)
    return paths


def describe(name: str, root: Optional[str] = None, path: Optional[str] = None) -> tuple[tuple[int, ...], int, int]:
    """``(image shape, classes, training examples)`` of a dataset without reading it (a user's
    npz file is read: its arrays are the only record of its shape)."""
    if name != "npz":
        source = SOURCES[name]
        return source.input_shape, source.classes, source.train_size
    x_train, y_train, _, y_test = read(name, root, path)
    return tuple(x_train.shape[1:]), int(max(y_train.max(), y_test.max())) + 1, len(x_train)


def read(name: str, root: Optional[str] = None, path: Optional[str] = None):
    """Raw arrays ``x_train, y_train, x_test, y_test`` (images ``(N, H, W, C)``)."""
    if name == "npz":
        arrays = formats.read_npz(Path(path).expanduser())
        return arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"]
    paths = locate(name, root)
    fingerprint = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths.values())
    if fingerprint not in _READ_CACHE:
        _READ_CACHE.clear()  # one dataset at a time: sweeps in one process reuse it
        _READ_CACHE[fingerprint] = SOURCES[name].read(paths)
    return _READ_CACHE[fingerprint]


# The parsed arrays of the last dataset read, keyed by its files' paths, sizes and mtimes. The
# files are still verified on every read; only parsing is skipped.
_READ_CACHE: dict[tuple, tuple] = {}
