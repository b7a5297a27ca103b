"""An SAE's evaluation: how well it reconstructs, how sparse it is, what the host loses.

On every example position of the eval split: `mse` (per dimension), `fvu` = Σ‖x − x̂‖² /
Σ‖x − x̄‖² and `explained_variance` = 1 − fvu, `l0`, `dead_fraction` (latents never active
over the split's positions), `dense_fraction` (active on more than `dense_above` of them),
and the host's loss with the layer replaced by the SAE's reconstruction (`loss_sae`)
against the clean loss and zero-ablation: `loss_recovered` = (L_zero − L_sae) / (L_zero −
L_clean), and `kl_sae` (KL of the spliced output distribution from the clean one, nats
per predicted token). The eval step gives sums (`set_eval_sums`, of one SAE or of a set
from the host's shared passes), `summarize` the ratios.

A transcoder (`output_layer`) is judged the same way on what it reconstructs: the output
layer's activation (mse, fvu), spliced in place of that layer's output.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from genlab.errors import ConfigError
from genlab.sae.source import ActivationSource
from genlab.sae.training import SAEObjective

DEFINITIONS = {
  "loss": "the objective on the test positions (BatchTopK at its inference threshold)",
  "mse": "squared error per dimension of the normalised activation, mean over positions",
  "fvu": "fraction of variance unexplained: Σ‖x − x̂‖² / Σ‖x − x̄‖² over the test "
  "positions, x̄ their mean (normalised activations)",
  "explained_variance": "1 − fvu",
  "l0": "mean number of active latents per test position",
  "dead_fraction": "fraction of latents never active over the test positions",
  "dense_fraction": "fraction of latents active on more than sae.dense_above of the test positions",
  "loss_clean": "the host's own loss, clean: its sum over every predicted token of the test "
  "split over their number (a mean over tokens, not over sequences as a language model's "
  "cross_entropy is)",
  "loss_sae": "the same loss with the layer's activation at the example positions "
  "replaced by the SAE's reconstruction",
  "loss_zero": "the same loss with that activation replaced by zeros (zero-ablation)",
  "loss_recovered": "(loss_zero − loss_sae) / (loss_zero − loss_clean)",
  "kl_sae": "KL(clean ‖ spliced) of the host's output distribution, nats per predicted token",
  "kl_zero": "KL(clean ‖ zero-ablated), nats per predicted token",
  "eval_positions": "example positions of the test split (the window of dead_fraction)",
}


def categorical_kl(clean_logits: jax.Array, other_logits: jax.Array) -> jax.Array:
  """KL(p_clean ‖ p_other) over the last axis, nats."""
  log_p = jax.nn.log_softmax(clean_logits.astype(jnp.float32), axis=-1)
  log_q = jax.nn.log_softmax(other_logits.astype(jnp.float32), axis=-1)
  return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)


def per_token(values: jax.Array, token_weights: jax.Array, what: str) -> jax.Array:
  """`values` (one per predicted token) in the shape of the host's token weights: a host
  whose outputs are (B, V) logits gives (B,) KLs where its `token_loss` gives (B, 1)
  weights, and a product of the two would broadcast to (B, B)."""
  if values.size != token_weights.size:
    raise ConfigError(
      f"the SAE's host gives {what} of shape {tuple(values.shape)} and token weights of "
      f"shape {tuple(token_weights.shape)} (HostModel.token_loss): one weight per predicted "
      "token is needed"
    )
  return values.reshape(token_weights.shape)


@dataclasses.dataclass(frozen=True)
class Judged:
  """One SAE of those an eval step judges together: its objective, parameters and state,
  the layer it reads and the one it reconstructs and splices (default: `layer`)."""

  objective: SAEObjective
  params: Any
  stats: Any
  layer: str
  output_layer: str | None = None


def set_eval_sums(
  source: ActivationSource,
  host_params: Any,
  batch: dict[str, jax.Array],
  saes: Sequence[Judged],
) -> list[dict[str, jax.Array]]:
  """Sums over the batch's example positions (and its sequences where `mask` is 1), of
  each of `saes`, sharing the host's passes: one clean pass reads every layer they read,
  and one zero-ablated pass serves every SAE that splices the same layer; each SAE's own
  splice is its own pass. A set of n SAEs on m output layers runs the host 1 + m + n
  times, not 3n."""
  host = source.host
  reads: list[str] = []
  for sae in saes:
    for name in (sae.layer, sae.output_layer or sae.layer):
      if name not in reads:
        reads.append(name)
  output, acts = host.capture_many(batch, reads, host_params)
  activation = dict(zip(reads, acts, strict=True))
  zeroed: dict[str, Any] = {}  # The host's output with a layer zero-ablated, by layer.
  out = []
  for sae in saes:
    layer, output_layer = sae.layer, sae.output_layer or sae.layer
    act = activation[output_layer]  # What is reconstructed and replaced.
    x = source.normalized(activation[layer], layer)
    target = x if output_layer == layer else source.normalized(act, output_layer)
    positions = host.positions(batch)
    rows_per_example = x.shape[0] // batch["mask"].shape[0]
    weights = positions.reshape(-1) * jnp.repeat(batch["mask"], rows_per_example)
    x_hat, code, pre, _ = sae.objective.reconstruct(sae.params, x, weights, sae.stats, train=False)
    w = weights[:, None]
    active = (code > 0) * w
    sums = {
      "positions": jnp.sum(weights),
      "penalty": sae.objective.code.penalty_sum(
        sae.params, code, pre, weights, sae.objective.options
      ),
      "squared_error": jnp.sum((target - x_hat) ** 2 * w),
      "x_sum": jnp.sum(target * w, axis=0),
      "x_squared": jnp.sum(target**2 * w),
      "active": jnp.sum(active),
      "latent_active": jnp.sum(active, axis=0),
    }
    # The host with the layer replaced at the example positions (denormalised x̂), or zeroed.
    where = positions.reshape(*act.shape[:-1], 1) > 0
    x_hat_raw = source.denormalized(x_hat, act, output_layer)
    spliced = host.splice(
      batch,
      lambda a, x_hat_raw=x_hat_raw, where=where: jnp.where(where, x_hat_raw, a),
      host_params,
      layer=output_layer,
    )
    if output_layer not in zeroed:
      zeroed[output_layer] = host.splice(
        batch,
        lambda a, where=where: jnp.where(where, 0.0, a).astype(a.dtype),
        host_params,
        layer=output_layer,
      )
    _, token_weights = host.token_loss(output, batch)
    token_weights = token_weights * batch["mask"].reshape(-1, *[1] * (token_weights.ndim - 1))
    sums["tokens"] = jnp.sum(token_weights)
    for name, result in (("clean", output), ("sae", spliced), ("zero", zeroed[output_layer])):
      loss = per_token(host.token_loss(result, batch)[0], token_weights, "token losses")
      sums[f"loss_{name}"] = jnp.sum(loss * token_weights)
    for name, result in (("sae", spliced), ("zero", zeroed[output_layer])):
      clean, other = host.output_logits(output), host.output_logits(result)
      kl = per_token(categorical_kl(clean, other), token_weights, "output distributions")
      sums[f"kl_{name}"] = jnp.sum(kl * token_weights)
    out.append(sums)
  return out


def summarize(means: dict[str, Any], *, width: int, dense_above: float) -> dict[str, Any]:
  """Ratios of the eval step's sums (their means over sequences: the same ratios), and the
  latents' firing rates (`latent_rate`, for the views)."""
  n = float(means["positions"])
  tokens = float(means["tokens"])
  x_mean = np.asarray(means["x_sum"]) / n
  variance = float(means["x_squared"]) / n - float(np.sum(x_mean**2))
  fvu = float(means["squared_error"]) / n / variance
  latent_rate = np.asarray(means["latent_active"]) / n
  loss = {name: float(means[f"loss_{name}"]) / tokens for name in ("clean", "sae", "zero")}
  metrics = {
    "loss": (float(means["squared_error"]) + float(means["penalty"])) / n,
    "mse": float(means["squared_error"]) / n / width,
    "fvu": fvu,
    "explained_variance": 1.0 - fvu,
    "l0": float(means["active"]) / n,
    "dead_fraction": float(np.mean(latent_rate == 0)),
    "dense_fraction": float(np.mean(latent_rate > dense_above)),
    "loss_clean": loss["clean"],
    "loss_sae": loss["sae"],
    "loss_zero": loss["zero"],
    "loss_recovered": (loss["zero"] - loss["sae"]) / (loss["zero"] - loss["clean"]),
    "kl_sae": float(means["kl_sae"]) / tokens,
    "kl_zero": float(means["kl_zero"]) / tokens,
  }
  return metrics, latent_rate


__all__ = [
  "DEFINITIONS",
  "Judged",
  "categorical_kl",
  "per_token",
  "set_eval_sums",
  "summarize",
]
