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


@pytest.mark.parametrize("contents", ["[1, 2]", "3", '"train"', "true", "{not json"])
def test_a_lock_file_not_holding_a_json_object_is_named_as_an_unknown_holder(contents, tmp_path):
  """Someone wrote the lock file (a trainer writes an object): while another process holds
  the lock, a second trainer says it is in use, in one line, whatever the file holds."""
  import fcntl

  from genlab.errors import WorkdirError
  from genlab.run.lock import LOCK_FILE, WorkdirLock

  (tmp_path / LOCK_FILE).write_text(contents)
  with open(tmp_path / LOCK_FILE) as held:  # Another open file: flock conflicts with it.
    fcntl.flock(held, fcntl.LOCK_SH | fcntl.LOCK_NB)
    with pytest.raises(WorkdirError) as error:
      WorkdirLock(tmp_path, exclusive=True).acquire()
  message = str(error.value)
  assert "is in use: another genlab process holds it" in message and "\n" not in message


def _vq_config(data_dir, **model):
  from genlab import config as config_lib

  config = config_lib.load_experiment(EXPERIMENTS / "vq_vae_digits.py")
  config.data.data_dir = data_dir
  config.model.update(**model)
  return config


@pytest.mark.parametrize(
  "model, needle",
  [
    ({"codebook_size": 0}, "config.model.codebook_size=0 must be a positive integer"),
    ({"codebook_size": -3}, "config.model.codebook_size=-3 must be a positive integer"),
    ({"code_dim": 0}, "config.model.code_dim=0 must be a positive integer"),
    ({"features": (0, 16)}, "config.model.features=(0, 16) must hold positive integers"),
    ({"kernel_size": 0}, "config.model.kernel_size=0 must be a positive integer"),
    ({"strides": (2, -1)}, "config.model.strides=(2, -1) must hold positive integers"),
    ({"decoder_kernel_size": 0}, "config.model.decoder_kernel_size=0 must be a positive"),
  ],
)
def test_non_positive_vq_vae_sizes_are_refused_naming_the_field(model, needle, data_dir):
  """codebook_size 0 was 'cannot take digits's images ...: attempt to get argmin of an empty
  sequence'; code_dim, features or kernel_size 0 a ZeroDivisionError traceback."""
  from genlab.run import setup

  with pytest.raises(ConfigError) as error:
    setup(_vq_config(data_dir, **model))
  message = str(error.value)
  assert needle in message and "(1 or more)" in message and "\n" not in message, message
