"""A labelled-image classifier, trained by the shared loop: the feature network of GAN metrics.

Conv stack (the core's `ConvEncoder`) → Dense(`feature_dim`) → ReLU = the
features → Dense(num_classes) = the logits. Trained with cross-entropy on the
train split's labels; evaluated by test `accuracy`.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from genlab.errors import DataError
from genlab.families.base import Metrics, SingleModelFamily
from genlab.models.conv_ae import ConvEncoder
from genlab.train.parallel import masked_sum
from genlab.train.state import TrainState, make_optimizer


class ImageClassifier(nn.Module):
  """Images → (logits, features)."""

  num_classes: int
  features: Sequence[int] = (32, 64)
  feature_dim: int = 128

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    h = ConvEncoder(features=tuple(self.features), kernel_size=3, strides=2, latent_dim=None)(x)
    h = nn.relu(nn.Dense(self.feature_dim, name="features")(h.reshape(h.shape[0], -1)))
    return nn.Dense(self.num_classes, name="logits")(h), h


class Classifier(SingleModelFamily):
  """Cross-entropy classification of `batch['image']` into `batch['label']`."""

  def __init__(self, config, dataset):
    super().__init__(config, dataset)
    if "label" not in dataset.train:
      raise DataError(f"{dataset.name} has no labels: a classifier cannot be trained on it")
    _, fields = self.model_fields("classifier")
    self.num_classes = int(max(dataset.train["label"].max(), dataset.test["label"].max())) + 1
    self.model = self.build(ImageClassifier, num_classes=self.num_classes, **fields)
    self.tx = make_optimizer(config.optimizer)

  def init_state(self, key, batch) -> TrainState:
    params = self.model.init(key, jnp.asarray(batch["image"][:1]))["params"]
    return TrainState.create(params={"model": params}, tx={"model": self.tx})

  def _per_example(self, params, batch):
    logits, _ = self.model.apply({"params": params}, batch["image"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    correct = (jnp.argmax(logits, axis=-1) == batch["label"]).astype(jnp.float32)
    return loss, correct

  def batch_loss(self, params, batch, key, *, axis_name):
    del key, axis_name  # Deterministic; per-example losses.
    loss, correct = self._per_example(params, batch)
    return loss.mean(), {"accuracy": correct.mean()}

  def eval_step(self, state, batch) -> Metrics:
    loss, correct = self._per_example(state.params["model"], batch)
    return {"loss": masked_sum(loss, batch["mask"]), "accuracy": masked_sum(correct, batch["mask"])}

  def definitions(self):
    return {"accuracy": "fraction of test images whose most probable class is their label"}
