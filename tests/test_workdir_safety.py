"""What a workdir survives, second round: a second trainer, odd step folders, write failures,
damaged run files, a killed run's metrics, a damaged feature-network cache."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time

import chex
import numpy as np
import pytest
from test_cli import assert_one_line_error, genlab_here

from conftest import EXPERIMENTS, genlab_command, logged_steps, make_test_config, restore_latest

MAIN = str(EXPERIMENTS / "conv_ae_digits.py")


def _train_args(workdir, data_dir, *overrides):
  return [
    genlab_command(),
    "train",
    "--config",
    MAIN,
    "--workdir",
    str(workdir),
    f"--config.data.data_dir={data_dir}",
    *overrides,
  ]


def _wait_for(workdir, step: int, proc, timeout: float = 300) -> None:
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    assert proc.poll() is None, proc.stderr.read()[-3000:]
    steps = logged_steps(workdir)
    if steps and steps[-1] >= step:
      return
    time.sleep(0.01)
  raise AssertionError(f"no step {step} in {timeout} s")


def _wait_for_file(path, proc, timeout: float = 60) -> None:
  deadline = time.monotonic() + timeout
  while not path.is_file():
    assert proc.poll() is None, proc.stderr.read()[-3000:]
    assert time.monotonic() < deadline, f"no {path} in {timeout} s"
    time.sleep(0.01)


def _env():
  return {**os.environ, "JAX_PLATFORMS": "cpu"}


def _train_here(capsys, workdir, data_dir, *overrides):
  """`genlab train` (`_train_args`) run by genlab.cli in this process: for the runs a test
  compares with or resumes, which are not what it stops, kills or fills a disk under."""
  return genlab_here(capsys, *_train_args(workdir, data_dir, *overrides)[1:])


RUN = [
  "--config.num_steps=400",
  "--config.log_every=10",
  "--config.eval_every=400",
  "--config.image_every=400",
  "--config.checkpoint_every=100",
]


@pytest.mark.slow
def test_a_second_trainer_of_a_workdir_stops_at_once_and_the_first_is_untouched(
  data_dir, tmp_path, capsys
):
  # Only the first trainer needs a process of its own (the one holding the workdir); the
  # reference and the commands it refuses run in this one.
  solo = _train_here(capsys, tmp_path / "solo", data_dir, *RUN)
  assert solo.returncode == 0, solo.stderr[-3000:]
  first = subprocess.Popen(
    _train_args(tmp_path / "w", data_dir, *RUN), env=_env(), stderr=subprocess.PIPE, text=True
  )
  _wait_for(tmp_path / "w", 20, first)
  first.send_signal(signal.SIGSTOP)  # Held mid-run (it would finish in a second otherwise).
  try:
    begin = time.monotonic()
    second = _train_here(
      capsys, tmp_path / "w", data_dir, *RUN, "--config.optimizer.learning_rate=1e-4"
    )
    assert time.monotonic() - begin < 30
    assert_one_line_error(second, f"pid {first.pid}", "is in use")
    # Nor may an evaluation read its checkpoints meanwhile, nor `--fresh` move it away under
    # the trainer (which would go on saving into the new run's checkpoints).
    evaluation = genlab_here(capsys, "eval", "--workdir", str(tmp_path / "w"))
    assert_one_line_error(evaluation, "is in use")
    fresh = _train_here(capsys, tmp_path / "w", data_dir, *RUN, "--fresh")
    assert_one_line_error(fresh, f"pid {first.pid}", "is in use")
    assert not (tmp_path / "w.1").exists()
  finally:
    first.send_signal(signal.SIGCONT)
  _, err = first.communicate(timeout=300)
  assert first.returncode == 0, err[-3000:]
  _, expected = restore_latest(tmp_path / "solo")
  step, got = restore_latest(tmp_path / "w")
  assert step == 400
  chex.assert_trees_all_equal(got.params, expected.params)
  assert sorted(logged_steps(tmp_path / "w")) == sorted(logged_steps(tmp_path / "solo"))


@pytest.mark.slow
def test_empty_and_foreign_step_folders_are_set_aside_and_never_read(data_dir, tmp_path):
  from genlab.run import evaluate_workdir, train_and_evaluate

  config = make_test_config(data_dir, num_steps=20, checkpoint_every=10)
  train_and_evaluate(config, tmp_path / "w")
  checkpoints = tmp_path / "w" / "checkpoints"
  (checkpoints / "30").mkdir()  # Empty: as `mkdir checkpoints/30` leaves it.
  (checkpoints / "40").mkdir()
  (checkpoints / "40" / "weights.pt").write_text("someone else's")
  # A reader skips them, reporting them, and evaluates step 20.
  assert evaluate_workdir(tmp_path / "w")["checkpoint_step"] == 20
  assert (checkpoints / "30").is_dir()  # Readers move nothing.
  # A trainer sets them aside and resumes from step 20, exactly as an unbroken run.
  config = make_test_config(data_dir, num_steps=40, checkpoint_every=10)
  train_and_evaluate(config, tmp_path / "w")
  train_and_evaluate(config.copy_and_resolve_references(), tmp_path / "unbroken")
  aside = tmp_path / "w" / "checkpoints_unusable"
  assert (aside / "40" / "weights.pt").read_text() == "someone else's" and (aside / "30").is_dir()
  _, expected = restore_latest(tmp_path / "unbroken")
  step, got = restore_latest(tmp_path / "w")
  assert step == 40
  chex.assert_trees_all_equal(got.params, expected.params)


@pytest.mark.slow
def test_an_unwritable_checkpoints_folder_is_refused_in_seconds(data_dir, tmp_path):
  (tmp_path / "w").mkdir()
  (tmp_path / "w" / "checkpoints").write_text("a file where the folder should be")
  begin = time.monotonic()
  proc = subprocess.run(
    _train_args(tmp_path / "w", data_dir, *RUN), env=_env(), capture_output=True, text=True
  )
  assert time.monotonic() - begin < 30
  assert_one_line_error(proc, "cannot write to", "checkpoints")
  assert len(proc.stderr.strip().splitlines()) <= 3
  assert sorted(p.name for p in (tmp_path / "w").iterdir()) == ["checkpoints"]


@pytest.mark.slow
def test_a_save_that_fails_mid_run_stops_it_in_one_line_and_it_resumes_exactly(
  data_dir, tmp_path, capsys
):
  reference = _train_here(capsys, tmp_path / "ref", data_dir, *RUN)
  assert reference.returncode == 0, reference.stderr[-3000:]
  run = tmp_path / "w"
  proc = subprocess.Popen(
    _train_args(run, data_dir, *RUN), env=_env(), stderr=subprocess.PIPE, text=True
  )
  _wait_for(run, 150, proc)
  # Step 100's save finishes in the background (its folder appears once orbax's commit has
  # renamed it): wait for it, so that the break usually hits step 200's save.
  _wait_for_file(run / "checkpoints" / "100" / "_CHECKPOINT_METADATA", proc)
  proc.send_signal(signal.SIGSTOP)
  # Which save the break hits is whichever comes after the newest complete checkpoint (a slow
  # machine may still be committing one): the test states it rather than assume it.
  folders = (run / "checkpoints").glob("*/_CHECKPOINT_METADATA")
  last = max(int(p.parent.name) for p in folders if p.parent.name.isdigit())
  # The checkpoints folder now leads where nothing can be created: the next save fails as a
  # full or read-only disk would make it fail.
  checkpoints, real = run / "checkpoints", run / "checkpoints.real"
  checkpoints.rename(real)
  checkpoints.symlink_to("/proc/self/fdinfo")
  proc.send_signal(signal.SIGCONT)
  failed_at = time.monotonic()
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 1, err[-3000:]
  assert time.monotonic() - failed_at < 30
  lines = [line for line in err.strip().splitlines() if line.strip()]
  assert len(lines) <= 3, err[-3000:]
  assert f"the checkpoint of step {last + 100} could not be written" in err, err
  assert f"the last complete checkpoint is step {last}" in err, err
  checkpoints.unlink()
  real.rename(checkpoints)
  resumed = _train_here(capsys, run, data_dir, *RUN)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"resuming from the checkpoint of step {last}" in resumed.stdout
  _, expected = restore_latest(tmp_path / "ref")
  step, got = restore_latest(run)
  assert step == 400
  chex.assert_trees_all_equal(got.params, expected.params)
  steps = logged_steps(run)
  assert len(steps) == len(set(steps)) + steps.count(400) - 1  # Train and test share 400.


def test_a_save_that_fails_in_the_background_is_one_error_naming_its_step(tmp_path, caplog):
  """A save that fails after `save` returned (orbax's commit thread: the disk filled up while
  it wrote) stops training with the same one-line error, and orbax's logs of it (tracebacks,
  about 200 lines) are not printed."""
  from orbax.checkpoint._src.path import atomicity

  from genlab.errors import CheckpointWriteError
  from genlab.run.checkpoint import Checkpointer

  checkpointer = Checkpointer(tmp_path / "checkpoints", every=10)
  state = {"w": np.arange(3.0)}
  checkpointer.save(10, state)
  checkpointer.wait()

  async def disk_full(self):
    raise OSError(28, "No space left on device")

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize", disk_full)
    assert checkpointer.save(20, state)  # Returns at once; the commit fails behind it.
    with pytest.raises(CheckpointWriteError) as raised:
      checkpointer.save(30, state)
  message = str(raised.value)
  assert "the checkpoint of step 20 could not be written" in message
  assert "No space left on device" in message
  assert "the last complete checkpoint is step 10" in message
  assert "\n" not in message
  assert not [r for r in caplog.records if r.levelno >= 40], caplog.text[-2000:]
  with pytest.raises(CheckpointWriteError):  # And stays failed.
    checkpointer.check()
  checkpointer.close()
  assert Checkpointer(tmp_path / "checkpoints", read_only=True).all_steps() == [10]
  # Once closed, orbax's error logs are no longer held back.
  assert not logging.getLogger("absl").filters


def test_orbax_errors_that_are_not_a_save_failing_are_warnings_and_training_goes_on(
  tmp_path, capfd
):
  from orbax.checkpoint._src.path import async_path, deleter

  from genlab.run.checkpoint import Checkpointer

  state = {"w": np.arange(3.0)}
  with pytest.MonkeyPatch.context() as patch:
    # An old step that cannot be removed (keep=1): the new one is on disk; a warning.
    checkpointer = Checkpointer(tmp_path / "a", every=10, keep=1)
    checkpointer.save(10, state)
    checkpointer.wait()

    def busy(self, path, **kwargs):
      raise OSError(16, "Device or resource busy")

    patch.setattr(deleter.PathDeleter, "delete", busy)
    checkpointer.save(20, state)
    checkpointer.save(30, state)  # Waits for step 20's save, whose pruning of 10 failed.
    checkpointer.close()
    err = capfd.readouterr().err
    assert "genlab: warning: step 20 was saved, but orbax failed after it" in err, err
    assert "Device or resource busy" in err and "Traceback" not in err
    assert all((tmp_path / "a" / s / "_CHECKPOINT_METADATA").is_file() for s in ("10", "30"))

    # A leftover temporary folder orbax cannot clean up when it opens the folder: no save
    # is under way, so a warning, not "step None could not be written".
    (tmp_path / "b" / "5.orbax-checkpoint-tmp").mkdir(parents=True)

    async def cannot(path):
      raise OSError(16, "Device or resource busy")

    patch.setattr(async_path, "rmtree", cannot)
    checkpointer = Checkpointer(tmp_path / "b", every=10)
    err, deadline = "", time.monotonic() + 30
    while "genlab: warning: orbax:" not in err and time.monotonic() < deadline:
      checkpointer.check()  # Orbax cleans up in a thread; a check shows what it held.
      err += capfd.readouterr().err
      time.sleep(0.05)
    assert "genlab: warning: orbax:" in err and "Device or resource busy" in err, err
    checkpointer.close()


def test_orbax_error_logs_go_to_the_newest_open_writer_until_none_is_open(tmp_path):
  from genlab.run.checkpoint import Checkpointer, _orbax_error_logs

  orbax_file = os.path.join(os.sep, "site-packages", "orbax", "x.py")

  def record(message, path=orbax_file, exc=True):
    try:
      raise OSError(28, "No space left on device")
    except OSError:
      info = sys.exc_info() if exc else None
    return logging.LogRecord("absl", logging.ERROR, path, 1, message, (), info)

  first = Checkpointer(tmp_path / "first")
  second = Checkpointer(tmp_path / "second")
  Checkpointer(tmp_path / "first", read_only=True)  # A reader holds nothing.
  logs = _orbax_error_logs()
  assert not logs.filter(record("Failed to write metadata"))
  assert logs.filter(record("no traceback", exc=False))
  assert logs.filter(record("not orbax's", path=os.path.join(os.sep, "mine", "x.py")))
  assert len(second._error_logs) == 1 and not first._error_logs
  second.close()  # The first is still open: its saves' failures are still held for it.
  assert not logs.filter(record("Failed to write metadata")) and len(first._error_logs) == 1
  first._error_logs.clear()
  first.close()
  assert logs not in logging.getLogger("absl").filters


@pytest.mark.slow
def test_a_killed_run_resumes_with_every_step_once_in_metrics(data_dir, tmp_path, capsys):
  run = tmp_path / "w"
  proc = subprocess.Popen(
    _train_args(run, data_dir, *RUN, "--config.num_steps=100000"),
    env=_env(),
    stderr=subprocess.PIPE,
    text=True,
  )
  _wait_for(run, 130, proc)
  proc.send_signal(signal.SIGKILL)
  proc.communicate(timeout=60)
  assert max(logged_steps(run)) >= 130  # Lines past the checkpoint of step 100 were written.
  resumed = _train_here(capsys, run, data_dir, *RUN)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  train_steps = [
    json.loads(line)["step"]
    for line in (run / "metrics.jsonl").read_text().splitlines()
    if "train/loss" in json.loads(line)
  ]
  assert train_steps == list(range(10, 401, 10))


@pytest.mark.slow
def test_damaged_run_files_are_one_line(data_dir, tmp_path, capsys):
  from genlab.errors import ConfigError, WorkdirError
  from genlab.run import train_and_evaluate

  config = make_test_config(data_dir, num_steps=20, checkpoint_every=10)
  train_and_evaluate(config, tmp_path / "w")
  saved = (tmp_path / "w" / "config.json").read_text()
  (tmp_path / "w" / "config.json").write_text(saved[: len(saved) // 2])
  proc = genlab_here(capsys, "train", "--config", MAIN, "--workdir", str(tmp_path / "w"))
  assert_one_line_error(proc, "config.json cannot be read")
  (tmp_path / "w" / "config.json").unlink()
  with pytest.raises(WorkdirError, match="has checkpoints but no config.json"):
    train_and_evaluate(config, tmp_path / "w")
  (tmp_path / "w" / "config.json").write_text(saved)
  # A resume below the checkpoint's step is refused; config.json stays as it was.
  with pytest.raises(ConfigError, match="checkpoint is at step 20, beyond num_steps=10"):
    train_and_evaluate(make_test_config(data_dir, num_steps=10), tmp_path / "w")
  assert (tmp_path / "w" / "config.json").read_text() == saved


def test_json_the_run_writes_never_holds_nan(data_dir, tmp_path, monkeypatch):
  from genlab.families.autoencoder import Autoencoder
  from genlab.run import evaluate_workdir, train_and_evaluate
  from genlab.run.writers import dumps

  assert dumps({"a": float("nan"), "b": [1.0, float("inf")]}) == '{"a": null, "b": [1.0, null]}'
  config = make_test_config(data_dir, num_steps=10)
  train_and_evaluate(config, tmp_path / "w")
  monkeypatch.setattr(
    Autoencoder, "reference_metrics", lambda self, metrics: {"mse_mean_baseline": float("nan")}
  )
  report = evaluate_workdir(tmp_path / "w")
  text = (tmp_path / "w" / "eval.json").read_text()

  def refuse(constant):
    raise AssertionError(f"eval.json holds {constant}, which JSON has not")

  assert json.loads(text, parse_constant=refuse)["metrics"]["mse_mean_baseline"] is None
  assert report["definitions"]["mse_mean_baseline"].startswith("null: the value was not finite")


@pytest.mark.slow
def test_a_damaged_feature_network_cache_is_set_aside_and_trained_again(
  data_dir, tmp_path, monkeypatch, capsys
):
  from genlab.data import load_dataset
  from genlab.run.feature_net import feature_network

  monkeypatch.setenv("GENLAB_CACHE_DIR", str(tmp_path / "cache"))
  dataset = load_dataset("digits", data_dir=data_dir)
  config = make_test_config(data_dir)
  net = feature_network(dataset, config.data, steps=10)
  for path in (net.workdir / "checkpoints").rglob("*"):
    if path.is_file() and path.name != "genlab_integrity.json":
      path.write_bytes(b"\0" * path.stat().st_size)  # Damaged in place.
  capsys.readouterr()
  again = feature_network(dataset, config.data, steps=10)
  assert "cannot be used" in capsys.readouterr().err
  assert again.workdir == net.workdir
  assert (net.workdir.parent / f"{net.workdir.name}.damaged").is_dir()
  probabilities, _ = again(np.zeros((2, 8, 8, 1), np.float32))
  np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_eval_without_checkpoints_says_so_before_building_resources(data_dir, tmp_path):
  from genlab.errors import WorkdirError
  from genlab.run import train_and_evaluate
  from genlab.run.evaluation import evaluate_workdir

  train_and_evaluate(make_test_config(data_dir, num_steps=10), tmp_path / "w")
  (tmp_path / "w" / "checkpoints").rename(tmp_path / "aside")
  built = []  # A GAN's feature network, an SAE's host: costly, and not needed to say this.
  with pytest.raises(WorkdirError, match="has no checkpoint to evaluate"):
    evaluate_workdir(tmp_path / "w", provide=built.append)
  assert built == []


def test_a_second_folder_set_aside_for_the_same_step_keeps_the_first(tmp_path):
  from genlab.run.checkpoint import Checkpointer

  checkpoints, aside = tmp_path / "checkpoints", tmp_path / "checkpoints_unusable"
  for attempt in ("first", "second", "third"):  # Foreign folders of step 7, one after another.
    (checkpoints / "7").mkdir(parents=True)
    (checkpoints / "7" / "notes.txt").write_text(attempt)
    Checkpointer(checkpoints, every=10).close()
  kept = {p.name: (p / "notes.txt").read_text() for p in aside.iterdir()}
  assert kept == {"7": "first", "7.1": "second", "7.2": "third"}


def test_fresh_refuses_bad_input_and_the_current_directory_before_moving_anything(
  capsys, tmp_path, monkeypatch
):
  workdir = tmp_path / "w"
  workdir.mkdir()
  (workdir / "notes.txt").write_text("mine")
  main = str(EXPERIMENTS / "conv_ae_digits.py")
  proc = genlab_here(
    capsys, "train", "--config", main, "--workdir", str(workdir), "--fresh", "--config.batch_size=0"
  )
  assert_one_line_error(proc, "config.batch_size must be a positive integer")
  assert [p.name for p in tmp_path.iterdir()] == ["w"]  # Nothing was moved.
  monkeypatch.chdir(workdir)
  proc = genlab_here(capsys, "train", "--config", main, "--workdir", ".", "--fresh")
  assert_one_line_error(proc, "holds the current directory")
  assert (workdir / "notes.txt").read_text() == "mine" and [p.name for p in tmp_path.iterdir()] == [
    "w"
  ]


@pytest.mark.slow
def test_a_resume_on_changed_data_is_refused_in_one_line_unless_asked(data_dir, tmp_path, capsys):
  from genlab.data import load_dataset, write_image_records

  digits = load_dataset("digits", data_dir=data_dir)
  npz, records = tmp_path / "digits.npz", tmp_path / "records"
  records.mkdir()

  def write(images):
    labels, test = digits.train["label"], digits.test
    np.savez(npz, x_train=images, y_train=labels, x_test=test["image"], y_test=test["label"])
    write_image_records(records / "train-0.array_record", images, labels)
    write_image_records(records / "test-0.array_record", test["image"], test["label"])

  def train(spec, steps, *extra):
    periods = [f"--config.{p}_every=10" for p in ("log", "eval", "image", "checkpoint")]
    args = [f"--config.dataset={spec}", f"--config.num_steps={steps}", *periods, *extra]
    return _train_here(capsys, tmp_path / f"run_{spec.name}", data_dir, *args)

  write(digits.train["image"])
  for spec in (npz, records):
    first = train(spec, 10)
    assert first.returncode == 0, first.stderr[-2000:]
  write(digits.train["image"][:, :, ::-1])  # The same files, other images (mirrored).
  for spec in (npz, records):
    refused = train(spec, 20)
    assert_one_line_error(refused, "changed since this workdir's checkpoints were trained")
    assert "accept_changed_data=True" in refused.stderr
    assert restore_latest(tmp_path / f"run_{spec.name}")[0] == 10  # Nothing was trained on it.
    recorded = json.loads((tmp_path / f"run_{spec.name}" / "dataset.json").read_text())
    accepted = train(spec, 20, "--config.data.accept_changed_data=True")
    assert accepted.returncode == 0, accepted.stderr[-2000:]
    assert "going on with changed data (train)" in accepted.stderr
    renewed = json.loads((tmp_path / f"run_{spec.name}" / "dataset.json").read_text())
    assert renewed["fingerprints"]["train"] != recorded["fingerprints"]["train"]
    assert renewed["fingerprints"]["test"] == recorded["fingerprints"]["test"]


def test_a_run_file_that_cannot_be_written_stops_the_run_in_one_line_and_it_resumes_exactly(
  data_dir, tmp_path
):
  from genlab.errors import WriteError
  from genlab.run import train_and_evaluate

  def config(steps):
    return make_test_config(data_dir, num_steps=steps, checkpoint_every=10, eval_every=10)

  straight = train_and_evaluate(config(30), tmp_path / "straight")
  workdir = tmp_path / "w"
  train_and_evaluate(config(10), workdir)
  metrics = workdir / "metrics.jsonl"
  kept = metrics.read_text()
  metrics.unlink()
  metrics.symlink_to("/dev/full")  # Every write to it fails with ENOSPC, as on a full disk.
  with pytest.raises(WriteError) as stopped:
    train_and_evaluate(config(30), workdir)
  message = str(stopped.value)
  assert message.startswith(f"step 15: {metrics} could not be written (OSError: No space left")
  assert "the last complete checkpoint is step 10" in message and "\n" not in message
  assert not [p for p in workdir.rglob("*.tmp")]
  metrics.unlink()
  metrics.write_text(kept)
  resumed = train_and_evaluate(config(30), workdir)
  chex.assert_trees_all_equal(resumed.state.params, straight.state.params)


@pytest.mark.slow
def test_eval_on_a_full_disk_prints_the_report_and_one_line_and_keeps_the_old_eval_json(
  data_dir, tmp_path, capsys
):
  from genlab.run import train_and_evaluate

  workdir = tmp_path / "w"
  train_and_evaluate(make_test_config(data_dir, num_steps=10), workdir)
  first = genlab_here(capsys, "eval", "--workdir", str(workdir))
  assert first.returncode == 0, first.stderr[-2000:]
  old = (workdir / "eval.json").read_text()
  (workdir / ".eval.json.tmp").symlink_to("/dev/full")  # The write of the new one fails.
  full = genlab_here(capsys, "eval", "--workdir", str(workdir))
  assert_one_line_error(full, "eval.json could not be written (OSError: No space left", code=1)
  assert "the report is printed above" in full.stderr and "is left as it was" in full.stderr
  assert json.loads(full.stdout) == json.loads(old)  # The report, printed all the same.
  assert (workdir / "eval.json").read_text() == old
  assert not (workdir / ".eval.json.tmp").exists()


@pytest.mark.slow
def test_a_disk_that_fills_mid_run_stops_it_in_one_line_and_it_resumes_exactly(
  data_dir, tmp_path, capsys
):
  """A real full disk: a 1000 KiB tmpfs in a mount namespace of the test's own (`unshare -rm`,
  no privileges needed), which fills between the checkpoints of steps 20 and 40."""
  args = [
    "--config.num_steps=60",
    "--config.log_every=10",
    "--config.eval_every=60",
    "--config.image_every=60",
    "--config.checkpoint_every=20",
    "--config.keep_checkpoints=10",
  ]
  disk, out = tmp_path / "disk", tmp_path / "out"
  disk.mkdir()
  out.mkdir()
  train = " ".join(_train_args(disk / "w", data_dir, *args))
  script = (
    f"mount -t tmpfs -o size=1000k tmpfs {disk} || exit 99\n"
    f"{train} > {out}/stdout 2> {out}/stderr\n"
    f"echo $? > {out}/rc\n"
    f"cp -a {disk}/w {out}/w\n"
  )
  proc = subprocess.run(["unshare", "-rm", "sh", "-c", script], env=_env(), timeout=600)
  assert proc.returncode == 0, "the tmpfs could not be mounted in a namespace of its own"
  stopped = subprocess.CompletedProcess([], int((out / "rc").read_text()), "", "")
  stopped.stderr = (out / "stderr").read_text()
  assert_one_line_error(stopped, "could not be written", code=1)
  line = stopped.stderr.strip().splitlines()[-1]
  assert "step" in line and "the last complete checkpoint is step 20" in line, line
  workdir = out / "w"
  assert not [p for p in workdir.rglob("*") if p.is_file() and p.name.endswith(".tmp")]
  # The lock's record is cleared as the run ends, and an events file tensorboardX opened
  # before the disk filled may have taken nothing: neither is a temporary file.
  empty = [p.name for p in workdir.rglob("*") if p.is_file() and p.stat().st_size == 0]
  assert [n for n in empty if n != ".genlab.lock" and not n.startswith("events.")] == [], empty
  resumed = _train_here(capsys, workdir, data_dir, *args)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  unbroken = _train_here(capsys, tmp_path / "unbroken", data_dir, *args)
  assert unbroken.returncode == 0, unbroken.stderr[-2000:]
  step, expected = restore_latest(tmp_path / "unbroken")
  assert step == 60 and restore_latest(workdir)[0] == 60
  chex.assert_trees_all_equal(restore_latest(workdir)[1].params, expected.params)
