"""The Flax modules of genlab's families: pure `flax.linen` modules, no training logic.

Every module takes its Dense / ConvTranspose / recurrent layers from
`genlab.kernels` through its `kernels` field (`flax` by default).
"""

from genlab.models.classifier import ImageClassifier
from genlab.models.conv_ae import ConvAutoencoder, ConvDecoder, ConvEncoder, activation_fn
from genlab.models.gan import Discriminator, Generator
from genlab.models.mlp import MLP
from genlab.models.recurrent_ae import RecurrentAutoencoder, SequenceDecoder, SequenceEncoder
from genlab.models.sparse_ae import SparseAutoencoder
from genlab.models.vae import VAE, reparameterize
from genlab.models.vq_vae import VQVAE, VectorQuantizer

__all__ = [
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
  "reparameterize",
]
