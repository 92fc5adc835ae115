"""In-memory datasets, normalisation, deterministic shuffling and augmentation."""

from __future__ import annotations

import dataclasses
from typing import Iterator, Optional

import numpy as np

from hets_ep import seeding
from hets_ep.data import registry
from hets_ep.errors import ConfigError



@dataclasses.dataclass
class Dataset:
    """Images ``(N, H, W, C)`` float32 and integer labels ``(N,)``."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.x_train.shape[1:]


def _normalise(x_train: np.ndarray, x_test: np.ndarray, how: str):
    def unit(x):
        return x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)

    x_train, x_test = unit(x_train), unit(x_test)
    if how == "standard":
        mean = x_train.mean(axis=(0, 1, 2), keepdims=True)
        std = x_train.std(axis=(0, 1, 2), keepdims=True) + 1e-7
        x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    return x_train, x_test


def load_dataset(name: str, root: Optional[str] = None, path: Optional[str] = None, subset: Optional[int] = None,
                 normalize: str = "unit", test_subset: Optional[int] = None) -> Dataset:
    """Read, verify and normalise a dataset; ``subset`` (``test_subset``) keeps the first N
    training (test) examples.

    ``normalize``: ``unit`` scales uint8 pixels to [0, 1] (the range EP's rates live in),
    ``standard`` then standardises each channel with the training set's mean and std,
    ``none`` leaves values as stored (as float32).
    """
    x_train, y_train, x_test, y_test = registry.read(name, root, path)
    if subset is not None:
        x_train, y_train = x_train[:subset], y_train[:subset]
    if test_subset is not None:
        x_test, y_test = x_test[:test_subset], y_test[:test_subset]
    x_train, x_test = _normalise(x_train, x_test, normalize)
    classes = int(max(y_train.max(), y_test.max())) + 1
    return Dataset(name, x_train, y_train.astype(np.int32), x_test, y_test.astype(np.int32), classes)


def validation_split(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train, val)`` indices: ``size`` of ``0..n-1`` held out for validation, drawn from the
    seed's own ``val`` stream (the same in every condition at that seed; the data-order and
    weight streams are untouched). ``size = 0`` keeps every example for training."""
    if size == 0:
        return np.arange(n), np.arange(0)
    if size >= n:
        raise ConfigError(f"dataset.val_size: {size} leaves none of the {n} training examples to train on")
    held = seeding.numpy_rng(seed, "val").permutation(n)
    return np.sort(held[size:]), np.sort(held[:size])


def train_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """Index arrays of one epoch's full batches, shuffled deterministically per (seed, epoch).

    The last ``n mod batch_size`` examples of the permutation are skipped, so every batch has
    one shape and the training step compiles once.
    """
    order = seeding.numpy_rng(seed, "data", epoch).permutation(n)
    return [order[i: i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]


def eval_batches(n: int, batch_size: int) -> Iterator[tuple[np.ndarray, int]]:
    """``(indices, valid)`` covering ``0..n-1`` in fixed-size batches; the last is padded."""
    for start in range(0, n, batch_size):
        idx = np.arange(start, start + batch_size)
        valid = min(batch_size, n - start)
        yield np.minimum(idx, n - 1), valid


def augment(x: np.ndarray, rng: np.random.Generator, pad: int = 4) -> np.ndarray:
    """Random crop (zero-pad by ``pad``, crop back) and horizontal flip, per image."""
    n, h, w, _ = x.shape
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    dy, dx = rng.integers(0, 2 * pad + 1, size=(2, n))
    rows = dy[:, None] + np.arange(h)
    cols = dx[:, None] + np.arange(w)
    out = padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
    flip = rng.random(n) < 0.5
    out[flip] = out[flip, :, ::-1]
    return out
