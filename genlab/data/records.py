"""Training splits read example by example from a random-access source of records.

For data that should not be converted whole into memory: an ArrayRecord file of
encoded images (`grain.sources.ArrayRecordDataSource`), a TFDS dataset prepared as
array_record (`tfds.data_source(name, split=...)`), or any sequence with `len` and
integer indexing. `RecordSplit(source, decode)` gives its examples as dicts of arrays
(`image`, optional `label`, `target`), decoded one at a time when a batch asks for
them; `genlab.data.Batcher` takes it in place of a split of arrays and builds the
same batches from it, in grain worker processes when asked (`workers`).

genlab's own record format, written by `write_image_records` (what
`scripts/benchmark_input.py` generates): one msgpack map per example,
`{"png": bytes, "label": int}`, the image PNG-encoded (uint8, (H, W, C)).
"""

from __future__ import annotations

import bisect
import io
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import msgpack
import numpy as np
from PIL import Image

from genlab.errors import DataError

Example = dict[str, np.ndarray]


class RecordSplit(Mapping):
  """A split whose examples are decoded from `source[i]` on demand.

  It reads like a split of arrays: `split["image"]` is a `RecordColumn` with `len`,
  `shape`, `dtype` and row indexing (`column[rows]` decodes those rows only), and
  `np.asarray(column)` decodes every row (what a whole-split statistic needs).
  `split.rows(rows)` decodes each row once for all keys.

  Args:
    source: random access to records (`len(source)`, `source[i]`); picklable, since
      grain worker processes receive it (grain's and TFDS's array_record sources are).
    decode: record → example dict of arrays (`image` required); `None` when the
      source already gives such dicts (`tfds.data_source`).
    files: the files the source reads, if any: they identify it (`fingerprint`).
  """

  def __init__(
    self,
    source: Sequence[Any],
    decode: Callable[[Any], Example] | None = None,
    *,
    files: Sequence[str] = (),
  ):
    self.source = source
    self.decode = decode
    self.files = [str(f) for f in files]
    self.num_examples = len(source)
    if self.num_examples == 0:
      raise ValueError("the record source is empty")
    first = self.example(0)
    if "image" not in first:
      raise ValueError(f"a decoded record has no 'image' (it has {sorted(first)})")
    self._first = {key: np.asarray(value) for key, value in first.items()}

  def __getitem__(self, key: str) -> RecordColumn:
    if key not in self._first:
      raise KeyError(key)
    return RecordColumn(self, key)

  def __iter__(self) -> Iterator[str]:
    return iter(sorted(self._first))

  def __len__(self) -> int:  # A mapping's: its keys. Examples: `len(split["image"])`.
    return len(self._first)

  def example(self, index: int) -> Example:
    """Example `index`, read and decoded. A record that cannot be read (a damaged file: the
    ArrayRecord reader's `Corrupted Riegeli/records file: chunk data hash mismatch`, an
    unreadable disk) or decoded is a `DataError` naming the record and its file, in one
    line, wherever it is read: a grain worker process, a thread, a resident split's load."""
    index = int(index)
    try:
      record = self.source[index]
      if self.decode is None:
        return dict(record)
    except Exception as e:
      raise DataError(f"{self._where(index)} cannot be read: {_one_line(e)}") from e
    try:
      return self.decode(record)
    except Exception as e:  # A damaged record: say which, in one line.
      raise DataError(f"{self._where(index)} cannot be decoded: {_one_line(e)}") from e

  def _where(self, index: int) -> str:
    """`record I of FILE`: the file and the record's position in it where the source says
    which (grain's and array_record's sources keep each file's count; a private field, so
    without it every file is named), else the split's files."""
    paths = getattr(self.source, "_paths", None)
    ends = getattr(self.source, "_prefix_sums", None)
    if isinstance(paths, list) and isinstance(ends, list) and 0 < len(paths) == len(ends):
      k = bisect.bisect_right(ends, index)
      if k < len(paths):
        first = ends[k - 1] if k else 0
        whole = f" (record {index} of the split)" if len(paths) > 1 else ""
        return f"record {index - first} of {paths[k]}{whole}"
    if not self.files:
      return f"record {index}"
    if len(self.files) <= 3:
      return f"record {index} of {', '.join(self.files)}"
    return f"record {index} of the {len(self.files)} files {self.files[0]}, ..."

  def rows(self, rows: Iterable[int]) -> dict[str, np.ndarray]:
    """The examples at `rows`, stacked per key (values as stored: no conversion)."""
    examples = [self.example(r) for r in rows]
    return {key: np.stack([np.asarray(e[key]) for e in examples]) for key in self._first}

  def fingerprint(self) -> str:
    """What identifies the records without reading them all: their files (path, size,
    modification time), else the source's type and length."""
    if self.files:
      return repr([(f, os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in self.files])
    return f"{type(self.source).__name__}:{self.num_examples}"


def _one_line(error: Exception) -> str:
  """`Type: message` of an exception, its lines joined (a one-line `genlab: error`)."""
  return f"{type(error).__name__}: " + "; ".join(str(error).split("\n"))


class RecordColumn:
  """One key of a `RecordSplit`, indexed like an array of its examples."""

  def __init__(self, split: RecordSplit, key: str):
    self.split, self.key = split, key
    first = split._first[key]
    self.shape = (split.num_examples, *first.shape)
    self.dtype = first.dtype
    self.ndim = len(self.shape)

  def __len__(self) -> int:
    return self.split.num_examples

  def __getitem__(self, rows) -> np.ndarray:
    if isinstance(rows, (int, np.integer)):
      return np.asarray(self.split.example(rows)[self.key])
    indices = np.arange(len(self))[rows]  # Slices, boolean masks and index arrays alike.
    return np.stack([np.asarray(self.split.example(i)[self.key]) for i in indices])

  def __array__(self, dtype=None, copy=None) -> np.ndarray:
    del copy
    values = self[:]
    return values if dtype is None else values.astype(dtype)


def encode_image_example(image: np.ndarray, label: int | None = None) -> bytes:
  """One record of genlab's format: a uint8 (H, W, C) image as PNG, and its label."""
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
    raise ValueError(f"images must be uint8 (H, W, 1|3|4), got {image.dtype} {image.shape}")
  buffer = io.BytesIO()
  Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, format="PNG")
  return msgpack.packb({"png": buffer.getvalue(), "label": None if label is None else int(label)})


def decode_image_example(record: bytes) -> Example:
  """The example of one record of genlab's format: `image` uint8 (H, W, C), `label` int32."""
  fields = msgpack.unpackb(record)
  image = np.asarray(Image.open(io.BytesIO(fields["png"])))
  example = {"image": image[..., None] if image.ndim == 2 else image}
  if fields.get("label") is not None:
    example["label"] = np.int32(fields["label"])
  return example


def write_image_records(path: str, images: Iterable[np.ndarray], labels=None) -> int:
  """Writes `images` (uint8 (H, W, C) each) and optional `labels` to one ArrayRecord file
  in genlab's record format; returns how many were written."""
  from array_record.python.array_record_module import ArrayRecordWriter

  writer = ArrayRecordWriter(str(path), "group_size:1")
  count = 0
  try:
    for i, image in enumerate(images):
      writer.write(encode_image_example(image, None if labels is None else labels[i]))
      count += 1
  finally:
    writer.close()
  return count


def image_records(paths: str | Sequence[str]) -> RecordSplit:
  """A `RecordSplit` of ArrayRecord files in genlab's record format (grain's source)."""
  import grain

  paths = [paths] if isinstance(paths, str) else list(paths)
  try:
    source = grain.sources.ArrayRecordDataSource(paths)
  except Exception as e:  # A damaged header or footer, a foreign file: say which file.
    raise DataError(f"cannot open {_first_unreadable(paths)} as ArrayRecord: {_one_line(e)}") from e
  return RecordSplit(source, decode_image_example, files=paths)


def _first_unreadable(paths: Sequence[str]) -> str:
  """The first of `paths` that grain's ArrayRecord source cannot open on its own, else all."""
  import grain

  for path in paths if len(paths) > 1 else ():
    try:
      grain.sources.ArrayRecordDataSource([path])
    except Exception:
      return path
  return ", ".join(paths)


__all__ = [
  "RecordColumn",
  "RecordSplit",
  "decode_image_example",
  "encode_image_example",
  "image_records",
  "write_image_records",
]
