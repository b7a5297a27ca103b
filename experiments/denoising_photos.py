"""Denoising autoencoder on natural-image crops: gaussian noise σ = 0.2 on 32×32 grey photos.

    genlab train --config experiments/denoising_photos.py --workdir runs/denoising_photos
    genlab eval --workdir runs/denoising_photos    # psnr, ssim vs psnr_noisy, ssim_noisy

Data: the embedded `photo_crops32` (its `image` only): 32×32 grey crops of
scikit-image's photographs, test crops from held-out photographs. A fully
convolutional AE (no vector bottleneck: the code is a 8×8×64 map) maps
x + N(0, 0.2²) back to x; MSE against the clean crop. Grids: noisy | clean |
denoised.

What to expect (measured on 2 CPU cores, seed 0, ~1 min alone): on the 1,200
test crops, psnr 26.8 dB and ssim 0.63 for the output, against psnr_noisy 14.2
dB and ssim_noisy 0.09 for the noisy input.
"""

from genlab.config import base_config


def get_config():
  config = base_config()
  config.dataset = "photo_crops32"
  config.batch_size = 64
  config.num_steps = 3000
  config.corruption = "gaussian:0.2"
  config.model.update(
    features=(32, 64),
    kernel_size=3,
    strides=2,
    latent_dim=None,
    activation="relu",
    output_activation="sigmoid",
  )
  config.optimizer.learning_rate = 2e-3
  config.eval_batch_size = 200
  config.eval_every = 1000
  config.image_every = 1000
  config.checkpoint_every = 1000
  return config
