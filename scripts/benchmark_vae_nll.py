"""Times `genlab eval` of a 784-500-20 VAE: the importance-sampled NLL, k = 5,000, 1,000 images.

    python scripts/benchmark_vae_nll.py [--k 5000] [--num_test 1000] [--train_steps 200]

Builds 28×28 digits offline (scikit-learn's 8×8 digits, bilinearly enlarged),
trains experiments/vae_mnist.py on them for a few steps (the timing does not
depend on how trained the model is), then runs the whole `genlab eval`
(start-up, restore, ELBO pass, NLL pass) and prints one JSON line with the
wall time, the protocol, the NLL pass's FLOP count (its decoder products: k
samples × images × 2·Σ in·out over the decoder's Dense layers; the encoder, the
ELBO pass and the elementwise work are left out, so the fraction is a floor) and
that count's rate as a fraction of this machine's fp32 peak (`machine.fp32_peak`;
no fraction, and why, where that measurement failed or the fraction would exceed 1).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import machine  # noqa: E402

LATENT, HIDDEN, PIXELS = 20, 500, 784  # experiments/vae_mnist.py's decoder: 20 → 500 → 784.


def make_digits28(path: pathlib.Path, num_test: int) -> None:
  from PIL import Image
  from sklearn.datasets import load_digits

  digits = load_digits()
  images = np.stack(
    [
      np.asarray(Image.fromarray(np.uint8(x * 255 / 16)).resize((28, 28), Image.BILINEAR))
      for x in digits.images
    ]
  )
  order = np.random.default_rng(0).permutation(len(images))
  images, labels = images[order], digits.target[order]
  n_train = len(images) - num_test
  np.savez(
    path,
    x_train=images[:n_train],
    y_train=labels[:n_train],
    x_test=images[n_train:],
    y_test=labels[n_train:],
  )


def main(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--k", type=int, default=5000)
  parser.add_argument("--num_test", type=int, default=1000)
  parser.add_argument("--train_steps", type=int, default=200)
  args = parser.parse_args(argv)
  genlab = [sys.executable, "-m", "genlab"]
  with tempfile.TemporaryDirectory() as tmp:
    data, workdir = pathlib.Path(tmp) / "digits28.npz", pathlib.Path(tmp) / "run"
    make_digits28(data, args.num_test)
    subprocess.run(
      genlab
      + [
        "train",
        "--config",
        str(REPO / "experiments" / "vae_mnist.py"),
        "--workdir",
        str(workdir),
        f"--config.dataset={data}",
        "--config.num_epochs=None",
        f"--config.num_steps={args.train_steps}",
        f"--config.eval_every={args.train_steps}",
      ],
      check=True,
      capture_output=True,
    )
    start = time.perf_counter()
    subprocess.run(
      genlab + ["eval", "--workdir", str(workdir), f"--config.vae.nll_k={args.k}"],
      check=True,
      capture_output=True,
    )
    seconds = time.perf_counter() - start
    report = json.loads((workdir / "eval.json").read_text())
  print(json.dumps(figures(report, seconds, machine.fp32_peak())))


def figures(report: dict, seconds: float, peak: dict) -> dict:
  """The benchmark's JSON line from `genlab eval`'s report, its wall time and the machine's
  fp32 peak (`machine.fp32_peak()`): no fraction of peak where that measurement failed."""
  k, n = report["protocol"]["nll_k"], report["num_examples"]
  decoder_flop = k * n * 2 * (LATENT * HIDDEN + HIDDEN * PIXELS)
  return {
    "what": "genlab eval wall time (start-up + ELBO pass + importance-sampled NLL)",
    "model": "784-500-20 MLP VAE, Bernoulli decoder (experiments/vae_mnist.py)",
    "nll_k": k,
    "num_test_images": n,
    "image_shape": [28, 28, 1],
    "eval_batch_size": 500,
    "seconds": round(seconds, 1),
    **machine.cpu(),
    "decoder_tflop": round(decoder_flop / 1e12, 3),
    "decoder_gflop_per_s": round(decoder_flop / 1e9 / seconds, 1),
    "fp32_peak_gflop_per_s": round(peak["gflops"], 1) if peak["gflops"] else None,
    "fp32_peak_how": peak["how"],
    **machine.fraction_of_peak(decoder_flop / 1e9 / seconds, peak),
    "nll": report["metrics"]["nll"],
    "neg_elbo": report["metrics"]["neg_elbo"],
  }


if __name__ == "__main__":
  main(sys.argv[1:])
