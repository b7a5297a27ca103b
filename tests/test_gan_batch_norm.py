"""DCGAN's BatchNorm in the GAN's conv networks, and parameterised activations: the layers
against NumPy, the DCGAN placement, and the family's batch statistics in training against
running averages in sampling."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genlab.errors import ConfigError
from genlab.models import ConvDecoder, ConvEncoder, Discriminator, Generator, activation_fn


def test_a_parameterised_activation_takes_its_shape_parameter():
  x = jnp.array([-2.0, -0.5, 0.0, 3.0])
  np.testing.assert_allclose(activation_fn("leaky_relu:0.1")(x), [-0.2, -0.05, 0.0, 3.0])
  np.testing.assert_allclose(activation_fn("leaky_relu")(x), [-0.02, -0.005, 0.0, 3.0])
  with pytest.raises(ConfigError, match="after ':' comes a number"):
    activation_fn("leaky_relu:steep")
  with pytest.raises(ConfigError, match="unknown activation"):
    activation_fn("leaky:0.1")


def test_batch_norm_normalizes_by_the_batch_in_training_and_updates_running_averages():
  """The encoder's second conv, batch-normalized: in training its output before the
  activation has zero mean and unit variance per channel, and the running averages move
  by 0.1 towards the batch's (PyTorch's momentum); in evaluation they are used instead."""
  x = jax.random.normal(jax.random.key(0), (6, 8, 8, 3)) * 3.0 + 1.0
  encoder = ConvEncoder(features=(4, 5), latent_dim=None, activation="none", batch_norm=True)
  variables = encoder.init(jax.random.key(1), x)
  # DCGAN's placement: none on the input layer.
  assert set(variables["batch_stats"]) == {"batch_norm_1"}
  assert "batch_norm_0" not in variables["params"]
  trained, updated = encoder.apply(variables, x, train=True, mutable=["batch_stats"])
  plain = ConvEncoder(features=(4, 5), latent_dim=None, activation="none")
  pre = np.asarray(plain.apply({"params": variables["params"]}, x), np.float64)
  mean, var = pre.mean(axis=(0, 1, 2)), pre.var(axis=(0, 1, 2))
  np.testing.assert_allclose(trained, (pre - mean) / np.sqrt(var + 1e-5), rtol=1e-4, atol=1e-4)
  stats = updated["batch_stats"]["batch_norm_1"]
  np.testing.assert_allclose(stats["mean"], 0.1 * mean, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * var, rtol=1e-5)
  evaluated = encoder.apply({**variables, **updated}, x)
  np.testing.assert_allclose(
    evaluated, (pre - stats["mean"]) / np.sqrt(stats["var"] + 1e-5), rtol=1e-4, atol=1e-4
  )


def test_the_generator_normalizes_every_hidden_layer_and_not_its_output():
  decoder = ConvDecoder(output_shape=(8, 8, 3), features=(4, 6), batch_norm=True)
  variables = decoder.init(jax.random.key(0), jnp.zeros((1, 5)))
  assert set(variables["batch_stats"]) == {"batch_norm_project", "batch_norm_1"}
  # Off (the default), the networks are what they were: no statistics, the same parameters.
  off = ConvDecoder(output_shape=(8, 8, 3), features=(4, 6)).init(
    jax.random.key(0), jnp.zeros((1, 5))
  )
  assert set(off) == {"params"}
  assert jax.tree.structure(off["params"]) == jax.tree.structure(
    {k: v for k, v in variables["params"].items() if not k.startswith("batch_norm")}
  )


def test_in_training_a_sample_depends_on_its_batch_and_in_sampling_it_does_not():
  g = Generator(output_shape=(8, 8, 1), features=(4, 8), batch_norm=True)
  z = jax.random.normal(jax.random.key(0), (3, 6))
  variables = g.init(jax.random.key(1), z[:1])

  def train(zs):
    return g.apply(variables, zs, train=True, mutable=["batch_stats"])[0][0]

  assert not np.allclose(train(z[:2]), train(z[jnp.array([0, 2])]))
  np.testing.assert_array_equal(g.apply(variables, z[:2])[0], g.apply(variables, z[::2])[0])


@pytest.mark.parametrize("network", [Generator, Discriminator])
def test_batch_norm_is_refused_on_the_mlp(network):
  module = network(
    architecture="mlp",
    batch_norm=True,
    **({"output_shape": (4, 4, 1)} if network is Generator else {}),
  )
  x = jnp.zeros((1, 3)) if network is Generator else jnp.zeros((1, 4, 4, 1))
  with pytest.raises(ConfigError, match="only the dcgan architecture has BatchNorm"):
    module.init(jax.random.key(0), x)


def _bn_gan_config(data_dir, **gan):
  from conftest import EXPERIMENTS
  from genlab import config as config_lib

  config = config_lib.load_experiment(EXPERIMENTS / "dcgan_digits.py")
  config.data.data_dir = data_dir
  config.batch_size = 16
  config.sample_metrics.evaluators = ""
  for part in ("generator", "discriminator"):
    config.model[part].update(features=(4, 8), batch_norm=True)
  config.gan.update(**gan)
  return config


def test_a_gradient_penalty_is_refused_with_a_batch_normalized_discriminator(data_dir):
  from genlab.run import setup

  with pytest.raises(ConfigError) as error:
    setup(_bn_gan_config(data_dir, penalty="r1"))
  message = str(error.value)
  assert "per example and BatchNorm mixes the examples" in message and "\n" not in message


@pytest.mark.slow
def test_a_batch_normalized_gan_trains_its_running_averages_and_samples_by_them(data_dir):
  """Two train steps move G's and D's running averages (kept in state.stats, outside the
  optimizers); samples, drawn by the running averages, do not depend on how many are drawn."""
  from genlab.run import setup

  s = setup(_bn_gan_config(data_dir))
  family, state = s.family, s.initial_state
  assert set(state.stats) == {"generator", "discriminator"}
  assert set(state.params) == set(state.opt_state) == {"generator", "discriminator"}
  images = np.asarray(s.dataset.train["image"][:16], np.float32) / 255.0 * 2 - 1
  batch = {"image": jnp.asarray(images), "index": jnp.arange(16)}
  step = jax.jit(family.train_step)
  trained = state
  for i in range(2):
    trained, metrics = step(trained, batch, jax.random.key(i))
  assert np.isfinite(float(metrics["d_loss"])) and np.isfinite(float(metrics["g_loss"]))
  for part in ("generator", "discriminator"):
    before, after = jax.tree.leaves(state.stats[part]), jax.tree.leaves(trained.stats[part])
    assert all(not np.allclose(a, b) for a, b in zip(before, after, strict=True)), part
  key = jax.random.key(7)
  np.testing.assert_allclose(
    family.sample(trained, key, 2), family.sample(trained, key, 5)[:2], rtol=1e-6, atol=1e-6
  )
  assert s.report.protocol()["batch_norm"].startswith("BatchNorm in G and D")
