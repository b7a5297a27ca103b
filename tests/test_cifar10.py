"""The switch that keeps the FID Inception out of the evaluations during training."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import EXPERIMENTS

# Sizes small enough for 2 CPU cores: the metrics' counts, not their definitions, change.
TINY_METRICS = {
  "inception_n_real": 6,
  "inception_n_fake": 6,
  "kid_subset_size": 4,
  "kid_subsets": 3,
  "is_splits": 2,
  "fd_n_real": 16,
  "feature_net_steps": 5,
}


def test_final_only_keeps_the_inception_out_of_the_evaluations_during_training(data_dir):
  """With `inception_final_only`, during training the inception evaluator is set aside (no
  samples drawn for it, no metric, no weights touched) and the real images' features are
  not computed when it is provided for; at the final evaluation it runs."""
  from genlab import config as config_lib
  from genlab.run import setup

  config = config_lib.load_experiment(EXPERIMENTS / "vae_digits.py")
  config.data.data_dir = data_dir
  config.sample_metrics.update(
    evaluators="inception",
    inception_final_only=True,
    **{k: v for k, v in TINY_METRICS.items() if k.startswith(("inception", "kid", "is_"))},
  )
  sample_metrics = setup(config).family.sample_metrics
  sample_metrics.provide({"inception": UncallableInception()})
  assert sample_metrics.num_samples == 6 and sample_metrics.definitions.keys() >= {"fid", "is"}
  with sample_metrics.during_training():
    assert not sample_metrics and sample_metrics.num_samples == 0
    assert sample_metrics.definitions == {}
    assert sample_metrics.evaluate(np.zeros((0, 8, 8, 1)), None) == {}
  # Out of it (the final evaluation), the evaluator is back and runs its network.
  assert sample_metrics.num_samples == 6
  with pytest.raises(AssertionError, match="the Inception ran"):
    sample_metrics.evaluate(np.zeros((6, 8, 8, 1)), None)


class UncallableInception:
  """Stands for the FID Inception where it must not run."""

  sha256 = "0" * 64

  def __call__(self, images, **kwargs):
    raise AssertionError("the Inception ran")

  def cached(self, name, compute):
    return compute()
