"""Causal language models on the shared trainer: next-token prediction over token sequences.

The data are token sequences (`Dataset.modality` 'tokens', e.g. the embedded
`pydoc_text`) with a `length` each. Position t's logits predict token t + 1, for t
= 0 … length − 2; the loss is the cross-entropy in nats per predicted token,
averaged over each sequence's predictions, then over sequences.

Reported on the test split: `cross_entropy` (nats per predicted token, mean over
sequences), `bits_per_token`, `token_accuracy` (argmax right), and from `genlab
eval` the unigram baseline (`cross_entropy_unigram_baseline`: the train split's
token frequencies, add-one smoothed). Views: greedy continuations of test prefixes.

A trained language model is also a host for sparse autoencoders (`host_model`,
the `activation_sae` family).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from genlab.core import Metrics, TrainState, gradient_step, make_optimizer, masked_sum, to_host
from genlab.data.sequences import decode_text
from genlab.errors import DataError
from genlab.families.base import Family, Report, Views
from genlab.models.activations import HostModel
from genlab.views import figure_pixels, subplots


def next_token_targets(batch) -> tuple[jax.Array, jax.Array]:
  """((B, T) the token each position predicts, (B, T) 1 where that prediction counts):
  position t predicts token t + 1 when t + 1 < length; the last position predicts nothing."""
  tokens = batch["image"]
  targets = jnp.concatenate([tokens[:, 1:], jnp.zeros_like(tokens[:, :1])], axis=1)
  t = jnp.arange(tokens.shape[1])[None, :]
  return targets, (t + 1 < batch["length"][:, None]).astype(jnp.float32)


def next_token_loss(logits: jax.Array, batch) -> tuple[jax.Array, jax.Array]:
  """((B, T) cross-entropy of each position's next token, nats; (B, T) weights)."""
  targets, weights = next_token_targets(batch)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
  return loss * weights, weights


def per_sequence_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
  return jnp.sum(values * weights, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1.0)


class LanguageModelViews(Views):
  """Greedy continuations of the first test sequences' first 12 tokens."""

  prefix = 12

  def images(self, state, batch, step):
    test = self.family.dataset.test
    n = min(8, len(test["image"]))
    lengths = np.minimum(test["length"][:n], self.prefix)
    prefixes = np.where(np.arange(test["image"].shape[1]) < lengths[:, None], test["image"][:n], 0)
    out = self.family.continue_text(state.params["model"], prefixes, lengths, steps=20)
    lines = []
    for i in range(n):
      lines += [
        f"text   {decode_text(test['image'][i][: test['length'][i]])!r}",
        f"greedy {decode_text(out[i][: lengths[i]])!r} + {decode_text(out[i][lengths[i] :])!r}",
      ]
    fig, ax = subplots(figsize=(8, 0.19 * 2 * n + 0.3))
    ax.axis("off")
    ax.text(0, 1, "\n".join(lines), family="monospace", fontsize=9, va="top")
    return {"continuations": figure_pixels(fig, dpi=90)}


class LanguageModelReport(Report):
  def protocol(self):
    return {"split": "test", "predicted_tokens": "positions 0 … length − 2 (next token)"}

  definitions = {
    "loss": "the training loss: cross-entropy per predicted token, mean over test sequences",
    "cross_entropy": "nats per predicted token (position t predicts token t + 1), averaged "
    "over each test sequence's predictions, then over sequences",
    "bits_per_token": "cross_entropy / ln 2",
    "token_accuracy": "fraction of a sequence's next tokens predicted right (argmax), mean "
    "over test sequences",
    "cross_entropy_unigram_baseline": "the same cross-entropy when every next token is "
    "predicted by the train split's token frequencies (add-one smoothed)",
    "cross_entropy_to_unigram_ratio": "cross_entropy / cross_entropy_unigram_baseline",
  }


class LanguageModel(Family):
  """Next-token prediction with a `CausalTransformer` (`config.model.name='transformer'`)."""

  views = LanguageModelViews
  report = LanguageModelReport
  models = ("transformer",)
  model_arguments = ("vocab_size", "max_length", "kernels", "dtype")

  def __init__(self, config, dataset, **kwargs):
    super().__init__(config, dataset, **kwargs)
    if dataset.modality != "tokens":
      raise DataError(
        f"the language_model family needs token sequences; {dataset.name} holds "
        f"{dataset.modality}s (token sets: pydoc_text)"
      )
    self.value_range = None  # Token ids are used as they are.
    self.vocab_size = int(max(dataset.train["image"].max(), dataset.test["image"].max())) + 1
    model_class, fields = self.model_class()
    self.model = self.build(
      model_class,
      vocab_size=self.vocab_size,
      max_length=dataset.train["image"].shape[1],
      **fields,
    )
    self.tx = make_optimizer(config.optimizer)
    self._logits = jax.jit(lambda params, x: self.model.apply({"params": params}, x))

  def init_state(self, key, batch) -> TrainState:
    params = self.model.init(key, jnp.asarray(batch["image"][:1]))["params"]
    return TrainState.create(params={"model": params}, tx={"model": self.tx})

  def per_example(self, params, batch) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(cross-entropy per sequence, its metrics per sequence)."""
    logits = self.model.apply({"params": params}, batch["image"])
    loss, weights = next_token_loss(logits, batch)
    targets, _ = next_token_targets(batch)
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    ce = per_sequence_mean(loss, weights)
    return ce, {"cross_entropy": ce, "token_accuracy": per_sequence_mean(correct, weights)}

  def train_step(self, state, batch, key) -> tuple[TrainState, Metrics]:
    del key  # Deterministic.

    def loss_fn(params):
      loss, parts = self.per_example(params, batch)
      return jnp.mean(loss), jax.tree.map(jnp.mean, parts)

    return gradient_step(state, "model", loss_fn)

  def eval_step(self, state, batch) -> Metrics:
    loss, parts = self.per_example(state.params["model"], batch)
    mask = batch["mask"]
    return {"loss": masked_sum(loss, mask), **{k: masked_sum(v, mask) for k, v in parts.items()}}

  def summarize(self, means):
    return {**means, "bits_per_token": float(means["cross_entropy"]) / np.log(2.0)}

  def reference_metrics(self, metrics):
    """The unigram model's cross-entropy on the test predictions (train frequencies,
    add-one smoothed over the vocabulary)."""
    train, test = self.dataset.train, self.dataset.test
    counts = np.bincount(train["image"][train["image"] > 0].ravel(), minlength=self.vocab_size)
    log_p = np.log((counts + 1) / (counts + 1).sum())
    targets, weights = (np.asarray(a) for a in next_token_targets(jax.device_get(test)))
    per_sequence = (-log_p[targets] * weights).sum(1) / np.maximum(weights.sum(1), 1)
    baseline = float(per_sequence.mean())
    return {
      "cross_entropy_unigram_baseline": baseline,
      "cross_entropy_to_unigram_ratio": metrics["cross_entropy"] / baseline,
    }

  def host_model(self, params, layer: str, *, skip_first: int = 0, description: str = ""):
    """This model as the host of an SAE reading `layer` (e.g. `'block_1'`, the residual
    stream after the second block): every valid position from `skip_first` on is an example;
    the host's loss is the next-token cross-entropy."""

    def positions(batch):
      t = jnp.arange(batch["image"].shape[1])[None, :]
      return ((t >= skip_first) & (t < batch["length"][:, None])).astype(jnp.float32)

    return HostModel(
      model=self.model,
      params=params,
      layer=layer,
      inputs=lambda batch: (batch["image"],),
      positions=positions,
      token_loss=next_token_loss,
      description=description,
    )

  def continue_text(self, params, prefixes: np.ndarray, lengths: np.ndarray, steps: int):
    """Greedy continuations: each prefix extended by `steps` argmax tokens (host arrays)."""
    tokens = np.array(prefixes)
    for i in range(steps):
      at = lengths + i
      inside = at < tokens.shape[1]
      logits = to_host(self._logits(params, jnp.asarray(tokens)))
      rows = np.arange(len(tokens))[inside]
      tokens[rows, at[inside]] = np.argmax(logits[rows, at[inside] - 1, 1:], axis=-1) + 1
    return tokens
