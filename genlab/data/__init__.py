"""Datasets (embedded, TFDS, `.npz`) and deterministic batching."""

from genlab.data.embedded import EMBEDDED_BUILDERS, Digits
from genlab.data.pipeline import (
  Batch,
  Batcher,
  ResidentSplit,
  epoch_permutation,
  eval_batches,
  scale_values,
)
from genlab.data.sources import Dataset, Split, load_dataset

__all__ = [
  "EMBEDDED_BUILDERS",
  "Batch",
  "Batcher",
  "Dataset",
  "Digits",
  "ResidentSplit",
  "Split",
  "epoch_permutation",
  "eval_batches",
  "load_dataset",
  "scale_values",
]
