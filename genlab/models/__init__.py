"""Model families' Flax modules."""

from genlab.models.conv_ae import ConvAutoencoder, ConvDecoder, ConvEncoder, activation_fn
from genlab.models.conv_transpose import ConvTranspose, conv_transpose

__all__ = [
  "ConvAutoencoder",
  "ConvDecoder",
  "ConvEncoder",
  "ConvTranspose",
  "activation_fn",
  "conv_transpose",
]
