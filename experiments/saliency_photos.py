"""Image → map: a convolutional encoder-decoder that predicts the saliency map of a photo crop.

    genlab train --config experiments/saliency_photos.py --workdir runs/saliency_photos
    genlab eval --workdir runs/saliency_photos    # mse, cc, kld, nss, sim

Data: the embedded `photo_crops32` — 32×32 grey crops of scikit-image's
photographs (train and test from different photographs); the target is each
crop's spectral-residual saliency map (Hou & Zhang 2007), a classic bottom-up
model's estimate of where the eye is drawn, computed from the real image. The
network must learn that model's notion of "unexpected structure" (edges,
isolated blobs, texture breaks) from examples: a saliency predictor trained by
distillation, the same task (and metrics) as training on human fixation maps.

Model: the core conv AE with a different output: 32×32×1 → Conv(32, s2) →
Conv(64, s2) → Conv(128, s2) → Dense(128) → back up → 32×32×1 map (sigmoid);
MSE against the target map; Adam 2e-3, batch 64. Grids: input | target |
prediction. Metrics (MIT/Tuebingen saliency benchmark): CC, KLD, NSS (fixations:
the target's top 10% pixels), SIM, and MSE against mse_mean_baseline.

What to expect (measured on 2 CPU cores, seed 0, ~1 min alone): on the 1,200
test crops (held-out photographs), cc 0.52, kld 0.28, nss 1.23, sim 0.72, and
mse 0.030 against mse_mean_baseline 0.039 (predicting the mean training map).
"""

from genlab.config import base_config


def get_config():
  config = base_config()
  config.dataset = "photo_crops32"
  config.data.target_key = "saliency"
  config.batch_size = 64
  config.num_steps = 3000
  config.model.update(
    features=(32, 64, 128),
    kernel_size=3,
    strides=2,
    latent_dim=128,
    activation="relu",
    output_activation="sigmoid",
  )
  config.optimizer.learning_rate = 2e-3
  config.eval_batch_size = 200
  config.eval_every = 1000
  config.image_every = 1000
  config.checkpoint_every = 1000
  return config
