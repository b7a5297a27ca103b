"""One trainer per workdir: an advisory lock, exclusive for `train`, shared for readers.

`genlab train` holds `WORKDIR/.genlab.lock` exclusively while it runs, so a second
trainer of the same workdir stops at once with one line naming the first (its pid, host
and start time), instead of mixing two runs' checkpoints and metrics. `eval`, `sample`
and `encode` hold it shared while they read the checkpoints: any number of them at once,
none while a trainer runs. The lock is the kernel's (`flock`): it goes with its process,
so the lock of a process that died (SIGKILL, power) is free again, whatever the file
still says. With several processes, process 0 holds it for all of them.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import pathlib
import socket

import jax

from genlab.errors import WorkdirError

LOCK_FILE = ".genlab.lock"


class WorkdirLock:
  """`with WorkdirLock(workdir, exclusive=True): ...`; see the module docstring.

  Args:
    workdir: an existing directory.
    exclusive: True for a trainer, False for a reader.
    what: what the holder does, for the message another process gets (`train`, `eval`).
  """

  def __init__(self, workdir: str | pathlib.Path, *, exclusive: bool, what: str = "train"):
    self.path = pathlib.Path(workdir) / LOCK_FILE
    self.exclusive, self.what = exclusive, what
    self._file = None

  def acquire(self) -> WorkdirLock:
    if jax.process_index() != 0:
      return self
    try:
      self._file = open(self.path, "a+")  # noqa: SIM115 - held until release().
    except OSError as e:
      if self.exclusive or e.errno not in (errno.EACCES, errno.EROFS, errno.EPERM):
        raise WorkdirError(f"cannot lock {self.path.parent}: {e.strerror or e}") from e
      return self  # A read-only workdir: nobody can be training it from here.
    try:
      fcntl.flock(self._file, (fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = self._holder()
      self._file.close()
      self._file = None
      doing = "trains" if self.exclusive else "reads"
      raise WorkdirError(
        f"{self.path.parent} is in use: {holder}; a second genlab process that {doing} it "
        "would mix the two runs. Wait for it, stop it, or use another workdir"
      ) from None
    if self.exclusive:
      self._file.seek(0)
      self._file.truncate()
      record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": self.what,
        "since": datetime.datetime.now().isoformat(timespec="seconds"),
      }
      self._file.write(json.dumps(record) + "\n")
      self._file.flush()
    return self

  def _holder(self) -> str:
    """Who holds the lock, as its file says (a trainer writes itself there while it runs;
    readers write nothing)."""
    try:
      self._file.seek(0)
      record = json.loads(self._file.read() or "{}")
    except (OSError, ValueError):
      record = {}
    if not isinstance(record, dict):  # Valid JSON that no genlab wrote ([1, 2], 3): unknown.
      record = {}
    if not record:
      return "another genlab process holds it (an eval, sample or encode reading it)"
    return (
      f"`genlab {record.get('command', 'train')}` runs there as pid {record.get('pid')} on "
      f"{record.get('host')} since {record.get('since')}"
    )

  def release(self) -> None:
    if self._file is not None:
      if self.exclusive:  # The record names the trainer only while it runs.
        self._file.seek(0)
        self._file.truncate()
      fcntl.flock(self._file, fcntl.LOCK_UN)
      self._file.close()
      self._file = None

  def __enter__(self) -> WorkdirLock:
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


__all__ = ["LOCK_FILE", "WorkdirLock"]
