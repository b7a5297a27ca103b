"""Sparse autoencoder: x → code → linear decoder → x̂.

One hidden code layer of `code_dim` units between Dense maps, as in Ng's
sparse-autoencoder notes (sigmoid units with a KL-ρ penalty) and the SAEs that study
neural networks' activations: the code is a `genlab.sae.codes.Code` named by `code`
(ReLU, TopK, BatchTopK, JumpReLU, Matryoshka BatchTopK, or one of the user's). The
decoder's weight rows are the learned dictionary ("filters").
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
from genlab.sae.codes import CODES, Code


class SparseAutoencoder(nn.Module):
  """x → Dense encoder → sparse code (sigmoid, ReLU, TopK, BatchTopK, JumpReLU) → Dense → x̂.

  Attributes:
  output_shape: (H, W, C) of the output.
  code_dim: number of code units.
  code: the code (`genlab.sae.CODES`): `sigmoid` (KL-ρ), `relu` (L1), `topk` (k largest
    kept), `batchtopk` (k per example on average over a batch; `threshold` at inference),
    `jumprelu`, `matryoshka_batchtopk`, or a code of the user's.
  k: units kept per example with a top-k code.
  output_activation: applied to the decoder's output (`sigmoid` for [0, 1] data).
  code_bias_init: initial bias of the code units' pre-activations (0: the Dense default).
  dtype: computation dtype of the two Dense maps (bfloat16: mixed precision).
    The KL-ρ family starts sigmoid units at logit(ρ), i.e. at the target rate.
  kernels: `flax` or `xla_cpu` (see `genlab.kernels`).
  threshold_init: JumpReLU's initial threshold θ_j (learned as log θ_j, in float32
    whatever `dtype` is: in bf16 its small updates round away and it stops learning).
  bandwidth: ε of JumpReLU's pseudo-derivatives.
  threshold_decay: BatchTopK's EMA decay of its inference threshold.
  matryoshka_widths: Matryoshka's nested prefixes of the dictionary (the whole is the last).
  """

  output_shape: Sequence[int]
  code_dim: int = 64
  code: str = "sigmoid"
  k: int = 8
  output_activation: str = "sigmoid"
  code_bias_init: float = 0.0
  dtype: Any = jnp.float32
  kernels: str = "flax"
  threshold_init: float = 1e-3
  bandwidth: float = 1e-3
  threshold_decay: float = 0.99
  matryoshka_widths: Sequence[int] = ()

  @property
  def code_fn(self) -> Code:
    """The code, with this module's values of its fields."""
    return CODES.get(self.code).of(self)

  def setup(self):
    code = self.code_fn
    for name, (init, shape) in code.parameters(self.code_dim).items():
      setattr(self, name, self.param(name, init, shape, jnp.float32))
    if code.sparsity == "k" and not 0 < self.k <= self.code_dim:
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

  def code_of(self, pre: jax.Array, threshold: jax.Array | None = None) -> jax.Array:
    """The code of pre-activations `pre` at inference; `threshold` is BatchTopK's inference
    threshold (in training the family applies the code to the whole batch)."""
    code = self.code_fn
    if "threshold" in code.initial_stats(self.code_dim) and threshold is None:
      raise ValueError(f"code={self.code!r} needs its inference threshold")
    stats = {} if threshold is None else {"threshold": threshold}
    return code.activate(pre, self.variables["params"], stats, None, train=False)[0]

  def encode(self, x: jax.Array, threshold: jax.Array | None = None) -> jax.Array:
    return self.code_of(self.pre_activations(x), threshold)

  def decode(self, code: jax.Array) -> jax.Array:
    logits = self.decoder(code).astype(jnp.float32)
    return logits.reshape(code.shape[0], *self.output_shape)

  def __call__(
    self, x: jax.Array, threshold: jax.Array | None = None
  ) -> tuple[jax.Array, dict[str, jax.Array]]:
    pre = self.pre_activations(x)
    code = self.code_of(pre, threshold)
    logits = self.decode(code)
    aux = {"code": code, "logits": logits, "pre": pre}
    return activation_fn(self.output_activation)(logits), aux


__all__ = ["SparseAutoencoder"]
