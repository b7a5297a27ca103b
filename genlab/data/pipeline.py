"""Batches whose content depends only on (key, step): resuming restores the data order.

`key` is the run's data stream, `genlab.core.stream_key(root_key, 'data')`. The global
batch of step `s` is slice `s mod steps_per_epoch` of the permutation of epoch
`s // steps_per_epoch`, `epoch_permutation(key, epoch, n)`
(a keyed `jax.random.permutation`; the last incomplete batch of each epoch is
dropped). Process `p` of `P` takes rows `[p·B/P, (p+1)·B/P)` of it; the runner
then splits those rows over the process's local devices. Because the order is a
pure function of the step, a checkpoint only needs the step.

Two ways to deliver the same batches:
* `Batcher` (streaming): builds each batch on the host, ahead of the step, through
  a grain pipeline (in a thread, or in `workers` processes), and the runner copies
  it to the devices. It reads a split of arrays, or a `RecordSplit` whose examples
  are decoded one by one (data too large to hold converted), and applies per-example
  augmentations (`genlab.data.augment`), keyed by each example's position in the
  run's stream;
* `ResidentSplit` (device-resident): the whole converted split is copied to the
  devices once, and each epoch's permutation once per epoch; compiled steps
  gather their rows themselves (`ResidentSplit.batch`), so no host work happens
  per step. It converts values with the same `_make_batch` as `Batcher`, so the
  batches are bit-identical. (The permutation is not drawn inside the step: on
  XLA:CPU with several fake devices, a sort inside a collective program starved
  the shared thread pool and deadlocked the all-reduce.)

Values: integer arrays (images, target maps) are read as 0..255, float arrays
as 0..1; both are mapped linearly onto `value_range` (default [0, 1]) as
float32. With `value_range=None` (sequences) values are passed through: floats
as float32, token ids as int32. Labels and lengths stay int32. Every batch
carries `index`, each example's position in the global batch, from which steps
derive per-example keys that do not depend on how many devices share the batch.
"""

from __future__ import annotations

import functools
import math
import os
import threading
import time
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from genlab.data.augment import Augmentation, augment_batch
from genlab.data.records import RecordSplit
from genlab.data.sources import Split
from genlab.errors import DataError

Batch = dict[str, np.ndarray]


def scale_values(array: np.ndarray, value_range: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
  """Maps integer 0..255 or float 0..1 values linearly onto `value_range`, as float32."""
  x = array.astype(np.float32)
  if np.issubdtype(array.dtype, np.integer):
    x = x / np.float32(255.0)
  lo, hi = value_range
  return np.float32(lo) + x * np.float32(hi - lo)


def scaled_mean(
  array, value_range: tuple[float, float] = (0.0, 1.0), chunk: int = 4096
) -> np.ndarray:
  """The mean over the first axis of `scale_values(array)`: at once for an array, in chunks
  of `chunk` rows (summed in float64) for a column of a `RecordSplit`, which is never
  decoded whole."""
  if isinstance(array, np.ndarray):
    return scale_values(array, value_range).mean(axis=0)
  total = 0.0
  for start in range(0, len(array), chunk):
    total = total + scale_values(array[start : start + chunk], value_range).sum(
      axis=0, dtype=np.float64
    )
  return (total / len(array)).astype(np.float32)


INTEGER_KEYS = ("label", "length", "start")


def epoch_permutation(key: jax.Array, epoch, num_examples: int) -> jax.Array:
  """The order of a split of `num_examples` in `epoch`: `jax.random.permutation` under
  `fold_in(key, epoch)`, `key` the data stream. Traceable (epoch may be traced)."""
  return jax.random.permutation(jax.random.fold_in(key, epoch), num_examples)


def key_words(key: jax.Array) -> np.ndarray:
  """The data stream's key as uint32 words: what a pipeline keeps, since it is pickled into
  grain's worker processes, which must not start JAX's accelerators for a key array."""
  return np.asarray(jax.random.key_data(key), np.uint32)


@functools.cache
def _host_permutation_fn(num_examples: int):
  def permutation(words, epoch):
    return epoch_permutation(jax.random.wrap_key_data(words), epoch, num_examples)

  return jax.jit(permutation)


def host_permutation(words: np.ndarray, epoch: int, num_examples: int) -> np.ndarray:
  """`epoch_permutation` of the key with `words` (`key_words`), on the host CPU, as NumPy."""
  with jax.default_device(jax.local_devices(backend="cpu")[0]):
    return np.asarray(_host_permutation_fn(num_examples)(words, epoch))


def _make_batch(split: Split | RecordSplit, rows: np.ndarray, value_range) -> Batch:
  if isinstance(split, RecordSplit):  # Each row decoded once, for all its keys.
    split, rows = split.rows(rows), slice(None)
  batch = {}
  for key, array in split.items():
    values = array[rows]
    if key in INTEGER_KEYS or (value_range is None and np.issubdtype(values.dtype, np.integer)):
      batch[key] = values.astype(np.int32)
    elif value_range is None:
      batch[key] = values.astype(np.float32)
    else:
      batch[key] = scale_values(values, value_range)
  return batch


def _worker_init(worker_index: int, worker_count: int, *, parent_pid: int | None = None) -> None:
  """In each grain worker process: it ends with its parent (`parent_pid`, the trainer that
  started it), and JAX (the permutations) runs on the CPU only, so a worker never
  initialises, or takes memory on, the host's accelerators."""
  del worker_index, worker_count
  if parent_pid is not None:
    exit_with_parent(parent_pid)
  jax.config.update("jax_platforms", "cpu")


# How often a worker looks for its parent: it ends at most this long after the parent.
PARENT_CHECK_SECONDS = 0.25


def exit_with_parent(parent_pid: int, period: float = PARENT_CHECK_SECONDS) -> threading.Thread:
  """Ends this process (`os._exit`) once `parent_pid` is no longer its parent, checked every
  `period` seconds by a daemon thread.

  A trainer killed by SIGKILL cannot stop its grain workers, which then wait forever on a
  full queue with init as their parent (and multiprocessing's resource tracker, whose pipe
  they hold, with them). Linux's `prctl(PR_SET_PDEATHSIG)` is not used: it fires when the
  *thread* that started the child ends, and grain starts its workers from its prefetch
  threads, which may end before the trainer does. A parent that died before this check
  started is noticed at its first look."""

  def watch():
    while os.getppid() == parent_pid:
      time.sleep(period)
    os._exit(1)  # Nobody is left to read what this worker makes.

  thread = threading.Thread(target=watch, name="genlab-exit-with-parent", daemon=True)
  thread.start()
  return thread


class Batcher:
  """Training batches of one split, a pure function of (key, step).

  Args:
    split: arrays of the split (`image`, optional `label`, `target`), or a
      `RecordSplit` decoding its examples on demand.
    global_batch_size: examples per step summed over all processes and devices.
    key: the run's data stream (`genlab.core.stream_key(root_key, 'data')`): it keys the
      per-epoch permutations and the augmentations.
    process_index: this process's index among `process_count`.
    process_count: how many processes share each global batch.
    value_range: the range images and targets are mapped onto; None passes values
      through (sequences).
    augmentations: per-example augmentations (`genlab.data.augment.parse`), applied
      after conversion; example j of step s gets the generator of position
      s · global_batch_size + (its row in the global batch).
    workers: grain worker processes building batches (0: one thread of this process).
      Each worker receives a pickled copy of the Batcher, arrays included: with a
      large split, use a `RecordSplit`.
  """

  def __init__(
    self,
    split: Split | RecordSplit,
    *,
    global_batch_size: int,
    key: jax.Array,
    process_index: int = 0,
    process_count: int = 1,
    value_range: tuple[float, float] | None = (0.0, 1.0),
    augmentations: Sequence[Augmentation] = (),
    workers: int = 0,
  ):
    self.num_examples = len(split["image"])
    if global_batch_size > self.num_examples:
      raise DataError(
        f"batch_size {global_batch_size} exceeds the {self.num_examples} training examples"
      )
    if global_batch_size % process_count:
      raise DataError(
        f"batch_size {global_batch_size} is not divisible by {process_count} processes"
      )
    self.split = split
    self.global_batch_size = global_batch_size
    self.local_batch_size = global_batch_size // process_count
    self.key_words = key_words(key)
    self.process_index = process_index
    self.value_range = None if value_range is None else tuple(value_range)
    self.steps_per_epoch = self.num_examples // global_batch_size
    self.augmentations = list(augmentations)
    if not isinstance(workers, int) or workers < 0:
      raise DataError(f"data workers must be a non-negative integer, got {workers!r}")
    self.workers = workers
    self._epoch, self._perm = None, None

  def permutation(self, epoch: int) -> np.ndarray:
    """The order of the split in `epoch` (cached for the current epoch)."""
    if epoch != self._epoch:
      self._epoch = epoch
      self._perm = host_permutation(self.key_words, epoch, self.num_examples)
    return self._perm

  def global_rows(self, step: int) -> np.ndarray:
    """Indices into the split of the whole global batch of `step`."""
    epoch, position = divmod(step, self.steps_per_epoch)
    start = position * self.global_batch_size
    return self.permutation(epoch)[start : start + self.global_batch_size]

  def batch(self, step: int) -> Batch:
    """This process's part of the global batch of `step`."""
    start = self.process_index * self.local_batch_size
    rows = self.global_rows(step)[start : start + self.local_batch_size]
    batch = _make_batch(self.split, rows, self.value_range)
    batch = augment_batch(
      self.augmentations,
      batch,
      key_words=self.key_words,
      first_position=step * self.global_batch_size + start,
    )
    batch["index"] = np.arange(start, start + self.local_batch_size, dtype=np.int32)
    return batch

  def iterate(self, start_step: int, end_step: int, prefetch: int = 2) -> Iterator[Batch]:
    """Yields the batches of steps `start_step .. end_step - 1` in order, built ahead by
    a grain pipeline: `grain.MapDataset` over the steps, mapped by `batch`, in one
    thread or, with `workers`, in that many processes (each takes every workers-th step;
    grain interleaves them back in order), `prefetch` batches ahead of each."""
    import grain
    from absl import flags

    if not flags.FLAGS.is_parsed():
      # grain reads its options from absl flags, parsed by an absl app's main; from a
      # script or a test nothing has parsed them, and its worker processes would fail.
      flags.FLAGS.mark_as_parsed()
    steps = grain.MapDataset.range(start_step, end_step).map(self.batch)
    if self.workers:
      # Batches come back pickled through grain's queues, not in shared memory: grain
      # frees a shared-memory batch from a thread pool, which a process can leave before
      # it has run, and Python's resource tracker then warns of "leaked" objects at exit.
      # Pickled, 2 workers still deliver 5.9k decoded, augmented 64×64×3 images/s on
      # 2 cores (scripts/benchmark_input.py).
      steps = grain.experimental.WithOptionsIterDataset(
        steps.to_iter_dataset(grain.ReadOptions(num_threads=0)),
        grain.experimental.DatasetOptions(min_shm_size=1 << 62),
      )
      batches = steps.mp_prefetch(
        grain.MultiprocessingOptions(num_workers=self.workers, per_worker_buffer_size=prefetch),
        worker_init_fn=functools.partial(_worker_init, parent_pid=os.getpid()),
      )
    else:
      batches = steps.to_iter_dataset(
        grain.ReadOptions(num_threads=1, prefetch_buffer_size=prefetch)
      )
    iterator = iter(batches)
    try:
      yield from iterator
    finally:
      close = getattr(iterator, "close", None)
      if close is not None:
        close()


def eval_batches(
  split: Split,
  *,
  global_batch_size: int,
  process_index: int = 0,
  process_count: int = 1,
  value_range: tuple[float, float] | None = (0.0, 1.0),
  max_examples: int | None = None,
) -> Iterator[Batch]:
  """Every example of `split` once, in order, in fixed-size batches.

  The last batch is padded by repeating row 0; its `mask` is 0 on the padding,
  so metrics summed with the mask count each example exactly once and every
  batch has the same shape (one compilation). `index` is each example's row in
  the split, so evaluation noise keyed on it (a VAE's z, a corruption) belongs to
  the example, whatever the eval batch size or device count.
  """
  n = len(split["image"]) if max_examples is None else min(max_examples, len(split["image"]))
  local = global_batch_size // process_count
  for start in range(0, n, global_batch_size):
    rows = np.arange(start, start + global_batch_size)
    mask = (rows < n).astype(np.float32)
    rows = np.where(rows < n, rows, 0)
    mine = slice(process_index * local, (process_index + 1) * local)
    batch = _make_batch(split, rows[mine], value_range)
    batch["mask"] = mask[mine]
    batch["index"] = rows[mine].astype(np.int32)
    yield batch


def _take_rows(array: jax.Array, rows: jax.Array) -> jax.Array:
  """array[rows] for in-bounds rows, gathered as whole flat rows. XLA:CPU's gather of
  (28, 28, 1) slices, with the bounds check `jnp.take` adds by default, ran 0.07 ms
  slower per MLP-VAE step (2.24 against 2.17 ms) than this gather of 784-wide rows."""
  flat = array.reshape(array.shape[0], math.prod(array.shape[1:]))
  return jnp.take(flat, rows, axis=0, mode="clip").reshape(rows.shape + array.shape[1:])


class ResidentSplit:
  """A training split held on the devices, batched inside compiled steps.

  Gives the same batches as `Batcher` for the same key and step (its arrays are
  `_make_batch` of the whole split). One process only.

  Args:
    split: arrays of the split.
    global_batch_size: examples per step over all devices.
    key: the run's data stream; it keys the per-epoch permutations.
    value_range: as for `Batcher`.
  """

  def __init__(self, split: Split, *, global_batch_size: int, key: jax.Array, value_range):
    self.num_examples = len(split["image"])
    if global_batch_size > self.num_examples:
      raise DataError(
        f"batch_size {global_batch_size} exceeds the {self.num_examples} training examples"
      )
    self.arrays = _make_batch(split, np.arange(self.num_examples), value_range)
    self.global_batch_size = global_batch_size
    self.key_words = key_words(key)
    self.steps_per_epoch = self.num_examples // global_batch_size
    self._orders_epoch, self._orders = None, None

  @staticmethod
  def converted_nbytes(split: Split, value_range) -> int:
    """The bytes a `ResidentSplit` of `split` would hold, without converting it."""
    first = _make_batch(split, np.arange(1), value_range)
    return len(split["image"]) * sum(a.nbytes for a in first.values())

  def orders(self, first_step: int, steps: int) -> dict[str, np.ndarray]:
    """The permutations a dispatch of `steps` steps from `first_step` needs: `perms` (2, N)
    for its first epoch and the next, and `first_epoch`; computed on the host, cached, so
    a new array exists only when the epoch changes. `steps` ≤ `steps_per_epoch`."""
    if steps > self.steps_per_epoch:
      raise DataError(
        f"{steps} steps per dispatch exceed the {self.steps_per_epoch} steps of an epoch"
      )
    epoch = first_step // self.steps_per_epoch
    if self._orders_epoch != epoch:
      perms = [host_permutation(self.key_words, e, self.num_examples) for e in (epoch, epoch + 1)]
      self._orders = {"perms": np.stack(perms).astype(np.int32), "first_epoch": np.int32(epoch)}
      self._orders_epoch = epoch
    return self._orders

  def batch(self, arrays, orders, step: jax.Array) -> dict:
    """The global batch of `step`, traced, from `arrays` (`self.arrays` on the devices) and
    `orders` (`self.orders(...)` on the devices). Under a mesh, each device gathers the
    rows of its own slice of the batch."""
    epoch, position = jnp.divmod(step, self.steps_per_epoch)
    size = self.global_batch_size
    perm = orders["perms"][epoch - orders["first_epoch"]]
    rows = jax.lax.dynamic_slice(perm, (position * size,), (size,))
    batch = {key: _take_rows(array, rows) for key, array in arrays.items()}
    batch["index"] = jnp.arange(size, dtype=jnp.int32)
    return batch
