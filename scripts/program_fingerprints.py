"""Fingerprints of what each shipped experiment computes, to show a change leaves it alone.

    python scripts/program_fingerprints.py > after.jsonl
    PYTHONPATH=/tmp/before python /tmp/before/scripts/program_fingerprints.py > before.jsonl
    # or this script against another checkout:
    python scripts/program_fingerprints.py --checkout /tmp/before > before.jsonl

For every experiment in experiments/ that builds offline (not the TFDS `*_mnist` and
`*_cifar10` ones, which need a prepared dataset; the activation SAE with each of its codes,
on a host made by `random_lm_host`, char_lm_pydoc's model at its initial parameters, instead
of a trained workdir; the transcoder on its MLP's input, `random_lm_mlp_host`), on one
device: a SHA-256 of its first state's values, and of the StableHLO its family's train step
and eval step lower to (on a batch of the run's shape, without source locations), and of the
values they compute: the state and metrics after 3 train steps on that batch, and the eval
step's sums on the first test batch after them.
Equal programs mean the same training and the same eval metrics; equal values with unequal
programs, a change that only reordered independent operations (a check on this machine's
XLA:CPU).
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
# The activation SAE's variants: each code (with AuxK, resampling where it applies).
SAE_VARIANTS = {
  "batchtopk": {},
  "topk": {"model.code": "topk"},
  "jumprelu": {"model.code": "jumprelu", "sae.aux_k": 0, "sae.resample_every": 100},
  "relu": {"model.code": "relu", "sae.aux_k": 0},
}


def random_lm_host():
  """char_lm_pydoc's language model at its initial parameters, as the host of an SAE reading
  `block_1` (a `sae.host_factory`)."""
  import jax

  from genlab import config as config_lib
  from genlab.run import setup

  config = config_lib.load_experiment(HERE.parent / "experiments" / "char_lm_pydoc.py")
  config.data.data_dir = os.environ["GENLAB_FINGERPRINT_DATA"]
  config.mesh.devices = 1
  s = setup(config)
  params = jax.device_get(s.initial_state).params["model"]
  return s.family.host_model(params, "block_1", skip_first=1, description="random LM")


def random_lm_mlp_host():
  """`random_lm_host` reading the input of block 1's MLP, a transcoder's (its output layer
  comes from the experiment's `sae.output_layer`)."""
  import dataclasses

  return dataclasses.replace(random_lm_host(), layer="block_1/mlp_in:input")


STEPS = 3  # Train steps whose results are fingerprinted too.


def _digest(tree) -> str:
  import jax
  import numpy as np

  values = hashlib.sha256()
  for leaf in jax.tree.leaves(tree):
    values.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
  return values.hexdigest()[:16]


def fingerprints(experiments: pathlib.Path, data_dir: str) -> None:
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import jax
  import numpy as np

  from genlab import config as config_lib
  from genlab.data import eval_batches
  from genlab.run import resources, setup

  os.environ["GENLAB_FINGERPRINT_DATA"] = data_dir
  import genlab

  expected = pathlib.Path(os.environ.get("GENLAB_FINGERPRINT_CHECKOUT", HERE.parent)).resolve()
  if pathlib.Path(genlab.__file__).resolve().parent.parent != expected:
    raise SystemExit(f"fingerprinting {expected}, and `import genlab` gives {genlab.__file__}")
  runs = []
  for path in sorted(experiments.glob("*.py")):
    if path.stem.endswith(("_mnist", "_cifar10")):
      continue
    if path.stem == "transcoder_pydoc_mlp":
      factory = {"sae.host_workdir": "", "sae.host_factory": f"{__name__}:random_lm_mlp_host"}
      runs.append((path.stem, path, factory))
      continue
    if path.stem != "sae_pydoc_residual":
      runs.append((path.stem, path, {}))
      continue
    host = {"sae.host_workdir": "", "sae.host_factory": f"{__name__}:random_lm_host"}
    for code, overrides in SAE_VARIANTS.items():
      runs.append((f"{path.stem}[{code}]", path, {**host, **overrides}))
  for name, path, overrides in runs:
    config = config_lib.load_experiment(path)
    config.data.data_dir = data_dir
    config.mesh.devices = 1
    for dotted, value in overrides.items():
      group, field = dotted.split(".")
      config[group][field] = value
    s = setup(config, provide=resources.provide)
    state = jax.device_get(s.initial_state)
    initial = _digest(state)
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
    # And what the programs compute: the state and metrics after STEPS train steps on the
    # first batch, and the eval step's sums on the first test batch (equal values where a
    # change only reorders independent operations of the traced program).
    step = jax.jit(s.family.train_step)
    for i in range(STEPS):
      state, metrics = step(state, batch, jax.random.key(i))
      state = state.replace(step=state.step + 1)  # As the runner counts them.
    trained = _digest(jax.device_get((state, metrics)))
    sums = _digest(jax.device_get(jax.jit(s.family.eval_step)(state, eval_batch)))
    print(
      json.dumps(
        {
          "experiment": name,
          "initial_state": initial,
          "train_step": hashlib.sha256(train.encode()).hexdigest()[:16],
          "eval_step": hashlib.sha256(evaluation.encode()).hexdigest()[:16],
          f"after_{STEPS}_steps": trained,
          "eval_sums": sums,
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
  # Run from inside that tree: `python -c` puts the working directory first on the path.
  env = dict(os.environ, PYTHONPATH=args.checkout, GENLAB_FINGERPRINT_CHECKOUT=args.checkout)
  code = (
    f"import sys, pathlib; sys.path.insert(0, {str(HERE)!r}); import program_fingerprints as p; "
    f"p.fingerprints(pathlib.Path({args.checkout!r}) / 'experiments', {data_dir!r})"
  )
  run = subprocess.run([sys.executable, "-c", code], env=env, cwd=args.checkout)
  raise SystemExit(run.returncode)


if __name__ == "__main__":
  main(sys.argv[1:])
