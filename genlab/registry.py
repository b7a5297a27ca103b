"""Things chosen by name: genlab's own, a user's, an installed package's, or a path.

A config names a family (`config.family`), a model (`config.model.name`) or an SAE code
by a string, and a `Registry` finds the class:

1. a name registered by code that ran in this process (`genlab.register_family(...)`);
2. one of genlab's own names (imported on first use, so that naming nothing imports
   nothing);
3. a name an installed package declares under the registry's entry-point group, e.g. in
   the package's `pyproject.toml`:

       [project.entry-points."genlab.families"]
       my_family = "mypkg.family:MyFamily"

4. or a path, `"package.module:Name"`, imported as it is.

What a run records is `canonical(name)`: the name itself for genlab's own names and for
entry points (found again in any process where the package is installed), and the path
of anything else, so that `genlab eval`, `sample` and `encode`, which read only the
workdir's config.json, find the same class again wherever its module is importable.
Nothing here imports JAX.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
from collections.abc import Callable, Mapping
from typing import Any

from genlab.errors import ConfigError

# Modules whose classes cannot be found again by another process: an experiment file is
# loaded under this prefix (`genlab.config.load_experiment`), a script runs as __main__.
_UNIMPORTABLE = ("__main__", "genlab_experiment_")


def path_of(target: Any) -> str:
  """`module:qualified name` of a class or function."""
  return f"{target.__module__}:{target.__qualname__}"


def import_path(path: str, *, what: str) -> Any:
  """The object at `"package.module:Name"` (`Name` may be dotted: `Outer.Inner`); one line
  naming `what` if it cannot be imported."""
  module_name, _, attribute = path.partition(":")
  if not module_name or not attribute:
    raise ConfigError(f"{what}={path!r}: a path is 'package.module:Name'")
  try:
    target = importlib.import_module(module_name)
  except ImportError as e:
    raise ConfigError(
      f"{what}={path!r}: cannot import {module_name} ({e}); is its package installed, or its "
      "folder on PYTHONPATH?"
    ) from None
  for part in attribute.split("."):
    try:
      target = getattr(target, part)
    except AttributeError:
      raise ConfigError(f"{what}={path!r}: {module_name} has no {attribute}") from None
  return target


class Registry:
  """Classes by name, for one kind of thing (see the module's docstring).

  Args:
    kind: what it holds, for messages (`family`, `model`, `SAE code`).
    field: the config field that names one, for messages (`config.family`).
    group: the entry-point group installed packages declare theirs in.
    builtins: genlab's own names → `module:Name` paths, imported on first use.
    check: called with each class when it is registered or first found, to refuse what
      does not meet the kind's contract in one line (e.g. "not a Family subclass").
  """

  def __init__(
    self,
    kind: str,
    *,
    field: str,
    group: str,
    builtins: Mapping[str, str],
    check: Callable[[str, Any], None] | None = None,
  ):
    self.kind, self.field, self.group = kind, field, group
    self._builtins = dict(builtins)
    self._registered: dict[str, Any] = {}
    self._found: dict[str, Any] = {}
    self._check = check

  # Registration ------------------------------------------------------------------------

  def register(self, name: str, target: Any = None, *, replace: bool = False):
    """Registers `target` (a class, or a `module:Name` path) under `name`; with no
    `target`, a decorator. A name already taken is refused unless `replace`."""
    if target is None:
      return lambda cls: self.register(name, cls, replace=replace)
    if not isinstance(name, str) or not name or ":" in name:
      raise ConfigError(f"a {self.kind} name is a non-empty string without ':', got {name!r}")
    if not replace and (name in self._registered or name in self._builtins):
      raise ConfigError(
        f"{self.kind} {name!r} is registered already; pick another name, or pass replace=True"
      )
    if isinstance(target, str):
      target = import_path(target, what=f"{self.kind} {name!r}")
    self._validate(name, target)
    self._registered[name] = target
    self._found.pop(name, None)
    return target

  def unregister(self, name: str) -> None:
    """Forgets a name registered by `register` (genlab's own names stay)."""
    self._registered.pop(name, None)
    self._found.pop(name, None)

  # Lookup ------------------------------------------------------------------------------

  def get(self, name: str) -> Any:
    """The class `name` names (registered, genlab's, an entry point's, or a path)."""
    if not isinstance(name, str) or not name:
      raise ConfigError(f"{self.field} must name a {self.kind}, got {name!r}")
    if name in self._registered:
      return self._registered[name]
    if name in self._found:
      return self._found[name]
    if name in self._builtins:
      target = import_path(self._builtins[name], what=self.field)
    elif ":" in name:
      target = import_path(name, what=self.field)
    elif (point := self._entry_points().get(name)) is not None:
      try:
        target = point.load()
      except Exception as e:  # noqa: BLE001 - a broken package raises anything on import.
        raise ConfigError(
          f"{self.field}={name!r}: the entry point {point.value} of package "
          f"{_distribution(point)} cannot be loaded ({type(e).__name__}: {e})"
        ) from None
    else:
      close = difflib.get_close_matches(name, self.names(), n=1)
      hint = f" (did you mean {close[0]!r}?)" if close else ""
      raise ConfigError(
        f"unknown {self.kind} {self.field}={name!r}{hint}; choose one of "
        f"{', '.join(self.names())}, or name your own as 'package.module:Name'"
      )
    self._validate(name, target)
    self._found[name] = target
    return target

  def names(self) -> list[str]:
    """Every name this registry knows without a path: genlab's, registered, installed."""
    return sorted({*self._builtins, *self._registered, *self._entry_points()})

  def builtin(self, name: str) -> bool:
    """Whether `name` is one of genlab's own names."""
    return name in self._builtins and name not in self._registered

  def canonical(self, name: str) -> str:
    """What a workdir records for `name`: genlab's and entry-point names as they are,
    anything else as the `module:Name` path of its class, checked to be importable by
    another process (a class defined in an experiment file or a script is refused)."""
    target = self.get(name)
    if self.builtin(name) or (name not in self._registered and name in self._entry_points()):
      return name
    path = name if ":" in name and name not in self._registered else path_of(target)
    module = path.partition(":")[0]
    if module.startswith(_UNIMPORTABLE):
      raise ConfigError(
        f"{self.field}={name!r} is defined in {module}, which `genlab eval` and `genlab "
        f"sample` could not import again: define the {self.kind} in a module of your own "
        "package (or a file on PYTHONPATH) and register or name it from there"
      )
    if import_path(path, what=self.field) is not target:
      raise ConfigError(
        f"{self.field}={name!r}: {path} does not import as the registered {self.kind}; "
        "register the class its module defines"
      )
    return path

  def _entry_points(self) -> dict[str, importlib.metadata.EntryPoint]:
    return {point.name: point for point in importlib.metadata.entry_points(group=self.group)}

  def _validate(self, name: str, target: Any) -> None:
    if self._check is not None:
      self._check(name, target)


def _distribution(point: importlib.metadata.EntryPoint) -> str:
  dist = getattr(point, "dist", None)
  return getattr(dist, "name", None) or "?"


def first_sentence(obj: Any) -> str:
  """The first sentence of `obj`'s docstring, on one line ('' if it has none): up to the
  first period that ends the text or comes before a capital ("e.g. the" does not end it)."""
  import inspect
  import re

  text = " ".join((inspect.getdoc(obj) or "").split("\n\n")[0].split())
  end = re.search(r"\.(?=\s+[A-Z`(]|$)", text)
  return text[: end.end()] if end else text


__all__ = ["Registry", "first_sentence", "import_path", "path_of"]
