"""Fingerprints of what each shipped experiment computes, to show a change leaves it alone.

    python scripts/program_fingerprints.py > after.jsonl
    PYTHONPATH=/tmp/before python /tmp/before/scripts/program_fingerprints.py > before.jsonl
    # or this script against another checkout:
    python scripts/program_fingerprints.py --checkout /tmp/before > before.jsonl

For every experiment in experiments/ that builds offline without another run's resources
(not the activation SAE, whose host is a trained workdir; not the TFDS `*_mnist` ones,
which need a prepared dataset), on one device: a SHA-256 of its first state's values, and
of the StableHLO its family's train step and eval step lower to (on a batch of the run's
shape, without source locations). Equal fingerprints before and after a change mean the
same initial values and the same programs: the same training and the same eval metrics.
Prints one JSON line per experiment.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
SKIP = ("sae_pydoc_residual",)  # Its host is another run's workdir.


def fingerprints(experiments: pathlib.Path, data_dir: str) -> None:
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import jax
  import numpy as np

  from genlab import config as config_lib
  from genlab.data import eval_batches
  from genlab.run import setup

  for path in sorted(experiments.glob("*.py")):
    if path.stem in SKIP or path.stem.endswith("_mnist"):
      continue
    config = config_lib.load_experiment(path)
    config.data.data_dir = data_dir
    config.mesh.devices = 1
    s = setup(config)
    state = jax.device_get(s.initial_state)
    values = hashlib.sha256()
    for leaf in jax.tree.leaves(state):
      values.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    batch = next(
      eval_batches(
        s.dataset.train, global_batch_size=config.batch_size, value_range=s.family.value_range
      )
    )
    batch = {k: v for k, v in batch.items() if k != "mask"}
    batch["index"] = np.arange(config.batch_size, dtype=np.int32)
    key = jax.random.key(0)
    train = jax.jit(s.family.train_step).lower(state, batch, key).as_text()
    eval_batch = next(
      eval_batches(
        s.dataset.test, global_batch_size=config.batch_size, value_range=s.family.value_range
      )
    )
    evaluation = jax.jit(s.family.eval_step).lower(state, eval_batch).as_text()
    print(
      json.dumps(
        {
          "experiment": path.stem,
          "initial_state": values.hexdigest()[:16],
          "train_step": hashlib.sha256(train.encode()).hexdigest()[:16],
          "eval_step": hashlib.sha256(evaluation.encode()).hexdigest()[:16],
        }
      ),
      flush=True,
    )


def main(argv) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--checkout", help="another genlab tree: its genlab and its experiments")
  parser.add_argument("--data_dir", help="the TFDS data dir (default: a temporary one)")
  args = parser.parse_args(argv)
  data_dir = args.data_dir or tempfile.mkdtemp(prefix="genlab-fingerprints-")
  if args.checkout is None:
    return fingerprints(HERE.parent / "experiments", data_dir)
  # This script, with the other tree's genlab first on the path.
  env = dict(os.environ, PYTHONPATH=args.checkout)
  code = (
    f"import sys, pathlib; sys.path.insert(0, {str(HERE)!r}); import program_fingerprints as p; "
    f"p.fingerprints(pathlib.Path({args.checkout!r}) / 'experiments', {data_dir!r})"
  )
  raise SystemExit(subprocess.run([sys.executable, "-c", code], env=env).returncode)


if __name__ == "__main__":
  main(sys.argv[1:])
