"""The Flax modules of genlab's families: pure `flax.linen` modules, no training logic.

(A user's model may be a `flax.nnx.Module` too: the families take it through
`genlab.core.NNXModel`; docs/extending.md, "Your model in NNX".)

A config names its model by `config.model.name` (`REGISTRY`): one of genlab's below, a
model of the user's own registered with `register_model` or declared by an installed
package (entry-point group `genlab.models`), or a 'package.module:Class' path. The family
builds it with `config.model`'s other fields (`genlab.families.Family.model_class`).

The modules with layers that genlab has XLA:CPU kernels for (Dense, ConvTranspose,
LSTM/GRU) take them from `genlab.kernels` through their `kernels` field (`flax` by
default); the transformer uses flax's layers as they are. `activations` reads and
replaces any Flax model's (Linen or NNX) intermediate activations (an SAE's host).
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

from genlab.errors import ConfigError
from genlab.models.activations import HostModel, capture, splice
from genlab.models.classifier import ImageClassifier
from genlab.models.conv_ae import ConvAutoencoder, ConvDecoder, ConvEncoder, activation_fn
from genlab.models.gan import Discriminator, Generator
from genlab.models.mlp import MLP
from genlab.models.recurrent_ae import RecurrentAutoencoder, SequenceDecoder, SequenceEncoder
from genlab.models.transformer import CausalTransformer
from genlab.models.vae import VAE, reparameterize
from genlab.models.vq_vae import VQVAE, VectorQuantizer
from genlab.registry import Registry


def _check_model(name: str, target: Any) -> None:
  if not isinstance(target, type):
    raise ConfigError(f"model {name!r} is a {type(target).__name__}, not a module class")


REGISTRY = Registry(
  "model",
  field="config.model.name",
  group="genlab.models",
  builtins={
    "classifier": "genlab.models.classifier:ImageClassifier",
    "conv_ae": "genlab.models.conv_ae:ConvAutoencoder",
    "discriminator": "genlab.models.gan:Discriminator",
    "generator": "genlab.models.gan:Generator",
    "rnn_ae": "genlab.models.recurrent_ae:RecurrentAutoencoder",
    "sparse_ae": "genlab.sae.model:SparseAutoencoder",  # The SAE layer's (genlab.sae).
    "transformer": "genlab.models.transformer:CausalTransformer",
    "vae": "genlab.models.vae:VAE",
    "vq_vae": "genlab.models.vq_vae:VQVAE",
  },
  check=_check_model,
)


def register_model(name: str, model: Any = None, *, replace: bool = False):
  """Registers a model class (Linen or NNX) under `name`, for `config.model.name`; with no
  `model`, a class decorator. A run records where the class is defined, so that `genlab
  eval` finds it again (the module must be importable: docs/extending.md)."""
  return REGISTRY.register(name, model, replace=replace)


def field_defaults(module: type, *, skip: tuple[str, ...] = ()) -> dict[str, Any]:
  """A module class's constructor fields with their defaults (`None` where a field has
  none), leaving out `skip` and the fields every Linen module has (`parent`, `name`)."""
  out = {}
  if dataclasses.is_dataclass(module):  # Linen: the dataclass fields.
    for field in dataclasses.fields(module):
      if field.name in ("parent", "name", *skip) or not field.init:
        continue
      if field.default is not dataclasses.MISSING:
        out[field.name] = field.default
      elif field.default_factory is not dataclasses.MISSING:
        out[field.name] = field.default_factory()
      else:
        out[field.name] = None
  else:  # NNX (or any class): the constructor's keyword parameters, but `rngs`.
    for parameter in list(inspect.signature(module.__init__).parameters.values())[1:]:
      if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
        continue
      if parameter.name in ("rngs", *skip):
        continue
      default = parameter.default
      out[parameter.name] = None if default is parameter.empty else default
  return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


__all__ = [
  "MLP",
  "REGISTRY",
  "VAE",
  "VQVAE",
  "CausalTransformer",
  "ConvAutoencoder",
  "ConvDecoder",
  "ConvEncoder",
  "Discriminator",
  "Generator",
  "HostModel",
  "ImageClassifier",
  "RecurrentAutoencoder",
  "SequenceDecoder",
  "SequenceEncoder",
  "VectorQuantizer",
  "activation_fn",
  "capture",
  "field_defaults",
  "register_model",
  "reparameterize",
  "splice",
]
