"""Checkpoints of the `TrainState` with orbax's `CheckpointManager`.

`<workdir>/checkpoints/<step>/` holds one checkpoint per saved step; the newest
`keep` are kept. Saves are asynchronous (training goes on while orbax writes);
`close()` waits for the last one. Only the step, params and optimizer states are
saved: the data order and every key are functions of the step and the config's
seed, so restoring the step restores them too.

Integrity: once orbax has finished a checkpoint, genlab writes
`<step>/genlab_integrity.json` with every file's size and CRC32, and checks them
before restoring. A truncated or altered checkpoint is then refused before
orbax reads it (orbax would fail on truncation, noisily, and would not notice
altered bytes that still parse). A checkpoint without the record (its process
was killed before writing it) is still restored, and checked for finiteness.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import sys
import zlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

INTEGRITY_FILE = "genlab_integrity.json"


class Checkpointer:
  """Saves and restores train states under `<workdir>/checkpoints`.

  Args:
    directory: the checkpoints folder.
    keep: how many of the newest checkpoints to keep.
    every: save when `step % every == 0` (and whenever `force=True`).
  """

  def __init__(self, directory: str | pathlib.Path, *, keep: int = 3, every: int = 1000):
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=every, create=True)
    self.directory = pathlib.Path(directory).absolute()
    self._manager = ocp.CheckpointManager(self.directory, options=options)
    self._unrecorded: list[int] = []

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, *, force: bool = False) -> bool:
    """Saves `state` (host arrays) at `step` if orbax's policy says so or `force`.

    Orbax saves when `step % every == 0`, and also the first step this manager
    is given; the loop calls `save` only at multiples of `every` and at the end.
    """
    self._record_finished()  # The previous save has had `every` steps to finish.
    saved = self._manager.save(step, args=ocp.args.StandardSave(state), force=force)
    if saved:
      self._unrecorded.append(step)
    return saved

  def restore(self, target: Any, step: int | None = None) -> Any:
    """Restores the checkpoint of `step` (default: latest) into `target`'s structure."""
    step = self.latest_step() if step is None else step
    return self._manager.restore(step, args=ocp.args.StandardRestore(target))

  def find_usable(self, target: Any) -> tuple[Any, int | None, list[tuple[int, str]]]:
    """Restores the newest checkpoint that is intact and reads back whole and finite.

    Returns:
      `(state, step, unusable)`: the restored state and its step (`None, None`
      if no checkpoint is usable), and `(step, reason)` for each newer one that
      was not. Nothing is moved or deleted: see `set_aside`.
    """
    _drop_closed_loop_reports()
    unusable = []
    for step in sorted(self.all_steps(), reverse=True):
      reason = self.damage(step)
      if reason is None:
        try:
          state = self.restore(target, step)
          _check_restored(state, target)
          return state, step, unusable
        # Orbax and tensorstore report damaged files with many exception types.
        except Exception as e:  # noqa: BLE001
          reason = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"
      unusable.append((step, reason))
    return None, None, unusable

  def damage(self, step: int) -> str | None:
    """What is wrong with the files of `step` against its integrity record, if anything."""
    folder = self.directory / str(step)
    record_path = folder / INTEGRITY_FILE
    if not record_path.is_file():
      return None  # Unrecorded: restoring it is the only test.
    try:
      recorded = json.loads(record_path.read_text())["files"]
    except (OSError, ValueError, KeyError) as e:
      return f"unreadable {INTEGRITY_FILE}: {e}"
    for name, (size, crc) in recorded.items():
      path = folder / name
      if not path.is_file():
        return f"{name} is missing"
      if path.stat().st_size != size:
        return f"{name} has {path.stat().st_size} bytes, {size} were written"
      if _crc32(path) != crc:
        return f"{name} differs from what was written (CRC32)"
    return None

  def set_aside(self, steps: list[int]) -> pathlib.Path:
    """Moves the checkpoints of `steps` to `checkpoints_unusable/` (kept, not deleted),
    so that training can save those step numbers again."""
    aside = self.directory.parent / "checkpoints_unusable"
    if jax.process_index() == 0:
      aside.mkdir(exist_ok=True)
      for step in steps:
        destination = aside / str(step)
        if destination.exists():
          shutil.rmtree(destination)
        shutil.move(str(self.directory / str(step)), destination)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      multihost_utils.sync_global_devices("genlab_set_aside_checkpoints")
    self._manager.reload()
    return aside

  def _record_finished(self) -> None:
    """Writes the integrity record of every save that has finished (waits for them)."""
    if not self._unrecorded:
      return
    self._manager.wait_until_finished()
    if jax.process_index() == 0:
      for step in self._unrecorded:
        folder = self.directory / str(step)
        if folder.is_dir():  # Pruned already if keep is small.
          files = {
            str(p.relative_to(folder)): [p.stat().st_size, _crc32(p)]
            for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != INTEGRITY_FILE
          }
          tmp = folder / (INTEGRITY_FILE + ".tmp")
          tmp.write_text(json.dumps({"step": step, "files": files}))
          os.replace(tmp, folder / INTEGRITY_FILE)
    self._unrecorded = []

  def wait(self) -> None:
    """Waits for pending saves and records their integrity."""
    self._manager.wait_until_finished()
    self._record_finished()

  def close(self) -> None:
    self.wait()
    self._manager.close()


def _drop_closed_loop_reports() -> None:
  """Silences the reports of reads that complete after a failed restore.

  When one array of an unrecorded damaged checkpoint fails to read, orbax closes
  its event loop while tensorstore completes the other reads; each completion
  then raises "Event loop is closed" in a tensorstore thread and is reported
  through `sys.unraisablehook` — dozens of tracebacks about nothing. This hook
  drops exactly those and passes everything else on.
  """
  previous = sys.unraisablehook
  if getattr(previous, "genlab_filter", False):
    return

  def hook(report):
    if isinstance(report.exc_value, RuntimeError) and str(report.exc_value) == (
      "Event loop is closed"
    ):
      return
    previous(report)

  hook.genlab_filter = True
  sys.unraisablehook = hook


def _crc32(path: pathlib.Path) -> int:
  crc = 0
  with open(path, "rb") as f:
    while chunk := f.read(1 << 20):
      crc = zlib.crc32(chunk, crc)
  return crc


def _check_restored(state: Any, target: Any) -> None:
  """Raises if a restored state's leaves differ in shape from the target's or are not finite."""
  for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(target), strict=True):
    if np.shape(got) != np.shape(want):
      raise ValueError(f"restored shape {np.shape(got)} differs from {np.shape(want)}")
    got = np.asarray(got)
    if np.issubdtype(got.dtype, np.floating) and not np.all(np.isfinite(got)):
      raise ValueError("restored values are not finite")
