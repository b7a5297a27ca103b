"""Times `genlab eval` of FID, KID and IS over N samples on this machine, end to end.

    python scripts/time_fid.py [--n 10000] [--weights FILE] [--workdir DIR]

What is timed is what a user runs: `genlab eval` of `experiments/dcgan_cifar10.py` (its
protocol: `legacy_pytorch` resize, real images from the test split) with only the
`inception` evaluator, `inception_n_fake = inception_n_real = N`, on a fresh feature cache,
so that the real images' features are computed too (then cached, as on a user's first
evaluation). The script reports the whole command's time and, within it, the real images'
features (`InceptionEvaluator.real_features`) and the rest of the evaluator's `evaluate`:
the samples' resize and features, FID's `sqrtm`, KID's subsets and IS (drawing the samples
from the generator is in the whole command's time only).

Nothing is downloaded: TFDS' `mock_data` stands for the prepared `cifar10` (N random images
per split), the generator is the experiment's after one training step, and the Inception's
weights are random ones in the published file's layout (written with torch) unless
`--weights` names pytorch-fid's file: the time does not depend on the values. Prints one
JSON line with the CPU (`machine.cpu()`), the mean number of cores other processes used
meanwhile (/proc/stat's busy time less this process's: above a tenth of the cores, the
figure is marked `busy` and is no speed claim), and the metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import machine  # noqa: E402


def random_weights(path: pathlib.Path) -> pathlib.Path:
  """pytorch-fid's FID Inception at torch's random init, saved as the published file is (the
  tests' way to import pytorch-fid with torch's CPU build: `conftest.import_torch_references`)."""
  sys.path.insert(0, str(REPO / "tests"))
  from conftest import import_torch_references

  torch, pytorch_fid, _ = import_torch_references()
  torch.manual_seed(0)
  net = pytorch_fid.inception._inception_v3(num_classes=1008, aux_logits=False, weights=None)
  torch.save(net.state_dict(), path)
  return path


def machine_busy_seconds() -> float:
  """CPU-seconds every process on the machine has spent busy since boot (/proc/stat)."""
  fields = [int(v) for v in pathlib.Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
  idle = fields[3] + fields[4]  # idle, iowait
  return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def own_seconds() -> float:
  """CPU-seconds this process (and its threads) has spent."""
  t = os.times()
  return t.user + t.system


class Timer:
  """Wall-clock seconds spent in a method, summed over its calls."""

  def __init__(self, cls, name):
    self.seconds, original = 0.0, getattr(cls, name)
    timer = self

    def timed(*args, **kwargs):
      start = time.perf_counter()
      try:
        return original(*args, **kwargs)
      finally:
        timer.seconds += time.perf_counter() - start

    setattr(cls, name, timed)


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--n", type=int, default=10_000, help="samples and real images")
  parser.add_argument("--weights", default="", help="a pytorch-fid .pth (default: random)")
  parser.add_argument("--workdir", default="", help="default: a temporary directory")
  args = parser.parse_args(argv)

  root = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="genlab-time-fid-"))
  root.mkdir(parents=True, exist_ok=True)
  os.environ["GENLAB_CACHE_DIR"] = str(root / "cache")  # Fresh: the reference is computed.
  import tensorflow_datasets as tfds

  from genlab import cli
  from genlab.evaluators.inception import InceptionEvaluator

  weights = pathlib.Path(args.weights) if args.weights else random_weights(root / "random.pth")
  workdir = root / "dcgan_cifar10"
  metrics = "--config.sample_metrics"
  kid = f"{metrics}.kid_subset_size={min(1000, args.n)}"  # The experiment's 1,000, or all.
  train = [
    "train",
    "--config",
    str(REPO / "experiments" / "dcgan_cifar10.py"),
    "--workdir",
    str(workdir),
    "--config.num_steps=1",
    "--config.eval_every=1",
    "--config.checkpoint_every=1",
    "--config.num_images=0",
    f"{metrics}.evaluators=inception",
    kid,
  ]
  evaluate = [
    "eval",
    "--workdir",
    str(workdir),
    f"{metrics}.inception_weights={weights}",
    f"{metrics}.inception_n_fake={args.n}",
    f"{metrics}.inception_n_real={args.n}",
    kid,
  ]
  real = Timer(InceptionEvaluator, "real_features")
  samples = Timer(InceptionEvaluator, "evaluate")
  with tfds.testing.mock_data(num_examples=args.n):
    assert cli.run(train) == 0
    busy_before, own_before = machine_busy_seconds(), own_seconds()
    start = time.perf_counter()
    assert cli.run(evaluate) == 0
    seconds = time.perf_counter() - start
    others = (machine_busy_seconds() - busy_before) - (own_seconds() - own_before)
  report = json.loads((workdir / "eval.json").read_text())
  cores = os.cpu_count() or 1
  others_cores = max(others, 0.0) / seconds  # Other processes' mean use, in cores.
  busy = others_cores > 0.1 * cores
  protocol = report["protocol"]
  print(
    json.dumps(
      {
        "benchmark": f"genlab eval of dcgan_cifar10: FID, KID and IS over {args.n} samples "
        f"and {args.n} real images (mock cifar10 test split), reference features not cached",
        "cpu": machine.cpu(),
        "eval_s": round(seconds, 1),
        # `evaluate` computes the real features (once, then cached) before the samples'.
        "real_features_s": round(real.seconds, 1),
        "samples_features_and_metrics_s": round(samples.seconds - real.seconds, 1),
        "metrics": {k: report["metrics"][k] for k in ("fid", "kid", "is")}
        if args.weights
        else "not shown: with random weights they measure nothing",
        "protocol": {
          k: protocol[k]
          for k in ("inception_n_fake", "inception_n_real", "inception_resize", "fid_sqrtm")
          if k in protocol
        },
        "weights": "published" if args.weights else "random (the published file's layout)",
        "other_processes_cores": round(others_cores, 3),
        "cores": cores,
        "busy": busy
        and f"other processes used {others_cores:.2f} of the {cores} cores on average while "
        "this ran, so this figure is no speed claim",
      },
      ensure_ascii=False,
    )
  )
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
