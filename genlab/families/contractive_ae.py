"""Contractive autoencoders (Rifai et al. 2011): reconstruction plus a penalty on how much
the code moves when the input does.

    loss = mean over the batch of  mse(x̂, x) + λ · ‖∂h(x)/∂x‖²_F

with h(x) the code (`ConvAutoencoder`'s encoder, a vector of `latent_dim` units)
and λ = `contractive.weight`. The penalty, the squared Frobenius norm of the
encoder's Jacobian, is computed exactly: one vector-Jacobian product per code
unit j, with the cotangent e_j for every example at once (examples do not
interact in the encoder), so its cost grows with the code's size, not the
input's. Training differentiates it once more (a gradient of gradients).

Reported on the test split: `mse`, `contraction` (the mean penalty, without λ)
and `loss`. Views: inputs above reconstructions. This module is the worked example
of docs/extending.md: a whole family in one file, plus its registry line and its
experiment (`experiments/contractive_ae_digits.py`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from genlab import losses
from genlab.core import Metrics, TrainState, gradient_step, make_optimizer, masked_sum, to_host
from genlab.errors import ConfigError
from genlab.families.base import Family, Report, Views
from genlab.views import image_grid


def options(**overrides) -> ml_collections.ConfigDict:
  """`config.contractive`, the family's options, with their defaults."""
  group = ml_collections.ConfigDict(
    {
      "weight": 0.1,  # λ, the weight of the Jacobian penalty.
    }
  )
  group.update(overrides)
  return group


class ContractiveViews(Views):
  """Test inputs above their reconstructions."""

  def images(self, state, batch, step):
    family, n = self.family, int(batch["mask"].sum())
    output, _ = family.model.apply({"params": state.params["model"]}, batch["image"][:n])
    rows = [batch["image"][:n], to_host(output)]
    grid = image_grid(rows, labels=["input", "output"], value_range=family.value_range)
    return {"reconstruction": grid}


class ContractiveReport(Report):
  definitions = {
    "loss": "mean over test examples of mse + weight · contraction",
    "mse": "mean over test examples of the per-example mean squared error over pixels",
    "contraction": "mean over test examples of ‖∂code/∂input‖²_F, the squared Frobenius "
    "norm of the encoder's Jacobian (exact)",
  }

  def protocol(self):
    return {"weight": self.family.options.weight, "code_units": self.family.model.latent_dim}


class ContractiveAutoencoder(Family):
  """A conv autoencoder trained on reconstruction + λ·‖∂code/∂input‖²_F."""

  views = ContractiveViews
  report = ContractiveReport

  options_group = "contractive"
  default_options = staticmethod(options)
  models = ("conv_ae",)
  model_arguments = ("output_shape", "kernels", "dtype")

  def __init__(self, config, dataset, **kwargs):
    super().__init__(config, dataset, **kwargs)
    model_class, fields = self.model_class()
    if not fields.get("latent_dim"):
      raise ConfigError("a contractive autoencoder needs a vector code: set model.latent_dim")
    self.model = self.build(model_class, output_shape=dataset.image_shape, **fields)
    self.options = self.family_options()
    self.tx = make_optimizer(config.optimizer)

  def init_state(self, key, batch) -> TrainState:
    params = self.model.init(key, jnp.asarray(batch["image"][:1]))["params"]
    return TrainState.create(params={"model": params}, tx={"model": self.tx})

  def contraction(self, params, x: jax.Array) -> jax.Array:
    """‖∂h(x)/∂x‖²_F per example, exactly: row j of every example's Jacobian is the VJP
    of the batch's codes with the cotangent e_j on every example."""
    code, vjp = jax.vjp(lambda x: self.model.apply({"params": params}, x, method="encode"), x)
    units = jnp.eye(code.shape[-1], dtype=code.dtype)
    rows = jax.vmap(lambda e: vjp(jnp.broadcast_to(e, code.shape))[0])(units)  # (K, B, ...)
    return jnp.sum(jnp.square(rows.astype(jnp.float32)), axis=(0, *range(2, rows.ndim)))

  def per_example(self, params, batch) -> dict[str, jax.Array]:
    """The loss and its parts, one value per example."""
    x = batch["image"]
    output, _ = self.model.apply({"params": params}, x)
    mse = losses.mean_squared_error(output, x)
    contraction = self.contraction(params, x)
    return {"loss": mse + self.options.weight * contraction, "mse": mse, "contraction": contraction}

  def train_step(self, state, batch, key) -> tuple[TrainState, Metrics]:
    del key  # Deterministic.

    def loss_fn(params):
      parts = self.per_example(params, batch)
      loss = jnp.mean(parts.pop("loss"))
      return loss, jax.tree.map(jnp.mean, parts)

    return gradient_step(state, "model", loss_fn)

  def eval_step(self, state, batch) -> Metrics:
    parts = self.per_example(state.params["model"], batch)
    return {name: masked_sum(values, batch["mask"]) for name, values in parts.items()}

  def encode(self, params, batch):
    """The code of each input, for `genlab encode`."""
    return {"code": self.model.apply({"params": params}, batch["image"], method="encode")}
