"""Checkpoints of the `TrainState` with orbax's `CheckpointManager`.

`<workdir>/checkpoints/<step>/` holds one checkpoint per saved step; the newest
`keep` are kept. Saves are asynchronous (training goes on while orbax writes);
`close()` waits for the last one. Only the step, params and optimizer states are
saved: the data order and every key are functions of the step and the config's
seed, so restoring the step restores them too.
"""

from __future__ import annotations

import pathlib
import shutil
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


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

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, *, force: bool = False) -> bool:
    """Saves `state` (host arrays) at `step` if orbax's policy says so or `force`.

    Orbax saves when `step % every == 0`, and also the first step this manager
    is given; the loop calls `save` only at multiples of `every` and at the end.
    """
    return self._manager.save(step, args=ocp.args.StandardSave(state), force=force)

  def restore(self, target: Any, step: int | None = None) -> Any:
    """Restores the checkpoint of `step` (default: latest) into `target`'s structure."""
    step = self.latest_step() if step is None else step
    return self._manager.restore(step, args=ocp.args.StandardRestore(target))

  def find_usable(self, target: Any) -> tuple[Any, int | None, list[tuple[int, str]]]:
    """Restores the newest checkpoint that reads back whole and finite.

    Returns:
      `(state, step, unusable)`: the restored state and its step (`None, None`
      if no checkpoint is usable), and `(step, reason)` for each newer one that
      was not. Nothing is moved or deleted: see `set_aside`.
    """
    unusable = []
    for step in sorted(self.all_steps(), reverse=True):
      try:
        state = self.restore(target, step)
        _check_restored(state, target)
        return state, step, unusable
      # Orbax and tensorstore report damaged files with many exception types.
      except Exception as e:  # noqa: BLE001
        reason = (
          f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"
        )
        unusable.append((step, reason))
    return None, None, unusable

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

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def _check_restored(state: Any, target: Any) -> None:
  """Raises if a restored state's leaves differ in shape from the target's or are not finite."""
  for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(target), strict=True):
    if np.shape(got) != np.shape(want):
      raise ValueError(f"restored shape {np.shape(got)} differs from {np.shape(want)}")
    got = np.asarray(got)
    if np.issubdtype(got.dtype, np.floating) and not np.all(np.isfinite(got)):
      raise ValueError("restored values are not finite")
