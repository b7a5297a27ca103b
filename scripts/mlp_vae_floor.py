"""How close can an mlp_vae step get to the CPU's peak? genlab's step against programs
made of the parts of it no implementation can drop.

    python scripts/mlp_vae_floor.py [--dtype bfloat16] [--rounds 9] [--dispatches 30]

The issue asks mlp_vae (784-500-20, batch 128, Adam) for ≥ 70% of the fp32 peak. This
script times, interleaved in one process (round after round, so that a noisy machine
moves every figure alike), with `--steps_per_dispatch` steps scanned per call:

  genlab          `benchmark.py`'s mlp_vae step: genlab's `train_step` through `Runner`.
  products        only the step's products, forward and both gradients, on the same
                  parameters and dtype (bf16 operands through `genlab.kernels.xla_cpu.precision`,
                  kernels rounded to bf16 once per step), on pre-gathered batches: no
                  activation, loss, noise, gather, norm or finite check.
  products+sgd    the same, then p -= lr · g on every parameter.
  products+adam   the same, then the optimizer genlab's step uses (optax Adam).

The last is a floor for any XLA program of this model trained with Adam: a faster step
would need faster products or a faster update, not less of the rest. Each line also
gives, for that time, the fraction of peak the model's FLOPs (XLA's count of genlab's
step, as in `benchmark.py`) would reach, and the step time 70% of the peak asks for.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchmark  # noqa: E402
import machine  # noqa: E402


def floor_step(tx, what: str, dtype):
  """A step of `what` ("products", "products+sgd", "products+adam") on the mlp_vae's
  model params, scanned over a [K, batch, 784] stack of batches."""
  import jax
  import jax.numpy as jnp
  import optax

  from genlab.models import precision

  def product(x, w):  # x w, float32 accumulation.
    return precision.product_f32(x, w).astype(dtype)

  def product_t(x, w):  # x wᵀ.
    dims = (((1,), (1,)), ((), ()))
    return jax.lax.dot_general(x, w, dims, preferred_element_type=jnp.float32).astype(dtype)

  def kernel_grad(x, g):  # xᵀ g, as `precision.matmul`'s backward pass takes it.
    return precision.product_f32(precision.transposed_copy(x), g)

  def bias_grad(g):  # as `precision.add_bias`'s: ones · g, float32.
    ones = jnp.ones((g.shape[0],), g.dtype)
    return jax.lax.dot_general(
      ones, g, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32
    )

  def grads(params, x):
    w = jax.tree.map(lambda p: precision.to_dtype(p["kernel"], dtype), params, is_leaf=is_layer)
    e0, e1 = w["encoder"]["dense_0"], w["encoder"]["dense_1"]
    d0, d1 = w["decoder"]["dense_0"], w["decoder"]["dense_1"]
    latent = d0.shape[0]
    h = product(x, e0)
    stats = product(h, e1)
    z = stats[:, :latent]
    u = product(z, d0)
    g = product(u, d1)  # Stands in for the loss gradient of the logits.
    du = product_t(g, d1)
    dz = product_t(du, d0)
    dstats = jnp.pad(dz, ((0, 0), (0, stats.shape[1] - latent)))
    dh = product_t(dstats, e1)
    layers = {
      "encoder": {"dense_0": (x, dh), "dense_1": (h, dstats)},
      "decoder": {"dense_0": (z, du), "dense_1": (u, g)},
    }
    return jax.tree.map(
      lambda xg: {"kernel": kernel_grad(*xg), "bias": bias_grad(xg[1])},
      layers,
      is_leaf=lambda v: isinstance(v, tuple),
    )

  def body(carry, x):
    params, opt_state = carry
    g = grads(params, x)
    if what == "products+sgd":
      params = jax.tree.map(lambda p, g: p - 1e-3 * g, params, g)
    elif what == "products+adam":
      updates, opt_state = tx.update(g, opt_state, params)
      params = optax.apply_updates(params, updates)
    else:  # The gradients are carried, so that nothing is left out as dead code.
      params = g
    return (params, opt_state), None

  def run(params, opt_state, xs):
    return jax.lax.scan(body, (params, opt_state), xs)[0]

  return run


def is_layer(node) -> bool:
  return isinstance(node, dict) and "kernel" in node


def main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
  parser.add_argument("--steps_per_dispatch", type=int, default=10)
  parser.add_argument("--rounds", type=int, default=9)
  parser.add_argument("--dispatches", type=int, default=30, help="per program and round")
  args = parser.parse_args(argv)

  import jax
  import jax.numpy as jnp
  import numpy as np

  from genlab.kernels import compiler_options

  k = args.steps_per_dispatch
  b = benchmark.build("mlp_vae", batch=None, dtype=args.dtype, k=k, devices=1)
  flops = benchmark.step_flops(b.config, b.dataset, b.runner, b.data, b.state, b.root)
  peak_measured = machine.fp32_peak()
  if peak_measured["gflops"] is None:
    raise SystemExit(f"no fp32 peak to set the floor against: {peak_measured['failed']}")
  peak, peak_how = peak_measured["gflops"], peak_measured["how"]
  dtype = jnp.dtype(args.dtype)
  batch = b.config.batch_size
  rng = np.random.default_rng(0)
  xs = jnp.asarray(rng.random((k, batch, 784)), dtype)

  def copy(tree):
    return jax.tree.map(jnp.copy, tree)

  programs = {}
  state = b.state
  programs["genlab"] = [
    lambda s: b.compiled(s, b.root, b.feed.inputs(0))[0],
    state,
  ]
  for what in ("products", "products+sgd", "products+adam"):
    run = floor_step(state.tx["model"], what, dtype)
    params, opt_state = copy(state.params["model"]), copy(state.opt_state["model"])
    compiled = (
      jax.jit(run, donate_argnums=(0, 1), compiler_options=compiler_options(b.runner.kernels))
      .lower(params, opt_state, xs)
      .compile()
    )
    programs[what] = [lambda s, c=compiled: c(*s, xs), (params, opt_state)]

  def timed(name, dispatches):
    call, s = programs[name]
    begin = time.perf_counter()
    for _ in range(dispatches):
      s = call(s)
    jax.block_until_ready(s)
    programs[name][1] = s
    return (time.perf_counter() - begin) / (dispatches * k)

  for name in programs:  # Warm-up.
    timed(name, 3)
  times = {name: [] for name in programs}
  for _ in range(args.rounds):
    for name in programs:
      times[name].append(timed(name, args.dispatches))

  budget_s = flops / (0.7 * peak * 1e9)
  for name, t in times.items():
    step_s = statistics.median(t)
    print(
      json.dumps(
        {
          "program": name,
          "model": "mlp_vae",
          "dtype": args.dtype,
          "batch": batch,
          "step_ms": round(step_s * 1e3, 3),
          "spread_ms": [round(min(t) * 1e3, 3), round(max(t) * 1e3, 3)],
          "model_flops_per_step": flops,
          "fraction_of_peak_at_model_flops": round(flops / step_s / (peak * 1e9), 3),
          "step_ms_for_70pct": round(budget_s * 1e3, 3),
          "peak_gflops": round(peak, 1),
          "peak_how": peak_how,
          "timing": (
            f"median of {args.rounds} interleaved rounds of {args.dispatches} dispatches × "
            f"{k} steps, after a warm-up"
          ),
          "backend": jax.default_backend(),
          **machine.cpu(),
        }
      ),
      flush=True,
    )


if __name__ == "__main__":
  main(sys.argv[1:])
