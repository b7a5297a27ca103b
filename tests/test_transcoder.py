"""Transcoders: an SAE that reads a module's input and reconstructs its output; reading a
module's input and several layers in one pass of the host."""

from __future__ import annotations

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_activation_sae import _eval, _lm_config, _sae_family, _tiny_host_and_data, _train
from test_cli import genlab_here

from conftest import EXPERIMENTS


class Block(nn.Module):
  @nn.compact
  def __call__(self, x):
    h = nn.LayerNorm(name="mlp_norm")(x)
    h = nn.Dense(2 * x.shape[-1], name="mlp_in")(h)
    h = nn.Dense(x.shape[-1], name="mlp_out")(nn.gelu(h))
    self.sow("intermediates", "mlp", h)
    return x + h


class Host(nn.Module):
  @nn.compact
  def __call__(self, x):
    return Block(name="block_1")(Block(name="block_0")(x))


class NNXBlock(nnx.Module):
  def __init__(self, width, rngs):
    self.norm = nnx.LayerNorm(width, rngs=rngs)
    self.mlp_in = nnx.Linear(width, 2 * width, rngs=rngs)
    self.mlp_out = nnx.Linear(2 * width, width, rngs=rngs)

  def __call__(self, x):
    return x + self.mlp_out(nnx.gelu(self.mlp_in(self.norm(x))))


class NNXHost(nnx.Module):
  def __init__(self, width, rngs):
    self.blocks = nnx.List([NNXBlock(width, rngs), NNXBlock(width, rngs)])

  def __call__(self, x):
    for block in self.blocks:
      x = block(x)
    return x


def test_a_modules_input_and_several_layers_are_read_in_one_pass():
  from genlab.models.activations import capture, capture_many

  model = Host()
  x = jax.random.normal(jax.random.key(0), (2, 3, 4))
  variables = model.init(jax.random.key(1), x)
  layers = ["block_1/mlp_in:input", "block_1/mlp_norm", "block_1/mlp_out", "block_0"]
  output, (mlp_input, norm, mlp_out, block_0) = jax.jit(
    lambda v, x: capture_many(model, v, layers, x)
  )(variables, x)
  np.testing.assert_array_equal(mlp_input, norm)  # mlp_in reads what the norm gives.
  np.testing.assert_array_equal(output, jax.jit(model.apply)(variables, x))
  np.testing.assert_allclose(output, block_0 + mlp_out, rtol=1e-6, atol=1e-6)
  for layer, value in zip(layers, (mlp_input, norm, mlp_out, block_0), strict=True):
    one = jax.jit(lambda v, x, layer=layer: capture(model, v, layer, x)[1])(variables, x)
    np.testing.assert_array_equal(one, value)  # The same program's values, one by one.
  # A module's input is read, not replaced.
  from genlab.errors import ConfigError
  from genlab.models.activations import splice

  with pytest.raises(ConfigError, match="can be read, not replaced"):
    splice(model, variables, "block_1/mlp_in:input", lambda a: a, x)


def test_an_nnx_modules_input_is_read_with_its_output_in_one_pass():
  from genlab.core.nnx_model import NNXModel
  from genlab.models.activations import capture_many

  adapter, params = NNXModel.of(NNXHost(4, nnx.Rngs(0)))
  x = jax.random.normal(jax.random.key(0), (2, 3, 4))
  layers = ["blocks/1/norm", "blocks/1/mlp_in:input", "blocks/1/mlp_out:input", "blocks/1/mlp_in"]
  _, (norm, mlp_input, out_input, hidden) = jax.jit(
    lambda p, x: capture_many(adapter, {"params": p}, layers, x)
  )(params, x)
  np.testing.assert_array_equal(mlp_input, norm)
  np.testing.assert_allclose(out_input, jax.nn.gelu(hidden), rtol=1e-6, atol=1e-6)


def _tiny_transcoder(code="topk", **sae):
  """A transcoder from the input of the tiny host's Dense layer `hidden` (6 wide) to its
  output (8 wide)."""
  import dataclasses

  host, data = _tiny_host_and_data()
  host = dataclasses.replace(host, layer="hidden:input")
  family = _sae_family(code=code, host_and_data=(host, data), output_layer="hidden", **sae)
  return family, host


def test_a_perfect_transcoder_recovers_the_clean_loss():
  """The module's own map, through the two normalisations, is a perfect transcoder: its
  splice gives the clean loss, no KL and no unexplained variance."""
  from genlab.sae import SAEObjective

  family, host = _tiny_transcoder()
  source = family.source
  kernel, bias = host.params["hidden"]["kernel"], host.params["hidden"]["bias"]
  assert family.width == 8 and source.width == 6  # Reconstructs 8 from 6.

  class Perfect(SAEObjective):
    def reconstruct(self, params, x, weights, stats, *, train):
      _, code, pre, new = super().reconstruct(params, x, weights, stats, train=train)
      raw = x / source.scales["hidden:input"] + source.shifts["hidden:input"]
      y = raw @ kernel + bias
      return (y - source.shifts["hidden"]) * source.scales["hidden"], code, pre, new

  family.objective = Perfect(family.model, family.options, family.tx)
  state = family.init_state(jax.random.key(0), None)
  m = _eval(family, state)
  assert m["loss_sae"] == pytest.approx(m["loss_clean"], rel=1e-5)
  assert m["kl_sae"] == pytest.approx(0.0, abs=1e-5)
  assert m["loss_recovered"] == pytest.approx(1.0, abs=1e-4)
  assert m["fvu"] == pytest.approx(0.0, abs=1e-5) and m["loss_zero"] != m["loss_clean"]
  # An SAE on the input would be judged on the input: the transcoder's target differs.
  assert not np.allclose(source.scales["hidden"][0], source.scales["hidden:input"][0])


@pytest.mark.slow
def test_a_transcoder_learns_the_modules_map():
  family, _ = _tiny_transcoder(normalize="per_dimension")
  untrained = _eval(family, family.init_state(jax.random.key(0), None))
  state, metrics = _train(family, 300)
  trained = _eval(family, state)
  assert trained["fvu"] < 0.2 < untrained["fvu"], (trained["fvu"], untrained["fvu"])
  assert trained["loss_recovered"] > 0.8 and trained["l0"] == pytest.approx(2.0)
  # Trained to reconstruct the output, not the input: the decoder has the output's width.
  assert state.params["model"]["decoder"]["kernel"].shape == (32, 8)
  assert state.params["model"]["encoder"]["kernel"].shape == (6, 32)


def test_resampling_gives_a_transcoders_dead_latents_output_directions():
  from genlab.sae.training import resample_dead_latents

  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(16, 6)), rng.normal(size=(16, 8))
  params = {
    "encoder": {"kernel": jnp.ones((6, 4)), "bias": jnp.ones(4)},
    "decoder": {"kernel": jnp.ones((4, 8)), "bias": jnp.zeros(8)},
  }
  loss = np.zeros(16)
  loss[5] = 1.0  # Only row 5 can be drawn.
  dead = jnp.array([False, True, False, True])
  new, _ = resample_dead_latents(
    jax.random.key(0), params, jnp.asarray(x), jnp.asarray(loss), dead, target=jnp.asarray(y)
  )
  unit_y, unit_x = y[5] / np.linalg.norm(y[5]), x[5] / np.linalg.norm(x[5])
  np.testing.assert_allclose(new["decoder"]["kernel"][1], unit_y, rtol=1e-6)
  np.testing.assert_allclose(new["decoder"]["kernel"][3], unit_y, rtol=1e-6)
  np.testing.assert_allclose(new["decoder"]["kernel"][0], np.ones(8))
  cosine = new["encoder"]["kernel"][:, 1] @ unit_x / np.linalg.norm(new["encoder"]["kernel"][:, 1])
  assert cosine == pytest.approx(1.0, abs=1e-6)


def test_import_refuses_a_transcoder_for_an_sae_and_the_reverse_in_one_line(tmp_path):
  from genlab import config as config_lib
  from genlab.errors import ConfigError
  from genlab.run.interchange import import_workdir
  from genlab.sae import saelens

  rng = np.random.default_rng(0)

  def files(name, architecture, d_out):
    tensors = {
      "W_enc": rng.normal(size=(96, 32)).astype(np.float32),
      "b_enc": np.zeros(32, np.float32),
      "W_dec": rng.normal(size=(32, d_out)).astype(np.float32),
      "b_dec": np.zeros(d_out, np.float32),
    }
    cfg = {"architecture": architecture, "d_in": 96, "d_sae": 32, "apply_b_dec_to_input": False}
    if architecture == "transcoder":
      cfg.update(d_out=d_out, metadata={"hook_name_out": "block_1/mlp_out"})
    saelens.write(tmp_path / name, cfg, tensors)
    return tmp_path / name

  sae, transcoder = files("sae", "standard", 96), files("transcoder", "transcoder", 96)
  config = config_lib.load_experiment(EXPERIMENTS / "transcoder_pydoc_mlp.py")
  with pytest.raises(ConfigError, match="not a transcoder: leave config.sae.output_layer"):
    import_workdir(sae, config, tmp_path / "out")
  config = config_lib.load_experiment(EXPERIMENTS / "sae_pydoc_residual.py")
  with pytest.raises(ConfigError, match="is a transcoder .*'block_1/mlp_out'.*output_layer"):
    import_workdir(transcoder, config, tmp_path / "out")
  config.sae.variants = "a: k=2; b: k=4"
  with pytest.raises(ConfigError, match="leave config.sae.variants"):
    import_workdir(sae, config, tmp_path / "out")
  assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_transcoder_on_the_mlp_of_block_1_trains_through_the_cli(data_dir, tmp_path, capsys):
  """experiments/transcoder_pydoc_mlp.py, tiny, on a tiny char_lm_pydoc: `genlab train`
  and `genlab eval` report loss recovered, FVU and L0 of the MLP's output; `genlab export`
  writes it as SAELens' jumprelu_transcoder, and `genlab import` of those files evaluates
  to the same figures on the same host."""
  from genlab.run import train_and_evaluate

  host = tmp_path / "char_lm"
  train_and_evaluate(_lm_config(data_dir), host)
  sae = tmp_path / "transcoder"
  overrides = [
    f"--config.data.data_dir={data_dir}",
    "--config.mesh.devices=1",
    f"--config.sae.host_workdir={host}",
    "--config.sae.aux_k=8",
    "--config.model.code_dim=64",
    "--config.model.k=4",
    "--config.num_steps=20",
    "--config.log_every=10",
    "--config.eval_every=20",
    "--config.image_every=20",
    "--config.checkpoint_every=20",
  ]

  def genlab(*args):  # genlab.cli in this process: the commands' paths, not a new JAX.
    return genlab_here(capsys, *args)

  config = str(EXPERIMENTS / "transcoder_pydoc_mlp.py")
  done = genlab("train", "--config", config, "--workdir", str(sae), *overrides)
  assert done.returncode == 0, done.stderr[-3000:]
  done = genlab("eval", "--workdir", str(sae))
  assert done.returncode == 0, done.stderr[-3000:]
  report = json.loads((sae / "eval.json").read_text())
  m, protocol = report["metrics"], report["protocol"]
  assert protocol["layer"] == "block_1/mlp_in:input" and protocol["transcoder"] is True
  assert protocol["output_layer"] == "block_1/mlp_out" and protocol["output_width"] == 16
  # 20 steps: no quality bar (test_a_transcoder_learns_the_modules_map has one).
  assert m["fvu"] > 0 and m["explained_variance"] == pytest.approx(1 - m["fvu"])
  assert m["l0"] == pytest.approx(4.0, abs=0.5)
  assert m["loss_recovered"] == pytest.approx(
    (m["loss_zero"] - m["loss_sae"]) / (m["loss_zero"] - m["loss_clean"])
  )
  assert m["loss_zero"] != m["loss_clean"]  # Ablating the MLP changes the host's loss.
  exported = tmp_path / "exported"
  done = genlab("export", "--workdir", str(sae), "--format", "saelens", str(exported))
  assert done.returncode == 0, done.stderr[-3000:]
  cfg = json.loads((exported / "cfg.json").read_text())
  assert cfg["architecture"] == "jumprelu_transcoder"  # The experiment's code is batchtopk.
  assert (cfg["d_in"], cfg["d_out"]) == (16, 16)
  assert cfg["metadata"]["hook_name"] == "block_1/mlp_in:input"
  assert cfg["metadata"]["hook_name_out"] == "block_1/mlp_out"
  imported = tmp_path / "imported"
  args = ["import", str(exported), "--config", config, "--workdir", str(imported)]
  done = genlab(*args, *overrides[:3])
  assert done.returncode == 0, done.stderr[-3000:]
  done = genlab("eval", "--workdir", str(imported))
  assert done.returncode == 0, done.stderr[-3000:]
  after = json.loads((imported / "eval.json").read_text())
  assert after["protocol"]["transcoder"] is True and after["protocol"]["sae"]["normalize"] == "none"
  # The same transcoder on the same host, its normalisations folded into float32 weights.
  for name in ("l0", "fvu", "loss_recovered", "kl_sae", "loss_sae"):
    assert after["metrics"][name] == pytest.approx(m[name], rel=1e-4), name
  assert after["metrics"]["loss_clean"] == m["loss_clean"]
