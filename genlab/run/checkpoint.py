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

import contextlib
import json
import logging
import os
import pathlib
import shutil
import sys
import zlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from genlab.console import warn
from genlab.core.state import all_finite
from genlab.errors import CheckpointWriteError, WorkdirError
from genlab.paths import free_name
from genlab.run.writers import watch_thread_errors

INTEGRITY_FILE = "genlab_integrity.json"


class Checkpointer:
  """Saves and restores train states under `<workdir>/checkpoints`.

  Args:
    directory: the checkpoints folder.
    keep: how many of the newest checkpoints to keep.
    every: save when `step % every == 0` (and whenever `force=True`).
    read_only: for readers (`genlab eval`): nothing is created, moved or cleaned.

  A step folder that is not a complete orbax checkpoint (no `_CHECKPOINT_METADATA`: a save
  that never finished, or a folder someone else made) is never read: a writer moves it to
  `checkpoints_unusable/` when it opens the folder (`set_aside_on_open` lists them, with
  why), a reader skips it. Orbax's temporary folders of unfinished saves are removed.
  """

  def __init__(
    self,
    directory: str | pathlib.Path,
    *,
    keep: int = 3,
    every: int = 1000,
    read_only: bool = False,
  ):
    self.directory = pathlib.Path(directory).absolute()
    self.set_aside_on_open: list[tuple[int, str]] = []
    if not read_only:
      incomplete = [(s, r) for s, r in self._step_folders() if r is not None]
      if incomplete:
        self._move_aside([s for s, _ in incomplete])
        self.set_aside_on_open = incomplete
    if read_only:
      options = ocp.CheckpointManagerOptions(read_only=True, create=False)
    else:
      options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, save_interval_steps=every, create=True, cleanup_tmp_directories=True
      )
    self._unrecorded: list[int] = []
    self._failed: str | None = None
    # Exceptions of orbax's background threads: a save that failed there (and whose other
    # threads may wait on it for minutes) is reported by `check` as one line.
    self._thread_errors: list[BaseException] = []
    watch_thread_errors("orbax", self._thread_errors)
    # A save that fails (a full disk) closes orbax's event loop while tensorstore completes
    # the other writes: their reports are about nothing, as after a failed read.
    _drop_closed_loop_reports()
    self._error_logs: list[logging.LogRecord] = []
    # Held before the manager exists: it starts cleaning old temporary folders in a thread at
    # once, and that thread's errors must not print as tracebacks however early they come.
    if not read_only:  # A reader saves nothing: orbax's errors print as orbax logs them.
      _hold_orbax_error_logs(self._error_logs)
    try:
      with _absl_quiet():  # Read-only, orbax warns that it will not save: as asked.
        self._manager = ocp.CheckpointManager(self.directory, options=options)
    except BaseException:
      _release_orbax_error_logs(self._error_logs)
      raise

  def _step_folders(self) -> list[tuple[int, str | None]]:
    """(step, why it is incomplete, or None) for every step-named folder."""
    if not self.directory.is_dir():
      return []
    return [
      (int(p.name), incomplete(p))
      for p in self.directory.iterdir()
      if p.name.isdigit() and p.is_dir()
    ]

  def latest_complete(self) -> int | None:
    """The newest step whose folder on disk is a complete checkpoint (what a resume would
    start from), whatever this manager holds in memory."""
    complete = [step for step, reason in self._step_folders() if reason is None]
    return max(complete) if complete else None

  def latest_step(self) -> int | None:
    steps = self.all_steps()
    return max(steps) if steps else None

  def all_steps(self) -> list[int]:
    """The steps of the complete checkpoints, and of this manager's saves under way."""
    complete = {s for s, reason in self._step_folders() if reason is None}
    return sorted(s for s in self._manager.all_steps() if s in complete or s in self._unrecorded)

  def save(self, step: int, state: Any, *, force: bool = False) -> bool:
    """Saves `state` at `step` if orbax's policy says so or `force`: its arrays as they are
    placed, each process writing only its own shards (and `save` returns once they are
    copied off the devices, so a step may then donate them).

    Orbax saves when `step % every == 0`, and also the first step this manager
    is given; the loop calls `save` only at multiples of `every` and at the end.
    """
    self._record_finished()  # The previous save has had `every` steps to finish.
    self.check()
    if force or self._manager.should_save(step):
      # The folder must take a file now: orbax creates its own in a background thread, and
      # when that fails its other threads wait minutes for it on a barrier.
      try:
        probe = self.directory / f".write_probe_{jax.process_index()}"
        probe.write_text("ok")
        probe.unlink()
      except OSError as e:
        self._fail(step, e)
    try:
      saved = self._manager.save(step, args=ocp.args.StandardSave(state), force=force)
    except Exception as e:  # noqa: BLE001 - orbax and tensorstore raise many kinds.
      self._fail(step, e)
    if saved:
      self._unrecorded.append(step)
    return saved

  def check(self) -> None:
    """Raises `CheckpointWriteError` if a background save has failed (cheap: call it often)."""
    if self._failed is not None:
      raise CheckpointWriteError(self._failed)
    step = self._unrecorded[-1] if self._unrecorded else None
    if self._thread_errors:
      self._fail(step, self._thread_errors[0])
    try:
      self._manager.check_for_errors()
    except Exception as e:  # noqa: BLE001
      self._fail(step, e)
    if self._error_logs and self._unrecorded:  # Orbax logged a save's failure, not raised yet.
      self._fail(step, self._error_logs[0].exc_info[1])
    # With no save under way, what failed is not one (an old temporary folder orbax could not
    # clean up): each is a warning, and training goes on.
    for record in self._error_logs:
      warn(f"orbax: {record.getMessage()[:160]} ({_first_line(record.exc_info[1])})")
    self._error_logs.clear()

  def _complete_on_disk(self, step: int) -> bool:
    folder = self.directory / str(step)
    return folder.is_dir() and incomplete(folder) is None

  def _fail(self, step: int | None, error: BaseException):
    # What orbax holds as finished (in memory: the folder itself may be what failed).
    good = [s for s in self._manager.all_steps() if s != step and s not in self._unrecorded[-1:]]
    last = (
      f"the last complete checkpoint is step {max(good)}" if good else "no checkpoint is complete"
    )
    self._failed = (
      f"the checkpoint of step {step} could not be written to {self.directory} "
      f"({_first_line(error)}); {last}: fix the cause (disk space, permissions) "
      "and run the same command again to resume from it"
    )
    raise CheckpointWriteError(self._failed) from None

  def restore(self, target: Any, step: int | None = None) -> Any:
    """Restores the checkpoint of `step` (default: latest) into `target`'s structure."""
    step = self.latest_step() if step is None else step
    logged = len(self._error_logs)
    try:
      return self._manager.restore(step, args=ocp.args.StandardRestore(target))
    finally:  # A failed read raises here; its logs are not a save's failure.
      del self._error_logs[logged:]

  def find_usable(self, target: Any) -> tuple[Any, int | None, list[tuple[int, str]]]:
    """Restores the newest checkpoint that is intact and reads back whole and finite.

    Returns:
      `(state, step, unusable)`: the restored state and its step (`None, None`
      if no checkpoint is usable), and `(step, reason)` for each newer one that
      was not. Nothing is moved or deleted: see `set_aside`.
    """
    _drop_closed_loop_reports()
    unusable = [(s, r) for s, r in self._step_folders() if r is not None]  # Never read.
    for step in sorted(self.all_steps(), reverse=True):
      reason = self.damage(step)
      if reason is None:
        try:
          state = self.restore(target, step)
          _check_restored(state, target)
          return state, step, unusable
        # Orbax and tensorstore report damaged files with many exception types.
        except Exception as e:  # noqa: BLE001
          reason = _first_line(e, 200)
      unusable.append((step, reason))
    return None, None, unusable

  def restore_exactly(self, target: Any, step: int) -> Any:
    """The checkpoint of `step`, intact and finite, or one line saying why not (which steps
    the folder holds instead)."""
    held = self.all_steps()
    if step not in held:
      raise WorkdirError(
        f"{self.directory} no longer holds the checkpoint of step {step} (it holds "
        f"{', '.join(map(str, held)) or 'none'})"
      )
    reason = self.damage(step)
    if reason is None:
      try:
        state = self.restore(target, step)
        _check_restored(state, target)
        return state
      except Exception as e:  # noqa: BLE001 - orbax and tensorstore raise many kinds.
        reason = _first_line(e, 200)
    raise WorkdirError(f"the checkpoint of step {step} in {self.directory} is unusable ({reason})")

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
    aside = self._move_aside(steps)
    self._manager.reload()
    return aside

  def _move_aside(self, steps: list[int]) -> pathlib.Path:
    aside = self.directory.parent / "checkpoints_unusable"
    if jax.process_index() == 0:
      aside.mkdir(exist_ok=True)
      for step in steps:
        shutil.move(str(self.directory / str(step)), free_name(aside / str(step)))
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      multihost_utils.sync_global_devices("genlab_set_aside_checkpoints")
    return aside

  def _record_finished(self) -> None:
    """Writes the integrity record of every save that has finished (waits for them)."""
    if not self._unrecorded:
      return
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001 - a background save failed: one line, as `check`.
      if not all(self._complete_on_disk(step) for step in self._unrecorded):
        self._fail(self._unrecorded[-1], e)
      # The saves are on disk: what failed came after them (removing an old step for
      # `keep`). That step stays on disk; said, and training goes on.
      self._error_logs.clear()
      warn(
        f"step {self._unrecorded[-1]} was saved, but orbax failed after it (an old "
        f"checkpoint may be left in {self.directory}): {_first_line(e)}"
      )
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
          try:
            tmp.write_text(json.dumps({"step": step, "files": files}))
            os.replace(tmp, folder / INTEGRITY_FILE)
          except OSError as e:  # A full disk: the checkpoint itself is complete.
            tmp.unlink(missing_ok=True)
            self._failed = (
              f"the integrity record of step {step} could not be written to {folder} "
              f"({_first_line(e)}); the checkpoint itself is complete, so the last complete "
              f"checkpoint is step {step}: fix the cause (disk space, permissions) and run the "
              "same command again to resume from it"
            )
            self._unrecorded = []
            raise CheckpointWriteError(self._failed) from None
    self._unrecorded = []

  def wait(self) -> None:
    """Waits for pending saves and records their integrity."""
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001
      self._fail(self._unrecorded[-1] if self._unrecorded else None, e)
    self._record_finished()

  def close(self) -> None:
    """Waits for pending saves (raising `CheckpointWriteError` if one failed) and closes."""
    try:
      if self._failed is None:
        self.wait()
    finally:
      with contextlib.suppress(Exception):  # A failed save was reported already.
        self._manager.close()
      _release_orbax_error_logs(self._error_logs)


@contextlib.contextmanager
def _absl_quiet():
  """absl's warnings off for the duration (errors still show)."""
  logger = logging.getLogger("absl")
  level = logger.level
  logger.setLevel(logging.ERROR)
  try:
    yield
  finally:
    logger.setLevel(level)


class _OrbaxErrorLogs(logging.Filter):
  """Holds orbax's error logs that carry a traceback instead of printing them.

  When a save fails in one of orbax's threads (a full disk, a folder gone), orbax logs the
  exception with its traceback from each thread it passes through (about 200 lines), then
  raises it at the next `check_for_errors` or `wait_until_finished`. `Checkpointer` reports
  that as one line, turns a held log whose exception was not raised into the same error
  while a save is under way, and shows the others as one-line warnings: nothing is lost.
  Records go to the newest open Checkpointer (`owners`); orbax's other logs pass.
  """

  def __init__(self):
    super().__init__()
    self.owners: list[list[logging.LogRecord]] = []

  def filter(self, record: logging.LogRecord) -> bool:
    if (
      self.owners
      and record.levelno >= logging.ERROR
      and record.exc_info
      and f"{os.sep}orbax{os.sep}" in record.pathname
    ):
      self.owners[-1].append(record)
      return False
    return True


def _orbax_error_logs() -> _OrbaxErrorLogs:
  """The one filter on absl's logger (added on first use)."""
  logger = logging.getLogger("absl")
  for f in logger.filters:
    if isinstance(f, _OrbaxErrorLogs):
      return f
  f = _OrbaxErrorLogs()
  logger.addFilter(f)
  return f


def _hold_orbax_error_logs(held: list[logging.LogRecord]) -> None:
  """Orbax's error logs go into `held` (the newest Checkpointer's) from now on."""
  _orbax_error_logs().owners.append(held)


def _release_orbax_error_logs(held: list[logging.LogRecord]) -> None:
  """`held`'s Checkpointer is closed; with none open, orbax's error logs print again."""
  logs = _orbax_error_logs()
  logs.owners = [owner for owner in logs.owners if owner is not held]
  if not logs.owners:
    logging.getLogger("absl").removeFilter(logs)


def _first_line(error: BaseException, limit: int = 160) -> str:
  """`Type: the first line of the message`, cut at `limit` characters (orbax's and
  tensorstore's messages run to pages)."""
  return f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0][:limit]}"


def incomplete(folder: pathlib.Path) -> str | None:
  """Why a step folder is not a complete orbax checkpoint, or None if it is."""
  if not (folder / "_CHECKPOINT_METADATA").is_file():
    return (
      "not a complete checkpoint (no _CHECKPOINT_METADATA: an unfinished save, or a folder "
      "orbax did not write)"
    )
  return None


def _drop_closed_loop_reports() -> None:
  """Silences the reports of reads and writes that complete after a failed restore or save.

  When one array of an unrecorded damaged checkpoint fails to read, or one write of a save
  fails (a full disk), orbax closes its event loop while tensorstore completes the other
  reads or writes; each completion then raises "Event loop is closed" in a tensorstore
  thread and is reported through `sys.unraisablehook` — dozens of tracebacks about nothing
  (the failure itself is reported as one line). This hook drops exactly those and passes
  everything else on.
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
  """Raises if a restored state's leaves differ in shape from the target's or are not finite;
  checked where the arrays are (one boolean comes back), never by copying them whole."""
  for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(target), strict=True):
    if np.shape(got) != np.shape(want):
      raise ValueError(f"restored shape {np.shape(got)} differs from {np.shape(want)}")
  finite = _all_finite(state)
  if not bool(np.asarray(finite.addressable_data(0) if isinstance(finite, jax.Array) else finite)):
    raise ValueError("restored values are not finite")


@jax.jit
def _all_finite(state):
  return all_finite(state)
