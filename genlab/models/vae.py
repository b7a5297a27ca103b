"""Variational autoencoder: q(z|x) = N(μ(x), diag σ²(x)), p(z) = N(0, I), p(x|z) from a decoder.

The encoder returns μ and log σ² of a `latent_dim`-dimensional diagonal
gaussian; `reparameterize(key, mean, logvar)` draws z = μ + σ·ε with ε ~ N(0, I)
from an explicit key, so gradients reach μ and σ; the decoder returns the
parameters of p(x|z): Bernoulli logits, or a Gaussian mean (and, with
`gaussian_variance='learned'`, a per-pixel log-variance).

Encoders and decoders are an MLP (the flax example's 784-500-20 is
`hidden=(500,)`) or the core's conv stacks (`ConvEncoder`, `ConvDecoder`).

With `num_classes`, a conditional VAE (Sohn et al. 2015): the one-hot label y goes
into the encoder (concatenated to the flattened image, or to its channels for the
conv encoder) and into the decoder (concatenated to z), giving q(z|x, y) and
p(x|z, y); the prior stays N(0, I).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from genlab.errors import ConfigError
from genlab.models.conditioning import one_hot_labels
from genlab.models.conv_ae import conv_stacks
from genlab.models.mlp import MLP

LIKELIHOODS = ("bernoulli", "gaussian", "discretized_logistic")
MIN_LOG_SCALE = -7.0  # The discretized logistic's log scale is bounded below (PixelCNN++).


def reparameterize(key: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """z = mean + exp(logvar / 2) · ε with ε ~ N(0, I) from `key`; differentiable in mean, logvar."""
  eps = jax.random.normal(key, mean.shape, mean.dtype)
  return mean + jnp.exp(0.5 * logvar) * eps


def check_example_keys(keys: jax.Array, batch: int) -> None:
  """Raises a one-line ValueError unless `keys` holds one PRNG key per example of a batch of
  `batch` (typed keys (batch,), or raw uint32 keys (batch, 2))."""
  typed = jnp.issubdtype(keys.dtype, jax.dtypes.prng_key)
  expected = (batch,) if typed else (batch, 2)
  if tuple(keys.shape) != expected:
    raise ValueError(
      f"one key per example is needed: keys of shape {expected} for a batch of {batch}, got "
      f"{tuple(keys.shape)}; make them with jax.random.split(key, {batch})"
    )


class VAE(nn.Module):
  """Encoder → (μ, log σ²) → z → decoder → parameters of p(x|z).

  Attributes:
    output_shape: (H, W, C) of x.
    latent_dim: K, the dimension of z.
    architecture: `mlp` or `conv`.
    hidden: MLP hidden sizes (encoder; the decoder mirrors them).
    features, kernel_size, strides: conv stacks (see `ConvEncoder`).
    activation: hidden activation.
    likelihood: `bernoulli` (logits), `gaussian`, or `discretized_logistic` (8-bit images in
      [-1, 1]: a location and a log scale per pixel, `genlab.losses.
      discretized_logistic_log_likelihood`).
    gaussian_variance: `fixed` (σ = `gaussian_sigma`) or `learned` (per pixel).
    gaussian_sigma: the fixed decoder standard deviation.
    num_classes: if set, a conditional VAE on integer labels in [0, num_classes).
    dtype: computation dtype (bfloat16: mixed precision; params stay float32).
    kernels: `flax` or `xla_cpu` (see `genlab.kernels`).
  """

  output_shape: Sequence[int]
  latent_dim: int = 20
  architecture: str = "mlp"
  hidden: Sequence[int] = (500,)
  features: Sequence[int] = (32, 64)
  kernel_size: int | Sequence[int] = 3
  strides: int | Sequence[int] = 2
  activation: str = "relu"
  likelihood: str = "bernoulli"
  gaussian_variance: str = "fixed"
  gaussian_sigma: float = 0.1
  num_classes: int | None = None
  dtype: Any = jnp.float32
  kernels: str = "flax"

  def setup(self):
    if self.likelihood not in LIKELIHOODS:
      raise ConfigError(f"unknown likelihood {self.likelihood!r}; choose one of {LIKELIHOODS}")
    if self.gaussian_variance not in ("fixed", "learned"):
      raise ConfigError("gaussian_variance must be 'fixed' or 'learned'")
    *_, channels = self.output_shape
    out_channels = channels * (2 if self.decodes_logvar else 1)
    if self.architecture == "mlp":
      mlp = dict(activation=self.activation, dtype=self.dtype, kernels=self.kernels)
      self.encoder = MLP((*self.hidden, 2 * self.latent_dim), **mlp)
      size = math.prod(self.output_shape[:-1]) * out_channels
      self.decoder = MLP((*reversed(self.hidden), size), **mlp)
    elif self.architecture == "conv":
      self.encoder, self.decoder = conv_stacks(
        self, latent_dim=2 * self.latent_dim, output_shape=(*self.output_shape[:-1], out_channels)
      )
    else:
      raise ConfigError(f"unknown VAE architecture {self.architecture!r}; choose mlp or conv")

  @property
  def decodes_logvar(self) -> bool:
    """Whether the decoder gives a second value per pixel (a log variance or log scale)."""
    return self.likelihood == "discretized_logistic" or (
      self.likelihood == "gaussian" and self.gaussian_variance == "learned"
    )

  def one_hot(self, labels: jax.Array | None, batch: int) -> jax.Array | None:
    """The labels as one-hot rows (conditional VAEs; checked), or None."""
    return None if self.num_classes is None else one_hot_labels(labels, self.num_classes, batch)

  def encode(self, x: jax.Array, labels: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """(μ, log σ²) of q(z|x) (or q(z|x, y)), each (batch, latent_dim)."""
    y = self.one_hot(labels, x.shape[0])
    x = jnp.asarray(x)
    if self.architecture == "mlp":
      x = x.reshape(x.shape[0], -1)
      if y is not None:
        x = jnp.concatenate([x, y.astype(x.dtype)], axis=-1)
    elif y is not None:  # The label as constant channels of the image.
      planes = jnp.broadcast_to(y[:, None, None, :], (*x.shape[:-1], y.shape[-1]))
      x = jnp.concatenate([x, planes.astype(x.dtype)], axis=-1)
    h = self.encoder(x).astype(jnp.float32)
    return h[:, : self.latent_dim], h[:, self.latent_dim :]

  def decode(self, z: jax.Array, labels: jax.Array | None = None) -> dict[str, jax.Array]:
    """Parameters of p(x|z) (or p(x|z, y)): {'logits'} (Bernoulli), {'mean', 'logvar'}
    (gaussian) or {'mean', 'log_scale'} (discretized logistic)."""
    y = self.one_hot(labels, z.shape[0])
    if y is not None:
      z = jnp.asarray(z)  # NumPy float64 latents become JAX's float32 first.
      z = jnp.concatenate([z, y.astype(z.dtype)], axis=-1)
    h = self.decoder(z).astype(jnp.float32)
    *size, channels = self.output_shape
    h = h.reshape(z.shape[0], *size, -1)
    if self.likelihood == "bernoulli":
      return {"logits": h}
    if self.likelihood == "discretized_logistic":
      log_scale = jnp.maximum(h[..., channels:], MIN_LOG_SCALE)
      return {"mean": h[..., :channels], "log_scale": log_scale}
    if self.decodes_logvar:
      # Bounded below so a pixel that is always 0 cannot drive the density to infinity.
      return {"mean": h[..., :channels], "logvar": -7.0 + nn.softplus(h[..., channels:] + 7.0)}
    return {"mean": h, "logvar": jnp.full_like(h, 2.0 * math.log(self.gaussian_sigma))}

  def mean_image(self, decoded: dict[str, jax.Array]) -> jax.Array:
    """E[x|z]: sigmoid(logits), or the Gaussian mean; for the discretized logistic its
    location clipped to [-1, 1] (its median, which its mean nears as the scale shrinks)."""
    if "logits" in decoded:
      return nn.sigmoid(decoded["logits"])
    if "log_scale" in decoded:
      return jnp.clip(decoded["mean"], -1.0, 1.0)
    return decoded["mean"]

  def __call__(
    self, x: jax.Array, key: jax.Array, labels: jax.Array | None = None
  ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """Returns (decoded, aux): p(x|z)'s parameters for one z ~ q(z|x) per example, and
    aux with `mean`, `logvar`, `z`. `key` is one key per example (shape (batch,));
    `labels` (batch,) for a conditional VAE."""
    check_example_keys(key, x.shape[0])
    mean, logvar = self.encode(x, labels)
    z = jax.vmap(reparameterize)(key, mean, logvar)
    return self.decode(z, labels), {"mean": mean, "logvar": logvar, "z": z}
