"""Sample metrics shared by every family that samples (genlab.evaluators): the feature-net
evaluator's numbers, its size checks, and a VAE run that reports them as a GAN run does."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from conftest import EXPERIMENTS
from genlab.errors import ConfigError


class ProjectionNet:
  """A stand-in feature network: features a fixed random projection of the pixels, class
  probabilities a softmax of the first ten of them; `protocol` as the real one's."""

  def __init__(self, pixels: int):
    self.weights = np.random.default_rng(0).normal(size=(pixels, 16)).astype(np.float32)

  def __call__(self, images):
    features = np.asarray(images, np.float32).reshape(len(images), -1) @ self.weights
    logits = features[:, :10] - features[:, :10].max(axis=1, keepdims=True)
    return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True), features

  def protocol(self):
    return {"feature_network": "a fixed random projection (test)"}


def _dataset(n_train=200, n_test=60):
  from genlab.data import Dataset

  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, size=(n_train + n_test, 8, 8, 1), dtype=np.uint8)
  labels = rng.integers(0, 10, size=n_train + n_test)
  return Dataset(
    name="noise",
    train={"image": images[:n_train], "label": labels[:n_train]},
    test={"image": images[n_train:], "label": labels[n_train:]},
  )


def _evaluator(value_range=(0.0, 1.0), **options):
  from genlab.evaluators import FeatureNetEvaluator
  from genlab.evaluators import options as sample_options

  group = sample_options("feature_net", **options)
  evaluator = FeatureNetEvaluator(
    group, dataset=_dataset(), value_range=value_range, root_key=jax.random.key(0)
  )
  evaluator.provide({"feature_net": ProjectionNet(64)})
  return evaluator


def test_the_real_images_themselves_score_a_zero_distance_and_full_precision_and_recall():
  from genlab.data import scale_values

  evaluator = _evaluator(value_range=(0.0, 1.0), fd_n_real=120)
  real = evaluator.dataset.train["image"]
  rows = np.asarray(jax.random.permutation(jax.random.key(0), len(real)))  # Not the real rows.
  # The same 120 images the evaluator's real statistics use, in the run's range [0, 1]: the
  # evaluator maps them onto the feature network's [-1, 1] as it does the reals.
  from genlab.core import stream_key

  rows = np.asarray(jax.random.permutation(stream_key(jax.random.key(0), "fd_real_rows"), 200))
  same = scale_values(real[rows[:120]], (0.0, 1.0))
  m = evaluator.evaluate(same, None)
  assert abs(m["fd"]) < 1e-6 * np.trace(evaluator._real_stats[1]), m["fd"]
  assert m["precision"] == 1.0 and m["recall"] == 1.0 and m["coverage"] == 1.0
  # Other images of the same distribution are further, and noise much further.
  other = scale_values(real[rows[120:]], (0.0, 1.0))
  noisy = np.clip(same + np.random.default_rng(2).normal(0, 0.5, same.shape), 0, 1)
  assert 0 < evaluator.evaluate(other, None)["fd"] < evaluator.evaluate(noisy, None)["fd"]


def test_labels_add_the_class_metrics():
  evaluator = _evaluator()
  samples = np.random.default_rng(3).uniform(0, 1, (120, 8, 8, 1)).astype(np.float32)
  m = evaluator.evaluate(samples, np.arange(120) % 10)
  assert 0.0 <= m["class_accuracy"] <= 1.0 and np.isfinite(m["fd_class_mean"])
  assert "class_accuracy" not in evaluator.evaluate(samples, None)


@pytest.mark.parametrize(
  "options, needle",
  [
    ({"fd_n_fake": 3}, "config.sample_metrics.prdc_k=5 must be below the 3 samples"),
    ({"fd_n_real": 1, "prdc_k": 1}, "config.sample_metrics.fd_n_real=1 must be at least 2"),
    ({"evaluators": "feature_net,fid"}, "no evaluator 'fid'"),
  ],
)
def test_a_vae_refuses_sizes_its_sample_metrics_cannot_take_when_built(options, needle, data_dir):
  from genlab import config as config_lib
  from genlab.run import setup

  config = config_lib.load_experiment(EXPERIMENTS / "vae_digits.py")
  config.data.data_dir = data_dir
  config.sample_metrics.update(**options)
  with pytest.raises(ConfigError) as error:
    setup(config)
  assert needle in str(error.value) and "\n" not in str(error.value), str(error.value)


def test_a_saved_gan_config_with_the_old_fields_reads_them_into_sample_metrics():
  from genlab import config as config_lib

  config = config_lib.base_config("gan")
  saved = json.loads(config_lib.to_json(config))
  del saved["sample_metrics"]
  saved["gan"].update(fd_n_real=321, prdc_k=3, fd_n_fake=0, feature_net_steps=7)
  upgraded = config_lib.from_json(json.dumps(saved))
  assert "fd_n_real" not in upgraded.gan and "prdc_k" not in upgraded.gan
  assert upgraded.sample_metrics.fd_n_real == 321 and upgraded.sample_metrics.prdc_k == 3
  assert upgraded.sample_metrics.feature_net_steps == 7
  assert upgraded.sample_metrics.evaluators == "feature_net"


@pytest.mark.slow
def test_a_vae_and_a_cvae_run_report_fd_and_precision_recall_under_the_gans_protocol(
  data_dir, tmp_path
):
  from genlab import config as config_lib
  from genlab.run import evaluate_workdir, train_and_evaluate

  reports = {}
  for name in ("vae_digits", "cvae_digits", "gan_digits"):
    config = config_lib.load_experiment(EXPERIMENTS / f"{name}.py")
    config.data.data_dir = data_dir
    config.update(num_steps=60, eval_every=60, image_every=60, checkpoint_every=60)
    config.update(eval_at_start=False)
    config.sample_metrics.update(feature_net_steps=300)
    if name != "gan_digits":
      config.model.hidden = (64,)
      config.vae.nll_k = 20
    train_and_evaluate(config, tmp_path / name)
    reports[name] = evaluate_workdir(tmp_path / name)
  words = (
    "fd_n_real",
    "fd_real_split",
    "fd_n_fake",
    "fd_floor",
    "prdc_k",
    "prdc_space",
    "feature_network",
    "feature_network_input_range",
  )
  gan = reports["gan_digits"]["protocol"]
  for name in ("vae_digits", "cvae_digits"):
    report = reports[name]
    m, protocol = report["metrics"], report["protocol"]
    assert {w: protocol[w] for w in words} == {w: gan[w] for w in words}, name
    assert protocol["fd_n_real"] == 1497 and protocol["prdc_k"] == 5
    assert report["seed"] == reports["gan_digits"]["seed"]
    assert 0 < m["fd_floor"] < m["fd"], m
    assert all(0.0 <= m[k] <= 1.0 for k in ("precision", "recall", "coverage"))
    assert {"fd", "precision", "recall"} <= set(report["definitions"])
    # The floors are the data's: the same for every family on the same data and network.
    assert m["fd_floor"] == reports["gan_digits"]["metrics"]["fd_floor"]
  assert "class_accuracy" in reports["cvae_digits"]["metrics"]
  assert "class_accuracy" not in reports["vae_digits"]["metrics"]


def test_a_config_without_the_group_resumes_as_it_was_saved(test_config, tmp_path):
  """A config built for another family, then given `family='vae'`, lacks sample_metrics: the
  run writes the defaults it reads into config.json, so a resume compares equal."""
  from genlab.families.vae import options as vae_options
  from genlab.run import train_and_evaluate

  def config(steps):
    c = test_config(family="vae", num_steps=steps, eval_every=2, image_every=2)
    c.update(checkpoint_every=2, log_every=2, num_images=0)
    c.model = c.model.__class__({"name": "vae", "hidden": (8,), "latent_dim": 2})
    c.vae = vae_options(nll_k=2)
    assert "sample_metrics" not in c
    return c

  train_and_evaluate(config(2), tmp_path)
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved["sample_metrics"]["evaluators"] == ""
  assert train_and_evaluate(config(4), tmp_path).step == 4
