"""Per-example losses against NumPy references, under jax.jit."""

from __future__ import annotations

import chex
import jax
import numpy as np
import pytest

from genlab import losses

SHAPES = [(4,), (3, 5), (2, 8, 8, 1), (5, 4, 4, 3)]


def _np_mse(predictions: np.ndarray, targets: np.ndarray) -> np.ndarray:
  diff = (predictions.astype(np.float64) - targets.astype(np.float64)) ** 2
  return diff.reshape(len(diff), -1).mean(axis=1)


def _np_sigmoid_bce(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
  x = logits.astype(np.float64)
  t = targets.astype(np.float64)
  # -[t log σ(x) + (1 - t) log(1 - σ(x))] = max(x, 0) - x t + log(1 + exp(-|x|)).
  values = np.maximum(x, 0.0) - x * t + np.log1p(np.exp(-np.abs(x)))
  return values.reshape(len(values), -1).mean(axis=1)


@pytest.mark.parametrize("shape", SHAPES)
def test_mean_squared_error_matches_numpy(shape):
  rng = np.random.default_rng(0)
  predictions = rng.normal(size=shape).astype(np.float32)
  targets = rng.uniform(size=shape).astype(np.float32)

  values = jax.jit(losses.mean_squared_error)(predictions, targets)

  chex.assert_shape(values, (shape[0],))
  chex.assert_type(values, np.float32)
  np.testing.assert_allclose(values, _np_mse(predictions, targets), rtol=1e-5, atol=1e-6)


def test_mean_squared_error_is_per_example_not_batch_mean():
  predictions = np.zeros((3, 2, 2, 1), np.float32)
  targets = np.stack([np.full((2, 2, 1), v, np.float32) for v in (0.0, 1.0, 2.0)])

  values = jax.jit(losses.mean_squared_error)(predictions, targets)

  chex.assert_trees_all_close(values, np.array([0.0, 1.0, 4.0], np.float32))


@pytest.mark.parametrize("shape", SHAPES)
def test_sigmoid_binary_cross_entropy_matches_numpy(shape):
  rng = np.random.default_rng(1)
  logits = (3.0 * rng.normal(size=shape)).astype(np.float32)
  targets = rng.uniform(size=shape).astype(np.float32)

  values = jax.jit(losses.sigmoid_binary_cross_entropy)(logits, targets)

  chex.assert_shape(values, (shape[0],))
  chex.assert_type(values, np.float32)
  np.testing.assert_allclose(values, _np_sigmoid_bce(logits, targets), rtol=1e-5, atol=1e-6)


def test_sigmoid_binary_cross_entropy_extreme_logits_stay_finite():
  # Saturated logits: a naive log(sigmoid(x)) gives log(0) = -inf for the wrong side.
  logits = np.array([[50.0, -50.0], [50.0, -50.0], [-50.0, 50.0]], np.float32)
  targets = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]], np.float32)

  values = jax.jit(losses.sigmoid_binary_cross_entropy)(logits, targets)
  grads = jax.jit(jax.grad(lambda x: losses.sigmoid_binary_cross_entropy(x, targets).sum()))(logits)

  chex.assert_tree_all_finite((values, grads))
  # Right side: ~exp(-50) ≈ 0; wrong side: ~50 per element; half targets: 25 per element.
  np.testing.assert_allclose(values, [0.0, 50.0, 25.0], atol=1e-5)
  np.testing.assert_allclose(values, _np_sigmoid_bce(logits, targets), rtol=1e-6, atol=1e-6)


def test_bernoulli_log_likelihood_is_minus_the_summed_cross_entropy():
  rng = np.random.default_rng(2)
  logits = (4.0 * rng.normal(size=(5, 6, 6, 1))).astype(np.float32)
  logits[0, 0, 0, 0], logits[1, 0, 0, 0] = 60.0, -60.0  # Saturated, either side.
  x = (rng.uniform(size=logits.shape) > 0.5).astype(np.float32)

  values = jax.jit(losses.bernoulli_log_likelihood)(logits, x)

  expected = -(_np_sigmoid_bce(logits, x) * 36).astype(np.float64)
  np.testing.assert_allclose(values, expected, rtol=1e-5)


def test_sigmoid_binary_cross_entropy_minimum_at_target_probability():
  # For a soft target t, the loss as a function of the logit is smallest at logit(t).
  targets = np.full((1, 1), 0.8, np.float32)
  candidates = np.linspace(-4.0, 4.0, 801, dtype=np.float32)
  values = jax.jit(
    jax.vmap(lambda x: losses.sigmoid_binary_cross_entropy(x.reshape(1, 1), targets))
  )(candidates)
  best = candidates[int(np.argmin(np.asarray(values)))]
  np.testing.assert_allclose(best, np.log(0.8 / 0.2), atol=1e-2)


def test_softplus_and_its_derivative_match_numpy_in_both_autodiff_modes():
  import jax.numpy as jnp

  x = np.concatenate([np.linspace(-100, 100, 2001), [-1e30, 1e30, -np.inf, np.inf, 0.0]])
  x = x.astype(np.float32)
  x64 = x.astype(np.float64)
  with np.errstate(over="ignore"):
    expected = np.logaddexp(0.0, x64)
    sigmoid = 1.0 / (1.0 + np.exp(-x64))

  values = jax.jit(losses.softplus)(x)
  grads = jax.jit(jax.vmap(jax.grad(losses.softplus)))(x)
  _, tangents = jax.jit(lambda x: jax.jvp(losses.softplus, (x,), (jnp.ones_like(x),)))(x)

  np.testing.assert_allclose(values, expected, rtol=1e-6, atol=1e-30)
  np.testing.assert_allclose(grads, sigmoid, rtol=1e-6, atol=1e-30)
  np.testing.assert_array_equal(tangents, grads)
  # NaN in, NaN out (value and derivative); as jax.nn.softplus.
  nan = jnp.float32(np.nan)
  assert np.isnan(losses.softplus(nan)) and np.isnan(jax.grad(losses.softplus)(nan))
