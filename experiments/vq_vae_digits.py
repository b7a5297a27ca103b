"""VQ-VAE (van den Oord et al. 2017) on the embedded `digits`, with the conv AE's widths.

    genlab train --config experiments/vq_vae_digits.py --workdir runs/vq_vae_digits
    genlab eval --workdir runs/vq_vae_digits

Architecture: conv_ae_digits.py's conv stacks without the Dense code: 8×8×1 →
Conv(32, 3×3, s2) → Conv(64, 3×3, s2) → Conv(D, 1×1) = z_e, a 2×2 map of D-vectors,
each replaced by the nearest of K codes → ConvTranspose(32, 3×3, s2) → ConvTranspose(1,
3×3, s2) → sigmoid. MSE on pixels in [0, 1] + β·commitment, Adam 2e-3, batch 64, 2,000
steps, as conv_ae_digits.py.

What to expect: TBD.
"""

from genlab.config import base_config


def get_config():
  config = base_config("vq_vae")
  config.dataset = "digits"
  config.batch_size = 64
  config.num_steps = 2000
  config.model.update(
    name="vq_vae",
    codebook_size=64,
    code_dim=16,
    features=(32, 64),
    kernel_size=3,
    strides=2,
    activation="relu",
    output_activation="sigmoid",
  )
  config.vq.update(commitment=0.25, codebook_update="ema", dead_code_reinit=True, dead_after=640)
  config.optimizer.learning_rate = 2e-3
  config.log_every = 100
  config.eval_every = 500
  config.image_every = 1000
  config.checkpoint_every = 500
  return config
