"""The evaluators `config.sample_metrics.evaluators` names, by name (`EVALUATORS`: one class
and one line each), and `SampleMetrics`, those of a run as one."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import ml_collections
import numpy as np

from genlab.data import Dataset
from genlab.errors import ConfigError
from genlab.evaluators.base import Evaluator
from genlab.evaluators.feature_net import FeatureNetEvaluator
from genlab.evaluators.inception import InceptionEvaluator

EVALUATORS: dict[str, type[Evaluator]] = {
  "feature_net": FeatureNetEvaluator,
  "inception": InceptionEvaluator,
}


class SampleMetrics:
  """The evaluators `config.sample_metrics.evaluators` names, as one: their needs, their
  sample count (the largest), their metrics, protocols and definitions together."""

  def __init__(
    self,
    options: ml_collections.ConfigDict,
    *,
    dataset: Dataset,
    value_range: tuple[float, float],
    root_key: jax.Array,
    key_name: str,
  ) -> None:
    names = [n.strip() for n in str(options.evaluators).split(",") if n.strip()]
    unknown = [n for n in names if n not in EVALUATORS]
    if unknown:
      raise ConfigError(
        f"config.sample_metrics.evaluators={options.evaluators!r}: no evaluator "
        f"{', '.join(map(repr, unknown))}; genlab's are {', '.join(sorted(EVALUATORS))}"
      )
    self.names = names
    self.key_name = key_name
    self.evaluators = [
      EVALUATORS[n](options, dataset=dataset, value_range=value_range, root_key=root_key)
      for n in names
    ]

  def __bool__(self) -> bool:
    return bool(self.evaluators)

  @property
  def num_samples(self) -> int:
    return max((e.num_samples for e in self.evaluators), default=0)

  @property
  def definitions(self) -> dict[str, str]:
    return {k: v for e in self.evaluators for k, v in e.definitions.items()}

  def needs(self) -> dict[str, dict[str, Any]]:
    needs: dict[str, dict[str, Any]] = {}
    for e in self.evaluators:
      for name, settings in e.needs().items():
        if name in needs and needs[name] != settings:
          raise ConfigError(
            f"the sample evaluators {self.names} need resource {name!r} built two ways: "
            f"{needs[name]} and {settings}"
          )
        needs[name] = settings
    return needs

  def provide(self, resources: Mapping[str, Any]) -> None:
    for e in self.evaluators:
      e.provide({name: resources[name] for name in e.needs()})

  @contextlib.contextmanager
  def during_training(self) -> Iterator[None]:
    """Within it, the evaluators that run only at the final evaluation (`final_only`, e.g.
    `sample_metrics.inception_final_only`) are set aside: the sample count, the metrics
    and their definitions are those of the others (the run layer's evaluations during
    training; `genlab eval` runs every evaluator)."""
    every = self.evaluators
    self.evaluators = [e for e in every if not e.final_only]
    try:
      yield
    finally:
      self.evaluators = every

  def evaluate(self, samples: np.ndarray, labels: np.ndarray | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for e in self.evaluators:
      n = e.num_samples
      out.update(e.evaluate(samples[:n], None if labels is None else labels[:n]))
    return out

  def protocol(self) -> dict[str, Any]:
    if not self.evaluators:
      return {}
    out: dict[str, Any] = {
      "sample_evaluators": ",".join(self.names),
      "samples_drawn": f"{self.num_samples} from the fixed key {self.key_name!r} of the run's "
      "root key (the seed); each evaluator takes the first of them it uses",
    }
    for e in self.evaluators:
      out.update(e.protocol())
    return out


__all__ = ["EVALUATORS", "SampleMetrics"]
