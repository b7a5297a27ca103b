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
