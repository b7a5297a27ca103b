"""GAN generators and discriminators: MLP, and DCGAN-style on the core's conv stacks.

* `Generator`: z → image in [-1, 1] (tanh) or [0, 1] (sigmoid). `mlp`: Dense
  layers; `dcgan`: `ConvDecoder` — Dense → reshape → ConvTranspose stack, each
  stage cropped to the image's size.
* `Discriminator`: image → one logit per example, a binary classifier whose
  sigmoid is P(real). `mlp`: Dense layers; `dcgan`: `ConvEncoder` — a strided
  Conv stack → Dense(1). Leaky ReLU by default.
With `batch_norm` (`dcgan` only), the DCGAN paper's BatchNorm (Radford et al. 2016, §3): in
G after the projection and every layer but the output, in D after every layer but the
input. Called with `train=True` a network normalizes by the batch's statistics and updates
its running averages (the Linen `batch_stats` collection, which the family keeps in
`TrainState.stats`); with `train=False` (sampling, evaluation) it uses the running averages.

With `num_classes`, class-conditional networks: the generator takes the one-hot
label beside z; the discriminator is a projection discriminator (Miyato & Koyama
2018), D(x, y) = ψ(φ(x)) + ⟨e_y, φ(x)⟩ with φ(x) its last hidden features and e_y a
learned embedding of the class.
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
from genlab.models.conditioning import one_hot_labels
from genlab.models.conv_ae import ConvDecoder, ConvEncoder, activation_fn, spectrally_normalized
from genlab.models.mlp import MLP

ARCHITECTURES = ("mlp", "dcgan")


def check_batch_norm(network: nn.Module) -> None:
  """Refuses `batch_norm` on an architecture that has none (the MLPs)."""
  if network.batch_norm and network.architecture != "dcgan":
    raise ConfigError(
      f"config.model.{type(network).__name__.lower()}.batch_norm=True: only the dcgan "
      f"architecture has BatchNorm layers, not {network.architecture!r}"
    )


class Generator(nn.Module):
  """z (batch, latent_dim) → images (batch, *output_shape).

  Attributes:
    output_shape: (H, W, C).
    architecture: `mlp` or `dcgan`.
    hidden: MLP hidden sizes.
    features: DCGAN channels in encoder order (the last is the first feature map's depth).
    kernel_size, strides: DCGAN transposed-convolution stages.
    activation: hidden activation.
    output_activation: `tanh` for data in [-1, 1], `sigmoid` for [0, 1].
    num_classes: if set, conditional on integer labels (one-hot beside z).
    batch_norm: BatchNorm before every hidden activation (`dcgan`; see the module doc).
    dtype: computation dtype (bfloat16: mixed precision; params stay float32).
    kernels: `flax` or `xla_cpu` (see `genlab.kernels`).
  """

  output_shape: Sequence[int]
  architecture: str = "dcgan"
  hidden: Sequence[int] = (256, 256)
  features: Sequence[int] = (64, 128)
  kernel_size: int | Sequence[int] = 4
  strides: int | Sequence[int] = 2
  activation: str = "relu"
  output_activation: str = "tanh"
  num_classes: int | None = None
  batch_norm: bool = False
  dtype: Any = jnp.float32
  kernels: str = "flax"

  @nn.compact
  def __call__(
    self, z: jax.Array, labels: jax.Array | None = None, *, train: bool = False
  ) -> jax.Array:
    if self.num_classes is not None:
      z = jnp.concatenate([z, one_hot_labels(labels, self.num_classes, z.shape[0])], axis=-1)
    check_batch_norm(self)
    if self.architecture == "mlp":
      widths = (*self.hidden, math.prod(self.output_shape))
      h = MLP(widths, self.activation, self.dtype, self.kernels)(z)
      h = h.reshape(z.shape[0], *self.output_shape)
    elif self.architecture == "dcgan":
      h = ConvDecoder(
        output_shape=tuple(self.output_shape),
        features=tuple(self.features),
        kernel_size=self.kernel_size,
        strides=self.strides,
        activation=self.activation,
        dtype=self.dtype,
        kernels=self.kernels,
        batch_norm=self.batch_norm,
      )(z, train=train)
    else:
      raise ConfigError(f"unknown GAN architecture {self.architecture!r}; choose {ARCHITECTURES}")
    return activation_fn(self.output_activation)(h.astype(jnp.float32))


class Discriminator(nn.Module):
  """Images → one logit per example (sigmoid: P(real)). Attributes as in `Generator`."""

  architecture: str = "dcgan"
  hidden: Sequence[int] = (256, 256)
  features: Sequence[int] = (64, 128)
  kernel_size: int | Sequence[int] = 4
  strides: int | Sequence[int] = 2
  activation: str = "leaky_relu"
  dtype: Any = jnp.float32
  kernels: str = "flax"
  # SNGAN (Miyato et al. 2018): every layer spectrally normalized, its power-iteration
  # vectors in the `batch_stats` collection (genlab keeps them in TrainState.stats).
  spectral_norm: bool = False
  # DCGAN's BatchNorm after every conv but the first (`dcgan`; see the module docstring).
  batch_norm: bool = False
  # A projection discriminator on labels in [0, num_classes) (see the module docstring).
  num_classes: int | None = None

  @nn.compact
  def __call__(
    self,
    x: jax.Array,
    labels: jax.Array | None = None,
    update_stats: bool = False,
    *,
    train: bool = False,
  ) -> jax.Array:
    check_batch_norm(self)
    if self.num_classes is not None:
      return self.projection(x, labels, update_stats, train)
    if self.architecture == "mlp":
      mlp = MLP((*self.hidden, 1), self.activation, self.dtype, self.kernels, self.spectral_norm)
      logit = mlp(x.reshape(x.shape[0], -1), update_stats)
    elif self.architecture == "dcgan":
      logit = ConvEncoder(
        features=tuple(self.features),
        kernel_size=self.kernel_size,
        strides=self.strides,
        latent_dim=1,
        activation=self.activation,
        dtype=self.dtype,
        kernels=self.kernels,
        spectral_norm=self.spectral_norm,
        batch_norm=self.batch_norm,
      )(x, update_stats, train=train)
    else:
      raise ConfigError(f"unknown GAN architecture {self.architecture!r}; choose {ARCHITECTURES}")
    return logit[:, 0].astype(jnp.float32)

  def projection(
    self, x: jax.Array, labels: jax.Array, update_stats: bool, train: bool
  ) -> jax.Array:
    """ψ(φ(x)) + ⟨e_y, φ(x)⟩: φ the network without its last Dense, ψ that Dense."""
    y = one_hot_labels(labels, self.num_classes, x.shape[0])  # Checks their shape.
    act = activation_fn(self.activation)
    if self.architecture == "mlp":
      mlp = MLP(tuple(self.hidden), self.activation, self.dtype, self.kernels, self.spectral_norm)
      phi = act(mlp(x.reshape(x.shape[0], -1), update_stats))
    elif self.architecture == "dcgan":
      maps = ConvEncoder(
        features=tuple(self.features),
        kernel_size=self.kernel_size,
        strides=self.strides,
        latent_dim=None,
        activation=self.activation,
        dtype=self.dtype,
        kernels=self.kernels,
        spectral_norm=self.spectral_norm,
        batch_norm=self.batch_norm,
      )(x, update_stats, train=train)
      phi = maps.reshape(x.shape[0], -1)
    else:
      raise ConfigError(f"unknown GAN architecture {self.architecture!r}; choose {ARCHITECTURES}")
    psi = kernels_lib.dense(1, kernels=self.kernels, dtype=self.dtype, name="psi")
    logit = spectrally_normalized(psi, self.spectral_norm, "spectral_norm_psi", phi, update_stats)
    embed = self.param(
      "class_embedding", nn.initializers.normal(0.02), (self.num_classes, phi.shape[-1])
    )
    projected = jnp.sum((y @ embed) * phi.astype(jnp.float32), axis=-1)
    return logit[:, 0].astype(jnp.float32) + projected
