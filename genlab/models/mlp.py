"""A multilayer perceptron: the dense stack of the MLP VAE, GAN and others."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from genlab import kernels as kernels_lib
from genlab.models.conv_ae import activation_fn, spectrally_normalized


class MLP(nn.Module):
  """Dense layers with an activation between them (none after the last).

  Attributes:
    features: the width of each layer.
    activation: name of a `flax.linen` activation.
    dtype: computation dtype (bfloat16: mixed precision; params stay float32).
    kernels: `flax` or `xla_cpu` (see `genlab.kernels`).
    spectral_norm: every layer's kernel divided by its largest singular value, estimated
      by power iteration (`nn.SpectralNorm`; its vectors in the `batch_stats` collection,
      updated when called with `update_stats=True`).
  """

  features: Sequence[int]
  activation: str = "relu"
  dtype: Any = jnp.float32
  kernels: str = "flax"
  spectral_norm: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, update_stats: bool = False) -> jax.Array:
    act = activation_fn(self.activation)
    for i, f in enumerate(self.features):
      layer = kernels_lib.dense(f, kernels=self.kernels, dtype=self.dtype, name=f"dense_{i}")
      x = spectrally_normalized(layer, self.spectral_norm, f"spectral_norm_{i}", x, update_stats)
      if i < len(self.features) - 1:
        x = act(x)
    return x
