"""A convolutional VAE on TFDS `cifar10`, in bits per dimension: a discretized logistic decoder.

    tfds build cifar10 --file_format=array_record   # once, where there is network
    genlab train --config experiments/conv_vae_cifar10.py --workdir runs/conv_vae_cifar10
    genlab eval --workdir runs/conv_vae_cifar10   # neg_elbo and nll in bits/dim; fid, kid, is

Model: the core's conv stacks on 32×32×3: Conv(64, 4×4, s2) → Conv(128, 4×4, s2) →
Conv(256, 4×4, s2) → Dense(2·128) = (μ, log σ²); z ∈ R¹²⁸ → Dense(4·4·256) → three 4×4
stride-2 ConvTransposes back to 32×32 → per pixel and channel a location and a log scale.
The likelihood is the 8-bit values' (0..255 mapped onto [-1, 1], not binarized): the
logistic discretized to the 256 bins of width 2/255, the edge bins taking the tails
(PixelCNN++, Salimans et al. 2017), as in experiments/conv_vae_digits_8bit.py. The ELBO and
the importance-sampled NLL are reported in nats and in bits per dimension, nats /
(3072 · ln 2). Adam 1e-3, batch 128, 50,000 steps (128 epochs). No published recipe is
followed: the sizes are the digits model's scaled to CIFAR-10's images.

Samples are scored by the Inception (fid, kid, is against the 50,000 train images, 50,000
samples, clean-fid's resize) in `genlab eval` only (`inception_final_only`).

What to expect: no paper reports this model. For scale, Kingma et al. 2016 (inverse
autoregressive flow), Table 3, report ≤ 3.11 bits/dim on the CIFAR-10 test set for a deep
ResNet VAE with IAF, and PixelCNN++ 2.92; a VAE whose decoder is independent per pixel given
z, as this one, stays well above those, and its samples are blurry (a high FID). No run of
this config was made here (no accelerator in this session). Accelerator time, an estimate,
not a measurement: some minutes of one H100 for the training (about 40 GFLOP per step), and
about as long again for `genlab eval` (1,000 decoder passes per test image, 100,000 images
through the Inception).
"""

from genlab.config import base_config


def get_config():
  config = base_config("vae")
  config.dataset = "cifar10"
  config.data.range = (-1.0, 1.0)
  config.batch_size = 128
  config.num_steps = 50_000
  config.model.update(
    name="vae",
    architecture="conv",
    features=(64, 128, 256),
    kernel_size=4,
    strides=2,
    latent_dim=128,
    likelihood="discretized_logistic",
  )
  config.vae.update(binarize="none", nll_k=1000)
  config.optimizer.learning_rate = 1e-3
  config.sample_metrics.update(evaluators="inception", inception_final_only=True)
  config.eval_batch_size = 500
  config.log_every = 500
  config.eval_every = 5000
  config.image_every = 5000
  config.checkpoint_every = 5000
  return config
