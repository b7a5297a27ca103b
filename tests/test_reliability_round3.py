"""What genlab survives, third round: GAN metric sizes checked before training, data workers
that die with their trainer, damaged record files, odd lock files and VQ sizes, and one of two
processes dying."""

from __future__ import annotations

import os
import pathlib
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from test_cli import assert_one_line_error, genlab_here

from conftest import EXPERIMENTS, REPO, free_port, logged_steps
from genlab.errors import ConfigError


def _gan_config(data_dir, **sample_metrics):
  from genlab import config as config_lib

  config = config_lib.load_experiment(EXPERIMENTS / "gan_digits.py")
  config.data.data_dir = data_dir
  config.model.generator.hidden = (8,)
  config.model.discriminator.hidden = (8,)
  config.sample_metrics.update(**sample_metrics)
  return config


@pytest.mark.parametrize(
  "gan, needle",
  [
    # The k-NN ball of a real image is drawn among the other real images: k of them at least.
    (
      {"fd_n_real": 8, "prdc_k": 8},
      "sample_metrics.prdc_k=8 must be below the 8 real train images",
    ),
    (
      {"fd_n_real": 8, "prdc_k": 20},
      "sample_metrics.prdc_k=20 must be below the 8 real train",
    ),
    # ... and of a sample among the other samples.
    ({"fd_n_fake": 3}, "config.sample_metrics.prdc_k=5 must be below the 3 samples"),
    ({"fd_n_fake": 1, "prdc_k": 1}, "config.sample_metrics.fd_n_fake=1 must be 0"),
    ({"fd_n_real": 1, "prdc_k": 1}, "config.sample_metrics.fd_n_real=1 must be at least 2"),
    ({"prdc_k": 0}, "config.sample_metrics.prdc_k=0 must be at least 1"),
    ({"fd_n_fake": -4}, "config.sample_metrics.fd_n_fake=-4 must be 0"),
  ],
)
def test_gan_metric_sizes_are_refused_when_the_family_is_built(gan, needle, data_dir):
  """Before any step: a size the metrics cannot take used to train on and fail at the first
  evaluation (fd_n_fake=3), losing the steps since the last checkpoint, or at the start as a
  traceback (prdc_k above fd_n_real)."""
  from genlab.run import setup

  with pytest.raises(ConfigError) as error:
    setup(_gan_config(data_dir, **gan))
  assert needle in str(error.value) and "\n" not in str(error.value), str(error.value)


def test_gan_metric_sizes_at_the_bounds_are_taken_and_are_the_metrics_bounds(data_dir):
  """prdc_k = n − 1 for every set is the largest the metrics take; 2 samples the fewest."""
  from genlab import metrics
  from genlab.run import setup

  s = setup(_gan_config(data_dir, fd_n_real=6, fd_n_fake=6, prdc_k=5))
  assert s.family.sample_metrics.evaluators[0].options.prdc_k == 5
  features = np.random.default_rng(0).normal(size=(6, 3))
  metrics.precision_recall_density_coverage(features, features[::-1], k=5)
  with pytest.raises(ValueError, match="needs more than k"):
    metrics.precision_recall_density_coverage(features, features, k=6)
  assert np.isfinite(metrics.frechet_distance_of(features[:2], features[2:4]))


def test_a_gan_metric_size_is_one_line_from_genlab_train_before_a_step(capsys, data_dir, tmp_path):
  workdir = tmp_path / "w"
  proc = genlab_here(
    capsys,
    "train",
    "--config",
    str(EXPERIMENTS / "gan_digits.py"),
    "--workdir",
    str(workdir),
    f"--config.data.data_dir={data_dir}",
    "--config.sample_metrics.fd_n_fake=3",
  )
  assert_one_line_error(proc, "config.sample_metrics.prdc_k=5 must be below the 3 samples")
  assert not (workdir / "checkpoints").exists() and not (workdir / "metrics.jsonl").exists()


@pytest.mark.parametrize("contents", ["[1, 2]", "3", '"train"', "true", "{not json"])
def test_a_lock_file_not_holding_a_json_object_is_named_as_an_unknown_holder(contents, tmp_path):
  """Someone wrote the lock file (a trainer writes an object): while another process holds
  the lock, a second trainer says it is in use, in one line, whatever the file holds."""
  import fcntl

  from genlab.errors import WorkdirError
  from genlab.run.lock import LOCK_FILE, WorkdirLock

  (tmp_path / LOCK_FILE).write_text(contents)
  with open(tmp_path / LOCK_FILE) as held:  # Another open file: flock conflicts with it.
    fcntl.flock(held, fcntl.LOCK_SH | fcntl.LOCK_NB)
    with pytest.raises(WorkdirError) as error:
      WorkdirLock(tmp_path, exclusive=True).acquire()
  message = str(error.value)
  assert "is in use: another genlab process holds it" in message and "\n" not in message


def _vq_config(data_dir, **model):
  from genlab import config as config_lib

  config = config_lib.load_experiment(EXPERIMENTS / "vq_vae_digits.py")
  config.data.data_dir = data_dir
  config.model.update(**model)
  return config


@pytest.mark.parametrize(
  "model, needle",
  [
    ({"codebook_size": 0}, "config.model.codebook_size=0 must be a positive integer"),
    ({"codebook_size": -3}, "config.model.codebook_size=-3 must be a positive integer"),
    ({"code_dim": 0}, "config.model.code_dim=0 must be a positive integer"),
    ({"features": (0, 16)}, "config.model.features=(0, 16) must hold positive integers"),
    ({"kernel_size": 0}, "config.model.kernel_size=0 must be a positive integer"),
    ({"strides": (2, -1)}, "config.model.strides=(2, -1) must hold positive integers"),
    ({"decoder_kernel_size": 0}, "config.model.decoder_kernel_size=0 must be a positive"),
  ],
)
def test_non_positive_vq_vae_sizes_are_refused_naming_the_field(model, needle, data_dir):
  """codebook_size 0 was 'cannot take digits's images ...: attempt to get argmin of an empty
  sequence'; code_dim, features or kernel_size 0 a ZeroDivisionError traceback."""
  from genlab.run import setup

  with pytest.raises(ConfigError) as error:
    setup(_vq_config(data_dir, **model))
  message = str(error.value)
  assert needle in message and "(1 or more)" in message and "\n" not in message, message


def _damage_the_middle(path, num_records: int) -> int:
  """Flips a byte in the middle of the records of an ArrayRecord file, where one record's
  chunk then fails its data hash when read (the file still opens; a byte of a chunk's
  header fails another check, so the next bytes are tried); returns that record."""
  import grain

  clean = path.read_bytes()
  middle = clean.find(bytes(256)) // 2  # The records, then zeros up to the footer's block.
  for offset in range(middle, middle + 512, 7):
    data = bytearray(clean)
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
    source = grain.sources.ArrayRecordDataSource([str(path)])
    failures = []
    for i in range(num_records):
      try:
        source[i]
      except RuntimeError as e:
        failures.append((i, str(e)))
    if len(failures) == 1 and "chunk data hash mismatch" in failures[0][1]:
      return failures[0][0]
  raise AssertionError(f"no byte near {middle} of {path} damages one record's data")


@pytest.mark.parametrize(
  "damaged, overrides",
  [
    ("train", ["--config.data.device_resident=on"]),
    ("train", ["--config.data.device_resident=off", "--config.data.workers=0"]),
    pytest.param(
      "train",
      ["--config.data.device_resident=off", "--config.data.workers=2"],
      marks=pytest.mark.slow,
    ),
    ("test", []),
  ],
  ids=["resident", "streamed-in-a-thread", "streamed-by-2-workers", "test-split-in-memory"],
)
def test_a_damaged_record_file_is_one_line_naming_the_record(
  damaged, overrides, capsys, data_dir, tmp_path
):
  """The reader's `Corrupted Riegeli/records file: chunk data hash mismatch` was a 47-line
  traceback on every path; decode errors alone were one line."""
  from genlab.data import load_dataset, write_image_records

  digits = load_dataset("digits", data_dir=data_dir)
  records = tmp_path / "records"
  records.mkdir()
  for split in ("train", "test"):
    arrays = digits.split(split)
    write_image_records(records / f"{split}-0.array_record", arrays["image"][:64], arrays["label"])
  path = records / f"{damaged}-0.array_record"
  bad = _damage_the_middle(path, 64)
  proc = genlab_here(
    capsys,
    "train",
    "--config",
    str(EXPERIMENTS / "conv_ae_digits.py"),
    "--workdir",
    str(tmp_path / "w"),
    f"--config.dataset={records}",
    "--config.batch_size=64",
    "--config.num_steps=2",
    *overrides,
  )
  assert_one_line_error(proc, f"record {bad} of {path} cannot be read", "chunk data hash mismatch")


def test_a_record_file_with_a_damaged_footer_is_named_when_opened(tmp_path):
  """The footer (the records' index) is read when the source opens: among several files,
  the damaged one is named."""
  from genlab.data import image_records, write_image_records
  from genlab.errors import DataError

  images = np.zeros((4, 8, 8, 1), np.uint8)
  paths = [tmp_path / f"train-{i}.array_record" for i in range(2)]
  for path in paths:
    write_image_records(path, images)
  data = bytearray(paths[1].read_bytes())
  data[len(data.rstrip(b"\0")) - 40] ^= 0xFF  # In the footer: the file's last bytes but zeros.
  paths[1].write_bytes(bytes(data))
  with pytest.raises(DataError) as error:
    image_records([str(p) for p in paths])
  message = str(error.value)
  assert message.startswith(f"cannot open {paths[1]} as ArrayRecord: RuntimeError: Corrupted")
  assert "\n" not in message


def _env_for_worktree(devices: int = 1) -> dict:
  """The environment of a `python -m genlab` that runs this checkout's code (not whatever
  genlab the interpreter has installed), on `devices` CPU devices."""
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
  env["JAX_PLATFORMS"] = "cpu"
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  return env


def _process_table() -> dict[int, tuple[int, str, str]]:
  """pid → (parent pid, start time in clock ticks, state) of every process, from /proc."""
  table = {}
  for entry in pathlib.Path("/proc").iterdir():
    if entry.name.isdigit():
      try:
        stat = (entry / "stat").read_text()
      except OSError:
        continue  # Gone meanwhile.
      fields = stat[stat.rindex(")") + 2 :].split()  # After "pid (comm) ".
      table[int(entry.name)] = (int(fields[1]), fields[19], fields[0])
  return table


def _descendants(pid: int) -> dict[int, str]:
  """pid → start time of every live process below `pid` (children, their children...)."""
  table = _process_table()
  found, frontier = {}, [pid]
  while frontier:
    parent = frontier.pop()
    for child, (ppid, start, state) in table.items():
      if ppid == parent and child not in found and state != "Z":
        found[child] = start
        frontier.append(child)
  return found


def _alive(processes: dict[int, str]) -> list[int]:
  """Those of `processes` (pid → start time) still running: the same pid and start time
  (not a new process given a reused pid), not a zombie."""
  table = _process_table()
  return [
    pid
    for pid, start in processes.items()
    if pid in table and table[pid][1] == start and table[pid][2] != "Z"
  ]


def _cmdline(pid: int) -> str:
  try:
    return pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
  except OSError:
    return ""


@pytest.mark.slow
@pytest.mark.skipif(not pathlib.Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_a_killed_trainers_data_workers_die_within_10_s(data_dir, tmp_path):
  """SIGKILL leaves the trainer no time to stop its grain workers: each used to run on under
  init (blocked on a full queue, ~320 MB each on 64×64 images), with multiprocessing's
  resource tracker, until killed by hand."""
  workdir = tmp_path / "w"
  trainer = subprocess.Popen(
    [
      sys.executable,
      "-m",
      "genlab",
      "train",
      "--config",
      str(EXPERIMENTS / "conv_ae_digits.py"),
      "--workdir",
      str(workdir),
      f"--config.data.data_dir={data_dir}",
      "--config.data.workers=2",
      "--config.data.device_resident=off",
      "--config.num_steps=1000000",
      "--config.log_every=1",
      "--config.eval_at_start=False",
    ],
    env=_env_for_worktree(),
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
  )
  try:
    deadline = time.monotonic() + 300
    while not logged_steps(workdir):  # A logged step: the workers deliver batches.
      assert trainer.poll() is None, trainer.stderr.read()[-3000:]
      assert time.monotonic() < deadline, "no step logged in 300 s"
      time.sleep(0.1)
    started = _descendants(trainer.pid)
    workers = [p for p in started if "spawn_main" in _cmdline(p)]
    assert len(workers) >= 2, {p: _cmdline(p) for p in started}
  finally:
    trainer.kill()
    trainer.wait()
  killed = time.monotonic()
  while _alive(started) and time.monotonic() < killed + 10:
    time.sleep(0.1)
  left = {p: _cmdline(p) for p in _alive(started)}
  for pid in left:  # Not to leave them running after a failure.
    os.kill(pid, signal.SIGKILL)
  assert not left, f"alive 10 s after the trainer's SIGKILL: {left}"
  print(f"the trainer's {len(started)} processes ended {time.monotonic() - killed:.2f} s after it")


@pytest.mark.slow
def test_when_one_of_two_processes_dies_the_other_stops_with_one_line(data_dir, tmp_path):
  """JAX's coordination service used to abort the survivor after its 100 s heartbeat
  timeout, with a C++ `Check failed` message and exit status 134; genlab's watchdog says it in
  one line, exit status 69, once the dead process has been silent for --heartbeat_timeout."""
  timeout = 10
  workdir, port = tmp_path / "w", free_port()
  procs = [
    subprocess.Popen(
      [
        sys.executable,
        "-m",
        "genlab",
        "train",
        "--config",
        str(EXPERIMENTS / "conv_ae_digits.py"),
        "--workdir",
        str(workdir),
        f"--config.data.data_dir={data_dir}",
        "--config.num_steps=1000000",
        "--config.log_every=1",
        "--config.eval_every=1000000",
        "--config.image_every=1000000",
        "--config.checkpoint_every=20",
        f"--heartbeat_timeout={timeout}",
        "--coordinator_address",
        f"127.0.0.1:{port}",
        "--num_processes=2",
        f"--process_id={i}",
      ],
      env=_env_for_worktree(devices=2),
      stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  try:
    deadline = time.monotonic() + 300
    while not (logged_steps(workdir) and logged_steps(workdir)[-1] >= 25):
      for p in procs:
        assert p.poll() is None, p.stderr.read()[-3000:]
      assert time.monotonic() < deadline, "no step 25 in 300 s"
      time.sleep(0.05)
    procs[1].kill()  # Not the coordinator's host: see docs/reliability.md for process 0.
    killed = time.monotonic()
    _, err = procs[0].communicate(timeout=120)
    stopped = time.monotonic() - killed
  finally:
    for p in procs:
      p.kill()
      p.wait()
  assert procs[0].returncode == 69, err[-3000:]
  # No traceback, no C++ log line (`F1207 05:36:59.14 ... client.h:80] Terminating ...`).
  assert "Traceback" not in err and not re.search(r"^[EFW]\d{4} ", err, re.M), err[-3000:]
  [line] = [line for line in err.splitlines() if line.startswith("genlab:")]
  assert line.startswith("genlab: stopped: process 1 of 2 has not been heard for"), line
  checkpoint = int(line.split("the last complete checkpoint is step ")[1].split(":")[0])
  assert checkpoint >= 20 and (workdir / "checkpoints" / str(checkpoint)).is_dir(), line
  # Silence for `timeout` s, counted from the last beat seen (up to a period, 1 s, before the
  # kill) and seen within a period; load may add a little either way.
  assert timeout - 3 <= stopped <= timeout + 10, stopped
  print(f"the survivor stopped {stopped:.1f} s after process 1's SIGKILL: {line}")


class _FakeClient:
  """The key-value store of JAX's coordination-service client, in memory."""

  def __init__(self):
    self.store, self.lock = {}, threading.Lock()

  def key_value_set(self, key, value, allow_overwrite=False):
    with self.lock:
      assert allow_overwrite or key not in self.store
      self.store[key] = value

  def key_value_dir_get(self, prefix):
    with self.lock:
      return [(k, v) for k, v in self.store.items() if k.startswith(prefix)]


def test_the_watchdog_stops_on_a_silent_process_only(tmp_path):
  """Process 1 beats, process 2 leaves in order (done), process 3 falls silent: only 3 is
  lost. Fast: the period is 10 ms, the timeout 0.3 s."""
  from genlab.run.distributed import KEY_PREFIX, Watchdog, last_complete_checkpoint

  (tmp_path / "checkpoints" / "40").mkdir(parents=True)
  (tmp_path / "checkpoints" / "40" / "_CHECKPOINT_METADATA").write_text("{}")
  (tmp_path / "checkpoints" / "60").mkdir()  # Unfinished: not a complete checkpoint.
  client, lost = _FakeClient(), []
  stopped = threading.Event()
  watchdog = Watchdog(client, 0, 4, timeout=0.3, workdir=tmp_path, period=0.01)
  watchdog.stop = lambda i, silent: (lost.append((i, silent)), stopped.set())
  client.key_value_set(f"{KEY_PREFIX}2", "done")
  client.key_value_set(f"{KEY_PREFIX}3", "1")
  begin = time.monotonic()  # Before the watchdog's first look: its silences start after it.
  watchdog.start()
  beat = 0
  while not stopped.is_set() and time.monotonic() < begin + 10:
    beat += 1
    client.key_value_set(f"{KEY_PREFIX}1", str(beat), allow_overwrite=True)
    time.sleep(0.01)
  watchdog.leave()
  watchdog.close()
  assert lost and {i for i, _ in lost} == {3}, lost
  assert 0.3 <= time.monotonic() - begin < 5
  assert client.store[f"{KEY_PREFIX}0"] == "done"  # It told the others it left.
  assert last_complete_checkpoint(tmp_path) == 40


def test_a_process_that_left_on_an_error_still_stops_when_another_is_lost():
  """A process that leaves (an error: a collective failed as another process died) waits in
  JAX's shutdown for every process: its watch goes on, so a silent process still stops it
  with its line; its own DONE is never overwritten by a later beat."""
  from genlab.run.distributed import KEY_PREFIX, Watchdog

  client, lost = _FakeClient(), []
  stopped = threading.Event()
  watchdog = Watchdog(client, 0, 2, timeout=0.3, period=0.01)
  watchdog.stop = lambda i, silent: (lost.append((i, silent)), stopped.set())
  client.key_value_set(f"{KEY_PREFIX}1", "1")  # Process 1 beats once, then is silent.
  watchdog.start()
  time.sleep(0.05)
  watchdog.leave()
  left = time.monotonic()
  assert stopped.wait(5), "the watch ended when the process left"
  watchdog.close()
  assert lost[0][0] == 1 and lost[0][1] >= 0.3 and time.monotonic() - left < 5
  assert client.store[f"{KEY_PREFIX}0"] == "done"


def test_a_collective_that_fails_as_a_peer_dies_ends_in_the_watchdogs_line(monkeypatch):
  """Gloo fails a collective at once when the peer it reads from dies mid-exchange: before
  that error leaves as a traceback, the process leaves and waits out the watch, which stops
  it with its line. Another error, or a run that does not watch, is not held up."""
  import jax

  from genlab.run import distributed
  from genlab.run.distributed import KEY_PREFIX, Watchdog

  client, lost = _FakeClient(), []
  watchdog = Watchdog(client, 0, 2, timeout=0.3, period=0.01)
  watchdog.stop = lambda i, silent: lost.append((i, silent))
  client.key_value_set(f"{KEY_PREFIX}1", "1")  # Process 1 beats once, then dies.
  monkeypatch.setattr(distributed, "_active", watchdog.start())
  reset = jax.errors.JaxRuntimeError("UNKNOWN: Gloo AllGather failed: Connection reset by peer")
  try:
    begin = time.monotonic()
    distributed.after_error(ValueError("a bug of its own"))
    assert time.monotonic() - begin < 0.1 and not lost
    distributed.after_error(reset)
    assert lost and lost[0][0] == 1, lost  # The watch spoke before the error could.
    assert client.store[f"{KEY_PREFIX}0"] == "done"
  finally:
    watchdog.close()
  monkeypatch.setattr(distributed, "_active", None)
  begin = time.monotonic()
  distributed.after_error(reset)
  assert time.monotonic() - begin < 0.1
