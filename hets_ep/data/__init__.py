"""Datasets: registry, readers, download and verification, batching."""

from hets_ep.data.batching import Dataset, augment, eval_batches, load_dataset, train_batches, validation_split

__all__ = ["Dataset", "augment", "eval_batches", "load_dataset", "train_batches", "validation_split"]
