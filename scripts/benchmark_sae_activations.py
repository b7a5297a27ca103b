"""An activation SAE's train step fed three ways: activations computed on the fly, read from
the on-disk cache (streamed), and the cache held on the device.

    python scripts/benchmark_sae_activations.py [--host runs/char_lm_pydoc] [--rounds 5]

The SAE is experiments/sae_pydoc_residual.py's (BatchTopK, 1,536 latents, k = 16, AuxK
256, on the residual stream after `block_1`, batch 64 sequences ≈ 1,600 positions). Its
host is the language model in `--host` (default: a 50-step run of
experiments/char_lm_pydoc.py made in a temporary dir, since speed does not depend on what
the host learned). Modes, each the run layer's own feed (`genlab.run.runner`):

* `on_the_fly`: the token sequences held on the device; each step runs the host to the
  layer, then the SAE step;
* `cache_streamed`: the train split's activations written once to `sae.cache_dir` (a
  memory-mapped .npy), streamed to the step by the grain pipeline (data.device_resident=off);
* `cache_resident`: the same cached activations held on the device (device_resident=on).

Steps are timed in blocks of `--steps`, the modes interleaved over `--rounds` rounds (A, B,
C, A, B, C, …), each block waiting for its last step; the figure is the median block. One
JSON line per mode (ms per step, positions per second), then one with the ratios.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import tempfile
import time

import machine  # scripts/machine.py: the CPU and its vector extensions

REPO = pathlib.Path(__file__).resolve().parents[1]


def make_host(workdir: pathlib.Path) -> pathlib.Path:
  from genlab.config import load_experiment
  from genlab.run import train_and_evaluate

  config = load_experiment(REPO / "experiments" / "char_lm_pydoc.py")
  config.update(num_steps=50, eval_every=50, image_every=50, checkpoint_every=50, log_every=50)
  train_and_evaluate(config, workdir)
  return workdir


def prepare(mode: str, host: pathlib.Path, cache: pathlib.Path):
  """(compiled step, state, feed, root key) of one mode, warmed up."""

  from genlab.config import load_experiment
  from genlab.core import stream_key
  from genlab.data import Batcher
  from genlab.run import resources, setup
  from genlab.run.loop import resident_split
  from genlab.run.runner import ResidentFeed, StreamedFeed

  config = load_experiment(REPO / "experiments" / "sae_pydoc_residual.py")
  config.sae.host_workdir = str(host)
  config.sae.cache_dir = "" if mode == "on_the_fly" else str(cache)
  config.data.device_resident = "off" if mode == "cache_streamed" else "on"
  config.num_steps = 10**6
  s = setup(config, provide=resources.provide)
  batcher = Batcher(
    s.dataset.train,
    global_batch_size=config.batch_size,
    key=stream_key(s.root_key, "data"),
    value_range=s.family.value_range,
  )
  resident = resident_split(s, batcher)
  if resident is None:
    feed = StreamedFeed(batcher, s.runner, start=0, end=config.num_steps, steps_per_dispatch=1)
  else:
    feed = ResidentFeed(resident, s.runner, steps_per_dispatch=1)
  state = s.runner.place_state(s.initial_state)
  step_fn = s.runner.train_step(s.family.train_step, feed, state)
  return {"step": step_fn, "state": state, "feed": feed, "key": s.root_key, "next": 0, "s": s}


def run_block(m: dict, steps: int) -> float:
  import jax

  start = time.perf_counter()
  for _ in range(steps):
    m["state"], metrics = m["step"](m["state"], m["key"], m["feed"].inputs(m["next"]))
    m["next"] += 1
  jax.block_until_ready((m["state"], metrics))
  return (time.perf_counter() - start) / steps


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--host", default="", help="a language_model workdir (default: make one)")
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--steps", type=int, default=20)
  args = parser.parse_args()
  sys.path.insert(0, str(REPO))
  tmp = pathlib.Path(tempfile.mkdtemp(prefix="genlab-sae-bench-"))
  host = pathlib.Path(args.host) if args.host else make_host(tmp / "host")
  modes = ["on_the_fly", "cache_streamed", "cache_resident"]
  prepared = {mode: prepare(mode, host, tmp / "cache") for mode in modes}
  for m in prepared.values():
    run_block(m, 3)  # Compiled and warm.
  times = {mode: [] for mode in modes}
  for _ in range(args.rounds):
    for mode in modes:
      times[mode].append(run_block(prepared[mode], args.steps))
  batch = prepared["on_the_fly"]["s"].config.batch_size
  positions = float(
    sum(
      prepared["on_the_fly"]["s"].dataset.train["length"][:batch] - 1
    )  # skip_first = 1: ≈ per batch.
  )
  result = {}
  for mode in modes:
    ms = 1000 * statistics.median(times[mode])
    result[mode] = ms
    print(
      json.dumps(
        {
          "mode": mode,
          "ms_per_step": round(ms, 2),
          "block_ms": [round(1000 * t, 2) for t in times[mode]],
          "approx_positions_per_s": round(positions / ms * 1000),
          "batch_sequences": batch,
          "steps_per_block": args.steps,
          "rounds": args.rounds,
          **machine.cpu(),
        }
      )
    )
  for m in prepared.values():
    m["feed"].close()
  print(
    json.dumps(
      {
        "cache_streamed_over_cache_resident": round(
          result["cache_streamed"] / result["cache_resident"], 3
        ),
        "on_the_fly_over_cache_resident": round(result["on_the_fly"] / result["cache_resident"], 3),
        "host": str(host),
        **machine.cpu(),
      }
    )
  )


if __name__ == "__main__":
  main()
