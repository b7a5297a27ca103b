"""What the `genlab` commands do, as functions a notebook or a test can call.

    train_and_evaluate(config, workdir)   # genlab train
    evaluate_workdir(workdir)             # genlab eval
    sample_workdir(workdir, num=, out=)   # genlab sample
    encode_workdir(workdir, out=)         # genlab encode
    move_aside(workdir)                   # genlab train --fresh

The first two build the resources a family needs (`genlab.run.resources`) before
the loop or the evaluation takes over.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import ml_collections
import numpy as np

from genlab.data import eval_batches, load_dataset
from genlab.errors import DataError, WorkdirError, WriteError
from genlab.run import evaluation, loop, resources
from genlab.run.evaluation import restore_workdir, sample_workdir
from genlab.run.loop import RunResult, move_aside
from genlab.run.writers import UnwrittenFile, write_atomically


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *, fresh: bool = False
) -> RunResult:
  """Trains `config` in `workdir` (resuming from its latest checkpoint if any, or, with
  `fresh`, moving an existing workdir aside first), evaluating on the test split as it
  goes; see `genlab.run.loop.train`.

  Returns:
    The final state (host arrays), step and test metrics.
  """
  return loop.train(config, workdir, provide=resources.provide, fresh=fresh)


def evaluate_workdir(workdir: str | pathlib.Path, overrides: list[str] = ()) -> dict[str, Any]:
  """Evaluates a workdir's newest usable checkpoint on the test split and writes
  `eval.json`; see `genlab.run.evaluation.evaluate_workdir`."""
  return evaluation.evaluate_workdir(workdir, overrides, provide=resources.provide)


def encode_workdir(
  workdir: str | pathlib.Path,
  *,
  out: str | pathlib.Path,
  split: str = "test",
  dataset: str | None = None,
) -> pathlib.Path:
  """Writes the codes of every example of `split` (of the workdir's dataset, or of
  `dataset`, a name or a `.npz` with the same shapes) to the `.npz` `out`: the family's
  named codes (`Family.encode`: μ and log σ² for a VAE, `code` for autoencoders, `z` for
  recurrent ones), one row per example in the split's order, with `label` when the data has
  labels. Returns `out`."""
  family = evaluation.saved_family(workdir)
  if not evaluation.offers(family, "encode"):
    raise WorkdirError(
      f"{workdir} holds a {family.__name__}, which has no encoder to export codes of; "
      "nothing was restored"
    )
  s, state, step = restore_workdir(workdir)
  data = s.dataset
  if dataset is not None:
    config = s.config
    data = load_dataset(
      dataset,
      data_dir=config.data.data_dir,
      image_key=config.data.image_key,
      label_key=config.data.label_key,
      target_key=config.data.target_key,
      stream_train=config.data.get("stream_train", False),
      modality=config.data.get("modality") or s.dataset.modality,
    )
    if data.image_shape != s.dataset.image_shape:
      raise DataError(
        f"{dataset}'s examples have shape {data.image_shape}; the model of {workdir} takes "
        f"{s.dataset.image_shape}"
      )
  rows = data.split(split)
  params = state.params
  encode = jax.jit(lambda params, batch: s.family.encode(params["model"], batch))
  size = s.config.eval_batch_size or s.config.batch_size
  parts = []
  for batch in eval_batches(rows, global_batch_size=size, value_range=s.family.value_range):
    keep = batch.pop("mask") > 0
    codes = encode(params, {k: jax.numpy.asarray(v) for k, v in batch.items()})
    parts.append({name: np.asarray(v)[keep] for name, v in codes.items()})
  arrays = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
  if "label" in rows:
    arrays["label"] = np.asarray(rows["label"])
  out = pathlib.Path(out)
  try:
    write_atomically(out, lambda f: np.savez(f, **arrays), binary=True)
  except UnwrittenFile as e:
    raise WriteError(f"{out} could not be written ({e.reason()}); nothing else changed") from None
  return out


__all__ = [
  "encode_workdir",
  "evaluate_workdir",
  "move_aside",
  "restore_workdir",
  "sample_workdir",
  "train_and_evaluate",
]
