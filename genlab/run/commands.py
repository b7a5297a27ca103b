"""What the `genlab` commands do, as functions a notebook or a test can call.

    train_and_evaluate(config, workdir)   # genlab train
    evaluate_workdir(workdir)             # genlab eval
    sample_workdir(workdir, num=, out=)   # genlab sample

The first two build the resources a family needs (`genlab.run.resources`) before
the loop or the evaluation takes over.
"""

from __future__ import annotations

import pathlib
from typing import Any

import ml_collections

from genlab.run import evaluation, loop, resources
from genlab.run.evaluation import restore_workdir, sample_workdir
from genlab.run.loop import RunResult


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> RunResult:
  """Trains `config` in `workdir` (resuming from its latest checkpoint if any), evaluating
  on the test split as it goes; see `genlab.run.loop.train`.

  Returns:
    The final state (host arrays), step and test metrics.
  """
  return loop.train(config, workdir, provide=resources.provide)


def evaluate_workdir(workdir: str | pathlib.Path, overrides: list[str] = ()) -> dict[str, Any]:
  """Evaluates a workdir's newest usable checkpoint on the test split and writes
  `eval.json`; see `genlab.run.evaluation.evaluate_workdir`."""
  return evaluation.evaluate_workdir(workdir, overrides, provide=resources.provide)


__all__ = ["evaluate_workdir", "restore_workdir", "sample_workdir", "train_and_evaluate"]
