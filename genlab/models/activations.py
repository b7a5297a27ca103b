"""Reading and replacing one intermediate activation of any Flax model, Linen or NNX.

An SAE for interpretability trains on a network's internal activations (the
residual stream after a transformer block, an MLP's hidden layer) and is judged by
what the network does when that activation is replaced by the SAE's
reconstruction. Two pure functions do both for any Flax model, under jit:

* `capture(model, variables, layer, *args)` → (the model's output, the activation;
  `capture_many` reads several in one pass):
  `layer` names a submodule by its path (`'block_1'`, `'encoder/block_1'`; in NNX,
  attribute names and list indices: `'blocks/0'`; `'layer_1[1]'` for element 1 of a module
  that returns a tuple, as a transformer block returning (cache, x) does), read with Linen's
  `capture_intermediates`, or in NNX sown as an `nnx.Intermediate` by the addressed
  module and collected with `nnx.capture`; `'block_1/mlp_in:input'` for a module's input
  (its first argument: what a transcoder encodes); or, as `'intermediates/<path>/<name>'`,
  a value the model `sow`s (Linen's `intermediates` collection, NNX's `nnx.Intermediate`).
* `splice(model, variables, layer, replace, *args)` → the model's output when the
  module at `layer` returns `replace(its output)` instead (Linen:
  `flax.linen.intercept_methods`; NNX: that one module of the merged copy calls through).

A module wrapped in `nn.jit` (Gemma's blocks) is read and replaced as a whole; its own
submodules cannot be addressed, as Flax traces identically shaped `nn.jit` modules once and
reuses the trace (and the paths inside it) for all of them.

An NNX model comes as a `genlab.core.NNXModel` (its params the pure dict of its
`nnx.Param`s): `HostModel` takes a constructed `nnx.Module` and makes one.

`HostModel` bundles what an SAE family needs of its host: the model, its params,
the layer, how a data batch becomes the model's arguments, which positions are
examples, and the host's own loss per position.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import re
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
from flax import nnx

from genlab.core.nnx_model import NNXModel
from genlab.errors import ConfigError

SOWN = "intermediates/"
GENLAB_INPUT = "genlab_input"  # What a module read with `':input'` sows: its first argument.
_CALLS = itertools.count()


def _fresh() -> str:
  """A mutable collection of a new name for each Linen call that captures or splices: a model
  whose methods are wrapped in `nn.jit` (Gemma's Transformer) reuses a trace whose scope it
  has seen, and an interceptor or a capture filter is not part of that key; the new name is
  (a new trace each time, once per compilation under an outer jit). It stays empty."""
  return f"genlab_call_{next(_CALLS)}"


def _path(layer: str) -> tuple[str, ...]:
  return tuple(part for part in layer.split("/") if part)


def _element(layer: str) -> tuple[str, int | None]:
  """`'layer_1[1]'` → ('layer_1', 1): the module's output is a tuple (a transformer block
  returning (cache, x), say) and the activation is its element 1; else (layer, None)."""
  match = re.fullmatch(r"(.*)\[(-?\d+)\]", layer)
  return (match.group(1), int(match.group(2))) if match else (layer, None)


def _pick(output: Any, index: int, layer: str) -> Any:
  if not isinstance(output, tuple | list) or not -len(output) <= index < len(output):
    raise ConfigError(
      f"layer {layer!r}: the module's output is {type(output).__name__}"
      f"{f' of {len(output)}' if isinstance(output, tuple | list) else ''}, which has no "
      f"element {index}"
    )
  return output[index]


def _put(output: Any, index: int, value: Any) -> Any:
  parts = list(output)
  parts[index] = value
  return type(output)(parts) if isinstance(output, list) else tuple(parts)


INPUT = ":input"  # `'<path>:input'`: the module's input (its first argument), not its output.


def _input(layer: str) -> tuple[str, bool]:
  """`'block_1/mlp_in:input'` → ('block_1/mlp_in', True); else (layer, False)."""
  return (layer.removesuffix(INPUT), True) if layer.endswith(INPUT) else (layer, False)


def capture(model: nn.Module, variables: Any, layer: str, *args, **kwargs) -> tuple[Any, Any]:
  """(model.apply(variables, *args, **kwargs), the activation named `layer`).

  Args:
    model: a linen module, or an NNX one as a `genlab.core.NNXModel`.
    variables: its variables (`{'params': ...}`).
    layer: a submodule's path (the output of its first `__call__` is read; with
      `':input'` after the path, that call's first argument: a transcoder reads an MLP's
      input), or `'intermediates/<module path>/<name>'` for a value sown with
      `self.sow('intermediates', name, value)` (Linen) or `self.sow(nnx.Intermediate, name,
      value)` (NNX): its last sown value.
  """
  output, (value,) = capture_many(model, variables, (layer,), *args, **kwargs)
  return output, value


def capture_many(
  model: nn.Module, variables: Any, layers: Sequence[str], *args, **kwargs
) -> tuple[Any, list[Any]]:
  """(model.apply(variables, *args, **kwargs), [the activation named by each of `layers`]),
  all from one pass of the model (see `capture` for the names)."""
  parsed = []
  for layer in layers:
    name, index = _element(layer)
    name, is_input = _input(name)
    if is_input and name.startswith(SOWN):
      raise ConfigError(f"layer {layer!r}: a sown value has no input; name a module")
    parsed.append((layer, name, index, is_input))
  if isinstance(model, NNXModel):
    values = _nnx_capture(model, variables, [(n, i) for _, n, _, i in parsed], *args, **kwargs)
  else:
    values = _linen_capture(model, variables, [(n, i) for _, n, _, i in parsed], *args, **kwargs)
  output, values = values
  picked = [
    value if index is None else _pick(value, index, layer)
    for (layer, _, index, _), value in zip(parsed, values, strict=True)
  ]
  return output, picked


def _linen_capture(model: nn.Module, variables: Any, reads, *args, **kwargs):
  """(output, [value of each (name, is_input) of `reads`]) of a linen model, one apply."""
  outputs = {_path(n) for n, is_input in reads if not is_input and not n.startswith(SOWN)}
  inputs = {_path(n) for n, is_input in reads if is_input}
  seen_inputs = set()

  def interceptor(next_fun, call_args, call_kwargs, context):
    # The module's input, sown in its own scope (a value kept in Python here would leak
    # a tracer out of a module wrapped in nn.jit); its first call only, like an output.
    path = context.module.path
    if context.method_name == "__call__" and path in inputs and path not in seen_inputs:
      seen_inputs.add(path)
      if not call_args:
        raise ConfigError(f"layer {'/'.join(path)}{INPUT}: the module is called with no argument")
      context.module.sow("intermediates", GENLAB_INPUT, call_args[0])
    return next_fun(*call_args, **call_kwargs)

  with nn.intercept_methods(interceptor) if inputs else contextlib.nullcontext():
    output, state = model.apply(
      variables,
      *args,
      capture_intermediates=lambda m, method: method == "__call__" and m.path in outputs,
      mutable=["intermediates", _fresh()],
      **kwargs,
    )
  tree = state.get("intermediates", {})
  values = []
  for name, is_input in reads:
    layer = name + (INPUT if is_input else "")
    if name.startswith(SOWN):
      *module, sown = _path(name.removeprefix(SOWN))
      node = tree
      for part in (*module, sown):
        if part not in node:
          raise ConfigError(f"layer {layer!r}: the model sows no {part!r} there; it sows {tree}")
        node = node[part]
      values.append(node[-1] if isinstance(node, tuple) else node)
      continue
    node = tree
    for part in _path(name):
      if part not in node:
        raise ConfigError(f"layer {layer!r}: the model has no submodule at that path")
      node = node[part]
    values.append(node[GENLAB_INPUT][0] if is_input else node["__call__"][0])
  return output, values


def splice(
  model: nn.Module,
  variables: Any,
  layer: str,
  replace: Callable[[jax.Array], jax.Array],
  *args,
  **kwargs,
) -> Any:
  """The model's output when the submodule at path `layer` returns `replace(its output)`
  (with `layer[i]`, its output with element i replaced by `replace(element i)`)."""
  if _input(_element(layer)[0])[1]:
    raise ConfigError(
      f"layer {layer!r} is a module's input: it can be read, not replaced; a transcoder "
      "splices the module's output (its output_layer)"
    )
  layer, index = _element(layer)
  if index is not None:
    named = f"{layer}[{index}]"
    whole = lambda out: _put(out, index, replace(_pick(out, index, named)))  # noqa: E731
    return splice(model, variables, layer, whole, *args, **kwargs)
  if layer.startswith(SOWN):
    raise ConfigError(
      f"layer {layer!r} is a sown value: it can be read, not replaced; name the module "
      "whose output it is instead"
    )
  path = _path(layer)
  if isinstance(model, NNXModel):
    module = model.bind(_params(model, variables))
    target = _submodule(module, path, layer)
    called = []
    _instrument(target, lambda output: (called.append(True) or replace(output), None))
    output = nnx.capture(module)(*args, **kwargs)  # What the model sows is dropped, quietly.
    if not called:
      raise ConfigError(f"layer {layer!r}: the model does not call the submodule at that path")
    return output
  found = []

  def interceptor(next_fun, call_args, call_kwargs, context):
    output = next_fun(*call_args, **call_kwargs)
    if context.method_name == "__call__" and context.module.path == path:
      found.append(True)
      return replace(output)
    return output

  with nn.intercept_methods(interceptor):
    output, _ = model.apply(variables, *args, mutable=[_fresh()], **kwargs)
  if not found:
    raise ConfigError(f"layer {layer!r}: the model has no submodule at that path")
  return output


# NNX ----------------------------------------------------------------------------------

CAPTURED = "genlab_captured"  # The name the addressed NNX module sows its output under.


def _params(model: NNXModel, variables: Any) -> Any:
  extra = sorted(set(variables) - {"params"})
  if extra:
    raise ConfigError(f"the NNX model {model.name} takes params only, not {extra}")
  return variables["params"]


def _submodule(module: nnx.Module, path: tuple[str, ...], layer: str) -> nnx.Module:
  """The submodule of `module` at `path` (attribute names and list indices)."""
  found = {tuple(map(str, p)): m for p, m in nnx.iter_modules(module)}
  if path not in found:
    some = sorted("/".join(p) for p in found if p)[:12]
    raise ConfigError(
      f"layer {layer!r}: the NNX model {type(module).__name__} has no submodule at that path; "
      f"it has {', '.join(some)}"
    )
  if not callable(found[path]):
    raise ConfigError(f"layer {layer!r}: {type(found[path]).__name__} has no __call__ to read")
  return found[path]


_INSTRUMENTED: dict[type, type] = {}


def _instrument(
  target: nnx.Module, after: Callable[[Any], tuple[Any, Any]], *, sow_input: bool = False
) -> None:
  """Makes `target` (a module of a merged copy, used once) return `after(output)[0]` from
  `__call__`, sowing `after(output)[1]` as an `nnx.Intermediate` unless it is None (and,
  with `sow_input`, its first argument). The copy's class is swapped for a subclass of its
  own (NNX has no method interceptor), so only this object changes: other instances of its
  class, and the user's model, do not."""
  cls = type(target)
  if cls not in _INSTRUMENTED:

    def __call__(self, *args, **kwargs):
      if self._genlab_sow_input:
        if not args:
          raise ConfigError(f"{type(self).__name__}{INPUT}: the module is called with no argument")
        self.sow(nnx.Intermediate, GENLAB_INPUT, args[0])
      output, sown = self._genlab_after(super(instrumented, self).__call__(*args, **kwargs))
      if sown is not None:
        self.sow(nnx.Intermediate, CAPTURED, sown)
      return output

    instrumented = type(cls.__name__, (cls,), {"__call__": __call__})
    instrumented.__qualname__ = cls.__qualname__
    _INSTRUMENTED[cls] = instrumented
  object.__setattr__(target, "_genlab_after", after)
  object.__setattr__(target, "_genlab_sow_input", sow_input)
  target.__class__ = _INSTRUMENTED[cls]


def _sown(tree: Any, path: tuple[str, ...], name: str, layer: str) -> Any:
  """The values `name` sown by the module at `path` of `nnx.capture`'s state."""
  for part in (*path, name):
    keys = {str(k): k for k in tree} if hasattr(tree, "keys") else {}
    if part not in keys:
      raise ConfigError(f"layer {layer!r}: the NNX model sows no {part!r} there")
    tree = tree[keys[part]]
  return tree.get_value() if isinstance(tree, nnx.Variable) else tree


def _nnx_capture(model: NNXModel, variables, reads, *args, **kwargs):
  """(output, [value of each (name, is_input) of `reads`]) of an NNX model, one call."""
  module = model.bind(_params(model, variables))
  wanted: dict[tuple[str, ...], tuple[nnx.Module, set[bool]]] = {}
  for name, is_input in reads:
    layer = name + (INPUT if is_input else "")
    if name.startswith(SOWN):
      _submodule(module, tuple(_path(name.removeprefix(SOWN))[:-1]), layer)
    else:
      target = _submodule(module, _path(name), layer)
      wanted.setdefault(_path(name), (target, set()))[1].add(is_input)
  for target, kinds in wanted.values():
    reads_output = False in kinds
    _instrument(
      target,
      lambda output, sow=reads_output: (output, output if sow else None),
      sow_input=True in kinds,
    )
  output, sown = nnx.capture(module, nnx.Intermediate)(*args, **kwargs)
  values = []
  for name, is_input in reads:
    layer = name + (INPUT if is_input else "")
    if name.startswith(SOWN):
      *path, sown_name = _path(name.removeprefix(SOWN))
      # A sown name keeps its last value (as Linen's reading does).
      values.append(_sown(sown, tuple(path), sown_name, layer)[-1])
      continue
    try:
      own = _sown(sown, _path(name), GENLAB_INPUT if is_input else CAPTURED, layer)
    except ConfigError:
      raise ConfigError(
        f"layer {layer!r}: the model does not call the submodule at that path"
      ) from None
    values.append(own[0])  # A module's first call's, as Linen's capture_intermediates.
  return output, values


@dataclasses.dataclass(frozen=True)
class HostModel:
  """A trained model whose activation at `layer` an SAE reads, and what it needs of it.

  Attributes:
    model: the linen module; or an NNX one, constructed (`nnx.Module`, with its trained
      params in it) or as a `genlab.core.NNXModel`.
    params: its trained params; None with a constructed NNX module: its `nnx.Param`s.
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
    logits: the model's output → its logits, one distribution per predicted token (shaped
      like `token_loss`'s weights plus the vocabulary), for the KL of the spliced
      distributions; None: the output is the logits. A model returning a structure (Gemma's
      `Output`) names its logits here.
  """

  model: nn.Module
  params: Any
  layer: str
  inputs: Callable[[dict[str, jax.Array]], tuple]
  positions: Callable[[dict[str, jax.Array]], jax.Array]
  token_loss: Callable[[Any, dict[str, jax.Array]], tuple[jax.Array, jax.Array]]
  description: str = ""
  identity: dict = dataclasses.field(default_factory=dict)
  logits: Callable[[Any], jax.Array] | None = None

  def __post_init__(self):
    model = self.model
    if isinstance(model, type) and issubclass(model, nnx.Module | nn.Module):
      raise ConfigError(
        f"HostModel.model is the class {model.__name__}; give the trained model (an NNX module "
        "constructed with its parameters, or a linen module with HostModel.params)"
      )
    if isinstance(model, nnx.Module):
      adapter, params = NNXModel.of(model)
      object.__setattr__(self, "model", adapter)
      if self.params is None:
        object.__setattr__(self, "params", params)
    elif not isinstance(model, nn.Module | NNXModel):
      raise ConfigError(
        f"HostModel.model is a {type(model).__name__}; an SAE's host is a flax.linen or "
        "flax.nnx module"
      )
    if self.params is None:
      raise ConfigError("HostModel.params is None: a linen host needs its trained params")

  def output_logits(self, output: Any) -> jax.Array:
    """The logits in the model's output (`logits`), for the KL."""
    return output if self.logits is None else self.logits(output)

  def capture(self, batch: dict[str, jax.Array], params: Any = None) -> tuple[Any, jax.Array]:
    """(the model's output, its activation at `layer`) on `batch`, with `params` (default:
    `self.params`; a compiled step passes them as an argument, not as constants)."""
    variables = {"params": self.params if params is None else params}
    return capture(self.model, variables, self.layer, *self.inputs(batch))

  def capture_many(
    self, batch: dict[str, jax.Array], layers: Sequence[str], params: Any = None
  ) -> tuple[Any, list[jax.Array]]:
    """(the model's output, [its activation at each of `layers`]) from one pass."""
    variables = {"params": self.params if params is None else params}
    return capture_many(self.model, variables, layers, *self.inputs(batch))

  def splice(
    self,
    batch: dict[str, jax.Array],
    replace: Callable[[jax.Array], jax.Array],
    params: Any = None,
    layer: str | None = None,
  ) -> Any:
    """The model's output on `batch` with the activation at `layer` (default: the host's
    `layer`; a transcoder's output layer) replaced."""
    variables = {"params": self.params if params is None else params}
    return splice(self.model, variables, layer or self.layer, replace, *self.inputs(batch))


def as_rows(activation: jax.Array) -> jax.Array:
  """(B, [P,] width) → (B·P, width): every position an example."""
  if activation.ndim == 2:
    return activation
  return activation.reshape(-1, activation.shape[-1])


__all__ = ["HostModel", "as_rows", "capture", "capture_many", "splice"]
