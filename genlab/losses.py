"""Per-example losses: unreduced over the batch, reduced over everything else.

Each function returns one value per example (shape `(batch,)`); the step
decides how to reduce (mean over the batch, masked sums in eval). The
elementwise parts come from optax.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def _mean_per_example(values: jax.Array) -> jax.Array:
  return jnp.mean(values.reshape(values.shape[0], -1).astype(jnp.float32), axis=1)


def mean_squared_error(predictions: jax.Array, targets: jax.Array) -> jax.Array:
  """Mean over all non-batch axes of (predictions − targets)², per example."""
  return _mean_per_example(optax.losses.squared_error(predictions, targets))


def sigmoid_binary_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Mean over all non-batch axes of the Bernoulli cross-entropy of `logits`
  against targets in [0, 1], per example (numerically stable, from logits)."""
  return _mean_per_example(optax.losses.sigmoid_binary_cross_entropy(logits, targets))


RECONSTRUCTION_LOSSES = ("mse", "bce")
