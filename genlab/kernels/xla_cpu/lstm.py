"""A whole LSTM layer as one differentiable op, for mixed precision on XLA:CPU.

`nn.RNN(LSTMCell(...))` lets JAX differentiate the time loop: the backward loop computes
each step's kernel gradient (a small float32 product, since XLA:CPU will not run
xᵀ g in bf16) and JAX stacks the forward pass's bf16 intermediates with
dynamic-update-slices that XLA:CPU converts, whole buffer, to float32 and back at every
step. In bfloat16 that made the recurrent autoencoder slower than in float32.

`lstm_sequence` is the layer with its backward pass written out (a `custom_vjp`):

  forward loop, per step    gates = [h, x_t] · [W_h; W_i] + b   (one bf16 product)
  backward loop, per step   d[h, x_t] = dgates · [W_h; W_i]ᵀ     (one bf16 product)
  after the loop            d[W_h; W_i] = Σ_t [h, x_t]ᵀ dgates   (one product over all
                            steps and examples) and db = Σ_t dgates

with the state (c, h) and the gate activations computed in float32, the gates kept for
the backward pass and the gate gradients in bf16 (as in the `nn.RNN` path), and every bf16
intermediate stored as its uint16 bits, which XLA:CPU moves without converting. Being a
`custom_vjp`, it supports reverse-mode autodiff only (`jax.jvp` through it fails), to any
order: a second-order gradient (a gradient penalty) differentiates its two passes, which
take their derivatives from the same passes without the bits.

`LSTM` is a module with `nn.RNN`'s interface for it (batch-major (B, T, D) inputs only),
whose parameters are those of a default `LSTMCell` (the same names, shapes and initial
values), so checkpoints do not depend on which one ran.

On the reference lstm_ae (2 cores, bf16) one layer's forward and backward pass take
17 ms against 45 ms through `nn.RNN`. In float32 it is no faster than `nn.RNN`, whose
path genlab keeps there.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype
from flax.linen.recurrent import flip_sequences
from jax import lax

from genlab.kernels.xla_cpu.precision import (
  is_bfloat16,
  matmul,
  product_f32,
  to_dtype,
  transposed_copy,
)

Array = jax.Array


def _store(x: Array, bits: bool) -> Array:
  """A value for a loop's stacked output: bf16 as its uint16 bits (see the docstring)."""
  return lax.bitcast_convert_type(x, jnp.uint16) if bits and x.dtype == jnp.bfloat16 else x


def _load(x: Array, dtype) -> Array:
  return lax.bitcast_convert_type(x, dtype) if x.dtype == jnp.uint16 else x


def _differentiated_without_bits(fn):
  """`fn(static, *args, bits=True)`, differentiated as `fn(static, *args, bits=False)`.

  The two compute the same values; the first moves bf16 intermediates as uint16 bits,
  through which no derivative passes. A second-order gradient (a gradient penalty)
  differentiates `lstm_sequence`'s forward and backward passes themselves, so they take
  their derivatives from the version without bits. First-order gradients run the
  `custom_vjp` only, and so the bits.
  """

  @functools.cache
  def with_static(static):
    @jax.custom_jvp
    def run(*args):
      return fn(static, *args, bits=True)

    @run.defjvp
    def run_jvp(primals, tangents):  # The same values, so the plain pass gives both.
      return jax.jvp(functools.partial(fn, static, bits=False), primals, tangents)

    return run

  return lambda static, *args: with_static(static)(*args)


def _forward(xs, kernel, bias, c0, h0, unroll=1):
  return _forward_differentiable(unroll, xs, kernel, bias, c0, h0)


@_differentiated_without_bits
def _forward_differentiable(unroll, xs, kernel, bias, c0, h0, *, bits):
  dtype = xs.dtype
  weights = to_dtype(kernel, dtype)

  def step(carry, x_t):
    c, h = carry
    inputs = jnp.concatenate([h.astype(dtype), x_t], axis=-1)
    i, f, g, o = jnp.split(product_f32(inputs, weights) + bias, 4, axis=-1)
    i, f, g, o = jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g), jax.nn.sigmoid(o)
    new_c = f * c + i * g
    new_h = o * jnp.tanh(new_c)
    gates = jnp.concatenate([i, f, g, o], axis=-1).astype(dtype)
    return (new_c, new_h), (new_h, new_c, _store(inputs, bits), _store(gates, bits))

  _, (hs, cs, inputs, gates) = lax.scan(step, (c0, h0), xs, unroll=unroll)
  c_prev = jnp.concatenate([c0[None], cs[:-1]])
  residuals = (_load(inputs, dtype), _load(gates, dtype), c_prev, cs, weights, kernel, bias)
  return (hs, cs), residuals


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def lstm_sequence(
  xs: Array, kernel: Array, bias: Array, c0: Array, h0: Array, unroll: int = 1
) -> tuple[Array, Array]:
  """One LSTM layer over a time-major sequence.

  xs: (T, B, D) inputs in the compute dtype (bf16 or float32).
  kernel: (H + D, 4H) float32, the recurrent kernel stacked over the input kernel, gates
    in the order i, f, g, o (as `nn.OptimizedLSTMCell`'s); bias: (4H,) float32.
  c0, h0: (B, H) float32 initial state.
  unroll: time steps per iteration of both loops (`lax.scan`'s); static (under `jax.jit`,
    pass it as a static argument).
  Returns (hs, cs): every step's h and c, (T, B, H) float32.
  """
  return _forward(xs, kernel, bias, c0, h0, unroll)[0]


def _lstm_bwd(unroll, residuals, cotangents):
  return _backward_differentiable(unroll, residuals, cotangents)


@_differentiated_without_bits
def _backward_differentiable(unroll, residuals, cotangents, *, bits):
  inputs, gates, c_prev, cs, weights, kernel, bias = residuals
  dhs, dcs = cotangents
  hidden, dtype = c_prev.shape[-1], inputs.dtype
  weights_t = weights.T

  def step(carry, per_step):
    dh_next, dc_next = carry
    dh_t, dc_t, gates_t, c, cp = per_step
    i, f, g, o = jnp.split(gates_t.astype(jnp.float32), 4, axis=-1)
    dh = dh_t + dh_next
    tanh_c = jnp.tanh(c)
    dc = dc_t + dc_next + dh * o * (1 - tanh_c * tanh_c)
    dgates = jnp.concatenate(
      [
        dc * g * i * (1 - i),
        dc * cp * f * (1 - f),
        dc * i * (1 - g * g),
        dh * tanh_c * o * (1 - o),
      ],
      axis=-1,
    ).astype(dtype)
    d_inputs = product_f32(dgates, weights_t)
    return (d_inputs[:, :hidden], dc * f), (
      _store(dgates, bits),
      _store(d_inputs[:, hidden:].astype(dtype), bits),
    )

  zeros = jnp.zeros_like(c_prev[0])
  (dh0, dc0), (dgates, dxs) = lax.scan(
    step, (zeros, zeros), (dhs, dcs, gates, cs, c_prev), reverse=True, unroll=unroll
  )
  dgates, dxs = _load(dgates, dtype).reshape(-1, dgates.shape[-1]), _load(dxs, dtype)
  inputs = inputs.reshape(-1, inputs.shape[-1])
  dkernel = product_f32(transposed_copy(inputs), dgates).astype(kernel.dtype)
  dbias = jnp.sum(dgates.astype(jnp.float32), axis=0).astype(bias.dtype)
  return dxs, dkernel, dbias, dc0, dh0


lstm_sequence.defvjp(_forward, _lstm_bwd)


def gate_params(
  x: Array, features: int, prefix: str, use_bias: bool, kernel_init, bias_init, param_dtype
) -> tuple[Array, Array | None]:
  """The four gates' kernels (and biases) concatenated in the order i, f, g, o, made as
  `nn.OptimizedLSTMCell` makes them: `DenseParams` named {prefix}{i,f,g,o}, in the
  calling module's scope."""
  parts = [
    nn.recurrent.DenseParams(
      features=features,
      use_bias=use_bias,
      param_dtype=param_dtype,
      kernel_init=kernel_init,
      bias_init=bias_init,
      name=f"{prefix}{gate}",
    )(x)
    for gate in "ifgo"
  ]
  kernel = jnp.concatenate([k for k, _ in parts], axis=-1)
  bias = jnp.concatenate([b for _, b in parts], axis=-1) if use_bias else None
  return kernel, bias


class LSTM(nn.Module):
  """An LSTM layer over a whole sequence (`lstm_sequence`), with `nn.RNN`'s interface for
  batch-major inputs: `seq_lengths`, `initial_carry`, `return_carry`, `reverse` and
  `keep_order` mean what they mean there, so `nn.Bidirectional` takes it. Its parameters
  are those of `LSTMCell(features)` (name the module as that cell would be named)."""

  features: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  return_carry: bool = False
  reverse: bool = False
  keep_order: bool = False
  unroll: int = 1

  @nn.compact
  def __call__(
    self,
    inputs: Array,
    *,
    initial_carry: tuple[Array, Array] | None = None,
    init_key: jax.Array | None = None,
    seq_lengths: Array | None = None,
    return_carry: bool | None = None,
    time_major: bool = False,
    reverse: bool | None = None,
    keep_order: bool | None = None,
  ):
    del init_key  # The initial state is zeros, as `LSTMCell.initialize_carry` makes it.
    if time_major or inputs.ndim != 3:
      raise ValueError(
        f"genlab's LSTM takes batch-major inputs (batch, time, features), got shape "
        f"{inputs.shape}{' with time_major=True' if time_major else ''}"
      )
    return_carry = self.return_carry if return_carry is None else return_carry
    reverse = self.reverse if reverse is None else reverse
    keep_order = self.keep_order if keep_order is None else keep_order
    cell = nn.OptimizedLSTMCell(self.features, parent=None)  # Only for its initialisers.
    probe = jnp.zeros((1, inputs.shape[-1]), self.param_dtype)
    kernel_h, bias = gate_params(
      jnp.zeros((1, self.features), self.param_dtype),
      self.features,
      "h",
      True,
      cell.recurrent_kernel_init,
      cell.bias_init,
      self.param_dtype,
    )
    kernel_i, _ = gate_params(
      probe, self.features, "i", False, cell.kernel_init, cell.bias_init, self.param_dtype
    )
    if reverse:
      inputs = flip_sequences(inputs, seq_lengths, num_batch_dims=1, time_major=False)
    batch = inputs.shape[0]
    if initial_carry is None:
      zeros = jnp.zeros((batch, self.features), self.param_dtype)
      initial_carry = (zeros, zeros)
    c0, h0 = (jnp.asarray(v, jnp.float32) for v in initial_carry)
    xs = jnp.swapaxes(jnp.asarray(inputs, self.dtype), 0, 1)
    kernel = jnp.concatenate([kernel_h, kernel_i], axis=0).astype(jnp.float32)
    hs, cs = lstm_sequence(xs, kernel, bias.astype(jnp.float32), c0, h0, self.unroll)
    if seq_lengths is None:
      carry = (cs[-1], hs[-1])
    else:
      last, rows = seq_lengths - 1, jnp.arange(batch)
      carry = (cs[last, rows], hs[last, rows])
    outputs = jnp.swapaxes(hs, 0, 1)
    if reverse and keep_order:
      outputs = flip_sequences(outputs, seq_lengths, num_batch_dims=1, time_major=False)
    return (carry, outputs) if return_carry else outputs


class LSTMCell(nn.OptimizedLSTMCell):
  """`nn.OptimizedLSTMCell` (the same parameters, initialisers and float32 values) whose
  two products per step are `precision.matmul` in bfloat16: they accumulate in float32 on
  XLA:CPU's bf16 kernel, where flax's `jnp.dot` gave a bf16 product that XLA ran in
  float32 after converting both operands, and the kernels' gradients stay float32."""

  @nn.compact
  def __call__(self, carry, inputs):
    c, h = carry
    features = h.shape[-1]

    def gates(x, prefix: str, use_bias: bool, kernel_init) -> jax.Array:
      # One product for the four gates; parameters named as flax's: {i,h}{i,f,g,o}.
      kernel, bias = gate_params(
        x, features, prefix, use_bias, kernel_init, self.bias_init, self.param_dtype
      )
      if is_bfloat16(self.dtype):
        # The float32 kernel goes in whole: see `precision.matmul`.
        x, bias = promote_dtype(x, bias, dtype=self.dtype)
        y = matmul(x, kernel)
      else:
        x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
        y = lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))
      return y + bias if use_bias else y

    pre = gates(h, "h", True, self.recurrent_kernel_init) + gates(
      inputs, "i", False, self.kernel_init
    )
    i, f, g, o = jnp.split(pre, 4, axis=-1)
    i, f, g, o = self.gate_fn(i), self.gate_fn(f), self.activation_fn(g), self.gate_fn(o)
    new_c = f * c + i * g
    new_h = o * self.activation_fn(new_c)
    return (new_c, new_h), new_h


__all__ = ["LSTM", "LSTMCell", "gate_params", "lstm_sequence"]
