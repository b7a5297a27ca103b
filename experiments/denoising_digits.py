"""Denoising convolutional autoencoder on the embedded `digits`: gaussian noise σ = 0.5.

    genlab train --config experiments/denoising_digits.py --workdir runs/denoising_digits
    genlab eval --workdir runs/denoising_digits    # psnr vs psnr_noisy (dB)

The conv AE of conv_ae_digits.py, trained to map x + N(0, 0.5²) (pixels in
[0, 1], noise drawn per example from its own key) back to x; MSE against the
clean image. Test inputs are corrupted from a fixed key, so numbers compare
across steps. Grids: noisy | clean | denoised. (8×8 images are smaller than
SSIM's 11×11 window, so only PSNR is reported.)

What to expect (measured on 2 CPU cores, seed 0, ~10 s): on the 300 test
digits, psnr 15.8 dB for the denoised output against psnr_noisy 9.4 dB for the
noisy input: +6.4 dB.
"""

import pathlib

from genlab.config import load_experiment


def get_config():
  # conv_ae_digits.py's model and optimizer, trained on noisy inputs.
  config = load_experiment(pathlib.Path(__file__).with_name("conv_ae_digits.py"))
  config.num_steps = 4000
  config.corruption = "gaussian:0.5"
  config.eval_every = 1000
  config.image_every = 2000
  config.checkpoint_every = 1000
  return config
