"""The one gradient step every family's train step is built from.

A family gives a loss of one part's parameters; `gradient_step` does the rest,
the same way for every family and for each of a GAN's two networks:

    value_and_grad → metrics (loss, its parts, grad and param norms) → the part's
    optimizer update, made only if every metric is finite

Steps are written over the *global* batch: the runner compiles them with
`jax.jit` over a device mesh with the batch sharded over the devices, and XLA
adds the cross-device reductions (the mean of the loss over the global batch
becomes a per-device partial sum and an all-reduce). A family never averages
over devices itself, so a step means the same on one device as on many.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from genlab.core.state import TrainState, all_finite

Metrics = dict[str, jax.Array]


def gradient_step(
  state: TrainState,
  part: str,
  loss_fn: Callable[..., Any],
  *,
  prefix: str = "",
  has_stats: bool = False,
) -> tuple[TrainState, Metrics]:
  """One optimizer update of `state.params[part]` on the gradient of `loss_fn`.

  Args:
    state: the train state.
    part: the part to update (`model`, `generator`, `discriminator`, ...); every
      other part is left as it is.
    loss_fn: `params -> (loss, metrics)`, the scalar objective and a dict of
      scalar metrics (its parts, ...); with `has_stats`, `params -> (loss,
      (metrics, stats))`, where `stats` is the part's new untrained state
      (`state.stats[part]`), kept only when the step is finite.
    prefix: put before the names of the metrics this function adds (`loss`,
      `grad_norm`, `param_norm`), e.g. `d_` for a discriminator.
    has_stats: see `loss_fn`.

  Returns:
    The new state and the metrics: `{prefix}loss`, the loss function's metrics,
    `{prefix}grad_norm` and `{prefix}param_norm`. If any of them is NaN or Inf the
    state is returned unchanged (the runner then reports the step as non-finite).
  """
  params = state.params[part]
  (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  parts, stats = aux if has_stats else (aux, None)
  metrics = {f"{prefix}loss": loss, **parts}
  metrics.update({f"{prefix}{k}": v for k, v in optimization_metrics(grads, params).items()})
  finite = all_finite(metrics)
  new_state = state.apply_gradients({part: grads}, finite=finite)
  if has_stats:
    kept = jax.tree.map(lambda new, old: jnp.where(finite, new, old), stats, state.stats[part])
    new_state = new_state.replace(stats={**state.stats, part: kept})
  return new_state, metrics


def optimization_metrics(grads: Any, params: Any) -> dict[str, jax.Array]:
  """Global L2 norms of gradients and parameters, for the logs."""
  return {"grad_norm": optax.global_norm(grads), "param_norm": optax.global_norm(params)}


def masked_sum(values: jax.Array, mask: jax.Array) -> jax.Array:
  """Sum of per-example `values` over the examples where `mask` is 1, in float32: what
  an eval step returns, so that padded eval batches count each example once."""
  return jnp.sum(values.astype(jnp.float32) * mask)


__all__ = ["Metrics", "gradient_step", "masked_sum", "optimization_metrics"]
