"""The `genlab` command.

    genlab train --config experiments/NAME.py --workdir DIR [--config.FIELD=VALUE ...]
    genlab eval --workdir DIR

Mistakes in the input (a misspelt field, an unknown dataset, a bad `.npz`, an
unwritable workdir) end with one line `genlab: error: ...` and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys

from genlab.errors import GenlabError

EXIT_USER_ERROR = 2


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="genlab", description=__doc__.split("\n\n")[0])
  sub = parser.add_subparsers(dest="command", required=True)
  train = sub.add_parser(
    "train", help="train an experiment (resumes from the workdir's checkpoints)"
  )
  train.add_argument("--config", required=True, help="experiment file defining get_config()")
  train.add_argument("--workdir", required=True, help="where metrics, images and checkpoints go")
  evaluate = sub.add_parser("eval", help="evaluate a workdir's latest checkpoint on the test split")
  evaluate.add_argument("--workdir", required=True)
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
  from genlab.train import loop

  if parsed.command == "train":
    config = config_lib.load_experiment(parsed.config)
    config_lib.apply_overrides(config, overrides)
    result = loop.train_and_evaluate(config, parsed.workdir)
    loop.log(f"done: step {result.step}, workdir {result.workdir}")
    return 0
  if overrides:
    raise GenlabError("genlab eval takes no --config. overrides; it uses the workdir's config.json")
  report = loop.evaluate_workdir(parsed.workdir)
  print(json.dumps(report, indent=2))
  return 0


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


if __name__ == "__main__":
  main()
