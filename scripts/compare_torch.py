"""genlab vs plain PyTorch implementations of the same models, eager and compiled, interleaved.

    python scripts/compare_torch.py --torch_python /work/venv-torch/bin/python --rounds 2
    python scripts/compare_torch.py --torch_python python3 --torch_device cuda --steps_scale 10

For each reference model and each round, runs `scripts/benchmark.py` (genlab),
then `scripts/benchmark_torch.py` eager and `scripts/benchmark_torch.py --compile`
(`torch.compile`, inductor, of each step's forward pass and loss; the optimizer
step eager) in the interpreter given by `--torch_python` (PyTorch is not a genlab
dependency, see that script's docstring), each a separate process, so all see the
same machine state; prints every JSON line they print, then one summary line per
model: the median examples/s of each over the rounds and genlab's ratio to each
(genlab / PyTorch). `--torch_modes eager` or `compile` runs one of the two. Run it
on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import machine  # scripts/machine.py: the CPU and its vector extensions

HERE = Path(__file__).resolve().parent
# Timed steps per block, so each block takes a few seconds at this machine's speed.
STEPS = {"mlp_vae": 200, "conv_ae": 100, "dcgan": 30, "lstm_ae": 40, "sparse_ae": 200}


def run(command: list[str]) -> dict:
  out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
  return json.loads([line for line in out.splitlines() if line.startswith("{")][-1])


def main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--torch_python", required=True, help="a Python with torch installed")
  parser.add_argument("--models", default=",".join(STEPS))
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--steps_per_dispatch", type=int, default=10)
  parser.add_argument("--torch_device", default="cpu", help="cpu | cuda (with genlab on a GPU)")
  parser.add_argument("--steps_scale", type=int, default=1, help="× the timed steps (GPUs: 10)")
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  parser.add_argument("--torch_dtype", default=None, help="default: --dtype (bfloat16: autocast)")
  parser.add_argument("--cpu_devices", type=int, default=1, help="genlab's (benchmark.py's)")
  parser.add_argument("--torch_modes", default="eager,compile", help="eager, compile or both")
  args = parser.parse_args(argv)
  torch_dtype = args.torch_dtype or args.dtype
  modes = args.torch_modes.split(",")
  if not modes or set(modes) - {"eager", "compile"}:
    parser.error(f"--torch_modes {args.torch_modes!r}: eager, compile or eager,compile")
  for model in args.models.split(","):
    steps = STEPS[model] * args.steps_scale
    common = ["--model", model, "--steps", str(steps), "--repeats", str(args.repeats)]
    rates = {"genlab": [], **{f"pytorch_{mode}": [] for mode in modes}}
    for _ in range(args.rounds):
      rows = [
        run(
          [sys.executable, str(HERE / "benchmark.py"), *common]
          + ["--steps_per_dispatch", str(args.steps_per_dispatch), "--dtype", args.dtype]
          + ["--cpu_devices", str(args.cpu_devices)]
        )
      ]
      for mode in modes:
        rows.append(
          run(
            [args.torch_python, str(HERE / "benchmark_torch.py"), *common]
            + ["--device", args.torch_device, "--dtype", torch_dtype]
            + (["--compile"] if mode == "compile" else [])
          )
        )
      for row in rows:
        print(json.dumps(row), flush=True)
        name = row.get("framework", "genlab")
        if name == "pytorch":
          name += "_compile" if row["compiled"] else "_eager"
        rates[name].append(row["examples_per_s"])
    summary = {k: statistics.median(v) for k, v in rates.items()}
    print(
      json.dumps(
        {
          "summary": model,
          **{f"{k}_examples_per_s": v for k, v in summary.items()},
          **{
            f"ratio_to_{k}": round(summary["genlab"] / v, 2)
            for k, v in summary.items()
            if k != "genlab"
          },
          "genlab_dtype": args.dtype,
          "genlab_cpu_devices": args.cpu_devices,
          "pytorch_dtype": torch_dtype,
          "rounds": args.rounds,
          **machine.cpu(),
        }
      ),
      flush=True,
    )


if __name__ == "__main__":
  main(sys.argv[1:])
