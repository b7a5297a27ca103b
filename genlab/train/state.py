"""The training state every family shares.

Parameters and optimizer states are dicts keyed by the part they belong to:
autoencoders have one part, `model`; a GAN has `generator` and `discriminator`,
each with its own optimizer. The step counter belongs to the trainer: families
call `apply_gradients` for the parts they update, and the runner increments
`step` once per train step (`genlab.train.parallel`).
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
  """Step, per-part parameters and optimizer states, and the (static) optimizers.

  Attributes:
    step: number of train steps taken (int32 scalar); keys derive from it.
    params: part name → parameters.
    opt_state: part name → optimizer state.
    tx: part name → optax transformation (static: not saved, not traced).
  """

  step: jax.Array
  params: dict[str, Any]
  opt_state: dict[str, Any]
  tx: FrozenDict = struct.field(pytree_node=False)

  @classmethod
  def create(
    cls, *, params: Mapping[str, Any], tx: Mapping[str, optax.GradientTransformation]
  ) -> TrainState:
    """A state at step 0 with each part's optimizer initialised on its params."""
    if set(params) != set(tx):
      raise ValueError(f"params parts {sorted(params)} differ from optimizer parts {sorted(tx)}")
    return cls(
      step=jnp.zeros((), jnp.int32),
      params=dict(params),
      opt_state={name: tx[name].init(p) for name, p in params.items()},
      tx=FrozenDict(tx),
    )

  def apply_gradients(self, grads: Mapping[str, Any]) -> TrainState:
    """Updates the named parts with their gradients; other parts are untouched."""
    params, opt_state = dict(self.params), dict(self.opt_state)
    for name, g in grads.items():
      updates, opt_state[name] = self.tx[name].update(g, self.opt_state[name], self.params[name])
      params[name] = optax.apply_updates(self.params[name], updates)
    return self.replace(params=params, opt_state=opt_state)


def make_optimizer(config) -> optax.GradientTransformation:
  """An optax optimizer from a config (`name`, `learning_rate`, optional
  `b1`, `b2`, `weight_decay`, `grad_clip_norm`, `warmup_steps`)."""
  from genlab.errors import ConfigError

  kwargs = {}
  for field in ("b1", "b2", "weight_decay", "momentum", "eps"):
    if field in config and config[field] is not None:
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


def optimization_metrics(grads: Any, params: Any) -> dict[str, jax.Array]:
  """Global L2 norms of gradients and parameters, for the logs."""
  return {"grad_norm": optax.global_norm(grads), "param_norm": optax.global_norm(params)}
