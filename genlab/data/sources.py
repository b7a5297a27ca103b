"""Loading a dataset by name or path into in-memory NumPy splits.

`load_dataset(spec)` accepts, in this order:
  * a directory of ArrayRecord files in genlab's image record format
    (`genlab.data.records`): `train*.array_record` and `test*.array_record`. The
    train split stays on disk, a `RecordSplit` decoded batch by batch (streamed, in
    `data.workers` processes when asked); the test split is read into memory;
  * a path to a `.npz` file with `x_train`, `x_test` and optional `y_train`,
    `y_test`, `target_train`, `target_test` (the layout of Keras' mnist.npz);
  * the name of a dataset embedded in genlab (`digits`), prepared on first use;
  * the name of any TFDS dataset already prepared in the TFDS data dir
    (`mnist`, `fashion_mnist`, `cifar10`, ...), read TF-free with
    `tfds.data_source`. genlab never downloads: prepare it with `tfds build NAME`.

Every split is a dict of arrays: `image`, the model's input, optional `label`
(N,) and optional `target` for tasks whose output is not the input. What
`image` holds is the dataset's `modality`:
  * 'image': (N, H, W, C) pictures (and (N, H', W', C') target maps); integer
    pixels are 0..255 everywhere downstream: TFDS datasets that store another
    range (`binarized_mnist` stores 0/1) are rescaled to it on loading;
  * 'series': (N, T, D) real-valued sequences, padded, with `length` (N,);
  * 'tokens': (N, T) integer token ids, 0 the padding, with `length` (N,).
The embedded sequence sets (`genlab.data.sequences`) read their `sequence`
feature as `image` (the input role) and say their modality.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import fcntl
import hashlib
import io
import logging
import os
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from genlab.data.embedded import EMBEDDED_BUILDERS
from genlab.data.records import RecordSplit, image_records
from genlab.errors import DataError

Split = dict[str, np.ndarray]  # Or a `RecordSplit`, read alike (a records directory's train).
SPLITS = ("train", "test")
MODALITIES = ("image", "series", "tokens")
# TFDS datasets whose integer pixels do not span 0..255: the value of white.
TFDS_INTEGER_MAX = {"binarized_mnist": 1}


@dataclasses.dataclass(frozen=True)
class Dataset:
  """Train and test splits of one dataset, held in host memory (the train split may
  instead be a `RecordSplit` read from disk batch by batch).

  Attributes:
    name: what the user asked for (dataset name or `.npz` path).
    train: arrays of the train split (`image`, optional `label`, `target`).
    test: arrays of the test split, same keys as `train`.
    modality: what `image` holds: 'image', 'series' or 'tokens' (see the module doc).
  """

  name: str
  train: Split
  test: Split
  modality: str = "image"

  @property
  def image_shape(self) -> tuple[int, ...]:
    return tuple(self.train["image"].shape[1:])

  @property
  def target_shape(self) -> tuple[int, ...]:
    """Shape of what a model must output: the `target` if present, else the image."""
    return tuple(self.train.get("target", self.train["image"]).shape[1:])

  def split(self, name: str) -> Split:
    if name not in SPLITS:
      raise DataError(f"unknown split {name!r}; choose one of {SPLITS}")
    return getattr(self, name)

  def fingerprint(self) -> dict[str, str]:
    """What identifies each split's examples, so that a resumed run notices other data:
    a SHA-256 of the arrays held in memory (every key, dtype, shape and byte), or, for a
    split read from record files, of the files' paths, sizes and modification times
    (`RecordSplit.fingerprint`: the examples are not read again)."""
    out = {}
    for name in SPLITS:
      split = getattr(self, name)
      digest = hashlib.sha256()
      if isinstance(split, RecordSplit):
        digest.update(b"records:" + split.fingerprint().encode())
      else:
        for key in sorted(split):
          array = np.ascontiguousarray(split[key])
          digest.update(f"{key}:{array.dtype.str}:{array.shape};".encode())
          digest.update(array.data)
      out[name] = digest.hexdigest()[:16]
    return out


def load_dataset(
  spec: str,
  *,
  data_dir: str | None = None,
  image_key: str = "image",
  label_key: str | None = "label",
  target_key: str | None = None,
  modality: str | None = None,
  stream_train: bool = False,
) -> Dataset:
  """Loads train and test splits of `spec` (a `.npz` path or a dataset name).

  Args:
    spec: a path to a `.npz` file, or an embedded or TFDS dataset name.
    data_dir: the TFDS data dir; `None` uses TFDS' default (`$TFDS_DATA_DIR`
      or `~/tensorflow_datasets`).
    image_key: TFDS feature holding the model input.
    label_key: TFDS feature holding integer labels, if any.
    target_key: TFDS feature holding the target map, if the output is not the input.
    modality: what a `.npz`'s `x_*` hold: 'image' (default), 'series' ((N, T, D)
      floats) or 'tokens' ((N, T) integer ids); sequences may come with
      `length_train` / `length_test` (default: every step valid). Named datasets
      know their own modality.
    stream_train: for a TFDS or embedded dataset by name, keep the train split on disk, a
      `RecordSplit` over `tfds.data_source` decoded batch by batch, instead of reading it
      into memory (for datasets larger than memory). The examples are the same.

  Returns:
    The validated `Dataset`.

  Raises:
    DataError: unknown name, unprepared TFDS dataset, or unusable arrays.
  """
  if modality is not None and modality not in MODALITIES:
    raise DataError(f"unknown modality {modality!r}; choose one of {MODALITIES}")
  if os.path.isdir(spec):
    return _load_records(spec)
  if spec.endswith(".npz") or os.path.sep in spec:
    return _load_npz(spec, modality or "image")
  modality = "image"
  if spec in EMBEDDED_BUILDERS:
    _prepare_embedded(spec, data_dir)
    modality = getattr(EMBEDDED_BUILDERS[spec], "MODALITY", "image")
    if modality != "image" and image_key == "image":
      image_key = "sequence"  # The sequence sets' input feature.
  if stream_train and modality != "image":
    raise DataError(
      f"data.stream_train streams image datasets; {spec!r} holds {modality}, which is read "
      "into memory: leave data.stream_train off"
    )
  keys = {"image": image_key, "label": label_key, "target": target_key}
  keys |= {"length": "length", "start": "start"}  # Sequence sets: valid steps, series position.
  splits = {
    s: _load_tfds_split(spec, s, data_dir, keys, modality, stream=stream_train and s == "train")
    for s in SPLITS
  }
  dataset = Dataset(name=spec, modality=modality, **splits)
  _validate(dataset, source=f"TFDS dataset {spec!r}")
  return dataset


def _load_npz(path: str, modality: str = "image") -> Dataset:
  if not pathlib.Path(path).is_file():
    raise DataError(f"no such .npz file: {path}")
  try:
    with np.load(path, allow_pickle=False) as f:
      arrays = {k: f[k] for k in f.files}
  except (OSError, ValueError) as e:
    raise DataError(f"cannot read {path} as .npz: {e}") from e
  missing = [k for k in ("x_train", "x_test") if k not in arrays]
  if missing:
    raise DataError(
      f"{path} lacks the key(s) {', '.join(missing)}; a .npz dataset needs x_train and x_test "
      f"(optional y_train, y_test, target_train, target_test); it has {', '.join(sorted(arrays))}"
    )
  for prefix in ("y", "target", "length"):
    present = [f"{prefix}_{s}" in arrays for s in SPLITS]
    if any(present) and not all(present):
      raise DataError(f"{path} has only one of {prefix}_train / {prefix}_test; give both or none")
  splits = {}
  for s in SPLITS:
    x = arrays[f"x_{s}"]
    if modality == "image":
      split = {"image": _as_images(x, f"{path}: x_{s}")}
    else:  # Sequences: (N, T, D) series or (N, T) tokens, all steps valid unless told.
      split = {"image": x[..., None] if modality == "series" and x.ndim == 2 else x}
      split["length"] = arrays.get(f"length_{s}", np.full(len(x), x.shape[1] if x.ndim > 1 else 0))
    if f"y_{s}" in arrays:
      labels = arrays[f"y_{s}"]
      if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]  # (N, 1) columns, as some exports write them.
      if labels.ndim != 1:
        raise DataError(f"{path}: y_{s} has shape {labels.shape}; expected (N,) integer labels")
      split["label"] = labels
    if f"target_{s}" in arrays:
      target = arrays[f"target_{s}"]
      split["target"] = _as_images(target, f"{path}: target_{s}") if modality == "image" else target
    splits[s] = split
  dataset = Dataset(name=path, modality=modality, **splits)
  _validate(dataset, source=path)
  return dataset


def _load_records(directory: str) -> Dataset:
  """Train as a `RecordSplit` of `train*.array_record`, test as arrays of `test*...`."""
  files = {
    s: sorted(str(p) for p in pathlib.Path(directory).glob(f"{s}*.array_record")) for s in SPLITS
  }
  missing = [s for s in SPLITS if not files[s]]
  if missing:
    raise DataError(
      f"{directory} is a directory, read as ArrayRecord files of genlab's image records; it "
      f"has no {' and no '.join(f'{s}*.array_record' for s in missing)} "
      "(genlab.data.write_image_records writes them)"
    )
  try:
    train = image_records(files["train"])
    test_records = image_records(files["test"])
    test = test_records.rows(range(len(test_records["image"])))
  except Exception as e:  # A foreign or damaged file: array_record, msgpack or PIL says how.
    raise DataError(f"cannot read {directory}'s records as genlab image records: {e}") from e
  for key in ("image", "label"):
    if (key in train) != (key in test):
      raise DataError(f"{directory}: train and test records differ: only one has {key!r}")
  if train["image"].shape[1:] != test["image"].shape[1:]:
    raise DataError(
      f"{directory}: train images are {train['image'].shape[1:]}, test images "
      f"{test['image'].shape[1:]}"
    )
  return Dataset(name=directory, train=train, test=test, modality="image")


def _as_images(array: np.ndarray, what: str) -> np.ndarray:
  """(N, H, W) gains a channel axis; anything but (N, H, W[, C]) is refused."""
  if array.ndim == 3:
    array = array[..., None]
  if array.ndim != 4:
    raise DataError(f"{what} has shape {array.shape}; expected (N, H, W) or (N, H, W, C)")
  return array


def _validate(dataset: Dataset, *, source: str) -> None:
  for s in SPLITS:
    split = dataset.split(s)
    n = len(split["image"])
    if n == 0:
      raise DataError(f"{source}: the {s} split is empty")
    for key, array in split.items():
      if len(array) != n:
        raise DataError(f"{source}: {s} split has {n} images but {len(array)} {key} entries")
    if "label" in split and not np.issubdtype(split["label"].dtype, np.integer):
      raise DataError(f"{source}: {s} labels have dtype {split['label'].dtype}; expected integers")
    if dataset.modality == "image":
      _validate_images(split, source=source, s=s)
    else:
      _validate_sequences(split, source=f"{source}: {s}", modality=dataset.modality)
    if split["image"].shape[1:] != dataset.train["image"].shape[1:]:
      raise DataError(f"{source}: train and test images differ in shape")
    if set(split) != set(dataset.train):
      raise DataError(f"{source}: train and test splits carry different arrays")


def _validate_images(split: Split, *, source: str, s: str) -> None:
  """Images and target maps: uint8-like integers in [0, 255] or finite floats in [0, 1]
  (a streamed split's values are not read: its dtypes are checked)."""
  for key, array in split.items():
    if key in ("label", "length", "start"):
      continue
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
      raise DataError(f"{source}: {s} {key} has dtype {array.dtype}; expected uint8 or float")
    if isinstance(split, RecordSplit):
      continue
    if np.issubdtype(array.dtype, np.floating):
      if not np.all(np.isfinite(array)):
        raise DataError(f"{source}: {s} {key} holds NaN or Inf values")
      lo, hi = float(array.min()), float(array.max())
      if lo < 0.0 or hi > 1.0:
        raise DataError(
          f"{source}: float {s} {key} spans [{lo:.3g}, {hi:.3g}]; float images must lie in "
          "[0, 1] (or store them as uint8 in [0, 255])"
        )
    elif array.min() < 0 or array.max() > 255:
      raise DataError(f"{source}: integer {s} {key} must lie in [0, 255]")


def _validate_sequences(split: Split, *, source: str, modality: str) -> None:
  """Finite series, non-negative token ids, integer lengths within the padded length."""
  x = split["image"]
  expected_ndim = 3 if modality == "series" else 2
  if x.ndim != expected_ndim:
    raise DataError(f"{source} {modality} have shape {x.shape}; expected {expected_ndim} axes")
  if modality == "series" and not (np.issubdtype(x.dtype, np.floating) and np.isfinite(x).all()):
    raise DataError(f"{source} series must be finite floats (dtype {x.dtype})")
  if modality == "tokens" and not (np.issubdtype(x.dtype, np.integer) and x.min() >= 0):
    raise DataError(f"{source} tokens must be non-negative integers (dtype {x.dtype})")
  if "length" not in split:
    raise DataError(f"{source} {modality} need a `length` array")
  length = split["length"]
  if not np.issubdtype(length.dtype, np.integer) or length.min() < 1 or length.max() > x.shape[1]:
    raise DataError(f"{source}: lengths must be integers in [1, {x.shape[1]}]")


@contextlib.contextmanager
def _file_lock(path: pathlib.Path):
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "w") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def _prepare_embedded(name: str, data_dir: str | None) -> None:
  """Builds an embedded dataset into the TFDS data dir, once, from the data inside its
  registry package. TFDS's own messages ("Downloading and preparing dataset...", "Variant
  folder ... has no dataset_info.json") would say it downloads, which it does not: they are
  replaced by one line of genlab's."""
  with _quiet_tfds():
    builder = EMBEDDED_BUILDERS[name](data_dir=data_dir, file_format="array_record")
    # Two processes (pytest-xdist workers, several hosts) may race to prepare it.
    with _file_lock(pathlib.Path(builder.data_dir).parent / f".{name}.prepare.lock"):
      if not builder.is_prepared():
        print(
          f"genlab: building the embedded dataset {name} in {builder.data_dir} (once; from "
          "data inside an installed package, nothing is downloaded)",
          flush=True,
        )
        with contextlib.redirect_stdout(io.StringIO()):
          builder.download_and_prepare()


@contextlib.contextmanager
def _quiet_tfds():
  """TFDS's progress bars and absl warnings off, for the duration."""
  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  tfds.display_progress_bar(False)
  absl_logger.setLevel(logging.ERROR)
  try:
    yield
  finally:
    absl_logger.setLevel(level)
    tfds.display_progress_bar(True)


def _not_prepared(name: str, data_dir: str | None) -> str:
  where = data_dir or tfds.core.constants.DATA_DIR
  return (
    f"TFDS dataset {name!r} is not prepared as array_record in {where}; genlab never "
    f"downloads: run `tfds build {name} --file_format=array_record --data_dir={where}` where "
    "there is network (config.data.data_dir or TFDS_DATA_DIR picks the dir), or pass a .npz"
  )


def _load_tfds_split(
  name: str,
  split: str,
  data_dir: str | None,
  keys: dict,
  modality: str = "image",
  *,
  stream: bool = False,
) -> Split | RecordSplit:
  try:
    source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise DataError(
      f"unknown dataset {name!r}: not an existing .npz path, not embedded in genlab "
      f"({', '.join(EMBEDDED_BUILDERS)}), not a TFDS dataset"
    ) from e
  except (AssertionError, NotImplementedError, FileNotFoundError) as e:
    # Not prepared in `data_dir`, or prepared without random access (TFRecord).
    raise DataError(_not_prepared(name, data_dir)) from e
  except (ValueError, KeyError) as e:
    raise DataError(f"TFDS dataset {name!r} has no usable {split!r} split: {e}") from e
  n = len(source)
  if n == 0:
    raise DataError(
      f"TFDS dataset {name!r}: split {split!r} is empty; " + _not_prepared(name, data_dir)
    )
  first = source[0]
  for role, key in keys.items():
    if key is not None and key not in first and role not in ("label", "length", "start"):
      raise DataError(f"TFDS dataset {name!r} has no feature {key!r} (it has {sorted(first)})")
  wanted = tuple((role, key) for role, key in keys.items() if key is not None and key in first)
  example = TfdsExample(name, split, wanted, modality)
  if stream:  # Identified by its files (the feature-network cache), never read whole.
    return RecordSplit(source, example, files=_tfds_files(source, split))
  return _read_whole(source, split, example)


# Splits read whole, kept by what identifies them: their ArrayRecord files (path, size,
# modification time) and what was read of them. TFDS decodes record by record (pydoc_text's
# ~7,400 examples a split took 0.86 s, digits' 1,797 0.15 s), and one process often loads a
# dataset again: `genlab train` then its evaluation, an SAE's host and the SAE, a session of
# tests. The arrays are read-only, so a caller cannot change what the next one gets.
_WHOLE_SPLITS: collections.OrderedDict = collections.OrderedDict()
_WHOLE_SPLITS_KEPT = 8


def _read_whole(source, split: str, example: TfdsExample) -> dict[str, np.ndarray]:
  """Every example of a TFDS split as arrays; kept per process where its files identify it
  (a mocked source of `tfds.testing` has none: read each time)."""
  whole = RecordSplit(source, example, files=_tfds_files(source, split))
  key = (whole.fingerprint(), example) if whole.files else None
  if key in _WHOLE_SPLITS:
    _WHOLE_SPLITS.move_to_end(key)
    return dict(_WHOLE_SPLITS[key])
  # Record by record: the mocked sources of tfds.testing have no working __getitems__.
  arrays = whole.rows(range(whole.num_examples))
  for array in arrays.values():
    array.flags.writeable = False
  if key is not None:
    _WHOLE_SPLITS[key] = arrays
    while len(_WHOLE_SPLITS) > _WHOLE_SPLITS_KEPT:
      _WHOLE_SPLITS.popitem(last=False)
  return dict(arrays)


@dataclasses.dataclass(frozen=True)
class TfdsExample:
  """A `tfds.data_source` record → genlab's example: the wanted features under their roles
  (`image`, `label`, ...), images given a channel axis and rescaled to 0..255 where TFDS
  stores another range. A plain value, so that grain's worker processes can take it."""

  name: str
  split: str
  keys: tuple[tuple[str, str], ...]  # (role, TFDS feature)
  modality: str = "image"

  def __call__(self, record) -> dict[str, np.ndarray]:
    example = {role: np.asarray(record[key]) for role, key in self.keys}
    if self.modality == "image":
      for role, key in self.keys:
        if role in ("image", "target"):
          what = f"{self.name}/{self.split} {key}"
          image = _as_images(example[role][None], what)[0]
          if self.name in TFDS_INTEGER_MAX and np.issubdtype(image.dtype, np.integer):
            top = TFDS_INTEGER_MAX[self.name]
            image = (np.clip(image, 0, top).astype(np.uint16) * 255 // top).astype(np.uint8)
          example[role] = image
    return example


def _tfds_files(source, split: str) -> list[str]:
  """The ArrayRecord files of a TFDS split (they identify a streamed split), if found."""
  folder = pathlib.Path(str(source.dataset_info.data_dir))
  return sorted(str(p) for p in folder.glob(f"*-{split}.array_record*"))
