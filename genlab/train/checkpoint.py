"""Checkpoints of the `TrainState` with orbax's `CheckpointManager`.

`<workdir>/checkpoints/<step>/` holds one checkpoint per saved step; the newest
`keep` are kept. Saves are asynchronous (training goes on while orbax writes);
`close()` waits for the last one. Only the step, params and optimizer states are
saved: the data order and every key are functions of the step and the config's
seed, so restoring the step restores them too.
"""

from __future__ import annotations

import pathlib
from typing import Any

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

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
