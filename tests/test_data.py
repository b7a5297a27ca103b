"""Datasets (embedded digits, TFDS by name, `.npz`) and the deterministic batcher."""

from __future__ import annotations

import chex
import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from genlab.data import Batcher, eval_batches, load_dataset, scale_values
from genlab.errors import DataError


def _sorted_rows(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """(image pixels, label) rows in lexicographic order: a multiset comparable with ==."""
  rows = np.concatenate([images.reshape(len(images), -1), labels[:, None]], axis=1).astype(np.int64)
  return rows[np.lexsort(rows.T[::-1])]


# --- Embedded digits ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits(data_dir):
  return load_dataset("digits", data_dir=data_dir)


def test_digits_shapes_and_dtypes(digits):
  chex.assert_shape(digits.train["image"], (1497, 8, 8, 1))
  chex.assert_shape(digits.test["image"], (300, 8, 8, 1))
  chex.assert_shape(digits.train["label"], (1497,))
  chex.assert_shape(digits.test["label"], (300,))
  assert digits.train["image"].dtype == np.uint8
  assert digits.test["image"].dtype == np.uint8
  assert np.issubdtype(digits.train["label"].dtype, np.integer)
  assert set(digits.train) == set(digits.test) == {"image", "label"}
  assert digits.image_shape == digits.target_shape == (8, 8, 1)
  for split in (digits.train, digits.test):
    np.testing.assert_array_equal(np.unique(split["label"]), np.arange(10))
  # Pixel values 0..16 rescaled to the full uint8 range.
  assert digits.train["image"].min() == 0
  assert digits.train["image"].max() == 255


def test_digits_split_rule_matches_sklearn(digits):
  from sklearn.datasets import load_digits

  source = load_digits()
  images = np.round(source.images * (255.0 / 16.0)).astype(np.uint8)
  is_test = np.arange(len(images)) % 6 == 0

  # TFDS shuffles the record order: compare (image, label) multisets.
  np.testing.assert_array_equal(
    _sorted_rows(digits.test["image"], digits.test["label"]),
    _sorted_rows(images[is_test], source.target[is_test]),
  )
  np.testing.assert_array_equal(
    _sorted_rows(digits.train["image"], digits.train["label"]),
    _sorted_rows(images[~is_test], source.target[~is_test]),
  )


def test_digits_loads_the_same_twice(digits, data_dir):
  again = load_dataset("digits", data_dir=data_dir)  # Already prepared: read back.

  chex.assert_trees_all_equal(again.train, digits.train)
  chex.assert_trees_all_equal(again.test, digits.test)


def test_a_split_read_whole_is_decoded_once_per_process_until_its_files_change(
  tmp_path, monkeypatch
):
  """A process that loads a dataset again (train then eval, a host and its SAE) reads the
  kept arrays; they are read-only, so no caller changes what the next gets; new files (a
  rebuilt dataset) are read afresh, and a mocked dataset, which has no files, every time."""
  import os

  from genlab.data import sources

  decoded = []
  rows = sources.RecordSplit.rows
  monkeypatch.setattr(
    sources.RecordSplit, "rows", lambda self, r: decoded.append(1) or rows(self, r)
  )
  monkeypatch.setattr(sources, "_WHOLE_SPLITS", type(sources._WHOLE_SPLITS)())
  first = load_dataset("digits", data_dir=str(tmp_path))
  assert len(decoded) == 2  # Train and test.
  again = load_dataset("digits", data_dir=str(tmp_path))
  assert len(decoded) == 2
  chex.assert_trees_all_equal(again.train, first.train)
  with pytest.raises(ValueError, match="read-only"):
    again.train["image"][0, 0, 0, 0] = 255
  # The same files rewritten (their modification time moves on): read again.
  (train_file,) = tmp_path.glob("digits/*/digits-train.array_record*")
  stat = train_file.stat()
  os.utime(train_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
  load_dataset("digits", data_dir=str(tmp_path))
  assert len(decoded) == 3  # The train split only.
  with tfds.testing.mock_data(num_examples=4):
    load_dataset("mnist", data_dir=str(tmp_path))
    load_dataset("mnist", data_dir=str(tmp_path))
  assert len(decoded) == 7


# --- TFDS by name (mocked) ------------------------------------------------------------------


def test_tfds_mnist_by_name(data_dir):
  with tfds.testing.mock_data(num_examples=6):
    dataset = load_dataset("mnist", data_dir=data_dir)

  for split in (dataset.train, dataset.test):
    chex.assert_shape(split["image"], (6, 28, 28, 1))
    chex.assert_shape(split["label"], (6,))
    assert split["image"].dtype == np.uint8
    assert np.all((split["label"] >= 0) & (split["label"] < 10))
  assert dataset.image_shape == (28, 28, 1)


def test_tfds_without_labels(data_dir):
  with tfds.testing.mock_data(num_examples=3):
    dataset = load_dataset("mnist", data_dir=data_dir, label_key=None)

  assert set(dataset.train) == {"image"}


def test_tfds_missing_image_feature_raises(data_dir):
  with (
    tfds.testing.mock_data(num_examples=3),
    pytest.raises(DataError, match="no feature 'pixels'"),
  ):
    load_dataset("mnist", data_dir=data_dir, image_key="pixels")


def test_unknown_dataset_name_raises(data_dir):
  with pytest.raises(DataError, match="unknown dataset 'no_such_dataset_xyz'"):
    load_dataset("no_such_dataset_xyz", data_dir=data_dir)


def test_unprepared_tfds_dataset_raises(tmp_path):
  with pytest.raises(DataError, match="'mnist' is not prepared"):
    load_dataset("mnist", data_dir=str(tmp_path))


# --- .npz files -----------------------------------------------------------------------------


def _write_npz(path, **arrays) -> str:
  np.savez(path, **arrays)
  return str(path)


def _images(n: int, shape=(4, 4), seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


def test_npz_gains_channel_axis_and_carries_labels_and_targets(tmp_path):
  x_train, x_test = _images(5, seed=0), _images(3, seed=1)
  y_train, y_test = np.arange(5), np.arange(3)
  target_train = np.random.default_rng(2).uniform(size=(5, 2, 2, 3)).astype(np.float32)
  target_test = np.random.default_rng(3).uniform(size=(3, 2, 2, 3)).astype(np.float32)
  path = _write_npz(
    tmp_path / "data.npz",
    x_train=x_train,
    x_test=x_test,
    y_train=y_train,
    y_test=y_test,
    target_train=target_train,
    target_test=target_test,
  )

  dataset = load_dataset(path)

  np.testing.assert_array_equal(dataset.train["image"], x_train[..., None])
  np.testing.assert_array_equal(dataset.test["image"], x_test[..., None])
  np.testing.assert_array_equal(dataset.train["label"], y_train)
  np.testing.assert_array_equal(dataset.test["label"], y_test)
  np.testing.assert_array_equal(dataset.train["target"], target_train)
  np.testing.assert_array_equal(dataset.test["target"], target_test)
  assert dataset.image_shape == (4, 4, 1)
  assert dataset.target_shape == (2, 2, 3)


def test_npz_images_only(tmp_path):
  x = np.random.default_rng(0).uniform(size=(4, 3, 3, 3)).astype(np.float32)
  path = _write_npz(tmp_path / "data.npz", x_train=x, x_test=x[:2])

  dataset = load_dataset(path)

  assert set(dataset.train) == set(dataset.test) == {"image"}
  chex.assert_shape(dataset.train["image"], (4, 3, 3, 3))
  assert dataset.target_shape == (3, 3, 3)


def _bad_npz_cases():
  good = _images(4)
  nan = np.full((4, 4, 4), 0.5, np.float32)
  nan[1, 2, 3] = np.nan
  return {
    "missing x_test": (dict(x_train=good), "lacks the key.*x_test"),
    "only y_train": (
      dict(x_train=good, x_test=good, y_train=np.arange(4)),
      "only one of y_train / y_test",
    ),
    "only target_test": (
      dict(x_train=good, x_test=good, target_test=good),
      "only one of target_train / target_test",
    ),
    "float outside [0, 1]": (
      dict(x_train=good.astype(np.float32), x_test=good.astype(np.float32)),
      r"float train image spans \[.*\]; float images must lie in \[0, 1\]",
    ),
    "NaN": (dict(x_train=good, x_test=nan), "test image holds NaN or Inf"),
    "non-numeric dtype": (
      dict(x_train=np.full((4, 4, 4), "a"), x_test=np.full((4, 4, 4), "a")),
      "train image has dtype <U1; expected uint8 or float",
    ),
    "integer outside [0, 255]": (
      dict(x_train=good.astype(np.int32) * 2, x_test=good),
      r"integer train image must lie in \[0, 255\]",
    ),
    "float labels": (
      dict(x_train=good, x_test=good, y_train=np.zeros(4), y_test=np.zeros(4)),
      "labels have dtype float64; expected integers",
    ),
    "label count": (
      dict(x_train=good, x_test=good, y_train=np.arange(3), y_test=np.arange(4)),
      "train split has 4 images but 3 label entries",
    ),
    "train and test shapes": (
      dict(x_train=good, x_test=_images(4, shape=(5, 5))),
      "train and test images differ in shape",
    ),
    "image rank": (dict(x_train=good[:, 0], x_test=good[:, 0]), r"x_train has shape \(4, 4\)"),
  }


@pytest.mark.parametrize("case", list(_bad_npz_cases()))
def test_bad_npz_raises(tmp_path, case):
  arrays, message = _bad_npz_cases()[case]
  path = _write_npz(tmp_path / "bad.npz", **arrays)

  with pytest.raises(DataError, match=message):
    load_dataset(path)


@pytest.mark.parametrize("name", ["missing.npz", "no/such/dir/data.npz", "no/such/dir"])
def test_nonexistent_path_raises(tmp_path, name):
  path = str(tmp_path / name)

  with pytest.raises(DataError, match="no such .npz file"):
    load_dataset(path)


def test_unreadable_npz_raises(tmp_path):
  path = tmp_path / "corrupt.npz"
  path.write_bytes(b"not a zip file")

  with pytest.raises(DataError, match="cannot read .* as .npz"):
    load_dataset(str(path))


# --- Batcher --------------------------------------------------------------------------------

NUM_EXAMPLES = 50


def _split(n: int = NUM_EXAMPLES) -> dict[str, np.ndarray]:
  """A split whose labels are the example indices, so a batch tells which rows it holds."""
  rng = np.random.default_rng(0)
  return {
    "image": rng.integers(0, 256, size=(n, 2, 2, 1), dtype=np.uint8),
    "label": np.arange(n),
    "target": rng.uniform(size=(n, 1, 1, 3)).astype(np.float32),
  }


def test_batch_is_a_function_of_seed_and_step():
  split = _split()
  first = Batcher(split, global_batch_size=8, key=jax.random.key(3))
  second = Batcher(split, global_batch_size=8, key=jax.random.key(3))

  # The second batcher visits steps in another order (a resumed run) and sees the same data.
  later = [second.batch(s) for s in (13, 2, 7)]
  for step, batch in zip((13, 2, 7), later, strict=True):
    chex.assert_trees_all_equal(first.batch(step), batch)


def test_different_seeds_give_different_batches():
  split = _split()
  a = Batcher(split, global_batch_size=8, key=jax.random.key(0)).batch(0)
  b = Batcher(split, global_batch_size=8, key=jax.random.key(1)).batch(0)

  assert not np.array_equal(a["label"], b["label"])


def test_each_epoch_visits_every_example_at_most_once():
  batcher = Batcher(_split(), global_batch_size=8, key=jax.random.key(0))
  assert batcher.steps_per_epoch == NUM_EXAMPLES // 8  # The incomplete last batch is dropped.

  for epoch in range(3):
    steps = range(epoch * batcher.steps_per_epoch, (epoch + 1) * batcher.steps_per_epoch)
    labels = np.concatenate([batcher.batch(s)["label"] for s in steps])
    assert len(np.unique(labels)) == len(labels) == 8 * batcher.steps_per_epoch
  # Epochs are shuffled differently.
  first = batcher.batch(0)["label"]
  assert not np.array_equal(first, batcher.batch(batcher.steps_per_epoch)["label"])


def test_batch_shapes_and_dtypes():
  batch = Batcher(_split(), global_batch_size=8, key=jax.random.key(0)).batch(4)

  chex.assert_shape(batch["image"], (8, 2, 2, 1))
  chex.assert_shape(batch["target"], (8, 1, 1, 3))
  chex.assert_shape(batch["label"], (8,))
  assert batch["image"].dtype == batch["target"].dtype == np.float32
  assert batch["label"].dtype == batch["index"].dtype == np.int32
  np.testing.assert_array_equal(batch["index"], np.arange(8))


@pytest.mark.parametrize("process_count", [2, 4])
def test_process_slices_concatenate_to_global_batch(process_count):
  split = _split()
  whole = Batcher(split, global_batch_size=8, key=jax.random.key(5))
  parts = [
    Batcher(
      split,
      global_batch_size=8,
      key=jax.random.key(5),
      process_index=p,
      process_count=process_count,
    )
    for p in range(process_count)
  ]

  for step in (0, 3, 11):
    local = [part.batch(step) for part in parts]
    for p, batch in enumerate(local):
      size = 8 // process_count
      chex.assert_shape(batch["image"], (size, 2, 2, 1))
      # `index` is each example's position in the global batch.
      np.testing.assert_array_equal(batch["index"], np.arange(p * size, (p + 1) * size))
    joined = {k: np.concatenate([b[k] for b in local]) for k in local[0]}
    chex.assert_trees_all_equal(joined, whole.batch(step))


@pytest.mark.parametrize("value_range", [(0.0, 1.0), (-1.0, 1.0)])
def test_batch_values_are_scaled(value_range):
  split = _split()
  batch = Batcher(split, global_batch_size=8, key=jax.random.key(0), value_range=value_range).batch(
    2
  )

  lo, hi = value_range
  rows = batch["label"]
  np.testing.assert_allclose(
    batch["image"], lo + (hi - lo) * split["image"][rows] / 255.0, rtol=1e-6, atol=1e-6
  )
  # Float arrays are read as 0..1.
  np.testing.assert_allclose(batch["target"], lo + (hi - lo) * split["target"][rows], rtol=1e-6)
  assert batch["image"].min() >= lo and batch["image"].max() <= hi


def test_scale_values_endpoints():
  ints = np.array([0, 255], np.uint8)
  floats = np.array([0.0, 1.0], np.float32)

  np.testing.assert_array_equal(scale_values(ints), [0.0, 1.0])
  np.testing.assert_array_equal(scale_values(ints, (-1.0, 1.0)), [-1.0, 1.0])
  np.testing.assert_array_equal(scale_values(floats, (-1.0, 1.0)), [-1.0, 1.0])
  assert scale_values(ints).dtype == np.float32


def test_iterate_yields_the_batches_of_its_steps():
  batcher = Batcher(_split(), global_batch_size=8, key=jax.random.key(2))

  batches = list(batcher.iterate(4, 9, prefetch=2))

  assert len(batches) == 5
  for step, batch in zip(range(4, 9), batches, strict=True):
    chex.assert_trees_all_equal(batch, batcher.batch(step))


def test_batcher_rejects_bad_batch_sizes():
  with pytest.raises(DataError, match="exceeds the 50 training examples"):
    Batcher(_split(), global_batch_size=64, key=jax.random.key(0))
  with pytest.raises(DataError, match="not divisible by 3 processes"):
    Batcher(_split(), global_batch_size=8, key=jax.random.key(0), process_count=3)


# --- Evaluation batches ---------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [5, 8, 50, 64])
def test_eval_batches_cover_every_example_once(batch_size):
  split = _split()

  batches = list(eval_batches(split, global_batch_size=batch_size))

  assert len(batches) == -(-NUM_EXAMPLES // batch_size)
  for batch in batches:
    chex.assert_shape(batch["image"], (batch_size, 2, 2, 1))
    chex.assert_shape(batch["mask"], (batch_size,))
  masks = np.concatenate([b["mask"] for b in batches])
  labels = np.concatenate([b["label"] for b in batches])
  assert masks.sum() == NUM_EXAMPLES
  np.testing.assert_array_equal(np.sort(labels[masks == 1]), np.arange(NUM_EXAMPLES))
  # Examples come in order; the padding is masked out.
  np.testing.assert_array_equal(labels[masks == 1], np.arange(NUM_EXAMPLES))


def test_eval_batches_max_examples():
  batches = list(eval_batches(_split(), global_batch_size=8, max_examples=20))

  assert sum(b["mask"].sum() for b in batches) == 20
  assert len(batches) == 3


def test_eval_batches_process_slices_concatenate_to_global_batch():
  split = _split()
  whole = list(eval_batches(split, global_batch_size=8, value_range=(-1.0, 1.0)))
  parts = [
    list(
      eval_batches(
        split, global_batch_size=8, process_index=p, process_count=2, value_range=(-1.0, 1.0)
      )
    )
    for p in range(2)
  ]

  assert len(parts[0]) == len(parts[1]) == len(whole)
  for i, batch in enumerate(whole):
    joined = {k: np.concatenate([parts[0][i][k], parts[1][i][k]]) for k in batch}
    chex.assert_trees_all_equal(joined, batch)


def test_npz_column_labels_are_flattened_and_other_shapes_refused(tmp_path):
  x = np.zeros((6, 8, 8), np.uint8)
  good = tmp_path / "column.npz"
  np.savez(
    good, x_train=x, x_test=x[:2], y_train=np.arange(6)[:, None], y_test=np.arange(2)[:, None]
  )
  dataset = load_dataset(str(good))
  assert dataset.train["label"].shape == (6,)
  bad = tmp_path / "onehot.npz"
  np.savez(bad, x_train=x, x_test=x[:2], y_train=np.eye(6)[:, :3], y_test=np.eye(2))
  with pytest.raises(DataError, match="expected \\(N,\\) integer labels"):
    load_dataset(str(bad))


@pytest.mark.slow
def test_photo_datasets_are_built_offline_from_scikit_image(data_dir):
  from genlab.data.embedded import spectral_residual_saliency

  crops = load_dataset("photo_crops32", data_dir=data_dir, target_key="saliency")
  assert crops.train["image"].shape == (8 * 600, 32, 32, 1)  # 8 training photographs.
  assert crops.test["target"].shape == (2 * 600, 32, 32, 1)  # 2 held-out photographs.
  assert crops.train["image"].dtype == np.uint8 and crops.train["target"].max() == 255
  # The target is the crop's own spectral-residual saliency map.
  first = crops.test["image"][0, ..., 0] / 255.0
  expected = np.round(spectral_residual_saliency(first) * 255)
  match = [np.abs(t[..., 0].astype(float) - expected).max() <= 2 for t in crops.test["target"]]
  assert any(match)
  no_target = load_dataset("photo_crops32", data_dir=data_dir)
  assert "target" not in no_target.train

  patches = load_dataset("photo_patches8", data_dir=data_dir)
  x = patches.train["image"]
  assert x.shape == (20000, 8, 8, 1) and patches.test["image"].shape == (5000, 8, 8, 1)
  assert x.dtype == np.float32 and x.min() >= 0.1 - 1e-6 and x.max() <= 0.9 + 1e-6
  np.testing.assert_allclose(x.mean(), 0.5, atol=0.01)  # Per-patch means removed, then mapped.
