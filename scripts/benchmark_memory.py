"""Per-process memory of a state larger than one device: 2 processes × 2 CPU devices.

    python scripts/benchmark_memory.py                    # this checkout
    python scripts/benchmark_memory.py --checkout DIR     # another one (e.g. before a change)

Starts 2 processes on loopback (`jax.distributed`), each with 2 fake CPU devices, and
builds a run of a wide MLP VAE (12 hidden layers of 2048: 95.5M parameters, 1.07 GiB with
Adam's moments) with every large array split over all 4 devices (`mesh.fsdp=-1`). Each
process then goes through what `genlab train` does to a state, phase by phase, and
measures its resident memory (`/proc/self/status`: VmRSS, and the peak VmHWM, reset
before each phase with `/proc/self/clear_refs`):

  setup    the run's data, model and the state's shapes (before this change: the whole
           state too, made on one device and copied to the host)
  init     the first state on the devices (before: placed from that host copy)
  steps    3 train steps (compilation included)
  save     an orbax checkpoint, waited for
  restore  that checkpoint read back into the run's state

One JSON line per process and phase: the resident memory before the phase (MiB), the
peak during it, the rise of the peak over the start, and that rise over the whole state's
size; then a summary line. On a CPU a device's buffers are host memory, so this is each
process's whole footprint. glibc's allocator would reuse freed pages across phases and
hide peaks: the processes run with MALLOC_MMAP_THRESHOLD_=131072 and trim before each
phase. The code of each phase follows the checkout it runs (this one, or one from before
the state was born sharded, where the state was made whole on one device, copied to the
host, and gathered whole to each host to be saved).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import pathlib
import re
import socket
import subprocess
import sys
import tempfile

import machine  # scripts/machine.py: the CPU and its vector extensions

HERE = pathlib.Path(__file__).resolve().parent
WIDTH, DEPTH, LATENT = 2048, 12, 32


def _status_mib(key: str) -> float:
  text = pathlib.Path("/proc/self/status").read_text()
  return int(re.search(rf"^{key}:\s+(\d+) kB", text, re.M).group(1)) / 1024


@contextlib.contextmanager
def phase(name: str, rows: list):
  gc.collect()
  ctypes.CDLL("libc.so.6").malloc_trim(0)
  try:
    pathlib.Path("/proc/self/clear_refs").write_text("5")
    reset = True
  except OSError:
    reset = False
  before = _status_mib("VmRSS")
  yield
  peak = _status_mib("VmHWM")
  rows.append(
    {
      "phase": name,
      "rss_before_mib": round(before, 1),
      "peak_mib": round(peak, 1),
      "rise_mib": round(peak - before, 1),
      "peak_reset": reset,
    }
  )


def worker(args) -> None:
  import jax

  jax.distributed.initialize(
    coordinator_address=f"127.0.0.1:{args.port}", num_processes=2, process_id=args.process
  )
  import numpy as np

  from genlab import config as config_lib
  from genlab.run import setup
  from genlab.run.checkpoint import Checkpointer
  from genlab.run.runner import StreamedFeed

  config = config_lib.base_config("vae")
  config.dataset = str(args.data)
  config.batch_size = 8
  config.num_steps = 10
  config.mesh.update(devices=0, fsdp=-1)
  config.model = config.model.__class__(
    {"name": "vae", "architecture": "mlp", "hidden": (WIDTH,) * DEPTH, "latent_dim": LATENT}
  )
  from genlab.families import get_family

  get_family("vae")  # Its modules (flax, optax, the model) imported before any phase.
  rows = []
  born_sharded = None
  with phase("setup", rows):  # The data, the model, the state's shapes (before: and values).
    s = setup(config)
    born_sharded = hasattr(s, "abstract_state")
  with phase("init", rows):  # The state on the devices.
    state = s.initial_state if born_sharded else s.runner.place_state(s.initial_state)
    jax.block_until_ready(state)
  state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
  from genlab.core import rngs
  from genlab.data import Batcher

  batcher = Batcher(
    s.dataset.train,
    global_batch_size=config.batch_size,
    key=rngs.stream_key(s.root_key, "data"),
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )
  feed = StreamedFeed(batcher, s.runner, start=0, end=3, steps_per_dispatch=1)
  with phase("steps", rows):
    step = s.runner.train_step(s.family.train_step, feed, state)
    for i in range(3):
      state, metrics = step(state, s.root_key, feed.inputs(i))
    jax.block_until_ready(state)
  feed.close()
  with phase("save", rows):
    ckpt = Checkpointer(args.workdir / "checkpoints", every=1)
    ckpt.save(3, state if born_sharded else s.runner.to_host(state), force=True)
    ckpt.close()
  del state, metrics
  with phase("restore", rows):
    ckpt = Checkpointer(args.workdir / "checkpoints", read_only=True)
    target = s.abstract_state if born_sharded else s.initial_state
    restored, got, _ = ckpt.find_usable(target)
    ckpt.close()
    if not born_sharded:
      restored = s.runner.place_state(restored)
    jax.block_until_ready(restored)
  for row in rows:
    row.update(
      process=args.process,
      state_mib=round(state_bytes / 2**20, 1),
      rise_over_state=round(row["rise_mib"] * 2**20 / state_bytes, 3),
      born_sharded=born_sharded,
      step_restored=int(got),
    )
  print("ROWS " + json.dumps(rows), flush=True)
  np.asarray(0)


def free_port() -> int:
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


def main(argv) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--checkout", default=str(HERE.parent), help="the genlab tree to measure")
  parser.add_argument("--process", type=int, help=argparse.SUPPRESS)
  parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
  parser.add_argument("--data", type=pathlib.Path, help=argparse.SUPPRESS)
  parser.add_argument("--workdir", type=pathlib.Path, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.process is not None:
    return worker(args)
  import numpy as np

  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (80, 28, 28, 1), dtype=np.uint8)
    np.savez(tmp / "data.npz", x_train=images[:64], x_test=images[64:])
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    env["PYTHONPATH"] = os.pathsep.join([args.checkout, str(HERE), env.get("PYTHONPATH", "")])
    port = free_port()
    procs = [
      subprocess.Popen(
        [
          sys.executable,
          __file__,
          "--process",
          str(i),
          "--port",
          str(port),
          "--data",
          str(tmp / "data.npz"),
          "--workdir",
          str(tmp / "run"),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp,
      )
      for i in range(2)
    ]
    outputs = [p.communicate(timeout=1800) for p in procs]
  rows = []
  for proc, (out, err) in zip(procs, outputs, strict=True):
    if proc.returncode != 0:
      raise SystemExit(f"a worker failed ({proc.returncode}):\n{err[-3000:]}")
    rows += json.loads(next(line for line in out.splitlines() if line.startswith("ROWS "))[5:])
  for row in rows:
    print(json.dumps({"checkout": args.checkout, **row}))
  worst = {
    name: max(r["rise_over_state"] for r in rows if r["phase"] == name)
    for name in ("init", "steps", "save", "restore")
  }
  print(
    json.dumps(
      {
        "summary": "largest rise over the whole state's size, of the 2 processes",
        "checkout": args.checkout,
        "state_mib": rows[0]["state_mib"],
        "born_sharded": rows[0]["born_sharded"],
        **worst,
        **machine.cpu(),
      }
    )
  )


if __name__ == "__main__":
  main(sys.argv[1:])
