"""gan_digits as a WGAN-GP (Gulrajani et al. 2017): a critic, 5 critic steps per generator step.

    genlab train --config experiments/wgan_gp_digits.py --workdir runs/wgan_gp_digits
    genlab eval --workdir runs/wgan_gp_digits

The networks, data and batch of experiments/gan_digits.py (MLPs, pixels in
[-1, 1], batch 64, 3,000 generator steps); the objective and optimizer of the
WGAN-GP paper: the critic minimises E[D(G(z))] − E[D(x)] + λ·E[(‖∇D(x̂)‖ − 1)²]
with λ = 10 at x̂ = ε·x + (1 − ε)·G(z), ε ~ U[0, 1] per example;
the generator minimises −E[D(G(z))]; `gan.n_disc` = 5; Adam(1e-4, β1 = 0, β2 = 0.9).
The critic's output is a value, not a logit: `d_real` and `d_fake` (its
sigmoid) say little here; the train log's `d_penalty` is the penalty term.

What to expect: the GAN family's page (docs/families/gan.md) has the measured row.
"""

import pathlib

from genlab.config import load_experiment


def get_config():
  config = load_experiment(pathlib.Path(__file__).with_name("gan_digits.py"))
  config.gan.update(generator_loss="wasserstein", penalty="gp", penalty_weight=10.0, n_disc=5)
  config.optimizer.update(learning_rate=1e-4, b1=0.0, b2=0.9)
  return config
