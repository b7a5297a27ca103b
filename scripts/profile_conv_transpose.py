"""Times nn.ConvTranspose against genlab's ConvTranspose: forward, input and kernel gradients.

    python scripts/profile_conv_transpose.py                  # the decoders' layers, batch 128
    python scripts/profile_conv_transpose.py --cases dcgan_1 --repeats 50 --dtype bfloat16
    XLA_FLAGS=--xla_cpu_use_onednn=true python scripts/profile_conv_transpose.py

Prints one JSON line per layer: for each implementation (`flax`, `genlab`) the median
(and minimum) milliseconds of the jitted forward pass, the input gradient (VJP with
respect to the inputs) and the kernel gradient (VJP with respect to the parameters,
kernel and bias), each after compilation and a warm-up call, with `block_until_ready`;
then the speed-up of genlab's version on each and on their sum (one training step's
share of the layer). The layers are the decoders of the reference models: the conv AE
on 28×28 inputs (7×7×64 → 14×14×32 → 28×28×1), the DCGAN generator (7×7×128 →
14×14×64 → 28×28×1), all 4×4 kernels with stride 2 and 'SAME' padding, and the
digits experiments' 8×8 versions. XLA_FLAGS are read from the environment as usual;
on a shared machine, use more repeats and trust the minimum over the median.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import machine  # scripts/machine.py: the CPU and its vector extensions

# (name, input H = W, input channels, output channels, kernel side); stride 2, 'SAME'.
CASES = (
  ("conv_ae_1", 7, 64, 32, 4),
  ("conv_ae_2", 14, 32, 1, 4),
  ("dcgan_1", 7, 128, 64, 4),
  ("dcgan_2", 14, 64, 1, 4),
  ("dcgan_digits_1", 2, 128, 64, 4),
  ("dcgan_digits_2", 4, 64, 1, 4),
  ("conv_ae_digits_1", 2, 64, 32, 3),
  ("conv_ae_digits_2", 4, 32, 1, 3),
)


def _time_ms(fn, *args, repeats: int) -> tuple[float, float]:
  import jax
  import numpy as np

  jax.block_until_ready(fn(*args))  # compile and warm up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times)) * 1e3, float(np.min(times)) * 1e3


def profile_layer(module, x, repeats: int) -> dict[str, float]:
  """Median and minimum ms of forward, input-gradient and kernel-gradient of `module` at `x`."""
  import functools

  import jax

  from genlab.kernels import compiler_options

  # Compiled as genlab compiles its steps (its CPU compiler options, unless XLA_FLAGS set them).
  jit = functools.partial(jax.jit, compiler_options=compiler_options("xla_cpu"))
  params = module.init(jax.random.key(0), x)
  y = module.apply(params, x)
  g = jax.random.normal(jax.random.key(1), y.shape, y.dtype)
  forward = jit(module.apply)
  input_grad = jit(lambda p, x, g: jax.vjp(lambda x: module.apply(p, x), x)[1](g)[0])
  kernel_grad = jit(lambda p, x, g: jax.vjp(lambda p: module.apply(p, x), p)[1](g)[0])
  out = {}
  for name, fn, args in (
    ("forward", forward, (params, x)),
    ("input_grad", input_grad, (params, x, g)),
    ("kernel_grad", kernel_grad, (params, x, g)),
  ):
    median, minimum = _time_ms(fn, *args, repeats=repeats)
    out[f"{name}_ms"] = round(median, 3)
    out[f"{name}_min_ms"] = round(minimum, 3)
  return out


def main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=20)
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--cases", default="", help="comma-separated case names (default: all)")
  args = parser.parse_args(argv)
  os.environ.setdefault("JAX_PLATFORMS", "cpu")

  import flax.linen as nn
  import jax
  import jax.numpy as jnp

  from genlab.kernels import compiler_options
  from genlab.kernels.xla_cpu.conv_transpose import ConvTranspose

  dtype = jnp.dtype(args.dtype)
  wanted = set(filter(None, args.cases.split(",")))
  for name, size, in_features, features, k in CASES:
    if wanted and name not in wanted:
      continue
    x = jax.random.normal(jax.random.key(2), (args.batch, size, size, in_features), dtype)
    layer = dict(features=features, kernel_size=(k, k), strides=(2, 2), padding="SAME", dtype=dtype)
    line = {
      "case": name,
      "input": list(x.shape),
      "features": features,
      "kernel": k,
      "dtype": args.dtype,
      "backend": jax.default_backend(),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "compiler_options": compiler_options("xla_cpu"),
      "flax": profile_layer(nn.ConvTranspose(**layer), x, args.repeats),
      "genlab": profile_layer(ConvTranspose(**layer), x, args.repeats),
    }
    parts = ("forward", "input_grad", "kernel_grad")
    speedup = {p: line["flax"][f"{p}_ms"] / line["genlab"][f"{p}_ms"] for p in parts}
    speedup["sum"] = sum(line["flax"][f"{p}_ms"] for p in parts) / sum(
      line["genlab"][f"{p}_ms"] for p in parts
    )
    line["speedup"] = {p: round(v, 2) for p, v in speedup.items()}
    line.update(machine.cpu())
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
  main(sys.argv[1:])
