"""Several processes (`jax.distributed`): a process lost mid-run stops the others with one line.

When one process of a run dies (SIGKILL, a lost host), the others cannot finish their next
collective: they wait in it. JAX's coordination service notices once the dead process has
sent no heartbeat for its `heartbeat_timeout_seconds` (100 by default), and its client then
aborts every other process from a C++ thread: a `Check failed` message with a stack trace,
exit status 134. Its only hook, the client's `missed_heartbeat_callback`, cannot be a Python
function in jaxlib 0.10 (calling it throws `std::bad_cast`: absl::Status has no Python
conversion), so genlab keeps a watch of its own (`Watchdog`): each process writes a counter
to the coordination service's key-value store every `PERIOD_SECONDS`, reads the others',
and when another's has not moved for `heartbeat_timeout` seconds it prints `genlab: stopped:
...` (the lost process, the last complete checkpoint, what to do) and ends with
`ProcessLost.exit_code`, 69. JAX's own timeout is set longer, so genlab's line comes first.

Not covered: when process 0, which hosts the coordination service, dies, the others' JAX
clients lose their connection to it at once and abort within a second, before any watch
can speak (docs/reliability.md).
"""

from __future__ import annotations

import atexit
import os
import pathlib
import sys
import threading
import time

import jax

from genlab.errors import GenlabError, ProcessLost

# Seconds a process may go unheard before the others stop. JAX's own default, 100 s, is
# for jobs of thousands of hosts.
HEARTBEAT_TIMEOUT_SECONDS = 30
# How often each process writes its counter and reads the others'.
PERIOD_SECONDS = 1.0
KEY_PREFIX = "genlab/alive/"
DONE = "done"
_active: Watchdog | None = None  # This process's watchdog, once `initialize` started it.


def initialize(
  coordinator_address: str | None,
  num_processes: int | None,
  process_id: int | None,
  *,
  heartbeat_timeout: int = HEARTBEAT_TIMEOUT_SECONDS,
  workdir: str | os.PathLike | None = None,
) -> Watchdog | None:
  """`jax.distributed.initialize`, then a `Watchdog` that stops this process with one line
  once another has been unheard for `heartbeat_timeout` seconds (naming `workdir`'s last
  complete checkpoint). JAX's own heartbeat timeout is set to max(100, 3 ×
  heartbeat_timeout) seconds, its backstop.

  Returns:
    The running watchdog, or None with one process or a JAX without a client to watch
    through.

  Raises:
    GenlabError: `heartbeat_timeout` is not a positive whole number of seconds.
  """
  if isinstance(heartbeat_timeout, bool) or not isinstance(heartbeat_timeout, int):
    raise GenlabError(f"--heartbeat_timeout must be whole seconds, got {heartbeat_timeout!r}")
  if heartbeat_timeout < 1:
    raise GenlabError(f"--heartbeat_timeout={heartbeat_timeout} must be at least 1 second")
  jax.distributed.initialize(
    coordinator_address=coordinator_address,
    num_processes=num_processes,
    process_id=process_id,
    heartbeat_timeout_seconds=max(100, 3 * heartbeat_timeout),
  )
  state = _state()
  if state is None or state.client is None or state.num_processes < 2:
    return None
  # From JAX's distributed state, not jax.process_count(): that would start the backends.
  watchdog = Watchdog(
    state.client, state.process_id, state.num_processes, timeout=heartbeat_timeout, workdir=workdir
  )
  atexit.register(watchdog.leave)  # Before JAX's own shutdown, registered earlier.
  global _active
  _active = watchdog
  return watchdog.start()


def leave() -> None:
  """This process is done with the run's collectives (`Watchdog.leave`), if it watches."""
  if _active is not None:
    _active.leave()


def after_error(error: BaseException) -> None:
  """Before an error of a collective leaves this process as a traceback: if it watches, it
  leaves, and waits out the watch's timeout. A collective fails at once when the peer it
  reads from died mid-exchange (Gloo: `Connection reset by peer`); the watch then stops
  the process with its one line (`Watchdog.stop`) as when the collective hangs. Returns
  (the error is then genlab's to report) when no process is lost or it does not watch."""
  if _active is None or not isinstance(error, jax.errors.JaxRuntimeError):
    return
  _active.leave()
  _active.wait_out()


def _state():
  """JAX's distributed state, with the coordination-service client (private: orbax reads the
  client there too), or None."""
  try:
    from jax._src import distributed as jax_distributed

    state = jax_distributed.global_state
    state.client, state.process_id, state.num_processes  # noqa: B018 - all three are needed.
  except (ImportError, AttributeError):
    return None
  return state


class Watchdog:
  """Stops this process with one line when another process of the run goes unheard.

  Each `period`, a daemon thread writes this process's counter to the key-value store of
  JAX's coordination service (`KEY_PREFIX` + index) and reads all of them; another process
  whose counter has not changed for `timeout` seconds is lost (`stop`). A process that
  leaves in order (`leave`: done, or exiting after an error) writes `DONE` and is not
  watched any more by the others; it still watches them until it ends. After a stall of
  its own (this process stopped or starved for more than 3 periods), every other process
  is given the whole timeout again: silence it could not hear is not held against them.

  Args:
    client: JAX's `DistributedRuntimeClient`.
    process_index, process_count: this process and how many take part.
    timeout: seconds of silence after which a process is lost.
    workdir: the run's workdir, whose last complete checkpoint the message names.
    period: seconds between two writes (and reads).
  """

  def __init__(
    self,
    client,
    process_index: int,
    process_count: int,
    *,
    timeout: float,
    workdir=None,
    period: float = PERIOD_SECONDS,
  ):
    self.client, self.index, self.count = client, process_index, process_count
    self.timeout, self.workdir, self.period = timeout, workdir, period
    self._left = threading.Event()  # This process wrote DONE: it beats no more.
    self._closed = threading.Event()  # The watch ends (`close`; else with the process).
    self._lock = threading.Lock()  # A beat never overwrites DONE.
    self._thread = threading.Thread(target=self._watch, name="genlab-watchdog", daemon=True)

  def start(self) -> Watchdog:
    self._thread.start()
    return self

  def leave(self) -> None:
    """This process takes part in no more collectives (it finished, or exits after an
    error): it tells the others not to wait for its counter. It goes on watching them until
    the process ends: a process that leaves on an error (a collective that failed because
    another process died) then waits in JAX's shutdown for every process, and must still
    stop with its line, not with JAX's abort a heartbeat timeout later."""
    with self._lock:
      if self._left.is_set():
        return
      self._left.set()
      try:
        self.client.key_value_set(f"{KEY_PREFIX}{self.index}", DONE, allow_overwrite=True)
      except Exception:  # noqa: BLE001 - the service may be gone already; nothing to tell.
        pass

  def wait_out(self) -> None:
    """Waits as long as the watch needs to find a process lost that is silent from now."""
    self._closed.wait(self.timeout + 5 * self.period)

  def close(self) -> None:
    """Ends the watch (a process's watch otherwise ends with it)."""
    self._closed.set()
    self._thread.join()

  def _watch(self) -> None:
    beat = 0
    now = time.monotonic()
    last_seen: dict[int, tuple[str | None, float]] = {
      i: (None, now) for i in range(self.count) if i != self.index
    }
    previous = now
    while not self._closed.wait(self.period):
      beat += 1
      try:
        with self._lock:
          if not self._left.is_set():
            key = f"{KEY_PREFIX}{self.index}"
            self.client.key_value_set(key, str(beat), allow_overwrite=True)
        values = dict(self.client.key_value_dir_get(KEY_PREFIX))
      except Exception:  # noqa: BLE001 - the service is gone: JAX's client ends the process.
        continue
      if self._closed.is_set():
        return
      now = time.monotonic()
      stalled = now - previous > 3 * self.period
      previous = now
      for i, (seen, since) in list(last_seen.items()):
        value = values.get(f"{KEY_PREFIX}{i}")
        if value == DONE:
          del last_seen[i]
        elif value != seen or stalled:
          last_seen[i] = (value, now)
        elif now - since > self.timeout:
          self.stop(i, now - since)

  def stop(self, lost: int, silent: float) -> None:
    """One line, then `os._exit`: the main thread waits in a collective that will never
    finish, and no checkpoint can be written without the lost process."""
    checkpoint = last_complete_checkpoint(self.workdir)
    where = f"step {checkpoint}" if checkpoint is not None else "none yet"
    error = ProcessLost(
      f"process {lost} of {self.count} has not been heard for {silent:.0f} s (killed, or its "
      f"host lost), so process {self.index} cannot finish its collectives; the last complete "
      f"checkpoint is {where}: run every process again with the same command to resume"
    )
    try:
      sys.stdout.flush()
      print(f"genlab: stopped: {error}", file=sys.stderr, flush=True)
    finally:
      os._exit(error.exit_code)


def last_complete_checkpoint(workdir) -> int | None:
  """The newest step folder of `workdir/checkpoints` that orbax finished (it holds
  `_CHECKPOINT_METADATA`), or None; read from the disk, without orbax."""
  if workdir is None:
    return None
  try:
    steps = [
      int(p.name)
      for p in (pathlib.Path(workdir) / "checkpoints").iterdir()
      if p.name.isdigit() and (p / "_CHECKPOINT_METADATA").is_file()
    ]
  except OSError:
    return None
  return max(steps, default=None)


__all__ = [
  "HEARTBEAT_TIMEOUT_SECONDS",
  "Watchdog",
  "initialize",
  "last_complete_checkpoint",
  "leave",
]
