"""Variational autoencoders on the shared trainer.

Train step (keyed, per example): x is the batch image, or with
`vae.binarize='dynamic'` a Bernoulli draw from it; ε for z = μ + σ·ε comes from
`example_keys(stream_key(key, 'z'), batch['index'])`, so an example's sample
does not depend on the device count. The loss is the batch mean of

    −log p(x|z) + β_t · KL(q(z|x) ‖ N(0, I)),   β_t = β · min(1, step / kl_warmup_steps),

with the KL in closed form. `neg_elbo` (β = 1), `reconstruction` (−log p(x|z))
and `kl` are reported separately, in nats per example.

With `vae.objective='iwae'` (Burda et al. 2016) the loss is instead the batch mean
of the negative importance-weighted bound with k = `vae.train_k` samples,

    −L_k = −log (1/k) Σ_i p(x|z_i) p(z_i) / q(z_i|x),   z_i ~ q(z|x),

computed by the same on-device sampler as `nll` below (sample i of an example is
keyed by (its key, i)); L_k ≥ the ELBO of the same samples, and it tightens as k
grows. `train_k = 1` is the ELBO objective itself (closed-form KL), which L_1 equals
in expectation; β and the KL warm-up apply to the ELBO only.

With `vae.conditional` (a conditional VAE, Sohn et al. 2015) every term is given the
example's label y: q(z|x, y), p(x|z, y), and `nll` estimates −log p(x|y); samples
cycle through the classes, and the samples view has one row per class.

Evaluation (test split, fixed keys so numbers are comparable across steps):
`neg_elbo`, `reconstruction`, `kl` (one z per example), `kl_per_dim`, and
`active_units` (dimensions d with Var_x(E_q[z_d|x]) > 0.01, Burda et al. 2016).
`genlab eval` adds `nll`: the importance-sampled negative log-likelihood

    −log p(x) ≈ −log (1/k) Σ_i p(x|z_i) p(z_i) / q(z_i|x),   z_i ~ q(z|x),

with k = `vae.nll_k` samples (5,000 by default), computed on device: a scan
over chunks of samples, vectorised over examples and samples, with a running
log-sum-exp.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from genlab import losses
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
from genlab.data import scale_values
from genlab.errors import ConfigError
from genlab.families.base import Family, Report, Views
from genlab.models.vae import VAE, reparameterize
from genlab.views import categorical_colours, class_rows, figure_pixels, image_grid, subplots

ACTIVE_UNIT_THRESHOLD = 0.01
NLL_ROWS_PER_CHUNK = 8192  # Decoder rows (examples × samples) per scan step.


def options(**overrides) -> ml_collections.ConfigDict:
  """`config.vae`, the VAE family's options, with their defaults."""
  group = ml_collections.ConfigDict(
    {
      "beta": 1.0,  # Weight of the KL term.
      "kl_warmup_steps": 0,  # β ramps linearly from 0 over these steps (0: no warm-up).
      "binarize": "none",  # none | dynamic (a fresh Bernoulli draw of x at every step).
      "nll_k": 5000,  # Importance samples per test example for `nll` in `genlab eval`.
      "objective": "elbo",  # elbo | iwae (the k-sample importance-weighted bound).
      "train_k": 5,  # Samples per example of the iwae objective (1: the elbo objective).
      # A conditional VAE: the label feeds the encoder and the decoder (needs labels).
      "conditional": False,
    }
  )
  group.update(overrides)
  return group


class VAEViews(Views):
  """Reconstructions (of the posterior means), 64 samples from the prior, linear and
  spherical interpolations between test images, and the latent cloud."""

  def images(self, state, batch, step):
    family, params = self.family, state.params["model"]
    n = int(batch["mask"].sum())
    x = np.asarray(family.observe(batch, family.eval_key))[:n]
    y = None if family.labels(batch) is None else np.asarray(batch["label"])[:n]
    mean, _ = family.posterior(params, x, y)
    views = {
      "reconstruction": image_grid(
        [x, to_host(family.mean_image(params, mean, y))],
        labels=["x", "E[x|z=μ(x)]"],
        value_range=family.value_range,
      )
    }
    key = stream_key(family.eval_key, "prior_samples")
    if family.num_classes is not None:  # One row per class, the same 8 z in each.
      z = jax.random.normal(key, (8, family.model.latent_dim))
      views["samples"] = class_rows(
        lambda z, y: family.mean_image(params, z, y), z, family.num_classes, family.value_range
      )
    else:
      samples = family.sample(state, key, 64)
      views["samples"] = image_grid(
        list(samples.reshape(8, 8, *samples.shape[1:])), value_range=family.value_range
      )
    test = family.dataset.test
    pairs = min(4, len(test["image"]) // 2)
    if pairs:
      x = scale_values(test["image"][: 2 * pairs], family.value_range)
      y = family.test_labels(2 * pairs)
      mean, _ = family.posterior(params, x, y)
      starts, ends = to_host((mean[0::2], mean[1::2]))
      t = np.linspace(0.0, 1.0, 8)
      # A conditional VAE decodes the whole path with the starting image's label.
      path_labels = None if y is None else jnp.repeat(y[0::2], len(t))
      for name, path in (("interpolation_linear", lerp), ("interpolation_spherical", slerp)):
        z = np.stack([path(a, b, t) for a, b in zip(starts, ends, strict=True)])  # (pairs, 8, K)
        images = to_host(family.mean_image(params, z.reshape(-1, z.shape[-1]), path_labels))
        views[name] = image_grid(
          list(images.reshape(pairs, 8, *images.shape[1:])),
          labels=[f"test {2 * i} → {2 * i + 1}" for i in range(pairs)],
          value_range=family.value_range,
        )
    views["latent_cloud"] = self.latent_cloud(params, step)
    return views

  def latent_cloud(self, params, step: int) -> np.ndarray:
    """Posterior means of the test split in 2-D (first two principal axes when K > 2)."""
    family = self.family
    x = scale_values(family.dataset.test["image"][:2000], family.value_range)
    y = family.test_labels(2000)
    mean = np.concatenate(
      [
        to_host(family.posterior(params, x[i : i + 500], None if y is None else y[i : i + 500])[0])
        for i in range(0, len(x), 500)
      ]
    )
    if mean.shape[1] > 2:
      centred = mean - mean.mean(axis=0)
      _, _, vt = np.linalg.svd(centred, full_matrices=False)
      points, axes = centred @ vt[:2].T, ("principal axis 1", "principal axis 2")
    else:
      points, axes = np.pad(mean, ((0, 0), (0, 2 - mean.shape[1]))), ("z1", "z2")
    labels = family.dataset.test.get("label")
    fig, ax = subplots(figsize=(5, 5), dpi=100)
    if labels is None:
      ax.scatter(points[:, 0], points[:, 1], s=6)
    else:
      labels = np.asarray(labels[: len(points)])
      classes = np.unique(labels)
      colours = categorical_colours(len(classes))
      for colour, value in zip(colours, classes, strict=True):  # Classes, not a colour scale.
        where = labels == value
        ax.scatter(points[where, 0], points[where, 1], s=6, color=colour, label=str(value))
      ax.legend(title="label", fontsize=7, markerscale=2, loc="best", ncols=2)
    ax.set(xlabel=axes[0], ylabel=axes[1], title=f"E[z|x], {len(points)} test images, step {step}")
    return figure_pixels(fig)


class VAEReport(Report):
  definitions = {
    "neg_elbo": "mean over test examples of −log p(x|z) + KL(q(z|x) ‖ N(0, I)), one z each, nats",
    "reconstruction": "mean over test examples of −log p(x|z), one z ~ q(z|x) each, nats",
    "kl": "mean over test examples of the closed-form KL(q(z|x) ‖ N(0, I)), nats",
    "nll": "mean over test examples of the importance-sampled −log p(x), nll_k samples from "
    "q(z|x) each, nats (with conditional_on in the protocol, every term is given the label y: "
    "−log p(x|y), q(z|x, y), p(x|z, y))",
    "kl_per_dim": "mean KL of each latent dimension",
    "active_units": "latent dimensions with Var over test x of E_q[z_d|x] > 0.01",
    "neg_elbo_bits_per_dim": "neg_elbo in bits per dimension: neg_elbo / (D · ln 2), D the "
    "values of an image (the protocol's bits_per_dim)",
    "nll_bits_per_dim": "nll in bits per dimension: nll / (D · ln 2) (the protocol's bits_per_dim)",
  }

  def protocol(self):
    options = self.family.options
    return {
      "objective": options.objective,
      **({"conditional_on": "label"} if options.conditional else {}),
      **({"train_k": options.train_k} if options.objective == "iwae" else {}),
      "nll_k": options.nll_k,
      "binarize": options.binarize,
      "z_samples_for_elbo": 1,
      "active_unit_threshold": ACTIVE_UNIT_THRESHOLD,
      "likelihood": self.family.model.likelihood,
      **(
        {
          "bits_per_dim": f"nats / (D · ln 2), D = H·W·C = {self.family.dims} values per "
          "image; −log₂ of the probability of the 8-bit values: discretized logistic, 256 "
          "bins of width 2/255 on [-1, 1] (bin k at k·2/255 − 1), the edge bins (values 0 "
          "and 255) taking the tails"
        }
        if self.family.bits_per_dim
        else {}
      ),
    }


class VariationalAutoencoder(Family):
  """A VAE (μ, σ of a gaussian code, reparameterised) trained on reconstruction + β·KL, or
  on the IWAE bound; optionally conditional.

  See the module docstring for the objective and the metrics."""

  views = VAEViews
  report = VAEReport

  options_group = "vae"
  default_options = staticmethod(options)
  eval_overrides = ("vae.nll_k",)
  sample_evaluators = ""  # It samples; which metrics of its samples, its experiments say.
  models = ("vae",)
  model_arguments = ("output_shape", "num_classes", "kernels", "dtype")

  def __init__(self, config, dataset, **kwargs):
    super().__init__(config, dataset, **kwargs)
    model_class, fields = self.model_class()
    options = self.family_options()
    if options.conditional:
      self.num_classes = self.conditional_classes("config.vae.conditional")
    self.model = self.build(
      model_class, output_shape=dataset.image_shape, num_classes=self.num_classes, **fields
    )
    if options.binarize not in ("none", "dynamic"):
      raise ConfigError("config.vae.binarize must be 'none' or 'dynamic'")
    if options.objective not in ("elbo", "iwae"):
      raise ConfigError(f"config.vae.objective={options.objective!r}; choose elbo or iwae")
    if not isinstance(options.train_k, int) or options.train_k < 1:
      raise ConfigError(f"config.vae.train_k must be a positive integer, got {options.train_k!r}")
    if self.model.likelihood == "bernoulli" and self.value_range != (0.0, 1.0):
      raise ConfigError(
        "a Bernoulli decoder needs data in [0, 1]: set config.data.range=(0.0, 1.0)"
      )
    if self.model.likelihood == "discretized_logistic" and (
      self.value_range != (-1.0, 1.0) or options.binarize != "none"
    ):
      raise ConfigError(
        "a discretized logistic decoder reads 8-bit images mapped onto [-1, 1], bin k at "
        "k·2/255 − 1: set config.data.range=(-1.0, 1.0) and config.vae.binarize='none'"
      )
    self.options = options
    self.tx = make_optimizer(config.optimizer)
    self.eval_key = stream_key(self.root_key, "vae_eval")

  # Pieces ---------------------------------------------------------------------

  def observe(self, batch, key: jax.Array) -> jax.Array:
    """The x the model is trained on: the image, or a per-example binarization of it."""
    if self.options.binarize == "none":
      return batch["image"]
    keys = example_keys(stream_key(key, "binarize"), batch["index"])
    draw = jax.vmap(lambda k, p: jax.random.bernoulli(k, p).astype(p.dtype))
    return draw(keys, batch["image"])

  def log_likelihood(self, decoded: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    """log p(x|z) per example (nats)."""
    if "logits" in decoded:
      return losses.bernoulli_log_likelihood(decoded["logits"], x)
    if "log_scale" in decoded:
      return losses.discretized_logistic_log_likelihood(x, decoded["mean"], decoded["log_scale"])
    return losses.gaussian_log_density(x, decoded["mean"], decoded["logvar"])

  def labels(self, batch) -> jax.Array | None:
    """The batch's labels for a conditional VAE; None otherwise."""
    return batch["label"] if self.options.conditional else None

  def test_labels(self, n: int) -> jax.Array | None:
    """The first `n` test labels (int32) for a conditional VAE's views; None otherwise."""
    if not self.options.conditional:
      return None
    return jnp.asarray(np.asarray(self.dataset.test["label"][:n]), jnp.int32)

  def elbo_terms(self, params, batch, key):
    x = self.observe(batch, key)
    keys = example_keys(stream_key(key, "z"), batch["index"])
    decoded, aux = self.model.apply({"params": params}, x, keys, self.labels(batch))
    reconstruction = -self.log_likelihood(decoded, x)
    kl_per_dim = losses.kl_to_standard_normal_per_dim(aux["mean"], aux["logvar"])
    return reconstruction, kl_per_dim, aux

  def beta(self, step: jax.Array) -> jax.Array:
    warmup = self.options.kl_warmup_steps
    ramp = jnp.minimum(1.0, step.astype(jnp.float32) / warmup) if warmup else 1.0
    return self.options.beta * ramp

  # Family interface -------------------------------------------------------------

  def init_state(self, key, batch) -> TrainState:
    x = jnp.asarray(batch["image"][:1])
    labels = None if not self.options.conditional else jnp.asarray(batch["label"][:1])
    params = self.model.init(key, x, jax.random.split(key, 1), labels)["params"]
    return TrainState.create(params={"model": params}, tx={"model": self.tx})

  def iwae_bound(self, params, batch, key, k: int) -> jax.Array:
    """L_k per example: the k-sample importance-weighted bound on log p(x), with the
    train step's keys (sample i of an example from (its z key, i))."""
    x = self.observe(batch, key)
    keys = example_keys(stream_key(key, "z"), batch["index"])
    return -importance_sampled_nll(
      self.model,
      params,
      x,
      keys,
      num_samples=k,
      log_likelihood=self.log_likelihood,
      labels=self.labels(batch),
    )

  def train_step(self, state, batch, key) -> tuple[TrainState, Metrics]:
    if self.options.objective == "iwae" and self.options.train_k > 1:
      k = self.options.train_k

      def iwae_loss(params):
        neg_bound = -jnp.mean(self.iwae_bound(params, batch, key, k))
        return neg_bound, {"neg_iwae_bound": neg_bound}

      return gradient_step(state, "model", iwae_loss)
    beta = self.beta(state.step)

    def loss_fn(params):
      reconstruction, kl_per_dim, _ = self.elbo_terms(params, batch, key)
      kl = jnp.sum(kl_per_dim, axis=1)
      parts = {"reconstruction": reconstruction.mean(), "kl": kl.mean()}
      parts["neg_elbo"] = parts["reconstruction"] + parts["kl"]
      return jnp.mean(reconstruction + beta * kl), {**parts, "beta": beta}

    return gradient_step(state, "model", loss_fn)

  def eval_step(self, state, batch) -> Metrics:
    reconstruction, kl_per_dim, aux = self.elbo_terms(state.params["model"], batch, self.eval_key)
    mask = batch["mask"]
    kl = jnp.sum(kl_per_dim, axis=1)
    return {
      "neg_elbo": masked_sum(reconstruction + kl, mask),
      "reconstruction": masked_sum(reconstruction, mask),
      "kl": masked_sum(kl, mask),
      "kl_per_dim": jnp.sum(kl_per_dim * mask[:, None], axis=0),
      "posterior_mean": jnp.sum(aux["mean"] * mask[:, None], axis=0),
      "posterior_mean_sq": jnp.sum(jnp.square(aux["mean"]) * mask[:, None], axis=0),
    }

  @property
  def bits_per_dim(self) -> bool:
    """Whether its likelihoods are of discrete 8-bit values, so that bits/dim are reported."""
    return self.model.likelihood == "discretized_logistic"

  @property
  def dims(self) -> int:
    """D, the values per example: H·W·C."""
    return int(np.prod(self.dataset.image_shape))

  def summarize(self, means):
    means = dict(means)
    if self.bits_per_dim:  # −log₂ P per value: nats / (D · ln 2).
      for name in ("neg_elbo", "nll"):
        if name in means:
          means[f"{name}_bits_per_dim"] = float(means[name]) / (self.dims * np.log(2.0))
    if "posterior_mean" in means:  # The periodic eval's sums (not the final NLL's).
      mean = np.asarray(means.pop("posterior_mean"))
      variance = np.asarray(means.pop("posterior_mean_sq")) - np.square(mean)
      means["active_units"] = int(np.sum(variance > ACTIVE_UNIT_THRESHOLD))
      means["kl_per_dim"] = [round(float(v), 5) for v in np.atleast_1d(means["kl_per_dim"])]
    return means

  def final_eval_step(self, state, batch) -> Metrics:
    """Masked sum of the importance-sampled NLL with `vae.nll_k` samples per example."""
    x = self.observe(batch, self.eval_key)
    keys = example_keys(stream_key(self.eval_key, "nll"), batch["index"])
    nll = importance_sampled_nll(
      self.model,
      state.params["model"],
      x,
      keys,
      num_samples=self.options.nll_k,
      log_likelihood=self.log_likelihood,
      labels=self.labels(batch),
    )
    return {"nll": masked_sum(nll, batch["mask"])}

  def mean_image(self, params, z, labels=None) -> jax.Array:
    """E[x|z] (E[x|z, y] with `labels`) for latents `z` (N, K)."""
    decoded = self.model.apply({"params": params}, z, labels, method="decode")
    return self.model.mean_image(decoded)

  def posterior(self, params, x, labels=None) -> tuple[jax.Array, jax.Array]:
    """(μ, log σ²) of q(z|x) (q(z|x, y) with `labels`)."""
    return self.model.apply({"params": params}, x, labels, method="encode")

  def encode(self, params, batch):
    """μ and log σ² of q(z|x) for the x evaluation sees (binarized from the fixed key)."""
    x = self.observe(batch, self.eval_key)
    mean, logvar = self.posterior(params, x, self.labels(batch))
    return {"mean": mean, "logvar": logvar}

  def sample(self, state, key: jax.Array, num: int) -> np.ndarray:
    """E[x|z] for `num` draws z ~ N(0, I) from `key`; a conditional VAE's sample i is of
    class i mod num_classes (`sample_labels`)."""
    z = jax.random.normal(key, (num, self.model.latent_dim))
    return to_host(self.mean_image(state.params["model"], z, self.sample_labels(num)))


def lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
  """Points (1−t)·a + t·b."""
  return (1.0 - t)[:, None] * a + t[:, None] * b


def slerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
  """Spherical interpolation (on the great circle through a and b; linear if they are parallel)."""
  cos = np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12)
  omega = np.arccos(np.clip(cos, -1.0, 1.0))
  if omega < 1e-6:
    return lerp(a, b, t)
  return (np.sin((1.0 - t) * omega)[:, None] * a + np.sin(t * omega)[:, None] * b) / np.sin(omega)


def importance_sampled_nll(
  model: VAE, params, x, keys, *, num_samples: int, log_likelihood, labels=None
) -> jax.Array:
  """−log p(x) per example by importance sampling from q(z|x) (see the module docstring).

  Args:
    model: the VAE.
    params: its parameters.
    x: a batch (B, H, W, C).
    keys: one key per example; sample s of example b uses fold_in(keys[b], s).
    num_samples: k.
    log_likelihood: `(decoded, x) -> log p(x|z)` per row.
    labels: (B,) labels of a conditional VAE (then −log p(x|y) is estimated), or None.

  Returns:
    (B,) estimates of −log p(x), in nats.
  """
  batch = x.shape[0]
  chunk = _chunk_size(num_samples, max(1, NLL_ROWS_PER_CHUNK // batch))
  mean, logvar = model.apply({"params": params}, x, labels, method="encode")
  latent = mean.shape[1]

  def log_weights(i):
    # Sample s of an example comes from fold_in(its key, s): the chunking changes nothing.
    sample_ids = i * chunk + jnp.arange(chunk)
    draw = lambda k, s: jax.random.normal(jax.random.fold_in(k, s), (latent,))  # noqa: E731
    eps = jax.vmap(lambda k: jax.vmap(lambda s: draw(k, s))(sample_ids))(keys)
    z = mean[:, None] + jnp.exp(0.5 * logvar)[:, None] * eps  # (B, chunk, K)
    rows = None if labels is None else jnp.repeat(labels, chunk)  # Row b·chunk + s: example b.
    decoded = model.apply(
      {"params": params}, z.reshape(batch * chunk, latent), rows, method="decode"
    )
    x_rep = jnp.broadcast_to(x[:, None], (batch, chunk, *x.shape[1:])).reshape(
      batch * chunk, *x.shape[1:]
    )
    log_px = log_likelihood(decoded, x_rep).reshape(batch, chunk)
    log_pz = -0.5 * jnp.sum(jnp.square(z) + losses.LOG_2PI, axis=-1)
    log_qz = -0.5 * jnp.sum(jnp.square(eps) + logvar[:, None] + losses.LOG_2PI, axis=-1)
    return log_px + log_pz - log_qz

  def body(carry, i):
    running_max, running_sum = carry
    lw = log_weights(i)
    new_max = jnp.maximum(running_max, lw.max(axis=1))
    new_sum = running_sum * jnp.exp(running_max - new_max) + jnp.exp(lw - new_max[:, None]).sum(
      axis=1
    )
    return (new_max, new_sum), None

  init = (jnp.full((batch,), -jnp.inf), jnp.zeros((batch,)))
  (running_max, running_sum), _ = jax.lax.scan(body, init, jnp.arange(num_samples // chunk))
  return -(running_max + jnp.log(running_sum) - jnp.log(float(num_samples)))


def _chunk_size(k: int, limit: int) -> int:
  """The largest divisor of k that is at most `limit` (so chunks tile k exactly)."""
  for size in range(min(k, limit), 0, -1):
    if k % size == 0:
      return size
  return 1


__all__ = ["VariationalAutoencoder", "importance_sampled_nll", "lerp", "reparameterize", "slerp"]
