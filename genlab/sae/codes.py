"""SAE codes: how pre-activations become latents, one class per architecture.

A code (`Code`) is what makes an autoencoder sparse, and what tells one SAE architecture
from another: the function from the encoder's pre-activations to the latents, the extra
parameters it learns (JumpReLU's thresholds), the untrained state it keeps (BatchTopK's
inference threshold), the sparsity penalty of the objective, and how the reconstruction
error is counted (Matryoshka's nested prefixes). A config names it by `config.model.code`
(`CODES`): genlab's below, one registered with `register_code`, one an installed package
declares under the entry-point group `genlab.sae_codes`, or a 'package.module:Class' path.

    ReLU        relu(pre); L1 penalty (Σ_j |f_j|·‖W_dec,j‖)
    TopK        ReLU of the k largest pre-activations of each row (Gao et al. 2024)
    BatchTopK   the k·n largest of the batch's n rows in training, a learned threshold at
                inference (Bussmann et al. 2024)
    JumpReLU    z·H(z − θ_j) with a learned threshold per latent, L0 penalty through
                straight-through estimators (Rajamanoharan et al. 2024)
    MatryoshkaBatchTopK  BatchTopK, each of the nested prefixes of the dictionary also
                reconstructing the input (Bussmann et al. 2025; Nabeshima 2024)
    Sigmoid     sigmoid(pre): the classic image sparse AE's KL-ρ code (its penalty is the
                family's, on the units' mean rates)

Everything here is a pure function of arrays: the SAE module (`genlab.sae.model`) declares
a code's parameters, the family calls its functions in its objective.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from genlab.errors import ConfigError
from genlab.models.conv_ae import activation_fn
from genlab.registry import Registry

NEVER = 2**30  # Cap of the examples-since-fired count, far from int32 overflow.


# Top-k and JumpReLU: the maths --------------------------------------------------------


def kth_largest_relu(x: jax.Array, k: jax.Array | int, *, axis: int | None = None) -> jax.Array:
  """The k-th largest value of relu(x) over `axis` (None: the whole array; k may be traced),
  exactly, kept dims: a bisection on the values' float32 bit patterns, which order like the
  values for x ≥ 0. 31 counting passes, no sort: on every backend it is cheap, and on
  XLA:CPU 5–20× faster than `lax.top_k` for SAE widths."""
  x = jax.lax.stop_gradient(jax.nn.relu(x.astype(jnp.float32)))
  bits = jax.lax.bitcast_convert_type(x, jnp.int32)
  shape = (
    () if axis is None else tuple(1 if a == axis % x.ndim else n for a, n in enumerate(x.shape))
  )
  lo = jnp.zeros(shape, jnp.int32)  # Invariant: count(bits ≥ lo) ≥ k > count(bits > hi).
  hi = jnp.full(shape, 0x7F800000, jnp.int32)  # +inf.

  def halve(_, bounds):
    lo, hi = bounds
    mid = lo + (hi - lo + 1) // 2
    enough = jnp.sum(bits >= mid, axis=axis, keepdims=axis is not None) >= k
    return jnp.where(enough, mid, lo), jnp.where(enough, hi, mid - 1)

  lo, _ = jax.lax.fori_loop(0, 31, halve, (lo, hi))
  return jax.lax.bitcast_convert_type(lo, jnp.float32)


def keep_top_k(pre: jax.Array, k: int) -> jax.Array:
  """ReLU of the k largest entries of each row of `pre`; every other entry 0."""
  threshold = kth_largest_relu(pre, k, axis=-1)
  return jnp.where(pre >= threshold, jax.nn.relu(pre), 0.0)


def batch_top_k(pre: jax.Array, k: int, weights: jax.Array) -> tuple[jax.Array, jax.Array]:
  """BatchTopK (Bussmann et al. 2024): ReLU of the k·n largest entries of the whole batch
  `pre` (rows × units), n the rows with `weights` > 0 (the others get none); every other
  entry 0. Returns (the code, the smallest kept value: the batch's threshold)."""
  valid = (weights > 0)[:, None]
  n = jnp.sum(weights > 0)
  threshold = kth_largest_relu(jnp.where(valid, pre, 0.0), jnp.maximum(k * n, 1))
  keep = valid & (pre >= threshold)
  return jnp.where(keep, jax.nn.relu(pre), 0.0), threshold


def rectangle(u: jax.Array) -> jax.Array:
  """The kernel of JumpReLU's pseudo-derivatives: 1 on (−½, ½), else 0."""
  return ((u > -0.5) & (u < 0.5)).astype(u.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def jump_relu(z: jax.Array, threshold: jax.Array, bandwidth: float) -> jax.Array:
  """JumpReLU(z) = z·H(z − θ), θ per unit (the last axis). Its gradient (Rajamanoharan et
  al. 2024, eq. 11): ∂/∂z = H(z − θ); ∂/∂θ = −(θ/ε)·K((z − θ)/ε), K = `rectangle`, ε =
  `bandwidth` (the true ∂/∂θ is 0 almost everywhere)."""
  return z * (z > threshold)


def _jump_relu_fwd(z, threshold, bandwidth):
  return jump_relu(z, threshold, bandwidth), (z, threshold)


def _jump_relu_bwd(bandwidth, residuals, g):
  z, threshold = residuals
  dz = g * (z > threshold)
  dtheta = g * (-threshold / bandwidth) * rectangle((z - threshold) / bandwidth)
  return dz, jnp.sum(dtheta, axis=tuple(range(dtheta.ndim - threshold.ndim)))


jump_relu.defvjp(_jump_relu_fwd, _jump_relu_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def heaviside_step(z: jax.Array, threshold: jax.Array, bandwidth: float) -> jax.Array:
  """H(z − θ), what the JumpReLU L0 penalty counts, with the paper's pseudo-derivatives
  (eq. 12): ∂/∂z = 0; ∂/∂θ = −(1/ε)·K((z − θ)/ε)."""
  return (z > threshold).astype(z.dtype)


def _step_fwd(z, threshold, bandwidth):
  return heaviside_step(z, threshold, bandwidth), (z, threshold)


def _step_bwd(bandwidth, residuals, g):
  z, threshold = residuals
  dtheta = g * (-1.0 / bandwidth) * rectangle((z - threshold) / bandwidth)
  return jnp.zeros_like(z), jnp.sum(dtheta, axis=tuple(range(dtheta.ndim - threshold.ndim)))


heaviside_step.defvjp(_step_fwd, _step_bwd)


def auxk_reconstruction_error(
  target: jax.Array,
  logits: jax.Array,
  pre: jax.Array,
  dead: jax.Array,
  decoder_kernel: jax.Array,
  *,
  aux_k: int,
  output_activation: str = "none",
) -> jax.Array:
  """Gao et al.'s AuxK term, per example: ½·Σ_outputs (x − f(sg(logits) + z_aux·W_dec))².

  z_aux keeps the ReLU of the `aux_k` largest pre-activations among `dead` units (a bool per
  unit) and is 0 elsewhere; `logits` are the main reconstruction's decoder outputs, held
  fixed, and f is the output activation. With f the identity this is ½‖e − z_aux·W_dec‖², e
  = x − x̂ the main reconstruction's residual, as in the paper; the gradient flows only into
  the dead units' encoder weights and decoder rows. With no dead unit it is the main
  reconstruction error, with no gradient.
  """
  z_aux = keep_top_k(jnp.where(dead, pre, -jnp.inf), aux_k)
  correction = (z_aux @ decoder_kernel).reshape(logits.shape)
  output = activation_fn(output_activation)(jax.lax.stop_gradient(logits) + correction)
  return 0.5 * jnp.sum((target - output) ** 2, axis=tuple(range(1, target.ndim)))


# The codes -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Code:
  """One SAE architecture's code. Subclasses set `name` and override what differs; their
  dataclass fields are the module's fields they read (`k`, `threshold_init`, ...), taken by
  `Code.of(module)`.

  The contract (all pure functions of arrays, under jit):

  * `parameters(code_dim)`: the code's own learned parameters, `{name: (init, shape)}`,
    declared by the SAE module beside its encoder and decoder (JumpReLU's `log_threshold`).
  * `initial_stats(code_dim)`: the untrained state it keeps (BatchTopK's threshold).
  * `activate(pre, params, stats, weights, *, train)`: (the latents, new stats or None).
    `params` are the module's parameters, `weights` each row's weight (0: padding).
  * `penalty_sum(params, latents, pre, weights, options)`: the sparsity penalty summed over
    the rows, each times its weight (`options`: the family's group, `l1`, `l0`, ...).
  * `reconstruction_error(squared, x, latents, params)`: each row's reconstruction term of
    the objective, given `squared`, its full reconstruction's Σ_d (x − x̂)² (Matryoshka adds
    those of its nested prefixes of the decoder's rows).
  * `inference_threshold(params, stats)`: a threshold per latent if the code is a
    JumpReLU at inference (what SAELens' format calls `threshold`), else None.
  * `check(code_dim)`: raises `genlab.errors.ConfigError` (one line) on field values that
    cannot work with `code_dim` latents; called when the family is built.
  """

  name: ClassVar[str] = ""
  # How sparsity is bought: "penalty" (L1, L0: `sae.l1`, `sae.l0`) or "k" (the k largest).
  sparsity: ClassVar[str] = "penalty"
  # Whether AuxK's dead-latent loss applies (codes that never update unselected latents).
  takes_aux_k: ClassVar[bool] = False

  @classmethod
  def of(cls, module: Any) -> Code:
    """The code with `module`'s values of its fields."""
    return cls(**{f.name: getattr(module, f.name) for f in dataclasses.fields(cls)})

  def parameters(self, code_dim: int) -> dict[str, tuple[Callable, tuple[int, ...]]]:
    return {}

  def initial_stats(self, code_dim: int) -> dict[str, jax.Array]:
    return {}

  def activate(self, pre, params, stats, weights, *, train: bool):
    raise NotImplementedError

  def penalty_sum(self, params, latents, pre, weights, options) -> jax.Array:
    return jnp.zeros(())

  def reconstruction_error(self, squared, x, latents, params) -> jax.Array:
    return squared

  def inference_threshold(self, params, stats) -> jax.Array | None:
    return None

  def check(self, code_dim: int) -> None:
    pass


@dataclasses.dataclass(frozen=True)
class Sigmoid(Code):
  """sigmoid(pre): the classic sparse AE's units (Ng's notes), made sparse by the image
  family's KL-ρ penalty on their mean rates."""

  name: ClassVar[str] = "sigmoid"

  def activate(self, pre, params, stats, weights, *, train):
    return jax.nn.sigmoid(pre), None


@dataclasses.dataclass(frozen=True)
class ReLU(Code):
  """relu(pre), with the L1 penalty `sae.l1` · Σ_j |f_j|·‖W_dec,j‖ (the decoder rows' norms
  with `sae.l1_decoder_norm`, else Σ_j |f_j|)."""

  name: ClassVar[str] = "relu"

  def activate(self, pre, params, stats, weights, *, train):
    return jax.nn.relu(pre), None

  def penalty_sum(self, params, latents, pre, weights, options):
    magnitude = jnp.abs(latents)
    if options.l1_decoder_norm:
      magnitude = magnitude * jnp.linalg.norm(params["decoder"]["kernel"], axis=1)
    return options.l1 * jnp.sum(magnitude * weights[:, None])


@dataclasses.dataclass(frozen=True)
class TopK(Code):
  """ReLU of the `k` largest pre-activations of each row, the others 0 (Gao et al. 2024)."""

  name: ClassVar[str] = "topk"
  sparsity: ClassVar[str] = "k"
  takes_aux_k: ClassVar[bool] = True
  k: int = 8

  def activate(self, pre, params, stats, weights, *, train):
    return keep_top_k(pre, self.k), None


@dataclasses.dataclass(frozen=True)
class BatchTopK(Code):
  """In training the ReLU of the k·n largest pre-activations of the batch's n rows (k per
  row on average); at inference those above a threshold, the running mean of the
  batches' smallest kept values (EMA with `sae.threshold_decay`, kept in `stats`)."""

  name: ClassVar[str] = "batchtopk"
  sparsity: ClassVar[str] = "k"
  takes_aux_k: ClassVar[bool] = True
  k: int = 8
  threshold_decay: float = 0.99

  def initial_stats(self, code_dim):
    return {"threshold": jnp.zeros(()), "threshold_updates": jnp.zeros((), jnp.int32)}

  def activate(self, pre, params, stats, weights, *, train):
    if not train:
      return jnp.where(pre > stats["threshold"], jax.nn.relu(pre), 0.0), None
    latents, threshold = batch_top_k(pre, self.k, weights)
    updates = stats["threshold_updates"]
    decay = jnp.where(updates == 0, 0.0, self.threshold_decay)
    new = {
      "threshold": decay * stats["threshold"] + (1 - decay) * jax.lax.stop_gradient(threshold),
      "threshold_updates": updates + 1,
    }
    return latents, new

  def inference_threshold(self, params, stats):
    return jnp.full(params["encoder"]["bias"].shape, stats["threshold"])


@dataclasses.dataclass(frozen=True)
class MatryoshkaBatchTopK(BatchTopK):
  """BatchTopK whose dictionary's nested prefixes (the first `matryoshka_widths[g]`
  latents) each reconstruct the input too: the squared error is Σ_g Σ_d (x − b_dec −
  Σ_{j<m_g} f_j·W_dec,j)², over the widths and the whole dictionary (Bussmann et al. 2025,
  "Learning Multi-Level Features with Matryoshka Sparse Autoencoders"; as SAELens'
  MatryoshkaBatchTopKTrainingSAE and dictionary_learning train it). The latents are those
  of BatchTopK; at inference it is a BatchTopK."""

  name: ClassVar[str] = "matryoshka_batchtopk"
  matryoshka_widths: Sequence[int] = ()

  def check(self, code_dim):
    widths = [int(w) for w in self.matryoshka_widths]
    increasing = all(a < b for a, b in zip(widths, widths[1:], strict=False))
    if not widths or not increasing or widths[0] < 1 or widths[-1] > code_dim:
      raise ConfigError(
        f"config.model.matryoshka_widths={tuple(self.matryoshka_widths)} must be strictly "
        f"increasing widths in 1..code_dim={code_dim} (the last may be code_dim, the whole)"
      )

  def reconstruction_error(self, squared, x, latents, params):
    code_dim = latents.shape[-1]
    kernel = params["decoder"]["kernel"].astype(latents.dtype)
    decoded = jnp.broadcast_to(params["decoder"]["bias"], x.shape).astype(jnp.float32)
    total, start = squared, 0
    for width in (int(w) for w in self.matryoshka_widths if int(w) < code_dim):
      # The whole dictionary's error is `squared`; each inner prefix adds its own.
      decoded = decoded + (latents[:, start:width] @ kernel[start:width]).astype(jnp.float32)
      total = total + jnp.sum((x - decoded) ** 2, axis=-1)
      start = width
    return total


@dataclasses.dataclass(frozen=True)
class JumpReLU(Code):
  """z·H(z − θ_j) on z = relu(pre), a learned threshold θ_j per latent (as log θ_j, in
  float32 whatever the computation's dtype: in bf16 its small updates round away), with
  the L0 penalty `sae.l0` · Σ_j H(z_j − θ_j) through the paper's straight-through estimators
  of bandwidth ε (Rajamanoharan et al. 2024)."""

  name: ClassVar[str] = "jumprelu"
  threshold_init: float = 1e-3
  bandwidth: float = 1e-3

  def parameters(self, code_dim):
    return {"log_threshold": (nn.initializers.constant(math.log(self.threshold_init)), (code_dim,))}

  def activate(self, pre, params, stats, weights, *, train):
    return jump_relu(jax.nn.relu(pre), jnp.exp(params["log_threshold"]), self.bandwidth), None

  def penalty_sum(self, params, latents, pre, weights, options):
    active = heaviside_step(jax.nn.relu(pre), jnp.exp(params["log_threshold"]), self.bandwidth)
    return options.l0 * jnp.sum(active * weights[:, None])

  def inference_threshold(self, params, stats):
    return jnp.exp(params["log_threshold"])


def _check_code(name: str, target: Any) -> None:
  if not (isinstance(target, type) and issubclass(target, Code)):
    raise ConfigError(
      f"SAE code {name!r} is {target!r}, not a subclass of genlab.sae.Code (docs/families/"
      "sparse_ae.md)"
    )


CODES = Registry(
  "SAE code",
  field="config.model.code",
  group="genlab.sae_codes",
  builtins={
    code.name: f"genlab.sae.codes:{code.__name__}"
    for code in (Sigmoid, ReLU, TopK, BatchTopK, MatryoshkaBatchTopK, JumpReLU)
  },
  check=_check_code,
)


def register_code(name: str, code: type[Code] | str | None = None, *, replace: bool = False):
  """Registers a `Code` subclass under `name`, for `config.model.code`; with no `code`, a
  class decorator."""
  return CODES.register(name, code, replace=replace)


__all__ = [
  "CODES",
  "NEVER",
  "BatchTopK",
  "Code",
  "JumpReLU",
  "MatryoshkaBatchTopK",
  "ReLU",
  "Sigmoid",
  "TopK",
  "auxk_reconstruction_error",
  "batch_top_k",
  "heaviside_step",
  "jump_relu",
  "keep_top_k",
  "kth_largest_relu",
  "rectangle",
  "register_code",
]
