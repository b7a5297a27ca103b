"""Sparse autoencoder: x → code (sigmoid, ReLU or TopK) → linear decoder → x̂.

One hidden code layer of `code_dim` units between Dense maps, as in Ng's
sparse-autoencoder notes (sigmoid units with a KL-ρ penalty) and in the TopK
autoencoders of Gao et al. 2024 (ReLU of the k largest pre-activations, the
others set to 0). The decoder's weight rows are the learned dictionary
("filters").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from genlab import kernels as kernels_lib
from genlab.errors import ConfigError
from genlab.models.conv_ae import activation_fn

CODES = ("sigmoid", "relu", "topk")


def keep_top_k(pre: jax.Array, k: int) -> jax.Array:
  """ReLU of the k largest entries of each row of `pre`; every other entry 0."""
  threshold = jax.lax.top_k(pre, k)[0][..., -1:]
  return jnp.where(pre >= threshold, jax.nn.relu(pre), 0.0)


class SparseAutoencoder(nn.Module):
  """Attributes:
  output_shape: (H, W, C) of the output.
  code_dim: number of code units.
  code: `sigmoid` (KL-ρ), `relu` (L1) or `topk` (k largest kept).
  k: units kept per example with `code='topk'`.
  output_activation: applied to the decoder's output (`sigmoid` for [0, 1] data).
  code_bias_init: initial bias of the code units' pre-activations (0: the Dense default).
  dtype: computation dtype of the two Dense maps (bfloat16: mixed precision).
    The KL-ρ family starts sigmoid units at logit(ρ), i.e. at the target rate.
  kernels: `flax` or `xla_cpu` (see `genlab.kernels`).
  """

  output_shape: Sequence[int]
  code_dim: int = 64
  code: str = "sigmoid"
  k: int = 8
  output_activation: str = "sigmoid"
  code_bias_init: float = 0.0
  dtype: Any = jnp.float32
  kernels: str = "flax"

  def setup(self):
    if self.code not in CODES:
      raise ConfigError(f"unknown code {self.code!r}; choose one of {CODES}")
    if self.code == "topk" and not 0 < self.k <= self.code_dim:
      raise ConfigError(f"k={self.k} must lie in 1..code_dim={self.code_dim}")
    self.encoder = kernels_lib.dense(
      self.code_dim,
      kernels=self.kernels,
      bias_init=nn.initializers.constant(self.code_bias_init),
      dtype=self.dtype,
      name="encoder",
    )
    self.decoder = kernels_lib.dense(
      math.prod(self.output_shape), kernels=self.kernels, dtype=self.dtype, name="decoder"
    )

  def pre_activations(self, x: jax.Array) -> jax.Array:
    """The code units' inputs, (examples, code_dim), in float32 (ρ̂ and the KL need it)."""
    return self.encoder(x.reshape(x.shape[0], -1)).astype(jnp.float32)

  def code_of(self, pre: jax.Array) -> jax.Array:
    if self.code == "sigmoid":
      return jax.nn.sigmoid(pre)
    if self.code == "relu":
      return jax.nn.relu(pre)
    return keep_top_k(pre, self.k)

  def encode(self, x: jax.Array) -> jax.Array:
    return self.code_of(self.pre_activations(x))

  def decode(self, code: jax.Array) -> jax.Array:
    logits = self.decoder(code).astype(jnp.float32)
    return logits.reshape(code.shape[0], *self.output_shape)

  def __call__(self, x: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    pre = self.pre_activations(x)
    code = self.code_of(pre)
    logits = self.decode(code)
    aux = {"code": code, "logits": logits, "pre": pre}
    return activation_fn(self.output_activation)(logits), aux
