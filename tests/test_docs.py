"""The README and docs/ stay true: links resolve, generated pages are current, every config
field they name exists, and the API page's code runs."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO

DOCS = sorted((REPO / "docs").rglob("*.md"))
PAGES = [REPO / "README.md", *DOCS]


def _config_reference():
  spec = importlib.util.spec_from_file_location(
    "config_reference", REPO / "scripts" / "config_reference.py"
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_the_config_reference_is_generated_from_the_code_and_current():
  page = (REPO / "docs" / "configs.md").read_text()
  assert page == _config_reference().render(), "run: python scripts/config_reference.py"


def test_the_readme_is_a_quickstart_and_a_map():
  readme = (REPO / "README.md").read_text()
  assert len(readme.splitlines()) <= 220
  linked = set(re.findall(r"\]\((docs/[^)#\s]+)", readme))
  assert {"docs/extending.md", "docs/api.md", "docs/configs.md", "docs/performance.md"} <= linked


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(page):
  for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
    if re.match(r"[a-z]+:", target):
      continue  # http(s) and mailto links are not checked offline.
    assert (page.parent / target).exists(), f"{page.name} links to missing {target}"


def _fields(text: str) -> set[str]:
  named = re.findall(r"--config\.([a-z_][\w.]*[a-z_0-9])", text)
  named += re.findall(r"`config\.([a-z_][\w.]*[a-z_0-9])`", text)
  return set(named)


def test_every_config_field_the_docs_name_exists():
  from genlab.config import base_config
  from genlab.families import REGISTRY

  configs = [base_config(name) for name in REGISTRY.names()]

  def exists(dotted: str) -> bool:
    for config in configs:
      node = config
      for part in dotted.split("."):
        if not hasattr(node, "keys") or part not in node:
          break
        node = node[part]
      else:
        return True
    return False

  named = {f for page in PAGES for f in _fields(page.read_text())} - {"json"}  # config.json
  # model.* fields belong to each model's module; `model.name` and friends are checked there.
  missing = sorted(f for f in named if not f.startswith("model.") and not exists(f))
  assert missing == []


@pytest.mark.slow
def test_the_api_page_runs_as_written(data_dir, tmp_path):
  blocks = re.findall(r"```python\n(.*?)```", (REPO / "docs" / "api.md").read_text(), re.DOTALL)
  code = "\n".join(blocks).replace('"experiments/', f'"{REPO / "experiments"}/')
  env = {**os.environ, "TFDS_DATA_DIR": data_dir, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run(
    [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.splitlines()
  assert "(8, 8, 8, 1) (8, 16)" in lines
  assert "(16,)" in lines
  assert "3 ['grad_norm', 'kl', 'loss', 'param_norm']" in lines
  assert (tmp_path / "runs" / "notebook" / "eval.json").is_file()
