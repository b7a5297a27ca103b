"""The one training loop every family runs on, and the evaluation behind `genlab eval`.

`train_and_evaluate(config, workdir)` loads the data, builds the family, and
then, from the latest checkpoint in `workdir` if there is one:

  for each step: batch = f(seed, step) → compiled family step (jit / pmap / shard_map)
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
import sys
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import tqdm

from genlab import config as config_lib
from genlab.data import Batcher, Dataset, ResidentSplit, eval_batches, load_dataset
from genlab.errors import ConfigError, NonFiniteError, Preempted, WorkdirError
from genlab.families import Family, get_family
from genlab.train import rngs
from genlab.train.checkpoint import Checkpointer
from genlab.train.parallel import Runner
from genlab.train.preemption import StopSignals
from genlab.train.state import TrainState
from genlab.train.writers import MetricWriter, image_grid

CONFIG_FILE = "config.json"
EVAL_FILE = "eval.json"


def log(message: str) -> None:
  """Prints on process 0 only, without breaking a progress bar."""
  if jax.process_index() == 0:
    tqdm.tqdm.write(message, file=sys.stdout)


def warn(message: str) -> None:
  """A warning on stderr, from process 0 only."""
  if jax.process_index() == 0:
    tqdm.tqdm.write(f"genlab: warning: {message}", file=sys.stderr)


@dataclasses.dataclass
class Setup:
  """Everything a run or an evaluation builds from a config."""

  config: ml_collections.ConfigDict
  dataset: Dataset
  family: Family
  runner: Runner
  root_key: jax.Array
  initial_state: TrainState  # Host arrays; the structure checkpoints restore into.


def setup(config: ml_collections.ConfigDict) -> Setup:
  """Loads the data and builds the family, runner and a fresh state for `config`."""
  config_lib.validate(config)
  dataset = load_dataset(
    config.dataset,
    data_dir=config.data.data_dir,
    image_key=config.data.image_key,
    label_key=config.data.label_key,
    target_key=config.data.target_key,
    modality=config.data.get("modality"),
  )
  if config.get("num_epochs"):
    config.num_steps = config.num_epochs * (len(dataset.train["image"]) // config.batch_size)
  family = get_family(config.family)(config, dataset)
  runner = Runner(
    config.parallel,
    global_batch_size=config.batch_size,
    eval_batch_size=config.eval_batch_size or config.batch_size,
  )
  root_key = rngs.root_key(config.seed)
  example = next(eval_batches(dataset.train, global_batch_size=1, value_range=family.value_range))
  try:
    state = jax.jit(family.init_state)(rngs.stream_key(root_key, "init"), example)
  except (TypeError, ValueError, ConfigError) as e:  # Flax reports shape mismatches so.
    raise ConfigError(
      f"model {config.model.name!r} cannot take {dataset.name}'s images of shape "
      f"{dataset.image_shape} (target {dataset.target_shape}): {str(e).splitlines()[0][:300]}"
    ) from e
  return Setup(config, dataset, family, runner, root_key, jax.device_get(state))


def check_workdir(workdir: pathlib.Path) -> None:
  """Creates `workdir` and checks that it is writable, before any work starts."""
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    probe = workdir / f".write_probe_{jax.process_index()}"
    probe.write_text("ok")
    probe.unlink()
  except OSError as e:
    raise WorkdirError(f"cannot write to workdir {workdir}: {e.strerror or e}") from e


def evaluate(
  s: Setup, eval_step, state, split: str = "test", *, include_distribution: bool = True
) -> dict[str, Any]:
  """The family's summary of its eval sums over every example of `split`.

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
    means.update(s.family.distribution_metrics(s.runner.unreplicate(state)))
  return {**means, "num_examples": int(round(n))}


def format_metrics(metrics: dict[str, Any]) -> str:
  """`name value` pairs of the scalar metrics, for a log line."""
  return ", ".join(f"{k} {v:.5g}" for k, v in metrics.items() if isinstance(v, int | float))


def write_images(s: Setup, writer: MetricWriter, step: int, state: TrainState) -> None:
  """Grids of the first `num_images` test examples (the same ones at every step), and the
  family's other views."""
  if not writer.active or s.config.num_images <= 0:
    return
  batch = next(
    eval_batches(
      s.dataset.test, global_batch_size=s.config.num_images, value_range=s.family.value_range
    )
  )
  for name, rows in s.family.image_rows(state, batch).items():
    n = int(batch["mask"].sum())
    grid = image_grid([r[:n] for r in rows], value_range=s.family.value_range)
    writer.write_image(step, name, grid)
  for name, image in s.family.extra_images(state, step).items():
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
  state: TrainState  # Host copy of the final state.
  step: int
  test_metrics: dict[str, float]
  workdir: pathlib.Path


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> RunResult:
  """Trains `config` in `workdir`, resuming from its latest checkpoint if any.

  Args:
    config: an experiment config (see `genlab.config`).
    workdir: where config.json, metrics.jsonl, tensorboard/, images/ and
      checkpoints/ go.

  Returns:
    The final state (host arrays), step and test metrics.
  """
  workdir = pathlib.Path(workdir)
  config_lib.validate(config)
  check_workdir(workdir)
  ckpt_dir = workdir / "checkpoints"
  saved_config = workdir / CONFIG_FILE
  if saved_config.is_file() and ckpt_dir.is_dir() and any(ckpt_dir.iterdir()):
    config_lib.check_resumable(config_lib.from_json(saved_config.read_text()), config)
  s = setup(config)
  batcher = Batcher(  # Checks the batch size against the data before anything is written.
    s.dataset.train,
    global_batch_size=config.batch_size,
    seed=config.seed,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
    value_range=s.family.value_range,
  )
  resident = resident_split(s, batcher)
  k = config.get("steps_per_dispatch", 1)
  ckpt = Checkpointer(ckpt_dir, keep=config.keep_checkpoints, every=config.checkpoint_every)
  writer, progress = None, None
  try:
    state = _restore_or_start(config, ckpt, s.initial_state)
    start = int(state.step)
    if start % k:
      raise ConfigError(
        f"the run stopped at step {start}, not a multiple of steps_per_dispatch={k}; resume "
        "with --config.steps_per_dispatch=1 (results are the same) or a divisor of the step"
      )
    # Costly one-off preparation (a GAN's feature network) before signals are taken over.
    s.family.prepare()
    if jax.process_index() == 0:
      saved_config.write_text(config_lib.to_json(config))
    train_step = s.runner.train_step(s.family.train_step, steps_per_dispatch=k, data=resident)
    eval_step = s.runner.eval_step(s.family.eval_step)
    writer = MetricWriter(workdir)
    log(
      f"genlab: family={config.family} model={config.model.name} dataset={config.dataset} "
      f"train={batcher.num_examples} test={len(s.dataset.test['image'])} "
      f"batch={config.batch_size} devices={s.runner.num_devices} "
      f"processes={jax.process_count()} parallel={s.runner.mode} steps {start}->{config.num_steps}"
      f" data={'device-resident' if resident else 'streamed'} steps_per_dispatch={k}"
    )
    state = s.runner.replicate(state)
    arrays = s.runner.replicate(resident.arrays) if resident else None
    test_metrics: dict[str, float] = {}
    metrics_log = MetricsLog(s.runner, config, ckpt)
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
      write_images(s, writer, 0, s.runner.unreplicate(state))
  except BaseException:
    if progress is not None:
      progress.close()
    if writer is not None:
      writer.close()
    ckpt.close()
    raise
  signals = StopSignals(every=math.lcm(config.preemption_check_every, k))
  dispatches = None if resident else _stacked(batcher.iterate(start, config.num_steps), k)
  host_orders = orders = None
  try:
    with signals:
      for step in range(start + k, config.num_steps + 1, k):
        if resident:
          new_orders = resident.orders(step - k, k)
          if new_orders is not host_orders:  # A new epoch: its order goes to the devices.
            host_orders, orders = new_orders, s.runner.replicate(new_orders)
          state, metrics = train_step(state, s.root_key, arrays, orders)
        else:
          batch = next(dispatches)
          batch = s.runner.shard(batch) if k == 1 else s.runner.shard_steps(batch)
          state, metrics = train_step(state, batch, s.root_key)
        metrics_log.add(step, metrics, count=k)
        progress.update(k)
        if step == start + k:  # Compilation happens here; keep it out of examples/s.
          jax.block_until_ready(metrics)
          log(f"first step (compilation included) took {timer.elapsed():.1f}s")
          timer.reset()
          metrics_log.timed_steps = 0
        last = step == config.num_steps
        if step % config.log_every == 0 or last:
          means, rate = metrics_log.write(step, writer, timer.elapsed())
          progress.set_postfix(loss=f"{means.get('loss', math.nan):.4g}", ex_per_s=f"{rate:.0f}")
          timer.reset()
        with timer.paused():
          if step % config.eval_every == 0 or last:
            test_metrics = evaluate(s, eval_step, state)
            writer.write(step, {f"test/{k}": v for k, v in test_metrics.items()})
            log(f"step {step}: test {format_metrics(test_metrics)}")
          if step % config.image_every == 0 or last:
            write_images(s, writer, step, s.runner.unreplicate(state))
          if step % config.checkpoint_every == 0 or last:
            metrics_log.drain()  # Raises first if a non-finite step is pending ('stop').
            ckpt.save(step, s.runner.unreplicate(state), force=last)
          if not last and signals.should_stop(step):
            metrics_log.drain()
            if ckpt.latest_step() != step:
              ckpt.save(step, s.runner.unreplicate(state), force=True)
            ckpt.wait()
            raise Preempted(
              f"{signals.received or 'a stop signal on another process'} at step {step}: "
              f"saved the checkpoint of step {step} in {ckpt.directory}; "
              "run the same command again to resume"
            )
  finally:
    progress.close()
    ckpt.close()
    writer.close()
  final = s.runner.unreplicate(state)
  return RunResult(state=final, step=int(final.step), test_metrics=test_metrics, workdir=workdir)


# Device-resident data ('auto'): when the converted train split is at most this large.
RESIDENT_MAX_BYTES = 1 << 30


def resident_split(s: Setup, batcher: Batcher) -> ResidentSplit | None:
  """The device-resident train split, when `config.data.device_resident` asks for it
  ('on', or 'auto': one process and at most `RESIDENT_MAX_BYTES`); else None (streamed).
  Either way the batches are the same (`genlab.data.pipeline`)."""
  config = s.config
  mode = config.data.get("device_resident", "off")
  if mode == "off" or (mode == "auto" and jax.process_count() > 1):
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
    seed=config.seed,
    value_range=s.family.value_range,
  )


def _stacked(batches, k: int):
  """Groups of `k` consecutive batches, stacked on a new leading axis (`k` = 1: as they are)."""
  if k == 1:
    yield from batches
    return
  while group := [b for _, b in zip(range(k), batches, strict=False)]:
    yield {key: np.stack([b[key] for b in group]) for key in group[0]}


def _restore_or_start(config, ckpt: Checkpointer, initial_state: TrainState) -> TrainState:
  """The newest usable checkpoint's state; damaged newer ones are set aside, with a warning.

  Raises:
    WorkdirError: checkpoints exist but none is usable, and
      `on_unusable_checkpoints` is not 'restart'.
  """
  if not ckpt.all_steps():
    return initial_state
  state, step, unusable = ckpt.find_usable(initial_state)
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
    return initial_state
  if unusable:
    aside = ckpt.set_aside([st for st, _ in unusable])
    warn(f"fell back to the checkpoint of step {step}; unusable ones moved to {aside}")
  log(f"resuming from the checkpoint of step {step} in {ckpt.directory}")
  return state


MAX_IN_FLIGHT = 2  # Dispatches the host may queue ahead of the devices.


class MetricsLog:
  """Train metrics between two log lines: fetched lazily, checked for non-finite steps."""

  def __init__(self, runner: Runner, config, ckpt: Checkpointer):
    self.runner, self.config, self.ckpt = runner, config, ckpt
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
    log(
      f"step {step}: train loss {means.get('loss', math.nan):.5g} "
      f"(mean of {len(good)} steps{note}), {speed}"
    )
    self.on_host, self.timed_steps = [], 0
    return means, rate


# Fields `genlab eval` / `genlab sample` may override: they change how, not what, is evaluated.
EVAL_OVERRIDES = ("eval_batch_size", "parallel", "vae.nll_k")


def restore_workdir(
  workdir: str | pathlib.Path, overrides: list[str] = ()
) -> tuple[Setup, TrainState, int]:
  """The setup of a trained workdir and its newest usable checkpoint (host arrays).

  Args:
    workdir: a genlab workdir.
    overrides: `--config.FIELD=VALUE` strings, for the fields in `EVAL_OVERRIDES`.
  """
  workdir = pathlib.Path(workdir)
  config_path = workdir / CONFIG_FILE
  if not config_path.is_file():
    raise WorkdirError(f"{workdir} has no {CONFIG_FILE}: is it a genlab workdir?")
  config = config_lib.from_json(config_path.read_text())
  for item in overrides:
    field = item.removeprefix("--config.").split("=", 1)[0]
    if field not in EVAL_OVERRIDES:
      raise ConfigError(
        f"{item}: evaluation may override only {', '.join(EVAL_OVERRIDES)}; the rest comes "
        f"from {config_path}"
      )
  config_lib.apply_overrides(config, list(overrides))
  s = setup(config)
  ckpt = Checkpointer(workdir / "checkpoints")
  try:
    if not ckpt.all_steps():
      raise WorkdirError(f"{workdir} has no checkpoint to evaluate")
    restored, step, unusable = ckpt.find_usable(s.initial_state)
  finally:
    ckpt.close()
  for bad_step, reason in unusable:
    warn(f"the checkpoint of step {bad_step} is unusable ({reason}); using an older one")
  if restored is None:
    raise WorkdirError(f"none of the checkpoints in {workdir / 'checkpoints'} can be restored")
  return s, restored, step


def evaluate_workdir(workdir: str | pathlib.Path, overrides: list[str] = ()) -> dict[str, Any]:
  """Restores the latest checkpoint of `workdir`, evaluates it on the test split,
  and writes `<workdir>/eval.json`.

  Returns:
    The report: the protocol (dataset, split, examples, checkpoint step, seed,
    value range, the family's own settings), the metrics, including the
    family's reference baselines, and their definitions.
  """
  s, restored, step = restore_workdir(workdir, overrides)
  config = s.config
  s.family.prepare()
  state = s.runner.replicate(restored)
  metrics = evaluate(s, s.runner.eval_step(s.family.eval_step), state)
  if s.family.final_eval_step is not None:
    final_step = s.runner.eval_step(s.family.final_eval_step)
    final = evaluate(s, final_step, state, include_distribution=False)
    final.pop("num_examples")
    metrics.update(final)
  num_examples = metrics.pop("num_examples")
  metrics.update(s.family.reference_metrics())
  if "mse" in metrics and "mse_mean_baseline" in metrics:
    metrics["mse_to_baseline_ratio"] = metrics["mse"] / metrics["mse_mean_baseline"]
  if "mse" in metrics and "mse_seq_mean_baseline" in metrics:
    metrics["mse_to_seq_mean_ratio"] = metrics["mse"] / metrics["mse_seq_mean_baseline"]
  report = {
    "dataset": config.dataset,
    "split": "test",
    "num_examples": num_examples,
    "checkpoint_step": int(step),
    "seed": config.seed,
    "value_range": None if s.family.value_range is None else list(s.family.value_range),
    "protocol": s.family.protocol(),
    "metrics": metrics,
    "definitions": s.family.definitions(),
  }
  if jax.process_index() == 0:
    (pathlib.Path(workdir) / EVAL_FILE).write_text(json.dumps(report, indent=2, ensure_ascii=False))
  return report


def sample_workdir(
  workdir: str | pathlib.Path, *, num: int, out: str | pathlib.Path, seed: int = 0
) -> pathlib.Path:
  """Draws `num` samples from a trained workdir's model and saves them as a PNG grid."""
  from PIL import Image

  s, state, step = restore_workdir(workdir)
  if num < 1:
    raise ConfigError(f"--num must be positive, got {num}")
  samples = s.family.sample(state, rngs.stream_key(rngs.root_key(seed), "sample"), num)
  columns = math.ceil(math.sqrt(num))
  padded = np.concatenate(
    [samples, np.full((-num % columns, *samples.shape[1:]), s.family.value_range[1])]
  )
  grid = image_grid(
    list(padded.reshape(-1, columns, *samples.shape[1:])), value_range=s.family.value_range
  )
  out = pathlib.Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(grid).save(out)
  log(f"{num} samples of the checkpoint of step {step} (sampling seed {seed}) written to {out}")
  return out
