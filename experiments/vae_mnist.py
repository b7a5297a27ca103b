"""The flax VAE example's setting: 784-500-20 MLP VAE on binarized MNIST, batch 128, Adam 1e-3.

    genlab train --config experiments/vae_mnist.py --workdir runs/vae_mnist
    genlab eval --workdir runs/vae_mnist    # nll: k = 5,000 on 10,000 images, minutes on 2 cores
    genlab sample --workdir runs/vae_mnist --num 64 --out samples.png

Data: TFDS `binarized_mnist` (Larochelle's fixed binarization: 50,000 train,
10,000 test; genlab reads its 0/1 pixels as black/white), prepared beforehand
with `tfds build binarized_mnist --file_format=array_record` (genlab never
downloads). Or `--config.dataset=/path/to/mnist.npz` with 28×28 uint8 images
(Keras' mnist.npz layout): `vae.binarize='dynamic'` then draws x ~ Bernoulli
(pixel / 255) afresh at every step, and the test images once from a fixed key
(on binarized_mnist the same setting changes nothing: its pixels are 0 or 1).

Model and objective, as in flax/examples/vae: x (784) → Dense(500) → ReLU →
Dense(20) μ and Dense(20) log σ² (genlab: one Dense(40) — the same function) →
z = μ + σ·ε → Dense(500) → ReLU → Dense(784) Bernoulli logits; loss = batch
mean of (Σ_pixels BCE + closed-form KL); Adam(1e-3), batch 128, 10 epochs
(`num_epochs`: 3,900 steps on binarized_mnist, 4,680 on a 60,000-image .npz).

What to expect: the flax example reports a test loss (−ELBO, one z per image)
of about 104 nats after 10 epochs; genlab's `neg_elbo` is the same quantity,
and `nll` (importance-sampled, k = 5,000) is a few nats lower. Not measured in
this repository, whose machines have no copy of MNIST.
"""

from genlab.config import base_config


def get_config():
  config = base_config("vae")
  config.dataset = "binarized_mnist"
  config.batch_size = 128
  config.num_epochs = 10  # num_steps = 10 · ⌊N / 128⌋ once the data is loaded.
  config.num_steps = None
  config.model.update(
    name="vae", architecture="mlp", hidden=(500,), latent_dim=20, likelihood="bernoulli"
  )
  config.vae.update(binarize="dynamic", nll_k=5000)
  config.optimizer.learning_rate = 1e-3
  config.eval_batch_size = 500
  config.log_every = 100
  config.eval_every = 390
  config.image_every = 1950
  config.checkpoint_every = 390
  return config
