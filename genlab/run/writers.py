"""What a run leaves in its workdir: metrics.jsonl, TensorBoard events, PNG grids.

Only process 0 writes. Each line of `metrics.jsonl` is one JSON object with
`step` and metrics named `<split>/<name>` (`train/loss`, `test/mse`, ...);
train values are means over the steps since the previous line, and each line
says over how many steps (`train/num_steps`) or examples (`test/num_examples`).
"""

from __future__ import annotations

import json
import math
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from PIL import Image


def _step_of(line: str) -> float:
  """The step of a metrics.jsonl line; infinity for a line a crash cut short (dropped)."""
  try:
    return json.loads(line)["step"]
  except (ValueError, KeyError, TypeError):
    return math.inf


def write_atomically(path: pathlib.Path, write, *, binary: bool = False) -> None:
  """Writes `path` whole or not at all: `write(file)` fills a temporary file beside it, which
  is flushed to disk, then renamed over `path` (a crash leaves the old file or the new one,
  never a truncated one)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.tmp")
  with open(tmp, "wb" if binary else "w") as f:
    write(f)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def free_name(path: pathlib.Path) -> pathlib.Path:
  """`path`, or `path.1`, `path.2`, ... the first that does not exist: a folder set aside is
  kept for inspection, so a second one of the same step never replaces the first."""
  n, free = 0, path
  while free.exists() or free.is_symlink():
    n += 1
    free = path.with_name(f"{path.name}.{n}")
  return free


def json_safe(value: Any) -> tuple[Any, list[str]]:
  """`value` with every NaN and ±Inf float replaced by None (JSON has no such numbers), and
  the dotted names of the replaced ones."""
  replaced = []

  def walk(v, name):
    if isinstance(v, float) and not math.isfinite(v):
      replaced.append(name)
      return None
    if isinstance(v, dict):
      return {k: walk(x, f"{name}.{k}" if name else str(k)) for k, x in v.items()}
    if isinstance(v, list | tuple):
      return [walk(x, f"{name}[{i}]") for i, x in enumerate(v)]
    return v

  return walk(value, ""), replaced


def dumps(value: Any, **kwargs) -> str:
  """`json.dumps` of `json_safe(value)`: always valid JSON."""
  return json.dumps(json_safe(value)[0], allow_nan=False, **kwargs)


class MetricWriter:
  """Appends metrics to `<workdir>/metrics.jsonl` and TensorBoard event files.

  Args:
    workdir: the run's workdir.
    resume_step: the step a resumed run starts from: lines of later steps (written after
      that checkpoint by a run that was then killed) are dropped first, so that every step
      appears once.
  """

  def __init__(self, workdir: str | pathlib.Path, *, resume_step: int = 0):
    self.workdir = pathlib.Path(workdir)
    self.active = jax.process_index() == 0
    self._tb = None
    if self.active:
      from tensorboardX import SummaryWriter

      path = self.workdir / "metrics.jsonl"
      if path.is_file():
        kept = [line for line in path.read_text().splitlines() if _step_of(line) <= resume_step]
        write_atomically(path, lambda f: f.write("".join(f"{line}\n" for line in kept)))
      self._tb = SummaryWriter(str(self.workdir / "tensorboard"))
      self._jsonl = open(path, "a")  # noqa: SIM115 - closed in close().

  def write(self, step: int, metrics: Mapping[str, float | int]) -> None:
    if not self.active:
      return
    self._jsonl.write(dumps({"step": int(step), **metrics}) + "\n")
    self._jsonl.flush()
    for name, value in metrics.items():
      if isinstance(value, int | float) and not isinstance(value, bool):
        self._tb.add_scalar(name, value, step)

  def write_image(self, step: int, name: str, grid: np.ndarray) -> pathlib.Path | None:
    """Saves a uint8 (H, W, 3) grid as `images/<name>_step_<step>.png` and in TensorBoard."""
    if not self.active:
      return None
    path = self.workdir / "images" / f"{name}_step_{step:06d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)
    self._tb.add_image(name, grid, step, dataformats="HWC")
    return path

  def close(self) -> None:
    if self.active:
      self._jsonl.close()
      self._tb.close()
