"""The `genlab` command as a user meets it: real runs, and one-line errors for bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import EXPERIMENTS, genlab_command, run_python

MAIN_EXPERIMENT = str(EXPERIMENTS / "conv_ae_digits.py")


def genlab(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
  exe = shutil.which("genlab") or os.path.join(os.path.dirname(sys.executable), "genlab")
  return subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout)


def train_main(workdir, *overrides: str) -> subprocess.CompletedProcess:
  """`genlab train` of the README's main experiment in `workdir`."""
  return genlab("train", "--config", MAIN_EXPERIMENT, "--workdir", str(workdir), *overrides)


def genlab_here(capsys, *args: str) -> subprocess.CompletedProcess:
  """`genlab ARGS` run by `genlab.cli.main` in this process: for input refused before any
  training, where a new process would spend its seconds importing JAX."""
  from genlab import cli

  capsys.readouterr()
  try:
    cli.main(list(args))
    code = 0
  except SystemExit as e:
    code = e.code if isinstance(e.code, int) else 1
  out, err = capsys.readouterr()
  return subprocess.CompletedProcess(["genlab", *args], code, out, err)


def train_main_here(capsys, workdir, *overrides: str) -> subprocess.CompletedProcess:
  return genlab_here(
    capsys, "train", "--config", MAIN_EXPERIMENT, "--workdir", str(workdir), *overrides
  )


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str, code: int = 2) -> None:
  """`proc` ended with status `code` and one `genlab: error:` line (`genlab: stopped:` for
  the statuses of a command that stopped early) holding every needle, and no traceback."""
  assert proc.returncode == code, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
  prefix = "genlab: error:" if code == 2 else "genlab: stopped:"
  lines = [line for line in proc.stderr.splitlines() if line.startswith(prefix)]
  assert len(lines) == 1, proc.stderr
  for needle in needles:
    assert needle in lines[0], lines[0]


@pytest.mark.slow
def test_main_experiment_beats_the_readme_bar_and_resumes(data_dir, tmp_path, capsys):
  """The README's main job: test MSE ≤ 0.3 × the mean-image baseline; then a resume. The
  train is the `genlab` command's own process; eval and the resume run in this one."""
  workdir = str(tmp_path / "run")
  dd = f"--config.data.data_dir={data_dir}"
  proc = train_main(workdir, dd)
  assert proc.returncode == 0, proc.stderr[-3000:]
  proc = genlab_here(capsys, "eval", "--workdir", workdir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads((tmp_path / "run" / "eval.json").read_text())
  assert report["checkpoint_step"] == 2000 and report["num_examples"] == 300
  assert report["metrics"]["mse"] <= 0.3 * report["metrics"]["mse_mean_baseline"], report

  proc = train_main_here(capsys, workdir, dd, "--config.num_steps=2100")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "resuming from the checkpoint of step 2000" in proc.stdout
  steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").open()]
  assert max(steps) == 2100 and steps.count(2100) >= 1


@pytest.mark.slow
@pytest.mark.parametrize(
  "override, needles",
  [
    ("--config.num_stepz=3", ("num_stepz", "did you mean --config.num_steps")),
    ("--config.model.latnt_dim=3", ("model.latnt_dim", "model.latent_dim")),
    ("--config.batch_size=big", ("batch_size",)),
    ("--config.dataset=no_such_dataset", ("unknown dataset 'no_such_dataset'",)),
    ("--config.parallel=pmap", ("--config.parallel is gone", "config.mesh")),
    ("--config.kernels=cuda", ("config.kernels='cuda'",)),
    ("--config.mesh.fsdp=0", ("config.mesh.fsdp must be",)),
  ],
)
def test_bad_overrides_end_with_one_line(override, needles, data_dir, tmp_path, capsys):
  proc = train_main_here(capsys, tmp_path / "w", f"--config.data.data_dir={data_dir}", override)
  assert_one_line_error(proc, *needles)
  assert not (tmp_path / "w" / "checkpoints").exists()


@pytest.mark.slow
def test_npz_with_missing_keys_ends_with_one_line(tmp_path, capsys):
  path = tmp_path / "bad.npz"
  np.savez(path, x_train=np.zeros((4, 8, 8), np.uint8), y_train=np.zeros(4, np.int64))
  proc = train_main_here(capsys, tmp_path / "w", f"--config.dataset={path}")
  assert_one_line_error(proc, "x_test", str(path))


@pytest.mark.slow
def test_unwritable_workdir_is_refused_before_training(tmp_path, capsys):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  proc = train_main_here(capsys, blocker / "run")
  assert_one_line_error(proc, "cannot write to")


@pytest.mark.slow
def test_missing_experiment_file_and_empty_workdir(tmp_path, capsys):
  assert_one_line_error(
    genlab_here(capsys, "train", "--config", str(tmp_path / "nope.py"), "--workdir", str(tmp_path)),
    "experiment file not found",
  )
  assert_one_line_error(genlab_here(capsys, "eval", "--workdir", str(tmp_path)), "no config.json")


BAD_NPZ = {
  "bool images": (
    {"x_train": np.zeros((8, 8, 8), bool), "x_test": np.zeros((4, 8, 8), bool)},
    "dtype bool",
  ),
  "NaN values": (
    {"x_train": np.full((8, 8, 8), np.nan, np.float32), "x_test": np.zeros((4, 8, 8))},
    "NaN or Inf",
  ),
  "flat vectors": (
    {"x_train": np.zeros((8, 64)), "x_test": np.zeros((4, 64))},
    "expected (N, H, W)",
  ),
  "float labels": (
    {
      "x_train": np.zeros((8, 8, 8), np.uint8),
      "x_test": np.zeros((4, 8, 8), np.uint8),
      "y_train": np.zeros(8, np.float32),
      "y_test": np.zeros(4, np.float32),
    },
    "labels have dtype float32",
  ),
}


@pytest.mark.slow
def test_bad_npz_ends_with_one_line_and_overwrites_nothing(tmp_path, capsys):
  # A run on a good .npz, then the same path holds a bad one: each resume must
  # refuse it before touching the workdir.
  workdir, path = tmp_path / "run", tmp_path / "data.npz"
  good = np.random.default_rng(0).integers(0, 256, (96, 8, 8), dtype=np.uint8)
  np.savez(path, x_train=good[:64], x_test=good[64:])
  overrides = [f"--config.dataset={path}", "--config.num_steps=10", "--config.checkpoint_every=5"]
  assert train_main(workdir, *overrides).returncode == 0
  before = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
  for name, (arrays, needle) in BAD_NPZ.items():
    np.savez(path, **arrays)
    proc = train_main_here(capsys, workdir, *overrides[:1], "--config.num_steps=20")
    assert_one_line_error(proc, needle)
    after = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
    assert after == before, name


@pytest.mark.slow
def test_image_shape_the_model_cannot_take_ends_with_one_line(tmp_path, capsys):
  # With no vector code, an 8×8 input keeps a 2×2 map that cannot grow to a 16×16 target.
  x = np.zeros((8, 8, 8), np.uint8)
  path = tmp_path / "maps.npz"
  np.savez(
    path,
    x_train=x,
    x_test=x[:4],
    target_train=np.zeros((8, 16, 16)),
    target_test=np.zeros((4, 16, 16)),
  )
  proc = train_main_here(
    capsys, tmp_path / "w", f"--config.dataset={path}", "--config.model.latent_dim=None"
  )
  assert_one_line_error(proc, "cannot take", "(8, 8, 1)")


@pytest.mark.slow
def test_batch_not_divisible_by_devices_ends_with_one_line(data_dir, tmp_path):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
  proc = subprocess.run(
    [
      genlab_command(),
      "train",
      "--config",
      MAIN_EXPERIMENT,
      "--workdir",
      str(tmp_path / "w"),
      f"--config.data.data_dir={data_dir}",
      "--config.batch_size=30",
    ],
    capture_output=True,
    text=True,
    env=env,
    timeout=600,
  )
  assert_one_line_error(proc, "batch_size 30 is not divisible by the 4 devices")


@pytest.mark.slow
def test_cpu_devices_splits_the_cpu_into_devices_for_a_data_parallel_run(data_dir, tmp_path):
  proc = train_main(
    tmp_path / "w",
    "--cpu_devices",
    "2",
    f"--config.data.data_dir={data_dir}",
    "--config.num_steps=10",
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "mesh data=2 fsdp=1 (2 cpu devices) kernels=xla_cpu processes=1" in proc.stdout, (
    proc.stdout
  )
  metrics = [json.loads(line) for line in (tmp_path / "w" / "metrics.jsonl").open()]
  losses = [m["train/loss"] for m in metrics if "train/loss" in m]
  assert losses and np.isfinite(losses).all(), metrics


@pytest.mark.slow
def test_cpu_devices_refuses_a_count_below_one_in_one_line(tmp_path, capsys):
  proc = train_main_here(capsys, tmp_path / "w", "--cpu_devices", "0")
  assert_one_line_error(proc, "cpu_devices must be a positive integer, got 0")


@pytest.mark.slow
def test_config_drift_on_resume_ends_with_one_line_naming_the_fields(data_dir, tmp_path):
  dd = f"--config.data.data_dir={data_dir}"
  assert train_main(tmp_path, dd, "--config.num_steps=10").returncode == 0
  proc = train_main(
    tmp_path, dd, "--config.num_steps=20", "--config.model.latent_dim=4", "--config.batch_size=32"
  )
  assert_one_line_error(proc, "model.latent_dim (saved 16, now 4)", "batch_size (saved 64, now 32)")


def _parsed(*argv):
  from genlab import cli

  return cli._parser().parse_args(["train", "--config", "c.py", "--workdir", "w", *argv])


def test_distributed_start_reads_flags_then_environment(monkeypatch):
  import jax

  from genlab import cli

  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    monkeypatch.delenv(name, raising=False)
  assert cli.initialize_distributed(_parsed()) is False  # Nothing asked: one process.
  assert calls == []

  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
  monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
  monkeypatch.setenv("JAX_PROCESS_ID", "3")
  assert cli.initialize_distributed(_parsed("--process_id", "1")) is True
  assert calls[-1] == {
    "coordinator_address": "10.0.0.1:1234",
    "num_processes": 4,
    "process_id": 1,
    "heartbeat_timeout_seconds": 100,
  }

  monkeypatch.setenv("JAX_NUM_PROCESSES", "four")
  with pytest.raises(cli.GenlabError, match="JAX_NUM_PROCESSES='four' is not an integer"):
    cli.initialize_distributed(_parsed())
  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    monkeypatch.delenv(name)
  assert cli.initialize_distributed(_parsed("--distributed")) is True  # JAX auto-detects.
  assert calls[-1] == {
    "coordinator_address": None,
    "num_processes": None,
    "process_id": None,
    "heartbeat_timeout_seconds": 100,
  }


COMMANDS = ("train", "eval", "sample", "encode", "list", "config")


def test_help_answers_without_importing_jax_or_the_families():
  code = (
    "import sys\n"
    "from genlab import cli\n"
    f"for argv in [['--help']] + [[c, '--help'] for c in {COMMANDS!r}]:\n"
    "  try:\n"
    "    cli.main(argv)\n"
    "  except SystemExit as e:\n"
    "    assert e.code == 0, (argv, e.code)\n"
    "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'flax', "
    "'tensorflow_datasets', 'orbax') or m.startswith('genlab.families'))\n"
    "print('IMPORTED', heavy)\n"
  )
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "IMPORTED []" in proc.stdout, proc.stdout[-500:]


@pytest.mark.slow  # A process of its own: a fresh interpreter, where torch is not yet imported.
def test_a_runs_tensorboard_writer_loads_without_pytorch_which_still_imports_after(tmp_path):
  """tensorboardX tries `import torch` as it loads (1.8 s of every command's start where
  PyTorch is installed, as the test extras install it); genlab's writer keeps it out."""
  code = (
    "import sys\n"
    "from genlab.run.writers import MetricWriter\n"
    f"writer = MetricWriter({str(tmp_path)!r})\n"
    "writer.write(1, {'train/loss': 0.5})\n"
    "writer.close()\n"
    "print('TORCH', 'torch' in sys.modules)\n"
    "import torch\n"
    "print('THEN', torch.ones(2).sum().item())\n"
  )
  out = run_python(code)  # Raises, with its stderr, if the interpreter fails.
  assert "TORCH False" in out and "THEN 2.0" in out, out[-500:]
  [events] = (tmp_path / "tensorboard").glob("events.*")
  assert events.stat().st_size > 0


def test_each_command_has_its_own_description_and_only_its_own_exit_statuses(capsys):
  from genlab import cli

  helps = {}
  for command in COMMANDS:
    with pytest.raises(SystemExit):
      cli.main([command, "--help"])
    helps[command] = capsys.readouterr().out
  descriptions = set()
  for command, text in helps.items():
    description = text.split("\n\n")[1]  # After the usage lines.
    assert not description.startswith(("options:", "  -h")), (command, text[:300])
    descriptions.add(description)
  assert len(descriptions) == len(COMMANDS)
  assert "75  pre-empted" in helps["train"] and "3   a NaN" in helps["train"]
  for command in ("eval", "sample", "encode", "list", "config"):
    assert "75  pre-empted" not in helps[command] and "3   a NaN" not in helps[command]
  assert "eval.json could not be written" in helps["eval"]
  assert "--split {train,test}  the split of the dataset" in helps["encode"]


def test_sample_and_encode_refuse_a_family_that_cannot_before_restoring_anything(capsys, tmp_path):
  from conftest import make_test_config
  from genlab.config import to_json

  # Workdirs with only their config.json: a restore would fail on the missing checkpoint,
  # so the one line must come from the family's abilities, read before any restore.
  autoencoder, gan = tmp_path / "ae", tmp_path / "gan"
  for workdir, config in ((autoencoder, make_test_config()), (gan, _gan_config())):
    workdir.mkdir()
    (workdir / "config.json").write_text(to_json(config))
  proc = genlab_here(capsys, "sample", "--workdir", str(autoencoder), "--out", "x.png")
  assert_one_line_error(proc, "which does not generate samples (VAEs and GANs do)")
  proc = genlab_here(capsys, "encode", "--workdir", str(gan), "--out", str(tmp_path / "c.npz"))
  assert_one_line_error(proc, "which has no encoder to export codes of")


def _gan_config():
  from genlab.config import base_config

  return base_config("gan")
