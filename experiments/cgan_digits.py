"""gan_digits made class-conditional: G takes the label beside z, D is a projection discriminator.

    genlab train --config experiments/cgan_digits.py --workdir runs/cgan_digits
    genlab eval --workdir runs/cgan_digits       # fd, class_accuracy, fd_class_mean, ...
    genlab sample --workdir runs/cgan_digits --num 20 --out samples.png   # classes 0..9, twice

The networks, data, loss, optimizer and steps of experiments/gan_digits.py, with
`gan.conditional`: the generator's input is z and the one-hot label; the
discriminator is D(x, y) = ψ(φ(x)) + ⟨e_y, φ(x)⟩ (Miyato & Koyama 2018), φ its
hidden layers, ψ its last Dense, e_y a learned class embedding. Fakes are drawn
for uniform random classes (keyed per example). The eval adds `class_accuracy`
(samples the feature network classifies as their class) and `fd_class_mean`
(the Fréchet distance within each class, averaged). The samples view has one row
per class.

What to expect: the GAN family's page (docs/families/gan.md) has the measured row.
"""

import pathlib

from genlab.config import load_experiment


def get_config():
  config = load_experiment(pathlib.Path(__file__).with_name("gan_digits.py"))
  config.gan.conditional = True
  return config
