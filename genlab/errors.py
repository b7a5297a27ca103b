"""Errors that genlab reports to the user as one line (see `genlab.cli`).

Anything raised as a `GenlabError` is a problem with the user's input — a config
field, a dataset, a workdir — and the CLI prints its message and exits with
status 2. Any other exception is a bug and keeps its traceback.
"""


class GenlabError(Exception):
  """Base class of errors caused by user input; the message is one line."""


class ConfigError(GenlabError):
  """An experiment file, a `--config.` override or a saved config is wrong."""


class DataError(GenlabError):
  """A dataset name, a `.npz` file or its arrays are unusable."""


class WorkdirError(GenlabError):
  """The workdir cannot be used (not writable, no checkpoint to evaluate, ...)."""


class TrainingStopped(Exception):
  """Training ended early on purpose; `exit_code` is what `genlab train` exits with."""

  exit_code = 1


class Preempted(TrainingStopped):
  """SIGTERM or SIGINT: a checkpoint of the current step was saved. Run again to resume.

  Exit status 75 (EX_TEMPFAIL: a temporary failure, try again), so a job script
  or a scheduler can requeue on it.
  """

  exit_code = 75


class CheckpointWriteError(TrainingStopped):
  """A checkpoint could not be written (disk full, permissions); training stopped at once.

  Exit status 1: the earlier checkpoints are intact, and the same command resumes from the
  last of them once the cause is fixed.
  """

  exit_code = 1


class WriteError(TrainingStopped):
  """A file the command writes could not be written (a full disk, permissions, a folder
  gone): it stopped at once, in one line naming the file; nothing written before is lost.

  Exit status 1. `report` holds what an evaluation computed, when it could not be saved
  (`genlab eval` still prints it).
  """

  exit_code = 1

  def __init__(self, message: str, *, report=None):
    super().__init__(message)
    self.report = report


class NonFiniteError(TrainingStopped):
  """A NaN or Inf loss or gradient with `on_nonfinite='stop'`; nothing was saved after it.

  Exit status 3.
  """

  exit_code = 3


class ProcessLost(TrainingStopped):
  """Another process of a multi-process run was lost (killed, its host gone): this one
  cannot finish its collectives and stops without saving (`genlab.run.distributed`).

  Exit status 69 (EX_UNAVAILABLE: a service is unavailable): run every process again with
  the same command; they resume from the last complete checkpoint.
  """

  exit_code = 69
