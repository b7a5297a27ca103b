"""A set of SAEs trained from one pass of the host (`sae.variants`): each equals the same SAE
trained alone, resumes bit-exactly, splits over devices, and reports on its own."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal

import chex
import jax
import numpy as np
import pytest
from test_activation_sae import _eval, _sae_family, _tiny_host_and_data, _train
from test_cli import genlab_here
from test_nnx import EXIT_PREEMPTED, _genlab

from conftest import EXPERIMENTS, REPO, compare_parallel, primitive_eqns, wait_for_step

# Two layers × two k on TinyHost: its Dense layers `hidden` (8 wide) and `out` (3).
VARIANTS = "h2: k=2; h4: k=4; r2: k=2, layer=out; r4: k=4, layer=out"
ALONE = {
  "h2": ("hidden", 2),
  "h4": ("hidden", 4),
  "r2": ("out", 2),
  "r4": ("out", 4),
}


def test_variants_are_parsed_and_what_cannot_vary_is_refused_in_one_line():
  from genlab.errors import ConfigError
  from genlab.families.activation_sae import parse_variants

  assert parse_variants("a: k=16, layer=block_0; b: matryoshka_widths=(64, 256), l1=0.5") == {
    "a": {"k": 16, "layer": "block_0"},
    "b": {"matryoshka_widths": (64, 256), "l1": 0.5},
  }
  assert parse_variants("") == {}
  for text, match in [
    ("k=16", "is not 'name: field=value"),
    ("a: k=1; a: k=2", "given twice"),
    ("host: k=2", "reserved"),
    ("a: k", "is not field=value"),
  ]:
    with pytest.raises(ConfigError, match=match):
      parse_variants(text)
  with pytest.raises(ConfigError, match="'normalize' is neither a field of"):
    _sae_family(variants="a: normalize=none")
  with pytest.raises(ConfigError, match=r"variants b: sae.aux_k=64 must lie in 0..code_dim=32"):
    _sae_family(code="topk", variants="a: k=2; b: aux_k=64")
  with pytest.raises(ConfigError, match="variants a: l1='x': config.sae.l1 is a float"):
    _sae_family(code="relu", variants="a: l1=x")


def test_four_saes_from_one_pass_equal_the_same_four_trained_alone():
  """Two layers × two k: same key, same batches, so each SAE of the set takes the steps it
  takes alone; the host runs once per step for all four."""
  host, data = _tiny_host_and_data()
  family = _sae_family(host_and_data=(host, data), variants=VARIANTS, aux_k=4)
  assert [m.name for m in family.members] == list(ALONE)
  state, metrics = _train(family, 40)
  report = _eval(family, state)
  for name, (layer, k) in ALONE.items():
    alone = _sae_family(
      host_and_data=(dataclasses.replace(host, layer=layer), data), model={"k": k}, aux_k=4
    )
    alone_state, alone_metrics = _train(alone, 40)
    chex.assert_trees_all_close(
      state.params[name], alone_state.params["model"], rtol=1e-5, atol=1e-6
    )
    chex.assert_trees_all_close(state.stats[name], alone_state.stats["model"], rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(
      state.opt_state[name], alone_state.opt_state["model"], rtol=1e-4, atol=1e-7
    )
    assert metrics[f"{name}/loss"] == pytest.approx(float(alone_metrics["loss"]), rel=1e-5)
    alone_report = _eval(alone, alone_state)
    for metric in ("fvu", "l0", "loss_sae", "loss_recovered", "dead_fraction", "kl_sae"):
      assert report[f"{name}/{metric}"] == pytest.approx(alone_report[metric], rel=1e-4, abs=1e-6)
  # Different layers and k give different SAEs (the comparison above could not pass by
  # comparing one SAE with itself).
  assert report["h2/fvu"] != report["r2/fvu"] and report["h2/l0"] < report["h4/l0"]


def test_a_set_runs_the_host_once_per_step():
  host, data = _tiny_host_and_data()
  batch = {k: v[:8] for k, v in data.train.items()}

  def host_outputs(family):
    """The host's first layer ("hidden", 6 → 8) in the train step's program (no SAE maps
    from a width of 6)."""
    state = family.init_state(jax.random.key(0), None)
    eqns = primitive_eqns(family.train_step, state, batch, jax.random.key(1))
    return sum(e.invars[0].aval.shape[-1] == 6 for e in eqns)

  assert host_outputs(_sae_family(host_and_data=(host, data), variants=VARIANTS)) == 1
  assert host_outputs(_sae_family(host_and_data=(host, data))) == 1


def test_a_sets_eval_shares_the_hosts_clean_and_zero_ablated_passes():
  """The eval step of four SAEs on two layers runs the host 1 (clean) + 2 (zero-ablated,
  one per layer) + 4 (each SAE's splice) times, where four lone ones run it 3 times each."""
  host, data = _tiny_host_and_data()
  batch = {**{k: v[:8] for k, v in data.test.items()}, "mask": np.ones(8, np.float32)}

  def host_passes(family):
    state = family.init_state(jax.random.key(0), None)
    eqns = primitive_eqns(family.eval_step, state, batch)
    return sum(e.invars[0].aval.shape[-1] == 6 for e in eqns)  # The host's first layer.

  assert host_passes(_sae_family(host_and_data=(host, data))) == 3
  assert host_passes(_sae_family(host_and_data=(host, data), variants=VARIANTS)) == 1 + 2 + 4


SET = (
  "k4_b0: k=4, layer=block_0; k8_b0: k=8, layer=block_0; k4_b1: k=4, layer=block_1; "
  "k8_b1: k=8, layer=block_1"
)


def _set_args(data_dir, workdir, steps, **extra):
  return [
    "train",
    "--config",
    str(EXPERIMENTS / "sae_pydoc_residual.py"),
    "--workdir",
    str(workdir),
    f"--config.data.data_dir={data_dir}",
    "--config.sae.host_workdir=",
    "--config.sae.host_factory=test_activation_sae:random_transformer_host",
    f"--config.sae.variants={SET}",
    "--config.model.code_dim=64",
    "--config.sae.aux_k=8",
    "--config.batch_size=16",
    "--config.mesh.devices=1",
    f"--config.num_steps={steps}",
    "--config.log_every=1",
    f"--config.eval_every={steps}",
    f"--config.image_every={steps}",
    "--config.checkpoint_every=20",
    *[f"--config.{k}={v}" for k, v in extra.items()],
  ]


@pytest.mark.slow
def test_a_set_killed_with_sigterm_then_resumed_equals_an_unbroken_run(data_dir, tmp_path, capsys):
  # The unbroken reference, the eval and the exports run in this process (genlab.cli); the
  # run that is signalled, and its resume, are processes of their own.
  reference = genlab_here(capsys, *_set_args(data_dir, tmp_path / "ref", 60))
  assert reference.returncode == 0, reference.stderr[-3000:]
  kill_at = random.Random().randint(10, 35)
  proc = _genlab(*_set_args(data_dir, tmp_path / "run", 1_000_000), popen=True)
  try:
    wait_for_step(tmp_path / "run", kill_at, [proc])
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
  finally:
    proc.kill()
  assert proc.returncode == EXIT_PREEMPTED, err[-3000:]
  resumed = _genlab(*_set_args(data_dir, tmp_path / "run", 60))
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "resuming from the checkpoint of step" in resumed.stdout
  from genlab.run import resources, restore_workdir

  _, ref_state, ref_step = restore_workdir(tmp_path / "ref", provide=resources.provide)
  _, state, step = restore_workdir(tmp_path / "run", provide=resources.provide)
  assert step == ref_step == 60
  assert sorted(state.params) == ["k4_b0", "k4_b1", "k8_b0", "k8_b1"]
  chex.assert_trees_all_equal(state.params, ref_state.params)
  chex.assert_trees_all_equal(state.opt_state, ref_state.opt_state)
  chex.assert_trees_all_equal(state.stats, ref_state.stats)
  # Each SAE's own metrics and eval report, and one view per SAE.
  evaluated = genlab_here(capsys, "eval", "--workdir", str(tmp_path / "run"))
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  report = json.loads((tmp_path / "run" / "eval.json").read_text())
  m, protocol = report["metrics"], report["protocol"]
  assert sorted(protocol["variants"]) == ["k4_b0", "k4_b1", "k8_b0", "k8_b1"]
  assert protocol["variants"]["k8_b1"]["layer"] == "block_1"
  assert protocol["variants"]["k8_b1"]["k"] == 8
  for name, k in (("k4_b0", 4), ("k8_b0", 8), ("k4_b1", 4), ("k8_b1", 8)):
    assert m[f"{name}/l0"] == pytest.approx(k, rel=0.3)
    assert f"{name}/fvu" in report["definitions"]
  assert m["k4_b0/fvu"] != m["k4_b1/fvu"]
  images = {p.name for p in (tmp_path / "run" / "images").iterdir()}
  assert "latent_density_k8_b1_step_000060.png" in images, images
  # One SAE of the set leaves in SAELens' format; the set as a whole is refused.
  out = tmp_path / "k8_b1"
  exported = genlab_here(
    capsys, "export", "--workdir", str(tmp_path / "run"), "--variant", "k8_b1", str(out)
  )
  assert exported.returncode == 0, exported.stderr[-3000:]
  cfg = json.loads((out / "cfg.json").read_text())
  assert cfg["metadata"]["hook_name"] == "block_1" and cfg["d_sae"] == 64
  from safetensors.numpy import load_file

  assert load_file(out / "sae_weights.safetensors")["W_dec"].shape == (64, 16)
  refused = genlab_here(capsys, "export", "--workdir", str(tmp_path / "run"), str(tmp_path / "all"))
  assert refused.returncode != 0
  assert "name one with --variant (k4_b0, k8_b0, k4_b1, k8_b1)" in refused.stderr


@pytest.mark.slow
def test_a_set_on_four_devices_with_fsdp_matches_one_device(data_dir, monkeypatch):
  tests = str(REPO / "tests")  # Where the host factory is, for the script's process.
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [tests, os.getenv("PYTHONPATH")])))
  rows = compare_parallel(
    "sae_pydoc_residual.py",
    data_dir,
    "--config.sae.host_workdir=",
    "--config.sae.host_factory=test_activation_sae:random_transformer_host",
    f"--config.sae.variants={SET}",
    "--config.model.code_dim=256",
    "--config.sae.aux_k=8",
    "--config.mesh.fsdp_min_size=1024",  # The SAEs' encoders and decoders are split.
    steps=6,
    modes="fsdp",
  )
  one, fsdp = rows["one"], rows["fsdp"]
  assert len(one["losses"][0]) == 4  # Each SAE's loss.
  np.testing.assert_allclose(fsdp["losses"], one["losses"], rtol=1e-4)
  assert fsdp["devices"] == 4
  assert fsdp["max_abs_param_diff_vs_1_device"] < 1e-5, fsdp
  assert fsdp["max_abs_stats_diff_vs_1_device"] < 1e-5, fsdp
