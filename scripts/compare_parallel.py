"""Trains one config on 1 device and on N (fake CPU) devices, and compares the losses.

    python scripts/compare_parallel.py --devices 4 --steps 20 \
        --config experiments/conv_ae_digits.py [--config.FIELD=VALUE ...]

Runs the same global batches for `--steps` steps on a one-device mesh (`one`),
then on an N-device mesh for each of `--modes`:
  `data` — data parallel: batches split over the N devices, the state replicated;
  `fsdp` — fully sharded: batches split too, and every state array of at least
           `--fsdp_min_size` elements split over the N devices as well.
It logs the training objective at every step (`loss`, or a GAN's `d_loss` and
`g_loss`, or each `name/loss` of a set of SAEs) and prints one JSON line per mode: the
per-step objectives, their largest relative difference from the one-device run's and the
largest absolute differences of the final parameters and untrained state (`stats`), and
the metrics of the evaluation each run ends with (`test`: the whole test split, and the
family's sample metrics), for the caller to compare. The runs draw no images
(`num_images=0`) unless an override asks. On a machine without accelerators the devices
are faked with XLA_FLAGS=--xla_force_host_platform_device_count=N, set here before JAX starts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

MODES = {
  "one": {"mesh.devices": 1, "mesh.fsdp": 1},
  "data": {"mesh.devices": 0, "mesh.fsdp": 1},
  "fsdp": {"mesh.devices": 0, "mesh.fsdp": -1},
}


def main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--devices", type=int, default=4)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--config", default="experiments/conv_ae_digits.py")
  parser.add_argument("--modes", default="data,fsdp")
  parser.add_argument(
    "--fsdp_min_size", type=int, default=256, help="in fsdp mode: arrays this large are split"
  )
  args, overrides = parser.parse_known_args(argv)
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), f"--xla_force_host_platform_device_count={args.devices}"]
  )

  import jax
  import numpy as np

  from genlab import config as config_lib
  from genlab.run import train_and_evaluate
  from genlab.run.writers import dumps  # json.dumps with NaN and ±Inf as null: valid JSON.

  def run(mode: str, workdir: str):
    config = config_lib.load_experiment(args.config)
    # No images unless asked for: they are not compared, and drawing them compiles the
    # views' programs (a fifth of vae_digits' 10-step comparison, cold).
    config.num_images = 0
    config_lib.apply_overrides(config, overrides)
    for dotted, value in MODES[mode].items():
      group, field = dotted.split(".")
      config[group][field] = value
    config.mesh.fsdp_min_size = args.fsdp_min_size
    # One log line per dispatch: per step unless steps_per_dispatch > 1 (then K-step means).
    config.update(num_steps=args.steps, log_every=config.steps_per_dispatch)
    config.update(eval_every=args.steps, image_every=args.steps, checkpoint_every=args.steps)
    result = train_and_evaluate(config, workdir)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      lines = [json.loads(line) for line in f]
    # The training objective(s): `loss`, or a GAN's `d_loss` and `g_loss`.
    train = [line for line in lines if any(k.startswith("train/") for k in line)]
    names = [k for k in ("train/loss", "train/d_loss", "train/g_loss") if k in train[0]]
    # A set of SAEs (sae.variants): each one's `name/loss`.
    names += sorted(
      k for k in train[0] if k.startswith("train/") and k.count("/") == 2 and k.endswith("/loss")
    )
    losses = [[line[k] for k in names] for line in train]
    return np.array(losses), result.state.params, result.state.stats, train, result.test_metrics

  with tempfile.TemporaryDirectory() as tmp:
    reference, reference_params, reference_stats, logs, reference_test = run(
      "one", os.path.join(tmp, "one")
    )
    # The 1-device run's train log lines too, to check what the steps did (e.g. resampled).
    print(
      dumps(
        {
          "mode": "one",
          "devices": 1,
          "losses": reference.tolist(),
          "logs": logs,
          "test": reference_test,
        }
      )
    )
    for mode in args.modes.split(","):
      losses, params, stats, _, test = run(mode, os.path.join(tmp, mode))
      rel = np.abs(losses - reference) / np.abs(reference)
      param_diff = max_abs_diff(params, reference_params)
      # Untrained state (an EMA codebook, counters) must agree as well.
      stats_diff = max_abs_diff(stats, reference_stats)
      print(
        dumps(
          {
            "mode": mode,
            "devices": jax.device_count(),
            "steps": args.steps,
            "losses": losses.tolist(),
            "max_rel_loss_diff_vs_1_device": float(rel.max()),
            "max_abs_param_diff_vs_1_device": param_diff,
            "max_abs_stats_diff_vs_1_device": stats_diff,
            "test": test,
          }
        )
      )


def max_abs_diff(tree, reference) -> float:
  """The largest absolute difference between two trees' arrays (0.0 for empty trees)."""
  import jax
  import numpy as np

  pairs = zip(jax.tree.leaves(tree), jax.tree.leaves(reference), strict=True)
  return max((float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in pairs), default=0.0)


if __name__ == "__main__":
  main(sys.argv[1:])
