"""vae_digits made conditional (Sohn et al. 2015): the digit's label feeds encoder and decoder.

    genlab train --config experiments/cvae_digits.py --workdir runs/cvae_digits
    genlab eval --workdir runs/cvae_digits        # −log p(x|y) (k = 5,000), neg_elbo, kl
    genlab sample --workdir runs/cvae_digits --num 20 --out samples.png   # classes 0..9, twice

The model, data, optimizer and steps of experiments/vae_digits.py, with
`vae.conditional`: the one-hot label is concatenated to the flattened image
(q(z|x, y)) and to z (p(x|z, y)); the prior stays N(0, I). The samples view has one
row per class, the same 8 z in every row, so a column shows one z across the classes.

What to expect: the VAE family's page (docs/families/vae.md) has the measured row.
"""

import pathlib

from genlab.config import load_experiment


def get_config():
  config = load_experiment(pathlib.Path(__file__).with_name("vae_digits.py"))
  config.vae.conditional = True
  return config
