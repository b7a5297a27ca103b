"""`config.dtype='bfloat16'`: bf16 computation, float32 params, optimizer state and losses."""

from __future__ import annotations

import json

import chex
import jax
import numpy as np
import pytest

from conftest import make_test_config, primitive_eqns
from genlab.data import eval_batches
from genlab.errors import ConfigError


def _dot_dtypes(family, state, batch) -> set[str]:
  """The operand dtypes of every matrix product / convolution in one train step."""
  eqns = primitive_eqns(
    lambda s, b: family.train_step(s, b, jax.random.key(0)),
    state,
    batch,
    names=("dot_general", "conv_general_dilated"),
  )
  return {str(v.aval.dtype) for eqn in eqns for v in eqn.invars}


@pytest.mark.slow
@pytest.mark.parametrize("family", ["autoencoder", "vae", "sparse_autoencoder"])
def test_bf16_computes_in_bf16_keeps_fp32_state_and_trains_like_fp32(family, tmp_path):
  from genlab.families.sparse_ae import options as sparsity_options
  from genlab.families.vae import options as vae_options
  from genlab.run import setup, train_and_evaluate

  runs = {}
  for dtype in ("float32", "bfloat16"):
    config = make_test_config(str(tmp_path / "tfds"), family=family, dtype=dtype)
    if family == "vae":
      config.model = config.model.__class__(
        {"name": "vae", "architecture": "mlp", "hidden": (32,), "latent_dim": 4}
      )
      config.vae = vae_options()
    if family == "sparse_autoencoder":
      config.model = config.model.__class__({"name": "sparse_ae", "code_dim": 16})
      config.sparsity = sparsity_options(kind="kl", rho=0.1)
    config.update(num_steps=60, log_every=20, eval_every=60, image_every=60, checkpoint_every=60)
    result = train_and_evaluate(config, tmp_path / dtype)
    lines = [json.loads(x) for x in (tmp_path / dtype / "metrics.jsonl").open()]
    runs[dtype] = [m["train/loss"] for m in lines if "train/loss" in m], result
  losses, result = runs["bfloat16"]
  assert losses[-1] < losses[0]
  np.testing.assert_allclose(losses[-1], runs["float32"][0][-1], rtol=0.1)
  leaves = jax.tree.leaves((result.state.params, result.state.opt_state))
  assert {np.asarray(x).dtype for x in leaves if np.asarray(x).dtype.kind == "f"} == {
    np.dtype("float32")
  }
  s = setup(config)
  example = next(eval_batches(s.dataset.train, global_batch_size=4, value_range=(0.0, 1.0)))
  example.pop("mask")
  assert _dot_dtypes(s.family, s.initial_state, example) == {"bfloat16"}


def test_an_unknown_dtype_is_refused(test_config):
  from genlab.run import setup

  config = test_config(dtype="float16")
  with pytest.raises(ConfigError, match="choose float32 or bfloat16"):
    setup(config)


def _dots(fn, *args) -> list[tuple[tuple[str, ...], str]]:
  """(operand dtypes, result dtype) of every dot_general in `fn`'s jaxpr, nested ones too."""
  return [
    (tuple(str(v.aval.dtype) for v in eqn.invars), str(eqn.outvars[0].aval.dtype))
    for eqn in primitive_eqns(fn, *args)
  ]


def test_bf16_dense_products_accumulate_in_fp32_forward_and_in_both_gradients():
  import jax.numpy as jnp

  from genlab.kernels.xla_cpu import precision

  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(4, 6, 40)), jnp.bfloat16)  # (batch, time, features)
  w = jnp.asarray(rng.normal(size=(40, 24)) / 6, jnp.bfloat16)
  contract = (((2,), (0,)), ((), ()))

  def loss(x, w):
    y = precision.dot_general(x, w, contract)
    return jnp.sum(jnp.sin(y.astype(jnp.float32)))

  # Every product, the forward one and both gradients', is bf16 x bf16 -> float32: the
  # form XLA:CPU runs on its bf16 kernel (bf16 -> bf16 is converted to float32 first).
  dots = _dots(jax.grad(loss, argnums=(0, 1)), x, w)
  assert dots == [(("bfloat16", "bfloat16"), "float32")] * 3, dots
  # Values: the float32 products rounded once to bf16.
  x32, w32 = x.astype(jnp.float32), w.astype(jnp.float32)
  y = jax.jit(lambda x, w: precision.dot_general(x, w, contract))(x, w)
  assert y.dtype == jnp.bfloat16
  np.testing.assert_allclose(y.astype(np.float32), x32 @ w32, rtol=2**-8, atol=1e-6)
  dx, dw = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, w)
  rx, rw = jax.grad(lambda x, w: jnp.sum(jnp.sin(x @ w)), argnums=(0, 1))(x32, w32)
  assert dx.dtype == dw.dtype == jnp.bfloat16
  scale = float(jnp.max(jnp.abs(rw)))
  np.testing.assert_allclose(dx.astype(np.float32), rx, atol=0.02 * float(jnp.max(jnp.abs(rx))))
  np.testing.assert_allclose(dw.astype(np.float32), rw, atol=0.02 * scale)


def test_other_products_pass_through_to_lax_dot_general():
  import jax.numpy as jnp
  from jax import lax

  from genlab.kernels.xla_cpu import precision

  rng = np.random.default_rng(1)
  a = jnp.asarray(rng.normal(size=(3, 5)), jnp.float32)
  b = jnp.asarray(rng.normal(size=(5, 2)), jnp.float32)
  contract = (((1,), (0,)), ((), ()))
  np.testing.assert_array_equal(
    precision.dot_general(a, b, contract), lax.dot_general(a, b, contract)
  )
  assert precision.dot_general_for(jnp.float32) is None
  assert precision.dot_general_for("bfloat16") is precision.dot_general
  # A batched bf16 product keeps lax's own form (bf16 result).
  ab, bb = a[None].astype(jnp.bfloat16), b[None].astype(jnp.bfloat16)
  batched = (((2,), (1,)), ((0,), (0,)))
  assert precision.dot_general(ab, bb, batched).dtype == jnp.bfloat16
  assert _dots(lambda a, b: precision.dot_general(a, b, batched), ab, bb) == [
    (("bfloat16", "bfloat16"), "bfloat16")
  ]


def test_bf16_matmul_on_an_fp32_kernel_returns_its_gradient_unrounded_in_fp32():
  import jax.numpy as jnp

  from genlab.kernels.xla_cpu import precision

  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(3, 5, 24)), jnp.bfloat16)  # (batch, time, features)
  w = jnp.asarray(rng.normal(size=(24, 16)) / 5, jnp.float32)

  def loss(x, w):
    return jnp.sum(jnp.sin(precision.matmul(x, w).astype(jnp.float32)))

  assert _dots(jax.grad(loss, argnums=(0, 1)), x, w) == [(("bfloat16", "bfloat16"), "float32")] * 3
  x32, w16 = x.astype(jnp.float32), w.astype(jnp.bfloat16).astype(jnp.float32)
  y = jax.jit(precision.matmul)(x, w)
  assert y.dtype == jnp.bfloat16
  # The kernel is rounded to bf16 for the product; the sum is float32's, rounded once.
  np.testing.assert_array_equal(y, (x32 @ w16).astype(jnp.bfloat16))
  dx, dw = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, w)
  assert dx.dtype == jnp.bfloat16 and dw.dtype == jnp.float32
  # dkernel = Σ over batch and time of xᵀ g, g being the bf16 cotangent of y: every product
  # is exact in float32, so only the summation order may differ from NumPy's.
  g = (jnp.cos(y.astype(jnp.float32)).astype(jnp.bfloat16)).astype(jnp.float32)
  expected = np.einsum("btk,btn->kn", np.asarray(x32), np.asarray(g))
  np.testing.assert_allclose(dw, expected, rtol=1e-5, atol=1e-5)
  # ...and it was not rounded to bf16 on the way (as a cast kernel's gradient would be).
  assert np.any(np.asarray(dw) != np.asarray(dw.astype(jnp.bfloat16).astype(jnp.float32)))
  np.testing.assert_allclose(
    dx.astype(np.float32), np.asarray(g) @ np.asarray(w16).T, rtol=2**-7, atol=1e-2
  )


@pytest.mark.parametrize("use_bias", [True, False])
def test_dense_is_nn_dense_in_fp32_and_gives_fp32_gradients_in_bf16(use_bias):
  import flax.linen as nn
  import jax.numpy as jnp

  from genlab.kernels.xla_cpu import precision

  x = jnp.asarray(np.random.default_rng(3).normal(size=(4, 7, 12)), jnp.float32)
  ours, flax = precision.Dense(5, use_bias=use_bias), nn.Dense(5, use_bias=use_bias)
  low = precision.Dense(5, use_bias=use_bias, dtype=jnp.bfloat16)
  params = flax.init(jax.random.key(0), x)
  shapes = jax.tree.map(np.shape, ours.init(jax.random.key(0), x))
  assert shapes == jax.tree.map(np.shape, params)

  def grads(module):
    loss = lambda p: jnp.sum(jnp.sin(module.apply(p, x).astype(jnp.float32)))  # noqa: E731
    return jax.tree.leaves(jax.grad(loss)(params))

  # float32: the same computation, bit for bit, values and gradients.
  np.testing.assert_array_equal(ours.apply(params, x), flax.apply(params, x))
  for a, b in zip(grads(ours), grads(flax), strict=True):
    np.testing.assert_array_equal(a, b)
  # bfloat16: float32 parameter gradients, close to float32's.
  y = low.apply(params, x)
  assert y.dtype == jnp.bfloat16
  np.testing.assert_allclose(y.astype(np.float32), flax.apply(params, x), atol=0.05)
  for a, b in zip(grads(low), grads(flax), strict=True):
    assert a.dtype == jnp.float32
    np.testing.assert_allclose(a, b, atol=0.05 * float(np.max(np.abs(b))))


def test_kernel_rounding_to_bf16_matches_xla_convert_on_every_kind_of_float32():
  import jax.numpy as jnp
  from jax import lax

  from genlab.kernels.xla_cpu.precision import to_bfloat16

  bits = np.random.default_rng(4).integers(0, 2**32, size=200_000, dtype=np.uint64)
  special = np.array(
    [0.0, -0.0, np.inf, -np.inf, 1e-45, -1e-40, 3.4e38, 1.0 + 2**-8, 1 + 3 * 2**-8]
  )
  x = np.concatenate([bits.astype(np.uint32).view(np.float32), special.astype(np.float32)])
  ours = jax.jit(to_bfloat16)(jnp.asarray(x))
  xla = jnp.asarray(x).astype(jnp.bfloat16)
  nan = np.isnan(x)
  as_bits = lambda a: np.asarray(lax.bitcast_convert_type(a, jnp.uint16))  # noqa: E731
  np.testing.assert_array_equal(as_bits(ours)[~nan], as_bits(xla)[~nan])  # ties to even too
  assert np.isnan(np.asarray(ours[nan], np.float32)).all() and nan.sum() > 100


def test_matmul_on_float32_inputs_is_the_float32_product_and_dense_keeps_a_given_dot_general():
  import flax.linen as nn
  import jax.numpy as jnp
  from jax import lax

  from genlab.kernels.xla_cpu import precision

  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.normal(size=(4, 8)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(8, 5)), jnp.float32)
  loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w)))  # noqa: E731
  np.testing.assert_allclose(precision.matmul(x, w), x @ w, rtol=1e-6)
  chex.assert_trees_all_close(
    jax.grad(loss(precision.matmul), argnums=(0, 1))(x, w),
    jax.grad(loss(jnp.matmul), argnums=(0, 1))(x, w),
    rtol=1e-5,
    atol=1e-6,
  )
  calls = []

  def spy(lhs, rhs, dims, precision=None, preferred_element_type=None):
    calls.append((lhs.dtype, rhs.dtype))
    return lax.dot_general(lhs, rhs, dims, precision, preferred_element_type)

  layer = precision.Dense(3, dtype=jnp.bfloat16, dot_general=spy)
  params = nn.Dense(3).init(jax.random.key(0), x)
  layer.apply(params, x)
  assert calls == [(jnp.bfloat16, jnp.bfloat16)]  # The caller's product, not matmul.


def test_add_bias_sums_the_bf16_cotangent_over_leading_axes_in_fp32():
  import jax.numpy as jnp

  from genlab.kernels.xla_cpu import precision

  rng = np.random.default_rng(6)
  y = jnp.asarray(rng.normal(size=(6, 50, 9)), jnp.bfloat16)  # (batch, time, features)
  bias = jnp.asarray(rng.normal(size=(9,)), jnp.float32)
  weights = jnp.asarray(rng.normal(size=y.shape), jnp.bfloat16)
  loss = lambda y, b: jnp.sum((precision.add_bias(y, b) * weights).astype(jnp.float32))  # noqa: E731

  out = jax.jit(precision.add_bias)(y, bias)
  assert out.dtype == jnp.bfloat16
  np.testing.assert_array_equal(out, y + bias.astype(jnp.bfloat16))
  dy, db = jax.jit(jax.grad(loss, argnums=(0, 1)))(y, bias)
  np.testing.assert_array_equal(dy, weights)
  assert db.dtype == jnp.float32
  # The cotangent is `weights` (bf16 values, exact in float32): their sum over 300 rows.
  expected = np.asarray(weights, np.float64).reshape(-1, 9).sum(axis=0)
  np.testing.assert_allclose(db, expected, rtol=1e-6)
  assert np.any(np.asarray(db) != np.asarray(db.astype(jnp.bfloat16).astype(jnp.float32)))


@pytest.mark.parametrize("shape", [(128, 784), (6, 5), (7, 3), (1, 4)])
def test_transposed_copy_is_the_transpose_bit_for_bit(shape):
  import jax.numpy as jnp
  from jax import lax

  from genlab.kernels.xla_cpu.precision import transposed_copy

  bits = np.random.default_rng(7).integers(0, 2**16, size=shape, dtype=np.uint16)
  x = lax.bitcast_convert_type(jnp.asarray(bits), jnp.bfloat16)  # NaNs and infs included

  out = jax.jit(transposed_copy)(x)

  assert out.dtype == jnp.bfloat16 and out.shape == shape[::-1]
  np.testing.assert_array_equal(np.asarray(lax.bitcast_convert_type(out, jnp.uint16)), bits.T)


def test_bf16_layers_give_second_order_gradients_close_to_fp32():
  # A gradient penalty (WGAN-GP, R1) differentiates the input gradient with respect to the
  # parameters, i.e. through the bf16 layers' own backward passes. Their bf16 rounding and
  # transposed copies are bit arithmetic, which passes no derivative unless told to: the
  # kernels' terms came out zero.
  import flax.linen as nn
  import jax.numpy as jnp

  from genlab.kernels.xla_cpu import precision
  from genlab.kernels.xla_cpu.lstm import LSTM, LSTMCell

  rng = np.random.default_rng(4)
  x2 = jnp.asarray(rng.normal(size=(6, 12)), jnp.float32)  # Even rows: the word transpose.
  x3 = jnp.asarray(rng.normal(size=(3, 5, 4)), jnp.float32)  # 15 rows: the odd-row one.
  same = lambda params: params  # noqa: E731
  cell = lambda params: {"params": params["params"]["cell"]}  # noqa: E731 (LSTM holds it)
  cases = [
    (precision.Dense(5, dtype=jnp.bfloat16), nn.Dense(5), x2, same),
    (precision.Dense(5, dtype=jnp.bfloat16), nn.Dense(5), x3, same),
    (LSTM(6, dtype=jnp.bfloat16), nn.RNN(LSTMCell(6, name="cell")), x3, cell),
  ]

  def penalty_grad(module, params, x):
    def energy(params, x):
      return jnp.sum(jnp.tanh(module.apply(params, x).astype(jnp.float32)))

    def penalty(params):
      return jnp.sum(jax.grad(energy, argnums=1)(params, x) ** 2)

    return jax.jit(jax.grad(penalty))(params)

  for low, reference, x, view in cases:
    params = reference.init(jax.random.key(0), x)
    got = penalty_grad(low, view(params), x)
    expected = view(penalty_grad(reference, params, x))
    chex.assert_trees_all_equal_structs(got, expected)
    for (path, a), b in zip(
      jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(expected), strict=True
    ):
      scale = float(np.max(np.abs(b)))
      assert a.dtype == jnp.float32 and scale > 0, path
      np.testing.assert_allclose(a, b, atol=0.05 * scale, err_msg=jax.tree_util.keystr(path))
