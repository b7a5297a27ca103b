"""genlab's ConvTranspose against nn.ConvTranspose: parameters, outputs and all gradients."""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import FLOAT32_U, assert_close_normwise
from genlab.kernels.xla_cpu.conv_transpose import ConvTranspose, conv_transpose
from genlab.models import ConvDecoder

# (input H, W), kernel_size, strides, padding, features. Features 1 and 4 take the
# dilated-convolution forward pass and the kernel gradient by taps, 16 the phase forward
# pass and phase kernel gradient (conv_transpose.py).
CASES = [
  ((7, 7), (4, 4), (2, 2), "SAME", 16),  # the DCGAN / conv AE decoder stage
  ((7, 7), (4, 4), (2, 2), "SAME", 4),
  ((14, 14), (4, 4), (2, 2), "SAME", 1),  # the decoders' last stage
  ((4, 4), (3, 3), (2, 2), "SAME", 16),  # odd kernel: phases with 2 and 1 taps
  ((2, 2), (4, 4), (2, 2), "SAME", 16),  # kernel larger than the input
  ((2, 2), (4, 4), (2, 2), "SAME", 4),
  ((5, 6), (5, 3), (3, 2), "SAME", 16),
  ((5, 4), (3, 3), (1, 1), "SAME", 16),  # stride 1: one phase
  ((3, 3), (1, 1), (2, 2), "SAME", 16),  # kernel smaller than the stride: empty phases
  ((5, 5), (4, 4), (2, 2), "VALID", 16),
  ((5, 5), (3, 3), (3, 3), "VALID", 4),
  ((4, 5), (4, 3), (2, 2), ((1, 2), (0, 3)), 16),
  ((3, 3), (4, 4), (2, 2), ((5, 4), (2, 0)), 16),  # padding wider than the kernel
  ((6, 6), (4, 4), (2, 2), 1, 16),
  # The kernel gradient by taps under the same paddings, strides and kernel shapes.
  ((4, 5), (4, 3), (2, 2), ((1, 2), (0, 3)), 4),
  ((3, 3), (4, 4), (2, 2), ((5, 4), (2, 0)), 1),
  ((5, 6), (5, 3), (3, 2), "SAME", 2),
  ((5, 4), (3, 3), (1, 1), "SAME", 1),
  ((3, 3), (1, 1), (2, 2), "SAME", 3),
  ((5, 5), (4, 4), (2, 2), "VALID", 1),
]


def _value_and_grads(module: nn.Module, params, x, g):
  """Output and the VJP of `g` with respect to the parameters and the inputs, under jit."""

  @jax.jit
  def run(params, x, g):
    y, vjp = jax.vjp(module.apply, params, x)
    return y, vjp(g)

  return run(params, x, g)


def _in_float64(fields, params, *arrays):
  """Flax's ConvTranspose with `fields` and its arguments in float64: the exact values the
  float32 layers approximate."""
  fields = dict(fields, dtype=jnp.float64, param_dtype=jnp.float64)
  params = jax.tree.map(lambda p: np.asarray(p, np.float64), params)
  return nn.ConvTranspose(**fields), params, *(np.asarray(a, np.float64) for a in arrays)


# Each entry of the outputs and gradients sums at most 2·14·14 = 392 float32 products (the
# kernel gradient of the 14×14 case), so its rounding error is below 392·2^-24 ≈ 2.3e-5 of
# the terms' scale; measured against float64 on Zen 4 it is 6e-7 for flax's layer and ours.
FIRST_ORDER_REL = 400 * FLOAT32_U


@pytest.mark.parametrize("size,kernel_size,strides,padding,features", CASES)
def test_equals_flax_conv_transpose(size, kernel_size, strides, padding, features):
  fields = dict(features=features, kernel_size=kernel_size, strides=strides, padding=padding)
  reference, ours = nn.ConvTranspose(**fields), ConvTranspose(**fields)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, *size, 3)).astype(np.float32)
  params = ours.init(jax.random.key(0), x)
  # Same names, shapes and initial values: checkpoints of either load into the other.
  chex.assert_trees_all_equal(params, reference.init(jax.random.key(0), x))
  params = jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params)
  y_ref = reference.apply(params, x)
  g = rng.normal(size=y_ref.shape).astype(np.float32)

  got = _value_and_grads(ours, params, x, g)
  with jax.enable_x64(True):
    exact = jax.tree.map(np.asarray, _value_and_grads(*_in_float64(fields, params, x, g)))
  chex.assert_equal_shape([got[0], y_ref])
  assert_close_normwise(got, exact, rel=FIRST_ORDER_REL)


@pytest.mark.parametrize("features", [16, 1])  # Phase and by-taps kernel gradients.
def test_second_order_gradients_equal_flax(features):
  # A gradient penalty (WGAN-GP, R1, path length) differentiates the input gradient with
  # respect to the parameters: through the custom backward pass, as reverse over reverse.
  fields = dict(features=features, kernel_size=(4, 4), strides=(2, 2), padding="SAME")
  ours = ConvTranspose(**fields)
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 5, 5, 3)).astype(np.float32)
  params = jax.tree.map(
    lambda p: rng.normal(size=p.shape).astype(np.float32), ours.init(jax.random.key(0), x)
  )

  def penalty_grad(module):
    def energy(params, x):
      return jnp.sum(jnp.tanh(module.apply(params, x)))

    def penalty(params, x):
      return jnp.sum(jax.grad(energy, argnums=1)(params, x) ** 2)

    return jax.jit(jax.grad(penalty))

  got = penalty_grad(ours)(params, x)
  with jax.enable_x64(True):
    module, params64, x64 = _in_float64(fields, params, x)
    exact = jax.tree.map(np.asarray, penalty_grad(module)(params64, x64))
  assert all(float(np.abs(v).max()) > 0 for v in jax.tree.leaves(exact))
  # Two reverse passes: each entry sums the 4·4·16 taps of the kernel gradient over the
  # input gradient's 2·5·5·3 entries, each a sum of 4·4·16 products (≈ 4·10^5 rounded terms
  # in the worst case, ≈ 2.4e-2 of their scale; measured 1.3e-6 against float64 on Zen 4
  # for flax's layer and ours). The bound that keeps this test meaningful is far below the
  # O(1) error of a wrong tap or padding: 1e-4 of the gradient's scale.
  assert_close_normwise(got, exact, rel=1e-4)


def test_batch_axes_and_bfloat16_follow_flax():
  fields = dict(features=16, kernel_size=(4, 4), strides=(2, 2), dtype=jnp.bfloat16)
  x = np.random.default_rng(0).normal(size=(2, 3, 5, 5, 4)).astype(np.float32)
  params = ConvTranspose(**fields).init(jax.random.key(0), x)
  for inputs in (x, x[0, 0]):  # two batch axes; none
    y = jax.jit(ConvTranspose(**fields).apply)(params, inputs)
    y_ref = nn.ConvTranspose(**fields).apply(params, inputs)
    assert y.dtype == y_ref.dtype == jnp.bfloat16
    chex.assert_trees_all_close(y.astype(jnp.float32), y_ref.astype(jnp.float32), atol=0.05)


def test_kernel_gradient_has_no_dilated_convolution():
  """nn.ConvTranspose's kernel gradient convolves the stride-dilated inputs, which XLA:CPU
  turns into a dilated, reversed window that only its slow loop emitter runs."""
  x = jnp.zeros((2, 7, 7, 8))
  kernel = jnp.zeros((4, 4, 8, 16))

  def dilations(fn):
    jaxpr = jax.make_jaxpr(jax.grad(lambda k: fn(x, k).sum()))(kernel)
    return {
      (eqn.params["lhs_dilation"], eqn.params["rhs_dilation"])
      for eqn in jaxpr.jaxpr.eqns
      if eqn.primitive.name == "conv_general_dilated"
    }

  def flax_way(x, k):
    return jax.lax.conv_transpose(x, k, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

  assert ((2, 2), (1, 1)) in dilations(flax_way)
  assert dilations(lambda x, k: conv_transpose(x, k, (2, 2), "SAME")) == {((1, 1), (1, 1))}


@pytest.mark.parametrize(
  ("kernels", "layer"), [("xla_cpu", ConvTranspose), ("flax", nn.ConvTranspose)]
)
def test_decoders_use_it_with_the_xla_cpu_kernels_only(kernels, layer):
  """ConvDecoder (and so the conv AE, conv VAE and DCGAN generator) builds genlab's layer
  with `kernels='xla_cpu'`, flax's otherwise."""
  decoder = ConvDecoder(output_shape=(8, 8, 1), features=(4, 8), kernels=kernels)
  z = jnp.zeros((1, 4))
  called = []

  def record(next_fun, args, kwargs, context):
    called.append((context.module.name, type(context.module)))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    decoder.init(jax.random.key(0), z)
  deconvs = {name: cls for name, cls in called if name and name.startswith("deconv_")}
  assert deconvs == {"deconv_0": layer, "deconv_1": layer}


def test_circular_padding_is_refused():
  with pytest.raises(ValueError, match="CIRCULAR"):
    ConvTranspose(4, (3, 3), padding="CIRCULAR").init(jax.random.key(0), jnp.zeros((1, 4, 4, 2)))
