"""The streamed input pipeline against what a conv VAE's train step consumes, on 64×64×3 images.

    python scripts/benchmark_input.py [--num_images 50000] [--workers 0,1,2] [--out DIR]

1. Generates an ArrayRecord file of `--num_images` 64×64×3 images in genlab's record
   format (PNG-encoded, with a label; smooth coloured blobs and noise, so the PNGs are
   neither trivial nor incompressible), once, in `--out` (default: a temporary dir).
2. Times `genlab.data.Batcher` over it (`image_records`), batch 128, each example
   decoded from its record, converted to float32, randomly cropped (reflected by 4
   pixels) and flipped, keyed by its position: images/s with 0 (one thread), 1 and 2
   grain worker processes, median of `--repeats` blocks of `--steps` batches.
3. Times the train step of a conv VAE (64×64×3 → Conv 32, 64, 128 (3×3, stride 2) →
   32 latents → the mirror, Bernoulli decoder) at batch 128, device-resident synthetic
   data, as scripts/benchmark.py times its reference models: the examples/s it consumes.

Each is measured alone on the same machine (the pipeline with the step idle, the step
fed from device memory); one JSON line each, then one with the ratios. A pipeline
that sustains ≥ 3× the step's rate can feed it from a share of the cores.
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
import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

SHAPE = (64, 64, 3)
BATCH = 128
CONV_VAE = {
  "family": "vae",
  "shape": SHAPE,
  "batch": BATCH,
  "model": dict(
    name="vae",
    architecture="conv",
    features=(32, 64, 128),
    kernel_size=3,
    strides=2,
    latent_dim=32,
    likelihood="bernoulli",
  ),
}


def synthetic_images(n: int, seed: int = 0):
  """`n` uint8 64×64×3 images, made chunk by chunk: 3 gaussian blobs of random colours on
  a random gradient, plus noise of σ = 6 grey levels."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:64, 0:64].astype(np.float32) / 63.0
  for start in range(0, n, 1000):
    m = min(1000, n - start)
    image = rng.uniform(0, 120, (m, 1, 1, 3)) * (xx[None, :, :, None] + yy[None, :, :, None]) / 2
    for _ in range(3):
      cy, cx = rng.uniform(0, 1, (2, m, 1, 1))
      width = rng.uniform(0.05, 0.25, (m, 1, 1))
      blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * width**2))
      image = image + blob[..., None] * rng.uniform(0, 200, (m, 1, 1, 3))
    image = image + rng.normal(0, 6, image.shape)
    yield from np.clip(image, 0, 255).astype(np.uint8)


def make_records(path: pathlib.Path, n: int) -> dict:
  from genlab.data import write_image_records

  begin = time.perf_counter()
  labels = np.random.default_rng(1).integers(0, 10, n)
  write_image_records(str(path), synthetic_images(n), labels)
  return {
    "records": n,
    "write_s": round(time.perf_counter() - begin, 1),
    "bytes": path.stat().st_size,
  }


def pipeline_rate(path: pathlib.Path, workers: int, steps: int, repeats: int) -> dict:
  import jax

  from genlab.data import Batcher, augment, image_records

  records = image_records(str(path))
  batcher = Batcher(
    records,
    global_batch_size=BATCH,
    key=jax.random.key(0),
    augmentations=augment.parse("crop,flip", crop_padding=4, image_shape=SHAPE),
    workers=workers,
  )
  warmup = 2 * max(1, workers)
  batches = batcher.iterate(0, warmup + steps * repeats, prefetch=4)
  begin = time.perf_counter()
  for _ in range(warmup):  # Worker start-up (a process each, importing genlab) is not timed.
    next(batches)
  start_s = time.perf_counter() - begin
  rates = []
  for _ in range(repeats):
    begin = time.perf_counter()
    for _ in range(steps):
      batch = next(batches)
    rates.append(steps * BATCH / (time.perf_counter() - begin))
  batches.close()
  assert batch["image"].shape == (BATCH, *SHAPE) and batch["image"].dtype == np.float32
  return {
    "what": "streamed pipeline: record read + PNG decode + float32 + random crop and flip",
    "workers": workers,
    "images_per_s": round(statistics.median(rates), 1),
    "spread": [round(min(rates), 1), round(max(rates), 1)],
    "batch": BATCH,
    "steps_per_block": steps,
    "repeats": repeats,
    "startup_s": round(start_s, 2),
  }


def step_rate(steps: int, repeats: int) -> dict:
  import benchmark

  benchmark.REFERENCE["conv_vae64"] = CONV_VAE  # For this script only; not in --model all.
  args = argparse.Namespace(
    batch=BATCH,
    dtype="float32",
    steps_per_dispatch=10,
    devices=0,
    kernels="auto",
    steps=steps,
    warmup=20,
    repeats=repeats,
  )
  row = benchmark.benchmark("conv_vae64", args)
  row["what"] = "conv VAE train step, 64×64×3, device-resident synthetic data"
  return row


def main(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--num_images", type=int, default=50_000)
  parser.add_argument("--workers", default="0,1,2")
  parser.add_argument("--steps", type=int, default=40, help="batches per timed block")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--out", default=None, help="where the records are kept (reused)")
  args = parser.parse_args(argv)
  out = pathlib.Path(args.out or tempfile.mkdtemp(prefix="genlab-input-"))
  out.mkdir(parents=True, exist_ok=True)
  path = out / f"images64_{args.num_images}.array_record"
  if not path.exists():
    print(json.dumps({"generated": str(path), **make_records(path, args.num_images)}), flush=True)
  rows = [pipeline_rate(path, int(w), args.steps, args.repeats) for w in args.workers.split(",")]
  for row in rows:
    print(json.dumps(row), flush=True)
  step = step_rate(steps=50, repeats=args.repeats)
  print(json.dumps(step), flush=True)
  print(
    json.dumps(
      {
        "summary": "pipeline images/s ÷ conv VAE step examples/s, each measured alone",
        "step_examples_per_s": step["examples_per_s"],
        **{
          f"ratio_workers_{r['workers']}": round(r["images_per_s"] / step["examples_per_s"], 2)
          for r in rows
        },
        "records": args.num_images,
        **machine.cpu(),
      }
    ),
    flush=True,
  )


if __name__ == "__main__":
  main(sys.argv[1:])
