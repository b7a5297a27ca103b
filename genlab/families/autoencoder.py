"""Autoencoders on the shared trainer: reconstruct the input, or map it to a target.

The model maps `batch['image']` to `batch['target']` when the dataset has
targets (image → map) and back to `batch['image']` otherwise. The loss is the
per-example MSE (or Bernoulli cross-entropy from logits, `config.loss='bce'`),
averaged over the global batch.

With `config.corruption` (e.g. `gaussian:0.5`, see `genlab.corruptions`) the
model sees a corrupted input and is trained against the clean one: a denoising
autoencoder. The noise of each example comes from its own key,
`example_keys(stream_key(step_key, 'corruption'), batch['index'])`. Evaluation
corrupts the test inputs the same way from a fixed key, so test metrics are
comparable across steps.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from genlab import corruptions, image_metrics, losses
from genlab.core import (
  Metrics,
  TrainState,
  example_keys,
  gradient_step,
  make_optimizer,
  masked_sum,
  stream_key,
  to_host,
)
from genlab.data import scale_values, scaled_mean
from genlab.errors import ConfigError
from genlab.families.base import Family, Report, Views
from genlab.views import image_grid

NSS_FIXATION_FRACTION = 0.1  # NSS fixations: the target map's top 10% of pixels.


def target_of(batch) -> jax.Array:
  """What the model must output: the target map if the data has one, else the input."""
  return batch["target"] if "target" in batch else batch["image"]


class AutoencoderViews(Views):
  """Inputs above outputs (denoising: noisy input, clean image, output; image → map:
  input, target map, predicted map) for the same test examples at every step."""

  def __init__(self, family):
    super().__init__(family)
    self._predict = jax.jit(lambda params, x: family.model.apply({"params": params}, x)[0])

  def images(self, state, batch, step):
    family = self.family
    n = int(batch["mask"].sum())
    model_input = np.asarray(family.model_input(batch, family.eval_key))
    output = self._predict(state.params["model"], model_input)
    rows, labels = [model_input], ["input"]
    if family.corrupt is not None:
      rows.append(batch["image"])
      labels = ["noisy input", "clean"]
    if "target" in batch:
      rows.append(batch["target"])
      labels.append("target")
    rows.append(to_host(output))
    labels.append("output")
    name = "prediction" if "target" in batch else "reconstruction"
    name = "denoising" if family.corrupt is not None else name
    grid = image_grid([r[:n] for r in rows], labels=labels, value_range=family.value_range)
    return {name: grid}


class AutoencoderReport(Report):
  definitions = {
    "mse": "mean over test examples of the per-example mean squared error over pixels",
    "mse_mean_baseline": "the same MSE when every prediction is the mean training target",
    "mse_to_baseline_ratio": "mse / mse_mean_baseline",
    "loss": "the training loss (config.loss) on the test split",
    "psnr": "denoising: mean over test images of the PSNR (dB) of the output against the "
    "clean image, data range = the value range's width",
    "psnr_noisy": "the same for the corrupted input (clipped to the value range)",
    "ssim": "denoising, images ≥ 11×11: mean SSIM (Wang et al. 2004, gaussian σ 1.5)",
    "ssim_noisy": "the same for the corrupted input",
    "cc": "image → map: mean Pearson correlation of predicted and target maps",
    "kld": "image → map: mean KL(target ‖ prediction) of the sum-normalised maps (nats)",
    "nss": "image → map: mean standardised prediction at the target's top-10% pixels",
    "sim": "image → map: mean Σ min(p, t) of the sum-normalised maps",
  }

  def protocol(self):
    config = self.family.config
    return {"loss": config.loss, "corruption": config.get("corruption", "") or "none"}


class Autoencoder(Family):
  """Reconstruction (or image → map) with a single model and optimizer."""

  views = AutoencoderViews
  report = AutoencoderReport

  # genlab's models `config.model.name` may name; a subclass with a model of its own (the
  # VQ-VAE) names it here and keeps the rest.
  models = ("conv_ae", "sparse_ae")
  reads = ("loss", "corruption")
  model_arguments = ("output_shape", "kernels", "dtype")

  def __init__(self, config, dataset, **kwargs):
    super().__init__(config, dataset, **kwargs)
    model_class, fields = self.model_class()
    if config.loss not in losses.RECONSTRUCTION_LOSSES:
      raise ConfigError(
        f"config.loss={config.loss!r}; choose one of {losses.RECONSTRUCTION_LOSSES}"
      )
    self.model = self.build(model_class, output_shape=dataset.target_shape, **fields)
    self.tx = make_optimizer(config.optimizer)
    self.corrupt = corruptions.parse(config.get("corruption", ""), value_range=self.value_range)
    # Test inputs are corrupted from this fixed key: the same noise at every evaluation.
    self.eval_key = stream_key(self.root_key, "eval_corruption")

  def init_state(self, key, batch) -> TrainState:
    params = self.model.init(key, jnp.asarray(batch["image"][:1]))["params"]
    return TrainState.create(params={"model": params}, tx={"model": self.tx})

  def model_input(self, batch, key: jax.Array) -> jax.Array:
    """The (per-example corrupted, if configured) input the model sees."""
    if self.corrupt is None:
      return batch["image"]
    keys = example_keys(stream_key(key, "corruption"), batch["index"])
    return jax.vmap(self.corrupt)(keys, batch["image"])

  def per_example_loss(self, params, batch, key) -> tuple[jax.Array, dict, dict]:
    """(loss, {'mse': ...}, the model's aux) with one value per example."""
    model_input = self.model_input(batch, key)
    output, aux = self.model.apply({"params": params}, model_input)
    target = target_of(batch)
    mse = losses.mean_squared_error(output, target)
    if self.config.loss == "bce":
      loss = losses.sigmoid_binary_cross_entropy(aux["logits"], target)
    else:
      loss = mse
    return loss, {"mse": mse}, {**aux, "output": output, "input": model_input}

  def batch_loss(self, params, batch, key) -> tuple[jax.Array, dict]:
    """The training objective, the mean over the batch, and its parts."""
    loss, parts, _ = self.per_example_loss(params, batch, key)
    return jnp.mean(loss), jax.tree.map(jnp.mean, parts)

  def train_step(self, state, batch, key) -> tuple[TrainState, Metrics]:
    return gradient_step(state, "model", lambda params: self.batch_loss(params, batch, key))

  def encode(self, params, batch):
    """The code of each (uncorrupted) input."""
    return {"code": self.model.apply({"params": params}, batch["image"], method="encode")}

  def eval_step(self, state, batch) -> Metrics:
    loss, parts, aux = self.per_example_loss(state.params["model"], batch, self.eval_key)
    return self.eval_sums(loss, parts, aux, batch)

  def eval_sums(self, loss, parts, aux, batch) -> Metrics:
    """The masked sums of the per-example `loss` and `parts`, with the denoising or
    image → map metrics of the outputs in `aux` where they apply."""
    if self.corrupt is not None:  # Denoising: the output and the noisy input against the clean.
      parts.update(self.denoising_metrics(aux["output"], aux["input"], batch["image"]))
    if "target" in batch and batch["target"].shape[-1] == 1:  # Image → map.
      parts.update(self.map_metrics(aux["output"], batch["target"]))
    mask = batch["mask"]
    return {"loss": masked_sum(loss, mask), **{k: masked_sum(v, mask) for k, v in parts.items()}}

  def map_metrics(self, predicted, target) -> dict[str, jax.Array]:
    """Saliency-benchmark metrics of predicted maps against target maps (shifted to be
    non-negative). NSS takes as fixations the target's top 10% of pixels per map."""
    lo = self.value_range[0]
    predicted, target = predicted - lo, target - lo
    flat = target.reshape(target.shape[0], -1)
    cut = jnp.quantile(flat, 1.0 - NSS_FIXATION_FRACTION, axis=1)
    fixations = (target >= cut[:, None, None, None]).astype(jnp.float32)
    return {
      "cc": image_metrics.saliency_cc(predicted, target),
      "kld": image_metrics.saliency_kld(predicted, target),
      "nss": image_metrics.saliency_nss(predicted, fixations),
      "sim": image_metrics.saliency_sim(predicted, target),
    }

  def denoising_metrics(self, output, noisy, clean) -> dict[str, jax.Array]:
    """PSNR (and SSIM where the images are at least 11×11, its window) of the output and of
    the noisy input, against the clean image, with data_range = the value range's width."""
    lo, hi = self.value_range
    noisy = jnp.clip(noisy, lo, hi)  # What a viewer of the noisy image sees.
    out = {
      "psnr": image_metrics.psnr(output, clean, data_range=hi - lo),
      "psnr_noisy": image_metrics.psnr(noisy, clean, data_range=hi - lo),
    }
    if min(clean.shape[1:3]) >= 11:
      out["ssim"] = image_metrics.ssim(output, clean, data_range=hi - lo)
      out["ssim_noisy"] = image_metrics.ssim(noisy, clean, data_range=hi - lo)
    return out

  def reference_metrics(self, metrics):
    """MSE on the test split of always predicting the mean training target, and the
    measured MSE's ratio to it."""
    train = self.dataset.train.get("target", self.dataset.train["image"])
    test = self.dataset.test.get("target", self.dataset.test["image"])
    mean = scaled_mean(train, self.value_range)
    test = scale_values(test, self.value_range)
    per_example = ((test - mean) ** 2).reshape(len(test), -1).mean(axis=1)
    baseline = {"mse_mean_baseline": float(per_example.mean())}
    if "mse" in metrics:
      baseline["mse_to_baseline_ratio"] = metrics["mse"] / baseline["mse_mean_baseline"]
    return baseline
