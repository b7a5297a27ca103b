"""Model families: each provides step functions to the shared trainer."""

from genlab.errors import ConfigError
from genlab.families.autoencoder import Autoencoder
from genlab.families.base import Family
from genlab.families.classifier import Classifier
from genlab.families.gan import GAN
from genlab.families.recurrent_ae import RecurrentAutoencoder
from genlab.families.sparse_ae import SparseAutoencoder
from genlab.families.vae import VariationalAutoencoder

FAMILIES: dict[str, type[Family]] = {
  "autoencoder": Autoencoder,
  "vae": VariationalAutoencoder,
  "gan": GAN,
  "sparse_autoencoder": SparseAutoencoder,
  "recurrent_autoencoder": RecurrentAutoencoder,
  "classifier": Classifier,
}


def get_family(name: str) -> type[Family]:
  """The family class registered under `name`."""
  if name not in FAMILIES:
    raise ConfigError(f"unknown family {name!r}; choose one of {sorted(FAMILIES)}")
  return FAMILIES[name]


__all__ = [
  "FAMILIES",
  "GAN",
  "Autoencoder",
  "Classifier",
  "Family",
  "RecurrentAutoencoder",
  "SparseAutoencoder",
  "VariationalAutoencoder",
  "get_family",
]
