"""Convolutional autoencoder on TFDS `mnist` (60,000 train / 10,000 test 28×28 digits).

genlab never downloads. Prepare MNIST once where there is network, in the
array_record format genlab reads without TensorFlow:

    pip install tensorflow  # only for `tfds build`; genlab itself does not need it
    tfds build mnist --file_format=array_record   # into $TFDS_DATA_DIR or ~/tensorflow_datasets

then

    genlab train --config experiments/conv_ae_mnist.py --workdir runs/conv_ae_mnist
    genlab eval --workdir runs/conv_ae_mnist

or point `--config.dataset=/path/to/mnist.npz` at Keras' mnist.npz layout.

Architecture: 28×28×1 → Conv(32, s2) 14×14 → Conv(64, s2) 7×7 → Dense(32) →
back with cropped ConvTranspose stacks → sigmoid; MSE, Adam 1e-3, batch 128,
5,000 steps (~11 epochs). Expected: a test `mse` well under 0.3 × the
mean-image baseline (the baseline is ≈ 0.067 on MNIST); not measured in this
repository, whose machines have no copy of MNIST — the tests run this path on
`tfds.testing.mock_data`.
"""

from genlab.config import base_config


def get_config():
  config = base_config()
  config.dataset = "mnist"
  config.batch_size = 128
  config.num_steps = 5000
  config.model.update(features=(32, 64), kernel_size=3, strides=2, latent_dim=32)
  config.optimizer.learning_rate = 1e-3
  config.eval_every = 1000
  config.image_every = 1000
  config.checkpoint_every = 1000
  return config
