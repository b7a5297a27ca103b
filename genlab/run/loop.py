"""The one training loop every family runs on.

`train(config, workdir)` loads the data, builds the family, and then, from the
latest checkpoint in `workdir` if there is one:

  for each step: batch = f(seed, step) → the family's step, compiled over the mesh
  every `log_every` steps: mean train metrics → metrics.jsonl, TensorBoard, stdout
  every `eval_every` steps and at the end: the whole test split → `test/*` metrics
  every `image_every` steps and at the end: PNG grids of fixed test examples
  every `checkpoint_every` steps and at the end: an orbax checkpoint

Because the batch and the key of a step are functions of (seed, step), a run
resumed from a checkpoint continues exactly as if it had never stopped.

What survives what (README, "What survives what"): SIGTERM/SIGINT save the
current step and exit 75; a NaN/Inf stops before anything is saved after it
(or the step is skipped, `on_nonfinite='skip'`); a damaged newest checkpoint is
set aside and the previous one used; a resume with a config that changes what a
step computes is refused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import pathlib
import shutil
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
import tqdm

from genlab import config as config_lib
from genlab.console import log, warn
from genlab.core import rngs
from genlab.core.state import TrainState
from genlab.data import Batcher, ResidentSplit, augment, eval_batches
from genlab.errors import ConfigError, NonFiniteError, Preempted, WorkdirError, WriteError
from genlab.run.checkpoint import Checkpointer
from genlab.run.lock import WorkdirLock
from genlab.run.pins import read_pins, record_pins
from genlab.run.preemption import StopSignals
from genlab.run.runner import ResidentFeed, Runner, StreamedFeed
from genlab.run.setup import Setup, build, check_workdir
from genlab.run.writers import MetricWriter, UnwrittenFile, write_atomically

CONFIG_FILE = "config.json"
DATASET_FILE = "dataset.json"  # Each split's fingerprint when the checkpoints were trained.


def read_saved_config(path: pathlib.Path) -> ml_collections.ConfigDict:
  """A workdir's config.json, or one line saying why it cannot be read."""
  try:
    return config_lib.from_json(path.read_text())
  except (OSError, ValueError) as e:  # json.JSONDecodeError is a ValueError.
    raise WorkdirError(
      f"{path} cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:120]}); restore "
      "it from a copy, or start afresh with --fresh (the workdir is moved aside)"
    ) from e


# Builds what a family needs (`Family.needs`) and hands it over (`Family.provide`).
Provider = Callable[[Setup], None]


def evaluate(
  s: Setup,
  eval_step,
  state,
  split: str = "test",
  *,
  include_distribution: bool = True,
  final: bool = False,
) -> dict[str, Any]:
  """The family's summary of its eval sums over every example of `split`.

  `final`: the final evaluation (`genlab eval`), where every sample evaluator runs; during
  training (False) those that run only at the final one are left out (`SampleMetrics.
  during_training`).

  Returns:
    The metrics (see `Family.summarize`) plus `num_examples`, the number of
    examples averaged over.
  """
  totals = None
  batches = eval_batches(
    s.dataset.split(split),
    global_batch_size=s.config.eval_batch_size or s.config.batch_size,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
    value_range=s.family.value_range,
  )
  for batch in batches:
    sums = eval_step(state, s.runner.shard(batch))
    totals = sums if totals is None else jax.tree.map(lambda a, b: a + b, totals, sums)
  totals = s.runner.fetch(totals)
  n = totals.pop("num_examples")
  means = s.family.summarize({k: v / n for k, v in totals.items()})
  if split == "test" and include_distribution:
    sample_metrics = s.family.sample_metrics
    scope = contextlib.nullcontext()
    if sample_metrics and not final:
      scope = sample_metrics.during_training()
    with scope:
      means.update(s.family.distribution_metrics(state))
  return {**means, "num_examples": int(round(n))}


def format_number(value: float | int) -> str:
  """A number for a log line: integers as they are, others with 4 significant digits, trailing
  zeros kept, so that a column of them reads alike (0.06930, 0.02471, 23.30, 1.250e-05)."""
  if isinstance(value, bool | int):
    return str(value)
  if not math.isfinite(value):
    return str(value)
  if value != 0 and not 1e-4 <= abs(value) < 1e5:
    return f"{value:.3e}"
  return f"{value:#.4g}".rstrip(".")


def format_metrics(metrics: dict[str, Any]) -> str:
  """`name value` pairs of the scalar metrics, for a log line."""
  return ", ".join(
    f"{k} {format_number(v)}" for k, v in metrics.items() if isinstance(v, int | float)
  )


def write_images(s: Setup, writer: MetricWriter, step: int, state: TrainState) -> None:
  """The family's views of `state` (as placed on the mesh: views compute on it and fetch
  their images), the grids of the first `num_images` test examples (the same ones at every
  step). Every process draws them (the computations on a state spread over several
  processes are theirs together); only process 0 writes."""
  if s.config.num_images <= 0:
    return
  batch = next(
    eval_batches(
      s.dataset.test, global_batch_size=s.config.num_images, value_range=s.family.value_range
    )
  )
  for name, image in s.views.images(state, batch, step).items():
    writer.write_image(step, name, image)


class TrainTimer:
  """Wall time since `reset()`, leaving out the blocks run under `paused()`."""

  def __init__(self):
    self.reset()

  def reset(self) -> None:
    self._start, self._left_out = time.perf_counter(), 0.0

  @contextlib.contextmanager
  def paused(self):
    begin = time.perf_counter()
    try:
      yield
    finally:
      self._left_out += time.perf_counter() - begin

  def elapsed(self) -> float:
    return time.perf_counter() - self._start - self._left_out


@dataclasses.dataclass
class RunResult:
  state: TrainState  # The final state, as placed on the run's mesh.
  step: int
  test_metrics: dict[str, float]
  workdir: pathlib.Path


def for_training(provide: Provider | None) -> Provider | None:
  """`provide` as training calls it: the sample evaluators that run only at the final
  evaluation (`SampleMetrics.during_training`: e.g. `sample_metrics.inception_final_only`)
  are set aside while the resources are built and handed over, so a training run neither
  needs nor loads theirs (the FID Inception's weights are `genlab eval`'s business)."""
  if provide is None:
    return None

  def provide_for_training(s: Setup) -> None:
    sample_metrics = s.family.sample_metrics
    scope = sample_metrics.during_training() if sample_metrics else contextlib.nullcontext()
    with scope:
      provide(s)

  return provide_for_training


def train(
  config: ml_collections.ConfigDict,
  workdir: str | pathlib.Path,
  *,
  provide: Provider | None = None,
  fresh: bool = False,
) -> RunResult:
  """Trains `config` in `workdir`, resuming from its latest checkpoint if any.

  Args:
    config: an experiment config (see `genlab.config`).
    workdir: where config.json, metrics.jsonl, tensorboard/, images/ and
      checkpoints/ go.
    provide: builds the resources the family needs (a GAN's feature network) before
      training; `genlab.run.resources.provide` (what `genlab.train_and_evaluate` passes).
    fresh: start afresh: an existing workdir is moved aside to `WORKDIR.N` (never deleted),
      under its lock (never while another genlab process uses it) and only once the config,
      the data and the model are known to be good (`genlab train --fresh`).

  Returns:
    The final state (host arrays), step and test metrics.

  One trainer at a time: the run holds the workdir's lock (`genlab.run.lock`), and a
  second one stops at once. A run that fails before it has saved a checkpoint leaves the
  workdir as it found it: what it created there is removed (nothing that was there before).
  """
  workdir = pathlib.Path(workdir)
  config_lib.validate(config)
  config_lib.canonicalize(config)  # config.json names what eval must find again.
  provide = for_training(provide)
  built = _set_aside_for_fresh(config, workdir, provide) if fresh else None
  found = sorted(workdir.iterdir()) if workdir.is_dir() else None
  check_workdir(workdir)
  lock = WorkdirLock(workdir, exclusive=True, what="train")
  try:
    lock.acquire()
  except WorkdirError:
    if found is None:  # The workdir this call made, still empty: take it back.
      with contextlib.suppress(OSError):
        workdir.rmdir()
    raise
  try:
    return _train(config, workdir, provide, built)
  except BaseException as e:
    _undo_untrained_run(workdir, found)
    if isinstance(e, UnwrittenFile):  # Before the loop began: nothing was trained.
      raise WriteError(
        f"{e.path} could not be written ({e.reason()}) before training began; nothing was "
        "trained: free space (or fix the permissions) and run the same command again"
      ) from None
    raise
  finally:
    lock.release()


def _set_aside_for_fresh(config, workdir: pathlib.Path, provide: Provider | None) -> Setup | None:
  """For `--fresh`: moves a non-empty `workdir` aside (`move_aside`) while holding its lock,
  after building everything the run needs from `config` (data, model, resources), so that
  bad input is refused before anything moves. Returns that setup (None if there was nothing
  to move)."""
  if not workdir.exists() or (workdir.is_dir() and not any(workdir.iterdir())):
    return None
  here = pathlib.Path.cwd().resolve()
  target = workdir.resolve()
  if here == target or target in here.parents:
    raise WorkdirError(
      f"--fresh would move {workdir} aside, and it holds the current directory ({here}); "
      "run the command from outside it"
    )
  lock = WorkdirLock(workdir, exclusive=True, what="train --fresh")
  with lock:  # A trainer or reader of it: one line naming it, and nothing moves.
    s = build(config, provide=provide)
    aside = move_aside(workdir)
  log(f"moved the existing workdir to {aside}; starting afresh")
  return s


def move_aside(workdir: str | pathlib.Path) -> pathlib.Path | None:
  """Renames an existing, non-empty `workdir` to `WORKDIR.N` (the first free N) so that a run
  starts afresh there; nothing is deleted. With several processes, process 0 moves it and
  the others wait. Returns the new name, or None if there was nothing to move."""
  workdir = pathlib.Path(workdir)
  if not workdir.exists() or (workdir.is_dir() and not any(workdir.iterdir())):
    return None
  n = 1
  while (aside := workdir.with_name(f"{workdir.name}.{n}")).exists():
    n += 1
  if jax.process_index() == 0:
    try:
      workdir.rename(aside)
    except OSError as e:
      raise WorkdirError(f"cannot move {workdir} aside to {aside}: {e.strerror or e}") from e
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices("genlab_fresh_moved_aside")
  return aside


def _undo_untrained_run(workdir: pathlib.Path, found: list[pathlib.Path] | None) -> None:
  """Removes what a failed run created in `workdir` (all of it if it created the workdir),
  unless a checkpoint was saved: then the run is resumable and everything stays."""
  ckpt_dir = workdir / "checkpoints"
  if jax.process_index() != 0 or not workdir.is_dir():
    return
  if ckpt_dir.is_dir() and any(p.name.isdigit() for p in ckpt_dir.iterdir()):
    return
  # Step folders that were set aside are someone's: they stay, and so does their workdir.
  keep = workdir / "checkpoints_unusable"
  if found is None and not keep.exists():
    created = [workdir]
  else:
    created = [p for p in workdir.iterdir() if p not in (found or []) and p != keep]
  for path in created:
    if path.is_dir() and not path.is_symlink():
      shutil.rmtree(path, ignore_errors=True)
    else:
      path.unlink(missing_ok=True)


def _train(
  config, workdir: pathlib.Path, provide: Provider | None, built: Setup | None = None
) -> RunResult:
  ckpt_dir = workdir / "checkpoints"
  check_workdir(ckpt_dir)  # Unwritable checkpoints: one line now, not at the first save.
  saved_config = workdir / CONFIG_FILE
  has_checkpoints = any(p.name.isdigit() for p in ckpt_dir.iterdir())
  if has_checkpoints:
    if not saved_config.is_file():
      raise WorkdirError(
        f"{workdir} has checkpoints but no {CONFIG_FILE}, so nothing says what they were "
        "trained with; put the run's config.json back, or start afresh with --fresh (the "
        "workdir is moved aside, not deleted)"
      )
    config_lib.check_resumable(read_saved_config(saved_config), config)
  pins = read_pins(workdir) if has_checkpoints else {}
  s = built or build(config, provide=provide, pins=pins)
  check_dataset(workdir, s, resuming=has_checkpoints)
  if not pins:  # What the checkpoints are trained with, from now on (an SAE's host).
    record_pins(workdir, s.family.resources)
  runner = s.runner
  batcher = training_batcher(s)  # Checks the batch size against the data before any write.
  resident = resident_split(s, batcher)
  k = config.get("steps_per_dispatch", 1)
  ckpt = Checkpointer(ckpt_dir, keep=config.keep_checkpoints, every=config.checkpoint_every)
  for step, reason in ckpt.set_aside_on_open:
    warn(f"{ckpt_dir / str(step)} is {reason}: moved to checkpoints_unusable/, not read")
  writer, progress, feed, start = None, None, None, 0
  try:
    state = _restore_or_start(config, ckpt, s)
    start = int(state.step)
    if start > config.num_steps:
      raise ConfigError(
        f"the workdir's checkpoint is at step {start}, beyond num_steps={config.num_steps}; "
        f"pass --config.num_steps={start} or more to go on, or start afresh with --fresh"
      )
    if start % k:
      raise ConfigError(
        f"the run stopped at step {start}, not a multiple of steps_per_dispatch={k}; resume "
        "with --config.steps_per_dispatch=1 (results are the same) or a divisor of the step"
      )
    if jax.process_index() == 0:
      write_atomically(saved_config, lambda f: f.write(config_lib.to_json(config)))
    if resident:
      feed = ResidentFeed(resident, runner, steps_per_dispatch=k)
    else:
      feed = StreamedFeed(batcher, runner, start=start, end=config.num_steps, steps_per_dispatch=k)
    train_step = runner.train_step(s.family.train_step, feed, state)
    eval_step = runner.eval_step(s.family.eval_step)
    writer = MetricWriter(workdir, resume_step=start)
    log(
      f"genlab: family={config.family} model={config.model.name} dataset={config.dataset} "
      f"train={batcher.num_examples} test={len(s.dataset.test['image'])} "
      f"batch={config.batch_size} {runner.describe()} processes={jax.process_count()} "
      f"steps {start}->{config.num_steps} data={data_path(batcher, resident)} "
      f"steps_per_dispatch={k}"
    )
    log(f"genlab: {runner.describe_state(s.abstract_state)}")
    test_metrics: dict[str, float] = {}
    metrics_log = MetricsLog(runner, config, ckpt, headline=s.family.headline)
    timer = TrainTimer()
    progress = tqdm.tqdm(
      total=config.num_steps,
      initial=start,
      unit="step",
      disable=not sys.stderr.isatty() or jax.process_index() != 0,
    )
    if start == 0 and config.eval_at_start:
      test_metrics = evaluate(s, eval_step, state)
      writer.write(0, {f"test/{k}": v for k, v in test_metrics.items()})
      log(f"step 0: test {format_metrics(test_metrics)}")
      write_images(s, writer, 0, state)
  except UnwrittenFile as e:
    _close_quietly(progress, writer, feed, ckpt)
    raise _write_error(e, start, ckpt) from None
  except BaseException:
    _close_quietly(progress, writer, feed, ckpt)
    raise
  signals = StopSignals(every=math.lcm(config.preemption_check_every, k))
  step = start
  try:
    with signals:
      for step in range(start + k, config.num_steps + 1, k):
        state, metrics = train_step(state, s.root_key, feed.inputs(step - k))
        metrics_log.add(step, metrics, count=k)
        ckpt.check()  # A background save that failed stops the run now, in one line.
        progress.update(k)
        if step == start + k:  # Compilation happens here; keep it out of examples/s.
          jax.block_until_ready(metrics)
          log(f"first step (compilation included) took {timer.elapsed():.1f}s")
          timer.reset()
          metrics_log.timed_steps = 0
        last = step == config.num_steps
        if step % config.log_every == 0 or last:
          means, rate = metrics_log.write(step, writer, timer.elapsed())
          shown = {k: format_number(means.get(k, math.nan)) for k in s.family.headline}
          progress.set_postfix(**shown, ex_per_s=f"{rate:.0f}")
          timer.reset()
        with timer.paused():
          if step % config.eval_every == 0 or last:
            test_metrics = evaluate(s, eval_step, state)
            writer.write(step, {f"test/{k}": v for k, v in test_metrics.items()})
            log(f"step {step}: test {format_metrics(test_metrics)}")
          if step % config.image_every == 0 or last:
            write_images(s, writer, step, state)
          if step % config.checkpoint_every == 0 or last:
            metrics_log.drain()  # Raises first if a non-finite step is pending ('stop').
            ckpt.save(step, state, force=last)
          if not last and signals.should_stop(step):
            metrics_log.drain()
            if ckpt.latest_step() != step:
              ckpt.save(step, state, force=True)
            ckpt.wait()
            raise Preempted(
              f"{signals.received or 'a stop signal on another process'} at step {step}: "
              f"saved the checkpoint of step {step} in {ckpt.directory}; "
              "run the same command again to resume"
            )
  except UnwrittenFile as e:
    _close_quietly(progress, writer, feed, ckpt)
    raise _write_error(e, step, ckpt) from None
  except BaseException:
    _close_quietly(progress, writer, feed, ckpt)
    raise
  progress.close()
  feed.close()
  ckpt.close()  # Raises CheckpointWriteError if the last save failed.
  try:
    writer.close()
  except UnwrittenFile as e:
    raise _write_error(e, step, ckpt) from None
  return RunResult(state=state, step=int(state.step), test_metrics=test_metrics, workdir=workdir)


def _close_quietly(*things) -> None:
  """Closes what a failing run opened (waiting for saves under way), keeping the error that
  stops it: a full disk fails the closing writes too, and those are consequences."""
  for thing in things:
    if thing is not None:
      with contextlib.suppress(Exception):
        thing.close()


def _write_error(unwritten: UnwrittenFile, step: int, ckpt: Checkpointer) -> WriteError:
  """The one line for a run file that could not be written at `step`: what, why, and the
  checkpoint a resume starts from."""
  last = ckpt.latest_complete()
  where = (
    "no checkpoint is complete" if last is None else f"the last complete checkpoint is step {last}"
  )
  return WriteError(
    f"step {step}: {unwritten.path} could not be written ({unwritten.reason()}); {where}: free "
    "space (or fix the permissions) and run the same command again to resume from it"
  )


def check_dataset(workdir: pathlib.Path, s: Setup, *, resuming: bool) -> None:
  """Refuses, in one line, to resume on data whose examples changed since the workdir's
  checkpoints were trained (`Dataset.fingerprint`, kept in `DATASET_FILE`), unless
  `data.accept_changed_data`; records the fingerprint of a run's data as it starts."""
  path = workdir / DATASET_FILE
  now = {"dataset": s.config.dataset, "fingerprints": s.dataset.fingerprint()}
  saved = None
  if resuming and path.is_file():
    try:
      saved = json.loads(path.read_text()).get("fingerprints", {})
    except (OSError, ValueError, AttributeError):
      saved = {}  # Unreadable: nothing to compare with; the fingerprint is recorded anew.
  changed = [
    split for split, value in now["fingerprints"].items() if saved and saved.get(split) != value
  ]
  if changed and not s.config.data.get("accept_changed_data", False):
    raise ConfigError(
      f"the examples of {s.config.dataset!r} changed since this workdir's checkpoints were "
      f"trained (the {' and '.join(changed)} split: fingerprint {saved.get(changed[0])} then, "
      f"{now['fingerprints'][changed[0]]} now); resuming would go on with other data. Use a "
      "new workdir (or --fresh), or pass --config.data.accept_changed_data=True to go on "
      "with the data as it is now"
    )
  if changed:
    warn(f"going on with changed data ({', '.join(changed)}), as asked; recorded in {path}")
  if jax.process_index() == 0 and (changed or saved is None or not saved):
    write_atomically(path, lambda f: f.write(json.dumps(now, indent=2) + "\n"))


def training_batcher(s: Setup) -> Batcher:
  """The train split's batches of this process, keyed by the run's data stream
  (`stream_key(root_key, 'data')`): a pure function of (seed, step)."""
  config = s.config
  return Batcher(
    s.dataset.train,
    global_batch_size=config.batch_size,
    key=rngs.stream_key(s.root_key, "data"),
    process_index=jax.process_index(),
    process_count=jax.process_count(),
    value_range=s.family.value_range,
    augmentations=augment.parse(
      config.data.get("augment", ""),
      crop_padding=config.data.get("crop_padding", 4),
      image_shape=s.dataset.image_shape if s.dataset.modality == "image" else (),
      target_shape=s.dataset.target_shape,
    ),
    workers=config.data.get("workers", 0),
  )


# Device-resident data ('auto'): when the converted train split is at most this large.
RESIDENT_MAX_BYTES = 1 << 30


def resident_split(s: Setup, batcher: Batcher) -> ResidentSplit | None:
  """The device-resident train split, when `config.data.device_resident` asks for it
  ('on', or 'auto': one process, no augmentation and at most `RESIDENT_MAX_BYTES`); else
  None (streamed). Either way the batches are the same (`genlab.data.pipeline`)."""
  config = s.config
  mode = config.data.get("device_resident", "off")
  if mode == "off" or (mode == "auto" and (jax.process_count() > 1 or batcher.augmentations)):
    return None
  if jax.process_count() > 1:
    raise ConfigError("data.device_resident='on' needs one process; use 'auto' or 'off'")
  nbytes = ResidentSplit.converted_nbytes(s.dataset.train, s.family.value_range)
  if mode == "auto" and nbytes > RESIDENT_MAX_BYTES:
    return None
  k = config.get("steps_per_dispatch", 1)
  if k > batcher.steps_per_epoch:
    raise ConfigError(
      f"steps_per_dispatch={k} exceeds the {batcher.steps_per_epoch} steps of an epoch, the "
      "most one dispatch of device-resident data covers; lower it or set data.device_resident=off"
    )
  return ResidentSplit(
    s.dataset.train,
    global_batch_size=config.batch_size,
    key=rngs.stream_key(s.root_key, "data"),
    value_range=s.family.value_range,
  )


def data_path(batcher: Batcher, resident: ResidentSplit | None) -> str:
  """How the train batches reach the steps, for the run's first log line."""
  if resident is not None:
    return "device-resident"
  how = f"streamed(grain, workers={batcher.workers}"
  if batcher.augmentations:
    how += ", augmented"
  return how + ")"


def _restore_or_start(config, ckpt: Checkpointer, s: Setup) -> TrainState:
  """The newest usable checkpoint's state, each array read straight into its shards on the
  run's mesh (another mesh than the one it was saved on included); damaged newer ones are
  set aside, with a warning. Without one, a fresh state, born sharded.

  Raises:
    WorkdirError: checkpoints exist but none is usable, and
      `on_unusable_checkpoints` is not 'restart'.
  """
  if not ckpt.all_steps():
    return s.initial_state
  state, step, unusable = ckpt.find_usable(s.abstract_state)
  for bad_step, reason in unusable:
    warn(f"the checkpoint of step {bad_step} in {ckpt.directory} is unusable ({reason})")
  if state is None:
    listing = ", ".join(str(st) for st, _ in unusable)
    if config.on_unusable_checkpoints != "restart":
      raise WorkdirError(
        f"none of the checkpoints in {ckpt.directory} (steps {listing}) can be restored, and "
        "genlab does not start over silently: they are left in place; move them away, or pass "
        "--config.on_unusable_checkpoints=restart to set them aside and train from step 0"
      )
    aside = ckpt.set_aside([st for st, _ in unusable])
    warn(f"starting over from step 0 as asked; unusable checkpoints moved to {aside}")
    return s.initial_state
  if unusable:
    aside = ckpt.set_aside([st for st, _ in unusable])
    warn(f"fell back to the checkpoint of step {step}; unusable ones moved to {aside}")
  log(f"resuming from the checkpoint of step {step} in {ckpt.directory}")
  return state


MAX_IN_FLIGHT = 2  # Dispatches the host may queue ahead of the devices.


class MetricsLog:
  """Train metrics between two log lines: fetched lazily, checked for non-finite steps."""

  def __init__(self, runner: Runner, config, ckpt: Checkpointer, *, headline=("loss",)):
    self.runner, self.config, self.ckpt = runner, config, ckpt
    self.headline = headline  # The metrics a log line shows (the family's objectives).
    self.on_device: list[tuple[int, dict[str, jax.Array]]] = []
    self.on_host: list[tuple[int, dict[str, float]]] = []
    self.timed_steps = 0

  def add(self, step: int, metrics: dict[str, jax.Array], count: int = 1) -> None:
    """Metrics of the step `step`, or of the `count` steps ending there (stacked on axis 0).

    Waits for the dispatch `MAX_IN_FLIGHT` calls back to finish: the host stays at most
    that far ahead of the devices (unbounded, device-resident steps queued hundreds of
    multi-device programs, and XLA:CPU's fake devices then deadlocked in an all-reduce).
    """
    self.on_device.append((step, metrics, count))
    self.timed_steps += count
    if len(self.on_device) > MAX_IN_FLIGHT:
      jax.block_until_ready(self.on_device[-1 - MAX_IN_FLIGHT][1])

  def drain(self) -> None:
    """Fetches the pending device metrics; stops on a non-finite step ('stop')."""
    fetched = []
    for step, metrics, count in self.on_device:
      if count == 1:
        fetched.append((step, self.runner.fetch(metrics)))
      else:
        per_step = self.runner.fetch(metrics, steps=count)
        fetched.extend((step - count + 1 + i, m) for i, m in enumerate(per_step))
    self.on_device = []
    self.on_host.extend(fetched)
    bad = [(step, m) for step, m in fetched if m["nonfinite"]]
    if bad and self.config.on_nonfinite == "stop":
      step, m = bad[0]
      names = [f"{k}={v}" for k, v in m.items() if k != "nonfinite" and not math.isfinite(v)]
      raise NonFiniteError(
        f"step {step}: non-finite {', '.join(names) or 'metrics'}; training stopped and nothing "
        f"was saved after it (latest checkpoint: step {self.ckpt.latest_step()}); "
        "--config.on_nonfinite=skip skips such steps instead"
      )

  def write(
    self, step: int, writer: MetricWriter, elapsed: float
  ) -> tuple[dict[str, float], float]:
    """Writes the mean of the finite steps since the last line; returns (means, examples/s)."""
    self.drain()
    good = [m for _, m in self.on_host if not m["nonfinite"]]
    keys = [k for k in self.on_host[0][1] if k != "nonfinite"]
    means = {k: float(np.mean([m[k] for m in good])) if good else math.nan for k in keys}
    skipped = len(self.on_host) - len(good)
    # A line whose steps were all in the first (compiling) dispatch has no rate.
    rate = self.timed_steps * self.config.batch_size / elapsed if self.timed_steps else math.nan
    line = {f"train/{k}": v for k, v in means.items()}
    line.update({"train/num_steps": len(self.on_host), "train/nonfinite_steps": skipped})
    if self.timed_steps:
      line["train/examples_per_s"] = rate
    writer.write(step, line)
    note = f", {skipped} non-finite steps skipped" if skipped else ""
    speed = f"{rate:.0f} examples/s" if self.timed_steps else "compiling, no examples/s"
    shown = {k: means.get(k, math.nan) for k in self.headline}
    log(f"step {step}: train {format_metrics(shown)} (mean of {len(good)} steps{note}), {speed}")
    self.on_host, self.timed_steps = [], 0
    return means, rate
