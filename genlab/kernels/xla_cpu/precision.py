"""Matrix products for mixed precision: bfloat16 operands, float32 accumulation.

`nn.Dense(dtype=jnp.bfloat16)` asks XLA for a bf16 × bf16 → bf16 product. XLA:CPU has no
fast kernel for that form: it converts both operands to float32 and runs its float32
kernel, so the bf16 model is slower than the float32 one (mlp_vae 25k against 38k
examples/s on 2 cores). A bf16 × bf16 → float32 product goes to YNNPACK's bf16 kernel
instead (AMX on this CPU), about 3× its float32 one (a 128×784 by 784×500 product: 0.13 ms
against 0.42 ms). `matmul` asks for float32 results, in the forward pass and in both
gradients, through a `custom_vjp`: JAX's own transpose of a float32-result product
multiplies the float32 cotangent by a bf16 operand, i.e. in float32.

    precision.Dense(features, dtype=dtype)   # nn.Dense; bf16 products through `matmul`
    nn.Dense(features, dtype=dtype, dot_general=precision.dot_general_for(dtype))

`Dense` hands `matmul` its float32 kernel: the product rounds it to bf16 itself and gives
its gradient in float32, straight from the accumulator. (With the kernel cast first, as
flax does, the gradient is rounded to bf16 and converted back: less accurate, and slower.)
Accumulating in float32 is also what makes a bf16 product accurate: the result is the
float32 sum rounded once, not a sum of bf16 partial results. Likewise `add_bias` gives the
bias its gradient as a float32-accumulated product, where XLA:CPU ran the bf16 reduction
JAX derives as a slow reduce-window.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax


def is_bfloat16(dtype: Any) -> bool:
  return dtype is not None and jnp.dtype(dtype) == jnp.bfloat16


def to_bfloat16(x: jax.Array) -> jax.Array:
  """x rounded to bf16 (to nearest, ties to even), as `x.astype(bfloat16)`, by integer
  arithmetic: XLA:CPU's convert is scalar code (85 against 54 us for 784×500 float32).
  Differentiable as the convert it stands for, to any order."""
  if x.dtype != jnp.float32:
    return x.astype(jnp.bfloat16)
  return _bfloat16_by_integers(x)


@jax.custom_jvp
def _bfloat16_by_integers(x: jax.Array) -> jax.Array:
  bits = lax.bitcast_convert_type(x, jnp.uint32)
  rounded = (bits + jnp.uint32(0x7FFF) + ((bits >> 16) & 1)) >> 16
  rounded = jnp.where(jnp.isnan(x), (bits >> 16) | 0x40, rounded)
  return lax.bitcast_convert_type(rounded.astype(jnp.uint16), jnp.bfloat16)


@_bfloat16_by_integers.defjvp
def _bfloat16_by_integers_jvp(primals, tangents):
  # The bit arithmetic has no derivative (bitcasts pass none): the convert's, which is
  # linear and so transposes for reverse mode. A gradient penalty differentiates the
  # backward passes that use the rounded kernels (`matmul`, the LSTM layer) once more.
  (x,), (t,) = primals, tangents
  return _bfloat16_by_integers(x), t.astype(jnp.bfloat16)


def to_dtype(kernel: jax.Array, dtype: Any) -> jax.Array:
  """`kernel.astype(dtype)`, by `to_bfloat16` for bf16."""
  return to_bfloat16(kernel) if jnp.dtype(dtype) == jnp.bfloat16 else kernel.astype(dtype)


def product_f32(x: jax.Array, y: jax.Array) -> jax.Array:
  """x (..., k) · y (k, n) as one `dot_general` with a float32 result: the form YNNPACK's
  bf16 kernel takes for bf16 operands."""
  contract = (((x.ndim - 1,), (0,)), ((), ()))
  return lax.dot_general(x, y, contract, preferred_element_type=jnp.float32)


@jax.custom_vjp
def matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """x (..., k) @ kernel (k, n) in x's dtype (meant for bf16), accumulated in float32.

  `kernel` may be float32 (master weights): it is rounded to x's dtype for the product,
  and its gradient comes back in its own dtype, unrounded from the float32 accumulator.
  A `custom_vjp`: reverse-mode autodiff only (`jax.jvp` through it fails).
  """
  return product_f32(x, to_dtype(kernel, x.dtype)).astype(x.dtype)


def _matmul_fwd(x, kernel):
  low = to_dtype(kernel, x.dtype)
  return product_f32(x, low).astype(x.dtype), (x, low, kernel)


def _matmul_bwd(residuals, g):
  x, low, kernel = residuals
  # dx = g kernelᵀ: contracts both operands' last axes (YNNPACK's bf16 kernel takes it).
  dx = lax.dot_general(
    g, low, (((g.ndim - 1,), (1,)), ((), ())), preferred_element_type=jnp.float32
  )
  # dkernel = xᵀ g over every leading (batch, time) axis.
  x = x.reshape(-1, x.shape[-1])
  g = g.reshape(-1, g.shape[-1])
  dkernel = product_f32(transposed_copy(x), g)
  return dx.astype(x.dtype), dkernel.astype(kernel.dtype)


matmul.defvjp(_matmul_fwd, _matmul_bwd)


@jax.custom_vjp
def add_bias(y: jax.Array, bias: jax.Array) -> jax.Array:
  """y + bias (over y's last axis) in y's dtype; bias's gradient, the sum of the cotangent
  over every leading axis, is one product (ones · g) accumulated in float32.

  For a bf16 y, JAX's transpose of the broadcast is a bf16 reduction over the batch axis,
  which XLA:CPU runs as a float32 reduce-window (a tree of partial sums) at each layer,
  slowly: the MLP VAE's bf16 step went 2.78 → 2.36 ms on 2 cores without it. The product
  also gives the sum in float32, unrounded, when the bias is float32 (master weights). A
  `custom_vjp`: reverse-mode autodiff only.
  """
  return y + bias.astype(y.dtype)


def _add_bias_fwd(y, bias):
  return add_bias(y, bias), bias


def _add_bias_bwd(bias, g):
  rows = g.reshape(-1, g.shape[-1])
  ones = jnp.ones(rows.shape[:1], g.dtype)
  db = lax.dot_general(ones, rows, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)
  return g, db.astype(bias.dtype)


add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)


def transposed_copy(x: jax.Array) -> jax.Array:
  """xᵀ written out row-major, so that xᵀ g is a product YNNPACK's bf16 kernel takes.

  YNNPACK needs the left operand's contracted axis to be its minor one. XLA folds a plain
  transpose (or a copy of one) into the product's dimension numbers, and then runs the
  product in float32: 0.48 ms instead of 0.19 ms for 784×128 by 128×500. So the bits move
  as integers, which XLA neither folds into the product nor round-trips through float32 as
  it does bf16 data movement: rows 2i and 2i + 1 side by side as one uint32 per column, and
  the transpose of those words (47 against 69 µs for a gather of xᵀ's rows as uint16, the
  way an odd number of rows still goes; mlp_vae bf16 2.01 → 1.96 ms per step). Other dtypes
  and backends get `x.T`. Differentiable as the transpose, to any order.
  """
  if x.ndim != 2:
    raise ValueError(f"transposed_copy takes a matrix, got shape {x.shape}")
  if x.dtype != jnp.bfloat16:
    return x.T
  return _transpose_by_integers(x)


@jax.custom_jvp
def _transpose_by_integers(x: jax.Array) -> jax.Array:
  rows, cols = x.shape
  if rows % 2:
    bits = lax.bitcast_convert_type(x, jnp.uint16).T
    return lax.bitcast_convert_type(bits[jnp.arange(cols)], x.dtype)
  # (rows/2, cols) words; word [i, j] holds x[2i, j] in its low half, x[2i + 1, j] in its high.
  pairs = x.reshape(rows // 2, 2, cols).transpose(0, 2, 1)
  words = lax.bitcast_convert_type(pairs, jnp.uint32)
  return lax.bitcast_convert_type(words.T, x.dtype).reshape(cols, rows)


@_transpose_by_integers.defjvp
def _transpose_by_integers_jvp(primals, tangents):
  # The transpose's derivative, as for `_bfloat16_by_integers`.
  (x,), (t,) = primals, tangents
  return _transpose_by_integers(x), t.T


def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
  """`lax.dot_general`; a Dense layer's bf16 product (contract lhs's last axis with a
  matrix's first, no batch axes, default precision) is `matmul`."""
  (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
  dense = (
    lhs.dtype == jnp.bfloat16
    and rhs.dtype == jnp.bfloat16
    and rhs.ndim == 2
    and tuple(lhs_contract) == (lhs.ndim - 1,)
    and tuple(rhs_contract) == (0,)
    and not lhs_batch
    and not rhs_batch
    and precision is None
    and preferred_element_type is None
  )
  if dense:
    return matmul(lhs, rhs)
  return lax.dot_general(
    lhs, rhs, dimension_numbers, precision, preferred_element_type=preferred_element_type
  )


def dot_general_for(dtype: Any):
  """The `dot_general` for a Dense layer computing in `dtype`: genlab's for bfloat16,
  None (flax's default, `lax.dot_general`) otherwise."""
  return dot_general if is_bfloat16(dtype) else None


class Dense(nn.Dense):
  """`nn.Dense` with the same parameters. In float32 it computes what `nn.Dense` does; with
  `dtype=bfloat16` its product is `matmul` on the float32 kernel (float32 accumulation,
  float32 kernel gradient) and its bias is added by `add_bias` (float32 bias gradient).
  genlab's models build their Dense layers with it."""

  dot_general: Any = dot_general

  @nn.compact
  def __call__(self, inputs: jax.Array) -> jax.Array:
    kernel = self.param(
      "kernel", self.kernel_init, (jnp.shape(inputs)[-1], self.features), self.param_dtype
    )
    bias = None
    if self.use_bias:
      bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
    ours = self.dot_general is dot_general and self.dot_general_cls is None
    if ours and is_bfloat16(self.dtype) and self.precision is None:
      # bf16: the float32 kernel into `matmul`, the float32 bias into `add_bias`.
      (inputs,) = self.promote_dtype(inputs, dtype=self.dtype)
      y = matmul(inputs, kernel)
      return y if bias is None else add_bias(y, bias)
    inputs, kernel, bias = self.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
    contract = (((inputs.ndim - 1,), (0,)), ((), ()))
    product = self.dot_general_cls() if self.dot_general_cls is not None else self.dot_general
    y = (product or lax.dot_general)(inputs, kernel, contract, precision=self.precision)
    if bias is not None:
      y += jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))
    return y


__all__ = [
  "Dense",
  "add_bias",
  "dot_general",
  "dot_general_for",
  "is_bfloat16",
  "matmul",
  "product_f32",
  "to_bfloat16",
  "to_dtype",
  "transposed_copy",
]
