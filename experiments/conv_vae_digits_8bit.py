"""conv_vae_digits on the 8-bit grey values, in bits per dimension: a discretized logistic decoder.

    genlab train --config experiments/conv_vae_digits_8bit.py --workdir runs/conv_vae_8bit
    genlab eval --workdir runs/conv_vae_8bit   # neg_elbo, nll (k = 5,000), also in bits/dim

The encoder, decoder, optimizer and steps of experiments/conv_vae_digits.py, on the
digits' 8-bit values (0..255 mapped onto [-1, 1], not binarized) with
`likelihood='discretized_logistic'`: per pixel a location and a log scale, the logistic
discretized to the 256 bins of width 2/255, the edge bins taking the tails (PixelCNN++,
Salimans et al. 2017). The ELBO and the importance-sampled NLL are reported in nats and in
bits per dimension, nats / (64 · ln 2) (`neg_elbo_bits_per_dim`, `nll_bits_per_dim`).

What to expect (2 AMD EPYC cores, seed 0, this revision): on the 300 test digits neg_elbo
164.6 nats = 3.71 bits/dim, nll 159.2 nats = 3.59 bits/dim (k = 5,000), kl 15.4, 8 of 8
units active; docs/families/vae.md has the row.
"""

import pathlib

from genlab.config import load_experiment


def get_config():
  config = load_experiment(pathlib.Path(__file__).with_name("conv_vae_digits.py"))
  config.data.range = (-1.0, 1.0)
  config.model.likelihood = "discretized_logistic"
  config.vae.binarize = "none"
  return config
