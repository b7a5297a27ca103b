"""NNX models: a family's model (`genlab.core.NNXModel`) and an SAE's host
(`genlab.models.activations`), with the models of tests/nnx_models.py."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import ml_collections
import nnx_models
import numpy as np
import pytest
from flax import nnx

from conftest import (
  EXPERIMENTS,
  REPO,
  compare_parallel,
  make_test_config,
  restore_latest,
  wait_for_step,
)
from genlab.core import NNXModel
from genlab.errors import ConfigError
from genlab.models import HostModel, capture, splice

NNX_AE = "nnx_models:ConvAutoencoder"
EXIT_PREEMPTED = 75


def _tokens(seed=1, shape=(3, 12)):
  return jax.random.randint(jax.random.key(seed), shape, 0, 96)


def _genlab(*args, devices=1, popen=False, **kwargs):
  """`python -m genlab ...` on this checkout, with tests/ importable (nnx_models)."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "tests"), env.get("PYTHONPATH", "")])
  command = [sys.executable, "-m", "genlab", *map(str, args)]
  if popen:
    return subprocess.Popen(command, env=env, cwd=REPO, stderr=subprocess.PIPE, text=True)
  return subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, **kwargs)


# The adapter -----------------------------------------------------------------------------


def test_the_adapter_gives_the_modules_own_params_and_calls():
  fields = {"output_shape": (8, 8, 1), "features": (4, 8), "latent_dim": 3}
  model = NNXModel(nnx_models.ConvAutoencoder, fields)
  key = jax.random.key(7)
  params = jax.jit(model.init)(key, jnp.zeros((1, 8, 8, 1)))["params"]
  module = nnx_models.ConvAutoencoder(**fields, rngs=nnx.Rngs(key))
  own = nnx.to_pure_dict(nnx.state(module, nnx.Param))
  # The same values, with string keys (an nnx.List's 0 becomes '0', as a checkpoint gives it).
  assert set(params["convs"]) == {"0", "1"}
  chex.assert_trees_all_equal(jax.tree.leaves(params), jax.tree.leaves(own))
  x = jax.random.uniform(jax.random.key(1), (2, 8, 8, 1))
  output, aux = jax.jit(lambda p, x: model.apply({"params": p}, x))(params, x)
  want_output, want_aux = module(x)
  np.testing.assert_array_equal(output, want_output)
  np.testing.assert_array_equal(aux["code"], want_aux["code"])
  code = model.apply({"params": params}, x, method="encode")
  np.testing.assert_array_equal(code, module.encode(x))
  np.testing.assert_array_equal(
    model.apply({"params": params}, code, method=type(module).decode), module.decode(code)
  )
  assert model.latent_dim == 3 and model.kernel_size == 3  # Fields, and defaults, read as Linen's.
  # Gradients flow to every parameter.
  grads = jax.grad(lambda p: jnp.sum(model.apply({"params": p}, x)[0]))(params)
  assert all(float(jnp.abs(g).sum()) > 0 for g in jax.tree.leaves(grads))


def test_what_the_adapter_cannot_give_is_refused_in_one_line():
  with pytest.raises(ConfigError, match=r"WithBatchNorm holds BatchStat state \(norm/mean"):
    NNXModel(nnx_models.WithBatchNorm, {"output_shape": (4,)}).init(jax.random.key(0))
  model = NNXModel(nnx_models.ConvAutoencoder, {"output_shape": (8, 8, 1)})
  params = model.init(jax.random.key(0))["params"]
  with pytest.raises(ConfigError, match="Linen collections"):
    model.apply({"params": params}, jnp.zeros((1, 8, 8, 1)), mutable=["batch_stats"])
  with pytest.raises(ConfigError, match="reads 'spectral_norm' of its model, and the NNX model"):
    _ = model.spectral_norm  # What the GAN reads of a discriminator, say.
  assert not hasattr(model, "spectral_norm") and getattr(model, "spectral_norm", 0) == 0
  with pytest.raises(ConfigError, match="unexpected keyword argument 'widths'"):
    _ = NNXModel(nnx_models.ConvAutoencoder, {"output_shape": (8, 8, 1), "widths": 3}).graphdef


class _HeldDropout(nnx.Module):
  def __init__(self, *, rngs):
    self.linear = nnx.Linear(3, 3, rngs=rngs)
    self.drop = nnx.Dropout(0.5, rngs=rngs)  # A random stream held in the module.

  def __call__(self, x):
    return self.drop(self.linear(x))


class _PassedDropout(nnx.Module):
  def __init__(self, *, rngs):
    self.linear = nnx.Linear(3, 3, rngs=rngs)
    self.drop = nnx.Dropout(0.5)

  def __call__(self, x, *, rngs=None):
    return self.drop(self.linear(x), rngs=rngs)


def test_randomness_comes_in_by_apply_and_a_held_stream_is_refused():
  with pytest.raises(ConfigError, match=r"_HeldDropout holds RngCount, RngKey state"):
    NNXModel(_HeldDropout, {}).init(jax.random.key(0))
  model = NNXModel(_PassedDropout, {})
  variables = model.init(jax.random.key(0))
  x = jnp.ones((4, 3))
  first, again, other = (
    model.apply(variables, x, rngs={"dropout": jax.random.key(k)}) for k in (1, 1, 2)
  )
  np.testing.assert_array_equal(first, again)  # The key, and nothing else, decides.
  assert not np.array_equal(first, other) and float(jnp.sum(first == 0)) > 0


@pytest.mark.slow
def test_a_family_builds_an_nnx_model_named_by_config(data_dir):
  from genlab.run import setup

  config = make_test_config(data_dir, **{"model.name": NNX_AE})
  s = setup(config)
  assert isinstance(s.family.model, NNXModel) and s.family.model.fields["output_shape"] == (8, 8, 1)
  params = s.initial_state.params["model"]
  assert params["code"]["kernel"].shape == (2 * 2 * 16, 8)  # config.model's features and code.
  config = make_test_config(data_dir, **{"model.name": "nnx_models:WithBatchNorm"})
  with pytest.raises(ConfigError, match="nnx.Param only"):
    setup(config)


# Hosts -----------------------------------------------------------------------------------


class _WithSpare(nnx.Module):
  def __init__(self, *, rngs):
    self.used = nnx.Linear(2, 2, rngs=rngs)
    self.spare = nnx.Linear(2, 2, rngs=rngs)  # Never called.

  def __call__(self, x):
    return self.used(x)


def test_the_kl_sparse_ae_starts_an_nnx_models_code_units_at_the_target_rate(data_dir):
  """The image sparse AE sets `code_bias_init` = logit(ρ) on its model (`NNXModel.clone`);
  an NNX model whose constructor takes no such argument is refused in one line."""
  from genlab.config import base_config
  from genlab.data import load_dataset
  from genlab.families.sparse_ae import SparseAutoencoder

  config = base_config("sparse_autoencoder")
  config.dataset = "digits"
  config.data.data_dir = data_dir
  config.model = ml_collections.ConfigDict(
    {"name": "nnx_models:SparseAE", "code_dim": 16, "code": "sigmoid"}
  )
  config.sparsity.update(kind="kl", rho=0.05)
  dataset = load_dataset("digits", data_dir=data_dir)
  family = SparseAutoencoder(config, dataset, root_key=jax.random.key(0), kernels="flax")
  assert isinstance(family.model, NNXModel)
  logit = float(np.log(0.05 / 0.95))
  assert family.model.code_bias_init == pytest.approx(logit)
  params = family.model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"]
  np.testing.assert_allclose(params["encoder"]["bias"], np.full(16, logit), rtol=1e-6)
  config.model.name = "nnx_models:SparseAEWithoutBiasInit"
  with pytest.raises(ConfigError, match="sets 'code_bias_init' of its model.*no such argument"):
    SparseAutoencoder(config, dataset, root_key=jax.random.key(0), kernels="flax")


def test_capture_gives_exactly_what_a_direct_call_of_the_addressed_module_gives():
  host = nnx_models.token_mlp_host()
  module = nnx_models.TokenMLP(vocab=96, rngs=nnx.Rngs(0))  # The host's model, as constructed.
  tokens = _tokens()
  residual = module.blocks[0](module.embed(tokens))
  output, activation = jax.jit(lambda p, t: capture(host.model, {"params": p}, "blocks/0", t))(
    host.params, tokens
  )
  np.testing.assert_array_equal(activation, residual)
  np.testing.assert_array_equal(output, module(tokens))
  _, hidden = capture(host.model, {"params": host.params}, "blocks/1/hidden", tokens)
  np.testing.assert_array_equal(
    hidden, module.blocks[1].hidden(module.blocks[0](module.embed(tokens)))
  )
  # A sown value, by NNX's own sow: the last one of blocks/1.
  _, sown = capture(
    host.model, {"params": host.params}, "intermediates/blocks/1/hidden_act", tokens
  )
  chex.assert_shape(sown, (3, 12, 32))
  # The host's class is left as it was.
  assert type(module.blocks[0]) is nnx_models.Block
  with pytest.raises(ConfigError, match="no submodule at that path; it has blocks, blocks/0"):
    capture(host.model, {"params": host.params}, "blocks/2", tokens)
  with pytest.raises(ConfigError, match="'blocks': List has no __call__ to read"):
    capture(host.model, {"params": host.params}, "blocks", tokens)
  spare, params = NNXModel.of(_WithSpare(rngs=nnx.Rngs(0)))
  for read in (
    lambda: capture(spare, {"params": params}, "spare", jnp.ones((1, 2))),
    lambda: splice(spare, {"params": params}, "spare", jnp.zeros_like, jnp.ones((1, 2))),
  ):
    with pytest.raises(ConfigError, match="'spare': the model does not call the submodule"):
      read()
  with pytest.raises(ConfigError, match="sows no 'nothing'"):
    capture(host.model, {"params": host.params}, "intermediates/blocks/1/nothing", tokens)


def test_a_spliced_identity_gives_the_clean_loss_and_zeros_do_not():
  host = nnx_models.token_mlp_host()
  batch = {"image": _tokens(2, (4, 32)), "length": jnp.array([32, 20, 5, 32])}
  clean, _ = host.capture(batch)
  spliced = jax.jit(lambda b, p: host.splice(b, lambda a: a, p))(batch, host.params)
  clean_loss, weights = host.token_loss(clean, batch)
  spliced_loss, _ = host.token_loss(spliced, batch)
  np.testing.assert_array_equal(spliced_loss, clean_loss)
  zeroed_loss, _ = host.token_loss(host.splice(batch, jnp.zeros_like), batch)
  assert float(jnp.sum(jnp.abs(zeroed_loss - clean_loss) * weights)) > 1e-3


def test_the_docs_show_the_nnx_models_as_they_are():
  import re

  models = (REPO / "tests" / "nnx_models.py").read_text()
  for page, section in [
    ("extending.md", "## Your model in NNX"),
    ("families/sparse_ae.md", "### An NNX host"),
  ]:
    text = (REPO / "docs" / page).read_text()
    blocks = re.findall(r"```python\n(.*?)```", text[text.index(section) :], re.DOTALL)
    assert blocks and all(block in models for block in blocks[:1]), page


def test_a_host_is_a_constructed_flax_model():
  with pytest.raises(ConfigError, match="is the class TokenMLP; give the trained model"):
    HostModel(nnx_models.TokenMLP, None, "blocks/0", tuple, tuple, tuple)
  with pytest.raises(ConfigError, match="is a dict; an SAE's host is a flax.linen or flax.nnx"):
    HostModel({}, {}, "blocks/0", tuple, tuple, tuple)
  with pytest.raises(ConfigError, match="holds BatchStat state"):
    nnx_models.batchnorm_host()


# Through the run layer ---------------------------------------------------------------------


@pytest.mark.slow
def test_the_worked_examples_family_trains_the_nnx_model(data_dir, tmp_path):
  from genlab.families import contractive_ae
  from genlab.run import evaluate_workdir, setup, train_and_evaluate

  config = make_test_config(data_dir, family="contractive_autoencoder", **{"model.name": NNX_AE})
  config.contractive = contractive_ae.options(weight=1.0)
  s = setup(config)
  family, params = s.family, s.initial_state.params["model"]
  x = jax.random.uniform(jax.random.key(3), (3, 8, 8, 1))

  def encode_one(image):
    return family.model.apply({"params": params}, image[None], method="encode")[0]

  jacobians = jax.vmap(jax.jacrev(encode_one))(x)
  expected = np.sum(np.square(np.asarray(jacobians)), axis=(1, 2, 3, 4))
  np.testing.assert_allclose(jax.jit(family.contraction)(params, x), expected, rtol=1e-5)

  config.update(num_steps=20, eval_every=20, image_every=20, checkpoint_every=20)
  result = train_and_evaluate(config, tmp_path / "run")
  lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").open()]
  train = [m["train/loss"] for m in lines if "train/loss" in m]
  assert train[-1] < train[0]
  # The checkpoint restores to the trained state, and `genlab eval` runs on it.
  step, restored = restore_latest(tmp_path / "run")
  assert step == 20
  chex.assert_trees_all_equal(restored.params, jax.device_get(result.state.params))
  report = evaluate_workdir(tmp_path / "run")
  assert report["protocol"] == {"weight": 1.0, "code_units": 8}
  assert np.isfinite(report["metrics"]["contraction"])


@pytest.mark.slow
def test_one_and_four_devices_agree_data_parallel_and_fsdp(data_dir, monkeypatch):
  monkeypatch.setenv(
    "PYTHONPATH",
    os.pathsep.join([str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]),
  )
  rows = compare_parallel(
    "conv_ae_digits.py", data_dir, f"--config.model.name={NNX_AE}", steps=20, modes="data,fsdp"
  )
  reference = np.array(rows["one"]["losses"])
  assert len(reference) == 20 and reference[-1] < reference[0]
  for mode in ("data", "fsdp"):
    assert rows[mode]["devices"] == 4
    np.testing.assert_allclose(rows[mode]["losses"], reference, rtol=1e-4, err_msg=mode)
    assert rows[mode]["max_abs_param_diff_vs_1_device"] < 1e-5, rows[mode]


@pytest.mark.slow
def test_killed_with_sigterm_then_resumed_equals_an_unbroken_run(data_dir, tmp_path, capsys):
  from test_cli import genlab_here

  def args(workdir, steps):
    return [
      "train",
      "--config",
      EXPERIMENTS / "conv_ae_digits.py",
      "--workdir",
      workdir,
      f"--config.data.data_dir={data_dir}",
      f"--config.model.name={NNX_AE}",
      f"--config.num_steps={steps}",
      "--config.log_every=1",
      "--config.eval_every=300",
      "--config.image_every=300",
      "--config.checkpoint_every=100",
    ]

  # The unbroken run is not what is signalled: genlab.cli runs it in this process.
  reference = genlab_here(capsys, *map(str, args(tmp_path / "ref", 300)))
  assert reference.returncode == 0, reference.stderr[-3000:]
  # Killed while it runs with no end of its own, then resumed to the reference's 300 steps.
  kill_at = random.Random().randint(20, 150)
  proc = _genlab(*args(tmp_path / "run", 1_000_000), popen=True)
  try:
    wait_for_step(tmp_path / "run", kill_at, [proc])
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
  finally:
    proc.kill()
  assert proc.returncode == EXIT_PREEMPTED, err[-3000:]
  saved_step, _ = restore_latest(tmp_path / "run")
  assert kill_at <= saved_step < 300, (kill_at, saved_step)
  resumed = _genlab(*args(tmp_path / "run", 300))
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"resuming from the checkpoint of step {saved_step}" in resumed.stdout
  ref_step, ref_state = restore_latest(tmp_path / "ref")
  step, state = restore_latest(tmp_path / "run")
  assert step == ref_step == 300
  chex.assert_trees_all_equal(state.params, ref_state.params)
  chex.assert_trees_all_equal(state.opt_state, ref_state.opt_state)


def _sae_args(data_dir, workdir, factory):
  return [
    "train",
    "--config",
    EXPERIMENTS / "sae_pydoc_residual.py",
    "--workdir",
    workdir,
    f"--config.data.data_dir={data_dir}",
    "--config.sae.host_workdir=",
    f"--config.sae.host_factory={factory}",
    "--config.model.code_dim=64",
    "--config.model.k=4",
    "--config.sae.aux_k=8",
    "--config.num_steps=10",
    "--config.eval_every=10",
    "--config.image_every=10",
    "--config.checkpoint_every=10",
  ]


@pytest.mark.slow
def test_an_sae_trains_on_an_nnx_host_through_the_cli(data_dir, tmp_path):
  workdir = tmp_path / "sae"
  trained = _genlab(*_sae_args(data_dir, workdir, "nnx_models:token_mlp_host"))
  assert trained.returncode == 0, trained.stderr[-3000:]
  evaluated = _genlab("eval", "--workdir", workdir)  # The host made again by its factory.
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  report = json.loads((workdir / "eval.json").read_text())
  m, protocol = report["metrics"], report["protocol"]
  assert protocol["host"] == "tests/nnx_models.py TokenMLP, seed 0"
  assert protocol["layer"] == "blocks/0" and protocol["width"] == 16
  for name in ("fvu", "l0", "loss_clean", "loss_sae", "loss_zero", "kl_sae"):
    assert np.isfinite(m[name]), name
  assert m["loss_recovered"] == pytest.approx(
    (m["loss_zero"] - m["loss_sae"]) / (m["loss_zero"] - m["loss_clean"])
  )
  from genlab.run import resources, restore_workdir

  _, state, step = restore_workdir(workdir, provide=resources.provide)
  assert step == 10
  host = nnx_models.token_mlp_host()
  chex.assert_trees_all_equal(state.stats["host"], host.params)  # The host rides in the state.


@pytest.mark.slow
def test_what_genlab_cannot_use_of_an_nnx_model_is_refused_in_one_line(data_dir, tmp_path):
  host = _genlab(*_sae_args(data_dir, tmp_path / "sae", "nnx_models:batchnorm_host"), popen=True)
  model = _genlab(
    "train",
    "--config",
    EXPERIMENTS / "conv_ae_digits.py",
    "--workdir",
    tmp_path / "ae",
    f"--config.data.data_dir={data_dir}",
    "--config.model.name=nnx_models:WithBatchNorm",
    popen=True,
  )
  for proc in (host, model):  # Both at once: each is mostly the start of a process.
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err[-3000:]
    (line,) = err.strip().splitlines()
    assert line.startswith("genlab: error: the NNX model WithBatchNorm holds BatchStat state")
  assert not (tmp_path / "sae").exists() and not (tmp_path / "ae").exists()
