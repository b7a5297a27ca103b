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
import sys
import threading
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


class UnwrittenFile(Exception):
  """`path` could not be written (`error`, an OSError: a full disk, permissions): what
  catches it reports it as one line (`genlab.errors.WriteError`)."""

  def __init__(self, path: pathlib.Path, error: BaseException):
    super().__init__(f"{path}: {error}")
    self.path, self.error = path, error

  def reason(self) -> str:
    """Why, in a few words: `OSError: No space left on device`."""
    error = self.error
    text = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    return f"{type(error).__name__}: {text}"


def write_atomically(path: pathlib.Path, write, *, binary: bool = False) -> None:
  """Writes `path` whole or not at all: `write(file)` fills a temporary file beside it, which
  is flushed to disk, then renamed over `path` (a crash leaves the old file or the new one,
  never a truncated one)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.tmp")
  try:
    with open(tmp, "wb" if binary else "w") as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException as e:  # A full disk leaves no half-written (often 0-byte) temporary file.
    tmp.unlink(missing_ok=True)
    if isinstance(e, OSError):
      raise UnwrittenFile(path, e) from e
    raise


def watch_thread_errors(package: str, errors: list[BaseException]) -> None:
  """Routes exceptions raised in `package`'s background threads (orbax's saves, tensorboardX's
  event writer) into `errors`, the newest caller's list, instead of printing their
  tracebacks; whoever owns `errors` reports them as one line. Other threads' exceptions go on
  as before."""
  hook = threading.excepthook
  if not hasattr(hook, "genlab_watched"):
    previous = hook

    def hook(args):
      frames, tb = [], args.exc_traceback
      while tb is not None:
        frames.append(tb.tb_frame.f_code.co_filename)
        tb = tb.tb_next
      for name, held in hook.genlab_watched.items():
        if any(f"{os.sep}{name}{os.sep}" in frame for frame in frames):
          held.append(args.exc_value)
          return
      previous(args)

    hook.genlab_watched = {}
    threading.excepthook = hook
  hook.genlab_watched[package] = errors


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


def tensorboardx_summary_writer() -> type:
  """tensorboardX's `SummaryWriter`, imported without importing PyTorch.

  tensorboardX's writer module tries `import torch` when it loads, only to accept torch
  tensors as well as NumPy arrays; genlab passes NumPy. Where PyTorch is installed, that
  import cost every `genlab` command 1.8 s of its start (2-core AMD EPYC, Zen 4;
  docs/performance.md) and a few hundred MiB. While tensorboardX loads, `import torch`
  fails (`sys.modules['torch'] = None`, Python's way to hide a module); afterwards it works
  as before. If PyTorch or the writer is already imported, nothing is hidden."""
  if "torch" not in sys.modules and "tensorboardX.writer" not in sys.modules:
    sys.modules["torch"] = None
    try:
      import tensorboardX.writer  # noqa: F401 - loaded here, without torch.
    finally:
      if sys.modules.get("torch", ...) is None:
        del sys.modules["torch"]
  from tensorboardX import SummaryWriter

  return SummaryWriter


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
    # tensorboardX writes events in a thread of its own: what fails there is reported here.
    self._tb_errors: list[BaseException] = []
    if self.active:
      SummaryWriter = tensorboardx_summary_writer()  # noqa: N806 - a class.
      self._path = self.workdir / "metrics.jsonl"
      if self._path.is_file():
        lines = self._path.read_text().splitlines()
        kept = [line for line in lines if _step_of(line) <= resume_step]
        write_atomically(self._path, lambda f: f.write("".join(f"{line}\n" for line in kept)))
      watch_thread_errors("tensorboardX", self._tb_errors)
      try:
        self._tb = SummaryWriter(str(self.workdir / "tensorboard"))
        self._jsonl = open(self._path, "a")  # noqa: SIM115 - closed in close().
      except OSError as e:
        raise UnwrittenFile(self.workdir / "tensorboard", e) from e

  def _check_events(self) -> None:
    if self._tb_errors:
      raise UnwrittenFile(self.workdir / "tensorboard", self._tb_errors[0])

  def write(self, step: int, metrics: Mapping[str, float | int]) -> None:
    if not self.active:
      return
    try:
      self._jsonl.write(dumps({"step": int(step), **metrics}) + "\n")
      self._jsonl.flush()
    except OSError as e:
      raise UnwrittenFile(self._path, e) from e
    for name, value in metrics.items():
      if isinstance(value, int | float) and not isinstance(value, bool):
        self._check_events()  # Before each event: a dead writer thread's queue never drains.
        self._tb.add_scalar(name, value, step)

  def write_image(self, step: int, name: str, grid: np.ndarray) -> pathlib.Path | None:
    """Saves a uint8 (H, W, 3) grid as `images/<name>_step_<step>.png` and in TensorBoard."""
    if not self.active:
      return None
    path = self.workdir / "images" / f"{name}_step_{step:06d}.png"
    try:
      path.parent.mkdir(parents=True, exist_ok=True)
      Image.fromarray(grid).save(path)
    except OSError as e:
      path.unlink(missing_ok=True)  # Not a truncated PNG.
      raise UnwrittenFile(path, e) from e
    self._check_events()
    self._tb.add_image(name, grid, step, dataformats="HWC")
    return path

  def close(self) -> None:
    """Flushes and closes the files (raising `UnwrittenFile` if that fails)."""
    if not self.active:
      return
    try:
      try:
        self._jsonl.close()
      finally:
        self._tb.close()
    except OSError as e:
      raise UnwrittenFile(self._path, e) from e
    self._check_events()
