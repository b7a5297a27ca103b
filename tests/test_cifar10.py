"""The CIFAR-10 experiments on TFDS mock data, as a user runs them (`genlab train`, then
`genlab eval`), scored by the FID Inception; and the switch that keeps the Inception out of
the evaluations during training.

Nothing is downloaded: `tfds.testing.mock_data` stands for the prepared `cifar10`, and the
Inception's weights are random ones of the published file's layout, written by torch.save."""

from __future__ import annotations

import json

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


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory):
  """pytorch-fid's FID Inception (1,008 classes, no aux head) at torch's random init, saved
  as the published file is: its tensors, names and shapes, not its values."""
  from conftest import import_torch_references

  torch, pytorch_fid, _ = import_torch_references()
  torch.manual_seed(0)
  net = pytorch_fid.inception._inception_v3(num_classes=1008, aux_logits=False, weights=None)
  path = tmp_path_factory.mktemp("weights") / "random_fid_inception.pth"
  torch.save(net.state_dict(), path)
  return path


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


def test_a_final_only_training_run_never_reads_the_inception_weights(data_dir, tmp_path):
  """Training with `inception_final_only` builds no Inception: a run whose weights file does
  not exist trains (and fetches nothing); `genlab eval`, which scores with it, says so."""
  from genlab import config as config_lib
  from genlab.errors import ConfigError
  from genlab.run import evaluate_workdir, train_and_evaluate

  config = config_lib.load_experiment(EXPERIMENTS / "vae_digits.py")
  config.data.data_dir = data_dir
  config.update(num_steps=2, eval_every=2, checkpoint_every=2, image_every=2, num_images=0)
  missing = tmp_path / "no_such_weights.pth"
  config.sample_metrics.update(
    evaluators="inception",
    inception_final_only=True,
    inception_weights=str(missing),
    **{k: v for k, v in TINY_METRICS.items() if k.startswith(("inception", "kid", "is_"))},
  )
  result = train_and_evaluate(config, tmp_path / "run")
  assert result.step == 2 and "fid" not in result.test_metrics
  with pytest.raises(ConfigError, match="no_such_weights.pth'?: no such file"):
    evaluate_workdir(tmp_path / "run")
  # Without final_only, training needs them at once.
  config.sample_metrics.inception_final_only = False
  with pytest.raises(ConfigError, match="no such file"):
    train_and_evaluate(config, tmp_path / "run2")


class UncallableInception:
  """Stands for the FID Inception where it must not run."""

  sha256 = "0" * 64

  def __call__(self, images, **kwargs):
    raise AssertionError("the Inception ran")

  def cached(self, name, compute):
    return compute()


def _run_on_mock_cifar10(experiment, workdir, weights, overrides):
  """`genlab train` then `genlab eval` (the CLI's own function, in this process) of an
  experiment on mock cifar10, with tiny sizes; returns eval.json and metrics.jsonl."""
  import tensorflow_datasets as tfds

  from genlab import cli

  sizes = {**TINY_METRICS, "inception_weights": str(weights)}
  args = [
    "--config.num_steps=2",
    "--config.batch_size=8",
    "--config.eval_batch_size=16",
    "--config.log_every=1",
    "--config.eval_every=1",
    "--config.image_every=2",
    "--config.checkpoint_every=2",
    "--config.num_images=4",
    *(f"--config.sample_metrics.{k}={v}" for k, v in sizes.items()),
    *overrides,
  ]
  config = str(EXPERIMENTS / f"{experiment}.py")
  with tfds.testing.mock_data(num_examples=24):
    assert cli.run(["train", "--config", config, "--workdir", str(workdir), *args]) == 0
    assert cli.run(["eval", "--workdir", str(workdir)]) == 0
  evaluations = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return json.loads((workdir / "eval.json").read_text()), evaluations


def _assert_inception_report(report, weights):
  from genlab.run.inception_weights import sha256_of

  m, protocol = report["metrics"], report["protocol"]
  assert report["dataset"] == "cifar10" and report["num_examples"] == 24
  assert all(np.isfinite(m[k]) for k in ("fid", "kid", "kid_std", "is", "is_std")), m
  # Random weights still give a distance between different sets, and a score in its bounds.
  assert m["fid"] > 0 and 1.0 <= m["is"] <= 1008, m
  assert protocol["inception_weights"] == str(weights)
  assert protocol["inception_weights_sha256"] == sha256_of(weights)
  assert protocol["inception_weights_published"].startswith("no: not pt_inception-2015-12-05")
  assert protocol["inception_n_fake"] == 6 and protocol["inception_n_real"] == 6
  assert protocol["kid_subset_size"] == 4 and protocol["kid_subsets"] == 3
  assert protocol["is_splits"] == 2
  assert "fewer than the 50000" in protocol["inception_sample_counts"]
  assert {"fid", "kid", "is"} <= set(report["definitions"])
  return m, protocol


# The CIFAR-10 GANs' networks, tiny (both experiments share them).
SMALL_GAN = [
  "--config.model.generator.features=(4, 8, 8, 16)",
  "--config.model.discriminator.features=(4, 4, 8, 8, 8, 8, 16)",
]


def _tests(evaluations):
  return [e for e in evaluations if any(k.startswith("test/") for k in e)]


@pytest.mark.slow
def test_dcgan_cifar10_trains_on_mock_data_and_genlab_eval_writes_fid_kid_and_is(
  inception_weights, tmp_path
):
  report, evaluations = _run_on_mock_cifar10(
    "dcgan_cifar10", tmp_path, inception_weights, SMALL_GAN
  )
  m, protocol = _assert_inception_report(report, inception_weights)
  # StudioGAN's protocol, which the experiment sets: the test images, pytorch-fid's resize.
  assert protocol["inception_real_split"] == "test"
  assert protocol["inception_resize"].startswith("legacy_pytorch: ")
  assert protocol["batch_norm"].startswith("BatchNorm in G and D") and protocol["n_disc"] == 2
  assert np.isfinite(m["fd"]) and 0 < m["d_real"] < 1, m
  # The evaluations during training (steps 1 and 2) had the cheap metrics, not the Inception's.
  tests = _tests(evaluations)
  assert [e["step"] for e in tests] == [1, 2]
  assert all("test/fd" in e and "test/fid" not in e and "test/is" not in e for e in tests)


@pytest.mark.slow
def test_sngan_cifar10_trains_on_mock_data_and_genlab_eval_writes_fid_kid_and_is(
  inception_weights, tmp_path
):
  report, _ = _run_on_mock_cifar10("sngan_cifar10", tmp_path, inception_weights, SMALL_GAN)
  _, protocol = _assert_inception_report(report, inception_weights)
  assert protocol["discriminator_spectral_norm"] is True
  assert protocol["generator_loss"] == "hinge" and protocol["n_disc"] == 1
  assert protocol["batch_norm"].startswith("BatchNorm in G:")
  assert protocol["inception_real_split"] == "train"
  assert protocol["inception_resize"].startswith("clean: ")


@pytest.mark.slow
def test_conv_vae_cifar10_reports_bits_per_dim_and_genlab_eval_fid_kid_and_is(
  inception_weights, tmp_path
):
  small = [
    "--config.model.features=(4, 8, 8)",
    "--config.model.latent_dim=4",
    "--config.vae.nll_k=4",
  ]
  report, evaluations = _run_on_mock_cifar10("conv_vae_cifar10", tmp_path, inception_weights, small)
  m, protocol = _assert_inception_report(report, inception_weights)
  dims = 32 * 32 * 3
  for name in ("neg_elbo", "nll"):
    assert m[f"{name}_bits_per_dim"] == pytest.approx(m[name] / (dims * np.log(2)), rel=1e-5)
  # An untrained model of 8-bit pixels: between the ~0 of a perfect one and far above the
  # 8 bits of a uniform one, not beyond a few tens.
  assert 0 < m["nll_bits_per_dim"] < 50, m
  assert protocol["inception_resize"].startswith("clean: ")
  tests = _tests(evaluations)
  assert tests and all("test/neg_elbo" in e and "test/fid" not in e for e in tests)


def test_cifar10_unprepared_is_one_line_that_says_how_to_prepare_it(tmp_path):
  """Without the mock, a data dir that lacks cifar10 is refused in one line naming the
  `tfds build` command: genlab never downloads it."""
  from genlab import config as config_lib
  from genlab.errors import DataError
  from genlab.run import setup

  config = config_lib.load_experiment(EXPERIMENTS / "dcgan_cifar10.py")
  config.data.data_dir = str(tmp_path)
  with pytest.raises(DataError) as error:
    setup(config)
  message = str(error.value)
  assert "tfds build cifar10 --file_format=array_record" in message and "\n" not in message
  assert not any(tmp_path.iterdir())  # Nothing was fetched into it.
