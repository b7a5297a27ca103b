"""VQ-VAE (van den Oord et al. 2017): conv encoder → vector quantiser → conv decoder.

The encoder is the conv autoencoder's stack without its Dense code (`ConvEncoder` with
`latent_dim=None`) and a 1×1 convolution to `code_dim` channels: its output z_e is a
(H', W', D) map, each position of which the `VectorQuantizer` replaces by its nearest
codebook vector e_k (squared Euclidean distance, ties to the lowest k). The decoder
(`ConvDecoder`) decodes the (H', W', D) map of codes. Gradients pass the quantiser
straight through: z_q = z_e + sg(e_k − z_e) has the value e_k and the gradient of z_e.

The codebook is the quantiser's parameter `codebook` (K, D), initialised as Sonnet's
(uniform in ±√(3/D)). How it is trained, by a loss or by moving averages, is the
family's business (`genlab.families.vq_vae`): with moving averages the family keeps it
outside the trained parameters and passes it back in at `apply`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from genlab.models.conv_ae import IntOrSeq, activation_fn, conv_stacks


def nearest_code(z: jax.Array, codebook: jax.Array) -> jax.Array:
  """The index of the codebook row nearest to each vector of `z` (..., D), by squared
  Euclidean distance, computed in float32; ties go to the lowest index."""
  z = z.astype(jnp.float32)
  codebook = codebook.astype(jnp.float32)
  # ‖z − e‖² = ‖z‖² − 2 z·e + ‖e‖²; ‖z‖² is the same for every e, so it is left out.
  distances = jnp.sum(jnp.square(codebook), axis=-1) - 2.0 * z @ codebook.T
  return jnp.argmin(distances, axis=-1)


def straight_through(z_e: jax.Array, codes: jax.Array) -> jax.Array:
  """z_e + sg(codes − z_e): the value of `codes`, the gradient of the identity in z_e."""
  return z_e + jax.lax.stop_gradient(codes - z_e)


def codebook_init(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
  """Sonnet's codebook initialiser (VarianceScaling, fan-in D, uniform): U(±√(3/D))."""
  limit = jnp.sqrt(3.0 / shape[-1])
  return jax.random.uniform(key, shape, dtype, -limit, limit)


class VectorQuantizer(nn.Module):
  """Replaces each D-vector of its input by its nearest codebook row (straight-through).

  Attributes:
    codebook_size: K, the number of codes.
    code_dim: D, the size of a code.
  """

  codebook_size: int = 64
  code_dim: int = 16

  @nn.compact
  def __call__(self, z_e: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Returns (z_q, aux): z_q = straight_through(z_e, e_k) in float32; aux holds the
    `indices` k (z_e's shape without D) and the `codes` e_k (float32, no straight-through)."""
    codebook = self.param("codebook", codebook_init, (self.codebook_size, self.code_dim))
    z_e = z_e.astype(jnp.float32)
    indices = nearest_code(z_e, codebook)
    codes = codebook[indices]
    return straight_through(z_e, codes), {"indices": indices, "codes": codes}


class VQVAE(nn.Module):
  """Conv encoder → 1×1 conv to D → `VectorQuantizer` → conv decoder.

  Attributes:
    output_shape: (H, W, C) of the output.
    codebook_size: K, the number of codes.
    code_dim: D, the size of a code (the 1×1 conv's channels).
    features, kernel_size, strides, activation: the conv stacks (see `ConvEncoder`); the
      code map is the input's size divided by the strides.
    output_activation: applied to the decoder's logits (`sigmoid` for [0, 1] data).
    decoder_kernel_size: the decoder's kernel sides, if not `kernel_size`.
    dtype, kernels: as in `ConvEncoder` (the quantiser computes in float32).
  """

  output_shape: Sequence[int]
  codebook_size: int = 64
  code_dim: int = 16
  features: Sequence[int] = (32, 64)
  kernel_size: IntOrSeq = 3
  strides: IntOrSeq = 2
  activation: str = "relu"
  output_activation: str = "sigmoid"
  decoder_kernel_size: IntOrSeq | None = None
  dtype: Any = jnp.float32
  kernels: str = "flax"

  def setup(self):
    self.encoder, self.decoder = conv_stacks(self, latent_dim=None, output_shape=self.output_shape)
    self.pre_quantization = nn.Conv(self.code_dim, (1, 1), dtype=self.dtype)
    self.quantizer = VectorQuantizer(codebook_size=self.codebook_size, code_dim=self.code_dim)

  def encode(self, x: jax.Array) -> jax.Array:
    """z_e, the encoder's (B, H', W', D) map, before quantisation."""
    return self.pre_quantization(self.encoder(x))

  def quantize(self, z_e: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    return self.quantizer(z_e)

  def decode(self, z_q: jax.Array) -> jax.Array:
    """The decoder's logits (before `output_activation`) of a (B, H', W', D) code map."""
    return self.decoder(z_q)

  def __call__(self, x: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Returns `(output, aux)`; aux holds `z_e`, the quantiser's `indices` and `codes`, and
    the output `logits`."""
    z_e = self.encode(x)
    z_q, quantized = self.quantize(z_e)
    logits = self.decode(z_q).astype(jnp.float32)
    output = activation_fn(self.output_activation)(logits)
    return output, {"z_e": z_e.astype(jnp.float32), **quantized, "logits": logits}
