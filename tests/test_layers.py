"""genlab's packages import downward only (docs/extending.md, "Where a family sits")."""

from __future__ import annotations

import ast
import pathlib

import pytest

from conftest import REPO

GENLAB = REPO / "genlab"

# Each layer may import itself and the layers listed after it, never those before it.
LAYERS = [
  ("cli", ["genlab.cli", "genlab.__main__"]),
  ("run", ["genlab.run"]),
  ("config", ["genlab.config"]),
  ("families", ["genlab.families"]),
  ("evaluators", ["genlab.evaluators"]),
  ("sae", ["genlab.sae"]),
  ("models", ["genlab.models"]),
  (
    "base",
    [
      "genlab.core",
      "genlab.kernels",
      "genlab.data",
      "genlab.losses",
      "genlab.metrics",
      "genlab.image_metrics",
      "genlab.corruptions",
      "genlab.views",
      "genlab.registry",
      "genlab.console",
      "genlab.paths",
      "genlab.errors",
    ],
  ),
]


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(REPO).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path) -> set[str]:
  """The genlab modules `path` imports (anywhere in the file, lazy imports included)."""
  module = _module_name(path)
  package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base])
      if base.startswith("genlab"):
        found.update(f"{base}.{a.name}" for a in node.names)
        found.add(base)
    elif isinstance(node, ast.Import):
      found.update(a.name for a in node.names if a.name.startswith("genlab"))
  return found


def _layer(module: str) -> int | None:
  for index, (_, prefixes) in enumerate(LAYERS):
    if any(module == p or module.startswith(p + ".") for p in prefixes):
      return index
  return None


MODULES = {_module_name(p): p for p in GENLAB.rglob("*.py")}


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _layer(m) is not None))
def test_every_module_imports_only_its_own_layer_and_those_below(module):
  own = _layer(module)
  upward = sorted(m for m in _imports(MODULES[module]) if (_layer(m) or own) < own)
  assert not upward, f"{module} ({LAYERS[own][0]}) imports {upward} from a layer above"


def test_every_module_belongs_to_a_layer():
  assert [m for m in MODULES if m != "genlab" and _layer(m) is None] == []


def test_the_import_graph_has_no_circle():
  edges = {m: {d for d in _imports(p) if d in MODULES and d != m} for m, p in MODULES.items()}
  # `from genlab.x import y` names the package too; a package's __init__ only hands names on.
  packages = {m for m, p in MODULES.items() if p.name == "__init__.py"}
  edges = {m: {d for d in ds if d not in packages} for m, ds in edges.items()}
  state: dict[str, int] = {}
  circles = []

  def visit(node, stack):
    state[node] = 1
    for nxt in edges[node]:
      if state.get(nxt) == 1:
        circles.append(stack[stack.index(nxt) :] + [nxt])
      elif nxt not in state:
        visit(nxt, [*stack, nxt])
    state[node] = 2

  for module in sorted(edges):
    if module not in state:
      visit(module, [module])
  assert circles == []


def test_the_xla_cpu_kernels_are_reached_only_through_the_seam():
  users = sorted(
    m
    for m, p in MODULES.items()
    if any(d.startswith("genlab.kernels.xla_cpu") for d in _imports(p))
    and not m.startswith("genlab.kernels")
  )
  assert users == []
