"""Metrics of a family's samples, apart from the family: evaluators chosen by config.

Any family that samples (`Family.sample`) has the shared group `config.sample_metrics`
(`options`), whose `evaluators` field names, comma-separated, the evaluators its
samples go through at every evaluation (`sample_metrics.EVALUATORS`: one class and one
line each; `sample_metrics.SampleMetrics` runs those of a run as one).
The family draws the samples, once per evaluation, from a fixed key (`Family.
sample_metrics_key`), as many as the evaluator that wants the most asks for; each
evaluator takes the first of them it wants, with the family's sample labels if the
family is class-conditional. What an evaluator needs besides the samples (a feature
network, weights) is a resource the run layer builds (`needs`/`provide`, as for the
family's own), and it checks its sizes when the family is built, so that a size it
cannot take is one line before the first step, not a failure at the first evaluation.

Every number an evaluator reports goes with its `protocol` (feature network, sample
counts, k, the real images' split) and its `definitions` in `eval.json`.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any, ClassVar

import jax
import ml_collections
import numpy as np

from genlab.data import Dataset


def options(evaluators: str = "", **overrides) -> ml_collections.ConfigDict:
  """`config.sample_metrics`, the shared group of the families that sample, with its
  defaults; `evaluators` is the family's default choice (`Family.sample_evaluators`)."""
  group = ml_collections.ConfigDict(
    {
      # The evaluators of the samples at every evaluation, comma-separated: "" (none) or
      # names of genlab.evaluators.EVALUATORS: feature_net (fd, precision/recall, cs, ...),
      # inception (fid, kid, is with the FID Inception-v3).
      "evaluators": evaluators,
      "fd_n_real": 10000,  # Train images behind the real statistics of `fd` (at most all; ≥ 2).
      "fd_n_fake": 0,  # Samples behind the fake statistics (0: as many as fd_n_real; else ≥ 2).
      # The k of the k-NN balls of precision, recall, density and coverage: at least 1, below
      # the number of real images, of samples and of test images.
      "prdc_k": 5,
      "feature_net_steps": 2000,  # Training steps of the cached feature classifier.
      # inception: the weights file, pytorch-fid's pt_inception-2015-12-05-6726825d.pth ("":
      # fetched once into $GENLAB_CACHE_DIR/inception/ and checked against its SHA-256).
      "inception_weights": "",
      "inception_n_fake": 50000,  # Samples behind fid, kid and is (published figures: 50,000).
      "inception_n_real": 50000,  # Real images (the first of the split; at most all; ≥ 2).
      "inception_real_split": "train",  # train | test: the split of the real images.
      "inception_resize": "clean",  # clean (clean-fid's PIL bicubic) | legacy_pytorch (bilinear).
      # True: fid, kid and is only at `genlab eval` (the final evaluation, as a family's
      # final_eval_step), not at the evaluations during training, which skip the Inception.
      "inception_final_only": False,
      "kid_subset_size": 1000,  # Features per KID subset (≤ both sets' sizes).
      "kid_subsets": 100,  # KID subsets averaged over.
      "is_splits": 10,  # Splits of the samples the Inception score is averaged over.
    }
  )
  group.update(overrides)
  return group


class Evaluator(abc.ABC):
  """Metrics of samples of a family's model, in the space of some feature network.

  Args:
    options: the run's `config.sample_metrics` (defaults filled in).
    dataset: the family's dataset (the real images).
    value_range: the data's (and so the samples') value range.
    root_key: the run's root key; which real images an evaluator uses derives from it by name.
  """

  name: ClassVar[str]
  # What each metric it may report means (eval.json keeps those reported).
  definitions: ClassVar[dict[str, str]] = {}
  # Whether it runs only at the final evaluation (`genlab eval`), not at those during
  # training (`SampleMetrics.during_training`); an evaluator may set it from its options.
  final_only: bool = False

  def __init__(
    self,
    options: ml_collections.ConfigDict,
    *,
    dataset: Dataset,
    value_range: tuple[float, float],
    root_key: jax.Array,
  ) -> None:
    self.options = options
    self.dataset = dataset
    self.value_range = tuple(value_range)
    self.root_key = root_key
    self.resources: dict[str, Any] = {}

  @property
  @abc.abstractmethod
  def num_samples(self) -> int:
    """How many samples `evaluate` takes."""

  def needs(self) -> dict[str, dict[str, Any]]:
    """Resources the run layer builds for it, by name, with their settings."""
    return {}

  def provide(self, resources: Mapping[str, Any]) -> None:
    """Receives the resources it needs (and may compute its real statistics now, once)."""
    self.resources = dict(resources)

  @abc.abstractmethod
  def evaluate(self, samples: np.ndarray, labels: np.ndarray | None) -> dict[str, Any]:
    """Its metrics of `samples` (the first `num_samples` of those given, in the data's
    value range) and, for a class-conditional family, the classes they were drawn for."""

  def protocol(self) -> dict[str, Any]:
    """How its numbers are obtained."""
    return {}


def to_range(
  images: np.ndarray, source: tuple[float, float], target: tuple[float, float]
) -> np.ndarray:
  """`images` mapped linearly from the value range `source` onto `target` (as they are
  when the two are equal, so that no rounding enters)."""
  if tuple(source) == tuple(target):
    return images
  (a, b), (c, d) = source, target
  return (np.asarray(images, np.float32) - a) * np.float32((d - c) / (b - a)) + np.float32(c)


__all__ = ["Evaluator", "options", "to_range"]
