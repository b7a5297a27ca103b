"""The training state every family shares, and the optimizers it is built with.

Parameters and optimizer states are dicts keyed by the part they belong to:
autoencoders have one part, `model`; a GAN has `generator` and `discriminator`,
each with its own optimizer. State that is updated but not trained (counters,
running statistics, power-iteration vectors) lives in `stats`, keyed by part
too, outside `params`: no optimizer sees it, and it is checkpointed and resumed
with the rest. The step counter belongs to the trainer: families update their
parts (`genlab.core.step.gradient_step`), and the runner increments `step` once
per train step (`genlab.run.runner`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct
from flax.core import FrozenDict


class TrainState(struct.PyTreeNode):
  """Step, per-part parameters, optimizer states and untrained state, and the optimizers.

  Attributes:
    step: number of train steps taken (int32 scalar); keys derive from it.
    params: part name → parameters (what the optimizers train).
    opt_state: part name → optimizer state.
    stats: part name → state that is updated but not trained (counters, running
      statistics); empty for most families.
    tx: part name → optax transformation (static: not saved, not traced).
  """

  step: jax.Array
  params: dict[str, Any]
  opt_state: dict[str, Any]
  stats: dict[str, Any]
  tx: FrozenDict = struct.field(pytree_node=False)

  @classmethod
  def create(
    cls,
    *,
    params: Mapping[str, Any],
    tx: Mapping[str, optax.GradientTransformation],
    stats: Mapping[str, Any] | None = None,
  ) -> TrainState:
    """A state at step 0 with each part's optimizer initialised on its params."""
    if set(params) != set(tx):
      raise ValueError(f"params parts {sorted(params)} differ from optimizer parts {sorted(tx)}")
    return cls(
      step=jnp.zeros((), jnp.int32),
      params=dict(params),
      opt_state={name: tx[name].init(p) for name, p in params.items()},
      stats=dict(stats or {}),
      tx=FrozenDict(tx),
    )

  def apply_gradients(
    self, grads: Mapping[str, Any], *, finite: jax.Array | None = None
  ) -> TrainState:
    """Updates the named parts with their gradients; other parts are untouched.

    The update is made only where `finite` (a bool scalar; by default, whether every
    gradient is finite) is true; otherwise these parts' params and optimizer states stay
    as they were. Families pass `finite=all_finite(metrics)`, their loss and grad norm
    included, so that a step whose loss or gradients are NaN/Inf changes nothing.

    The choice is a `lax.cond` around the update, so that XLA can write the new params
    and moments in place into the (donated) old ones. A `jnp.where(finite, new, old)`
    over the state needs the old values after the new ones are written, and XLA then
    copies every moment first: 0.7 ms of a 3.8 ms MLP-VAE step on a 2-core CPU.
    """
    finite = all_finite(grads) if finite is None else finite
    names = list(grads)

    def update(parts):
      params, opt_state = parts
      new_params, new_opt_state = {}, {}
      for name in names:
        updates, new_opt_state[name] = self.tx[name].update(
          grads[name], opt_state[name], params[name]
        )
        new_params[name] = optax.apply_updates(params[name], updates)
      return new_params, new_opt_state

    parts = ({n: self.params[n] for n in names}, {n: self.opt_state[n] for n in names})
    new_params, new_opt_state = jax.lax.cond(finite, update, lambda parts: parts, parts)
    return self.replace(
      params={**self.params, **new_params}, opt_state={**self.opt_state, **new_opt_state}
    )


def all_finite(tree: Any) -> jax.Array:
  """Whether every floating-point value in `tree` is finite (a bool scalar)."""
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
  if not leaves:
    return jnp.asarray(True)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def make_optimizer(config) -> optax.GradientTransformation:
  """An optax optimizer from a config (`name`, `learning_rate`, optional
  `b1`, `b2`, `weight_decay`, `grad_clip_norm`, `warmup_steps`)."""
  from genlab.errors import ConfigError

  kwargs = {}
  for field in ("b1", "b2", "weight_decay", "momentum", "eps"):
    if config.get(field) is not None:
      kwargs[field] = config[field]
  lr = config.learning_rate
  if config.get("warmup_steps"):
    lr = optax.linear_schedule(0.0, config.learning_rate, config.warmup_steps)
  factory = getattr(optax, config.name, None)
  if factory is None or not callable(factory):
    raise ConfigError(f"unknown optimizer {config.name!r}; use an optax name such as 'adam'")
  try:
    tx = factory(lr, **kwargs)
  except TypeError as e:
    raise ConfigError(f"optimizer {config.name!r} does not take {sorted(kwargs)}: {e}") from e
  if config.get("grad_clip_norm"):
    tx = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), tx)
  return tx
