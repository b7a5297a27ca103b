"""Convolutional autoencoder on the embedded `digits` (1,497 train / 300 test 8×8 images).

The README's main job: a real training run on data that ships with
scikit-learn, no download.

    genlab train --config experiments/conv_ae_digits.py --workdir runs/conv_ae_digits
    genlab eval --workdir runs/conv_ae_digits

Architecture: 8×8×1 → Conv(32, 3×3, s2) → Conv(64, 3×3, s2) → Dense(16) code →
Dense(2·2·64) → ConvTranspose(32, 3×3, s2) → ConvTranspose(1, 3×3, s2) → sigmoid;
MSE on pixels in [0, 1], Adam 2e-3, batch 64, 2,000 steps (~85 epochs).

What to expect (measured on 2 CPU cores, seed 0; about 10 s of training plus a
few seconds of start-up): `genlab eval` reports, on the 300 test images, `mse`
≈ 0.0058 against `mse_mean_baseline` ≈ 0.073 (predicting the mean training
image), i.e. `mse_to_baseline_ratio` ≈ 0.079; the README's bar is 0.3.
"""

from genlab.config import base_config


def get_config():
  config = base_config()
  config.dataset = "digits"
  config.batch_size = 64
  config.num_steps = 2000
  config.model.update(
    features=(32, 64),
    kernel_size=3,
    strides=2,
    latent_dim=16,
    activation="relu",
    output_activation="sigmoid",
  )
  config.optimizer.learning_rate = 2e-3
  config.log_every = 100
  config.eval_every = 500
  config.image_every = 1000
  config.checkpoint_every = 500
  return config
