"""Recurrent autoencoder: per-step features → RNN encoder → latent vector → RNN decoder.

    x (B, T, D) or tokens (B, T)
      → per-step input layer (Embed for tokens) and MLP `feature_dims`
      → `num_layers` stacked LSTM/GRU layers (optionally bidirectional), lengths masked;
        the top layer's final state(s) at each sequence's last valid step
      → Dense(latent_dim) = z                                  (sequence → vector)
      → decoder: `num_layers` stacked LSTM/GRU layers whose initial states are
        Dense(z) and whose input at every step is z (repeated) plus a learned
        embedding of the step's position                       (vector → sequence)
      → per-step Dense: `output_dim` values (mean; plus a log-variance per
        feature with `gaussian=True`) or `output_dim` token logits.

The decoder is not autoregressive (no teacher forcing): everything it knows of
the input passes through z, which makes z the representation and makes training
and evaluation the same computation. The output length is the target's padded
length, which may differ from the input's (encoder-decoder mode).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from genlab import kernels as kernels_lib
from genlab.errors import ConfigError
from genlab.models.conv_ae import activation_fn

# `unroll`: time steps per iteration of the RNN's loop (`nn.RNN(unroll=...)`). It changes
# how XLA compiles the loop, not the result; XLA's cost analysis counts a loop body once,
# so FLOP counts (scripts/benchmark.py) unroll the whole sequence.


def _final_hidden(carry, cell: str) -> jax.Array:
  """The hidden state h of a carry: LSTM carries (c, h), GRU carries h."""
  return carry[1] if cell == "lstm" else carry


class SequenceEncoder(nn.Module):
  """Sequence → vector: per-step features, stacked (bi)RNN layers, Dense to z.
  Fields as in `RecurrentAutoencoder`."""

  latent_dim: int
  vocab_size: int | None = None
  embed_dim: int = 32
  feature_dims: Sequence[int] = (64,)
  cell: str = "lstm"
  hidden_dim: int = 128
  num_layers: int = 1
  bidirectional: bool = False
  activation: str = "relu"
  unroll: int = 1
  dtype: Any = jnp.float32
  kernels: str = "flax"

  @nn.compact
  def __call__(self, x: jax.Array, lengths: jax.Array) -> jax.Array:
    """z (B, latent_dim) of sequences `x` whose first `lengths` steps are valid."""
    dtype = self.dtype
    dense = functools.partial(kernels_lib.dense, kernels=self.kernels, dtype=dtype)
    rnn = functools.partial(
      kernels_lib.recurrent_layer,
      self.cell,
      self.hidden_dim,
      kernels=self.kernels,
      dtype=dtype,
      unroll=self.unroll,
    )
    if self.vocab_size:
      h = nn.Embed(self.vocab_size, self.embed_dim, dtype=dtype, name="embed")(x)
    else:
      h = x.astype(dtype)
    for i, width in enumerate(self.feature_dims):
      h = activation_fn(self.activation)(dense(width, name=f"feature_{i}")(h))
    finals = []
    for layer in range(self.num_layers):
      forward = rnn(name=f"rnn_{layer}", return_carry=True)
      if self.bidirectional:
        backward = rnn(
          name=f"rnn_{layer}_backward",
          return_carry=True,
          reverse=True,
          keep_order=True,
        )
        bidirectional = nn.Bidirectional(forward, backward, return_carry=True, name=f"bi_{layer}")
        (fwd_carry, bwd_carry), h = bidirectional(h, seq_lengths=lengths)
        finals = [_final_hidden(fwd_carry, self.cell), _final_hidden(bwd_carry, self.cell)]
      else:
        carry, h = forward(h, seq_lengths=lengths)
        finals = [_final_hidden(carry, self.cell)]
    final = jnp.concatenate(finals, axis=-1)
    return dense(self.latent_dim, name="to_latent")(final)


class SequenceDecoder(nn.Module):
  """Vector → sequence: z initialises every layer's state and is the input at every step,
  beside a learned position embedding. Fields as in `RecurrentAutoencoder`."""

  output_width: int
  output_length: int
  cell: str = "lstm"
  hidden_dim: int = 128
  num_layers: int = 1
  unroll: int = 1
  dtype: Any = jnp.float32
  kernels: str = "flax"

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    """Per-step outputs (B, output_length, output_width)."""
    shape = (z.shape[0], self.output_length, z.shape[-1])
    z = z.astype(self.dtype)
    position = nn.Embed(self.output_length, z.shape[-1], dtype=self.dtype, name="position")(
      jnp.arange(self.output_length)
    )
    h = jnp.concatenate(
      [jnp.broadcast_to(z[:, None, :], shape), jnp.broadcast_to(position, shape)], axis=-1
    )
    dense = functools.partial(kernels_lib.dense, kernels=self.kernels, dtype=self.dtype)
    for layer in range(self.num_layers):
      init = dense(self.hidden_dim, name=f"init_{layer}")(z)
      carry = (init, jnp.tanh(init)) if self.cell == "lstm" else jnp.tanh(init)
      rnn = kernels_lib.recurrent_layer(
        self.cell,
        self.hidden_dim,
        kernels=self.kernels,
        name=f"rnn_{layer}",
        dtype=self.dtype,
        unroll=self.unroll,
      )
      h = rnn(h, initial_carry=carry)
    return dense(self.output_width, name="output")(h)


class RecurrentAutoencoder(nn.Module):
  """A sequence → per-step MLP features → LSTM/GRU encoder → z → RNN decoder → sequence.

  Attributes:
  output_dim: values per output step (real sequences) or the vocabulary size (tokens).
  output_length: steps of the output sequence.
  vocab_size: if set, the input is token ids embedded in `embed_dim` dimensions.
  embed_dim: token embedding size.
  feature_dims: per-step MLP widths before the encoder RNN.
  cell: `lstm` or `gru`.
  hidden_dim: units of every RNN layer.
  num_layers: stacked RNN layers in the encoder and in the decoder.
  bidirectional: the encoder reads both directions (concatenated final states).
  latent_dim: size of z.
  gaussian: real outputs carry a log-variance per feature (gaussian NLL).
  activation: of the feature MLP.
  unroll: time steps per loop iteration of every RNN (see above).
  dtype: computation dtype (bfloat16 for mixed precision; params stay float32).
  kernels: `flax` or `xla_cpu` (see `genlab.kernels`).
  """

  output_dim: int
  output_length: int
  vocab_size: int | None = None
  embed_dim: int = 32
  feature_dims: Sequence[int] = (64,)
  cell: str = "lstm"
  hidden_dim: int = 128
  num_layers: int = 1
  bidirectional: bool = False
  latent_dim: int = 32
  gaussian: bool = False
  activation: str = "relu"
  unroll: int = 1
  dtype: Any = jnp.float32
  kernels: str = "flax"

  def setup(self):
    if self.cell not in kernels_lib.CELLS:
      raise ConfigError(f"unknown cell {self.cell!r}; choose one of {list(kernels_lib.CELLS)}")
    if self.num_layers < 1:
      raise ConfigError(f"num_layers={self.num_layers} must be at least 1")
    rnn = dict(
      cell=self.cell,
      hidden_dim=self.hidden_dim,
      num_layers=self.num_layers,
      unroll=self.unroll,
      dtype=self.dtype,
      kernels=self.kernels,
    )
    self.encoder = SequenceEncoder(
      latent_dim=self.latent_dim,
      vocab_size=self.vocab_size,
      embed_dim=self.embed_dim,
      feature_dims=tuple(self.feature_dims),
      bidirectional=self.bidirectional,
      activation=self.activation,
      **rnn,
    )
    two = 2 if self.gaussian and not self.vocab_size else 1
    self.decoder = SequenceDecoder(self.output_dim * two, self.output_length, **rnn)

  def encode(self, x: jax.Array, lengths: jax.Array) -> jax.Array:
    return self.encoder(x, lengths)

  def decode(self, z: jax.Array) -> jax.Array:
    return self.decoder(z)

  def __call__(self, x: jax.Array, lengths: jax.Array) -> tuple[jax.Array, dict]:
    """(output, aux): the mean sequence or the token logits; `aux` has z (and logvar)."""
    z = self.encode(x, lengths)
    out = self.decode(z).astype(jnp.float32)  # Losses in float32 whatever the compute dtype.
    aux = {"z": z}
    if self.vocab_size:
      aux["logits"] = out
    elif self.gaussian:
      out, aux["logvar"] = jnp.split(out, 2, axis=-1)
    return out, aux
