"""The feature network of GAN metrics: a classifier genlab trains once per dataset and caches.

A resource (`genlab.run.resources`): the GAN family asks for it (`needs`) and
gets it (`provide`), so the family never trains anything itself.
`feature_network(dataset, ...)` returns a classifier trained (by the shared
trainer, `family='classifier'`) on the dataset's labelled train split, cached
in `$GENLAB_CACHE_DIR/feature_nets/<dataset>-<hash>/` (default
`~/.cache/genlab`), where `<hash>` covers the classifier's config and the train
images' bytes. Its test accuracy and hash go beside every number computed in
its feature space, so a Fréchet distance is never quoted without its network.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import pathlib
import re
from collections.abc import Callable

import jax
import ml_collections
import numpy as np

from genlab.config import base_config
from genlab.console import log, warn
from genlab.core import to_host
from genlab.data import Dataset, RecordSplit
from genlab.errors import GenlabError, WorkdirError
from genlab.paths import free_name
from genlab.run.evaluation import evaluate_workdir, restore_workdir
from genlab.run.loop import train


def cache_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get("GENLAB_CACHE_DIR", "~/.cache/genlab")).expanduser()


@dataclasses.dataclass
class FeatureNet:
  """A trained classifier: `apply(x) -> (probabilities, features)` on batches in the data range."""

  apply: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
  test_accuracy: float
  hash: str
  workdir: pathlib.Path

  def __call__(self, images: np.ndarray, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
    parts = [self.apply(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    return np.concatenate([p for p, _ in parts]), np.concatenate([f for _, f in parts])

  def protocol(self) -> dict:
    return {
      "feature_network": f"genlab classifier {self.hash} (penultimate layer, 128-d)",
      "feature_network_test_accuracy": round(self.test_accuracy, 4),
      "feature_network_dir": str(self.workdir),
    }


def classifier_config(dataset: Dataset, data_config, steps: int) -> ml_collections.ConfigDict:
  """The classifier's training config: 2 conv stages, 128 features, Adam 1e-3."""
  config = base_config()
  config.family = "classifier"
  config.dataset = dataset.name
  config.data = data_config
  devices = jax.device_count()  # The batch must split evenly over every device.
  config.batch_size = max(devices, min(128, len(dataset.train["image"]) // 2) // devices * devices)
  config.num_steps = steps
  config.model = ml_collections.ConfigDict(
    {"name": "classifier", "features": (32, 64), "feature_dim": 128}
  )
  config.optimizer.learning_rate = 1e-3
  config.update(
    log_every=500,
    eval_every=steps,
    image_every=steps,
    checkpoint_every=steps,
    num_images=0,
    keep_checkpoints=1,
  )
  return config


def feature_network(dataset: Dataset, data_config, *, steps: int = 2000) -> FeatureNet:
  """The cached classifier of `dataset` (trained now if absent; a file lock guards the cache)."""
  from genlab.data.sources import _file_lock

  config = classifier_config(dataset, data_config, steps)
  digest = hashlib.sha256()
  # What decides the classifier: not where its data lives, nor which devices or kernels ran.
  portable = {k: v for k, v in config.to_dict().items() if k not in ("data", "mesh", "kernels")}
  portable["data_range"] = list(data_config.range)
  digest.update(json.dumps(portable, sort_keys=True, default=str).encode())
  if isinstance(dataset.train, RecordSplit):  # Identified by its files, not read whole.
    digest.update(dataset.train.fingerprint().encode())
  else:
    for key in sorted(dataset.train):
      digest.update(np.ascontiguousarray(dataset.train[key]).tobytes())
  short = digest.hexdigest()[:12]
  name = re.sub(r"[^A-Za-z0-9_.-]+", "_", pathlib.Path(dataset.name).stem)
  workdir = cache_dir() / "feature_nets" / f"{name}-{short}"
  # One process: a file lock keeps concurrent runs (pytest-xdist workers) from training it
  # twice. Several processes train it together (collectives), so none may wait on a lock;
  # the cache must then sit on a file system they share, like the workdir.
  lock = _file_lock(workdir.parent / f".{name}-{short}.lock") if jax.process_count() == 1 else None
  with lock or contextlib.nullcontext():
    if not (workdir / "eval.json").is_file():
      log(f"training the feature classifier of {dataset.name} for GAN metrics, once: {workdir}")
      train(config, workdir)
      evaluate_workdir(workdir)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      multihost_utils.sync_global_devices("genlab_feature_net_ready")
    try:
      report, (s, state, _) = _read(workdir)
    except (GenlabError, OSError, ValueError, KeyError) as e:
      if jax.process_count() > 1:
        raise WorkdirError(
          f"the cached feature network in {workdir} cannot be used ({e}); delete that folder "
          "(it is a cache) and run again"
        ) from e
      aside = free_name(workdir.with_name(f"{workdir.name}.damaged"))
      workdir.rename(aside)
      warn(
        f"the cached feature network in {workdir} cannot be used ({str(e)[:200]}); it was moved "
        f"to {aside} and is trained again"
      )
      train(config, workdir)
      evaluate_workdir(workdir)
      report, (s, state, _) = _read(workdir)
  model, params = s.family.model, state.params["model"]

  @jax.jit
  def apply(x):
    logits, features = model.apply({"params": params}, x)
    return jax.nn.softmax(logits), features

  return FeatureNet(
    apply=lambda x: to_host(tuple(apply(x))),
    test_accuracy=float(report["metrics"]["accuracy"]),
    hash=short,
    workdir=workdir,
  )


def _read(workdir: pathlib.Path):
  """The cached classifier's eval report and restored workdir."""
  report = json.loads((workdir / "eval.json").read_text())
  float(report["metrics"]["accuracy"])
  return report, restore_workdir(workdir)
