"""SNGAN on TFDS `cifar10`: Miyato et al. 2018's standard CNN with spectral norm and the hinge loss.

    tfds build cifar10 --file_format=array_record   # once, where there is network
    genlab train --config experiments/sngan_cifar10.py --workdir runs/sngan_cifar10
    genlab eval --workdir runs/sngan_cifar10        # fid, kid, is (and fd, precision, ...)

The networks of experiments/dcgan_cifar10.py, the "standard CNN" of Miyato et al. 2018
(Spectral Normalization for GANs, ICLR 2018), Table 3: G with BatchNorm as there (Table 3
(a)); D with no BatchNorm and every layer spectrally normalized, one power-iteration step
per update (§2.1), leaky ReLU of slope 0.1 (Table 3's caption). Where each hyper-parameter
comes from:
  * the hinge loss: Eq. (17) ("SN-GANs, Eq.(17)" rows of Table 2);
  * Adam α = 2e-4, β1 = 0.5, β2 = 0.999, one D step per G step (n_dis = 1): setting C of
    Table 1 (Radford et al.'s), one of the six the paper trains the standard CNN with
    (Fig. 1); its ResNet uses β1 = 0, β2 = 0.9, n_dis = 5 instead, not this;
  * batch 64 and 100,000 generator updates: the paper's training setup (§4);
  * z ∈ R¹²⁸ ~ N(0, I): Table 3 (a).
These were taken from the paper as recalled while writing this file, without a copy at
hand (none could be reached from where genlab is built): check them against it before
quoting a comparison. One public reproduction of this standard-CNN SNGAN, read to check
them (w86763777/pytorch-gan-collections, configs/SNGAN_CIFAR10_CNN.txt and sngan.py), trains
it with the same hinge loss, learning rate 2e-4, n_dis = 1, 100,000 steps and z ∈ R¹²⁸ (an
earlier version; 100 later), but Adam β1 = 0, β2 = 0.9 (its default) and batch 128, and
reports IS 7.84 ± 0.12 and FID 17.81 (50,000 samples against the train set, with its own
PyTorch Inception metrics, pytorch_gan_metrics).

What to expect: Miyato et al. 2018, Table 2, report for the standard CNN on CIFAR-10 IS
7.58 ± 0.12 and FID 25.5 with the hinge loss (7.42 ± 0.08 and 29.3 with the non-saturating
one), computed with TensorFlow's Inception and the sample counts of the paper's Appendix B,
not genlab's 50,000 samples against the 50,000 train images with clean-fid's resize: the
protocol in eval.json says which. No run of this config was made here (no accelerator in
this session). Accelerator time, an estimate from the step's arithmetic (about 0.3 TFLOP
per step), not a measurement: about half an hour of one H100 for the 100,000 steps, and a
few minutes for `genlab eval` (100,000 images through the Inception; the real ones' features
are cached). As in dcgan_cifar10, the Inception metrics run only in `genlab eval`.
"""

import pathlib

from genlab.config import load_experiment


def get_config():
  config = load_experiment(pathlib.Path(__file__).with_name("dcgan_cifar10.py"))
  config.data.augment = ""  # Miyato et al. train on the images as they are.
  config.num_steps = 100_000  # §4: 100K generator updates.
  config.model.discriminator.update(
    batch_norm=False,
    spectral_norm=True,
    activation="leaky_relu:0.1",  # Table 3's caption.
  )
  config.gan.update(generator_loss="hinge", n_disc=1)  # Eq. (17); Table 1, setting C.
  config.optimizer.update(learning_rate=2e-4, b1=0.5, b2=0.999)  # Table 1, setting C.
  # genlab's defaults, the usual convention of published FIDs: 50,000 samples against the
  # 50,000 train images, clean-fid's resize.
  config.sample_metrics.update(
    inception_real_split="train",
    inception_n_real=50_000,
    inception_n_fake=50_000,
    inception_resize="clean",
  )
  return config
