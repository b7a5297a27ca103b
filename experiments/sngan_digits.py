"""dcgan_digits as an SNGAN (Miyato et al. 2018): a spectrally normalized discriminator, hinge loss.

    genlab train --config experiments/sngan_digits.py --workdir runs/sngan_digits
    genlab eval --workdir runs/sngan_digits

The generator, data, batch and steps of experiments/dcgan_digits.py; the
discriminator's every layer divided by its largest singular value, estimated by one
power-iteration step per update (`model.discriminator.spectral_norm`; the
vectors live in the train state's `stats`, outside the parameters, and are
checkpointed with them); the hinge loss (`gan.generator_loss='hinge'`); Adam with
β1 = 0, β2 = 0.9, at 2e-4 for the generator and 8e-4 for the discriminator (two
time-scales, as SAGAN and BigGAN train theirs). With dcgan_digits' optimizer
(Adam 2e-4, β1 = 0.5, for both) the normalized discriminator learned too slowly:
fd 163 at step 1,500 (seed 0).

What to expect: the GAN family's page (docs/families/gan.md) has the measured row.
"""

import pathlib

from genlab.config import load_experiment


def get_config():
  config = load_experiment(pathlib.Path(__file__).with_name("dcgan_digits.py"))
  config.model.discriminator.spectral_norm = True
  config.gan.update(generator_loss="hinge", disc_learning_rate=8e-4)
  config.optimizer.update(b1=0.0, b2=0.9)
  return config
