"""What `genlab eval` and `genlab sample` do with a trained workdir.

`restore_workdir` rebuilds a workdir's setup from its `config.json` and
restores its newest usable checkpoint; `evaluate_workdir` evaluates it on the
whole test split and writes `eval.json` (the protocol, the metrics and what they
mean); `sample_workdir` draws a grid of samples from a generative family.
"""

from __future__ import annotations

import math
import os
import pathlib
from typing import Any

import jax
import numpy as np

from genlab import config as config_lib
from genlab import evaluators
from genlab.console import log, warn
from genlab.core import rngs
from genlab.core.state import TrainState
from genlab.errors import ConfigError, WorkdirError, WriteError
from genlab.families import get_family
from genlab.run.checkpoint import Checkpointer
from genlab.run.lock import WorkdirLock
from genlab.run.loop import CONFIG_FILE, Provider, evaluate, read_saved_config
from genlab.run.pins import read_pins
from genlab.run.setup import Setup, build
from genlab.run.writers import UnwrittenFile, dumps, json_safe, write_atomically
from genlab.views import image_grid

EVAL_FILE = "eval.json"
# Fields `genlab eval` / `genlab sample` may override for every family: they change how,
# not what, is evaluated. Families add their own (`Family.eval_overrides`).
EVAL_OVERRIDES = ("eval_batch_size", "mesh.devices", "mesh.fsdp", "mesh.fsdp_min_size", "kernels")


def eval_overrides(family: str) -> tuple[str, ...]:
  """The fields `genlab eval` may override for a workdir of `family`: with those of
  `config.sample_metrics` for a family that samples (which metrics of its samples, and of
  how many, change nothing trained)."""
  family_class = get_family(family)
  sampling = ()
  if family_class.sample_evaluators is not None:
    sampling = tuple(f"sample_metrics.{name}" for name in evaluators.options())
  return EVAL_OVERRIDES + family_class.eval_overrides + sampling


def saved_family(workdir: str | pathlib.Path) -> type:
  """The family class a workdir was trained with (from its config.json), found without
  building anything, so that a command it cannot serve says so at once."""
  config_path = pathlib.Path(workdir) / CONFIG_FILE
  if not config_path.is_file():
    raise WorkdirError(f"{workdir} has no {CONFIG_FILE}: is it a genlab workdir?")
  return get_family(read_saved_config(config_path).family)


def offers(family: type, method: str) -> bool:
  """Whether `family` implements `Family.<method>` (`sample`, `encode`)."""
  from genlab.families import Family

  return getattr(family, method) is not getattr(Family, method)


def restore_workdir(
  workdir: str | pathlib.Path,
  overrides: list[str] = (),
  *,
  provide: Provider | None = None,
  step: int | None = None,
) -> tuple[Setup, TrainState, int]:
  """The setup of a trained workdir and its newest usable checkpoint, read straight into its
  shards on the mesh of `config.mesh` (overridable).

  Args:
    workdir: a genlab workdir.
    overrides: `--config.FIELD=VALUE` strings, for the fields of `eval_overrides`.
    provide: builds the resources the family needs (see `genlab.run.loop.train`), the ones
      the workdir's checkpoints were trained with (`resources.json`).
    step: restore exactly this checkpoint (an SAE's host, pinned), or say in one line that
      the workdir no longer holds it.
  """
  workdir = pathlib.Path(workdir)
  config_path = workdir / CONFIG_FILE
  if not config_path.is_file():
    raise WorkdirError(f"{workdir} has no {CONFIG_FILE}: is it a genlab workdir?")
  config = read_saved_config(config_path)
  allowed = eval_overrides(config.family)
  for item in overrides:
    field = item.removeprefix("--config.").split("=", 1)[0]
    if field not in allowed:
      raise ConfigError(
        f"{item}: evaluation may override only {', '.join(allowed)}; the rest comes from "
        f"{config_path}"
      )
  config_lib.apply_overrides(config, list(overrides))
  config_lib.validate(config)
  if not (workdir / "checkpoints").is_dir():  # Said before any costly resource is built.
    raise WorkdirError(f"{workdir} has no checkpoint to evaluate")
  s = build(config, provide=provide, pins=read_pins(workdir))
  with WorkdirLock(workdir, exclusive=False, what="eval"):
    ckpt = Checkpointer(workdir / "checkpoints", read_only=True)
    try:
      if not ckpt.all_steps():
        raise WorkdirError(f"{workdir} has no checkpoint to evaluate")
      if step is None:
        restored, step, unusable = ckpt.find_usable(s.abstract_state)
      else:
        restored, unusable = ckpt.restore_exactly(s.abstract_state, step), []
    finally:
      ckpt.close()
  for bad_step, reason in unusable:
    warn(f"the checkpoint of step {bad_step} is unusable ({reason}); using an older one")
  if restored is None:
    raise WorkdirError(f"none of the checkpoints in {workdir / 'checkpoints'} can be restored")
  return s, restored, step


def evaluate_workdir(
  workdir: str | pathlib.Path, overrides: list[str] = (), *, provide: Provider | None = None
) -> dict[str, Any]:
  """Restores the latest checkpoint of `workdir`, evaluates it on the test split,
  and writes `<workdir>/eval.json`.

  Args:
    workdir: a trained genlab workdir.
    overrides: `--config.FIELD=VALUE` strings (see `eval_overrides`).
    provide: builds the resources the family needs (see `genlab.run.loop.train`).

  Returns:
    The report: the protocol (dataset, split, examples, checkpoint step, seed,
    value range, the family's own settings), the metrics, including the
    family's reference baselines, and their definitions.
  """
  s, restored, step = restore_workdir(workdir, overrides, provide=provide)
  config = s.config
  path = pathlib.Path(workdir) / EVAL_FILE
  # Found out now, not after a long evaluation: the report is then printed, not saved.
  unwritable = _unwritable(path)
  if unwritable:
    warn(f"cannot write {path} ({unwritable}): the report will be printed, not saved")
  state = restored
  metrics = evaluate(s, s.runner.eval_step(s.family.eval_step), state, final=True)
  if s.family.final_eval_step is not None:
    final_step = s.runner.eval_step(s.family.final_eval_step)
    final = evaluate(s, final_step, state, include_distribution=False)
    final.pop("num_examples")
    metrics.update(final)
  num_examples = metrics.pop("num_examples")
  metrics.update(s.family.reference_metrics(metrics))
  metrics, not_finite = json_safe(metrics)
  definitions = s.report.describe(metrics)
  for name in not_finite:
    definitions[name] = f"null: the value was not finite (NaN or ±Inf). {definitions.get(name, '')}"
  report = {
    "dataset": config.dataset,
    "split": "test",
    "num_examples": num_examples,
    "checkpoint_step": int(step),
    "seed": config.seed,
    "value_range": None if s.family.value_range is None else list(s.family.value_range),
    "protocol": s.report.eval_protocol(),
    "metrics": metrics,
    "definitions": definitions,
  }
  if jax.process_index() == 0:
    try:
      if unwritable:
        raise UnwrittenFile(path, OSError(unwritable))
      text = dumps(report, indent=2, ensure_ascii=False)
      write_atomically(path, lambda f: f.write(text))
    except UnwrittenFile as e:
      kept = f"{path} is left as it was" if path.is_file() else f"no {path} was written"
      raise WriteError(
        f"{path} could not be written ({e.reason()}): the report is printed above, and "
        f"{kept}; free space (or fix the permissions) and run genlab eval again to save it",
        report=report,
      ) from None
  return report


def _unwritable(path: pathlib.Path) -> str | None:
  """Why `path` cannot be written, or None if it can: tried with a file beside it that takes
  a block of bytes to disk (an empty file is created even on a full disk)."""
  probe = path.with_name(f".{path.name}.probe")
  try:
    try:
      with open(probe, "wb") as f:
        f.write(b"\0" * 4096)
        f.flush()
        os.fsync(f.fileno())
    finally:
      probe.unlink(missing_ok=True)
  except OSError as e:
    return e.strerror or str(e)
  return None


def sample_workdir(
  workdir: str | pathlib.Path, *, num: int, out: str | pathlib.Path, seed: int = 0
) -> pathlib.Path:
  """Draws `num` samples from a trained workdir's model and saves them as a PNG grid."""
  from PIL import Image

  if num < 1:
    raise ConfigError(f"--num must be positive, got {num}")
  family = saved_family(workdir)
  if not offers(family, "sample"):
    raise WorkdirError(
      f"{workdir} holds a {family.__name__}, which does not generate samples (VAEs and GANs "
      "do); nothing was restored"
    )
  s, state, step = restore_workdir(workdir)
  samples = s.family.sample(state, rngs.stream_key(rngs.root_key(seed), "sample"), num)
  columns = math.ceil(math.sqrt(num))
  padded = np.concatenate(
    [samples, np.full((-num % columns, *samples.shape[1:]), s.family.value_range[1])]
  )
  grid = image_grid(
    list(padded.reshape(-1, columns, *samples.shape[1:])), value_range=s.family.value_range
  )
  out = pathlib.Path(out)
  try:
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(out)
  except OSError as e:
    out.unlink(missing_ok=True)
    raise WriteError(f"{out} could not be written ({UnwrittenFile(out, e).reason()})") from None
  log(f"{num} samples of the checkpoint of step {step} (sampling seed {seed}) written to {out}")
  return out


__all__ = ["EVAL_FILE", "eval_overrides", "evaluate_workdir", "restore_workdir", "sample_workdir"]
