"""The Flax modules of genlab's families: pure `flax.linen` modules, no training logic.

The modules with layers that genlab has XLA:CPU kernels for (Dense, ConvTranspose,
LSTM/GRU) take them from `genlab.kernels` through their `kernels` field (`flax` by
default); the transformer uses flax's layers as they are. `activations` reads and
replaces any linen model's intermediate activations (an SAE's host).
"""

from genlab.models.activations import HostModel, capture, splice
from genlab.models.classifier import ImageClassifier
from genlab.models.conv_ae import ConvAutoencoder, ConvDecoder, ConvEncoder, activation_fn
from genlab.models.gan import Discriminator, Generator
from genlab.models.mlp import MLP
from genlab.models.recurrent_ae import RecurrentAutoencoder, SequenceDecoder, SequenceEncoder
from genlab.models.sparse_ae import SparseAutoencoder
from genlab.models.transformer import CausalTransformer
from genlab.models.vae import VAE, reparameterize
from genlab.models.vq_vae import VQVAE, VectorQuantizer

__all__ = [
  "CausalTransformer",
  "HostModel",
  "MLP",
  "VAE",
  "VQVAE",
  "ConvAutoencoder",
  "ConvDecoder",
  "ConvEncoder",
  "Discriminator",
  "Generator",
  "ImageClassifier",
  "RecurrentAutoencoder",
  "SequenceDecoder",
  "SequenceEncoder",
  "SparseAutoencoder",
  "VectorQuantizer",
  "activation_fn",
  "capture",
  "reparameterize",
  "splice",
]
