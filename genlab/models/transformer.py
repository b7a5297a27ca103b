"""A small causal transformer language model over token ids (GPT-style, pre-norm).

tokens (B, T) → Embed + learned positions → `depth` × Block → LayerNorm → Dense(vocab)
logits (B, T, vocab): position t's logits predict token t + 1. Block i is the module
`block_{i}`; its output is the residual stream after layer i, the activation an SAE
reads (`genlab.models.activations`).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from genlab.errors import ConfigError


class Block(nn.Module):
  """x + Attention(LN(x)), then + MLP(LN(·)): one pre-norm transformer layer."""

  width: int
  heads: int
  mlp_ratio: int = 4
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    h = nn.LayerNorm(name="attention_norm")(x)
    x = x + nn.MultiHeadDotProductAttention(
      num_heads=self.heads, dtype=self.dtype, name="attention"
    )(h, h, mask=mask)
    h = nn.LayerNorm(name="mlp_norm")(x)
    h = nn.Dense(self.mlp_ratio * self.width, dtype=self.dtype, name="mlp_in")(h)
    h = nn.Dense(self.width, dtype=self.dtype, name="mlp_out")(nn.gelu(h))
    return (x + h).astype(jnp.float32)


class CausalTransformer(nn.Module):
  """Tokens → a pre-norm causal transformer (`depth` blocks) → next-token logits.

  Attributes:
  vocab_size: token ids are 0..vocab_size − 1 (0 pads).
  max_length: the longest sequence (learned position embeddings).
  width: the residual stream's dimension.
  depth: the number of blocks.
  heads: attention heads per block (width must divide by it).
  mlp_ratio: the MLP's hidden width over `width`.
  dtype: computation dtype of the attention and MLP (bfloat16: mixed precision).
  """

  vocab_size: int
  max_length: int
  width: int = 96
  depth: int = 3
  heads: int = 4
  mlp_ratio: int = 4
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tokens: jax.Array) -> jax.Array:
    if self.width % self.heads:
      raise ConfigError(f"width={self.width} must be a multiple of heads={self.heads}")
    length = tokens.shape[1]
    if length > self.max_length:
      raise ConfigError(f"sequences of {length} tokens; the model takes {self.max_length}")
    x = nn.Embed(self.vocab_size, self.width, name="embed")(tokens)
    positions = self.param("positions", nn.initializers.normal(0.02), (self.max_length, self.width))
    x = x + positions[:length]
    mask = nn.make_causal_mask(tokens)
    for i in range(self.depth):
      x = Block(self.width, self.heads, self.mlp_ratio, dtype=self.dtype, name=f"block_{i}")(
        x, mask
      )
    x = nn.LayerNorm(name="final_norm")(x)
    return nn.Dense(self.vocab_size, dtype=self.dtype, name="head")(x).astype(jnp.float32)
