"""Matrix products for mixed precision: bfloat16 operands, float32 accumulation.

`nn.Dense(dtype=jnp.bfloat16)` asks XLA for a bf16 × bf16 → bf16 product. XLA:CPU has no
fast kernel for that form: it converts both operands to float32 and runs its float32
kernel, so the bf16 model is slower than the float32 one (mlp_vae 25k against 38k
examples/s on 2 cores). A bf16 × bf16 → float32 product goes to YNNPACK's bf16 kernel
instead, about 3× its float32 one on this CPU (a 128×784 by 784×500 product: 0.16 ms against
0.45 ms). `dot_general` asks for float32 results and rounds them to bf16, in the forward
pass and in both gradients. The gradients need a `custom_vjp`: JAX's own transpose of a
float32-result product multiplies the float32 cotangent by a bf16 operand, i.e. in float32.

    precision.Dense(features, dtype=dtype)   # nn.Dense with dot_general below
    nn.Dense(features, dtype=dtype, dot_general=precision.dot_general_for(dtype))

Accumulating in float32 is also what makes a bf16 product accurate: the result is the
float32 sum rounded once, not a sum of bf16 partial results.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax


@jax.custom_vjp
def _matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """x (..., k) @ kernel (k, n), accumulated in float32, in x's dtype."""
  contract = (((x.ndim - 1,), (0,)), ((), ()))
  return lax.dot_general(x, kernel, contract, preferred_element_type=jnp.float32).astype(x.dtype)


def _matmul_fwd(x, kernel):
  return _matmul(x, kernel), (x, kernel)


def _matmul_bwd(residuals, g):
  x, kernel = residuals
  # dx = g kernelᵀ: contracts both operands' last axes (YNNPACK's bf16 kernel takes it).
  dx = lax.dot_general(
    g, kernel, (((g.ndim - 1,), (1,)), ((), ())), preferred_element_type=jnp.float32
  )
  # dkernel = xᵀ g over every leading (batch, time) axis; float32 until the final rounding.
  lead = tuple(range(x.ndim - 1))
  dkernel = lax.dot_general(x, g, ((lead, lead), ((), ())), preferred_element_type=jnp.float32)
  return dx.astype(x.dtype), dkernel.astype(kernel.dtype)


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
  """`lax.dot_general`; a Dense layer's bf16 product (contract lhs's last axis with a
  matrix's first, no batch axes, default precision) accumulates in float32 (above)."""
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
    return _matmul(lhs, rhs)
  return lax.dot_general(
    lhs, rhs, dimension_numbers, precision, preferred_element_type=preferred_element_type
  )


def dot_general_for(dtype: Any):
  """The `dot_general` for a Dense layer computing in `dtype`: genlab's for bfloat16,
  None (flax's default, `lax.dot_general`) otherwise."""
  return dot_general if jnp.dtype(dtype) == jnp.bfloat16 else None


class Dense(nn.Dense):
  """`nn.Dense` (same parameters and float32 values) whose product is `dot_general`: in
  bfloat16 it accumulates in float32. genlab's models build their Dense layers with it."""

  dot_general: Any = dot_general


__all__ = ["Dense", "dot_general", "dot_general_for"]
