"""Model families, found by the name a config gives them (`config.family`).

`REGISTRY` knows genlab's own families (below, imported on first use), those registered
with `register_family`, those installed packages declare under the entry-point group
`genlab.families`, and any 'package.module:Class' path (`genlab.registry`). A family is a
`Family` subclass: its maths, its views and its words (docs/extending.md).
"""

from __future__ import annotations

from typing import Any

from genlab.errors import ConfigError
from genlab.families.base import Family, Report, Views
from genlab.registry import Registry


def _check_family(name: str, target: Any) -> None:
  if not (isinstance(target, type) and issubclass(target, Family)):
    raise ConfigError(
      f"family {name!r} is {target!r}, not a subclass of genlab.Family (docs/extending.md)"
    )


REGISTRY = Registry(
  "family",
  field="config.family",
  group="genlab.families",
  builtins={
    "activation_sae": "genlab.families.activation_sae:ActivationSAE",
    "autoencoder": "genlab.families.autoencoder:Autoencoder",
    "classifier": "genlab.families.classifier:Classifier",
    "contractive_autoencoder": "genlab.families.contractive_ae:ContractiveAutoencoder",
    "gan": "genlab.families.gan:GAN",
    "language_model": "genlab.families.language_model:LanguageModel",
    "recurrent_autoencoder": "genlab.families.recurrent_ae:RecurrentAutoencoder",
    "sparse_autoencoder": "genlab.families.sparse_ae:SparseAutoencoder",
    "vae": "genlab.families.vae:VariationalAutoencoder",
    "vq_vae": "genlab.families.vq_vae:VectorQuantizedVAE",
  },
  check=_check_family,
)


def get_family(name: str) -> type[Family]:
  """The family class `name` names (see `REGISTRY`)."""
  return REGISTRY.get(name)


def register_family(name: str, family: type[Family] | str | None = None, *, replace=False):
  """Registers a `Family` subclass (or its 'package.module:Class' path) under `name`, for
  `config.family`; with no `family`, a class decorator. A run records where the class is
  defined, so that `genlab eval` finds it again: define it in an importable module."""
  return REGISTRY.register(name, family, replace=replace)


__all__ = ["REGISTRY", "Family", "Report", "Views", "get_family", "register_family"]
