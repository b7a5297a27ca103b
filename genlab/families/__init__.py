"""Model families, and the registry that names them (`config.family`).

A family is one module: its maths (a `Family`), its views and its words for
eval.json (`Views`, `Report`), registered here in one line. docs/extending.md
shows how to write one.
"""

from genlab.errors import ConfigError
from genlab.families import (
  activation_sae,
  autoencoder,
  classifier,
  contractive_ae,
  gan,
  language_model,
  recurrent_ae,
  sparse_ae,
  vae,
  vq_vae,
)
from genlab.families.base import Family, Registered, Report, Views

FAMILIES: dict[str, Registered] = {
  "autoencoder": Registered(
    autoencoder.Autoencoder, autoencoder.AutoencoderViews, autoencoder.AutoencoderReport
  ),
  "sparse_autoencoder": Registered(
    sparse_ae.SparseAutoencoder, sparse_ae.SparseAutoencoderViews, sparse_ae.SparseAutoencoderReport
  ),
  "recurrent_autoencoder": Registered(
    recurrent_ae.RecurrentAutoencoder,
    recurrent_ae.RecurrentAutoencoderViews,
    recurrent_ae.RecurrentAutoencoderReport,
  ),
  "vae": Registered(vae.VariationalAutoencoder, vae.VAEViews, vae.VAEReport),
  "gan": Registered(gan.GAN, gan.GANViews, gan.GANReport),
  "classifier": Registered(classifier.Classifier, report=classifier.ClassifierReport),
  "activation_sae": Registered(
    activation_sae.ActivationSAE,
    activation_sae.ActivationSAEViews,
    activation_sae.ActivationSAEReport,
  ),
  "language_model": Registered(
    language_model.LanguageModel,
    language_model.LanguageModelViews,
    language_model.LanguageModelReport,
  ),
  "contractive_autoencoder": Registered(
    contractive_ae.ContractiveAutoencoder,
    contractive_ae.ContractiveViews,
    contractive_ae.ContractiveReport,
  ),
  "vq_vae": Registered(vq_vae.VectorQuantizedVAE, vq_vae.VQVAEViews, vq_vae.VQVAEReport),
}


def get_family(name: str) -> Registered:
  """The family registered under `name`."""
  if name not in FAMILIES:
    raise ConfigError(f"unknown family {name!r}; choose one of {sorted(FAMILIES)}")
  return FAMILIES[name]


__all__ = ["FAMILIES", "Family", "Registered", "Report", "Views", "get_family"]
