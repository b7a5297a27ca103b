"""The discretized logistic likelihood of 8-bit images, and a VAE that reports bits/dim."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import expit

from genlab import losses

LEVELS = (np.arange(256) * 2.0 / 255.0 - 1.0).astype(np.float32)  # Bin centres of 0..255.


def _probabilities(mean, log_scale):
  """P(k) for k = 0..255 of one pixel, under jit."""
  x = jnp.asarray(LEVELS)[:, None, None, None]  # 256 examples of one value each.
  m = jnp.full_like(x, mean)
  s = jnp.full_like(x, log_scale)
  log_p = jax.jit(losses.discretized_logistic_log_likelihood)(x, m, s)
  return np.exp(np.asarray(log_p, np.float64))


@pytest.mark.parametrize(
  "mean, log_scale",
  [(0.0, -2.0), (0.3, -4.0), (-0.99, -3.0), (1.0, -5.0), (0.5, 0.5), (-1.4, -1.0), (0.2, -7.0)],
)
def test_the_likelihood_sums_to_one_over_the_256_values_of_a_pixel(mean, log_scale):
  p = _probabilities(mean, log_scale)
  assert abs(p.sum() - 1.0) < 2e-4, p.sum()
  # Against the logistic's CDF in float64 (the edge bins take the tails); where the bins are
  # far narrower than the scale PixelCNN++'s underflow branch (pdf · width) stands in.
  s = np.exp(log_scale)
  upper = np.where(LEVELS > 0.999, 1.0, expit((LEVELS + 1 / 255 - mean) / s))
  lower = np.where(LEVELS < -0.999, 0.0, expit((LEVELS - 1 / 255 - mean) / s))
  np.testing.assert_allclose(p, upper - lower, atol=2e-5)


def test_values_far_in_a_tail_keep_a_finite_log_likelihood():
  x = jnp.asarray([[-1.0, 1.0, 0.0]])
  log_p = losses.discretized_logistic_log_likelihood(x, jnp.asarray([[1.0, -1.0, 0.9]]), -7.0)
  assert np.isfinite(float(log_p[0])) and float(log_p[0]) < -100


def _conv_vae_config(data_dir, **overrides):
  from genlab import config as config_lib
  from genlab.families.vae import options as vae_options

  config = config_lib.base_config("vae")
  config.dataset = "digits"
  config.data.data_dir = data_dir
  config.data.range = (-1.0, 1.0)
  config.batch_size = 32
  config.mesh.devices = 1
  config.model.update(
    name="vae",
    architecture="conv",
    features=(16, 32),
    kernel_size=3,
    strides=2,
    latent_dim=8,
    likelihood="discretized_logistic",
  )
  config.vae = vae_options(nll_k=16)
  config.update(num_steps=60, eval_every=60, image_every=60, checkpoint_every=60, log_every=20)
  config.update(**overrides)
  return config


def test_a_discretized_logistic_vae_refuses_data_not_on_the_8_bit_grid(data_dir):
  from genlab.errors import ConfigError
  from genlab.run import setup

  config = _conv_vae_config(data_dir)
  config.data.range = (0.0, 1.0)
  with pytest.raises(ConfigError, match=r"config.data.range=\(-1.0, 1.0\)"):
    setup(config)


@pytest.mark.slow
def test_a_conv_vae_on_digits_reports_elbo_and_nll_in_bits_per_dim(data_dir, tmp_path):
  from genlab.run import evaluate_workdir, train_and_evaluate

  train_and_evaluate(_conv_vae_config(data_dir), tmp_path)
  report = evaluate_workdir(tmp_path)
  m, protocol = report["metrics"], report["protocol"]
  d = 8 * 8 * 1
  for name in ("neg_elbo", "nll"):
    np.testing.assert_allclose(m[f"{name}_bits_per_dim"], m[name] / (d * np.log(2)), rtol=1e-12)
  assert m["nll"] <= m["neg_elbo"] + 1e-3
  # Better than 8 bits/dim, the uniform distribution over 256 levels, after 60 steps.
  assert 0 < m["nll_bits_per_dim"] < 8.0, m
  assert protocol["likelihood"] == "discretized_logistic"
  assert protocol["bits_per_dim"].startswith("nats / (D · ln 2), D = H·W·C = 64 values")
  assert {"neg_elbo_bits_per_dim", "nll_bits_per_dim"} <= set(report["definitions"])
  logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
  assert any("test/neg_elbo_bits_per_dim" in line for line in logged)
