"""Recurrent autoencoders on the shared trainer: sequence → vector → sequence.

The data are sequences (`Dataset.modality` 'series' or 'tokens') with a
`length` per example; every loss and metric is a mean over each sequence's
valid steps, then over sequences (`genlab.losses.masked_sequence_mean`).

`config.sequence.target` picks the mode:
* `input` — autoencoder: reconstruct the input;
* `reversed` — encoder-decoder: output the input backwards (its valid part);
* `target` — encoder-decoder: output the dataset's `target` sequences.

Real-valued sequences train on `config.loss` = `mse`, or `gaussian_nll` (the
model also outputs a log-variance per step and feature); token sequences train
on `cross_entropy` (softmax over the vocabulary, `token_accuracy` reported).

Reported on the test split: the loss, `mse` or `cross_entropy` /
`token_accuracy` / `sequence_accuracy`, the per-sequence error's quantiles,
and with `sequence.anomaly_labels` the ROC-AUC of the per-sequence error as an
anomaly score. `genlab eval` adds baselines: for series, `mse_seq_mean_baseline`
(predict each target sequence's own per-feature mean at every step); for
tokens, the unigram baselines. Views: input vs output of test sequences, and the
anomaly scores along the test split.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from genlab import losses
from genlab.core import Metrics, TrainState, gradient_step, make_optimizer, masked_sum, to_host
from genlab.data.sequences import decode_text
from genlab.errors import ConfigError, DataError
from genlab.families.base import Family, Report, Views
from genlab.views import figure_pixels, subplots

TARGETS = ("input", "reversed", "target")
SERIES_LOSSES = ("mse", "gaussian_nll")


def options(**overrides) -> ml_collections.ConfigDict:
  """`config.sequence`, the recurrent-autoencoder family's options, with their defaults."""
  group = ml_collections.ConfigDict(
    {
      # input (autoencoder) | reversed (encoder-decoder: the input backwards) |
      # target (encoder-decoder: the dataset's `target` sequences).
      "target": "input",
      # Labels that mark anomalies: ROC-AUC of the per-sequence error as anomaly score.
      "anomaly_labels": (),
      "num_plots": 6,  # Test sequences drawn in the input-vs-output view.
    }
  )
  group.update(overrides)
  return group


def reverse_valid(x: jax.Array, lengths: jax.Array) -> jax.Array:
  """Each sequence's first `lengths[b]` steps in reverse order; padding left in place."""
  t = jnp.arange(x.shape[1])[None, :]
  index = jnp.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)
  index = index.reshape(index.shape + (1,) * (x.ndim - 2))
  return jnp.take_along_axis(x, index, axis=1)


class RecurrentAutoencoderViews(Views):
  """Targets against outputs of the first test sequences (text: input / target / output),
  and with `sequence.anomaly_labels` the anomaly score along the test series."""

  def images(self, state, batch, step) -> dict[str, np.ndarray]:
    errors, outputs = self.family.test_errors(state.params["model"])
    views = {"sequences": self._plot_sequences(outputs)}
    if self.family.anomaly_labels:
      views["anomaly_scores"] = self._plot_scores(errors)
    return views

  def _plot_sequences(self, outputs) -> np.ndarray:
    """Input | target | output of the first `num_plots` test sequences."""
    family = self.family
    test, n = family.dataset.test, min(family.options.num_plots, len(family.dataset.test["image"]))
    batch = {k: jnp.asarray(v[:n]) for k, v in test.items()}
    target, lengths = (np.asarray(a) for a in family.target_of(batch))
    if family.tokens:
      fig, ax = subplots(figsize=(8, 0.19 * 3 * n + 0.3))
      ax.axis("off")
      lines = []
      for i in range(n):
        predicted = np.argmax(outputs[i], axis=-1)[: lengths[i]]
        lines += [
          f"input  {decode_text(test['image'][i][: test['length'][i]])!r}",
          f"target {decode_text(target[i][: lengths[i]])!r}",
          f"output {decode_text(np.maximum(predicted, 1))!r}",
        ]
      ax.text(0, 1, "\n".join(lines), family="monospace", fontsize=9, va="top")
    else:
      channels = min(3, target.shape[-1])
      fig, axes = subplots(n, 1, figsize=(8, 1.6 * n), squeeze=False)
      for i, ax in enumerate(axes[:, 0]):
        steps = np.arange(lengths[i])
        for c in range(channels):
          ax.plot(steps, target[i, : lengths[i], c], color=f"C{c}", lw=1.5)
          ax.plot(steps, outputs[i, : lengths[i], c], color=f"C{c}", lw=1.0, ls="--")
        ax.set_ylabel(f"test #{i}", fontsize=8)
      axes[0, 0].set_title(f"target (solid) vs output (dashed), first {channels} features")
    return figure_pixels(fig, dpi=90)

  def _plot_scores(self, errors) -> np.ndarray:
    test = self.family.dataset.test
    anomalous = np.isin(test["label"], self.family.anomaly_labels)
    # Windows of one series: in series order, at their first sample.
    where = test.get("start", np.arange(len(errors)))
    order = np.argsort(where, kind="stable")
    where, errors, anomalous = where[order], errors[order], anomalous[order]
    fig, ax = subplots(figsize=(8, 2.5))
    ax.plot(where, errors, lw=0.8, color="C0", label="per-sequence error (anomaly score)")
    ax.scatter(where[anomalous], errors[anomalous], s=8, color="C3", label="labelled anomaly")
    ax.set_xlabel("first sample of the window" if "start" in test else "test sequence")
    ax.legend(fontsize=8)
    return figure_pixels(fig, dpi=90)


class RecurrentAutoencoderReport(Report):
  def protocol(self):
    family = self.family
    return {
      "split": "test",
      "target": family.options.target,
      "loss": family.config.loss,
      "anomaly_labels": list(family.anomaly_labels),
    }

  definitions = {
    "loss": "the training loss (config.loss) per sequence, mean over test sequences",
    "mse": "per sequence, the mean squared error over its valid steps and features; mean "
    "over test sequences",
    "mse_seq_mean_baseline": "the same MSE when each test target sequence is predicted by "
    "its own per-feature mean over its valid steps",
    "gaussian_nll": "per sequence, −log N(x; μ, σ²) averaged over valid steps and features",
    "cross_entropy": "nats per valid token, mean over test sequences",
    "token_accuracy": "fraction of a sequence's valid tokens predicted right (argmax), mean "
    "over test sequences",
    "sequence_accuracy": "fraction of test sequences with every token right",
    "token_accuracy_unigram_baseline": "token accuracy of always predicting the most "
    "frequent training token",
    "error_p50": "median over test sequences of the per-sequence loss (p90, p99, max alike)",
    "roc_auc": "ROC-AUC of the per-sequence loss as a score for the anomaly labels",
    "num_anomalies": "test sequences with an anomaly label",
    "mse_to_seq_mean_ratio": "mse / mse_seq_mean_baseline",
  }


class RecurrentAutoencoder(Family):
  """LSTM/GRU sequence autoencoder or encoder-decoder (`config.model.name='rnn_ae'`)."""

  views = RecurrentAutoencoderViews
  report = RecurrentAutoencoderReport

  options_group = "sequence"
  default_options = staticmethod(options)
  models = ("rnn_ae",)
  reads = ("loss",)
  model_arguments = ("output_dim", "output_length", "vocab_size", "gaussian", "kernels", "dtype")

  def __init__(self, config, dataset, **kwargs):
    super().__init__(config, dataset, **kwargs)
    if dataset.modality not in ("series", "tokens"):
      raise DataError(
        f"the recurrent_autoencoder family needs sequences; {dataset.name} holds "
        f"{dataset.modality}s (sequence sets: japanese_vowels, internal_bleeding, pydoc_text)"
      )
    self.value_range = None  # Sequences are used as they are: no image scaling.
    self.tokens = dataset.modality == "tokens"
    self.options = self.family_options()
    if self.options.target not in TARGETS:
      raise ConfigError(f"config.sequence.target={self.options.target!r}; choose one of {TARGETS}")
    if self.options.target == "target" and "target" not in dataset.train:
      raise ConfigError(f"config.sequence.target='target' but {dataset.name} has no targets")
    expected = ("cross_entropy",) if self.tokens else SERIES_LOSSES
    if config.loss not in expected:
      raise ConfigError(f"config.loss={config.loss!r}; {dataset.modality} take one of {expected}")
    target = dataset.train["target" if self.options.target == "target" else "image"]
    if self.tokens:
      vocab = int(max(dataset.train["image"].max(), dataset.test["image"].max(), target.max())) + 1
      output_dim, extra = vocab, {"vocab_size": vocab}
    else:
      output_dim, extra = target.shape[-1], {"gaussian": config.loss == "gaussian_nll"}
    model_class, fields = self.model_class()
    self.model = self.build(
      model_class, output_dim=output_dim, output_length=target.shape[1], **extra, **fields
    )
    self.tx = make_optimizer(config.optimizer)
    self.anomaly_labels = tuple(self.options.anomaly_labels)
    if self.anomaly_labels and "label" not in dataset.test:
      raise ConfigError("config.sequence.anomaly_labels needs a dataset with labels")
    self._per_example = jax.jit(self.per_example)  # Whole-split scores and views.

  def init_state(self, key, batch) -> TrainState:
    x, lengths = jnp.asarray(batch["image"][:1]), jnp.asarray(batch["length"][:1])
    params = self.model.init(key, x, lengths)["params"]
    return TrainState.create(params={"model": params}, tx={"model": self.tx})

  def target_of(self, batch) -> tuple[jax.Array, jax.Array]:
    """(target sequences, their lengths) for the configured mode."""
    if self.options.target == "reversed":
      return reverse_valid(batch["image"], batch["length"]), batch["length"]
    if self.options.target == "target":
      target = batch["target"]
      return target, batch.get("target_length", jnp.full(len(target), target.shape[1]))
    return batch["image"], batch["length"]

  def per_example(self, params, batch) -> tuple[jax.Array, dict[str, jax.Array], jax.Array]:
    """(loss, metrics, output) with one loss and metric value per sequence."""
    output, aux = self.model.apply({"params": params}, batch["image"], batch["length"])
    target, lengths = self.target_of(batch)
    if self.tokens:
      loss = losses.sequence_cross_entropy(output, target, lengths)
      accuracy = losses.sequence_token_accuracy(output, target, lengths)
      parts = {
        "cross_entropy": loss,
        "token_accuracy": accuracy,
        "sequence_accuracy": (accuracy == 1.0).astype(jnp.float32),
      }
      return loss, parts, output
    mse = losses.sequence_squared_error(output, target, lengths)
    if self.config.loss == "gaussian_nll":
      loss = losses.sequence_gaussian_nll(output, aux["logvar"], target, lengths)
      return loss, {"mse": mse, "gaussian_nll": loss}, output
    return mse, {"mse": mse}, output

  def train_step(self, state, batch, key) -> tuple[TrainState, Metrics]:
    del key  # Deterministic.

    def loss_fn(params):
      loss, parts, _ = self.per_example(params, batch)
      return jnp.mean(loss), jax.tree.map(jnp.mean, parts)

    return gradient_step(state, "model", loss_fn)

  def encode(self, params, batch):
    """z of each sequence (its valid steps)."""
    z = self.model.apply({"params": params}, batch["image"], batch["length"], method="encode")
    return {"z": z}

  def eval_step(self, state, batch) -> Metrics:
    loss, parts, _ = self.per_example(state.params["model"], batch)
    mask = batch["mask"]
    return {"loss": masked_sum(loss, mask), **{k: masked_sum(v, mask) for k, v in parts.items()}}

  # Whole-split views and scores, on the host, one device.

  def test_errors(self, params) -> tuple[np.ndarray, np.ndarray]:
    """Per-sequence errors (the loss) and outputs of the whole test split."""
    test, size = self.dataset.test, self.config.eval_batch_size or self.config.batch_size
    errors, outputs = [], []
    for start in range(0, len(test["image"]), size):
      batch = {k: jnp.asarray(v[start : start + size]) for k, v in test.items()}
      loss, _, output = self._per_example(params, batch)
      errors.append(to_host(loss))
      outputs.append(to_host(output))
    return np.concatenate(errors), np.concatenate(outputs)

  def distribution_metrics(self, state) -> dict:
    from sklearn.metrics import roc_auc_score

    errors, _ = self.test_errors(state.params["model"])
    metrics = {f"error_p{q}": float(np.percentile(errors, q)) for q in (50, 90, 99)} | {
      "error_max": float(errors.max())
    }
    if self.anomaly_labels:
      anomalous = np.isin(self.dataset.test["label"], self.anomaly_labels)
      if 0 < anomalous.sum() < len(anomalous):
        metrics["roc_auc"] = float(roc_auc_score(anomalous, errors))
        metrics["num_anomalies"] = int(anomalous.sum())
    return metrics

  def reference_metrics(self, metrics):
    """Baselines on the test split that need no model, and the measured MSE against the
    series' one."""
    train, test = self.dataset.train, self.dataset.test
    batch = {k: jnp.asarray(v) for k, v in test.items()}
    target, lengths = (np.asarray(a) for a in self.target_of(batch))
    mask = np.asarray(losses.step_mask(jnp.asarray(lengths), target.shape[1]))
    if self.tokens:
      counts = np.bincount(train["image"][train["image"] > 0].ravel())
      correct = ((target == np.argmax(counts)) * mask).sum(1) / lengths
      return {"token_accuracy_unigram_baseline": float(correct.mean())}
    mask = mask[..., None]
    mean = (target * mask).sum(1, keepdims=True) / lengths[:, None, None]
    per_sequence = (((target - mean) ** 2) * mask).sum((1, 2)) / (lengths * target.shape[-1])
    baseline = {"mse_seq_mean_baseline": float(per_sequence.mean())}
    if "mse" in metrics:
      baseline["mse_to_seq_mean_ratio"] = metrics["mse"] / baseline["mse_seq_mean_baseline"]
    return baseline
