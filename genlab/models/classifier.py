"""An image classifier: the feature network of GAN metrics.

Conv stack (the core's `ConvEncoder`) → Dense(`feature_dim`) → ReLU = the
features → Dense(num_classes) = the logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax

from genlab.models.conv_ae import ConvEncoder


class ImageClassifier(nn.Module):
  """Images → (logits, features)."""

  num_classes: int
  features: Sequence[int] = (32, 64)
  feature_dim: int = 128
  kernels: str = "flax"

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    encoder = ConvEncoder(
      features=tuple(self.features),
      kernel_size=3,
      strides=2,
      latent_dim=None,
      kernels=self.kernels,
    )
    h = encoder(x)
    h = nn.relu(nn.Dense(self.feature_dim, name="features")(h.reshape(h.shape[0], -1)))
    return nn.Dense(self.num_classes, name="logits")(h), h
