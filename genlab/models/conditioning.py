"""Class conditioning shared by the conditional models (the conditional VAE and GAN)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def one_hot_labels(labels: jax.Array | None, num_classes: int, batch: int) -> jax.Array:
  """One-hot float32 rows of integer `labels` (batch,), refused in one line if absent or
  misshapen."""
  if labels is None or tuple(jnp.shape(labels)) != (batch,):
    got = None if labels is None else tuple(jnp.shape(labels))
    raise ValueError(
      f"a class-conditional model (num_classes={num_classes}) needs one integer label per "
      f"example: shape ({batch},), got {got}"
    )
  return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)


__all__ = ["one_hot_labels"]
