"""Evaluators of samples, chosen by `config.sample_metrics.evaluators` (see `base`).

One class and one line each: `EVALUATORS` (`sample_metrics`) maps a name to its class.
"""

from genlab.evaluators.base import Evaluator, options, to_range
from genlab.evaluators.feature_net import FEATURE_RANGE, FeatureNetEvaluator
from genlab.evaluators.inception import InceptionEvaluator, InceptionNet
from genlab.evaluators.sample_metrics import EVALUATORS, SampleMetrics

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
