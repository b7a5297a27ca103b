"""The `genlab` command: train, evaluate, sample and encode generative models.

    genlab train --config experiments/NAME.py --workdir DIR [--config.FIELD=VALUE ...]
    genlab eval --workdir DIR [--config.vae.nll_k=K ...]
    genlab sample --workdir DIR --num 64 --out FILE.png
    genlab encode --workdir DIR --out codes.npz [--split test] [--dataset D]
    genlab list
    genlab config --config experiments/NAME.py [--config.FIELD=VALUE ...]

Exit status: 0 done; 1 a checkpoint could not be written; 2 bad input (a misspelt
field, an unknown dataset, a bad `.npz`, an unwritable workdir, a workdir another
trainer uses, a config that differs from the one a workdir was trained with), one
line `genlab: error: ...`; 3 a NaN/Inf stopped training; 75 pre-empted by
SIGTERM/SIGINT after saving a checkpoint (run the same command again to resume);
69 another process of a multi-process run was lost (rerun them all to resume).

Several processes (multi-host): pass `--coordinator_address HOST:PORT
--num_processes N --process_id I` (or set JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES, JAX_PROCESS_ID), or `--distributed` to let JAX detect them
(SLURM, Open MPI, Kubernetes, Cloud TPU).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

from genlab.errors import CheckpointWriteError, GenlabError, TrainingStopped

EXIT_USER_ERROR = 2

OVERRIDES_HELP = """\
config fields:
  --config.FIELD=VALUE  change any field of the experiment's config, keeping its type
                        (--config.num_steps=3000, --config.model.features='(16,32)',
                        --config.vae.beta=4.0); `genlab config` prints them all, and
                        docs/configs.md describes each
"""
# Each command's exit statuses, in its own --help.
EXIT_STATUS = {
  "done": "0   done",
  "checkpoint": "1   a checkpoint could not be written (disk full, permissions): the earlier ones\n"
  "      are intact; fix the cause and run the same command again",
  "train_input": "2   bad input, or a workdir another genlab process is using: one line\n"
  "      `genlab: error: ...` (nothing was trained)",
  "input": "2   bad input (a workdir, a field, a file): one line `genlab: error: ...`",
  "nonfinite": "3   a NaN or Inf stopped training (the latest checkpoint is the last good step)",
  "preempted": "75  pre-empted by SIGTERM or SIGINT after saving a checkpoint: run the same\n"
  "      command again to resume (a job script can requeue on it)",
  "lost": "69  several processes: another process was lost (killed, its host gone) and this\n"
  "      one could not go on; run every process again to resume from the last checkpoint",
  "eval_write": "1   eval.json could not be written (disk full, permissions): the report is\n"
  "      still printed, and an earlier eval.json is left as it was",
}


def _exit_help(*kinds: str) -> str:
  return "exit status:\n" + "".join(f"  {EXIT_STATUS[k]}\n" for k in kinds)


def _experiments_help() -> str:
  found = _experiments(pathlib.Path("experiments"))
  if not found:
    return "experiments: none in ./experiments (`genlab list` shows what is there)\n"
  names = ", ".join(sorted(found))
  return f"experiments in ./experiments (`genlab list` summarises them):\n  {names}\n"


def _parser() -> argparse.ArgumentParser:
  """The command line: building it imports nothing of JAX or the families, so that `genlab
  --help` and every `genlab COMMAND --help` answer at once."""
  formatter = argparse.RawDescriptionHelpFormatter
  parser = argparse.ArgumentParser(
    prog="genlab",
    description="genlab: train, evaluate, sample and encode generative models (JAX/Flax).",
    epilog="Run `genlab COMMAND --help` for a command's flags and exit statuses.",
    formatter_class=formatter,
  )
  sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
  train = sub.add_parser(
    "train",
    help="train an experiment (resumes from the workdir's checkpoints)",
    description="Trains an experiment in a workdir; a workdir with checkpoints is resumed "
    "(with the same config: `--config.num_steps` may grow).",
    epilog=OVERRIDES_HELP
    + "\n"
    + _experiments_help()
    + "\n"
    + _exit_help("done", "checkpoint", "train_input", "nonfinite", "preempted", "lost"),
    formatter_class=formatter,
  )
  train.add_argument("--config", required=True, help="experiment file defining get_config()")
  train.add_argument("--workdir", required=True, help="where metrics, images and checkpoints go")
  train.add_argument(
    "--fresh",
    action="store_true",
    help="start afresh: move an existing workdir aside (to WORKDIR.N), never delete it",
  )
  train.add_argument(
    "--cpu_devices",
    type=int,
    help="split the CPU into N JAX devices (e.g. one per core), data parallel over the mesh; "
    "the batch size must divide by N",
  )
  group = train.add_argument_group("several processes (jax.distributed)")
  group.add_argument("--coordinator_address", help="HOST:PORT of process 0's coordinator")
  group.add_argument("--num_processes", type=int, help="how many processes take part")
  group.add_argument("--process_id", type=int, help="this process's index, 0..num_processes-1")
  group.add_argument(
    "--distributed", action="store_true", help="let JAX detect the processes (SLURM, MPI, TPU)"
  )
  group.add_argument(
    "--heartbeat_timeout",
    type=int,
    default=30,
    metavar="SECONDS",
    help="a process unheard this long is lost: the others stop with one line, exit status "
    "69 (default 30; JAX's own is 100)",
  )
  evaluate = sub.add_parser(
    "eval",
    help="evaluate a workdir's latest checkpoint on the test split (writes eval.json)",
    description="Evaluates a workdir's newest usable checkpoint on the whole test split, "
    "prints the report and writes it to WORKDIR/eval.json.",
    epilog="config fields: only those that change how, not what, is evaluated: "
    "--config.eval_batch_size, --config.mesh.*, --config.kernels, and the family's own "
    "(--config.vae.nll_k=K for a VAE's importance samples)\n\n"
    + _exit_help("done", "eval_write", "input"),
    formatter_class=formatter,
  )
  evaluate.add_argument("--workdir", required=True, help="a trained genlab workdir")
  sample = sub.add_parser(
    "sample",
    help="draw samples from a workdir's model into a PNG grid",
    description="Draws samples from a generative workdir's newest usable checkpoint (a VAE, "
    "a GAN) and writes them as one PNG grid; the sampling seed is the only randomness.",
    epilog=_exit_help("done", "input"),
    formatter_class=formatter,
  )
  sample.add_argument("--workdir", required=True, help="a trained genlab workdir (VAE, GAN)")
  sample.add_argument("--num", type=int, default=64, help="how many samples (default 64)")
  sample.add_argument("--out", required=True, help="the PNG file to write")
  sample.add_argument("--seed", type=int, default=0, help="seeds the samples' keys (default 0)")
  encode = sub.add_parser(
    "encode",
    help="write the codes of every example of a split to a .npz",
    description="Writes the codes of every example of a split, as the workdir's model "
    "computes them at evaluation: μ and log σ² for a VAE, the code for an autoencoder, z "
    "for a recurrent autoencoder; with the labels when the data has them.",
    epilog=_exit_help("done", "input"),
    formatter_class=formatter,
  )
  encode.add_argument("--workdir", required=True, help="a trained genlab workdir")
  encode.add_argument("--out", required=True, help="the .npz file to write")
  encode.add_argument(
    "--split",
    default="test",
    choices=["train", "test"],
    help="the split of the dataset whose examples are encoded, in order (default test)",
  )
  encode.add_argument(
    "--dataset", help="another dataset of the same shapes (a name or a .npz), e.g. your own"
  )
  export = sub.add_parser(
    "export",
    help="write a workdir's activation SAE in SAELens' format",
    description="Writes the SAE of an activation-SAE workdir's newest usable checkpoint as "
    "OUT/cfg.json and OUT/sae_weights.safetensors, as SAELens' loader reads them "
    "(docs/families/sparse_ae.md, 'SAELens' format').",
    epilog=_exit_help("done", "input"),
    formatter_class=formatter,
  )
  export.add_argument("--workdir", required=True, help="a trained activation_sae workdir")
  export.add_argument("--format", default="saelens", choices=["saelens"], help="(saelens)")
  export.add_argument(
    "--variant", default=None, help="the SAE of a set (sae.variants) to write, by its name"
  )
  export.add_argument("out", help="the folder to write")
  imported = sub.add_parser(
    "import",
    help="make a workdir of an SAE in SAELens' format, to evaluate it on a genlab host",
    description="Makes WORKDIR an activation-SAE run of the experiment (its host, data and "
    "evaluation) whose checkpoint of step 0 holds the SAE in SOURCE (cfg.json and "
    "sae_weights.safetensors); then `genlab eval --workdir WORKDIR` reports its loss "
    "recovered, explained variance and L0 on that host.",
    epilog=OVERRIDES_HELP + "\n" + _exit_help("done", "input"),
    formatter_class=formatter,
  )
  imported.add_argument("source", help="a folder holding cfg.json and sae_weights.safetensors")
  imported.add_argument("--format", default="saelens", choices=["saelens"], help="(saelens)")
  imported.add_argument("--config", required=True, help="an activation_sae experiment file")
  imported.add_argument("--workdir", required=True, help="the new workdir")
  sub.add_parser(
    "list",
    help="list the experiments, families, models and embedded datasets",
    description="Lists ./experiments with their one-line summaries, the families "
    "(config.family), the models by the name a config gives them (config.model.name) and "
    "the embedded datasets (config.dataset).",
    epilog=_exit_help("done"),
    formatter_class=formatter,
  )
  config = sub.add_parser(
    "config",
    help="print an experiment's resolved config as JSON",
    description="Prints an experiment's config as a run would use it, overrides applied "
    "and checked: the shared fields the family reads, its own options, and every field of "
    "its model with its default.",
    epilog=OVERRIDES_HELP + "\n" + _exit_help("done", "input"),
    formatter_class=formatter,
  )
  config.add_argument("--config", required=True, help="experiment file defining get_config()")
  return parser


def _split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
  """Separates `--config.FIELD=VALUE` overrides from the other arguments."""
  overrides = [a for a in argv if a.startswith("--config.")]
  return [a for a in argv if not a.startswith("--config.")], overrides


def run(argv: list[str]) -> int:
  args, overrides = _split_overrides(argv)
  parsed = _parser().parse_args(args)
  if overrides and parsed.command in ("sample", "encode", "list", "export"):
    raise GenlabError(f"`genlab {parsed.command}` takes no --config.FIELD=VALUE overrides")
  _quiet_libraries()
  from genlab import config as config_lib

  if parsed.command == "list":
    print(listing(pathlib.Path("experiments")))
    return 0
  if parsed.command == "config":
    config = config_lib.load_experiment(parsed.config)
    config_lib.apply_overrides(config, overrides)
    config_lib.validate(config)
    print(json.dumps(config_lib.resolved(config), indent=2, ensure_ascii=False))
    return 0
  from genlab.console import log
  from genlab.run import commands

  if parsed.command == "train":
    if parsed.cpu_devices is not None:
      from genlab.run.runner import use_cpu_devices

      use_cpu_devices(parsed.cpu_devices)
    initialize_distributed(parsed)
    config = config_lib.load_experiment(parsed.config)
    for note in config_lib.apply_overrides(config, overrides):
      print(f"genlab: note: {note}", file=sys.stderr)
    result = commands.train_and_evaluate(config, parsed.workdir, fresh=parsed.fresh)
    from genlab.run import distributed

    distributed.leave()  # The others may still be finishing theirs: nobody waits for us now.
    log(f"done: step {result.step}, workdir {result.workdir}")
    return 0
  if parsed.command == "export":
    from genlab.run import interchange

    interchange.export_workdir(
      parsed.workdir, parsed.out, fmt=parsed.format, variant=parsed.variant
    )
    return 0
  if parsed.command == "import":
    from genlab.run import interchange

    config = config_lib.load_experiment(parsed.config)
    config_lib.apply_overrides(config, overrides)
    interchange.import_workdir(parsed.source, config, parsed.workdir, fmt=parsed.format)
    return 0
  if parsed.command == "sample":
    commands.sample_workdir(parsed.workdir, num=parsed.num, out=parsed.out, seed=parsed.seed)
    return 0
  if parsed.command == "encode":
    out = commands.encode_workdir(
      parsed.workdir, out=parsed.out, split=parsed.split, dataset=parsed.dataset
    )
    log(f"codes written to {out}")
    return 0
  report = commands.evaluate_workdir(parsed.workdir, overrides)
  print(json.dumps(report, indent=2, ensure_ascii=False))
  return 0


def _experiments(folder: pathlib.Path) -> dict[str, str]:
  """`name -> first line of its docstring` for the experiment files in `folder`."""
  import ast

  found = {}
  for path in sorted(folder.glob("*.py")) if folder.is_dir() else []:
    try:
      doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    except (SyntaxError, UnicodeDecodeError):
      doc = ""
    found[path.stem] = doc.strip().splitlines()[0] if doc.strip() else ""
  return found


def listing(folder: pathlib.Path) -> str:
  """What `genlab list` prints: experiments, families, models and embedded datasets, each by
  the name a config gives it, with the first sentence of its docstring. Imports the families
  and models (not the run layer)."""
  from genlab import families, models
  from genlab.data import EMBEDDED_BUILDERS
  from genlab.registry import first_sentence

  experiments = _experiments(folder)
  lines = [f"experiments ({folder}/NAME.py; genlab train --config {folder}/NAME.py ...):"]
  lines += [f"  {name:24s} {doc}" for name, doc in experiments.items()] or ["  (none here)"]
  lines += ["", "families (config.family; or 'package.module:Class' of your own):"]
  takes: dict[str, list[str]] = {}
  for name in families.REGISTRY.names():
    family = families.REGISTRY.get(name)
    group = f" [options: config.{family.options_group}]" if family.options_group else ""
    lines.append(f"  {name:24s} {first_sentence(family)}{group}")
    for model in family.models:
      takes.setdefault(model, []).append(name)
  takes.setdefault("generator", []).append("gan")
  takes.setdefault("discriminator", []).append("gan")
  lines += ["", "models (config.model.name; or 'package.module:Class' of your own):"]
  for name in models.REGISTRY.names():
    used = f" [{', '.join(takes[name])}]" if name in takes else ""
    lines.append(f"  {name:24s} {first_sentence(models.REGISTRY.get(name))}{used}")
  lines += ["", "embedded datasets (config.dataset; built offline, nothing downloaded):"]
  lines += [f"  {n:24s} {first_sentence(b)}" for n, b in sorted(EMBEDDED_BUILDERS.items())]
  return "\n".join(lines)


def initialize_distributed(parsed: argparse.Namespace) -> bool:
  """Starts `jax.distributed` when flags, environment or `--distributed` ask for it.

  Flags win over JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID;
  what is still unset JAX auto-detects from the cluster environment.

  Returns:
    Whether it was initialised.
  """
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
  from genlab.run import distributed

  try:
    distributed.initialize(
      address,
      num,
      pid,
      heartbeat_timeout=getattr(parsed, "heartbeat_timeout", distributed.HEARTBEAT_TIMEOUT_SECONDS),
      workdir=getattr(parsed, "workdir", None),
    )
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
    if getattr(e, "report", None) is not None:  # Computed, not saved: it is not lost.
      print(json.dumps(e.report, indent=2, ensure_ascii=False))
    print(f"genlab: stopped: {e}", file=sys.stderr)
    if isinstance(e, CheckpointWriteError):
      # Orbax's threads of the failed save wait minutes on barriers for a write that will
      # never come; the checkpoints before it are complete, so leave without them.
      sys.stdout.flush()
      sys.stderr.flush()
      os._exit(e.exit_code)
    sys.exit(e.exit_code)
  except Exception as e:
    if "genlab.run.distributed" in sys.modules:  # A run of several processes may be on.
      sys.modules["genlab.run.distributed"].after_error(e)
    raise


if __name__ == "__main__":
  main()
