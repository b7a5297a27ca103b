"""A `flax.nnx` module seen the way genlab sees a Linen one: pure functions on pytrees.

genlab's state, steps, sharding and checkpoints handle parameters as plain pytrees of
arrays, and a family calls its model as Linen does: `model.init(key, *args)` → `{'params':
...}`, `model.apply({'params': params}, *args, method=..., rngs=...)`. `NNXModel` gives
an NNX module that interface with `nnx.split` and `nnx.merge`: `init` constructs the module
with `rngs=nnx.Rngs(key)` and returns its `nnx.Param`s as a nested dict (string keys, as a
checkpoint gives them back); `apply` merges them into the module's graph and calls it.
Nothing is kept between calls, so both run under `jax.jit` and `jax.eval_shape`, and
the arrays are wherever the caller placed them (replicated, or split over `fsdp`).

The contract: an NNX model's state is `nnx.Param`s only. Running statistics (`nnx.BatchNorm`'s
`nnx.BatchStat`), random streams held in the module (`nnx.Dropout(rngs=...)`'s `RngState`)
and other variables are refused in one line: genlab's families keep no such collections
for Linen models either, and randomness comes in explicitly, as a key argument or a named
stream given at `apply(..., rngs={'dropout': key})`, which the called method receives as
`rngs=nnx.Rngs(dropout=key)`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import jax
from flax import nnx

from genlab.errors import ConfigError


def is_nnx_class(module: Any) -> bool:
  """Whether `module` is an `nnx.Module` subclass (a model genlab must construct)."""
  return isinstance(module, type) and issubclass(module, nnx.Module)


def takes(module: type, name: str) -> bool:
  """Whether an NNX module's constructor takes the keyword `name`."""
  parameters = inspect.signature(module.__init__).parameters
  return name in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def _string_keys(tree: Any) -> Any:
  """A pure dict with every key a string (an `nnx.List`'s 0, 1, ... become '0', '1', ...)."""
  if isinstance(tree, Mapping):
    return {str(k): _string_keys(v) for k, v in tree.items()}
  return tree


def _refuse_other_state(rest: nnx.State, what: str) -> None:
  kinds = sorted({type(v).__name__ for _, v in nnx.to_flat_state(rest)})
  if kinds:
    paths = ["/".join(map(str, p)) for p, _ in nnx.to_flat_state(rest)]
    raise ConfigError(
      f"{what} holds {', '.join(kinds)} state ({', '.join(paths[:3])}"
      f"{', ...' if len(paths) > 3 else ''}); genlab takes NNX models whose state is nnx.Param "
      "only: no running statistics (BatchNorm: use LayerNorm), and randomness passed in, not "
      "held (docs/extending.md, 'Your model in NNX')"
    )


class MissingField(ConfigError, AttributeError):
  """A field a family reads of its model that the NNX model lacks: one line at the CLI (a
  `ConfigError`), and an `AttributeError` still (`hasattr`, `getattr` with a default)."""


class NNXModel:
  """An NNX module class and its constructor's fields, used as genlab uses a Linen module.

  Args:
    module: the `nnx.Module` subclass.
    fields: its constructor's keyword arguments, but `rngs`.
    name: how messages name it (default: the class's name).

  The fields read as attributes (`model.latent_dim`; a field not given reads as the
  constructor's default), as a Linen module's do.
  """

  def __init__(self, module: type, fields: Mapping[str, Any], *, name: str = ""):
    self.module, self.fields = module, dict(fields)
    self.name = name or module.__name__
    self._graphdef = self._template = None

  @classmethod
  def of(cls, instance: nnx.Module, *, name: str = "") -> tuple[NNXModel, dict]:
    """(the adapter, its params) of a constructed module (a trained host, say)."""
    model = cls(type(instance), {}, name=name)
    model._graphdef, model._template, params = model._split(instance)
    return model, params

  def __getattr__(self, name: str) -> Any:
    fields = self.__dict__.get("fields", {})
    if name in fields:
      return fields[name]
    module = self.__dict__.get("module")
    if module is not None and not name.startswith("_"):
      parameter = inspect.signature(module.__init__).parameters.get(name)
      if parameter is not None and parameter.default is not parameter.empty:
        return parameter.default
    raise MissingField(
      f"the family reads {name!r} of its model, and the NNX model "
      f"{self.__dict__.get('name', '?')} has no such field (a constructor argument with a "
      "default, or one config.model sets); give it one, or use a Linen model here"
    )

  def __repr__(self) -> str:
    return f"NNXModel({self.name}, {self.fields})"

  def clone(self, **updates: Any) -> NNXModel:
    """The same model with `updates` among its constructor's fields, as a Linen module's
    `clone` (a family may set a field the config leaves out: the image sparse AE's
    `code_bias_init`).

    Raises:
      MissingField: the constructor takes no argument of an update's name.
    """
    for name in updates:
      if not takes(self.module, name):
        raise MissingField(
          f"the family sets {name!r} of its model, and the NNX model {self.name}'s "
          "constructor takes no such argument; give it one (docs/extending.md, 'Your model "
          "in NNX')"
        )
    return NNXModel(self.module, {**self.fields, **updates}, name=self.name)

  def _construct(self, key: jax.Array) -> nnx.Module:
    try:
      return self.module(**self.fields, rngs=nnx.Rngs(key))
    except TypeError as e:
      raise ConfigError(f"config.model: {self.name}: {e}") from None

  def _split(self, instance: nnx.Module) -> tuple[Any, list, dict]:
    """(graphdef, [(path, Param)], params as a pure dict) of a constructed module."""
    graphdef, params, rest = nnx.split(instance, nnx.Param, ...)
    _refuse_other_state(rest, f"the NNX model {self.name}")
    template = [(path, _abstract(v)) for path, v in nnx.to_flat_state(params)]
    return graphdef, template, _string_keys(nnx.to_pure_dict(params))

  @property
  def graphdef(self):
    """The module's structure (`nnx.split`'s graphdef), from its shapes alone."""
    if self._graphdef is None:
      abstract = nnx.eval_shape(lambda: self._construct(jax.random.key(0)))
      self._graphdef, self._template, _ = self._split(abstract)
    return self._graphdef

  def init(self, key: jax.Array, *args, **kwargs) -> dict[str, Any]:
    """`{'params': the module's nnx.Params}`, constructed from `key`. The example inputs
    are not needed (an NNX module knows its shapes from its fields) and are not used."""
    del args, kwargs
    if isinstance(key, Mapping):  # Linen's `init({'params': key, ...})`.
      key = key["params"]
    graphdef, template, params = self._split(self._construct(key))
    if self._graphdef is None:
      self._graphdef, self._template = graphdef, template
    return {"params": params}

  def bind(self, params: Any) -> nnx.Module:
    """The module with `params` in it (a new object: nothing is shared between calls)."""
    graphdef = self.graphdef
    flat = []
    for path, variable in self._template:
      value = params
      for part in path:
        value = value[str(part)]
      flat.append((path, variable.replace(value)))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))

  def apply(
    self,
    variables: Mapping[str, Any],
    *args,
    method: str | Callable | None = None,
    rngs: Mapping[str, jax.Array] | None = None,
    mutable: Any = False,
    **kwargs,
  ) -> Any:
    """`method(*args, **kwargs)` of the module holding `variables['params']`, as Linen's
    `apply`; `method` a name (`'encode'`) or a function of the module (`Model.encode`)."""
    extra = sorted(set(variables) - {"params"})
    if mutable or extra:
      raise ConfigError(
        f"this family keeps Linen collections {extra or mutable} of its model, which the NNX "
        f"model {self.name} cannot give (genlab takes NNX models whose state is nnx.Param "
        "only); use a Linen model here"
      )
    module = self.bind(variables["params"])
    if rngs:
      kwargs["rngs"] = nnx.Rngs(**rngs)
    if method is None:
      call = type(module).__call__
    elif isinstance(method, str):
      call = getattr(type(module), method)
    else:
      call = method
    # Under nnx.capture, what the module sows (nnx.Intermediate) is collected, and dropped,
    # rather than written into the module with a deprecation warning.
    return nnx.capture(call)(module, *args, **kwargs)


def _abstract(variable: nnx.Variable) -> nnx.Variable:
  """The variable with its value's shape only: a template holds no arrays (no tracers)."""
  value = variable.get_value()
  return variable.replace(jax.ShapeDtypeStruct(jax.numpy.shape(value), value.dtype))


__all__ = ["NNXModel", "is_nnx_class", "takes"]
