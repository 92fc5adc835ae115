"""Named random streams derived from the run's seed.

Each consumer of randomness (weight init, data order, the dt draw, the estimator's random
signs) has its own stream, so changing one (say the dt distribution) never changes another:
seed k gives the same initial weights and data order in every condition, and conditions
compare pairwise by seed.
"""

from __future__ import annotations

import zlib

import jax
import numpy as np


def _stream_id(stream: str) -> int:
    return zlib.crc32(stream.encode()) & 0x7FFFFFFF


def key(seed: int, stream: str) -> jax.Array:
    """A JAX key for ``stream`` (``"init"``, ``"estimator"``, ``"dt/lognormal"``, …)."""
    return jax.random.fold_in(jax.random.key(seed), _stream_id(stream))


def numpy_rng(seed: int, stream: str, *more: int) -> np.random.Generator:
    """A numpy generator for ``stream``, further keyed by ``more`` (e.g. the epoch)."""
    return np.random.default_rng([seed, _stream_id(stream), *more])
