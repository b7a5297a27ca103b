"""What a researcher meets in their first hour: the commands beyond train/eval, no silent
traps, and outputs that say the same thing the same way."""

from __future__ import annotations

import json
import pathlib

import jax
import numpy as np
import pytest
from test_cli import assert_one_line_error, genlab, genlab_here

from conftest import EXPERIMENTS, make_test_config


def _write_experiment(path: pathlib.Path, body: str) -> pathlib.Path:
  header = '"""A tiny experiment for the tests."""\n\nfrom genlab.config import base_config\n\n\n'
  path.write_text(header + f"def get_config():\n{body}\n  return config\n")
  return path


TINY = """  config = base_config()
  config.batch_size = 64
  config.model.update(features=(8, 16), latent_dim=8)
  config.update(log_every=5, eval_every=10, image_every=10, checkpoint_every=10, num_images=4)
"""


@pytest.mark.slow
def test_num_steps_on_the_command_line_wins_over_the_experiments_num_epochs(
  data_dir, tmp_path, capsys
):
  # 1,497 digits at batch 64: 23 steps per epoch, so the experiment alone would train 46.
  experiment = _write_experiment(
    tmp_path / "epochs.py", TINY + "  config.num_epochs = 2\n  config.num_steps = None\n"
  )
  dd = f"--config.data.data_dir={data_dir}"
  proc = genlab_here(
    capsys,
    "train",
    "--config",
    str(experiment),
    "--workdir",
    str(tmp_path / "w"),
    dd,
    "--config.num_steps=10",
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "--config.num_steps given: the experiment's num_epochs=2 is not used" in proc.stderr
  steps = [json.loads(line)["step"] for line in (tmp_path / "w" / "metrics.jsonl").open()]
  assert max(steps) == 10
  saved = json.loads((tmp_path / "w" / "config.json").read_text())
  assert saved["num_steps"] == 10 and saved["num_epochs"] is None

  # An experiment that sets both is refused, naming both.
  both = _write_experiment(tmp_path / "both.py", TINY + "  config.num_epochs = 2\n")
  proc = genlab_here(capsys, "train", "--config", str(both), "--workdir", str(tmp_path / "b"), dd)
  assert_one_line_error(proc, "num_steps=1000", "num_epochs=2")
  assert not (tmp_path / "b").exists()


def test_list_shows_each_thing_by_the_name_a_config_gives_it_with_its_first_sentence(capsys):
  proc = genlab_here(capsys, "list")
  assert proc.returncode == 0, proc.stderr
  out = proc.stdout
  assert "conv_ae_digits           Convolutional autoencoder on the embedded `digits`" in out
  models = out[out.index("models (config.model.name") : out.index("embedded datasets")]
  # Models by the name config.model.name takes, each with its first sentence and families.
  assert "  rnn_ae                   A sequence → per-step MLP features" in models
  assert "[recurrent_autoencoder]" in models and "VAE" not in models.split()
  assert "Attributes:" not in out
  assert "  vq_vae                   An `Autoencoder` with `config.model.name='vq_vae'`: a " in out
  assert "re-initialisation. [options: config.vq]" in out  # The whole sentence, not half.
  assert "digits" in out and "pydoc_text" in out and "japanese_vowels" in out


def test_config_shows_the_models_fields_with_defaults_and_only_the_fields_the_family_reads(
  capsys,
):
  proc = genlab_here(
    capsys, "config", "--config", str(EXPERIMENTS / "vae_digits.py"), "--config.vae.beta=2.0"
  )
  assert proc.returncode == 0, proc.stderr
  config = json.loads(proc.stdout)
  assert config["family"] == "vae" and config["vae"]["beta"] == 2.0
  assert config["vae"]["nll_k"] == 5000 and config["mesh"]["devices"] == 0
  assert "loss" not in config and "corruption" not in config  # A VAE reads neither.
  model = config["model"]
  assert model["hidden"] == [256] and model["latent_dim"] == 8  # The experiment's.
  assert model["likelihood"] == "bernoulli" and model["activation"] == "relu"  # Defaults.
  assert "output_shape" not in model and "kernels" not in model  # The family sets those.
  denoising = genlab_here(capsys, "config", "--config", str(EXPERIMENTS / "denoising_digits.py"))
  assert json.loads(denoising.stdout)["corruption"] == "gaussian:0.5"
  proc = genlab_here(
    capsys, "config", "--config", str(EXPERIMENTS / "vae_digits.py"), "--config.vae.betta=2"
  )
  assert_one_line_error(proc, "did you mean --config.vae.beta")
  proc = genlab_here(capsys, "config", "--config", str(EXPERIMENTS / "vae_digit.py"))
  assert_one_line_error(proc, f"(did you mean {EXPERIMENTS / 'vae_digits.py'}?)")


# The conv autoencoder's codes: in test_train_on_fresh_data_then_encode_then_train_fresh_on_the_
# command_line.
FAMILIES_WITH_CODES = {  # The conv autoencoder: the command-line test below.
  "sparse_autoencoder": (
    {"family": "sparse_autoencoder", "model": {"name": "sparse_ae", "code_dim": 8}},
    {"code": (8,)},
  ),
  "contractive_autoencoder": (
    {"family": "contractive_autoencoder"},  # make_test_config's conv AE, latent_dim 8.
    {"code": (8,)},
  ),
  "vae": (
    {"family": "vae", "model": {"name": "vae", "hidden": (32,), "latent_dim": 4}},
    {"mean": (4,), "logvar": (4,)},
  ),
  "recurrent_autoencoder": (
    {
      "family": "recurrent_autoencoder",
      "dataset": "japanese_vowels",
      "batch_size": 10,
      "model": {"name": "rnn_ae", "hidden_dim": 8, "latent_dim": 3, "feature_dims": ()},
    },
    {"z": (3,)},
  ),
}


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES_WITH_CODES))
def test_encode_writes_every_examples_codes_as_evaluation_computes_them(family, data_dir, tmp_path):
  import ml_collections

  from genlab.data import eval_batches
  from genlab.run import restore_workdir, train_and_evaluate
  from genlab.run.commands import encode_workdir

  overrides, shapes = FAMILIES_WITH_CODES[family]
  overrides = dict(overrides)
  model = overrides.pop("model", None)
  config = make_test_config(data_dir, num_steps=10, **overrides)
  if model is not None:
    config.model = ml_collections.ConfigDict(model)
  train_and_evaluate(config, tmp_path / "w")
  out = encode_workdir(tmp_path / "w", out=tmp_path / "codes.npz")
  codes = dict(np.load(out))
  s, state, _ = restore_workdir(tmp_path / "w")
  n = len(s.dataset.test["image"])
  assert {k: v.shape for k, v in codes.items() if k != "label"} == {
    k: (n, *shape) for k, shape in shapes.items()
  }
  if "label" in s.dataset.test:
    np.testing.assert_array_equal(codes["label"], s.dataset.test["label"])
  # The first examples' codes, as the family's own evaluation path computes them.
  batch = next(eval_batches(s.dataset.test, global_batch_size=8, value_range=s.family.value_range))
  batch.pop("mask")
  params = state.params["model"]
  if family == "vae":  # What eval's ELBO terms see: the image binarized from the fixed key.
    _, _, aux = s.family.elbo_terms(params, batch, s.family.eval_key)
    np.testing.assert_allclose(codes["mean"][:8], aux["mean"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(codes["logvar"][:8], aux["logvar"], rtol=1e-5, atol=1e-6)
  elif family == "recurrent_autoencoder":
    _, aux = s.family.model.apply({"params": params}, batch["image"], batch["length"])
    np.testing.assert_allclose(codes["z"][:8], aux["z"], rtol=1e-5, atol=1e-6)
  else:  # The code the model's forward pass (and so the loss) sees.
    _, aux = s.family.model.apply({"params": params}, batch["image"])
    np.testing.assert_allclose(codes["code"][:8], aux["code"], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_train_on_fresh_data_then_encode_then_train_fresh_on_the_command_line(tmp_path, capsys):
  """One short run through the CLI serves three checks (each a `genlab train` less). The
  trains are processes of their own (what TFDS prints is checked); the encodes, which check
  files and one-line errors, run through genlab.cli in this process."""
  from genlab.data import eval_batches
  from genlab.run import restore_workdir
  from genlab.run.commands import move_aside

  # 1. The embedded data is built on first use with one genlab line, no TFDS banner.
  workdir = tmp_path / "w"
  common = [
    "train",
    "--config",
    str(EXPERIMENTS / "conv_ae_digits.py"),
    "--workdir",
    str(workdir),
    f"--config.data.data_dir={tmp_path / 'tfds'}",
    "--config.num_steps=10",
    "--config.checkpoint_every=10",
  ]
  proc = genlab(*common)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = proc.stdout + proc.stderr
  assert "genlab: building the embedded dataset digits" in out and "nothing is downloaded" in out
  assert "Downloading" not in out and "downloaded and prepared" not in out
  assert "dataset_info.json" not in out

  # 2. `genlab encode`: the test split's codes, as evaluation computes them.
  proc = genlab_here(capsys, "encode", "--workdir", str(workdir), "--out", str(tmp_path / "t.npz"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  codes = np.load(tmp_path / "t.npz")
  s, state, _ = restore_workdir(workdir)
  batch = next(eval_batches(s.dataset.test, global_batch_size=8, value_range=(0.0, 1.0)))
  _, _, aux = s.family.per_example_loss(state.params["model"], batch, s.family.eval_key)
  assert codes["code"].shape == (300, 16) and codes["label"].shape == (300,)
  np.testing.assert_allclose(codes["code"][:8], aux["code"], rtol=1e-5, atol=1e-6)
  # ... and of one's own data.
  rng = np.random.default_rng(0)
  own = tmp_path / "mine.npz"
  np.savez(
    own,
    x_train=rng.integers(0, 256, (20, 8, 8), np.uint8),
    x_test=rng.integers(0, 256, (7, 8, 8), np.uint8),
  )
  encode_own = ["encode", "--workdir", str(workdir), "--out", str(tmp_path / "c.npz")]
  proc = genlab_here(capsys, *encode_own, "--dataset", str(own))
  assert proc.returncode == 0, proc.stderr[-3000:]
  codes = np.load(tmp_path / "c.npz")
  assert codes["code"].shape == (7, 16) and "label" not in codes
  # A dataset the model cannot take, or no run: one line.
  np.savez(own, x_train=np.zeros((20, 9, 9), np.uint8), x_test=np.zeros((7, 9, 9), np.uint8))
  assert_one_line_error(
    genlab_here(capsys, *encode_own, "--dataset", str(own)), "(9, 9, 1)", "(8, 8, 1)"
  )
  proc = genlab_here(capsys, "encode", "--workdir", str(tmp_path / "nothing"), "--out", "x.npz")
  assert_one_line_error(proc, "has no config.json")

  # 3. `train --fresh` moves the run aside, whatever its config, and starts at step 0.
  (workdir / "notes.txt").write_text("mine")
  proc = genlab(*common, "--fresh", "--config.model.latent_dim=4")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "moved the existing workdir to" in proc.stdout
  aside = tmp_path / "w.1"
  assert (aside / "notes.txt").read_text() == "mine" and (aside / "checkpoints" / "10").is_dir()
  assert json.loads((workdir / "config.json").read_text())["model"]["latent_dim"] == 4
  assert "resuming" not in proc.stdout
  assert move_aside(tmp_path / "absent") is None


@pytest.mark.slow
def test_an_unprepared_tfds_dataset_says_how_to_build_it(tmp_path):
  proc = genlab(
    "train",
    "--config",
    str(EXPERIMENTS / "conv_ae_digits.py"),
    "--workdir",
    str(tmp_path / "w"),
    "--config.dataset=mnist",
    f"--config.data.data_dir={tmp_path}",
  )
  assert_one_line_error(proc, f"tfds build mnist --file_format=array_record --data_dir={tmp_path}")
  assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_a_run_that_fails_before_its_first_checkpoint_leaves_the_workdir_as_it_found_it(
  data_dir, tmp_path, nan_family
):
  from genlab.errors import NonFiniteError
  from genlab.run import train_and_evaluate

  config = make_test_config(data_dir, family=nan_family, num_steps=20, checkpoint_every=10)
  with pytest.raises(NonFiniteError):
    train_and_evaluate(config, tmp_path / "new")
  assert not (tmp_path / "new").exists()
  # A workdir that was there keeps what it held, and nothing more.
  (tmp_path / "mine").mkdir()
  (tmp_path / "mine" / "notes.txt").write_text("mine")
  with pytest.raises(NonFiniteError):
    train_and_evaluate(config, tmp_path / "mine")
  assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]


def test_vae_refuses_one_key_for_a_batch_in_one_line():
  from genlab.models import VAE

  model = VAE(output_shape=(8, 8, 1), hidden=(8,), latent_dim=2)
  x = np.zeros((4, 8, 8, 1), np.float32)
  with pytest.raises(ValueError, match=r"one key per example is needed: keys of shape \(4,\)"):
    model.init(jax.random.key(0), x, jax.random.key(1))


def test_logs_name_each_objective_and_eval_json_defines_only_what_it_reports(data_dir, tmp_path):
  from genlab.run import evaluate_workdir, train_and_evaluate

  config = make_test_config(data_dir, num_steps=10)
  train_and_evaluate(config, tmp_path / "ae")
  report = evaluate_workdir(tmp_path / "ae")
  assert set(report["definitions"]) == set(report["metrics"]), report["definitions"]
  assert not {"psnr", "ssim", "cc", "kld", "nss", "sim"} & set(report["definitions"])


def test_log_numbers_keep_four_significant_digits():
  from genlab.run.loop import format_metrics, format_number

  assert [format_number(v) for v in (0.0693, 0.024707, 23.3, 300, 1.25e-5, 1234.5)] == [
    "0.06930",
    "0.02471",
    "23.30",
    "300",
    "1.250e-05",
    "1234",
  ]
  assert format_metrics({"loss": 0.5, "num_examples": 300, "kl_per_dim": [1.0]}) == (
    "loss 0.5000, num_examples 300"
  )


def test_image_grids_are_labelled_and_cells_at_least_64_pixels():
  from genlab.views import image_grid

  rows = [np.zeros((3, 8, 8, 1)), np.ones((3, 8, 8, 1))]
  plain = image_grid(rows)
  labelled = image_grid(rows, labels=["input", "output"])
  assert plain.shape == (2 * 66 + 2, 3 * 66 + 2, 3)  # 8×8 shown as 64×64, 2 px apart.
  assert labelled.shape[0] == plain.shape[0] and labelled.shape[1] > plain.shape[1] + 20
  margin = labelled[:, : labelled.shape[1] - plain.shape[1]]
  assert (margin < 128).any()  # Some text was written.
  with pytest.raises(ValueError, match="1 labels for 2 rows"):
    image_grid(rows, labels=["input"])
