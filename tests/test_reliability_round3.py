"""What genlab survives, third round: GAN metric sizes checked before training, data workers
that die with their trainer, damaged record files, odd lock files and VQ sizes, and one of two
processes dying."""

from __future__ import annotations

import numpy as np
import pytest
from test_cli import assert_one_line_error, genlab_here

from conftest import EXPERIMENTS
from genlab.errors import ConfigError


def _gan_config(data_dir, **gan):
  from genlab import config as config_lib

  config = config_lib.load_experiment(EXPERIMENTS / "gan_digits.py")
  config.data.data_dir = data_dir
  config.model.generator.hidden = (8,)
  config.model.discriminator.hidden = (8,)
  config.gan.update(**gan)
  return config


@pytest.mark.parametrize(
  "gan, needle",
  [
    # The k-NN ball of a real image is drawn among the other real images: k of them at least.
    ({"fd_n_real": 8, "prdc_k": 8}, "config.gan.prdc_k=8 must be below the 8 real train images"),
    ({"fd_n_real": 8, "prdc_k": 20}, "config.gan.prdc_k=20 must be below the 8 real train"),
    # ... and of a sample among the other samples.
    ({"fd_n_fake": 3}, "config.gan.prdc_k=5 must be below the 3 samples"),
    ({"fd_n_fake": 1, "prdc_k": 1}, "config.gan.fd_n_fake=1 must be 0"),
    ({"fd_n_real": 1, "prdc_k": 1}, "config.gan.fd_n_real=1 must be at least 2"),
    ({"prdc_k": 0}, "config.gan.prdc_k=0 must be at least 1"),
    ({"fd_n_fake": -4}, "config.gan.fd_n_fake=-4 must be 0"),
  ],
)
def test_gan_metric_sizes_are_refused_when_the_family_is_built(gan, needle, data_dir):
  """Before any step: a size the metrics cannot take used to train on and fail at the first
  evaluation (fd_n_fake=3), losing the steps since the last checkpoint, or at the start as a
  traceback (prdc_k above fd_n_real)."""
  from genlab.run import setup

  with pytest.raises(ConfigError) as error:
    setup(_gan_config(data_dir, **gan))
  assert needle in str(error.value) and "\n" not in str(error.value), str(error.value)


def test_gan_metric_sizes_at_the_bounds_are_taken_and_are_the_metrics_bounds(data_dir):
  """prdc_k = n − 1 for every set is the largest the metrics take; 2 samples the fewest."""
  from genlab import metrics
  from genlab.run import setup

  s = setup(_gan_config(data_dir, fd_n_real=6, fd_n_fake=6, prdc_k=5))
  assert s.family.options.prdc_k == 5
  features = np.random.default_rng(0).normal(size=(6, 3))
  metrics.precision_recall_density_coverage(features, features[::-1], k=5)
  with pytest.raises(ValueError, match="needs more than k"):
    metrics.precision_recall_density_coverage(features, features, k=6)
  assert np.isfinite(metrics.frechet_distance_of(features[:2], features[2:4]))


def test_a_gan_metric_size_is_one_line_from_genlab_train_before_a_step(capsys, data_dir, tmp_path):
  workdir = tmp_path / "w"
  proc = genlab_here(
    capsys,
    "train",
    "--config",
    str(EXPERIMENTS / "gan_digits.py"),
    "--workdir",
    str(workdir),
    f"--config.data.data_dir={data_dir}",
    "--config.gan.fd_n_fake=3",
  )
  assert_one_line_error(proc, "config.gan.prdc_k=5 must be below the 3 samples")
  assert not (workdir / "checkpoints").exists() and not (workdir / "metrics.jsonl").exists()
