"""An SAE's objective and its dead latents: pure functions of the SAE's parameters.

`SAEObjective` binds the SAE module, its code (`genlab.sae.codes`) and the options that
weigh the objective (`config.sae`): per position, Σ_d (x − x̂)² (the code's squared error)
plus the code's sparsity penalty, plus, with `aux_k` > 0 and a code that takes it, the AuxK
term of dead latents; a latent is dead after `dead_after` positions without firing. With
`resample_every`, the dead ones get new directions first (`resample_dead_latents`, Bricken
et al. 2023), their optimizer moments reset. With `unit_norm_decoder`, the decoder's rows
are put back on the unit sphere after every update.

A transcoder reconstructs another activation than the one it encodes: `target` (the
output of the module whose input is `x`) takes x's place in every reconstruction term.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

from genlab.core import stream_key
from genlab.sae.codes import NEVER, Code, auxk_reconstruction_error
from genlab.sae.model import SparseAutoencoder


@dataclasses.dataclass(frozen=True)
class SAEObjective:
  """The objective of `model` (its code `model.code_fn`) with the options `options`."""

  model: SparseAutoencoder
  options: Any  # config.sae: l1, l0, aux_k, aux_weight, dead_after, resample_*, ...
  tx: optax.GradientTransformation

  @property
  def code(self) -> Code:
    return self.model.code_fn

  def initial_stats(self) -> dict[str, jax.Array]:
    """The untrained state the objective keeps: each latent's positions since it fired, and
    the code's own (BatchTopK's threshold)."""
    stats = {"examples_since_fired": jnp.zeros((self.model.code_dim,), jnp.int32)}
    return stats | self.code.initial_stats(self.model.code_dim)

  def unit_norm(self, params):
    if not self.options.unit_norm_decoder:
      return params
    kernel = params["decoder"]["kernel"]
    norm = jnp.linalg.norm(kernel, axis=1, keepdims=True)
    return {**params, "decoder": {**params["decoder"], "kernel": kernel / jnp.maximum(norm, 1e-8)}}

  def reconstruct(self, params, x, weights, stats, *, train: bool):
    """(x̂, latents, pre-activations, the code's new stats or None)."""
    apply = self.model.apply
    pre = apply({"params": params}, x, method="pre_activations")
    latents, new = self.code.activate(pre, params, stats, weights, train=train)
    return apply({"params": params}, latents, method="decode"), latents, pre, new

  def __call__(self, params, x, weights, stats, *, train: bool, target=None):
    """(the objective, its parts, the new stats); `target` (a transcoder's output rows)
    is what is reconstructed, `x` by default."""
    target = x if target is None else target
    count = jnp.maximum(jnp.sum(weights), 1.0)

    def mean(per_row):
      return jnp.sum(per_row * weights) / count

    x_hat, latents, pre, code_stats = self.reconstruct(params, x, weights, stats, train=train)
    code = self.code
    squared = jnp.sum((target - x_hat) ** 2, axis=1)
    parts = {"mse": mean(squared) / target.shape[1]}
    fired = latents > 0
    parts["l0"] = mean(jnp.sum(fired, axis=1))
    o = self.options
    penalty = code.penalty_sum(params, latents, pre, weights, o) / count
    since = stats["examples_since_fired"]
    dead = since >= o.dead_after
    if o.aux_k:
      aux = auxk_reconstruction_error(
        target, x_hat, pre, dead, params["decoder"]["kernel"], aux_k=o.aux_k
      )
      parts["aux_loss"] = mean(aux)
      penalty = penalty + o.aux_weight * parts["aux_loss"]
    parts["sparsity_penalty"] = penalty
    parts["dead_latents"] = jnp.mean(dead)
    new = dict(stats)
    fired_any = jnp.sum(fired * weights[:, None], axis=0) > 0
    new["examples_since_fired"] = jnp.where(
      fired_any, 0, jnp.minimum(since + jnp.sum(weights).astype(jnp.int32), NEVER)
    )
    if code_stats is not None:
      new.update(code_stats)
    return mean(code.reconstruction_error(squared, target, latents, params)) + penalty, parts, new

  def resample(self, state, x, weights, key, part: str = "model", target=None):
    """`state` with its dead latents resampled from the rows `x` (and a transcoder's
    `target` rows) if `state.step` is a positive multiple of `resample_every` (else
    unchanged), and how many were."""
    o = self.options
    params, stats = state.params[part], state.stats[part]
    dead = stats["examples_since_fired"] >= o.dead_after
    due = (state.step > 0) & (state.step % o.resample_every == 0) & jnp.any(dead)

    def resample(parts):
      params, opt_state, since = parts
      x_hat, _, _, _ = self.reconstruct(params, x, weights, stats, train=False)
      reference = x if target is None else target
      loss = jnp.sum((reference - x_hat) ** 2, axis=1) * weights
      log_threshold = math.log(self.model.threshold_init) if "log_threshold" in params else None
      params, reset = resample_dead_latents(
        stream_key(key, "resample"),
        params,
        x,
        loss,
        dead,
        o.resample_encoder_scale,
        log_threshold,
        target=target,
      )
      opt_state = optax.tree_utils.tree_map_params(
        self.tx, reset_moments, opt_state, reset, transform_non_params=lambda leaf: leaf
      )
      return params, opt_state, jnp.where(dead, 0, since)

    parts = (params, state.opt_state[part], stats["examples_since_fired"])
    params, opt_state, since = jax.lax.cond(due, resample, lambda parts: parts, parts)
    state = state.replace(
      params={**state.params, part: params},
      opt_state={**state.opt_state, part: opt_state},
      stats={**state.stats, part: {**stats, "examples_since_fired": since}},
    )
    return state, jnp.where(due, jnp.sum(dead), 0)


def resample_dead_latents(
  key: jax.Array,
  params: dict,
  x: jax.Array,
  loss: jax.Array,
  dead: jax.Array,
  encoder_scale: float = 0.2,
  log_threshold: float | None = None,
  *,
  target: jax.Array | None = None,
) -> tuple[dict, dict]:
  """Dead latents given new directions (Bricken et al. 2023, "Towards Monosemanticity",
  neuron resampling).

  For each dead latent j a row x_i of `x` (n, d) is drawn with probability ∝ `loss[i]`²
  (rows of zero loss, e.g. padding, are never drawn; uniformly among the rows when every
  loss is zero); with u = x_i/‖x_i‖, the decoder row j becomes u, the encoder column j
  `encoder_scale` · (mean norm of the live latents' encoder columns) · u, and the encoder
  bias j zero; with `log_threshold` (JumpReLU's log θ at initialisation), its threshold
  restarts there. A transcoder's decoder row is the unit direction of the same row of its
  `target` (its output), its encoder column that of x_i.

  Returns:
    `(params, reset)`: the new params, and a tree of the params' structure whose entries
    are True where a value was replaced (to reset the optimizer's moments there).
  """
  encoder, decoder = params["encoder"], params["decoder"]
  weights = loss.astype(jnp.float32) ** 2
  weights = jnp.where(jnp.sum(weights) > 0, weights, (loss >= 0).astype(jnp.float32))
  rows = jax.random.choice(key, x.shape[0], (dead.shape[0],), p=weights / jnp.sum(weights))

  def unit_rows(chosen):
    return chosen / jnp.maximum(jnp.linalg.norm(chosen, axis=1, keepdims=True), 1e-8)

  unit = unit_rows(x[rows])
  unit_out = unit if target is None else unit_rows(target[rows])
  norms = jnp.linalg.norm(encoder["kernel"], axis=0)
  live = ~dead
  live_norm = jnp.sum(norms * live) / jnp.maximum(jnp.sum(live), 1)
  live_norm = jnp.where(jnp.any(live), live_norm, 1.0)
  new = {
    **params,
    "encoder": {
      "kernel": jnp.where(
        dead[None, :],
        (encoder_scale * live_norm * unit.T).astype(encoder["kernel"].dtype),
        encoder["kernel"],
      ),
      "bias": jnp.where(dead, 0.0, encoder["bias"]).astype(encoder["bias"].dtype),
    },
    "decoder": {
      **decoder,
      "kernel": jnp.where(
        dead[:, None], unit_out.astype(decoder["kernel"].dtype), decoder["kernel"]
      ),
    },
  }
  reset = jax.tree.map(lambda leaf: jnp.zeros(leaf.shape, bool), params)
  reset["encoder"] = {
    "kernel": jnp.broadcast_to(dead[None, :], encoder["kernel"].shape),
    "bias": dead,
  }
  reset["decoder"] = {
    **reset["decoder"],
    "kernel": jnp.broadcast_to(dead[:, None], decoder["kernel"].shape),
  }
  if log_threshold is not None:
    new["log_threshold"] = jnp.where(dead, log_threshold, params["log_threshold"])
    reset["log_threshold"] = dead
  return new, reset


def reset_moments(moment: jax.Array, mask: jax.Array) -> jax.Array:
  """An optimizer's per-entry moment (Adam's m or v) zeroed where `mask`; a state of
  another shape (factored or per-tensor: Adafactor, NovoGrad) is left as it is."""
  if moment.shape != mask.shape:
    return moment
  return jnp.where(mask, jnp.zeros_like(moment), moment)


__all__ = ["SAEObjective", "reset_moments", "resample_dead_latents"]
