"""Train-step speed of two genlab checkouts, interleaved: does a change keep every model's speed?

    git worktree add /tmp/before <commit>
    python scripts/compare_checkouts.py --before /tmp/before --rounds 3 --dtypes float32,bfloat16

For each reference model, dtype and round, runs each checkout's own
`scripts/benchmark.py` in a process of its own (its genlab first on the path),
`--before` then this checkout, so both see the same machine state; prints every
JSON line they print, then one summary line per model and dtype: the median
examples/s of each over the rounds and their ratio (after / before). Both run with
their benchmark's defaults otherwise (one device, device-resident data, 10 steps per
dispatch). Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import machine  # scripts/machine.py: the CPU and its vector extensions

HERE = Path(__file__).resolve().parent
# Timed steps per block, so each block takes a second or more at this machine's speed.
STEPS = {"mlp_vae": 200, "conv_ae": 100, "dcgan": 30, "lstm_ae": 40, "sparse_ae": 200}


def run(checkout: Path, arguments: list[str]) -> dict:
  env = {**os.environ, "PYTHONPATH": str(checkout)}
  command = [sys.executable, str(checkout / "scripts" / "benchmark.py"), *arguments]
  out = subprocess.run(command, capture_output=True, text=True, check=True, env=env).stdout
  return json.loads([line for line in out.splitlines() if line.startswith("{")][-1])


def main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--before", required=True, help="the other checkout (a git worktree)")
  parser.add_argument("--models", default=",".join(STEPS))
  parser.add_argument("--dtypes", default="float32")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args(argv)
  checkouts = {"before": Path(args.before).resolve(), "after": HERE.parent}
  for dtype in args.dtypes.split(","):
    for model in args.models.split(","):
      arguments = ["--model", model, "--steps", str(STEPS[model]), "--repeats", str(args.repeats)]
      arguments += ["--dtype", dtype]
      rates = {name: [] for name in checkouts}
      for _ in range(args.rounds):
        for name, checkout in checkouts.items():
          row = run(checkout, arguments)
          print(json.dumps({"checkout": name, **row}), flush=True)
          rates[name].append(row["examples_per_s"])
      medians = {name: statistics.median(v) for name, v in rates.items()}
      print(
        json.dumps(
          {
            "summary": model,
            "dtype": dtype,
            "before_examples_per_s": medians["before"],
            "after_examples_per_s": medians["after"],
            "ratio": round(medians["after"] / medians["before"], 3),
            "rounds": args.rounds,
            "repeats": args.repeats,
            "steps": STEPS[model],
            **machine.cpu(),
          }
        ),
        flush=True,
      )


if __name__ == "__main__":
  main(sys.argv[1:])
