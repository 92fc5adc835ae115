"""Readers for the on-disk formats: IDX (MNIST family), CIFAR-10 binary, user ``.npz``.

Every reader validates what it reads and raises :class:`~hets_ep.errors.DataError` naming the
file. Nothing here unpickles: CIFAR-10 is read from its binary version.
"""

from __future__ import annotations

import gzip
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np

from hets_ep.errors import DataError

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_bytes(path: Path) -> bytes:
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a file")
    try:
        raw = path.read_bytes()
        return gzip.decompress(raw) if path.suffix == ".gz" else raw
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path}: cannot decompress ({err}); the file is truncated or corrupt") from None


def read_idx(path: Path, expect_ndim: int) -> np.ndarray:
    """An IDX array (optionally gzip-compressed) with ``expect_ndim`` dimensions."""
    data = _read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number {data[:4].hex() or 'empty'})")
    ndim = data[3]
    if ndim != expect_ndim:
        raise DataError(f"{path}: IDX file has {ndim} dimensions, expected {expect_ndim}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        raise DataError(f"{path}: IDX payload is {len(data)} bytes, expected {expected} for shape {shape}")
    return np.frombuffer(data, dtype, offset=header).reshape(shape)


def read_idx_pair(images: Path, labels: Path, image_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, H, W, 1)`` uint8 and labels ``(N,)`` int32 from two IDX files."""
    x, y = read_idx(images, 3), read_idx(labels, 1)
    if x.shape[1:] != image_shape:
        raise DataError(f"{images}: images are {x.shape[1]}×{x.shape[2]}, expected {image_shape[0]}×{image_shape[1]}")
    if len(x) != len(y):
        raise DataError(f"{images} has {len(x)} images but {labels} has {len(y)} labels")
    return x[..., None], y.astype(np.int32)


CIFAR_RECORD = 1 + 32 * 32 * 3


def read_cifar_tar(path: Path, members: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 binary batches from the ``.tar.gz``: images ``(N, 32, 32, 3)``, labels ``(N,)``."""
    try:
        with tarfile.open(path, "r:gz") as tar:
            chunks = []
            for name in members:
                member = tar.getmember(f"cifar-10-batches-bin/{name}")
                chunks.append(np.frombuffer(tar.extractfile(member).read(), np.uint8))
    except KeyError as err:
        raise DataError(f"{path}: archive lacks {err}; is this the CIFAR-10 binary version?") from None
    except (OSError, EOFError, tarfile.TarError, zlib.error) as err:
        raise DataError(f"{path}: cannot read archive ({err}); the file is truncated or corrupt") from None
    raw = np.concatenate(chunks)
    if raw.size % CIFAR_RECORD:
        raise DataError(f"{path}: batch size {raw.size} is not a multiple of the {CIFAR_RECORD}-byte record")
    records = raw.reshape(-1, CIFAR_RECORD)
    x = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(x), records[:, 0].astype(np.int32)


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """A user dataset: ``x_train, y_train, x_test, y_test``; images ``(N, H, W[, C])``."""
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected an .npz file")
    if path.exists() and not zipfile.is_zipfile(path):
        raise DataError(f"{path}: not an .npz archive (numpy.savez writes one: np.savez(path, x_train=…, y_train=…, "
                        "x_test=…, y_test=…))")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, ValueError, zlib.error) as err:
        raise DataError(f"{path}: not a readable .npz file ({err})") from None
    keys = ("x_train", "y_train", "x_test", "y_test")
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise DataError(f"{path}: missing arrays {', '.join(missing)} (needs {', '.join(keys)})")
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim not in (3, 4):
            raise DataError(f"{path}: x_{split} has shape {x.shape}; expected (N, H, W) or (N, H, W, C)")
        if x.dtype != np.uint8 and not np.issubdtype(x.dtype, np.floating):
            raise DataError(f"{path}: x_{split} has dtype {x.dtype}; expected uint8 or float")
        if np.issubdtype(x.dtype, np.floating) and not np.all(np.isfinite(x)):
            raise DataError(f"{path}: x_{split} contains NaN or inf")
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{path}: y_{split} must be a 1-D integer array, got {y.dtype} {y.shape}")
        if len(x) != len(y) or len(x) == 0:
            raise DataError(f"{path}: x_{split} has {len(x)} samples but y_{split} has {len(y)}")
        if y.min() < 0:
            raise DataError(f"{path}: y_{split} has negative labels")
        if x.ndim == 3:
            arrays[f"x_{split}"] = x[..., None]
    if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
        raise DataError(f"{path}: train images {arrays['x_train'].shape[1:]} and test images "
                        f"{arrays['x_test'].shape[1:]} differ in shape")
    return arrays
