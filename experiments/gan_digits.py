"""MLP GAN on the embedded `digits` (pixels in [-1, 1]), the original GAN's architecture family.

    genlab train --config experiments/gan_digits.py --workdir runs/gan_digits
    genlab eval --workdir runs/gan_digits

G: z ∈ R³² → Dense(256) → ReLU → Dense(256) → ReLU → Dense(64) → tanh.
D: 64 → Dense(256) → leaky ReLU → Dense(256) → leaky ReLU → Dense(1).
Non-saturating generator loss, Adam(2e-4, β1 = 0.5) for each network, batch 64,
3,000 steps. Metrics as in dcgan_digits.py (feature network: a classifier
trained on the digits' train split).

What to expect (measured on 2 AMD EPYC cores, seed 0, ~10 s): `fd` falls from
1,032 at step 0 to 124 at step 1,000 and 27.0 at step 3,000 (fd_floor 6.3), with
`cs` 8.0, `class_entropy` 2.25, precision 0.67 and recall 0.92 (test digits: 0.95
and 0.95).
"""

from genlab.config import base_config


def get_config():
  config = base_config("gan")
  config.dataset = "digits"
  config.data.range = (-1.0, 1.0)
  config.batch_size = 64
  config.num_steps = 3000
  config.model = config.model.__class__(
    {
      "name": "gan",
      "architecture": "mlp",
      "latent_dim": 32,
      "generator": {"hidden": (256, 256), "activation": "relu"},
      "discriminator": {"hidden": (256, 256), "activation": "leaky_relu"},
    }
  )
  config.gan.update(generator_loss="non_saturating", n_disc=1)
  config.optimizer.update(name="adam", learning_rate=2e-4, b1=0.5)
  config.eval_at_start = True
  config.log_every = 200
  config.eval_every = 500
  config.image_every = 500
  config.checkpoint_every = 1000
  return config
