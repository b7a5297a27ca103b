"""Times the JAX FID Inception-v3 (genlab.models.inception) on this machine: images per second.

    python scripts/benchmark_inception.py [--batch 50] [--batches 4] [--weights FILE]

Runs `FIDInceptionV3` under `jax.jit` on batches of 299×299×3 images (random weights of
the published file's shapes unless `--weights` names a .pth: the time does not depend on
the values), after one compiling call, and prints one JSON line: the CPU
(`machine.cpu()`), JAX's devices, the compile time, images per second over `--batches`
timed batches, and the load average before and after. A load average at or above the
number of cores means other work shared the cores: the figure is then marked `busy` and
is no speed claim.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import machine  # noqa: E402


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--batch", type=int, default=50)
  parser.add_argument("--batches", type=int, default=4)
  parser.add_argument("--weights", default="", help="a pytorch-fid .pth (default: random)")
  args = parser.parse_args(argv)

  import jax
  import jax.numpy as jnp
  import numpy as np

  from genlab.models.inception import FIDInceptionV3, variables_from_state_dict
  from genlab.models.torch_weights import read_state_dict

  model = FIDInceptionV3()
  x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (args.batch, 299, 299, 3)), jnp.float32)
  if args.weights:
    variables = variables_from_state_dict(read_state_dict(args.weights))
  else:
    variables = model.init(jax.random.key(0), x[:1])
  apply = jax.jit(model.apply)
  load_before = os.getloadavg()[0]
  start = time.perf_counter()
  jax.block_until_ready(apply(variables, x))
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(args.batches):
    jax.block_until_ready(apply(variables, x))
  seconds = time.perf_counter() - start
  load_after = os.getloadavg()[0]
  cores = os.cpu_count() or 1
  busy = max(load_before, load_after) >= cores
  print(
    json.dumps(
      {
        "benchmark": "FID Inception-v3 forward (pool3 + logits), float32, 299x299x3",
        "cpu": machine.cpu(),
        "devices": [str(d) for d in jax.devices()],
        "batch": args.batch,
        "timed_images": args.batch * args.batches,
        "first_call_s (compile + run)": round(compile_s, 2),
        "images_per_s": round(args.batch * args.batches / seconds, 2),
        "load_average_before_after": [round(load_before, 2), round(load_after, 2)],
        "cores": cores,
        "busy": busy
        and f"load average {max(load_before, load_after):.1f} on {cores} cores: other work "
        "shared them, so this figure is no speed claim",
      },
      ensure_ascii=False,
    )
  )
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
