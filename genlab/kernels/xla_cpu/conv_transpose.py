"""A transposed convolution equal to `nn.ConvTranspose`, with gradients that are fast on XLA:CPU.

`nn.ConvTranspose` is `lax.conv_transpose`: a convolution over the input dilated by the
stride. Autodiff turns its kernel gradient into a convolution with a dilated, reversed
window that XLA:CPU runs through its generic loop emitter instead of a library kernel:
on the DCGAN generator's 7×7×128 → 14×14×64 layer (batch 128, 2 cores) that took ~1.3 s,
against ~20 ms for the forward pass (`scripts/profile_conv_transpose.py` measures it).

`conv_transpose` computes the same function by output phases (the sub-pixel view): the
outputs o = s·m + r of one phase r read the input at m + offset_r + u through the taps
t = t0_r + s·u only. So

- kernel gradient: per phase, an ordinary convolution of the inputs with the phase's
  output gradient as the kernel and the batch as the contracted axis (the form of an
  ordinary convolution's kernel gradient); for layers with at most
  `_TAPS_MAX_FEATURES` output features (the decoders' last), one matrix product of the
  inputs with a strided slice of the output gradient per tap (`_kernel_grad_by_taps`);
- forward: one ordinary stride-1 convolution per phase (s_h·s_w of them, each with its
  own slice of the kernel), interleaved into the output, with no multiplications by the
  dilation's zeros; for layers with few output features `lax.conv_transpose`'s dilated
  convolution is faster and is used instead (`_PHASE_FORWARD_MIN_FEATURES`);
- input gradient: the stride-s convolution autodiff derives from `lax.conv_transpose`,
  which XLA:CPU already runs fast.

Only 2-D inputs (NHWC) take this path; other ranks use `lax.conv_transpose` as is.
Forward-mode autodiff (`jax.jvp`) is not defined for the 2-D path (it is a `custom_vjp`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype
from flax.linen.linear import canonicalize_padding
from flax.typing import Dtype, Initializer, PaddingLike, PrecisionLike
from jax import lax

_NHWC = ("NHWC", "HWIO", "NHWC")


def transpose_padding(
  kernel_size: int, stride: int, padding: str | tuple[int, int]
) -> tuple[int, int]:
  """The padding `lax.conv_transpose` applies to the stride-dilated input of one spatial axis.

  'SAME' and 'VALID' name the padding of the forward convolution this one transposes
  (the same rule as `lax.conv_transpose`); an explicit (low, high) pair is used as is
  (`nn.ConvTranspose` passes explicit padding through unchanged).
  """
  if padding == "SAME":
    pad_len = kernel_size + stride - 2
    low = kernel_size - 1 if stride > kernel_size - 1 else math.ceil(pad_len / 2)
    return low, pad_len - low
  if padding == "VALID":
    pad_len = kernel_size + stride - 2 + max(kernel_size - stride, 0)
    return kernel_size - 1, pad_len - (kernel_size - 1)
  if isinstance(padding, str):
    raise ValueError(f"unsupported padding {padding!r}; use 'SAME', 'VALID' or (low, high) pairs")
  low, high = padding
  return int(low), int(high)


class _Phase(NamedTuple):
  """The outputs o = s·m + r of one phase r along one axis."""

  first_tap: int  # t0: the phase uses taps t0, t0 + s, t0 + 2s, ...
  num_taps: int
  offset: int  # output row m's first tap reads input row m + offset


class _AxisPlan(NamedTuple):
  size: int  # input length
  out_size: int  # output length
  rows: int  # rows per phase, ceil(out_size / stride); rows past out_size are cropped
  phases: tuple[_Phase, ...]

  def phase_padding(self, phase: _Phase) -> tuple[int, int]:
    """Padding (negative: cropping) of the input that gives the phase's `rows` windows."""
    return -phase.offset, self.rows - 1 + phase.offset + phase.num_taps - 1 - (self.size - 1)


def _axis_plan(size: int, kernel_size: int, stride: int, pads: tuple[int, int]) -> _AxisPlan:
  low, high = pads
  out_size = (size - 1) * stride + 1 + low + high - kernel_size + 1
  if out_size <= 0:
    raise ValueError(
      f"transposed convolution of length {size} with kernel {kernel_size}, stride {stride} "
      f"and padding {pads} has no output"
    )
  phases = []
  for r in range(stride):
    first = (low - r) % stride
    phases.append(
      _Phase(first, len(range(first, kernel_size, stride)), (r + first - low) // stride)
    )
  return _AxisPlan(size, out_size, -(-out_size // stride), tuple(phases))


def _plans(x_shape, kernel_shape, strides, pads) -> tuple[_AxisPlan, _AxisPlan]:
  _, h, w, _ = x_shape
  kh, kw, _, _ = kernel_shape
  return (
    _axis_plan(h, kh, strides[0], pads[0]),
    _axis_plan(w, kw, strides[1], pads[1]),
  )


# Measured on XLA:CPU (2 cores, batch 128; scripts/profile_conv_transpose.py): the phase
# forward pass wins from about 16 output features on, while for fewer the dilated
# convolution of `lax.conv_transpose` is up to 3x faster (the phases' convolutions are then
# too thin for YNNPACK); with a single output feature even its autodiff kernel gradient is
# faster than the phases'. Both hold only while XLA keeps the dilated convolution as it is:
# when the kernel is larger than the input (as in 2x2 -> 4x4 layers) XLA swaps the two
# operands into a reversed window that only its slow loop emitter runs (28 ms vs 1.2 ms).
_PHASE_FORWARD_MIN_FEATURES = 16


def _dilated_conv_is_fast(x_shape, kernel_shape) -> bool:
  return all(k <= n for k, n in zip(kernel_shape[:-2], x_shape[1:-1], strict=True))


def _forward(x, kernel, strides, pads, precision):
  if kernel.shape[-1] < _PHASE_FORWARD_MIN_FEATURES and _dilated_conv_is_fast(
    x.shape, kernel.shape
  ):
    return _reference(x, kernel, strides, pads, precision)
  plan_h, plan_w = _plans(x.shape, kernel.shape, strides, pads)
  sh, sw = strides
  n, f = x.shape[0], kernel.shape[-1]
  dtype = jnp.result_type(x, kernel)
  rows = []
  for ph in plan_h.phases:
    cols = []
    for pw in plan_w.phases:
      if ph.num_taps == 0 or pw.num_taps == 0:  # kernel smaller than the stride
        cols.append(jnp.zeros((n, plan_h.rows, plan_w.rows, f), dtype))
        continue
      cols.append(
        lax.conv_general_dilated(
          x,
          kernel[ph.first_tap :: sh, pw.first_tap :: sw],
          (1, 1),
          (plan_h.phase_padding(ph), plan_w.phase_padding(pw)),
          dimension_numbers=_NHWC,
          precision=precision,
        )
      )
    rows.append(jnp.stack(cols, axis=3))  # (n, rows_h, rows_w, sw, f)
  y = jnp.stack(rows, axis=2).reshape(n, plan_h.rows * sh, plan_w.rows * sw, f)
  return y[:, : plan_h.out_size, : plan_w.out_size]


def _kernel_grad(x, g, kernel_shape, strides, pads, precision):
  plan_h, plan_w = _plans(x.shape, kernel_shape, strides, pads)
  sh, sw = strides
  n, f = x.shape[0], kernel_shape[-1]
  rh, rw = plan_h.rows, plan_w.rows
  # Whole phase rows (the cropped outputs get zero gradient), split by phase.
  g = jnp.pad(g, ((0, 0), (0, rh * sh - plan_h.out_size), (0, rw * sw - plan_w.out_size), (0, 0)))
  g = g.reshape(n, rh, sh, rw, sw, f)
  grad = jnp.zeros(kernel_shape, jnp.result_type(x, g))
  for i, ph in enumerate(plan_h.phases):
    for j, pw in enumerate(plan_w.phases):
      if ph.num_taps == 0 or pw.num_taps == 0:
        continue
      # The phase's taps as a convolution of the inputs with its output gradient as the
      # kernel: channels play the batch, the batch is contracted. XLA:CPU hands this form to
      # YNNPACK; building the windows for an explicit matrix product measured 3x slower.
      phase_grad = lax.conv_general_dilated(
        x,
        g[:, :, i, :, j, :],
        (1, 1),
        (plan_h.phase_padding(ph), plan_w.phase_padding(pw)),
        dimension_numbers=("CHWN", "IHWO", "HWNC"),
        precision=precision,
      )
      grad = grad.at[ph.first_tap :: sh, pw.first_tap :: sw].set(phase_grad.astype(grad.dtype))
  return grad


def _kernel_grad_by_taps(x, g, kernel_shape, strides, pads, precision):
  """The kernel gradient as one matrix product, for outputs with few features.

  With the kernel applied to the input dilated by s, tap (a, b) links input pixel (i, j)
  to output pixel (s·i + low − a, s·j + low − b). So dK[a, b] = Σ x[n, i, j, :]ᵀ g[n, s·i +
  low − a, s·j + low − b, :], and stacking one strided slice of g per tap gives
  dK = xᵀ [g_taps] over all input pixels, x left in place. The convolution forms need x
  transposed to channels-first, which XLA:CPU does slowly: on 128 maps of 14×14×32 (64)
  into 28×28×1, 1.5 (3.3) ms for the autodiff kernel gradient against 1.0 (1.7) ms here.
  The slices grow with the output features, so wider layers keep the phase convolutions.
  """
  n, h, w, ci = x.shape
  kh, kw, _, co = kernel_shape
  (sh, sw), ((lh, _), (lw, _)) = strides, pads
  out_h, out_w = g.shape[1:3]
  # Pad g so that every tap's slice stays inside it (zeros: outputs that do not exist).
  bh, bw = max(0, kh - 1 - lh), max(0, kw - 1 - lw)
  ah = max(0, sh * (h - 1) + lh - (out_h - 1))
  aw = max(0, sw * (w - 1) + lw - (out_w - 1))
  g = jnp.pad(g, ((0, 0), (bh, ah), (bw, aw), (0, 0)))
  taps = []
  for a in range(kh):
    for b in range(kw):
      top, left = lh - a + bh, lw - b + bw
      end = (n, top + sh * (h - 1) + 1, left + sw * (w - 1) + 1, co)
      taps.append(lax.slice(g, (0, top, left, 0), end, (1, sh, sw, 1)))
  taps = jnp.stack(taps, axis=3).reshape(n * h * w, kh * kw * co)
  dk = lax.dot_general(
    x.reshape(n * h * w, ci), taps, (((0,), (0,)), ((), ())), precision=precision
  )
  return dk.reshape(ci, kh, kw, co).transpose(1, 2, 0, 3)


# Output features up to which the kernel gradient goes by taps (above) rather than phases.
_TAPS_MAX_FEATURES = 4


def _reference(x, kernel, strides, pads, precision):
  return lax.conv_transpose(x, kernel, strides, pads, dimension_numbers=_NHWC, precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_transpose_2d(x, kernel, strides, pads, precision):
  return _forward(x, kernel, strides, pads, precision)


def _conv_transpose_2d_fwd(x, kernel, strides, pads, precision):
  return _forward(x, kernel, strides, pads, precision), (x, kernel)


def _conv_transpose_2d_bwd(strides, pads, precision, residuals, g):
  x, kernel = residuals
  # The transpose of the dilated convolution is a stride-s convolution, fast as it is.
  (dx,) = jax.linear_transpose(lambda x: _reference(x, kernel, strides, pads, precision), x)(g)
  if kernel.shape[-1] <= _TAPS_MAX_FEATURES:
    dkernel = _kernel_grad_by_taps(x, g, kernel.shape, strides, pads, precision)
  else:
    dkernel = _kernel_grad(x, g, kernel.shape, strides, pads, precision)
  return dx, dkernel.astype(kernel.dtype)


_conv_transpose_2d.defvjp(_conv_transpose_2d_fwd, _conv_transpose_2d_bwd)


def conv_transpose(
  x: jax.Array,
  kernel: jax.Array,
  strides: Sequence[int],
  padding: str | Sequence[tuple[int, int]],
  precision: PrecisionLike = None,
) -> jax.Array:
  """`lax.conv_transpose(x, kernel, strides, padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC'))`.

  Args:
    x: inputs (batch, *spatial, in_features).
    kernel: (*kernel_size, in_features, out_features), not transposed or flipped
      (`transpose_kernel=False`, as in `nn.ConvTranspose`).
    strides: one stride per spatial axis.
    padding: 'SAME', 'VALID' or one (low, high) pair per spatial axis, with the meaning
      `nn.ConvTranspose` gives them.
    precision: passed to the convolutions and matrix products.

  Returns:
    The transposed convolution (batch, *out_spatial, out_features). For 2-D inputs the
    forward pass and both gradients go through the phase decomposition (module docstring).
  """
  strides = tuple(int(s) for s in strides)
  kernel_size = kernel.shape[:-2]
  if isinstance(padding, str):
    pads = tuple(
      transpose_padding(k, s, padding) for k, s in zip(kernel_size, strides, strict=True)
    )
  else:
    pads = tuple(
      transpose_padding(k, s, tuple(p))
      for k, s, p in zip(kernel_size, strides, padding, strict=True)
    )
  if x.ndim != 4:
    return lax.conv_transpose(x, kernel, strides, pads, precision=precision)
  return _conv_transpose_2d(x, kernel, strides, pads, precision)


class ConvTranspose(nn.Module):
  """Drop-in for `nn.ConvTranspose` (same parameters 'kernel' (*kernel_size, in, out) and
  'bias', same outputs) whose gradients are fast on XLA:CPU; see the module docstring.

  Attributes:
    features: number of output channels.
    kernel_size: an int (every spatial axis) or one size per spatial axis.
    strides: an int, one stride per spatial axis, or None (1).
    padding: 'SAME', 'VALID', an int, or one int or (low, high) pair per spatial axis,
      as in `nn.ConvTranspose` ('CIRCULAR' is not supported).
    use_bias: whether to add a bias.
    dtype: computation dtype (default: inferred from the inputs and parameters).
    param_dtype: parameter dtype.
    precision: numerical precision of the convolutions.
    kernel_init, bias_init: initializers (`nn.ConvTranspose`'s defaults).
  """

  features: int
  kernel_size: int | Sequence[int]
  strides: int | Sequence[int] | None = None
  padding: PaddingLike = "SAME"
  use_bias: bool = True
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32
  precision: PrecisionLike = None
  kernel_init: Initializer = nn.initializers.lecun_normal()
  bias_init: Initializer = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, inputs: jax.Array) -> jax.Array:
    kernel_size = (
      (self.kernel_size,) if isinstance(self.kernel_size, int) else tuple(self.kernel_size)
    )
    rank = len(kernel_size)
    if self.strides is None or isinstance(self.strides, int):
      strides = (self.strides or 1,) * rank
    else:
      strides = tuple(self.strides)
    padding = canonicalize_padding(self.padding, rank)
    if padding == "CIRCULAR":
      raise ValueError("genlab's ConvTranspose does not support CIRCULAR padding")
    if not isinstance(padding, str):
      padding = tuple(tuple(p) for p in padding)

    # Like nn.ConvTranspose: all leading batch axes flattened into one (or one added).
    batch_shape = inputs.shape[: inputs.ndim - rank - 1]
    x = inputs.reshape((-1, *inputs.shape[len(batch_shape) :]))

    kernel = self.param(
      "kernel", self.kernel_init, (*kernel_size, x.shape[-1], self.features), self.param_dtype
    )
    bias = (
      self.param("bias", self.bias_init, (self.features,), self.param_dtype)
      if self.use_bias
      else None
    )
    x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = conv_transpose(x, kernel, strides, padding, precision=self.precision)
    if bias is not None:
      y += bias.reshape((1,) * (y.ndim - 1) + (-1,))
    return y.reshape((*batch_shape, *y.shape[1:]))
