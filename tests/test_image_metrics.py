"""Image-quality and saliency metrics against NumPy / SciPy / skimage references, under jax.jit."""

from __future__ import annotations

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage
import scipy.stats
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from genlab import image_metrics

IMAGE_SHAPES = [(3, 16, 16, 1), (2, 23, 31, 3), (2, 40, 17, 3)]
MAP_SHAPES = [(4, 8, 8, 1), (3, 13, 21, 1), (2, 32, 32, 1)]


def _noisy_pair(rng, shape, data_range=1.0, noise=0.1):
  """Targets uniform in [0, data_range] and predictions = targets + clipped gaussian noise."""
  targets = rng.uniform(0.0, data_range, size=shape)
  predictions = np.clip(targets + rng.normal(scale=noise * data_range, size=shape), 0, data_range)
  return predictions.astype(np.float32), targets.astype(np.float32)


def _saliency_pair(rng, shape):
  """Two non-negative, correlated, smooth-ish maps (a shared component plus independent parts)."""
  shared = rng.gamma(2.0, size=shape)
  return (
    (shared + rng.gamma(1.0, size=shape)).astype(np.float32),
    (shared + 0.5 * rng.gamma(1.0, size=shape)).astype(np.float32),
  )


def _fixations(rng, shape, rate=0.1):
  fixations = rng.uniform(size=shape) < rate
  fixations[:, 0, 0, 0] = True  # At least one fixation per example.
  return fixations.astype(np.float32)


# References, in float64, one example at a time.


def _np_psnr(predictions, targets, data_range):
  return np.array(
    [
      peak_signal_noise_ratio(t.astype(np.float64), p.astype(np.float64), data_range=data_range)
      for p, t in zip(predictions, targets, strict=True)
    ]
  )


def _np_ssim(predictions, targets, data_range, **kwargs):
  return np.array(
    [
      structural_similarity(
        p.astype(np.float64),
        t.astype(np.float64),
        data_range=data_range,
        gaussian_weights=True,
        use_sample_covariance=False,
        channel_axis=-1,
        **kwargs,
      )
      for p, t in zip(predictions, targets, strict=True)
    ]
  )


def _np_cc(predictions, targets):
  return np.array(
    [
      scipy.stats.pearsonr(p.ravel().astype(np.float64), t.ravel().astype(np.float64))[0]
      for p, t in zip(predictions, targets, strict=True)
    ]
  )


def _np_kld(predictions, targets, eps=2.2204e-16):
  values = []
  for p, t in zip(predictions, targets, strict=True):
    p = p.astype(np.float64) / p.sum()
    t = t.astype(np.float64) / t.sum()
    values.append(np.sum(t * np.log(eps + t / (p + eps))))
  return np.array(values)


def _np_nss(predictions, fixations):
  values = []
  for p, f in zip(predictions, fixations, strict=True):
    p = p.astype(np.float64)
    standardised = (p - p.mean()) / p.std()
    values.append(standardised[f.astype(bool)].mean())
  return np.array(values)


def _np_sim(predictions, targets):
  values = []
  for p, t in zip(predictions, targets, strict=True):
    p = p.astype(np.float64) / p.sum()
    t = t.astype(np.float64) / t.sum()
    values.append(np.minimum(p, t).sum())
  return np.array(values)


# PSNR.


@pytest.mark.parametrize("shape", IMAGE_SHAPES)
@pytest.mark.parametrize("data_range", [1.0, 255.0])
def test_psnr_matches_skimage(shape, data_range):
  predictions, targets = _noisy_pair(np.random.default_rng(0), shape, data_range)

  values = jax.jit(functools.partial(image_metrics.psnr, data_range=data_range))(
    predictions, targets
  )

  chex.assert_shape(values, (shape[0],))
  chex.assert_type(values, np.float32)
  np.testing.assert_allclose(values, _np_psnr(predictions, targets, data_range), rtol=1e-5)


def test_psnr_on_uint8_images_matches_skimage():
  rng = np.random.default_rng(1)
  targets = rng.integers(0, 256, size=(3, 16, 16, 3), dtype=np.uint8)
  predictions = np.clip(targets + rng.integers(-20, 21, size=targets.shape), 0, 255)
  predictions = predictions.astype(np.uint8)

  values = jax.jit(functools.partial(image_metrics.psnr, data_range=255))(predictions, targets)

  chex.assert_type(values, np.float32)
  np.testing.assert_allclose(values, _np_psnr(predictions, targets, 255), rtol=1e-5)


def test_psnr_hand_computed_and_identical_images():
  targets = np.zeros((2, 4, 4, 1), np.float32)
  predictions = targets.copy()
  predictions[0] = 0.1  # MSE 0.01 on [0, 1] data: 10 · log10(1 / 0.01) = 20 dB.

  values = jax.jit(functools.partial(image_metrics.psnr, data_range=1.0))(predictions, targets)

  np.testing.assert_allclose(values[0], 20.0, rtol=1e-5)
  # Documented choice: an exact reconstruction (MSE 0) scores +inf, not NaN nor a clipped value.
  assert values[1] == np.inf


# SSIM.


@pytest.mark.parametrize("shape", IMAGE_SHAPES)
@pytest.mark.parametrize("data_range", [1.0, 255.0])
def test_ssim_matches_skimage(shape, data_range):
  predictions, targets = _noisy_pair(np.random.default_rng(2), shape, data_range)

  values = jax.jit(functools.partial(image_metrics.ssim, data_range=data_range))(
    predictions, targets
  )

  chex.assert_shape(values, (shape[0],))
  chex.assert_type(values, np.float32)
  np.testing.assert_allclose(values, _np_ssim(predictions, targets, data_range), rtol=1e-4)


def test_ssim_of_unrelated_images_matches_skimage():
  # SSIM near 0, where only an absolute tolerance makes sense.
  rng = np.random.default_rng(3)
  predictions = rng.uniform(size=(3, 20, 20, 3)).astype(np.float32)
  targets = rng.uniform(size=(3, 20, 20, 3)).astype(np.float32)

  values = jax.jit(functools.partial(image_metrics.ssim, data_range=1.0))(predictions, targets)

  expected = _np_ssim(predictions, targets, 1.0)
  assert np.all(np.abs(expected) < 0.1)
  np.testing.assert_allclose(values, expected, rtol=1e-4, atol=1e-6)


def test_ssim_hyper_parameters_match_skimage():
  # σ = 1 gives a 9×9 window (radius int(3.5 + 0.5) = 4): a different crop as well as weights.
  predictions, targets = _noisy_pair(np.random.default_rng(4), (2, 16, 18, 3), noise=0.3)
  kwargs = dict(sigma=1.0, k1=0.05, k2=0.1)

  values = jax.jit(functools.partial(image_metrics.ssim, data_range=1.0, **kwargs))(
    predictions, targets
  )

  expected = _np_ssim(predictions, targets, 1.0, sigma=1.0, K1=0.05, K2=0.1)
  np.testing.assert_allclose(values, expected, rtol=1e-4)
  default = image_metrics.ssim(predictions, targets, data_range=1.0)
  assert np.all(np.abs(np.asarray(default) - expected) > 1e-3)  # The parameters are used.


def test_ssim_window_is_scipys_gaussian():
  taps = image_metrics.gaussian_window(1.5)
  impulse = np.zeros(21)
  impulse[10] = 1.0
  # gaussian_filter1d of an impulse returns its (symmetric) taps.
  expected = scipy.ndimage.gaussian_filter1d(impulse, 1.5, truncate=3.5)[5:16]
  assert taps.shape == (11,)
  np.testing.assert_allclose(taps, expected, rtol=1e-12)


def test_ssim_hand_computed_cases():
  ssim = jax.jit(functools.partial(image_metrics.ssim, data_range=1.0))
  rng = np.random.default_rng(5)
  images = rng.uniform(size=(2, 16, 16, 3)).astype(np.float32)
  np.testing.assert_allclose(ssim(images, images), 1.0, rtol=1e-6)

  # Constant images: zero variances, so SSIM = (2 μx μy + C1) / (μx² + μy² + C1) everywhere.
  x = np.full((1, 12, 12, 1), 0.25, np.float32)
  y = np.full((1, 12, 12, 1), 0.75, np.float32)
  c1 = (0.01 * 1.0) ** 2
  expected = (2 * 0.25 * 0.75 + c1) / (0.25**2 + 0.75**2 + c1)
  np.testing.assert_allclose(ssim(x, y), [expected], rtol=1e-5)


def test_ssim_is_accurate_in_float32_far_from_zero():
  # Pixel values around 1000 with small differences: E[x²] − E[x]² would cancel in float32.
  rng = np.random.default_rng(6)
  targets = 1000.0 + rng.uniform(size=(2, 16, 16, 1))
  predictions = targets + 0.1 * rng.normal(size=targets.shape)
  predictions, targets = predictions.astype(np.float32), targets.astype(np.float32)

  values = jax.jit(functools.partial(image_metrics.ssim, data_range=1.0))(predictions, targets)

  np.testing.assert_allclose(values, _np_ssim(predictions, targets, 1.0), rtol=1e-4)


def test_ssim_rejects_images_smaller_than_the_window():
  images = np.zeros((1, 10, 16, 1), np.float32)
  with pytest.raises(ValueError, match="smaller than the 11x11"):
    image_metrics.ssim(images, images, data_range=1.0)
  with pytest.raises(ValueError, match="shapes differ"):
    image_metrics.ssim(images, images[:, :, :8], data_range=1.0)


def test_ssim_compiles_once_per_shape():
  @jax.jit
  @chex.assert_max_traces(n=1)
  def ssim(predictions, targets):
    return image_metrics.ssim(predictions, targets, data_range=1.0)

  rng = np.random.default_rng(7)
  for _ in range(3):
    ssim(*_noisy_pair(rng, (2, 16, 16, 3)))


# Saliency metrics.


@pytest.mark.parametrize("shape", MAP_SHAPES)
def test_saliency_cc_matches_scipy(shape):
  predictions, targets = _saliency_pair(np.random.default_rng(10), shape)

  values = jax.jit(image_metrics.saliency_cc)(predictions, targets)

  chex.assert_shape(values, (shape[0],))
  chex.assert_type(values, np.float32)
  np.testing.assert_allclose(values, _np_cc(predictions, targets), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", MAP_SHAPES)
def test_saliency_kld_matches_numpy(shape):
  predictions, targets = _saliency_pair(np.random.default_rng(11), shape)

  values = jax.jit(image_metrics.saliency_kld)(predictions, targets)

  chex.assert_shape(values, (shape[0],))
  chex.assert_type(values, np.float32)
  expected = _np_kld(predictions, targets)
  np.testing.assert_allclose(values, expected, rtol=1e-4, atol=1e-6)
  # For positive maps the eps terms are negligible: it is KL(target ‖ prediction).
  kl = [
    scipy.stats.entropy(t.ravel(), p.ravel()) for p, t in zip(predictions, targets, strict=True)
  ]
  np.testing.assert_allclose(values, kl, rtol=1e-4)


@pytest.mark.parametrize("shape", MAP_SHAPES)
def test_saliency_nss_matches_numpy(shape):
  rng = np.random.default_rng(12)
  predictions, _ = _saliency_pair(rng, shape)
  fixations = _fixations(rng, shape)

  values = jax.jit(image_metrics.saliency_nss)(predictions, fixations)

  chex.assert_shape(values, (shape[0],))
  chex.assert_type(values, np.float32)
  np.testing.assert_allclose(values, _np_nss(predictions, fixations), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape", MAP_SHAPES)
def test_saliency_sim_matches_numpy(shape):
  predictions, targets = _saliency_pair(np.random.default_rng(13), shape)

  values = jax.jit(image_metrics.saliency_sim)(predictions, targets)

  chex.assert_shape(values, (shape[0],))
  chex.assert_type(values, np.float32)
  np.testing.assert_allclose(values, _np_sim(predictions, targets), rtol=1e-5)


def test_saliency_cc_hand_computed_cases():
  cc = jax.jit(image_metrics.saliency_cc)
  maps = np.random.default_rng(14).uniform(size=(3, 8, 8, 1)).astype(np.float32)
  np.testing.assert_allclose(cc(maps, maps), 1.0, rtol=1e-6)
  np.testing.assert_allclose(cc(maps, 2.0 - maps), -1.0, rtol=1e-6)
  np.testing.assert_allclose(cc(maps, 3.0 * maps + 5.0), 1.0, rtol=1e-6)
  # A constant map has no variance: CC is defined as 0, in either argument.
  constant = np.full_like(maps, 0.3)
  np.testing.assert_array_equal(cc(maps, constant), 0.0)
  np.testing.assert_array_equal(cc(constant, maps), 0.0)


def test_saliency_cc_is_scale_free_in_float32():
  # Tiny and huge values: squares would underflow / overflow float32 without rescaling.
  maps, targets = _saliency_pair(np.random.default_rng(15), (2, 16, 16, 1))
  expected = _np_cc(maps, targets)
  for scale in (1e-25, 1e25):
    values = jax.jit(image_metrics.saliency_cc)(maps * np.float32(scale), targets)
    np.testing.assert_allclose(values, expected, rtol=1e-5)


def test_saliency_kld_hand_computed_cases():
  kld = jax.jit(image_metrics.saliency_kld)
  maps = np.random.default_rng(16).uniform(size=(3, 8, 8, 1)).astype(np.float32)
  np.testing.assert_allclose(kld(maps, maps), 0.0, atol=1e-6)
  np.testing.assert_allclose(kld(7.0 * maps, maps), 0.0, atol=1e-6)  # Sum-normalised first.

  # t = (1/2, 1/2), p = (1/4, 3/4): KL = ½ log 2 + ½ log(2/3).
  p = np.array([[1.0, 3.0]], np.float32).reshape(1, 1, 2, 1)
  t = np.array([[1.0, 1.0]], np.float32).reshape(1, 1, 2, 1)
  np.testing.assert_allclose(kld(p, t), [0.5 * math.log(2) + 0.5 * math.log(2 / 3)], rtol=1e-5)

  # Mass where the prediction has none: large (log(1/eps) scale) but finite in float32.
  p = np.array([[1.0, 0.0]], np.float32).reshape(1, 1, 2, 1)
  value = kld(p, t)
  assert np.isfinite(value).all() and value[0] > 10.0


def test_saliency_nss_hand_computed_cases():
  nss = jax.jit(image_metrics.saliency_nss)
  # Map (0, 0, 0, 1): mean ¼, std √3/4; the fixation on the maximum scores (1 − ¼)/(√3/4) = √3.
  prediction = np.array([0.0, 0.0, 0.0, 1.0], np.float32).reshape(1, 2, 2, 1)
  on_maximum = np.array([0, 0, 0, 1], np.float32).reshape(1, 2, 2, 1)
  np.testing.assert_allclose(nss(prediction, on_maximum), [math.sqrt(3.0)], rtol=1e-6)
  # Off the maximum: (0 − ¼)/(√3/4) = −1/√3; fixation counts are collapsed to 0/1.
  off_maximum = np.array([0, 2, 0, 0], np.float32).reshape(1, 2, 2, 1)
  np.testing.assert_allclose(nss(prediction, off_maximum), [-1 / math.sqrt(3.0)], rtol=1e-6)

  rng = np.random.default_rng(17)
  maps = rng.uniform(size=(3, 8, 8, 1)).astype(np.float32)
  fixations = np.zeros_like(maps)
  for i, flat in enumerate(maps.reshape(3, -1).argmax(axis=1)):
    fixations[i].reshape(-1)[flat] = 1.0
  assert np.all(np.asarray(nss(maps, fixations)) > 0.0)
  # Every pixel fixated: the standardised map's mean, 0.
  np.testing.assert_allclose(nss(maps, np.ones_like(maps)), 0.0, atol=1e-6)
  # A constant prediction singles nothing out: 0 by definition (its std is 0).
  np.testing.assert_array_equal(nss(np.full_like(maps, 0.5), fixations), 0.0)
  # No fixation at all: the mean over an empty set is undefined, NaN by design.
  assert np.isnan(nss(maps, np.zeros_like(maps))).all()


def test_saliency_sim_hand_computed_cases():
  sim = jax.jit(image_metrics.saliency_sim)
  maps = np.random.default_rng(18).uniform(size=(3, 8, 8, 1)).astype(np.float32)
  np.testing.assert_allclose(sim(maps, maps), 1.0, rtol=1e-6)
  np.testing.assert_allclose(sim(4.0 * maps, maps), 1.0, rtol=1e-6)
  # Disjoint supports share no mass; (1, 1) vs (1, 3): min(½, ¼) + min(½, ¾) = ¾.
  a = np.array([1.0, 0.0, 1.0, 1.0], np.float32).reshape(1, 2, 2, 1)
  b = np.array([0.0, 1.0, 0.0, 0.0], np.float32).reshape(1, 2, 2, 1)
  np.testing.assert_array_equal(sim(a, b), [0.0])
  p = np.array([1.0, 1.0], np.float32).reshape(1, 1, 2, 1)
  t = np.array([1.0, 3.0], np.float32).reshape(1, 1, 2, 1)
  np.testing.assert_allclose(sim(p, t), [0.75], rtol=1e-6)


def test_saliency_metrics_reject_mismatched_shapes():
  maps = np.ones((2, 8, 8, 1), np.float32)
  for metric in (
    image_metrics.saliency_cc,
    image_metrics.saliency_kld,
    image_metrics.saliency_nss,
    image_metrics.saliency_sim,
  ):
    with pytest.raises(ValueError, match="shapes differ"):
      metric(maps, maps.reshape(2, 64))


# Per-example independence: example i's value depends on example i only.

METRICS = {
  "psnr": functools.partial(image_metrics.psnr, data_range=1.0),
  "ssim": functools.partial(image_metrics.ssim, data_range=1.0),
  "saliency_cc": image_metrics.saliency_cc,
  "saliency_kld": image_metrics.saliency_kld,
  "saliency_nss": image_metrics.saliency_nss,
  "saliency_sim": image_metrics.saliency_sim,
}


def _metric_inputs(name, rng, shape):
  if name in ("psnr", "ssim"):
    return _noisy_pair(rng, shape)
  predictions, targets = _saliency_pair(rng, shape)
  if name == "saliency_nss":
    return predictions, _fixations(rng, shape)
  return predictions, targets


@pytest.mark.parametrize("name", sorted(METRICS))
def test_metric_is_per_example(name):
  metric = jax.jit(METRICS[name])
  channels = 3 if name in ("psnr", "ssim") else 1
  shape = (4, 16, 16, channels)
  rng = np.random.default_rng(20)
  predictions, targets = _metric_inputs(name, rng, shape)

  values = metric(predictions, targets)
  chex.assert_shape(values, (4,))

  # One example at a time.
  singles = np.concatenate([metric(predictions[i : i + 1], targets[i : i + 1]) for i in range(4)])
  np.testing.assert_allclose(values, singles, rtol=1e-6)

  # The other examples replaced by fresh data, or rescaled and shifted: example 0 unchanged.
  other_predictions, other_targets = _metric_inputs(name, rng, shape)
  other_predictions[0], other_targets[0] = predictions[0], targets[0]
  np.testing.assert_allclose(metric(other_predictions, other_targets)[0], values[0], rtol=1e-6)
  scaled = predictions.copy()
  scaled[1:] = 100.0 * scaled[1:] + 7.0
  np.testing.assert_allclose(metric(scaled, targets)[0], values[0], rtol=1e-6)

  # vmapped over an outer axis, each inner batch of one gives the same values.
  vmapped = jax.jit(jax.vmap(METRICS[name]))(predictions[:, None], targets[:, None])
  chex.assert_shape(vmapped, (4, 1))
  np.testing.assert_allclose(vmapped[:, 0], values, rtol=1e-6)


def test_metrics_accept_jax_arrays_and_low_precision():
  predictions, targets = _noisy_pair(np.random.default_rng(21), (2, 16, 16, 3))
  reference = image_metrics.ssim(predictions, targets, data_range=1.0)
  low = image_metrics.ssim(
    jnp.asarray(predictions, jnp.bfloat16), jnp.asarray(targets, jnp.bfloat16), data_range=1.0
  )
  chex.assert_type(low, np.float32)  # Computed in float32, not bfloat16.
  np.testing.assert_allclose(low, reference, atol=0.05)
