"""Shared fixtures: a per-worker TFDS data dir and tiny configs.

Tests never touch the user's ~/tensorflow_datasets: each pytest-xdist worker
prepares the embedded `digits` once into its own temporary data dir.
"""

from __future__ import annotations

import pathlib
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
  """A TFDS data dir private to this test session (and xdist worker)."""
  return str(tmp_path_factory.mktemp("tfds"))


def make_test_config(data_dir: str | None = None, **overrides):
  """A tiny conv-AE config on `digits` that trains in a second; fields overridable.

  Dotted keys reach nested fields: `make_test_config(**{"model.latent_dim": 4})`.
  """
  from genlab.config import base_config

  config = base_config()
  config.dataset = "digits"
  config.data.data_dir = data_dir
  config.batch_size = 16
  config.num_steps = 20
  config.parallel = "none"
  config.model.update(
    features=(8, 16),
    kernel_size=3,
    strides=2,
    latent_dim=8,
    activation="relu",
    output_activation="sigmoid",
  )
  config.log_every = 5
  config.eval_every = 10
  config.image_every = 10
  config.checkpoint_every = 10
  config.num_images = 4
  for dotted, value in overrides.items():
    node = config
    *parents, leaf = dotted.split(".")
    for name in parents:
      node = node[name]
    node[leaf] = value
  return config


@pytest.fixture
def test_config(data_dir):
  return lambda **overrides: make_test_config(data_dir, **overrides)


def run_python(code: str, *, devices: int = 1, timeout: int = 600) -> str:
  """Runs `code` in a fresh interpreter with `devices` fake CPU devices; returns stdout."""
  import os
  import subprocess

  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests"), str(REPO), env.get("PYTHONPATH", "")])
  proc = subprocess.run(
    [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout
  )
  if proc.returncode != 0:
    raise AssertionError(f"subprocess failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
  return proc.stdout
