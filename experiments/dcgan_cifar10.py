"""DCGAN on TFDS `cifar10` (50,000 32×32 colour train images, in [-1, 1]): StudioGAN's recipe.

    tfds build cifar10 --file_format=array_record   # once, where there is network
    genlab train --config experiments/dcgan_cifar10.py --workdir runs/dcgan_cifar10
    genlab eval --workdir runs/dcgan_cifar10        # fid, kid, is (and fd, precision, ...)

The Inception's weights, pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`, are fetched
once by `genlab eval` (or named: `--config.sample_metrics.inception_weights=PATH`).

The networks are the "standard CNN" of Miyato et al. 2018 (SNGAN), Table 3, which
StudioGAN's DCGAN runs on CIFAR-10 (`src/models/dcgan.py`), with the DCGAN paper's
BatchNorm (Radford et al. 2016, §3: in G after every layer but the output, in D after
every layer but the input):

G: z ∈ R¹²⁸ → Dense(4·4·512) → BN → ReLU → ConvTranspose(256, 4×4, s2) → BN → ReLU →
ConvTranspose(128, 4×4, s2) → BN → ReLU → ConvTranspose(64, 4×4, s2) → BN → ReLU →
ConvTranspose(3, 3×3, s1) → tanh.
D: Conv(64, 3×3, s1) → lReLU → Conv(64, 4×4, s2) → BN → lReLU → Conv(128, 3×3, s1) →
BN → lReLU → Conv(128, 4×4, s2) → … → Conv(256, 4×4, s2) → BN → lReLU →
Conv(512, 3×3, s1) → BN → lReLU → Dense(1) on the flattened 4×4×512 map.

Where each hyper-parameter comes from (StudioGAN: `src/configs/CIFAR10/DCGAN.json` at
commit 6e75ce3 and its `src/models/dcgan.py`):
  * the layer shapes above: Miyato et al. 2018, Table 3 (StudioGAN's `dcgan`);
  * BatchNorm's placement, ReLU in G, tanh out, leaky ReLU of slope 0.2 in D: Radford et al.
    2016, §3–4 (StudioGAN's D has BN on its input layer too, no BN after G's Dense, and
    plain ReLU in D; Miyato et al. use slope 0.1);
  * z ∈ R¹²⁸, batch 64, Adam 2e-4 with β1 = 0.5, β2 = 0.999 for both networks, 2 D steps
    per G step, 200,000 steps, the non-saturating ("vanilla") loss, random horizontal
    flips: StudioGAN's DCGAN.json (the rate and β1 are Radford et al.'s, §4; their z has 100
    dimensions and their batch 128);
  * not followed: StudioGAN's orthogonal initialization (genlab's layers keep flax's).

What to expect: StudioGAN's README (commit 007871e) reports for its DCGAN on CIFAR-10
IS 6.697 and FID 50.281, the FID between 10,000 samples and the 10,000 test images with
pytorch-fid. This config evaluates with that protocol (`inception_real_split='test'`,
10,000 of each, pytorch-fid's bilinear resize `legacy_pytorch`); the IS is over 10 splits.
No run of this config was made here (no accelerator in this session): the figure is the
published one, not a measurement of genlab. Accelerator time, an estimate from the step's
arithmetic (about 0.5 TFLOP per step: two D steps and one G step on 64 images), not a
measurement: about an hour of one H100 for the 200,000 steps, and a few minutes for
`genlab eval` (20,000 images through the Inception). The Inception metrics run only in
`genlab eval` (`inception_final_only`); the evaluations during training report the cheap
`feature_net` ones (fd, precision, recall, ...).
"""

from genlab.config import base_config


def get_config():
  config = base_config("gan")
  config.dataset = "cifar10"
  config.data.range = (-1.0, 1.0)
  config.data.augment = "flip"  # StudioGAN: random_flip_preprocessing.
  config.batch_size = 64  # StudioGAN (Radford et al.: 128).
  config.num_steps = 200_000  # StudioGAN: total_step.
  config.model = config.model.__class__(
    {
      "name": "gan",
      "architecture": "dcgan",
      "latent_dim": 128,  # StudioGAN and Miyato et al. (Radford et al.: 100).
      # Miyato et al. 2018, Table 3 (a), in encoder order: the last stage is the Dense's 4×4×512
      # map, each 4×4 stride-2 ConvTranspose doubles it, the first stage is the 3×3 output conv.
      "generator": {
        "features": (64, 128, 256, 512),
        "kernel_size": (3, 4, 4, 4),
        "strides": (1, 2, 2, 2),
        "activation": "relu",
        "batch_norm": True,  # Radford et al. 2016, §3.
      },
      # Miyato et al. 2018, Table 3 (b): 3×3 stride-1 and 4×4 stride-2 convs in turn.
      "discriminator": {
        "features": (64, 64, 128, 128, 256, 256, 512),
        "kernel_size": (3, 4, 3, 4, 3, 4, 3),
        "strides": (1, 2, 1, 2, 1, 2, 1),
        "activation": "leaky_relu:0.2",  # Radford et al. 2016, §4.
        "batch_norm": True,  # Radford et al. 2016, §3: none on the input layer.
      },
    }
  )
  config.gan.update(generator_loss="non_saturating", n_disc=2)  # StudioGAN: vanilla, 2 D steps.
  config.optimizer.update(name="adam", learning_rate=2e-4, b1=0.5, b2=0.999)  # StudioGAN.
  config.sample_metrics.update(
    evaluators="feature_net,inception",
    inception_final_only=True,  # fid, kid, is in `genlab eval` only: hours on a CPU.
    # StudioGAN's protocol for the figure above: 10,000 test images, 10,000 samples, pytorch-fid.
    inception_real_split="test",
    inception_n_real=10_000,
    inception_n_fake=10_000,
    inception_resize="legacy_pytorch",
    fd_n_real=10_000,
  )
  config.eval_batch_size = 500
  config.log_every = 500
  config.eval_every = 10_000
  config.image_every = 10_000
  config.checkpoint_every = 10_000
  return config
