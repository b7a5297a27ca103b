"""Per-example image-quality (PSNR, SSIM) and saliency-map (CC, KLD, NSS, SIM) metrics.

Pure JAX functions on batches: each returns one value per example, shape `(batch,)`, and the
caller reduces (as in `genlab.losses`). Everything jits and vmaps; hyper-parameters are
keyword-only. Inputs of integer or low-precision float dtypes are computed in float32 (float64
stays float64), and every division is guarded so the float32 results stay finite where the metric
is defined.

Protocols, so that a reported number carries its definition:

- `psnr`: 10·log10(data_range² / MSE), MSE over all non-batch axes (all channels together).
- `ssim`: Wang et al. 2004 — 11×11 gaussian window (σ = 1.5, truncated at 3.5σ), population
  covariances, K1 = 0.01, K2 = 0.03, averaged over the window-valid region and over channels.
  Equals `skimage.metrics.structural_similarity(a, b, data_range=..., gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False, channel_axis=-1)` per image.
- Saliency metrics follow the MIT/Tuebingen saliency benchmark (Bylinskii et al. 2018, "What do
  different evaluation metrics tell us about saliency models?"), on maps of equal shape (no
  resizing here: resize the prediction to the target's shape first).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# MATLAB's `eps` (float64 machine epsilon), the benchmark's regulariser in KLD; representable
# (as a normal number) in float32.
MATLAB_EPS = 2.2204e-16

# SSIM's gaussian window is truncated at this many standard deviations, as in skimage: with the
# default σ = 1.5 this gives radius int(3.5 · 1.5 + 0.5) = 5, the 11-tap window of Wang et al.
SSIM_TRUNCATE = 3.5


def _as_float(x: jax.typing.ArrayLike) -> jax.Array:
  """At least float32: integers, bfloat16 and float16 become float32; float64 is kept."""
  x = jnp.asarray(x)
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _flatten(x: jax.Array) -> jax.Array:
  return x.reshape(x.shape[0], -1)


def _check_same_shape(name: str, a: jax.Array, b: jax.Array) -> None:
  if a.shape != b.shape:
    raise ValueError(f"{name}: shapes differ: {a.shape} vs {b.shape}")
  if a.ndim < 2:
    raise ValueError(f"{name}: expected a batch (batch, ...), got shape {a.shape}")


# Image quality.


def psnr(
  predictions: jax.typing.ArrayLike,
  targets: jax.typing.ArrayLike,
  *,
  data_range: float | jax.typing.ArrayLike,
) -> jax.Array:
  """Peak signal-to-noise ratio in dB, per example.

  10·log10(data_range² / MSE), the MSE taken over all non-batch axes. Computed as
  20·log10(data_range) − 10·log10(MSE), so no intermediate overflows in float32.

  Args:
    predictions: images (batch, ...), e.g. (N, H, W, C).
    targets: reference images, same shape.
    data_range: the span of possible pixel values (1.0 for images in [0, 1], 255 for uint8).

  Returns:
    (batch,) PSNR values. An example whose prediction equals its target exactly (MSE 0) gets
    +inf (the limit of the formula), not a clipped finite value: reduce with care (e.g. report
    the count of exact reconstructions separately, or average only finite values).
  """
  predictions, targets = _as_float(predictions), _as_float(targets)
  _check_same_shape("psnr", predictions, targets)
  mse = jnp.mean(_flatten(jnp.square(predictions - targets)), axis=1)
  data_range = jnp.asarray(data_range, mse.dtype)
  return 20.0 * jnp.log10(data_range) - 10.0 * jnp.log10(mse)


def gaussian_window(sigma: float, *, truncate: float = SSIM_TRUNCATE) -> np.ndarray:
  """The normalised 1-D gaussian taps of `scipy.ndimage.gaussian_filter1d` (float64).

  Radius int(truncate · sigma + 0.5), weights exp(−x² / 2σ²) divided by their sum.
  """
  radius = int(truncate * sigma + 0.5)
  x = np.arange(-radius, radius + 1, dtype=np.float64)
  taps = np.exp(-0.5 * np.square(x / sigma))
  return taps / taps.sum()


def _separable_valid_filter(images: jax.Array, taps: np.ndarray) -> jax.Array:
  """Filters each channel of (N, H, W, C) with taps ⊗ taps, keeping the 'VALID' region only."""
  channels = images.shape[-1]
  taps = jnp.asarray(taps, images.dtype)
  size = taps.shape[0]
  # Depthwise (one filter per channel) kernels in HWIO layout: a column pass, then a row pass.
  column = jnp.broadcast_to(taps.reshape(size, 1, 1, 1), (size, 1, 1, channels))
  row = jnp.broadcast_to(taps.reshape(1, size, 1, 1), (1, size, 1, channels))
  for kernel in (column, row):
    images = jax.lax.conv_general_dilated(
      images,
      kernel,
      window_strides=(1, 1),
      padding="VALID",
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=channels,
      # GPUs and TPUs would otherwise multiply in TF32 / bfloat16, far from skimage's figures.
      precision=jax.lax.Precision.HIGHEST,
    )
  return images


def ssim(
  predictions: jax.typing.ArrayLike,
  targets: jax.typing.ArrayLike,
  *,
  data_range: float | jax.typing.ArrayLike,
  sigma: float = 1.5,
  k1: float = 0.01,
  k2: float = 0.03,
) -> jax.Array:
  """Mean structural similarity (Wang et al. 2004), per example.

  Local means, variances and the covariance come from a gaussian window (σ = `sigma`, truncated
  at 3.5σ: 11×11 for σ = 1.5), with population (1/N) normalisation. The SSIM map is averaged
  over the positions where the window fits inside the image — skimage filters with
  mode='reflect' and then crops the window radius from each border, which leaves exactly the
  'VALID' convolution's region, where no padding is read — and then over channels. This equals
  `skimage.metrics.structural_similarity(a, b, data_range=data_range, gaussian_weights=True,
  sigma=sigma, K1=k1, K2=k2, use_sample_covariance=False, channel_axis=-1)` for each image.

  For float32 accuracy the moments are taken about a per-image, per-channel constant (the mean
  of both images), which leaves every variance and covariance unchanged mathematically but
  avoids the cancellation in E[x²] − E[x]² when pixel values are far from zero (e.g. [0, 255]).

  Args:
    predictions: images (N, H, W, C), H and W at least the window size (2·radius + 1).
    targets: reference images, same shape.
    data_range: the span of possible pixel values (1.0 for [0, 1], 255 for uint8); sets the
      stabilisers C1 = (k1 · data_range)², C2 = (k2 · data_range)².
    sigma: the gaussian window's standard deviation; a Python float (it fixes the window size,
      hence the program's shapes).
    k1: luminance stabiliser constant.
    k2: contrast-structure stabiliser constant.

  Returns:
    (N,) mean SSIM values, 1 for identical images.
  """
  predictions, targets = _as_float(predictions), _as_float(targets)
  _check_same_shape("ssim", predictions, targets)
  if predictions.ndim != 4:
    raise ValueError(f"ssim: expected images (N, H, W, C), got shape {predictions.shape}")
  taps = gaussian_window(float(sigma))
  height, width = predictions.shape[1:3]
  if min(height, width) < taps.shape[0]:
    raise ValueError(
      f"ssim: images {height}x{width} are smaller than the {taps.shape[0]}x{taps.shape[0]} "
      f"gaussian window (sigma={sigma})"
    )
  both_means = jnp.mean(predictions, axis=(1, 2), keepdims=True) + jnp.mean(
    targets, axis=(1, 2), keepdims=True
  )
  offset = jax.lax.stop_gradient(0.5 * both_means)
  x, y = predictions - offset, targets - offset
  # One depthwise filtering pass over all five moment images.
  moments = _separable_valid_filter(jnp.concatenate([x, y, x * x, y * y, x * y], axis=-1), taps)
  mx, my, mxx, myy, mxy = jnp.split(moments, 5, axis=-1)
  var_x = mxx - mx * mx
  var_y = myy - my * my
  cov_xy = mxy - mx * my
  mean_x = mx + offset
  mean_y = my + offset

  data_range = jnp.asarray(data_range, predictions.dtype)
  c1 = jnp.square(k1 * data_range)
  c2 = jnp.square(k2 * data_range)
  numerator = (2.0 * mean_x * mean_y + c1) * (2.0 * cov_xy + c2)
  denominator = (jnp.square(mean_x) + jnp.square(mean_y) + c1) * (var_x + var_y + c2)
  ssim_map = numerator / denominator
  return jnp.mean(_flatten(ssim_map), axis=1)


# Saliency maps: (batch, ...) non-negative maps, reduced over all non-batch axes.


def _normalise_to_sum_one(maps: jax.Array) -> jax.Array:
  """Each example divided by its sum; an all-zero map stays all zero (no 0/0)."""
  total = jnp.sum(maps, axis=1, keepdims=True)
  return maps / jnp.where(total > 0, total, 1.0)


def _standardise(maps: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(Zero-mean, unit population-std maps, per example; whether each example is constant).

  The centred maps are first divided by their largest magnitude (scale-free for the result) so
  that the sum of squares neither overflows nor underflows in float32. A constant map (max ==
  min, tested exactly rather than through a rounded std) gives all zeros.
  """
  constant = jnp.max(maps, axis=1) == jnp.min(maps, axis=1)
  centred = maps - jnp.mean(maps, axis=1, keepdims=True)
  scale = jnp.max(jnp.abs(centred), axis=1, keepdims=True)
  centred = centred / jnp.where(scale > 0, scale, 1.0)
  std = jnp.sqrt(jnp.mean(jnp.square(centred), axis=1, keepdims=True))
  safe_std = jnp.where(constant[:, None] | (std == 0), 1.0, std)
  standardised = jnp.where(constant[:, None], 0.0, centred / safe_std)
  return standardised, constant


def saliency_cc(predictions: jax.typing.ArrayLike, targets: jax.typing.ArrayLike) -> jax.Array:
  """Pearson's linear correlation coefficient between two maps, per example (benchmark CC).

  Args:
    predictions: predicted saliency maps (N, H, W, 1) (any (N, ...) shape).
    targets: ground-truth (fixation-density) maps, same shape.

  Returns:
    (N,) values in [−1, 1]. If either map is constant the correlation is undefined (zero
    variance); it is defined as 0 here, the score of an uninformative prediction.
  """
  predictions, targets = _as_float(predictions), _as_float(targets)
  _check_same_shape("saliency_cc", predictions, targets)
  predictions, targets = _flatten(predictions), _flatten(targets)
  p, p_constant = _standardise(predictions)
  t, t_constant = _standardise(targets)
  cc = jnp.mean(p * t, axis=1)
  return jnp.where(p_constant | t_constant, 0.0, jnp.clip(cc, -1.0, 1.0))


def saliency_kld(
  predictions: jax.typing.ArrayLike,
  targets: jax.typing.ArrayLike,
  *,
  eps: float = MATLAB_EPS,
) -> jax.Array:
  """KL(target ‖ prediction) between maps normalised to sum 1, per example (benchmark KLD).

  Σ t · log(eps + t / (p + eps)), the benchmark's regularised formula (KLdiv.m), with p and t
  the maps divided by their sums. Lower is better; 0 for identical maps.

  Args:
    predictions: predicted saliency maps (N, H, W, 1) (any (N, ...) shape), non-negative.
    targets: ground-truth (fixation-density) maps, same shape, non-negative.
    eps: regulariser; the default is MATLAB's `eps`, as in the benchmark.

  Returns:
    (N,) KL divergences in nats. An all-zero map is left all zero by the normalisation (an
    all-zero target gives 0).
  """
  predictions, targets = _as_float(predictions), _as_float(targets)
  _check_same_shape("saliency_kld", predictions, targets)
  predictions, targets = _flatten(predictions), _flatten(targets)
  p = _normalise_to_sum_one(predictions)
  t = _normalise_to_sum_one(targets)
  return jnp.sum(t * jnp.log(eps + t / (p + eps)), axis=1)


def saliency_nss(predictions: jax.typing.ArrayLike, fixations: jax.typing.ArrayLike) -> jax.Array:
  """Normalised scanpath saliency, per example (benchmark NSS).

  The prediction is standardised over the map (zero mean, unit population std, as pysaliency
  and the Tuebingen benchmark do; MATLAB's NSS.m uses the N−1 std, a factor √(N/(N−1)) away),
  and averaged at the fixated locations.

  Args:
    predictions: predicted saliency maps (N, H, W, 1) (any (N, ...) shape).
    fixations: binary fixation maps, same shape: every non-zero entry is one fixated location,
      counted once (MATLAB's `logical(fixationMap)`). With only a continuous fixation-density
      map, threshold it yourself (e.g. `density > threshold`) and state the threshold.

  Returns:
    (N,) NSS values (higher is better, 0 at chance). A constant prediction scores 0 (its std is
    0: no location is singled out); an example with no fixation at all gets NaN (the mean over
    an empty set: the metric is undefined, and NaN keeps that from passing silently).
  """
  predictions, fixations = _as_float(predictions), jnp.asarray(fixations)
  _check_same_shape("saliency_nss", predictions, fixations)
  predictions, fixations = _flatten(predictions), _flatten(fixations)
  standardised, _ = _standardise(predictions)
  mask = (fixations != 0).astype(standardised.dtype)
  count = jnp.sum(mask, axis=1)
  total = jnp.sum(standardised * mask, axis=1)
  return jnp.where(count > 0, total / jnp.where(count > 0, count, 1.0), jnp.nan)


def saliency_sim(predictions: jax.typing.ArrayLike, targets: jax.typing.ArrayLike) -> jax.Array:
  """Similarity (histogram intersection) of maps normalised to sum 1, per example (SIM).

  Σ min(p, t) with p and t the maps divided by their sums (the paper's definition). The
  benchmark's SIM.m additionally min–max rescales each map to [0, 1] first; that is not done
  here (it changes the score of maps whose minimum is not 0): rescale beforehand to match it.

  Args:
    predictions: predicted saliency maps (N, H, W, 1) (any (N, ...) shape), non-negative.
    targets: ground-truth (fixation-density) maps, same shape, non-negative.

  Returns:
    (N,) values in [0, 1], 1 for identical maps (up to a positive factor). An all-zero map is
    left all zero by the normalisation and scores 0.
  """
  predictions, targets = _as_float(predictions), _as_float(targets)
  _check_same_shape("saliency_sim", predictions, targets)
  predictions, targets = _flatten(predictions), _flatten(targets)
  p = _normalise_to_sum_one(predictions)
  t = _normalise_to_sum_one(targets)
  return jnp.sum(jnp.minimum(p, t), axis=1)
