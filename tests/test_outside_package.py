"""A researcher's own family and model, from a package outside genlab, through the CLI.

The package is written into a temporary folder and made importable with PYTHONPATH only:
genlab is not edited, nothing is registered in this process, and `genlab eval`, `sample` and
`encode` find the family and the model again from the workdir's config.json alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, genlab_command


def _docs_file(name: str) -> str:
  """The code block of docs/extending.md that starts with the comment `# name`."""
  text = (REPO / "docs" / "extending.md").read_text()
  return text.split(f"```python\n# {name}\n", 1)[1].split("```", 1)[0]


MODELS = _docs_file("mylab/models.py")
FAMILY = _docs_file("mylab/family.py")
EXPERIMENT = _docs_file("experiments/free_bits_digits.py")


def _tree_state(root) -> str:
  """genlab's working tree as git sees it (tracked changes and untracked files)."""
  return subprocess.run(
    ["git", "status", "--porcelain", "--untracked-files=all"],
    cwd=root,
    capture_output=True,
    text=True,
    check=True,
  ).stdout


@pytest.fixture
def outside(tmp_path):
  """A folder outside genlab holding the package `mylab` and two experiments: the package's
  family with its model, and genlab's `vae` family with the package's model."""
  root = tmp_path / "research"
  (root / "mylab").mkdir(parents=True)
  (root / "experiments").mkdir()
  (root / "mylab" / "__init__.py").write_text("")
  (root / "mylab" / "models.py").write_text(MODELS)
  (root / "mylab" / "family.py").write_text(FAMILY)
  for name, family in (("free_bits_digits", "mylab.family:FreeBitsVAE"), ("tiny_vae", "vae")):
    (root / "experiments" / f"{name}.py").write_text(
      EXPERIMENT.replace("free_bits_digits", name).replace("mylab.family:FreeBitsVAE", family)
    )
  return root


def _run(root, *args):
  env = dict(os.environ, PYTHONPATH=str(root))
  return subprocess.run(
    [genlab_command(), *args], cwd=root, env=env, capture_output=True, text=True, timeout=600
  )


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["free_bits_digits", "tiny_vae"])
def test_a_family_and_a_model_from_a_package_outside_genlab_run_through_every_command(
  outside, data_dir, experiment
):
  before = _tree_state(REPO)
  config = f"experiments/{experiment}.py"
  shown = _run(outside, "config", "--config", config)
  assert shown.returncode == 0, shown.stderr[-2000:]
  resolved = json.loads(shown.stdout)
  assert resolved["model"]["name"] == "mylab.models:TinyVAE"
  assert resolved["model"]["hidden"] == 32  # The model's own fields, at their defaults.
  assert ("free_bits" in resolved["vae"]) == (experiment == "free_bits_digits")

  listing = _run(outside, "list")
  assert listing.returncode == 0, listing.stderr[-2000:]
  line = next(row for row in listing.stdout.splitlines() if experiment in row)
  assert "digits" in line, listing.stdout

  workdir = outside / "runs" / experiment
  train = _run(
    outside,
    "train",
    "--config",
    config,
    "--workdir",
    str(workdir),
    f"--config.data.data_dir={data_dir}",
  )
  assert train.returncode == 0, train.stderr[-3000:]
  saved = json.loads((workdir / "config.json").read_text())
  family = "mylab.family:FreeBitsVAE" if experiment == "free_bits_digits" else "vae"
  assert saved["family"] == family and saved["model"]["name"] == "mylab.models:TinyVAE"

  # eval, sample and encode read only the workdir (the package importable, as for training).
  evaluation = _run(outside, "eval", "--workdir", str(workdir))
  assert evaluation.returncode == 0, evaluation.stderr[-3000:]
  report = json.loads((workdir / "eval.json").read_text())
  assert report["checkpoint_step"] == 12 and np.isfinite(report["metrics"]["nll"])
  if experiment == "free_bits_digits":  # The family's own term: KL ≥ free bits × dimensions.
    assert report["metrics"]["kl"] >= 0.25 * 4 - 1e-5, report["metrics"]
  png = outside / f"{experiment}.png"
  sample = _run(outside, "sample", "--workdir", str(workdir), "--num", "8", "--out", str(png))
  assert sample.returncode == 0 and png.stat().st_size > 0, sample.stderr[-3000:]
  codes = outside / f"{experiment}.npz"
  encode = _run(outside, "encode", "--workdir", str(workdir), "--out", str(codes))
  assert encode.returncode == 0, encode.stderr[-3000:]
  with np.load(codes) as npz:
    assert npz["mean"].shape[1] == 4 and np.isfinite(npz["mean"]).all()

  # Without the package on the path, the workdir's family or model is named in one line.
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  lost = subprocess.run(
    [genlab_command(), "eval", "--workdir", str(workdir)],
    cwd=outside.parent,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert lost.returncode == 2 and "Traceback" not in lost.stderr, lost.stderr[-2000:]
  assert "mylab" in lost.stderr.splitlines()[-1], lost.stderr[-2000:]
  assert _tree_state(REPO) == before  # genlab's working tree is untouched.
  assert sys.modules.get("mylab") is None  # And this process never imported the package.
