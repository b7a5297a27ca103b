"""The streamed input pipeline (grain): the batch of step s is a pure function of (seed, s),
whether built in a thread or in worker processes, read from arrays or decoded from records,
augmented or not, and a run through it resumes bit for bit."""

from __future__ import annotations

import chex
import jax
import numpy as np
import pytest

from conftest import make_test_config
from genlab.data import Batcher, augment, image_records, load_dataset, write_image_records
from genlab.data.pipeline import key_words
from genlab.errors import ConfigError


@pytest.fixture(scope="module")
def digits(data_dir):
  return load_dataset("digits", data_dir=data_dir).train


def _batches(batcher, start, end):
  return list(batcher.iterate(start, end))


@pytest.mark.slow
def test_the_pipeline_gives_each_steps_batch_in_order_in_a_thread_and_in_workers(digits):
  """23 steps per epoch at batch 64: steps 20..27 cross an epoch boundary."""
  expected = [
    Batcher(digits, global_batch_size=64, key=jax.random.key(3)).batch(s) for s in range(20, 28)
  ]
  for workers in (0, 2):
    batcher = Batcher(digits, global_batch_size=64, key=jax.random.key(3), workers=workers)
    got = _batches(batcher, 20, 28)
    assert len(got) == len(expected), workers
    for step, (a, b) in enumerate(zip(got, expected, strict=True), start=20):
      chex.assert_trees_all_equal(a, b, custom_message=f"workers={workers} step={step}")


def test_records_decoded_one_by_one_give_the_same_batches_as_the_arrays(digits, tmp_path):
  path = tmp_path / "digits.array_record"
  assert write_image_records(path, digits["image"], digits["label"]) == len(digits["image"])
  records = image_records(str(path))
  assert len(records["image"]) == len(digits["image"]) and records["image"].shape[1:] == (8, 8, 1)
  for value_range in [(0.0, 1.0), (-1.0, 1.0)]:
    from_arrays = Batcher(
      digits, global_batch_size=32, key=jax.random.key(1), value_range=value_range
    )
    from_records = Batcher(
      records, global_batch_size=32, key=jax.random.key(1), value_range=value_range
    )
    for step in (0, 45, 46, 47):  # 46 steps per epoch.
      chex.assert_trees_all_equal(from_records.batch(step), from_arrays.batch(step))


def _image_and_target(n=6, size=8):
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
  return {"image": image, "target": image[..., :1].copy(), "label": np.arange(n)}


WORDS = [key_words(jax.random.key(seed)) for seed in (0, 1)]


def test_augmentations_are_pure_functions_of_key_and_position_and_move_the_target_along():
  augmentations = augment.parse("flip,crop", crop_padding=2, image_shape=(8, 8, 3))
  batch = _image_and_target()
  once = augment.augment_batch(augmentations, batch, key_words=WORDS[0], first_position=100)
  again = augment.augment_batch(augmentations, batch, key_words=WORDS[0], first_position=100)
  chex.assert_trees_all_equal(once, again)
  chex.assert_trees_all_equal_shapes_and_dtypes(once, batch)
  np.testing.assert_array_equal(once["label"], batch["label"])
  # The target map got the same flip and window as the image's first channel.
  np.testing.assert_array_equal(once["target"], once["image"][..., :1])
  assert not np.array_equal(once["image"], batch["image"])
  # Another position, or another key, draws another augmentation.
  shifted = augment.augment_batch(augmentations, batch, key_words=WORDS[0], first_position=101)
  other_seed = augment.augment_batch(augmentations, batch, key_words=WORDS[1], first_position=100)
  assert not np.array_equal(shifted["image"], once["image"])
  assert not np.array_equal(other_seed["image"], once["image"])
  # Example j depends on its position only: a batch split in two gives the same examples.
  halves = [
    augment.augment_batch(
      augmentations,
      {k: v[i : i + 3] for k, v in batch.items()},
      key_words=WORDS[0],
      first_position=100 + i,
    )
    for i in (0, 3)
  ]
  np.testing.assert_array_equal(np.concatenate([h["image"] for h in halves]), once["image"])


def test_flip_and_crop_against_numpy():
  image = np.arange(4 * 5 * 1).reshape(4, 5, 1)
  flipped = None
  for position in range(20):  # Some positions flip, some do not.
    rng = augment.example_generator(WORDS[0], position)
    out = augment.flip({"image": image}, rng)["image"]
    assert np.array_equal(out, image) or np.array_equal(out, image[:, ::-1])
    flipped = flipped or np.array_equal(out, image[:, ::-1])
  assert flipped
  rng = augment.example_generator(WORDS[0], 7)
  dy, dx = augment.example_generator(WORDS[0], 7).integers(0, 5, size=2)
  out = augment.crop(2)({"image": image}, rng)["image"]
  padded = np.pad(image, ((2, 2), (2, 2), (0, 0)), mode="reflect")
  np.testing.assert_array_equal(out, padded[dy : dy + 4, dx : dx + 5])


def test_an_augmented_batch_does_not_depend_on_the_process_split(digits):
  augmentations = augment.parse("flip,crop", crop_padding=2, image_shape=(8, 8, 1))
  whole = Batcher(
    digits, global_batch_size=32, key=jax.random.key(5), augmentations=augmentations
  ).batch(9)
  parts = [
    Batcher(
      digits,
      global_batch_size=32,
      key=jax.random.key(5),
      process_index=p,
      process_count=2,
      augmentations=augmentations,
    ).batch(9)
    for p in (0, 1)
  ]
  for key in whole:
    np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key], key)


@pytest.mark.parametrize(
  "overrides, needle",
  [
    ({"data.augment": "rotate"}, "unknown ['rotate']"),
    ({"data.augment": "crop", "data.crop_padding": 8}, "smaller than the image"),
    ({"data.augment": "flip", "data.device_resident": "on"}, "not augmented"),
    ({"data.workers": -1}, "non-negative integer"),
  ],
)
def test_bad_pipeline_settings_are_refused_in_one_line(overrides, needle, data_dir, tmp_path):
  from genlab.run import train_and_evaluate

  config = make_test_config(data_dir, **overrides)
  with pytest.raises(ConfigError) as error:
    train_and_evaluate(config, tmp_path / "run")
  assert needle in str(error.value) and "\n" not in str(error.value)


@pytest.mark.slow
def test_a_run_through_worker_processes_with_augmentation_resumes_bit_exactly(data_dir, tmp_path):
  from genlab.run import train_and_evaluate

  overrides = {"data.workers": 2, "data.augment": "flip,crop", "data.crop_padding": 2}
  unbroken = train_and_evaluate(make_test_config(data_dir, **overrides), tmp_path / "unbroken")
  first_half = make_test_config(data_dir, **overrides, num_steps=10)
  train_and_evaluate(first_half, tmp_path / "resumed")
  resumed = train_and_evaluate(make_test_config(data_dir, **overrides), tmp_path / "resumed")
  assert int(resumed.state.step) == int(unbroken.state.step) == 20
  chex.assert_trees_all_equal(
    jax.device_get(resumed.state.params), jax.device_get(unbroken.state.params)
  )
  # And augmentation changed what was trained on (the run is not the plain one).
  plain = train_and_evaluate(make_test_config(data_dir), tmp_path / "plain")
  assert not np.array_equal(
    jax.tree.leaves(jax.device_get(plain.state.params))[0],
    jax.tree.leaves(jax.device_get(unbroken.state.params))[0],
  )


def test_a_records_directory_trains_as_the_same_images_in_memory(digits, data_dir, tmp_path):
  """The train split stays on disk (a RecordSplit, streamed); the run equals one on the same
  images and labels given as a .npz, step for step."""
  from genlab.run import train_and_evaluate

  test = load_dataset("digits", data_dir=data_dir).test
  records = tmp_path / "records"
  records.mkdir()
  write_image_records(records / "train-0.array_record", digits["image"], digits["label"])
  write_image_records(records / "test-0.array_record", test["image"], test["label"])
  npz = tmp_path / "digits.npz"
  np.savez(
    npz,
    x_train=digits["image"],
    y_train=digits["label"],
    x_test=test["image"],
    y_test=test["label"],
  )
  dataset = load_dataset(str(records))
  assert not isinstance(dataset.train, dict) and isinstance(dataset.test["image"], np.ndarray)
  runs = {}
  for name, spec in (("records", records), ("npz", npz)):
    config = make_test_config(data_dir, dataset=str(spec), **{"data.device_resident": "off"})
    runs[name] = train_and_evaluate(config, tmp_path / name)
  chex.assert_trees_all_equal(
    jax.device_get(runs["records"].state.params), jax.device_get(runs["npz"].state.params)
  )
  assert runs["records"].test_metrics == runs["npz"].test_metrics


@pytest.mark.slow
def test_a_tfds_train_split_streamed_from_disk_gives_the_same_batches(digits, data_dir):
  """`stream_train`: the train split of a dataset by name stays in TFDS's ArrayRecord files
  (a RecordSplit over tfds.data_source), in a thread or in worker processes."""
  from genlab.data import RecordSplit

  streamed = load_dataset("digits", data_dir=data_dir, stream_train=True)
  assert isinstance(streamed.train, RecordSplit) and isinstance(streamed.test["image"], np.ndarray)
  assert streamed.train.files and all(
    "digits-train.array_record" in f for f in streamed.train.files
  )
  assert streamed.image_shape == (8, 8, 1) and len(streamed.train["image"]) == len(digits["image"])
  chex.assert_trees_all_equal(
    streamed.train.rows(range(5, 9)), {k: v[5:9] for k, v in digits.items()}
  )
  expected = Batcher(digits, global_batch_size=64, key=jax.random.key(3))
  for workers in (0, 2):
    batcher = Batcher(streamed.train, global_batch_size=64, key=jax.random.key(3), workers=workers)
    for step, got in enumerate(_batches(batcher, 21, 25), start=21):  # An epoch boundary.
      chex.assert_trees_all_equal(got, expected.batch(step), custom_message=f"{workers=}")


def test_a_tfds_dataset_streamed_by_name_has_the_in_memory_examples(data_dir):
  import tensorflow_datasets as tfds

  with tfds.testing.mock_data(num_examples=5):
    streamed = load_dataset("mnist", data_dir=data_dir, stream_train=True)
    whole = load_dataset("mnist", data_dir=data_dir)
    assert streamed.train["image"].shape == (5, 28, 28, 1)  # The channel axis, per example.
    chex.assert_trees_all_equal(streamed.train.rows(range(5)), whole.train)


def test_streaming_a_sequence_dataset_is_refused_in_one_line(data_dir):
  from genlab.errors import DataError

  with pytest.raises(DataError, match="'pydoc_text' holds tokens, which is read into memory"):
    load_dataset("pydoc_text", data_dir=data_dir, stream_train=True)


@pytest.mark.slow
def test_a_run_streamed_from_tfds_files_equals_the_run_in_memory(data_dir, tmp_path):
  from genlab.run import train_and_evaluate

  runs = {}
  for stream in (True, False):
    overrides = {"data.device_resident": "off", "data.stream_train": stream}
    config = make_test_config(data_dir, **overrides)
    runs[stream] = train_and_evaluate(config, tmp_path / str(stream))
  chex.assert_trees_all_equal(
    jax.device_get(runs[True].state.params), jax.device_get(runs[False].state.params)
  )
  assert runs[True].test_metrics == runs[False].test_metrics


def test_a_directory_without_records_is_refused_in_one_line(tmp_path):
  from genlab.errors import DataError

  (tmp_path / "train-0.array_record").write_bytes(b"")
  with pytest.raises(DataError) as error:
    load_dataset(str(tmp_path))
  assert "test*.array_record" in str(error.value) and "\n" not in str(error.value)
  (tmp_path / "test-0.array_record").write_bytes(b"not an array record")
  with pytest.raises(DataError, match="cannot read"):
    load_dataset(str(tmp_path))


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_a_damaged_record_stops_the_pipeline_naming_it(digits, tmp_path, workers):
  from array_record.python.array_record_module import ArrayRecordWriter

  from genlab.data.records import encode_image_example
  from genlab.errors import DataError

  path = tmp_path / "damaged.array_record"
  writer = ArrayRecordWriter(str(path), "group_size:1")
  for i in range(64):
    record = encode_image_example(digits["image"][i], digits["label"][i])
    writer.write(record if i != 37 else record[: len(record) // 2])  # Record 37 cut short.
  writer.close()
  batcher = Batcher(
    image_records(str(path)), global_batch_size=64, key=jax.random.key(0), workers=workers
  )
  with pytest.raises(DataError, match=r"record 37 of .*damaged.array_record cannot be decoded"):
    next(batcher.iterate(0, 1))
