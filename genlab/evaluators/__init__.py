"""Evaluators of samples, chosen by `config.sample_metrics.evaluators` (see `base`).

One class and one line each: `EVALUATORS` maps a name to its class.
"""

from genlab.evaluators.base import Evaluator, SampleMetrics, options, to_range
from genlab.evaluators.feature_net import FEATURE_RANGE, FeatureNetEvaluator
from genlab.evaluators.inception import InceptionEvaluator, InceptionNet

EVALUATORS: dict[str, type[Evaluator]] = {
  "feature_net": FeatureNetEvaluator,
  "inception": InceptionEvaluator,
}

__all__ = [
  "EVALUATORS",
  "FEATURE_RANGE",
  "Evaluator",
  "FeatureNetEvaluator",
  "InceptionEvaluator",
  "InceptionNet",
  "SampleMetrics",
  "options",
  "to_range",
]
