"""Datasets: registry, readers, download and verification, batching.

The batching names load on first use (PEP 562), so the registry alone (``hets_ep.data.registry``,
what the schema reads) loads no JAX."""

from __future__ import annotations

__all__ = ["Dataset", "augment", "eval_batches", "load_dataset", "train_batches", "validation_split"]


def __getattr__(name: str):
    if name in __all__:
        from hets_ep.data import batching

        return getattr(batching, name)
    raise AttributeError(f"module 'hets_ep.data' has no attribute {name!r}")
