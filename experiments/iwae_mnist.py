"""The IWAE paper's MNIST model (Burda et al. 2016, one stochastic layer), k = 50.

    genlab train --config experiments/iwae_mnist.py --workdir runs/iwae_mnist
    genlab eval --workdir runs/iwae_mnist        # nll with k = 5,000 (the paper's)
    genlab train --config experiments/iwae_mnist.py --workdir runs/vae_k1 \\
      --config.vae.objective=elbo                 # the paper's VAE baseline

Data: TFDS `mnist`, prepared beforehand (`tfds build mnist --file_format=array_record`;
genlab never downloads), dynamically binarized: x ~ Bernoulli(pixel / 255) afresh at
every step, the test images once from a fixed key. Or `--config.dataset=mnist.npz`.

Model, as the paper's: x (784) → Dense(200) → tanh → Dense(200) → tanh → μ, log σ²
(50 latents) → z → Dense(200) → tanh → Dense(200) → tanh → Dense(784) Bernoulli
logits; objective −L_50 (`vae.objective='iwae'`, `vae.train_k=50`); Adam with
ε = 1e-4, batch 20, 3,280 epochs (the paper's number of passes).

Not the paper's: its learning rate follows 8 stages of 3^i epochs at 1e-3·10^(−i/7);
genlab's optimizer config has no staircase schedule, so this runs at a constant 1e-3.

The paper's test −log p(x) (k = 5,000): 86.76 nats for the VAE (k = 1) and 84.78
for IWAE with k = 50, on the 10,000 MNIST test images. Check them against your own
copy of MNIST: this repository's machines have none, and nothing here was measured
on it (a test runs this experiment on TFDS's mock data).
"""

from genlab.config import base_config


def get_config():
  config = base_config("vae")
  config.dataset = "mnist"
  config.batch_size = 20
  config.num_epochs = 3280  # num_steps = 3,280 · ⌊N / 20⌋ once the data is loaded.
  config.num_steps = None
  config.model.update(
    name="vae",
    architecture="mlp",
    hidden=(200, 200),
    activation="tanh",
    latent_dim=50,
    likelihood="bernoulli",
  )
  config.vae.update(binarize="dynamic", objective="iwae", train_k=50, nll_k=5000)
  config.optimizer.update(learning_rate=1e-3, eps=1e-4)
  config.eval_batch_size = 500
  config.log_every = 3000
  config.eval_every = 30000
  config.image_every = 300000
  config.checkpoint_every = 30000
  return config
