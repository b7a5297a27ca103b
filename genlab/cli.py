"""The `genlab` command.

    genlab train --config experiments/NAME.py --workdir DIR [--config.FIELD=VALUE ...]
                 [--cpu_devices N]
    genlab eval --workdir DIR [--config.vae.nll_k=K ...]
    genlab sample --workdir DIR --num 64 --out FILE.png

Exit status: 0 done; 2 bad input (a misspelt field, an unknown dataset, a bad
`.npz`, an unwritable workdir, a config that differs from the one a workdir was
trained with), one line `genlab: error: ...`; 3 a NaN/Inf stopped training; 75
pre-empted by SIGTERM/SIGINT after saving a checkpoint (run the same command
again to resume).

Several processes (multi-host): pass `--coordinator_address HOST:PORT
--num_processes N --process_id I` (or set JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES, JAX_PROCESS_ID), or `--distributed` to let JAX detect them
(SLURM, Open MPI, Kubernetes, Cloud TPU).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from genlab.errors import GenlabError, TrainingStopped

EXIT_USER_ERROR = 2


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="genlab", description=__doc__.split("\n\n")[0])
  sub = parser.add_subparsers(dest="command", required=True)
  train = sub.add_parser(
    "train", help="train an experiment (resumes from the workdir's checkpoints)"
  )
  train.add_argument("--config", required=True, help="experiment file defining get_config()")
  train.add_argument("--workdir", required=True, help="where metrics, images and checkpoints go")
  train.add_argument(
    "--cpu_devices",
    type=int,
    help="split the CPU into N JAX devices (e.g. one per core), data parallel over the mesh; "
    "the batch size must divide by N (genlab.run.runner.use_cpu_devices)",
  )
  group = train.add_argument_group("several processes (jax.distributed)")
  group.add_argument("--coordinator_address", help="HOST:PORT of process 0's coordinator")
  group.add_argument("--num_processes", type=int, help="how many processes take part")
  group.add_argument("--process_id", type=int, help="this process's index, 0..num_processes-1")
  group.add_argument(
    "--distributed", action="store_true", help="let JAX detect the processes (SLURM, MPI, TPU)"
  )
  evaluate = sub.add_parser("eval", help="evaluate a workdir's latest checkpoint on the test split")
  evaluate.add_argument("--workdir", required=True)
  sample = sub.add_parser("sample", help="draw samples from a workdir's model into a PNG grid")
  sample.add_argument("--workdir", required=True)
  sample.add_argument("--num", type=int, default=64, help="how many samples")
  sample.add_argument("--out", required=True, help="the PNG file to write")
  sample.add_argument("--seed", type=int, default=0, help="seeds the samples' keys")
  return parser


def _split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
  """Separates `--config.FIELD=VALUE` overrides from the other arguments."""
  overrides = [a for a in argv if a.startswith("--config.")]
  return [a for a in argv if not a.startswith("--config.")], overrides


def run(argv: list[str]) -> int:
  args, overrides = _split_overrides(argv)
  parsed = _parser().parse_args(args)
  _quiet_libraries()
  from genlab import config as config_lib
  from genlab.run import commands
  from genlab.run.setup import log

  if parsed.command == "train":
    if parsed.cpu_devices is not None:
      from genlab.run.runner import use_cpu_devices

      use_cpu_devices(parsed.cpu_devices)
    initialize_distributed(parsed)
    config = config_lib.load_experiment(parsed.config)
    config_lib.apply_overrides(config, overrides)
    result = commands.train_and_evaluate(config, parsed.workdir)
    log(f"done: step {result.step}, workdir {result.workdir}")
    return 0
  if parsed.command == "sample":
    commands.sample_workdir(parsed.workdir, num=parsed.num, out=parsed.out, seed=parsed.seed)
    return 0
  report = commands.evaluate_workdir(parsed.workdir, overrides)
  print(json.dumps(report, indent=2, ensure_ascii=False))
  return 0


def initialize_distributed(parsed: argparse.Namespace) -> bool:
  """Starts `jax.distributed` when flags, environment or `--distributed` ask for it.

  Flags win over JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID;
  what is still unset JAX auto-detects from the cluster environment.

  Returns:
    Whether it was initialised.
  """
  import jax

  address = parsed.coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
  num = parsed.num_processes
  pid = parsed.process_id
  try:
    num = num if num is not None else _int_env("JAX_NUM_PROCESSES")
    pid = pid if pid is not None else _int_env("JAX_PROCESS_ID")
  except ValueError as e:
    raise GenlabError(str(e)) from None
  if not (parsed.distributed or address or num is not None or pid is not None):
    return False
  try:
    jax.distributed.initialize(coordinator_address=address, num_processes=num, process_id=pid)
  except (ValueError, TypeError) as e:
    raise GenlabError(f"cannot start jax.distributed: {e}") from None
  return True


def _int_env(name: str) -> int | None:
  value = os.environ.get(name)
  if value is None or value == "":
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f"{name}={value!r} is not an integer") from None


def _quiet_libraries() -> None:
  """Keeps library chatter (orbax's and TFDS' info logs) out of the user's terminal."""
  import logging

  from absl import logging as absl_logging

  absl_logging.set_verbosity(absl_logging.ERROR)
  logging.getLogger("absl").setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> None:
  try:
    sys.exit(run(sys.argv[1:] if argv is None else argv))
  except GenlabError as e:
    print(f"genlab: error: {e}", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)
  except TrainingStopped as e:
    print(f"genlab: stopped: {e}", file=sys.stderr)
    sys.exit(e.exit_code)


if __name__ == "__main__":
  main()
