"""Datasets (embedded, TFDS, `.npz`) and deterministic batching."""

from genlab.data import augment
from genlab.data.embedded import EMBEDDED_BUILDERS, Digits
from genlab.data.pipeline import (
  Batch,
  Batcher,
  ResidentSplit,
  epoch_permutation,
  eval_batches,
  scale_values,
  scaled_mean,
)
from genlab.data.records import RecordSplit, image_records, write_image_records
from genlab.data.sources import Dataset, Split, load_dataset

__all__ = [
  "EMBEDDED_BUILDERS",
  "Batch",
  "Batcher",
  "Dataset",
  "Digits",
  "RecordSplit",
  "ResidentSplit",
  "Split",
  "augment",
  "epoch_permutation",
  "eval_batches",
  "image_records",
  "load_dataset",
  "scale_values",
  "scaled_mean",
  "write_image_records",
]
