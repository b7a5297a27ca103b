"""A labelled-image classifier on the shared trainer: the feature network of GAN metrics.

`genlab.models.ImageClassifier` trained with cross-entropy on the train split's
labels; evaluated by test `accuracy`. The run layer trains one per dataset and
caches it (`genlab.run.feature_net`).
"""

from __future__ import annotations

import jax.numpy as jnp
import optax

from genlab.core import Metrics, TrainState, gradient_step, make_optimizer, masked_sum
from genlab.errors import DataError
from genlab.families.base import Family, Report, label_count


class ClassifierReport(Report):
  definitions = {
    "loss": "mean cross-entropy of the test labels, nats",
    "accuracy": "fraction of test images whose most probable class is their label",
  }


class Classifier(Family):
  """Cross-entropy classification of `batch['image']` into `batch['label']`."""

  report = ClassifierReport
  models = ("classifier",)
  model_arguments = ("num_classes", "kernels", "dtype")

  def __init__(self, config, dataset, **kwargs):
    super().__init__(config, dataset, **kwargs)
    if "label" not in dataset.train:
      raise DataError(f"{dataset.name} has no labels: a classifier cannot be trained on it")
    model_class, fields = self.model_class()
    self.num_classes = label_count(dataset)
    self.model = self.build(model_class, num_classes=self.num_classes, **fields)
    self.tx = make_optimizer(config.optimizer)

  def init_state(self, key, batch) -> TrainState:
    params = self.model.init(key, jnp.asarray(batch["image"][:1]))["params"]
    return TrainState.create(params={"model": params}, tx={"model": self.tx})

  def per_example(self, params, batch):
    """(cross-entropy, correct) per example."""
    logits, _ = self.model.apply({"params": params}, batch["image"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    correct = (jnp.argmax(logits, axis=-1) == batch["label"]).astype(jnp.float32)
    return loss, correct

  def train_step(self, state, batch, key) -> tuple[TrainState, Metrics]:
    del key  # Deterministic.

    def loss_fn(params):
      loss, correct = self.per_example(params, batch)
      return loss.mean(), {"accuracy": correct.mean()}

    return gradient_step(state, "model", loss_fn)

  def eval_step(self, state, batch) -> Metrics:
    loss, correct = self.per_example(state.params["model"], batch)
    return {"loss": masked_sum(loss, batch["mask"]), "accuracy": masked_sum(correct, batch["mask"])}
