"""VQ-VAE (van den Oord et al. 2017): an autoencoder whose code is a map of codebook entries.

The model (`genlab.models.vq_vae.VQVAE`, `config.model.name='vq_vae'`) encodes an image to
a (H', W', D) map z_e, replaces each position by its nearest of K codebook vectors e_k and
decodes the map of codes; gradients pass the quantiser straight through (z_q = z_e +
sg(e_k − z_e)). The loss per example is the autoencoder's reconstruction loss
(`config.loss`, the pixel MSE by default) plus

    β · ‖z_e − sg(e_k)‖²   (the commitment loss, `vq.commitment`)
    + ‖sg(z_e) − e_k‖²      (the codebook loss, with `vq.codebook_update='loss'`)

each a mean over the map's positions and D. With `vq.codebook_update='ema'` the codebook is instead
the moving average of the encoder outputs assigned to each code (the paper's appendix,
as Sonnet's `VectorQuantizerEMA`, `ema_update`): the codebook and the averages are not
trained but updated after each step from the step's batch, and live in
`state.stats['model']`.

With `vq.dead_code_reinit`, a code that no position of the last `vq.dead_after` training
examples chose is dead, and at the start of the next step it takes an encoder output
drawn at random from the step's (global) batch with the step's key (`draw_codes`): the
same draw on any number of devices. `state.stats['model']['unused_examples']` counts, for
each code, the training examples since it was last chosen.

Evaluation (test split): `loss`, `mse` (and the autoencoder's `mse_mean_baseline`,
`mse_to_baseline_ratio` in `genlab eval`), `commitment`, `codebook_loss` (codebook_update='loss'),
and from the counts of each code's use over every position of every test image
(`code_usage`): `perplexity` = exp(entropy of the usage distribution), `codebook_usage`
(the fraction of codes used) and `dead_codes` (the number unused). Train logs show the
batch's perplexity and the codes dead before the step. Views: reconstructions and the
codes' usage on the test split.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from genlab.core import Metrics, TrainState, gradient_step, stream_key, to_host
from genlab.data import scale_values
from genlab.errors import ConfigError
from genlab.families.autoencoder import Autoencoder, AutoencoderReport, AutoencoderViews
from genlab.views import figure_pixels, subplots

UPDATES = ("loss", "ema")
NEVER = 2**30  # Cap of the examples-since-used count, far from int32 overflow.


def options(**overrides) -> ml_collections.ConfigDict:
  """`config.vq`, the VQ-VAE family's options, with their defaults."""
  group = ml_collections.ConfigDict(
    {
      "commitment": 0.25,  # β, the weight of the commitment loss ‖z_e − sg(e)‖².
      # How the codebook learns: loss (a parameter trained by ‖sg(z_e) − e‖²) | ema (moving
      # averages of the encoder outputs each code is chosen for; not trained, in state.stats).
      "codebook_update": "loss",
      "decay": 0.99,  # γ of the moving averages (ema).
      "epsilon": 1e-5,  # Laplace smoothing of the codes' moving-average counts (ema).
      # Dead codes (unused for dead_after training examples) take encoder outputs drawn from
      # the step's batch.
      "dead_code_reinit": False,
      "dead_after": 6400,  # Training examples without use after which a code is dead.
    }
  )
  group.update(overrides)
  return group


# The maths, as pure functions --------------------------------------------------------


def _mean_per_example(values: jax.Array) -> jax.Array:
  return jnp.mean(values.reshape(values.shape[0], -1), axis=1)


def commitment_loss(z_e: jax.Array, codes: jax.Array) -> jax.Array:
  """‖z_e − sg(e)‖² per example, a mean over positions and D: pulls the encoder to its codes."""
  return _mean_per_example(jnp.square(z_e - jax.lax.stop_gradient(codes)))


def codebook_loss(z_e: jax.Array, codes: jax.Array) -> jax.Array:
  """‖sg(z_e) − e‖² per example, a mean over positions and D: pulls the codes to the encoder."""
  return _mean_per_example(jnp.square(jax.lax.stop_gradient(z_e) - codes))


def code_counts(indices: jax.Array, codebook_size: int, weights=None) -> jax.Array:
  """How many positions chose each code (K,), float32; `weights` (one per example) weigh
  each example's positions (the eval mask)."""
  one_hot = jax.nn.one_hot(indices.reshape(indices.shape[0], -1), codebook_size)
  per_example = jnp.sum(one_hot, axis=1)
  if weights is not None:
    per_example = per_example * weights[:, None]
  return jnp.sum(per_example, axis=0)


def code_usage(counts) -> dict[str, jax.Array]:
  """From each code's use count (K,): `perplexity` = exp(−Σ_k p_k log p_k), p the counts
  normalised (0 log 0 = 0), `codebook_usage` the fraction of codes used and `dead_codes`
  the number never used."""
  counts = jnp.asarray(counts, jnp.float32)
  p = counts / jnp.sum(counts)
  entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
  used = counts > 0
  return {
    "perplexity": jnp.exp(entropy),
    "codebook_usage": jnp.mean(used),
    "dead_codes": jnp.sum(~used),
  }


def ema_update(
  ema: dict[str, jax.Array], z: jax.Array, indices: jax.Array, *, decay: float, epsilon: float
) -> dict[str, jax.Array]:
  """Sonnet's `VectorQuantizerEMA` update from a batch's vectors `z` (..., D) and their codes.

  `ema` holds `cluster_size` (K,) and `embedding_sum` (K, D), the zero-started moving
  averages h ← h − (1 − γ)(h − x) of each code's count n_k and of the sum of its vectors,
  and `count`, the updates made; the averages proper are h / (1 − γᵗ) (debiased, t =
  count). The codebook becomes each code's averaged sum over its Laplace-smoothed count,
  N_k = (n̄_k + ε) / (n̄ + Kε) · n̄ with n̄ = Σ_k n̄_k, so that an unused code divides by ε·n̄/(n̄
  + Kε), not by 0. Returns the new `ema`, with the new `codebook`.
  """
  codebook_size = ema["cluster_size"].shape[0]
  flat = z.reshape(-1, z.shape[-1]).astype(jnp.float32)
  one_hot = jax.nn.one_hot(indices.reshape(-1), codebook_size, dtype=jnp.float32)
  count = ema["count"] + 1
  hidden_size = ema["cluster_size"] - (1.0 - decay) * (ema["cluster_size"] - one_hot.sum(0))
  hidden_sum = ema["embedding_sum"] - (1.0 - decay) * (ema["embedding_sum"] - one_hot.T @ flat)
  debias = 1.0 - jnp.power(decay, count.astype(jnp.float32))
  size, total = hidden_size / debias, hidden_sum / debias
  n = jnp.sum(size)
  smoothed = (size + epsilon) / (n + codebook_size * epsilon) * n
  return {
    "codebook": total / smoothed[:, None],
    "cluster_size": hidden_size,
    "embedding_sum": hidden_sum,
    "count": count,
  }


def draw_codes(
  key: jax.Array, candidates: jax.Array, codebook: jax.Array, dead: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """Dead codes re-initialised: each row k of `codebook` (K, D) with `dead[k]` becomes a
  row of `candidates` (N, D), drawn from `key` (without replacement when N ≥ K). Returns
  (the new codebook, the K drawn rows)."""
  num = candidates.shape[0]
  picks = jax.random.choice(key, num, (codebook.shape[0],), replace=num < codebook.shape[0])
  drawn = candidates[picks].astype(codebook.dtype)
  return jnp.where(dead[:, None], drawn, codebook), drawn


# The family ----------------------------------------------------------------------------

# The model's sizes (`genlab.models.vq_vae.VQVAE`), each a positive integer or a sequence of
# them, and what each counts: 0 or less fails deep inside Flax or XLA (an argmin over no
# codes, a division by zero), far from the field.
VQ_VAE_SIZES = {
  "codebook_size": "the number of codes K",
  "code_dim": "the size D of a code",
  "features": "each conv stage's channels",
  "kernel_size": "the conv kernels' sides",
  "strides": "the conv strides",
  "decoder_kernel_size": "the decoder's kernel sides",
}


def check_positive_sizes(model, sizes: dict[str, str]) -> None:
  """Refuses a field of `model` (built from `config.model`) named in `sizes` that is not a
  positive integer or a sequence of them, naming the field and what it counts; a field
  the model lacks (a model of the user's own) or leaves None is not checked."""
  for name, meaning in sizes.items():
    value = getattr(model, name, None)
    if value is None:
      continue
    many = isinstance(value, (tuple, list))
    values = tuple(value) if many else (value,)
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in values):
      continue
    shown = tuple(values) if many else value
    must = "hold positive integers" if many else "be a positive integer"
    raise ConfigError(f"config.model.{name}={shown!r} must {must} (1 or more): {meaning}")


class VQVAEViews(AutoencoderViews):
  """The reconstructions and the codes' use on the test split, most used first."""

  def images(self, state, batch, step):
    family = self.family
    params = family.model_params(state.params["model"], state.stats["model"])
    views = super().images(state.replace(params={**state.params, "model": params}), batch, step)
    views["code_usage"] = self._usage_plot(family.test_code_counts(state), step)
    return views

  def _usage_plot(self, counts, step):
    usage = {k: float(v) for k, v in code_usage(counts).items()}
    fig, ax = subplots(figsize=(5, 3))
    share = np.sort(counts / max(counts.sum(), 1))[::-1]
    ax.bar(np.arange(len(share)), share, width=1.0)
    ax.axhline(1 / len(share), color="k", linestyle="--", label="uniform")
    ax.legend()
    ax.set(
      xlabel="codes, most used first",
      ylabel="share of test positions",
      title=f"step {step}: perplexity {usage['perplexity']:.1f} of {len(share)}, "
      f"{int(usage['dead_codes'])} unused",
    )
    return figure_pixels(fig)


class VQVAEReport(AutoencoderReport):
  definitions = {
    **AutoencoderReport.definitions,
    "loss": "mean over test examples of the reconstruction loss (config.loss) + β·commitment "
    "(+ codebook_loss with vq.codebook_update='loss')",
    "commitment": "mean over test examples of ‖z_e − e‖², a mean over code positions and "
    "dimensions, e the nearest code to the encoder output z_e",
    "codebook_loss": "the same value as commitment; its gradient trains the codebook "
    "(vq.codebook_update='loss')",
    "perplexity": "exp(−Σ_k p_k log p_k), p_k the share of the test split's code positions "
    "(every position of every image) that chose code k; at most the codebook size",
    "codebook_usage": "fraction of codes chosen at least once on the test split",
    "dead_codes": "number of codes chosen nowhere on the test split",
  }

  def protocol(self):
    family = self.family
    options = family.options
    protocol = {
      **super().protocol(),
      "codebook_size": family.codebook_size,
      "code_dim": family.model.code_dim,
      "commitment": options.commitment,
      "codebook_update": options.codebook_update,
      "dead_code_reinit": options.dead_code_reinit,
      "usage_counted_over": "every code position of every test image",
    }
    if family.ema:
      protocol.update(decay=options.decay, epsilon=options.epsilon)
    if options.dead_code_reinit:
      protocol["dead_after_examples"] = options.dead_after
    return protocol


class VectorQuantizedVAE(Autoencoder):
  """An `Autoencoder` with `config.model.name='vq_vae'`: a quantised code map, the
  commitment (and codebook) losses, EMA codebooks and dead-code re-initialisation."""

  views = VQVAEViews
  report = VQVAEReport

  options_group = "vq"
  default_options = staticmethod(options)
  models = ("vq_vae",)
  headline = ("loss", "mse", "perplexity")

  def __init__(self, config, dataset, **kwargs):
    super().__init__(config, dataset, **kwargs)
    self.options = self.family_options()
    if self.options.codebook_update not in UPDATES:
      raise ConfigError(
        f"config.vq.codebook_update={self.options.codebook_update!r}; choose one of {UPDATES}"
      )
    if not 0.0 <= self.options.decay < 1.0:
      raise ConfigError(f"config.vq.decay={self.options.decay} must lie in [0, 1)")
    if self.options.dead_after < 1:
      raise ConfigError(f"config.vq.dead_after={self.options.dead_after} must be positive")
    check_positive_sizes(self.model, VQ_VAE_SIZES)
    self.ema = self.options.codebook_update == "ema"
    self.codebook_size = self.model.codebook_size

  # State: the codebook in params (codebook_update='loss') or in stats ('ema') ---------------

  def init_state(self, key, batch) -> TrainState:
    params = self.model.init(key, jnp.asarray(batch["image"][:1]))["params"]
    stats = {"unused_examples": jnp.zeros((self.codebook_size,), jnp.int32)}
    if self.ema:
      params = dict(params)
      codebook = params.pop("quantizer")["codebook"]
      stats.update(
        codebook=codebook,
        cluster_size=jnp.zeros((self.codebook_size,), jnp.float32),
        embedding_sum=jnp.zeros_like(codebook),
        count=jnp.zeros((), jnp.int32),
      )
    return TrainState.create(
      params={"model": params}, tx={"model": self.tx}, stats={"model": stats}
    )

  def model_params(self, params, stats):
    """The model's parameters: the trained `params`, with the codebook from `stats` when it
    is a moving average."""
    if not self.ema:
      return params
    return {**params, "quantizer": {"codebook": stats["codebook"]}}

  def codebook(self, state: TrainState) -> jax.Array:
    """The codebook (K, D) of `state`."""
    stats = state.stats["model"]
    return self.model_params(state.params["model"], stats)["quantizer"]["codebook"]

  # Maths --------------------------------------------------------------------------------

  def vq_loss(self, params, stats, batch, key) -> tuple[jax.Array, dict, dict]:
    """(loss, parts, aux) per example: the reconstruction loss, β·commitment and (codebook_update=
    'loss') the codebook loss; aux as the model's, with the `output` and `input`."""
    reconstruction, parts, aux = self.per_example_loss(self.model_params(params, stats), batch, key)
    parts["commitment"] = commitment_loss(aux["z_e"], aux["codes"])
    loss = reconstruction + self.options.commitment * parts["commitment"]
    if not self.ema:
      parts["codebook_loss"] = codebook_loss(aux["z_e"], aux["codes"])
      loss = loss + parts["codebook_loss"]
    return loss, parts, aux

  def reinit_dead_codes(self, state: TrainState, batch, key) -> TrainState:
    """`state` with each dead code replaced by an encoder output of `batch` (`draw_codes`,
    from the step's key); its use count and, with codebook_update='ema', its moving averages restart
    as if it had been chosen once for that vector. The encoder runs only if a code is dead."""
    stats = state.stats["model"]
    dead = stats["unused_examples"] >= self.options.dead_after

    def reinit(parts):
      params, stats = parts
      model_params = self.model_params(params, stats)
      x = self.model_input(batch, key)
      z_e = self.model.apply({"params": model_params}, x, method="encode")
      candidates = jax.lax.stop_gradient(z_e).reshape(-1, z_e.shape[-1]).astype(jnp.float32)
      codebook, drawn = draw_codes(
        stream_key(key, "dead_codes"), candidates, model_params["quantizer"]["codebook"], dead
      )
      stats = {**stats, "unused_examples": jnp.where(dead, 0, stats["unused_examples"])}
      if not self.ema:
        return {**params, "quantizer": {"codebook": codebook}}, stats
      # The averages proper are the hidden values over (1 − γᵗ): set them to n̄_k = 1, sum = e_k.
      debias = 1.0 - jnp.power(self.options.decay, stats["count"].astype(jnp.float32))
      stats["codebook"] = codebook
      stats["cluster_size"] = jnp.where(dead, debias, stats["cluster_size"])
      stats["embedding_sum"] = jnp.where(dead[:, None], debias * drawn, stats["embedding_sum"])
      return params, stats

    parts = (state.params["model"], stats)
    params, stats = jax.lax.cond(jnp.any(dead), reinit, lambda parts: parts, parts)
    return state.replace(
      params={**state.params, "model": params}, stats={**state.stats, "model": stats}
    )

  def train_step(self, state, batch, key) -> tuple[TrainState, Metrics]:
    dead = jnp.sum(state.stats["model"]["unused_examples"] >= self.options.dead_after)
    if self.options.dead_code_reinit:
      state = self.reinit_dead_codes(state, batch, key)
    stats = state.stats["model"]

    def loss_fn(params):
      loss, parts, aux = self.vq_loss(params, stats, batch, key)
      indices = aux["indices"]
      counts = code_counts(indices, self.codebook_size)
      parts = jax.tree.map(jnp.mean, parts)
      parts["perplexity"] = code_usage(counts)["perplexity"]
      parts["dead_codes"] = dead  # Before this step's re-initialisation.
      examples = batch["image"].shape[0]
      unused = jnp.where(counts > 0, 0, jnp.minimum(stats["unused_examples"] + examples, NEVER))
      new_stats = {**stats, "unused_examples": unused}
      if self.ema:
        ema = {k: stats[k] for k in ("cluster_size", "embedding_sum", "count")}
        z_e = jax.lax.stop_gradient(aux["z_e"])
        new_stats.update(
          ema_update(ema, z_e, indices, decay=self.options.decay, epsilon=self.options.epsilon)
        )
      return jnp.mean(loss), (parts, new_stats)

    return gradient_step(state, "model", loss_fn, has_stats=True)

  def eval_step(self, state, batch) -> Metrics:
    loss, parts, aux = self.vq_loss(
      state.params["model"], state.stats["model"], batch, self.eval_key
    )
    sums = self.eval_sums(loss, parts, aux, batch)
    sums["code_counts"] = code_counts(aux["indices"], self.codebook_size, batch["mask"])
    return sums

  def summarize(self, means):
    """`perplexity`, `codebook_usage` and `dead_codes` from the codes' use on the split."""
    means = dict(means)
    counts = np.asarray(means.pop("code_counts"))
    usage = code_usage(counts)
    means["perplexity"] = float(usage["perplexity"])
    means["codebook_usage"] = float(usage["codebook_usage"])
    means["dead_codes"] = int(usage["dead_codes"])
    return means

  def test_code_counts(self, state: TrainState) -> np.ndarray:
    """Each code's use count over every position of the test split's (uncorrupted) images."""
    x = scale_values(self.dataset.test["image"], self.value_range)
    size = self.config.eval_batch_size or self.config.batch_size
    params = self.model_params(state.params["model"], state.stats["model"])

    @jax.jit
    def counts(params, x):
      z_e = self.model.apply({"params": params}, x, method="encode")
      _, quantized = self.model.apply({"params": params}, z_e, method="quantize")
      return code_counts(quantized["indices"], self.codebook_size)

    return sum(to_host(counts(params, x[i : i + size])) for i in range(0, len(x), size))
