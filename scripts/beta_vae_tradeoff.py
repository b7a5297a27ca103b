"""β-VAE's trade-off on digits: reconstruction against KL as β grows, one run per β.

    python scripts/beta_vae_tradeoff.py [--betas 0.25,0.5,1,2,4,8] [--out runs/beta_tradeoff]

Trains experiments/vae_digits.py (64 → 256 → 8 latents, dynamic binarization,
6,000 steps, seed 0) once per β (`vae.beta`; the loss is reconstruction + β·KL),
evaluates each on the 300 test digits (one z per image for the ELBO terms; nll
with k = `--nll_k`), and writes `tradeoff.json` (every run's protocol and
metrics) and `tradeoff.png` (test reconstruction −log p(x|z) against test KL, in
nats, each point labelled with its β and its active units) to `--out`. A larger β
buys a smaller KL (a code closer to the prior, fewer active units) with a worse
reconstruction. About 7 s per β on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def main(argv):
  from genlab import config as config_lib
  from genlab.run import evaluate_workdir, train_and_evaluate
  from genlab.views import figure_pixels, subplots

  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--betas", default="0.25,0.5,1,2,4,8")
  parser.add_argument("--nll_k", type=int, default=1000)
  parser.add_argument("--out", default="runs/beta_tradeoff")
  args = parser.parse_args(argv)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  rows = []
  for beta in [float(b) for b in args.betas.split(",")]:
    config = config_lib.load_experiment(REPO / "experiments" / "vae_digits.py")
    config.vae.update(beta=beta, nll_k=args.nll_k)
    config.image_every = config.num_steps
    workdir = out / f"beta_{beta:g}"
    train_and_evaluate(config, workdir)
    report = evaluate_workdir(workdir)
    metrics = report["metrics"]
    rows.append({"beta": beta, "workdir": str(workdir), **report})
    print(
      json.dumps(
        {
          "beta": beta,
          "reconstruction": round(metrics["reconstruction"], 3),
          "kl": round(metrics["kl"], 3),
          "neg_elbo": round(metrics["neg_elbo"], 3),
          "nll": round(metrics["nll"], 3),
          "active_units": metrics["active_units"],
        }
      ),
      flush=True,
    )
  (out / "tradeoff.json").write_text(json.dumps(rows, indent=2, default=str))
  fig, ax = subplots(figsize=(5, 4), dpi=100)
  kl = [r["metrics"]["kl"] for r in rows]
  rec = [r["metrics"]["reconstruction"] for r in rows]
  ax.plot(kl, rec, "o-")
  for i, (r, x, y) in enumerate(zip(rows, kl, rec, strict=True)):
    label = f"β={r['beta']:g} ({r['metrics']['active_units']} active)"
    offset = (6, 4) if i % 2 == 0 else (6, -11)  # Neighbours with equal KL stay legible.
    ax.annotate(label, (x, y), xytext=offset, textcoords="offset points", fontsize=7)
  ax.set(
    xlabel="test KL(q(z|x) ‖ N(0, I)), nats",
    ylabel="test −log p(x|z), nats",
    title="β-VAE on digits (vae_digits, 300 test digits, seed 0)",
  )
  from PIL import Image

  Image.fromarray(figure_pixels(fig)).save(out / "tradeoff.png")
  print(json.dumps({"wrote": [str(out / "tradeoff.json"), str(out / "tradeoff.png")]}))


if __name__ == "__main__":
  main(sys.argv[1:])
