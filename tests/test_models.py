"""ConvAutoencoder: shapes for any input size, per-stage settings, config errors, jit."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genlab.errors import ConfigError
from genlab.models import ConvAutoencoder


def make_test_model(**overrides) -> ConvAutoencoder:
  """A tiny autoencoder for (8, 8, 1) inputs; any field overridable."""
  fields = dict(output_shape=(8, 8, 1), features=(4, 8), kernel_size=3, strides=2, latent_dim=6)
  fields.update(overrides)
  return ConvAutoencoder(**fields)


def _random_params(model: ConvAutoencoder, x: np.ndarray):
  """Parameters of `model` drawn with NumPy (compiling `model.init` costs seconds on CPU)."""
  shapes = jax.eval_shape(model.init, jax.random.key(0), x)
  rng = np.random.default_rng(0)
  return jax.tree.map(lambda s: (0.3 * rng.normal(size=s.shape)).astype(s.dtype), shapes)


def _init_apply(model: ConvAutoencoder, input_shape, batch: int = 2):
  """Applies `model` under jit to uniform inputs, with random parameters."""
  x = np.random.default_rng(1).uniform(size=(batch, *input_shape)).astype(np.float32)
  params = _random_params(model, x)
  output, aux = jax.jit(model.apply)(params, x)
  return params, x, output, aux


def _shapes(model: ConvAutoencoder, input_shape, batch: int = 2):
  """Parameter and output shapes of `model`, traced without compiling."""
  x = jax.ShapeDtypeStruct((batch, *input_shape), jnp.float32)
  params = jax.eval_shape(model.init, jax.random.key(1), x)
  output, aux = jax.eval_shape(model.apply, params, x)
  return params, output, aux


@pytest.mark.parametrize(
  "shape", [(8, 8, 1), (28, 28, 1), (32, 32, 3), (64, 64, 3)], ids=lambda s: "x".join(map(str, s))
)
def test_reconstruction_shapes(shape):
  model = make_test_model(output_shape=shape)

  _, output, aux = _shapes(model, shape)

  chex.assert_shape(output, (2, *shape))
  chex.assert_shape(aux["logits"], (2, *shape))
  chex.assert_shape(aux["code"], (2, 6))


def test_image_to_map_output_shape_differs_from_input():
  model = make_test_model(output_shape=(7, 7, 1))

  _, output, aux = _shapes(model, (28, 28, 3))

  chex.assert_shape(output, (2, 7, 7, 1))
  chex.assert_shape(aux["code"], (2, 6))


def test_code_shape_with_latent_dim():
  model = make_test_model(output_shape=(28, 28, 1), features=(4, 8, 16), latent_dim=5)

  _, _, aux = _shapes(model, (28, 28, 1), batch=3)

  chex.assert_shape(aux["code"], (3, 5))


def test_code_is_last_feature_map_without_latent_dim():
  # 28 → 14 → 7 with stride 2 and 'SAME' padding; the code keeps the last stage's 8 channels.
  model = make_test_model(output_shape=(28, 28, 1), latent_dim=None)

  params, output, aux = _shapes(model, (28, 28, 1))

  chex.assert_shape(aux["code"], (2, 7, 7, 8))
  chex.assert_shape(output, (2, 28, 28, 1))
  assert "code" not in params["params"]["encoder"]
  assert "project" not in params["params"]["decoder"]


def test_per_stage_kernels_and_strides():
  # Stage 0: 5×5 kernel, stride 2 (32 → 16); stage 1: 3×3, stride 1 (16 → 16);
  # stage 2: 1×1, stride 2 (16 → 8).
  model = make_test_model(
    output_shape=(32, 32, 3),
    features=(4, 8, 16),
    kernel_size=(5, 3, 1),
    strides=(2, 1, 2),
    latent_dim=None,
  )

  params, output, aux = _shapes(model, (32, 32, 3))

  chex.assert_shape(aux["code"], (2, 8, 8, 16))
  chex.assert_shape(output, (2, 32, 32, 3))
  encoder = params["params"]["encoder"]
  chex.assert_shape(encoder["conv_0"]["kernel"], (5, 5, 3, 4))
  chex.assert_shape(encoder["conv_1"]["kernel"], (3, 3, 4, 8))
  chex.assert_shape(encoder["conv_2"]["kernel"], (1, 1, 8, 16))
  decoder = params["params"]["decoder"]
  chex.assert_shape(decoder["deconv_2"]["kernel"], (1, 1, 16, 8))
  chex.assert_shape(decoder["deconv_1"]["kernel"], (3, 3, 8, 4))
  chex.assert_shape(decoder["deconv_0"]["kernel"], (5, 5, 4, 3))


@pytest.mark.parametrize("field", ["kernel_size", "strides"])
def test_wrong_length_per_stage_sequence_raises(field):
  model = make_test_model(**{field: (3, 3, 3)})  # Three entries for two stages.
  x = jnp.zeros((1, 8, 8, 1))

  with pytest.raises(ConfigError, match=rf"{field} has 3 entries for 2 conv stages"):
    jax.eval_shape(model.init, jax.random.key(0), x)


@pytest.mark.parametrize("field", ["activation", "output_activation"])
def test_unknown_activation_raises(field):
  model = make_test_model(**{field: "relu_typo"})
  x = jnp.zeros((1, 8, 8, 1))

  with pytest.raises(ConfigError, match="unknown activation 'relu_typo'"):
    jax.eval_shape(model.init, jax.random.key(0), x)


@pytest.mark.parametrize("name", ["PReLU", "Dense"])
def test_flax_module_class_is_not_an_activation(name):
  # `flax.linen.PReLU` and `Dense` are callable attributes of flax.linen but Module classes,
  # not activation functions: calling one on an array is a user error and must read as one.
  model = make_test_model(activation=name)
  x = jnp.zeros((1, 8, 8, 1))

  with pytest.raises(ConfigError, match=name):
    jax.eval_shape(model.init, jax.random.key(0), x)


@pytest.mark.parametrize(
  ("output_activation", "fn"),
  [("sigmoid", jax.nn.sigmoid), ("tanh", jnp.tanh), ("none", lambda x: x)],
  ids=["sigmoid", "tanh", "none"],
)
def test_output_activation_applies_to_logits(output_activation, fn):
  model = make_test_model(output_activation=output_activation)

  _, _, output, aux = _init_apply(model, (8, 8, 1))

  chex.assert_trees_all_close(output, fn(aux["logits"]), rtol=1e-6)
  assert float(jnp.std(aux["logits"])) > 0  # Not a degenerate constant output.


def test_jit_and_eager_apply_agree():
  model = make_test_model(kernel_size=(3, 1), strides=(2, 1))
  x = np.random.default_rng(0).uniform(size=(3, 8, 8, 1)).astype(np.float32)
  params = _random_params(model, x)

  eager = model.apply(params, x)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def apply(params, x):
    return model.apply(params, x)

  jitted = apply(params, x)
  again = apply(params, x + 0.5)  # Same shapes: no re-trace.

  chex.assert_trees_all_close(jitted, eager, rtol=1e-5, atol=1e-6)
  assert not np.allclose(again[0], jitted[0])  # The jitted function does depend on its input.


def test_spatial_code_that_cannot_reach_the_output_shape_raises():
  # latent_dim=None keeps a 2×2 map from an 8×8 input; cropping cannot grow it to 28×28.
  model = ConvAutoencoder(output_shape=(28, 28, 1), features=(4, 8), latent_dim=None)
  with pytest.raises(ConfigError, match="spatial code cannot decode"):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
