"""SIGTERM / SIGINT become a request to stop that the loop honours between steps.

A scheduler pre-empting a job sends SIGTERM (SLURM, Kubernetes, spot VMs); a
user sends SIGINT (Ctrl-C). Either sets a flag; the loop checks it after each
step, saves a checkpoint of the current step, waits for the write to finish
and exits with status 75 (`genlab.errors.Preempted`). A second signal while
that happens is left to Python's default handling (Ctrl-C twice aborts).

With several processes, a signal may reach them at different steps, so they
agree first: every `every` steps, all processes all-gather their flags and stop
together if any is set (a small collective; `config.preemption_check_every`).
"""

from __future__ import annotations

import signal
import threading

import jax
import numpy as np

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
  """A context manager that turns SIGTERM and SIGINT into `requested`."""

  def __init__(self, *, every: int = 1):
    self.every = every
    self.received: str | None = None
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    self.received = signal.Signals(signum).name
    for sig, handler in self._previous.items():  # A second signal acts as usual.
      signal.signal(sig, handler)

  def __enter__(self) -> StopSignals:
    if threading.current_thread() is threading.main_thread():
      for sig in SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}

  def should_stop(self, step: int) -> bool:
    """Whether every process should stop after `step` (collective when multi-process)."""
    if jax.process_count() == 1:
      return self.received is not None
    if step % self.every:
      return False
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(np.int32(self.received is not None))
    return bool(np.any(flags))
