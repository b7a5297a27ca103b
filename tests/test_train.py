"""End-to-end runs of the trainer: embedded digits, mock TFDS, .npz with targets, resume."""

from __future__ import annotations

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import restore_latest
from genlab.data import eval_batches
from genlab.run import evaluate_workdir, setup, train_and_evaluate


def _metrics(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_digits_run_leaves_metrics_images_checkpoint_and_learns(test_config, tmp_path):
  config = test_config(
    num_steps=200,
    log_every=20,
    eval_every=100,
    image_every=100,
    checkpoint_every=100,
    **{"optimizer.learning_rate": 3e-3},
  )
  result = train_and_evaluate(config, tmp_path)
  assert result.step == 200
  lines = _metrics(tmp_path)
  train_losses = [m["train/loss"] for m in lines if "train/loss" in m]
  assert len(train_losses) == 10
  assert train_losses[-1] < 0.7 * train_losses[0]
  evals = [m for m in lines if "test/mse" in m]
  assert [m["step"] for m in evals] == [100, 200]
  assert all(m["test/num_examples"] == 300 for m in evals)
  assert (tmp_path / "config.json").is_file()
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == [
    "100",
    "200",
  ]
  assert {p.name for p in (tmp_path / "images").iterdir()} == {
    "reconstruction_step_000100.png",
    "reconstruction_step_000200.png",
  }
  assert any((tmp_path / "tensorboard").iterdir())

  report = evaluate_workdir(tmp_path)
  assert json.loads((tmp_path / "eval.json").read_text()) == report
  assert report["num_examples"] == 300 and report["checkpoint_step"] == 200
  assert report["split"] == "test"
  np.testing.assert_allclose(report["metrics"]["mse"], evals[-1]["test/mse"], rtol=1e-5)
  assert report["metrics"]["mse"] < report["metrics"]["mse_mean_baseline"]


def test_metrics_file_is_strict_json_and_the_compiling_step_has_no_rate(test_config, tmp_path):
  train_and_evaluate(test_config(num_steps=3, log_every=1, eval_every=3), tmp_path)

  def refuse(constant):
    raise AssertionError(f"{constant} in metrics.jsonl")

  text = (tmp_path / "metrics.jsonl").read_text().splitlines()
  lines = [json.loads(line, parse_constant=refuse) for line in text]
  train = [m for m in lines if "train/loss" in m]
  assert [m["step"] for m in train] == [1, 2, 3]
  # Step 1's time is mostly compilation: no examples/s rather than a misleading one.
  assert "train/examples_per_s" not in train[0]
  assert all(m["train/examples_per_s"] > 0 for m in train[1:])


@pytest.mark.slow
def test_resume_continues_from_the_checkpoint_and_matches_an_unbroken_run(test_config, tmp_path):
  straight = train_and_evaluate(test_config(num_steps=20), tmp_path / "straight")
  train_and_evaluate(test_config(num_steps=10), tmp_path / "resumed")
  resumed = train_and_evaluate(test_config(num_steps=20), tmp_path / "resumed")
  assert resumed.step == 20
  steps = [m["step"] for m in _metrics(tmp_path / "resumed") if "train/loss" in m]
  assert steps == [5, 10, 15, 20]  # The second run started at step 10, not 0.
  # Same data order and keys after the restart: the same parameters, bit for bit.
  chex.assert_trees_all_equal(resumed.state.params, straight.state.params)
  chex.assert_trees_all_equal(resumed.state.opt_state, straight.state.opt_state)


@pytest.mark.slow
def test_mock_tfds_mnist_run(test_config, tmp_path):
  config = test_config(
    dataset="mnist",
    num_steps=4,
    batch_size=8,
    log_every=2,
    eval_every=4,
    image_every=4,
    checkpoint_every=4,
    eval_batch_size=16,
  )
  with tfds.testing.mock_data(num_examples=24):
    result = train_and_evaluate(config, tmp_path)
    report = evaluate_workdir(tmp_path)
    # The same metric from the restored state in one batch of the whole split: the eval
    # path's batching, its padding (24 = 16 + 8 real of 16) and masks change nothing.
    step, state = restore_latest(tmp_path)
    s = setup(config)
    test = s.dataset.test
    n = len(test["image"])
    (batch,) = eval_batches(test, global_batch_size=n, value_range=s.family.value_range)
    sums = jax.jit(s.family.eval_step)(state, jax.tree.map(jnp.asarray, batch))
  whole = s.family.summarize({k: float(v) / n for k, v in sums.items()})
  assert result.step == step == 4
  assert report["dataset"] == "mnist" and report["num_examples"] == n == 24
  # float32 sums of 24 terms in another grouping: equal to a few ulps.
  assert report["metrics"]["mse"] == pytest.approx(whole["mse"], rel=1e-5)
  assert 0 < report["metrics"]["mse"] < 0.5  # Sigmoid outputs of [0, 1] images.


@pytest.mark.slow
def test_npz_image_to_map_run(test_config, tmp_path):
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, size=(40, 16, 16, 3), dtype=np.uint8)
  target = x[:, ::4, ::4, :1]  # A 4×4 one-channel map of each image.
  path = tmp_path / "maps.npz"
  np.savez(path, x_train=x[:32], x_test=x[32:], target_train=target[:32], target_test=target[32:])
  config = test_config(
    dataset=str(path), num_steps=4, batch_size=8, eval_every=4, image_every=4, checkpoint_every=4
  )
  result = train_and_evaluate(config, tmp_path / "run")
  assert (
    result.state.params["model"]["decoder"]["deconv_0"]["kernel"].shape[-1] == 1
  )  # One output channel: the map.
  assert (tmp_path / "run" / "images" / "prediction_step_000004.png").is_file()
  report = evaluate_workdir(tmp_path / "run")
  assert report["num_examples"] == 8
  assert report["metrics"]["mse_mean_baseline"] > 0
  # Image → map: the saliency-benchmark metrics come along.
  m = report["metrics"]
  assert -1.0 <= m["cc"] <= 1.0 and 0.0 <= m["sim"] <= 1.0 and m["kld"] >= 0.0
  assert np.isfinite(m["nss"])


@pytest.mark.slow
def test_denoising_run_reports_psnr_of_output_and_of_noisy_input(test_config, tmp_path):
  config = test_config(
    num_steps=200,
    corruption="gaussian:0.5",
    eval_every=200,
    image_every=200,
    checkpoint_every=200,
    **{"optimizer.learning_rate": 3e-3},
  )
  train_and_evaluate(config, tmp_path)
  report = evaluate_workdir(tmp_path)
  m = report["metrics"]
  assert report["protocol"]["corruption"] == "gaussian:0.5"
  assert 8.0 < m["psnr_noisy"] < 11.0  # σ = 0.5 on [0, 1] digits, clipped: about 9.4 dB.
  assert m["psnr"] > m["psnr_noisy"]
  assert "ssim" not in m  # 8×8 digits are smaller than SSIM's 11×11 window.
  assert (tmp_path / "images" / "denoising_step_000200.png").is_file()


@pytest.mark.slow
def test_denoising_digits_as_shipped_gains_6_db_over_the_noisy_input(data_dir, tmp_path):
  # The denoising bar: at σ = 0.5 on [0, 1] digits, test PSNR ≥ noisy PSNR + 6 dB, reached
  # by half the shipped 4,000 steps (measured: +6.31 dB at 2,000, +6.38 at 4,000).
  from conftest import train_shipped

  m = train_shipped("denoising_digits.py", data_dir, tmp_path, num_steps=2000)
  assert m["psnr"] - m["psnr_noisy"] >= 6.0, m
