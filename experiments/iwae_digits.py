"""vae_digits trained on the importance-weighted bound (IWAE, Burda et al. 2016), k = 5.

    genlab train --config experiments/iwae_digits.py --workdir runs/iwae_digits
    genlab eval --workdir runs/iwae_digits       # neg_elbo, kl, nll (k = 5,000), active units

The same model, data, optimizer and steps as experiments/vae_digits.py (64 → 256 →
8 latents → 256 → 64 Bernoulli logits, dynamic binarization, Adam 1e-3, batch 64,
6,000 steps); only the objective differs: the batch mean of −L_5, the 5-sample
importance-weighted bound, from the on-device sampler that `genlab eval`'s nll
uses. Its eval is the same as vae_digits', so the two compare directly.

What to expect: see the VAE family's page (docs/families/vae.md), which gives both
runs' figures.
"""

import pathlib

from genlab.config import load_experiment


def get_config():
  config = load_experiment(pathlib.Path(__file__).with_name("vae_digits.py"))
  config.vae.update(objective="iwae", train_k=5)
  return config
