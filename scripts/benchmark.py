"""Speed of genlab's train step on the reference models, through genlab's public API.

    python scripts/benchmark.py --model all --json
    python scripts/benchmark.py --model conv_ae --batch 256 --steps 200 --steps_per_dispatch 10
    python scripts/benchmark.py --input_path   # device-resident gather and streaming Batcher

Each reference model is a genlab family built from a config (`REFERENCE`) on a
synthetic dataset of the right shape (random pixels / N(0, 1) series: speed does
not depend on the values), run the way `genlab train` runs it: the family's
`train_step` compiled by `Runner` over the run's mesh with device-resident data and
`--steps_per_dispatch` steps per call. The clock starts after compilation and a
warm-up; each timed block ends with `block_until_ready`; the figure is the
median over `--repeats` blocks of `--steps` steps.

One JSON line per model: `model`, `batch`, `examples_per_s`, `step_ms`,
`compile_s` (lowering + XLA compilation of one dispatch), `flops_per_step`
(XLA's cost analysis of the compiled dispatch, divided by its steps; a
multiply-add counts 2), `gflops_per_s`, `peak_gflops` (this machine's fp32
peak, `machine.fp32_peak`: None where its measurement failed, with `fraction_not_given`
saying why), `peak_how`, `fraction_of_fp32_peak`, `num_params`, `devices`, `mesh`,
`kernels`, `backend`, `dtype`, `steps_per_dispatch`, `repeats`, `steps`, and the CPU with
its vector extensions (`machine.cpu`).

`--cpu_devices N` splits the CPU into N devices first (one per core: data parallel over the
cores, `genlab train --cpu_devices N`), and the run's mesh then spans them (`--devices`, 0:
all); the batch stays the reference one, split over the devices. `--kernels flax` or
`xla_cpu` forces the layers (`genlab.kernels`; default `auto`).

The reference models (fixed, so other frameworks can build the same ones,
e.g. scripts/benchmark_torch.py):
  mlp_vae    784-500-20 MLP VAE, Bernoulli decoder, batch 128, Adam
  conv_ae    28×28×1 → Conv(32, 3×3, s2) → Conv(64, 3×3, s2) → ConvT(32, 4×4, s2)
             → ConvT(1, 4×4, s2), ReLU between, MSE, batch 128, Adam
  dcgan      z 100 → Dense 7·7·128 → ConvT(64, 4×4, s2) → ConvT(1, 4×4, s2), tanh;
             D: Conv(64, 4×4, s2) → Conv(128, 4×4, s2) → Dense 1; leaky ReLU;
             one D step + one G step, batch 128
  lstm_ae    sequences 40×1, LSTM 128 → z 32 → LSTM 128 → Dense 1, batch 128
  sparse_ae  784 → 1024 sigmoid → 784, KL-ρ penalty, batch 256
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

import machine

REFERENCE = {
  "mlp_vae": {
    "family": "vae",
    "shape": (28, 28, 1),
    "batch": 128,
    "model": dict(
      name="vae", architecture="mlp", hidden=(500,), latent_dim=20, likelihood="bernoulli"
    ),
  },
  "conv_ae": {
    "family": "autoencoder",
    "shape": (28, 28, 1),
    "batch": 128,
    "model": dict(
      name="conv_ae",
      features=(32, 64),
      kernel_size=3,
      decoder_kernel_size=4,
      strides=2,
      latent_dim=None,
      activation="relu",
      output_activation="none",
    ),
  },
  "dcgan": {
    "family": "gan",
    "shape": (28, 28, 1),
    "batch": 128,
    "range": (-1.0, 1.0),
    "model": {
      "name": "gan",
      "architecture": "dcgan",
      "latent_dim": 100,
      "generator": {"features": (64, 128), "kernel_size": 4, "strides": 2, "activation": "relu"},
      "discriminator": {
        "features": (64, 128),
        "kernel_size": 4,
        "strides": 2,
        "activation": "leaky_relu",
      },
    },
  },
  "lstm_ae": {
    "family": "recurrent_autoencoder",
    "shape": (40, 1),
    "batch": 128,
    "model": dict(
      name="rnn_ae", feature_dims=(), cell="lstm", hidden_dim=128, latent_dim=32, num_layers=1
    ),
  },
  "sparse_ae": {
    "family": "sparse_autoencoder",
    "shape": (28, 28, 1),
    "batch": 256,
    "model": dict(name="sparse_ae", code_dim=1024, code="sigmoid", output_activation="sigmoid"),
  },
}
NUM_EXAMPLES = 8192  # Synthetic training examples (device-resident: ~26 MB as float32).


def synthetic_dataset(spec: dict):
  import numpy as np

  from genlab.data import Dataset

  rng = np.random.default_rng(0)
  shape = spec["shape"]

  def split(n):
    if spec["family"] == "recurrent_autoencoder":
      x = rng.normal(size=(n, *shape)).astype(np.float32)
      return {"image": x, "length": np.full(n, shape[0], np.int64)}
    return {"image": rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)}

  modality = "series" if spec["family"] == "recurrent_autoencoder" else "image"
  return Dataset("synthetic", split(NUM_EXAMPLES), split(512), modality=modality)


def reference_config(name: str, batch: int | None, dtype: str, k: int):
  import ml_collections

  from genlab import config as config_lib

  spec = REFERENCE[name]
  config = config_lib.base_config(spec["family"])
  config.batch_size = batch or spec["batch"]
  config.steps_per_dispatch = k
  config.data.range = spec.get("range", (0.0, 1.0))
  config.model = ml_collections.ConfigDict(spec["model"])
  if spec["family"] == "sparse_autoencoder":
    config.sparsity.update(kind="kl", rho=0.05, beta=3.0)
  config.dtype = dtype
  if "sample_metrics" in config:  # Train steps only (and synthetic data has no labels).
    config.sample_metrics.evaluators = ""
  return config


def step_flops(config, dataset, runner, data, state, root) -> float:
  """XLA's FLOP count of one step, from a one-step program with every loop unrolled
  (the cost analysis of a loop counts its body once, not once per iteration)."""
  from genlab.families import get_family
  from genlab.run.runner import ResidentFeed

  config = config.copy_and_resolve_references()
  if config.family == "recurrent_autoencoder":
    config.model.unroll = dataset.train["image"].shape[1]
  family = get_family(config.family)(config, dataset, root_key=root, kernels=runner.kernels)
  feed = ResidentFeed(data, runner, steps_per_dispatch=1)
  one = runner.train_step(family.train_step, feed, state)
  cost = one.lower(state, root, feed.inputs(0)).cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  # Several devices: the cost is one device's program, on its slice of the batch.
  return runner.num_devices * float(cost.get("flops", float("nan"))) if cost else float("nan")


def build(name: str, *, batch: int | None, dtype: str, k: int, devices: int = 0, kernels="auto"):
  """The reference model `name` as `genlab train` runs it: its family on the synthetic
  dataset, the split device-resident, and its `k`-step dispatch compiled. Returns a
  namespace: config, dataset, runner, data, feed, root, state, compiled, compile_s."""
  import types

  import jax

  from genlab.core import rngs
  from genlab.data import ResidentSplit
  from genlab.families import get_family
  from genlab.run.runner import ResidentFeed, Runner

  config = reference_config(name, batch, dtype, k)
  config.kernels = kernels
  dataset = synthetic_dataset(REFERENCE[name])
  runner = Runner(global_batch_size=config.batch_size, devices=devices, kernels=kernels)
  root = rngs.root_key(0)
  family = get_family(config.family)(config, dataset, root_key=root, kernels=runner.kernels)
  data = ResidentSplit(
    dataset.train,
    global_batch_size=config.batch_size,
    key=rngs.stream_key(root, "data"),
    value_range=family.value_range,
  )
  example = {key: v[:1] for key, v in data.arrays.items()}
  state = runner.place_state(jax.jit(family.init_state)(rngs.stream_key(root, "init"), example))
  feed = ResidentFeed(data, runner, steps_per_dispatch=k)
  step = runner.train_step(family.train_step, feed, state)
  begin = time.perf_counter()
  compiled = step.lower(state, root, feed.inputs(0)).compile()
  compile_s = time.perf_counter() - begin
  return types.SimpleNamespace(
    config=config,
    dataset=dataset,
    runner=runner,
    data=data,
    feed=feed,
    root=root,
    state=state,
    compiled=compiled,
    compile_s=compile_s,
  )


def benchmark(name: str, args) -> dict:
  import jax

  from genlab.run.loop import MAX_IN_FLIGHT

  k = args.steps_per_dispatch
  b = build(
    name, batch=args.batch, dtype=args.dtype, k=k, devices=args.devices, kernels=args.kernels
  )
  config, runner, feed = b.config, b.runner, b.feed
  root, state, compiled = b.root, b.state, b.compiled
  flops = step_flops(config, b.dataset, runner, b.data, state, root)
  num_params = sum(x.size for x in jax.tree.leaves(state.params))

  dispatches = max(1, args.steps // k)
  done = 0

  def run(n):
    nonlocal state, done
    in_flight = []
    for _ in range(n):
      # A new epoch's order is uploaded between dispatches, as `genlab train` does.
      state, metrics = compiled(state, root, feed.inputs(done))
      done += k
      # At most MAX_IN_FLIGHT dispatches ahead of the devices, as `genlab train` (with
      # several CPU devices, an unbounded queue deadlocked XLA:CPU's all-reduce).
      in_flight.append(metrics)
      if len(in_flight) > MAX_IN_FLIGHT:
        jax.block_until_ready(in_flight.pop(0))
    jax.block_until_ready(in_flight)

  run(max(1, args.warmup // k))
  times = []
  for _ in range(args.repeats):
    begin = time.perf_counter()
    run(dispatches)
    times.append((time.perf_counter() - begin) / (dispatches * k))
  step_s = statistics.median(times)
  if jax.default_backend() == "cpu":
    peak = machine.fp32_peak()
  else:  # The peak is the CPU's; an accelerator's is not measured here.
    peak = {"gflops": None, "how": "", "failed": f"not measured on {jax.default_backend()}"}
  # XLA:GPU's cost analysis gives no FLOP count: then null, not NaN (JSON has no NaN).
  flops = flops if math.isfinite(flops) else None
  gflops = flops / step_s / 1e9 if flops else None
  return {
    "model": name,
    "framework": "genlab",
    "batch": config.batch_size,
    "examples_per_s": round(config.batch_size / step_s, 1),
    "step_ms": round(step_s * 1e3, 3),
    "compile_s": round(b.compile_s, 2),
    "flops_per_step": flops,
    "gflops_per_s": round(gflops, 2) if gflops else None,
    "peak_gflops": round(peak["gflops"], 1) if peak["gflops"] else None,
    "peak_how": peak["how"],
    **machine.fraction_of_peak(gflops, peak),
    "num_params": int(num_params),
    "devices": runner.num_devices,
    "mesh": dict(runner.mesh.shape),
    "kernels": runner.kernels,
    "backend": jax.default_backend(),
    "dtype": args.dtype,
    "steps_per_dispatch": k,
    "steps": dispatches * k,
    "repeats": args.repeats,
    "data": "device-resident, synthetic",
    "examples": NUM_EXAMPLES,
    "spread_ms": [round(min(times) * 1e3, 3), round(max(times) * 1e3, 3)],
    **machine.cpu(),
  }


def input_path(args) -> list[dict]:
  """(1) The device-resident gather alone vs the conv_ae step; (2) the streaming Batcher on
  `digits` vs what `experiments/conv_ae_digits.py`'s step consumes."""
  import jax
  import numpy as np

  from genlab import config as config_lib
  from genlab.core import stream_key
  from genlab.data import Batcher, ResidentSplit, load_dataset
  from genlab.run.runner import StreamedFeed
  from genlab.run.setup import setup

  rows = []
  conv = benchmark("conv_ae", args)
  config = reference_config("conv_ae", args.batch, args.dtype, args.steps_per_dispatch)
  data = ResidentSplit(
    synthetic_dataset(REFERENCE["conv_ae"]).train,
    global_batch_size=config.batch_size,
    key=jax.random.key(0),
    value_range=(0.0, 1.0),
  )
  arrays = jax.device_put(data.arrays)

  @jax.jit
  def gather_only(arrays, orders, first):
    def one(total, step):
      batch = data.batch(arrays, orders, step)
      return total + batch["image"].sum(), None

    steps = first + np.arange(args.steps_per_dispatch)
    return jax.lax.scan(one, 0.0, steps)[0]

  orders = jax.device_put(data.orders(0, args.steps_per_dispatch))
  jax.block_until_ready(gather_only(arrays, orders, 0))
  times = []
  for _ in range(args.repeats):
    begin = time.perf_counter()
    out = [gather_only(arrays, orders, 0) for _ in range(20)]
    jax.block_until_ready(out)
    times.append((time.perf_counter() - begin) / (20 * args.steps_per_dispatch))
  gather_ms = statistics.median(times) * 1e3
  rows.append(
    {
      "input_path": "device-resident gather (conv_ae batch)",
      "gather_ms_per_step": round(gather_ms, 4),
      "step_ms": conv["step_ms"],
      "fraction_of_step": round(gather_ms / conv["step_ms"], 4),
    }
  )

  experiment = config_lib.load_experiment(
    os.path.join(os.path.dirname(__file__), "..", "experiments", "conv_ae_digits.py")
  )
  experiment.data.device_resident = "off"
  s = setup(experiment)
  dataset = load_dataset("digits", data_dir=experiment.data.data_dir)
  batcher = Batcher(
    dataset.train, global_batch_size=experiment.batch_size, key=stream_key(s.root_key, "data")
  )
  n = 2000
  for _ in batcher.iterate(0, 2 * batcher.steps_per_epoch):  # Warm-up: compiles the
    pass  # permutation, which is then computed (not compiled) once per epoch.
  begin = time.perf_counter()
  for _ in batcher.iterate(0, n):
    pass
  produced = n * experiment.batch_size / (time.perf_counter() - begin)
  feed = StreamedFeed(batcher, s.runner, start=0, end=20, steps_per_dispatch=1)
  state = s.runner.place_state(s.initial_state)
  step = s.runner.train_step(s.family.train_step, feed, state)
  batches = [feed.inputs(i) for i in range(20)]
  state, m = step(state, s.root_key, batches[0])
  jax.block_until_ready(m)
  begin = time.perf_counter()
  for i in range(200):
    state, m = step(state, s.root_key, batches[i % 20])
  jax.block_until_ready(m)
  consumed = 200 * experiment.batch_size / (time.perf_counter() - begin)
  rows.append(
    {
      "input_path": "streaming Batcher, digits (conv_ae_digits batch)",
      "batcher_examples_per_s": round(produced, 1),
      "step_consumes_examples_per_s": round(consumed, 1),
      "ratio": round(produced / consumed, 2),
      "batches": n,
    }
  )
  return rows


def main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", default="all", choices=[*REFERENCE, "all"])
  parser.add_argument("--batch", type=int, default=None, help="default: the model's reference")
  parser.add_argument("--steps", type=int, default=200, help="steps per timed block")
  parser.add_argument("--warmup", type=int, default=20)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--steps_per_dispatch", type=int, default=10)
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  parser.add_argument("--devices", type=int, default=0, help="devices of the mesh (0: all)")
  parser.add_argument(
    "--kernels", default="auto", choices=["auto", "flax", "xla_cpu"], help="genlab.kernels"
  )
  parser.add_argument(
    "--cpu_devices",
    type=int,
    default=1,
    help="split the CPU into N devices (genlab.run.runner.use_cpu_devices), data parallel",
  )
  parser.add_argument("--input_path", action="store_true", help="measure the input paths")
  parser.add_argument("--json", action="store_true", help="JSON lines only (the default too)")
  args = parser.parse_args(argv)
  if args.cpu_devices != 1:
    from genlab.run.runner import use_cpu_devices

    use_cpu_devices(args.cpu_devices)
  if args.input_path:
    for row in input_path(args):
      print(json.dumps(row), flush=True)
    return
  names = list(REFERENCE) if args.model == "all" else [args.model]
  for name in names:
    print(json.dumps(benchmark(name, args)), flush=True)


if __name__ == "__main__":
  main(sys.argv[1:])
