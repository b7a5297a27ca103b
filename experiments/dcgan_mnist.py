"""DCGAN on TFDS `mnist` (60,000 28×28 digits, pixels in [-1, 1]), or a `.npz` of 28×28 images.

    tfds build mnist --file_format=array_record   # once, where there is network
    genlab train --config experiments/dcgan_mnist.py --workdir runs/dcgan_mnist
    genlab train --config experiments/dcgan_mnist.py --workdir runs/x --config.dataset=mnist.npz
    genlab eval --workdir runs/dcgan_mnist

G: z ∈ R¹⁰⁰ → Dense(7·7·128) → ReLU → ConvTranspose(64, 4×4, s2) → ReLU →
ConvTranspose(1, 4×4, s2) → tanh. D: Conv(64, 4×4, s2) → Conv(128, 4×4, s2) →
Dense(1), leaky ReLU. Adam(2e-4, β1 = 0.5) each, batch 128, non-saturating
loss, 10,000 steps (~21 epochs). FD in the feature space of a classifier genlab
trains on the same labelled train split (a .npz needs y_train / y_test).

What to expect: not measured in this repository, whose machines have no copy of
MNIST (the tests run this path on `tfds.testing.mock_data`); the fd curve in
metrics.jsonl should fall by well over an order of magnitude from step 0.
"""

from genlab.config import base_config


def get_config():
  config = base_config("gan")
  config.dataset = "mnist"
  config.data.range = (-1.0, 1.0)
  config.batch_size = 128
  config.num_steps = 10000
  config.model = config.model.__class__(
    {
      "name": "gan",
      "architecture": "dcgan",
      "latent_dim": 100,
      "generator": {"features": (64, 128), "kernel_size": 4, "strides": 2, "activation": "relu"},
      "discriminator": {
        "features": (64, 128),
        "kernel_size": 4,
        "strides": 2,
        "activation": "leaky_relu",
      },
    }
  )
  config.gan.update(generator_loss="non_saturating", n_disc=1)
  config.sample_metrics.fd_n_real = 10000
  config.optimizer.update(name="adam", learning_rate=2e-4, b1=0.5)
  config.eval_batch_size = 500
  config.eval_at_start = True
  config.log_every = 200
  config.eval_every = 1000
  config.image_every = 1000
  config.checkpoint_every = 1000
  return config
