"""What a model family gives the shared trainer.

A family builds its model(s) and optimizer(s) from the config and the dataset's
shapes, and provides pure step functions. The trainer (`genlab.train.loop`)
compiles them for the chosen parallel mode and runs them; no family has a loop
of its own.
"""

from __future__ import annotations

import abc
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from genlab.data import Dataset
from genlab.train.parallel import pmean
from genlab.train.state import TrainState, all_finite, optimization_metrics

Metrics = dict[str, jax.Array]


class Family(abc.ABC):
  """Step functions and evaluation of one model family.

  Args:
    config: the experiment config.
    dataset: the loaded dataset (for shapes and baselines).
  """

  def __init__(self, config: ml_collections.ConfigDict, dataset: Dataset):
    self.config = config
    self.dataset = dataset
    self.value_range = tuple(config.data.range)

  def model_fields(self, *names: str) -> tuple[str, dict[str, Any]]:
    """`config.model` as (name, the other fields), the name checked against `names`."""
    from genlab.errors import ConfigError

    fields = self.config.model.to_dict()
    name = fields.pop("name", None)
    if name not in names:
      raise ConfigError(
        f"family {self.config.family!r} takes config.model.name in {names}, got {name!r}"
      )
    return name, fields

  def build(self, module: type, **fields: Any):
    """`module(**fields)`, a field it does not take reported as a config error. With
    `config.dtype='bfloat16'` the module computes in bf16 (`dtype`); its params stay fp32."""
    from genlab.errors import ConfigError

    dtype = self.config.get("dtype", "float32")
    if dtype != "float32":
      if "dtype" not in getattr(module, "__dataclass_fields__", {}):
        raise ConfigError(f"config.dtype={dtype!r}: {module.__name__} computes in float32 only")
      fields["dtype"] = jnp.dtype(dtype)
    try:
      return module(**fields)
    except TypeError as e:
      raise ConfigError(f"config.model: {e}") from e

  @abc.abstractmethod
  def init_state(self, key: jax.Array, batch: dict[str, np.ndarray]) -> TrainState:
    """A fresh state, shaped by an example batch."""

  @abc.abstractmethod
  def train_step(
    self, state: TrainState, batch: dict[str, jax.Array], key: jax.Array, *, axis_name: str | None
  ) -> tuple[TrainState, Metrics]:
    """One update; gradients and metrics averaged with `pmean(..., axis_name)`."""

  @abc.abstractmethod
  def eval_step(self, state: TrainState, batch: dict[str, jax.Array]) -> Metrics:
    """Sums over the batch's examples where `batch['mask']` is 1 (no averaging)."""

  def image_rows(
    self, state: TrainState, batch: dict[str, np.ndarray]
  ) -> dict[str, list[np.ndarray]]:
    """Named image grids to write, each a list of rows (N, H, W, C): input, output, ..."""
    return {}

  def reference_metrics(self) -> dict[str, Any]:
    """Metrics of trivial baselines on the test split, for `genlab eval`."""
    return {}

  def summarize(self, means: dict[str, Any]) -> dict[str, Any]:
    """Turns the per-example means of `eval_step`'s sums into the reported metrics."""
    return means

  # Set to a function like `eval_step` for metrics too costly for periodic eval
  # (the VAE's importance-sampled NLL); `genlab eval` runs it too.
  final_eval_step = None

  def prepare(self) -> None:
    """One-off work before training or evaluation (a GAN trains its feature network here),
    run before the trainer takes over SIGTERM/SIGINT."""
    return

  def distribution_metrics(self, state: TrainState) -> dict[str, Any]:
    """Metrics of the model as a whole (e.g. a GAN's Fréchet distance), added to every eval."""
    return {}

  def extra_images(self, state: TrainState, step: int) -> dict[str, np.ndarray]:
    """Further views (uint8 RGB images) written beside the grids of `image_rows`."""
    return {}

  def sample(self, state: TrainState, key: jax.Array, num: int) -> np.ndarray:
    """`num` generated examples (N, H, W, C) in the data's value range, for `genlab sample`."""
    from genlab.errors import GenlabError

    raise GenlabError(f"the {type(self).__name__} family does not generate samples")

  def protocol(self) -> dict[str, Any]:
    """Settings that say how the family's eval numbers were obtained (for eval.json)."""
    return {}

  def definitions(self) -> dict[str, str]:
    """What each reported metric is, in words (for eval.json)."""
    return {}


class SingleModelFamily(Family):
  """A family with one model and one optimizer (`params['model']`), trained on the batch
  mean of a loss: it provides `batch_loss`, and the step is shared."""

  @abc.abstractmethod
  def batch_loss(self, params, batch, key, *, axis_name) -> tuple[jax.Array, dict]:
    """The training objective on this device's part of the batch, and its parts."""

  def train_step(self, state, batch, key, *, axis_name) -> tuple[TrainState, Metrics]:
    def loss_fn(params):
      return self.batch_loss(params, batch, key, axis_name=axis_name)

    (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params["model"])
    grads = pmean(grads, axis_name)
    metrics = pmean({"loss": loss, **parts}, axis_name)
    metrics.update(optimization_metrics(grads, state.params["model"]))
    return state.apply_gradients({"model": grads}, finite=all_finite(metrics)), metrics
