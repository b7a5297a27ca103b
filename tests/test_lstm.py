"""The fused LSTM layer (`genlab.models.lstm`) against `nn.RNN` over the cell it replaces."""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import FLOAT32_U, assert_close_normwise, primitive_eqns
from genlab.kernels.xla_cpu.lstm import LSTM, LSTMCell
from genlab.models.recurrent_ae import RecurrentAutoencoder

LENGTHS = jnp.array([7, 3, 1, 5])


def _pair(**kwargs):
  """(genlab's fused layer, nn.RNN over LSTMCell) with the same options."""
  return LSTM(6, **kwargs), nn.RNN(LSTMCell(6, name="cell"), **kwargs)


def _apply(rnn, params, x, carry, call):
  """`rnn` on nn.RNN's parameters: the fused layer holds its cell's directly."""
  if isinstance(rnn, LSTM):
    params = {"params": params["params"]["cell"]}
  out = rnn.apply(params, x, initial_carry=carry, **call)
  return out if isinstance(out, tuple) else (None, out)


@pytest.mark.slow
@pytest.mark.parametrize(
  "options, call",
  [
    ({}, {}),
    ({"return_carry": True}, {"seq_lengths": LENGTHS}),
    ({"return_carry": True, "reverse": True, "keep_order": True}, {"seq_lengths": LENGTHS}),
    ({"reverse": True}, {"seq_lengths": LENGTHS}),
    ({"reverse": True, "return_carry": True}, {}),
    ({"reverse": True, "keep_order": True}, {}),
  ],
)
def test_fused_lstm_equals_nn_rnn_in_values_and_every_gradient(options, call):
  x = jax.random.normal(jax.random.key(0), (4, 7, 3))
  carry = tuple(jax.random.normal(k, (4, 6)) for k in jax.random.split(jax.random.key(2), 2))
  fused, reference = _pair(**options)
  params = reference.init(jax.random.key(1), x, initial_carry=carry, **call)
  # The same parameter names and shapes (inside a model, the same initial values too: see
  # the last test), so checkpoints carry over.
  mine = fused.init(jax.random.key(1), x, initial_carry=carry, **call)["params"]
  chex.assert_trees_all_equal_shapes({"params": {"cell": mine}}, params)

  def loss(rnn):
    def f(p, x, carry):
      final, out = _apply(rnn, p, x, carry, call)
      extra = 0.0 if final is None else jnp.sum(jnp.cos(final[0])) + jnp.sum(final[1] ** 2)
      return jnp.sum(jnp.sin(out)) + extra

    return f

  # Float32 in another order (fused gate products, the reverse pass written out): 7 steps
  # of 4·6 gates summing 3 + 6 products each, and their gradients summed back over the 7
  # steps and 4 examples, stay within a few hundred roundings, ≈ 200·2^-24 of the scale.
  assert_close_normwise(
    _apply(fused, params, x, carry, call),
    _apply(reference, params, x, carry, call),
    rel=200 * FLOAT32_U,
  )
  grads = jax.grad(loss(fused), argnums=(0, 1, 2))(params, x, carry)
  expected = jax.grad(loss(reference), argnums=(0, 1, 2))(params, x, carry)
  assert_close_normwise(grads, expected, rel=200 * FLOAT32_U)


def test_fused_lstm_in_bf16_runs_bf16_products_and_stays_close_to_fp32():
  x = jax.random.normal(jax.random.key(0), (4, 7, 3))
  fused = LSTM(6, dtype=jnp.bfloat16, return_carry=True)
  reference = nn.RNN(LSTMCell(6, name="cell"), return_carry=True)
  params = reference.init(jax.random.key(1), x, seq_lengths=LENGTHS)

  def loss(rnn, p):
    (c, h), out = _apply(rnn, p, x, None, {"seq_lengths": LENGTHS})
    return jnp.sum(jnp.sin(out.astype(jnp.float32))) + jnp.sum(h**2)

  dots = primitive_eqns(jax.grad(lambda p: loss(fused, p)), params)
  operand_dtypes = {str(v.aval.dtype) for eqn in dots for v in eqn.invars}
  assert len(dots) >= 3 and operand_dtypes == {"bfloat16"}, operand_dtypes
  assert {str(eqn.outvars[0].aval.dtype) for eqn in dots} == {"float32"}
  np.testing.assert_allclose(loss(fused, params), loss(reference, params), rtol=0.02)
  grads = jax.grad(lambda p: loss(fused, p))(params)
  expected = jax.grad(lambda p: loss(reference, p))(params)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(expected), strict=True):
    assert a.dtype == jnp.float32
    np.testing.assert_allclose(a, b, atol=0.05 * float(np.max(np.abs(b))) + 1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("bidirectional", [False, True])
def test_the_bf16_recurrent_autoencoder_uses_it_with_the_fp32_models_parameters(bidirectional):
  x = jax.random.normal(jax.random.key(0), (4, 7, 3))
  fields = dict(output_dim=3, output_length=5, hidden_dim=8, latent_dim=4, num_layers=2)
  fields.update(bidirectional=bidirectional, kernels="xla_cpu")
  fp32 = RecurrentAutoencoder(**fields)
  bf16 = RecurrentAutoencoder(dtype=jnp.bfloat16, **fields)
  params = fp32.init(jax.random.key(1), x, LENGTHS)
  chex.assert_trees_all_equal(bf16.init(jax.random.key(1), x, LENGTHS), params)
  # Every LSTM layer (2 in the encoder, in each direction, and 2 in the decoder) is the
  # fused op, and no nn.RNN loop is left.
  calls = primitive_eqns(lambda p: bf16.apply(p, x, LENGTHS), params, names=("custom_vjp_call",))
  layers = [e for e in calls if "_lstm_bwd" in str(e.params["bwd"])]
  assert len(layers) == 2 * (2 if bidirectional else 1) + 2, len(layers)
  scans = primitive_eqns(lambda p: bf16.apply(p, x, LENGTHS), params, names=("scan",))
  assert len(scans) == len(layers)  # The fused ops' own forward loops only.
  out32, aux32 = fp32.apply(params, x, LENGTHS)
  out16, aux16 = bf16.apply(params, x, LENGTHS)
  np.testing.assert_allclose(aux16["z"], aux32["z"], atol=0.05)
  np.testing.assert_allclose(out16, out32, atol=0.05)


def test_fused_lstm_refuses_inputs_that_are_not_batch_major_sequences():
  for shape, call in [((7, 3), {}), ((2, 4, 7, 3), {}), ((4, 7, 3), {"time_major": True})]:
    with pytest.raises(ValueError, match="batch-major inputs"):
      LSTM(6).init(jax.random.key(0), jnp.zeros(shape), **call)
