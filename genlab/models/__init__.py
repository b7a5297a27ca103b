"""Model families' Flax modules."""

from genlab.models.conv_ae import ConvAutoencoder, ConvDecoder, ConvEncoder, activation_fn

__all__ = ["ConvAutoencoder", "ConvDecoder", "ConvEncoder", "activation_fn"]
