"""Sparse autoencoders: reconstruction plus a sparsity objective on the code.

The reconstruction term is ½·Σ_pixels (x − x̂)² per example, averaged over the
batch, plus weight decay λ/2·(‖W_enc‖² + ‖W_dec‖²) (`sparsity.weight_decay`), as
in Ng's exercise: without it the code can satisfy any mean-rate target with
tiny variations around ρ that a large decoder amplifies. `config.loss` is not
used here. `config.sparsity.kind`:
* `kl` (sigmoid codes): β · Σ_j KL(ρ ‖ ρ̂_j), ρ̂_j the mean activation of unit j
  over the global batch. It penalises units that fire more than the target
  rate ρ *and* units that fire less (Ng, "Sparse autoencoder" notes, 2011).
  Ng computes ρ̂ over the whole training set (L-BFGS); on a minibatch of B the
  penalty's own gradient also penalises each unit's variance over examples,
  by β·Var(a_j)/(2Bρ(1 − ρ)), which favours graded activity around ρ over
  firing. `sparsity.kl_gradient='leave_one_out'` removes that term; `'batch'`
  (the default) keeps the plain gradient (`kl_sparsity_penalty`). The code biases
  start at logit(ρ), every unit at the target rate (`code_bias_init`; from 0
  the early KL gradient moves the rate offset into the weights, through the
  constant direction that every mean-removed patch shares).
* `l1` (ReLU codes): λ · mean_x ‖code‖₁.
* `topk` (TopK codes, Gao et al. 2024): no penalty, k units per example; plus,
  with `aux_k` > 0, their auxiliary loss for dead latents (AuxK):
  the `aux_k` largest pre-activations among dead units (ReLU) model the main
  reconstruction's residual, weighted by `aux_weight` (their α = 1/32), so
  the gradient reaches units that the TopK would otherwise never select. A
  unit is dead when it has not been among an example's k in the last
  `aux_dead_after` training examples; the count lives in the state's
  `latent_activity` part (`auxk_reconstruction_error`).

Logged on the test split: `rho_hat_mean` (mean of ρ̂_j over units), `l0` (mean
number of active units per example), `dead_fraction` (units never active over
the whole eval pass; active means > 0 for ReLU and TopK codes, and > 0.5 for
sigmoid codes: Ng's notes call a sigmoid unit active, or firing, when its
output is close to 1 and inactive when close to 0 — 0.5 is the midpoint),
`nmse` = Σ‖x − x̂‖² / Σ‖x − x̄‖² with x̄ the mean training example (the
`mse_to_baseline_ratio` of `genlab eval`). Views: the decoder's filters and a
histogram of ρ̂_j.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from genlab import losses
from genlab.core import TrainState, gradient_step, to_host
from genlab.data import scale_values
from genlab.errors import ConfigError
from genlab.families.autoencoder import (
  Autoencoder,
  AutoencoderReport,
  AutoencoderViews,
  target_of,
)
from genlab.sae.codes import NEVER, auxk_reconstruction_error
from genlab.views import figure_pixels, image_grid, subplots

KINDS = ("kl", "l1", "topk")
KL_GRADIENTS = ("leave_one_out", "batch")


def options(**overrides) -> ml_collections.ConfigDict:
  """`config.sparsity`, the sparse-autoencoder family's options, with their defaults."""
  group = ml_collections.ConfigDict(
    {
      "kind": "kl",  # kl (sigmoid codes) | l1 (ReLU codes) | topk (TopK codes).
      "rho": 0.05,  # Target mean activation of each unit (kl).
      "beta": 3.0,  # Weight of Σ_j KL(ρ ‖ ρ̂_j) (kl).
      # Gradient of the KL (kl): batch (its own, Ng's; on a minibatch it also penalises each
      # unit's variance) | leave_one_out (example i's activation gets KL' at the mean of the
      # others). See `kl_sparsity_penalty`.
      "kl_gradient": "batch",
      "l1": 1e-3,  # Weight of the code's L1 norm (l1).
      "weight_decay": 1e-4,  # λ of λ/2·(‖W_enc‖² + ‖W_dec‖²).
      # TopK dead-latent loss (AuxK, Gao et al. 2024): the aux_k largest pre-activations of
      # dead units model the residual (0: off).
      "aux_k": 0,
      "aux_weight": 1 / 32,  # The AuxK term's weight (theirs: α = 1/32).
      # A unit is dead after this many training examples without firing (theirs: 10M tokens).
      "aux_dead_after": 10000,
    }
  )
  group.update(overrides)
  return group


def kl_sparsity_penalty(
  code: jax.Array, *, rho: float, beta: float, gradient: str = "batch"
) -> tuple[jax.Array, jax.Array]:
  """(β · Σ_j KL(ρ ‖ ρ̂_j), ρ̂) for the batch's `code` (examples × units), ρ̂ the mean
  over the batch of B, with the gradient `gradient`:

  * `batch`: the penalty's own gradient, KL'(ρ̂_j) · ∂ρ̂_j. ρ̂_j and ∂ρ̂_j come from the same
    examples, so in expectation this is the gradient of E_B[KL(ρ ‖ ρ̂_j)] ≈ KL(ρ ‖ ρ̄_j) +
    Var(a_j) / (2Bρ(1 − ρ)), ρ̄_j the full-data rate: a penalty on how much the unit's
    activation varies, which favours graded activity around ρ over firing.
  * `leave_one_out`: example i's activation a_ij gets KL' evaluated at the mean of the
    *other* B − 1 examples, which does not depend on a_ij: the full-data gradient without
    the variance term (up to an O(1/B) shift of KL' itself, as in `batch`).

  The batch is the global one: on several devices XLA computes ρ̂ from every device's
  examples (`genlab.core.step`).
  """
  if gradient not in KL_GRADIENTS:
    raise ConfigError(f"KL gradient {gradient!r}; choose one of {KL_GRADIENTS}")
  sg = jax.lax.stop_gradient
  rho_hat = jnp.mean(code, axis=0)
  if gradient == "batch":
    return beta * jnp.sum(losses.bernoulli_kl(rho, rho_hat)), rho_hat
  n = code.shape[0]
  others = sg((n * rho_hat - code) / (n - 1))
  slope = jax.grad(lambda q: jnp.sum(losses.bernoulli_kl(rho, q)))(others)
  value = beta * jnp.sum(losses.bernoulli_kl(rho, sg(rho_hat)))
  surrogate = beta * jnp.sum(jnp.mean(slope * (code - sg(code)), axis=0))
  return value + surrogate, rho_hat


VIEW_FILTERS = 256  # The decoder's filters drawn in the `filters` view (the first ones).


class SparseAutoencoderViews(AutoencoderViews):
  """The reconstructions, the decoder's first filters and a histogram of the units' rates
  ρ̂_j."""

  def images(self, state, batch, step):
    family = self.family
    params = state.params["model"]
    views = super().images(state, batch, step)
    # The first VIEW_FILTERS rows only, cut where they lie: a large dictionary is never
    # copied whole to the host for a picture.
    kernel = to_host(params["decoder"]["kernel"][:VIEW_FILTERS])  # (filters, H·W·C)
    filters = kernel.reshape(kernel.shape[0], *family.dataset.target_shape)
    lo = filters.min(axis=(1, 2, 3), keepdims=True)
    hi = filters.max(axis=(1, 2, 3), keepdims=True)
    filters = (filters - lo) / np.maximum(hi - lo, 1e-12)
    columns = int(np.ceil(np.sqrt(len(filters))))
    padded = np.concatenate([filters, np.ones((-len(filters) % columns, *filters.shape[1:]))])
    views["filters"] = image_grid(list(padded.reshape(-1, columns, *filters.shape[1:])))
    views["rho_hat_histogram"] = self._rho_histogram(family.unit_means(params), step)
    return views

  def _rho_histogram(self, rho_hat, step):
    sparsity = self.family.sparsity
    fig, ax = subplots(figsize=(5, 3))
    ax.hist(rho_hat, bins=30)
    if sparsity.kind == "kl":
      ax.axvline(sparsity.rho, color="k", linestyle="--", label=f"ρ = {sparsity.rho}")
      ax.legend()
    ax.set(xlabel="ρ̂_j (mean activation on the test split)", ylabel="units", title=f"step {step}")
    return figure_pixels(fig)


class SparseAutoencoderReport(AutoencoderReport):
  definitions = {
    **AutoencoderReport.definitions,
    "loss": "the training objective on the test split: ½·Σ_pixels (x − x̂)² per example "
    "(mean) + weight decay + the sparsity penalty with ρ̂ over the whole split",
    "sparsity_penalty": "the sparsity term of the objective (kl: β·Σ_j KL(ρ ‖ ρ̂_j); l1: "
    "λ·mean ‖code‖₁; topk: 0)",
    "rho_hat_mean": "mean over code units of ρ̂_j, unit j's mean activation on the test split",
    "l0": "mean number of active code units per test example",
    "dead_fraction": "fraction of code units never active on the whole test split",
  }

  def protocol(self):
    family = self.family
    return {
      **super().protocol(),
      "sparsity": family.sparsity.to_dict(),
      "code_units": family.model.code_dim,
      "code_bias_init": family.model.code_bias_init,
      "active_means_above": family.active_above,
      "nmse": "mse / mse_mean_baseline (mse_to_baseline_ratio)",
    }


class SparseAutoencoder(Autoencoder):
  """An `Autoencoder` with `config.model.name='sparse_ae'` and a sparsity objective."""

  views = SparseAutoencoderViews
  report = SparseAutoencoderReport

  options_group = "sparsity"
  default_options = staticmethod(options)
  models = ("sparse_ae",)

  def __init__(self, config, dataset, **kwargs):
    super().__init__(config, dataset, **kwargs)
    self.sparsity = self.family_options()
    kind = self.sparsity.kind
    if kind not in KINDS:
      raise ConfigError(f"config.sparsity.kind={kind!r}; choose one of {KINDS}")
    expected = {"kl": "sigmoid", "l1": "relu", "topk": "topk"}[kind]
    if self.model.code != expected:
      raise ConfigError(f"sparsity {kind!r} needs config.model.code={expected!r}")
    self.aux_k = int(self.sparsity.aux_k)
    if self.aux_k and kind != "topk":
      raise ConfigError("config.sparsity.aux_k (the dead-latent loss) needs kind='topk'")
    if not 0 <= self.aux_k <= self.model.code_dim:
      raise ConfigError(f"config.sparsity.aux_k={self.aux_k} must lie in 0..code_dim")
    if kind == "kl" and self.sparsity.kl_gradient not in KL_GRADIENTS:
      raise ConfigError(
        f"config.sparsity.kl_gradient={self.sparsity.kl_gradient!r}; choose one of {KL_GRADIENTS}"
      )
    if kind == "kl" and "code_bias_init" not in config.model:
      # Start every unit at the target rate. From 0 (σ = 0.5, ten times ρ = 0.05) the KL's
      # large early gradient has Adam lower the rate through every weight of a unit at once,
      # and the offset settles in the weights' constant component (each patch has mean 0.5)
      # instead of the bias.
      rho = self.sparsity.rho
      try:
        self.model = self.model.clone(code_bias_init=float(np.log(rho / (1.0 - rho))))
      except TypeError as e:  # A Linen model of the user's without the field.
        raise ConfigError(
          f"sparsity 'kl' starts every code unit at the target rate through the model's "
          f"`code_bias_init` field (the code units' initial bias), and {config.model.name} "
          f"has none ({e}); give it one"
        ) from None
    self.active_above = 0.5 if self.model.code == "sigmoid" else 0.0
    self.num_pixels = int(np.prod(dataset.target_shape))

  def init_state(self, key, batch) -> TrainState:
    state = super().init_state(key, batch)
    if not self.aux_k:
      return state
    # Examples since each unit last fired: counted, not trained.
    since_fired = {"examples_since_fired": jnp.zeros((self.model.code_dim,), jnp.int32)}
    return state.replace(stats={"model": since_fired})

  def train_step(self, state, batch, key):
    if not self.aux_k:
      return super().train_step(state, batch, key)
    since = state.stats["model"]["examples_since_fired"]
    dead = since >= self.sparsity.aux_dead_after

    def loss_fn(params):
      loss, parts = self.batch_loss(params, batch, key, dead=dead)
      fired = parts.pop("fired") > 0
      examples = batch["image"].shape[0]
      parts["dead_latents"] = jnp.mean(dead)  # Fraction dead before this step.
      new_since = jnp.where(fired, 0, jnp.minimum(since + examples, NEVER))
      return loss, (parts, {"examples_since_fired": new_since})

    return gradient_step(state, "model", loss_fn, has_stats=True)

  def batch_loss(self, params, batch, key, *, dead=None):
    """The objective and its parts; `dead` (a bool per unit) adds the AuxK term and a
    per-unit `fired` count to the parts."""
    loss, parts, aux = self.per_example_loss(params, batch, key)
    code = aux["code"]
    parts = jax.tree.map(jnp.mean, parts)
    # Ng's objective: ½·Σ_pixels (x − x̂)² per example (not the pixel mean), + λ/2·Σ W².
    objective = 0.5 * self.num_pixels * parts["mse"]
    kernels = [params["encoder"]["kernel"], params["decoder"]["kernel"]]
    objective += 0.5 * self.sparsity.weight_decay * sum(jnp.sum(w**2) for w in kernels)
    if self.sparsity.kind == "kl":
      penalty, rho_hat = kl_sparsity_penalty(
        code,
        rho=self.sparsity.rho,
        beta=self.sparsity.beta,
        gradient=self.sparsity.kl_gradient,
      )
      parts["rho_hat_mean"] = jnp.mean(rho_hat)
    elif self.sparsity.kind == "l1":
      penalty = self.sparsity.l1 * jnp.mean(jnp.sum(jnp.abs(code), axis=1))
    elif dead is not None:
      aux_error = auxk_reconstruction_error(
        target_of(batch),
        aux["logits"],
        aux["pre"],
        dead,
        params["decoder"]["kernel"],
        aux_k=self.aux_k,
        output_activation=self.model.output_activation,
      )
      parts["aux_loss"] = jnp.mean(aux_error)
      parts["fired"] = jnp.sum(code > 0, axis=0)
      penalty = self.sparsity.aux_weight * parts["aux_loss"]
    else:
      penalty = jnp.zeros(())
    parts["sparsity_penalty"] = penalty
    parts["l0"] = jnp.mean(jnp.sum(code > self.active_above, axis=1))
    return objective + penalty, parts

  def eval_step(self, state, batch):
    sums = super().eval_step(state, batch)
    params = state.params["model"]
    _, _, aux = self.per_example_loss(params, batch, self.eval_key)
    mask = batch["mask"][:, None]
    active = (aux["code"] > self.active_above) * mask
    sums["unit_mean"] = jnp.sum(aux["code"] * mask, axis=0)
    sums["unit_active"] = jnp.sum(active, axis=0)
    sums["l0"] = jnp.sum(active)
    sums["code_l1"] = jnp.sum(jnp.abs(aux["code"]) * mask)
    kernels = [params["encoder"]["kernel"], params["decoder"]["kernel"]]
    decay = 0.5 * self.sparsity.weight_decay * sum(jnp.sum(w**2) for w in kernels)
    sums["weight_decay_term"] = decay * jnp.sum(batch["mask"])  # Its mean: the term.
    return sums

  def summarize(self, means):
    """The test split's metrics, and its `loss`: the training objective with ρ̂ over the
    whole split (the AuxK term, which depends on training's dead-unit count, left out)."""
    means = dict(means)
    unit_mean = np.asarray(means.pop("unit_mean"))
    active_rate = np.asarray(means.pop("unit_active"))
    code_l1 = float(means.pop("code_l1"))
    means["rho_hat_mean"] = float(unit_mean.mean())
    means["dead_fraction"] = float(np.mean(active_rate == 0))
    if self.sparsity.kind == "kl":
      kl = np.asarray(losses.bernoulli_kl(self.sparsity.rho, jnp.asarray(unit_mean)))
      penalty = self.sparsity.beta * float(np.sum(kl))
    elif self.sparsity.kind == "l1":
      penalty = self.sparsity.l1 * code_l1
    else:
      penalty = 0.0
    means["sparsity_penalty"] = penalty
    reconstruction = 0.5 * self.num_pixels * float(means["mse"])
    means["loss"] = reconstruction + float(means.pop("weight_decay_term")) + penalty
    return means

  def unit_means(self, params) -> np.ndarray:
    """ρ̂_j, each code unit's mean activation over the test split (no corruption)."""
    x = scale_values(self.dataset.test["image"], self.value_range)
    size = self.config.eval_batch_size or self.config.batch_size
    encode = jax.jit(lambda p, x: self.model.apply({"params": p}, x, method="encode"))
    codes = [to_host(encode(params, x[i : i + size])) for i in range(0, len(x), size)]
    return np.concatenate(codes).mean(axis=0)
