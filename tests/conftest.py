"""Shared fixtures: a per-worker TFDS data dir and tiny configs.

Tests never touch the user's ~/tensorflow_datasets: each pytest-xdist worker
prepares the embedded `digits` once into its own temporary data dir.

XLA:CPU compilation dominates a tiny run (5.5 of 6.5 s), and many tests compile
the same programs; JAX's persistent compilation cache (set here, before any
test module imports JAX, and inherited by subprocesses) compiles each once.
"""

from __future__ import annotations

import os
import pathlib
import sys
import tempfile

import pytest


def pytest_configure(config):
  cache = os.path.join(tempfile.gettempdir(), "genlab-tests-xla-cache")
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", cache)
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
  # GAN metrics' feature classifiers: trained once per test session, not in ~/.cache. The
  # process that makes the folder (xdist's controller, whose workers inherit it) removes it.
  if "GENLAB_CACHE_DIR" not in os.environ:
    config._genlab_cache_dir = tempfile.mkdtemp(prefix="genlab-tests-cache-")
    os.environ["GENLAB_CACHE_DIR"] = config._genlab_cache_dir


def pytest_unconfigure(config):
  import shutil

  made = getattr(config, "_genlab_cache_dir", None)
  if made is not None:
    shutil.rmtree(made, ignore_errors=True)
    if os.environ.get("GENLAB_CACHE_DIR") == made:
      del os.environ["GENLAB_CACHE_DIR"]


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
  config.mesh.devices = 1
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


def genlab_command() -> str:
  """The installed `genlab` console script of this interpreter's environment."""
  import shutil

  return shutil.which("genlab") or os.path.join(os.path.dirname(sys.executable), "genlab")


def restore_latest(workdir) -> tuple[int, object]:
  """(step, TrainState) of the newest usable checkpoint of a finished workdir, on this
  process's devices (replicated)."""
  from genlab import config as config_lib
  from genlab.run import setup
  from genlab.run.checkpoint import Checkpointer

  config = config_lib.from_json((pathlib.Path(workdir) / "config.json").read_text())
  config.mesh.update(devices=0, fsdp=1)  # This process's devices; the state's shape is the same.
  target = setup(config).abstract_state
  ckpt = Checkpointer(pathlib.Path(workdir) / "checkpoints")
  try:
    state, step, _ = ckpt.find_usable(target)
  finally:
    ckpt.close()
  return step, state


def free_port() -> int:
  import socket

  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def compare_parallel(experiment: str, data_dir: str, *overrides: str, steps: int = 20, modes=None):
  """Runs scripts/compare_parallel.py on `experiments/<experiment>` with 4 fake devices and
  `--config.` overrides; returns its JSON rows by mode (`one` is the 1-device run)."""
  import json
  import subprocess

  command = [
    sys.executable,
    str(REPO / "scripts" / "compare_parallel.py"),
    "--devices=4",
    f"--steps={steps}",
    f"--config={EXPERIMENTS / experiment}",
    f"--config.data.data_dir={data_dir}",
    *overrides,
  ]
  if modes:
    command.append(f"--modes={modes}")
  proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
  return {row["mode"]: row for row in rows}


def train_shipped(experiment: str, data_dir: str, workdir, *, num_steps: int | None = None) -> dict:
  """Trains `experiments/<experiment>` as shipped (images and checkpoints only at the end),
  or for its first `num_steps` steps, and returns the metrics `genlab eval` reports on it."""
  from genlab import config as config_lib
  from genlab.run import evaluate_workdir, train_and_evaluate

  config = config_lib.load_experiment(EXPERIMENTS / experiment)
  config.data.data_dir = data_dir
  if num_steps is not None:
    config.update(num_steps=num_steps, eval_every=num_steps)
  config.update(image_every=config.num_steps, checkpoint_every=config.num_steps)
  train_and_evaluate(config, workdir)
  return evaluate_workdir(workdir)["metrics"]


def primitive_eqns(fn, *args, names=("dot_general",)) -> list:
  """The equations of `fn`'s jaxpr at `args` whose primitive is in `names`, those inside
  nested jaxprs (scans, custom_vjp, pjit) included, in order."""
  import jax
  from jax.extend.core import jaxprs_in_params  # jax.core's was removed in JAX 0.11.

  found = []

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name in names:
        found.append(eqn)
      for sub in jaxprs_in_params(eqn.params):
        walk(sub)

  walk(jax.make_jaxpr(fn)(*args).jaxpr)
  return found


def logged_steps(workdir) -> list[int]:
  """The steps of `workdir/metrics.jsonl`'s complete lines, read while a run appends to it
  (a line being written may show only in part: it is left for the next read)."""
  import json

  path = pathlib.Path(workdir) / "metrics.jsonl"
  if not path.is_file():
    return []
  *complete, _ = path.read_text().split("\n")
  return [json.loads(line)["step"] for line in complete if line.strip()]


def wait_for_step(workdir, step: int, procs, timeout: float = 300) -> int:
  """Blocks until `workdir`'s metrics.jsonl has a line at `step` or later, while the
  processes `procs` (which write it) still run; returns the step seen."""
  import time

  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    for p in procs:
      assert p.poll() is None, f"exited early ({p.returncode}): {p.stderr.read()[-3000:]}"
    steps = logged_steps(workdir)
    if steps and steps[-1] >= step:
      return steps[-1]
    time.sleep(0.01)
  raise AssertionError(f"no step {step} within {timeout}s")


# Float32's unit roundoff, 2^-24: the relative error of one rounded operation.
FLOAT32_U = 2.0**-24


def assert_close_normwise(actual, expected, *, rel: float, err_msg: str = "") -> None:
  """Every leaf of `actual` within `rel` × (the largest |entry| of that leaf of `expected`).

  Float32 results computed in another order (another kernel, another CPU's vector width,
  another device count) differ by rounding errors that scale with the terms each entry
  sums, not with the entry: an entry that cancels to nearly 0 keeps the absolute error of
  its neighbours, so an entrywise `rtol` fails there on one CPU and not on another. The
  bound is normwise: state `rel` from the computation (a sum of n terms in float32 is off
  by at most about n·2^-24 of the terms' scale), not from one machine's measurement.
  """
  import jax
  import numpy as np

  leaves = jax.tree_util.tree_leaves_with_path(expected)
  got = jax.tree.leaves(actual)
  assert len(got) == len(leaves), (len(got), len(leaves))
  for (path, want), have in zip(leaves, got, strict=True):
    want, have = np.asarray(want, np.float64), np.asarray(have, np.float64)
    assert have.shape == want.shape, (jax.tree_util.keystr(path), have.shape, want.shape)
    scale = float(np.max(np.abs(want))) if want.size else 0.0
    error = float(np.max(np.abs(have - want))) if want.size else 0.0
    assert error <= rel * scale, (
      f"{err_msg}{jax.tree_util.keystr(path)}: max |actual − expected| = {error:.3g} exceeds "
      f"{rel:.3g} × max |expected| ({scale:.3g})"
    )


@pytest.fixture
def nan_family():
  """`config.family` of `test_reliability.NaNAtStep7`, an autoencoder whose input turns to
  NaN at the step that starts from step 7 (registered for the test, then forgotten)."""
  from test_reliability import NaNAtStep7

  from genlab import families

  families.register_family("nan_at_7", NaNAtStep7)
  yield "nan_at_7"
  families.REGISTRY.unregister("nan_at_7")


def import_torch_references():
  """PyTorch, pytorch-fid and clean-fid, the reference implementations genlab's Inception
  metrics are tested against (the `test` extra installs them; tests never skip them).

  torchvision's wheels on PyPI are built against PyTorch's CUDA build, so with the CPU build
  (`torch==2.13.0+cpu`, the test extra's) torchvision's C extension (its detection ops) does
  not load, and torchvision 0.28's import then fails declaring fake kernels for two of those
  ops (`register_fake('torchvision::nms')`, unguarded). Declaring the two schemas first lets
  its pure-Python modules import (pytorch-fid subclasses `torchvision.models.inception`'s
  blocks); neither op is ever run by these tests.
  """
  import importlib.util

  import torch

  spec = importlib.util.find_spec("torchvision")
  extension = pathlib.Path(spec.origin).parent / "_C.so"
  try:
    torch.ops.load_library(str(extension))
  except (OSError, RuntimeError):
    global _TORCHVISION_SCHEMAS
    if "_TORCHVISION_SCHEMAS" not in globals():
      _TORCHVISION_SCHEMAS = torch.library.Library("torchvision", "DEF")
      for op in ("nms", "qnms"):
        schema = "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
        _TORCHVISION_SCHEMAS.define(op + schema)
  import cleanfid.fid
  import cleanfid.resize
  import pytorch_fid.fid_score
  import pytorch_fid.inception

  return torch, pytorch_fid, cleanfid
