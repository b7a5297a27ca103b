"""NNX models of the tests and of the docs: the worked example's conv autoencoder in NNX
(docs/extending.md, "Your model in NNX", shows it as it is here), and an NNX host for an SAE
(docs/families/sparse_ae.md)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from genlab.models import HostModel, activation_fn


class ConvAutoencoder(nnx.Module):
  """genlab's `conv_ae` in NNX: strided convolutions, a Dense code, and back.

  The constructor takes the fields of `config.model` (those of `genlab.models.ConvAutoencoder`,
  so an experiment switches by `model.name` alone) and the `output_shape` the family passes.
  """

  def __init__(
    self,
    output_shape: Sequence[int],
    features: Sequence[int] = (32, 64),
    kernel_size: int = 3,
    strides: int = 2,
    latent_dim: int = 32,
    activation: str = "relu",
    output_activation: str = "sigmoid",
    *,
    rngs: nnx.Rngs,
  ):
    *size, channels = output_shape
    self.latent_dim = latent_dim
    self.activation, self.output_activation = activation, output_activation
    self.sizes = [tuple(size)]  # Before each stage and after the last ('SAME': ceil(h / s)).
    for _ in features:
      self.sizes.append(tuple(math.ceil(s / strides) for s in self.sizes[-1]))
    kernel, stride = (kernel_size, kernel_size), (strides, strides)
    widths = [channels, *features]
    self.convs = nnx.List(
      [
        nnx.Conv(a, b, kernel, strides=stride, padding="SAME", rngs=rngs)
        for a, b in zip(widths[:-1], widths[1:], strict=True)
      ]
    )
    smallest = math.prod(self.sizes[-1]) * features[-1]
    self.code = nnx.Linear(smallest, latent_dim, rngs=rngs)
    self.project = nnx.Linear(latent_dim, smallest, rngs=rngs)
    self.deconvs = nnx.List(
      [
        nnx.ConvTranspose(b, a, kernel, strides=stride, padding="SAME", rngs=rngs)
        for a, b in zip(widths[:-1], widths[1:], strict=True)
      ]
    )

  def encode(self, x: jax.Array) -> jax.Array:
    act = activation_fn(self.activation)
    for conv in self.convs:
      x = act(conv(x))
    return self.code(x.reshape(x.shape[0], -1))

  def decode(self, code: jax.Array) -> jax.Array:
    """The decoder's logits (before `output_activation`)."""
    act = activation_fn(self.activation)
    h, w = self.sizes[-1]
    x = act(self.project(code)).reshape(code.shape[0], h, w, -1)
    for i, deconv in reversed(list(enumerate(self.deconvs))):
      h, w = self.sizes[i]
      x = deconv(x)[:, :h, :w, :]  # Cropped to the size the encoder's stage had.
      x = act(x) if i > 0 else x
    return x

  def __call__(self, x: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    code = self.encode(x)
    logits = self.decode(code)
    output = activation_fn(self.output_activation)(logits)
    return output, {"code": code, "logits": logits}


class WithBatchNorm(nnx.Module):
  """A model holding running statistics, which genlab refuses (docs/extending.md)."""

  def __init__(self, output_shape: Sequence[int], *, rngs: nnx.Rngs, **conv_ae_fields):
    del conv_ae_fields  # Taken, so that only the BatchNorm is what is refused.
    width = math.prod(output_shape)
    self.shape = tuple(output_shape)
    self.linear = nnx.Linear(width, width, rngs=rngs)
    self.norm = nnx.BatchNorm(width, rngs=rngs)

  def __call__(self, x):
    y = self.norm(self.linear(x.reshape(x.shape[0], -1))).reshape(x.shape)
    return y, {"logits": y}


class SparseAE(nnx.Module):
  """An image sparse autoencoder in NNX: a Linear encoder to `code_dim` sigmoid units whose
  bias starts at `code_bias_init` (which the KL sparsity sets to logit(ρ)), and back."""

  def __init__(
    self,
    output_shape: Sequence[int],
    code_dim: int = 16,
    code: str = "sigmoid",
    output_activation: str = "sigmoid",
    code_bias_init: float = 0.0,
    *,
    rngs: nnx.Rngs,
  ):
    width = math.prod(output_shape)
    self.shape, self.output_activation = tuple(output_shape), output_activation
    bias_init = nnx.initializers.constant(code_bias_init)
    self.encoder = nnx.Linear(width, code_dim, bias_init=bias_init, rngs=rngs)
    self.decoder = nnx.Linear(code_dim, width, rngs=rngs)

  def __call__(self, x):
    pre = self.encoder(x.reshape(x.shape[0], -1))
    code = jax.nn.sigmoid(pre)
    logits = self.decoder(code).reshape(x.shape[0], *self.shape)
    return activation_fn(self.output_activation)(logits), {"code": code, "logits": logits}


class SparseAEWithoutBiasInit(nnx.Module):
  """The same without a `code_bias_init` argument."""

  def __init__(
    self,
    output_shape: Sequence[int],
    code_dim: int = 16,
    code: str = "sigmoid",
    output_activation: str = "sigmoid",
    *,
    rngs: nnx.Rngs,
  ):
    self.inner = SparseAE(output_shape, code_dim, code, output_activation, rngs=rngs)

  def __call__(self, x):
    return self.inner(x)


# An NNX host for an SAE ------------------------------------------------------------------


class Block(nnx.Module):
  """A residual MLP block."""

  def __init__(self, width: int, *, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(width, 2 * width, rngs=rngs)
    self.out = nnx.Linear(2 * width, width, rngs=rngs)

  def __call__(self, x):
    h = jax.nn.gelu(self.hidden(x))
    self.sow(nnx.Intermediate, "hidden_act", h)
    return x + self.out(h)


class TokenMLP(nnx.Module):
  """A tiny next-token model on characters: embed, residual blocks, logits."""

  def __init__(self, vocab: int = 128, width: int = 16, depth: int = 2, *, rngs: nnx.Rngs):
    self.embed = nnx.Embed(vocab, width, rngs=rngs)
    self.blocks = nnx.List([Block(width, rngs=rngs) for _ in range(depth)])
    self.head = nnx.Linear(width, vocab, rngs=rngs)

  def __call__(self, tokens):
    x = self.embed(tokens)
    for block in self.blocks:
      x = block(x)
    return self.head(x)


def token_mlp_host() -> HostModel:
  """A `sae.host_factory`: `TokenMLP` at fixed random parameters over pydoc_text's ids, read
  at `blocks/0` (the residual stream after the first block)."""
  from genlab.families.language_model import next_token_loss

  return HostModel(
    model=TokenMLP(vocab=96, rngs=nnx.Rngs(0)),
    params=None,  # Those of the module.
    layer="blocks/0",
    inputs=lambda batch: (batch["image"],),
    positions=lambda batch: (
      jnp.arange(batch["image"].shape[1])[None, :] < batch["length"][:, None]
    ).astype(jnp.float32),
    token_loss=next_token_loss,
    description="tests/nnx_models.py TokenMLP, seed 0",
  )


def batchnorm_host() -> HostModel:
  """A host holding running statistics: refused in one line."""
  return HostModel(
    model=WithBatchNorm((4,), rngs=nnx.Rngs(0)),
    params=None,
    layer="linear",
    inputs=lambda batch: (batch["image"],),
    positions=lambda batch: jnp.ones(batch["image"].shape[:1] + (1,)),
    token_loss=lambda output, batch: (output, output),
  )
