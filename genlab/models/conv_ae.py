"""Convolutional autoencoder: strided Conv encoder, ConvTranspose decoder.

The encoder halves (by `strides`) the resolution and grows the depth at each
stage; an optional Dense layer maps the last feature map to a `latent_dim`
code. The decoder is the inverse: Dense back to the smallest feature map, then
one ConvTranspose per stage, each cropped to the size the matching encoder
stage had, so any input size works (8×8, 28×28 → 14 → 7 → 4 and back, 32×32,
64×64, ...). The decoder's output shape is a field, so the output need not be
the input (image → map).

`ConvEncoder` and `ConvDecoder` are the shared conv stacks other families
(VAE, GAN) build on.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from genlab import kernels as kernels_lib
from genlab.errors import ConfigError

IntOrSeq = int | Sequence[int]


def activation_fn(name: str):
  """Resolves an activation function by its name in `flax.linen.activation`
  (`relu`, `gelu`, `silu`, `sigmoid`, `tanh`, ...), or `none` for the identity.

  `name:value` passes a number as the function's second argument, its shape parameter:
  `leaky_relu:0.2` is a leaky ReLU of negative slope 0.2 (flax's default is 0.01, the
  DCGAN and SNGAN papers' 0.2 and 0.1), `elu:0.5` an ELU of alpha 0.5."""
  if name in ("none", "identity", "linear"):
    return lambda x: x
  base, _, argument = name.partition(":")
  fn = getattr(nn.activation, base, None)
  # The namespace also holds layer classes (PReLU) and re-exported modules: refuse them.
  if not callable(fn) or inspect.isclass(fn) or inspect.ismodule(fn):
    raise ConfigError(f"unknown activation {name!r}; use a flax.linen function such as 'relu'")
  if not argument:
    return fn
  try:
    value = float(argument)
  except ValueError:
    raise ConfigError(
      f"activation {name!r}: after ':' comes a number, the function's shape parameter "
      "(e.g. 'leaky_relu:0.2')"
    ) from None
  return lambda x: fn(x, value)


def batch_norm(on: bool, dtype, name: str, x: jax.Array, train: bool) -> jax.Array:
  """`x`, or with `on` batch-normalized over every axis but the channels: the batch's
  statistics in training (`train`; the running averages, in the Linen `batch_stats`
  collection, updated then), the running averages otherwise. PyTorch's momentum (0.1 of
  the new batch) and ε (1e-5), those of the DCGAN and SNGAN code; the running variance
  averages the batch's biased variance (flax's), where PyTorch's averages the unbiased one.
  Over a sharded batch the statistics are the global batch's: the step is written over it."""
  if not on:
    return x
  return nn.BatchNorm(
    use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype, name=name
  )(x)


def per_stage(value: IntOrSeq, num_stages: int, what: str) -> tuple[int, ...]:
  """Broadcasts an int to every stage, or checks a per-stage sequence's length."""
  if isinstance(value, int):
    return (value,) * num_stages
  value = tuple(value)
  if len(value) != num_stages:
    raise ConfigError(f"{what} has {len(value)} entries for {num_stages} conv stages")
  return value


def stage_sizes(size: Sequence[int], strides: Sequence[int]) -> list[tuple[int, int]]:
  """Spatial sizes before each stage and after the last ('SAME' padding: ceil(h / s))."""
  sizes = [tuple(size)]
  for s in strides:
    h, w = sizes[-1]
    sizes.append((math.ceil(h / s), math.ceil(w / s)))
  return sizes


def spectrally_normalized(layer: nn.Module, on: bool, name: str, x, update_stats: bool):
  """`layer(x)`, or with `on` its spectrally normalized version (Miyato et al. 2018)."""
  if not on:
    return layer(x)
  return nn.SpectralNorm(layer, name=name)(x, update_stats=update_stats)


class ConvEncoder(nn.Module):
  """Strided convolutions, then (if `latent_dim`) a Dense code.

  Attributes:
    features: channels of each stage, growing with depth.
    kernel_size: kernel side, one for all stages or one per stage.
    strides: stride of each stage (2 halves the resolution).
    latent_dim: size of the code; `None` keeps the last feature map as the code.
    activation: name of a `flax.linen` activation.
    dtype: computation dtype (bfloat16: mixed precision; params stay float32).
    kernels: `flax` (flax's layers) or `xla_cpu` (genlab's; see `genlab.kernels`).
    spectral_norm: every layer spectrally normalized (as in `genlab.models.mlp.MLP`).
    batch_norm: a BatchNorm after every convolution but the first, before its activation
      (the DCGAN discriminator's: none on the input layer); `train` picks its statistics.
  """

  features: Sequence[int] = (32, 64)
  kernel_size: IntOrSeq = 3
  strides: IntOrSeq = 2
  latent_dim: int | None = 32
  activation: str = "relu"
  dtype: Any = jnp.float32
  kernels: str = "flax"
  spectral_norm: bool = False
  batch_norm: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, update_stats: bool = False, *, train: bool = False) -> jax.Array:
    n = len(self.features)
    kernel_sizes = per_stage(self.kernel_size, n, "kernel_size")
    strides = per_stage(self.strides, n, "strides")
    act = activation_fn(self.activation)
    sn = self.spectral_norm
    for i, (f, k, s) in enumerate(zip(self.features, kernel_sizes, strides, strict=True)):
      conv = nn.Conv(f, (k, k), strides=(s, s), padding="SAME", dtype=self.dtype, name=f"conv_{i}")
      x = spectrally_normalized(conv, sn, f"spectral_norm_{i}", x, update_stats)
      x = act(batch_norm(self.batch_norm and i > 0, self.dtype, f"batch_norm_{i}", x, train))
    if self.latent_dim is None:
      return x
    code = kernels_lib.dense(self.latent_dim, kernels=self.kernels, dtype=self.dtype, name="code")
    return spectrally_normalized(
      code, sn, "spectral_norm_code", x.reshape(x.shape[0], -1), update_stats
    )


class ConvDecoder(nn.Module):
  """The encoder's inverse: Dense → reshape → one cropped ConvTranspose per stage.

  Attributes:
    output_shape: (H, W, C) of the output.
    features: the encoder's channels, in encoder order (the decoder walks them back).
    kernel_size: kernel side, one for all stages or one per stage (encoder order).
    strides: stride of each stage (encoder order).
    activation: hidden activation.
    dtype, kernels: as in `ConvEncoder`.
    batch_norm: a BatchNorm before every hidden activation (after the projection of a
      vector code and every ConvTranspose but the last: the DCGAN generator's); `train`
      picks its statistics.
  Returns pre-activation outputs (logits); the caller applies the output activation.
  """

  output_shape: Sequence[int]
  features: Sequence[int] = (32, 64)
  kernel_size: IntOrSeq = 3
  strides: IntOrSeq = 2
  activation: str = "relu"
  dtype: Any = jnp.float32
  kernels: str = "flax"
  batch_norm: bool = False

  @nn.compact
  def __call__(self, z: jax.Array, *, train: bool = False) -> jax.Array:
    n = len(self.features)
    kernel_sizes = per_stage(self.kernel_size, n, "kernel_size")
    strides = per_stage(self.strides, n, "strides")
    act = activation_fn(self.activation)
    *size, channels = self.output_shape
    sizes = stage_sizes(size, strides)
    x = z
    if z.ndim == 2:  # A vector code: project back to the smallest feature map.
      h, w = sizes[-1]
      project = kernels_lib.dense(
        h * w * self.features[-1], kernels=self.kernels, dtype=self.dtype, name="project"
      )
      x = project(z).reshape(z.shape[0], h, w, self.features[-1])
      x = act(batch_norm(self.batch_norm, self.dtype, "batch_norm_project", x, train))
    elif tuple(z.shape[1:3]) != sizes[-1]:
      raise ConfigError(
        f"a {z.shape[1]}×{z.shape[2]} spatial code cannot decode to {tuple(self.output_shape)} "
        f"through strides {strides} (it needs {sizes[-1][0]}×{sizes[-1][1]}); set latent_dim "
        "to decode through a vector code"
      )
    for i in reversed(range(n)):
      out = self.features[i - 1] if i > 0 else channels
      k, s = kernel_sizes[i], strides[i]
      x = kernels_lib.conv_transpose(
        out,
        (k, k),
        kernels=self.kernels,
        strides=(s, s),
        padding="SAME",
        dtype=self.dtype,
        name=f"deconv_{i}",
      )(x)
      h, w = sizes[i]
      x = x[:, :h, :w, :]
      if i > 0:
        x = act(batch_norm(self.batch_norm, self.dtype, f"batch_norm_{i}", x, train))
    return x


def conv_stacks(
  model: nn.Module, *, latent_dim: int | None, output_shape: Sequence[int]
) -> tuple[ConvEncoder, ConvDecoder]:
  """The encoder and decoder stacks of a conv model (autoencoder, VAE, VQ-VAE) from its
  fields `features`, `kernel_size`, `strides`, `activation`, `dtype`, `kernels` and, if
  it has one and it is set, `decoder_kernel_size`; call it in the model's `setup`."""
  common = dict(
    features=tuple(model.features),
    strides=model.strides,
    activation=model.activation,
    dtype=model.dtype,
    kernels=model.kernels,
  )
  decoder_kernel = getattr(model, "decoder_kernel_size", None)
  encoder = ConvEncoder(latent_dim=latent_dim, kernel_size=model.kernel_size, **common)
  decoder = ConvDecoder(
    output_shape=tuple(output_shape),
    kernel_size=model.kernel_size if decoder_kernel is None else decoder_kernel,
    **common,
  )
  return encoder, decoder


class ConvAutoencoder(nn.Module):
  """`ConvEncoder` → code → `ConvDecoder`, mapping an image to `output_shape`.

  Attributes:
    output_shape: (H, W, C) of the output: the input's shape for reconstruction,
      the target's for image → map.
    features, kernel_size, strides, latent_dim, activation: see `ConvEncoder`.
    decoder_kernel_size: the decoder's kernel sides, if not `kernel_size` (a 4×4
      ConvTranspose at stride 2 covers each output evenly, where 3×3 alternates).
    output_activation: applied to the decoder's logits (`sigmoid` for [0, 1]
      data, `tanh` for [-1, 1], `none`).
    dtype, kernels: as in `ConvEncoder`.
  """

  output_shape: Sequence[int]
  features: Sequence[int] = (32, 64)
  kernel_size: IntOrSeq = 3
  strides: IntOrSeq = 2
  latent_dim: int | None = 32
  activation: str = "relu"
  output_activation: str = "sigmoid"
  decoder_kernel_size: IntOrSeq | None = None
  dtype: Any = jnp.float32
  kernels: str = "flax"

  def setup(self):
    self.encoder, self.decoder = conv_stacks(
      self, latent_dim=self.latent_dim, output_shape=self.output_shape
    )

  def encode(self, x: jax.Array) -> jax.Array:
    return self.encoder(x)

  def decode(self, code: jax.Array) -> jax.Array:
    """Returns the decoder's logits (before `output_activation`)."""
    return self.decoder(code)

  def __call__(self, x: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Returns `(output, aux)`; aux holds the `code` and the output `logits`."""
    code = self.encode(x)
    logits = self.decode(code).astype(jnp.float32)
    output = activation_fn(self.output_activation)(logits)
    return output, {"code": code, "logits": logits}
