"""Reading and replacing one intermediate activation of any Flax (linen) model.

An SAE for interpretability trains on a network's internal activations (the
residual stream after a transformer block, an MLP's hidden layer) and is judged by
what the network does when that activation is replaced by the SAE's
reconstruction. Two pure functions do both for any `flax.linen` model, under jit:

* `capture(model, variables, layer, *args)` → (the model's output, the activation):
  `layer` names a submodule by its path (`'block_1'`, `'encoder/block_1'`), read
  with `capture_intermediates`; or, as `'intermediates/<path>/<name>'`, a value the
  model `sow`s.
* `splice(model, variables, layer, replace, *args)` → the model's output when the
  module at `layer` returns `replace(its output)` instead (`flax.linen.intercept_methods`).

`HostModel` bundles what an SAE family needs of its host: the model, its params,
the layer, how a data batch becomes the model's arguments, which positions are
examples, and the host's own loss per position.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax

from genlab.errors import ConfigError

SOWN = "intermediates/"


def _path(layer: str) -> tuple[str, ...]:
  return tuple(part for part in layer.split("/") if part)


def capture(model: nn.Module, variables: Any, layer: str, *args, **kwargs) -> tuple[Any, Any]:
  """(model.apply(variables, *args, **kwargs), the activation named `layer`).

  Args:
    model: a linen module.
    variables: its variables (`{'params': ...}`).
    layer: a submodule's path (its `__call__` output is read), or
      `'intermediates/<module path>/<name>'` for a value sown with `self.sow('intermediates',
      name, value)` (its last sown value).
  """
  if layer.startswith(SOWN):
    *module, name = _path(layer.removeprefix(SOWN))
    output, state = model.apply(variables, *args, mutable=["intermediates"], **kwargs)
    tree = state["intermediates"]
    for part in (*module, name):
      if part not in tree:
        raise ConfigError(f"layer {layer!r}: the model sows no {part!r} there; it sows {tree}")
      tree = tree[part]
    return output, tree[-1] if isinstance(tree, tuple) else tree
  path = _path(layer)
  output, state = model.apply(
    variables,
    *args,
    capture_intermediates=lambda m, method: method == "__call__" and m.path == path,
    mutable=["intermediates"],
    **kwargs,
  )
  tree = state.get("intermediates", {})
  for part in path:
    if part not in tree:
      raise ConfigError(f"layer {layer!r}: the model has no submodule at that path")
    tree = tree[part]
  return output, tree["__call__"][0]


def splice(
  model: nn.Module,
  variables: Any,
  layer: str,
  replace: Callable[[jax.Array], jax.Array],
  *args,
  **kwargs,
) -> Any:
  """The model's output when the submodule at path `layer` returns `replace(its output)`."""
  if layer.startswith(SOWN):
    raise ConfigError(
      f"layer {layer!r} is a sown value: it can be read, not replaced; name the module "
      "whose output it is instead"
    )
  path = _path(layer)
  found = []

  def interceptor(next_fun, call_args, call_kwargs, context):
    output = next_fun(*call_args, **call_kwargs)
    if context.method_name == "__call__" and context.module.path == path:
      found.append(True)
      return replace(output)
    return output

  with nn.intercept_methods(interceptor):
    output = model.apply(variables, *args, **kwargs)
  if not found:
    raise ConfigError(f"layer {layer!r}: the model has no submodule at that path")
  return output


@dataclasses.dataclass(frozen=True)
class HostModel:
  """A trained model whose activation at `layer` an SAE reads, and what it needs of it.

  Attributes:
    model: the linen module.
    params: its trained params.
    layer: where the SAE reads (see `capture`); activations are (..., positions, width) or
      (..., width).
    inputs: a data batch → the model's positional arguments.
    positions: a data batch → (B, P) weights, 1 where a position's activation is an SAE
      example (valid, not skipped), 0 elsewhere; P the activation's positions axis (1 if it
      has none).
    token_loss: (the model's output, the batch) → ((B, P') loss per position, (B, P')
      weights where it counts): the host's own loss, for the loss recovered.
    description: a line for eval.json's protocol (which model, which checkpoint).
    identity: what pins these exact parameters (the run layer fills it: the host workdir's
      checkpoint step and a SHA-256 of the parameters), recorded in the SAE's workdir so
      that a resume or `genlab eval` uses the same host or refuses.
  """

  model: nn.Module
  params: Any
  layer: str
  inputs: Callable[[dict[str, jax.Array]], tuple]
  positions: Callable[[dict[str, jax.Array]], jax.Array]
  token_loss: Callable[[Any, dict[str, jax.Array]], tuple[jax.Array, jax.Array]]
  description: str = ""
  identity: dict = dataclasses.field(default_factory=dict)

  def capture(self, batch: dict[str, jax.Array], params: Any = None) -> tuple[Any, jax.Array]:
    """(the model's output, its activation at `layer`) on `batch`, with `params` (default:
    `self.params`; a compiled step passes them as an argument, not as constants)."""
    variables = {"params": self.params if params is None else params}
    return capture(self.model, variables, self.layer, *self.inputs(batch))

  def splice(
    self,
    batch: dict[str, jax.Array],
    replace: Callable[[jax.Array], jax.Array],
    params: Any = None,
  ) -> Any:
    """The model's output on `batch` with the activation at `layer` replaced."""
    variables = {"params": self.params if params is None else params}
    return splice(self.model, variables, self.layer, replace, *self.inputs(batch))


def as_rows(activation: jax.Array) -> jax.Array:
  """(B, [P,] width) → (B·P, width): every position an example."""
  if activation.ndim == 2:
    return activation
  return activation.reshape(-1, activation.shape[-1])


__all__ = ["HostModel", "as_rows", "capture", "splice"]
