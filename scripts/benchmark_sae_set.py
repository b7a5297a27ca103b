"""Throughput of a set of SAEs trained from one pass of the host (`sae.variants`) against
the same SAEs trained one by one.

    python scripts/benchmark_sae_set.py [--steps 20] [--repeats 5] \
        [--host_workdir runs/char_lm_pydoc]

The worked example's shapes (experiments/sae_pydoc_residual.py): the char_lm_pydoc
transformer (width 96, 3 blocks; random weights unless `--host_workdir` names a trained
one: speed does not depend on the values) as host, batches of 64 sequences of pydoc_text
(≈1,600 positions), and four SAEs, two layers (`--layers`, default `block_0`, `block_1`)
× two k (16, 32),
1,536 latents each, BatchTopK with AuxK 256, no activation cache (the host runs in every
step, as it must for data too large to cache). Each train step is the family's
`train_step` under `jax.jit` (state donated) on one device.

The set's step and each lone SAE's step are timed in interleaved blocks of `--steps` steps
(after compilation and a warm-up; each block ends with `block_until_ready`); the figures
are the medians over `--repeats` blocks. The speed-up is (the four lone SAEs' step times,
summed) / (the set's step time): what training the four in one run saves per step over
four runs, compilation and start-up not counted. Prints one JSON line with the CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import statistics
import sys
import time

import machine

REPO = pathlib.Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=20, help="steps per timed block")
  parser.add_argument("--repeats", type=int, default=5, help="timed blocks per variant")
  parser.add_argument("--host_workdir", default="", help="a trained char_lm_pydoc run")
  parser.add_argument("--data_dir", default=None)
  parser.add_argument(
    "--host_width",
    type=int,
    default=0,
    help="a wider random host (0: as shipped, 96): a host whose forward pass costs what a "
    "real language model's does against its SAEs",
  )
  parser.add_argument("--host_depth", type=int, default=0, help="its blocks (0: as shipped, 3)")
  parser.add_argument("--code_dim", type=int, default=1536, help="each SAE's latents")
  parser.add_argument(
    "--layers",
    default="block_0,block_1",
    help="the two layers the SAEs read (the host runs up to the deeper one in a step)",
  )
  args = parser.parse_args(argv)
  first, second = args.layers.split(",")
  saes = {"k16_a": (first, 16), "k32_a": (first, 32), "k16_b": (second, 16)}
  saes["k32_b"] = (second, 32)

  import jax
  import jax.numpy as jnp
  import numpy as np

  from genlab import config as config_lib
  from genlab.data import eval_batches
  from genlab.run import resources
  from genlab.run.setup import build

  lm = config_lib.load_experiment(REPO / "experiments" / "char_lm_pydoc.py")
  lm.data.data_dir = args.data_dir
  lm.mesh.devices = 1
  if args.host_width:
    lm.model.width = args.host_width
  if args.host_depth:
    lm.model.depth = args.host_depth
  lm_setup = build(lm)
  if args.host_workdir:
    host = resources.PROVIDERS["host_model"](
      lm_setup, workdir=args.host_workdir, layer="block_1", skip_first=1
    )
    params, description = host.params, host.description
  else:
    params = lm_setup.initial_state.params["model"]
    description = (
      f"char_lm_pydoc's transformer (width {lm.model.width}, {lm.model.depth} blocks), "
      "random weights"
    )
  host = lm_setup.family.host_model(params, "block_1", skip_first=1, description=description)

  def setup_of(variants: str, layer: str = "block_1", **model):
    config = config_lib.load_experiment(REPO / "experiments" / "sae_pydoc_residual.py")
    config.data.data_dir = args.data_dir
    config.mesh.devices = 1
    config.sae.update(host_workdir="", host_factory="unused:by_this_script", variants=variants)
    config.model.update(code_dim=args.code_dim, **model)
    at_layer = dataclasses.replace(host, layer=layer)
    return build(config, provide=lambda s: s.family.provide({"host_model": at_layer}))

  variants = "; ".join(f"{name}: k={k}, layer={layer}" for name, (layer, k) in saes.items())
  setups = {"set": setup_of(variants)}
  for name, (layer, k) in saes.items():
    setups[name] = setup_of("", layer, k=k)

  batches = []
  for batch in eval_batches(lm_setup.dataset.train, global_batch_size=64, value_range=None):
    batches.append({k: jnp.asarray(v) for k, v in batch.items() if k != "mask"})
    if len(batches) == args.steps:
      break
  runs = {}
  for name, s in setups.items():
    step = jax.jit(s.family.train_step, donate_argnums=0)
    state = s.initial_state
    key = jax.random.key(0)
    begin = time.perf_counter()
    state, metrics = step(state, batches[0], key)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - begin
    for batch in batches:  # Warm-up.
      state, metrics = step(state, batch, key)
    jax.block_until_ready(metrics)
    runs[name] = {"step": step, "state": state, "key": key, "compile_s": compile_s, "ms": []}

  for _ in range(args.repeats):  # Interleaved: the set, then each lone SAE, per round.
    for run in runs.values():
      state = run["state"]
      begin = time.perf_counter()
      for batch in batches:
        state, metrics = run["step"](state, batch, run["key"])
      jax.block_until_ready((state.params, metrics))
      run["ms"].append((time.perf_counter() - begin) * 1000 / len(batches))
      run["state"] = state

  median = {name: statistics.median(run["ms"]) for name, run in runs.items()}
  alone = sum(median[name] for name in saes)
  positions = float(np.sum(np.asarray(host.positions(batches[0]))))
  print(
    json.dumps(
      {
        "benchmark": "sae_set",
        "saes": {name: {"layer": layer, "k": k} for name, (layer, k) in saes.items()},
        "latents": int(setups["set"].family.model.code_dim),
        "host": description,
        "host_params": int(sum(np.size(leaf) for leaf in jax.tree.leaves(params))),
        "batch_sequences": 64,
        "positions_per_step": positions,
        "set_step_ms": round(median["set"], 2),
        "alone_step_ms": {name: round(median[name], 2) for name in saes},
        "alone_step_ms_sum": round(alone, 2),
        "speedup_set_vs_alone": round(alone / median["set"], 3),
        "compile_s": {name: round(run["compile_s"], 2) for name, run in runs.items()},
        "steps_per_block": args.steps,
        "repeats": args.repeats,
        "device": str(jax.devices()[0]),
        "cpu": machine.cpu(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
      }
    )
  )


if __name__ == "__main__":
  main(sys.argv[1:])
