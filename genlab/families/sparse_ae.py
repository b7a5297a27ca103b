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
import numpy as np
import optax

from genlab import losses
from genlab.errors import ConfigError
from genlab.families.autoencoder import Autoencoder, target_of
from genlab.models.conv_ae import activation_fn
from genlab.models.sparse_ae import keep_top_k
from genlab.train.parallel import pmean, psum
from genlab.train.state import TrainState, all_finite, optimization_metrics
from genlab.train.writers import figure_pixels, image_grid, subplots

KINDS = ("kl", "l1", "topk")
KL_GRADIENTS = ("leave_one_out", "batch")
ACTIVITY = "latent_activity"  # State part (not trained): examples since each unit last fired.
NEVER = 2**30  # Cap of the examples-since-fired count, far from int32 overflow.


def kl_sparsity_penalty(
  code: jax.Array,
  *,
  rho: float,
  beta: float,
  gradient: str = "batch",
  axis_name: str | None = None,
) -> tuple[jax.Array, jax.Array]:
  """(β · Σ_j KL(ρ ‖ ρ̂_j), ρ̂) for this device's `code` (examples × units), ρ̂ the mean
  over the global batch of B, with the gradient `gradient`:

  * `batch`: the penalty's own gradient, KL'(ρ̂_j) · ∂ρ̂_j. ρ̂_j and ∂ρ̂_j come from the same
    examples, so in expectation this is the gradient of E_B[KL(ρ ‖ ρ̂_j)] ≈ KL(ρ ‖ ρ̄_j) +
    Var(a_j) / (2Bρ(1 − ρ)), ρ̄_j the full-data rate: a penalty on how much the unit's
    activation varies, which favours graded activity around ρ over firing.
  * `leave_one_out`: example i's activation a_ij gets KL' evaluated at the mean of the
    *other* B − 1 examples, which does not depend on a_ij: the full-data gradient without
    the variance term (up to an O(1/B) shift of KL' itself, as in `batch`).

  Under several devices (`axis_name`) the gradient flows through this device's examples
  only; the pmean of the devices' gradients is then the one-device gradient of the global
  batch.
  """
  if gradient not in KL_GRADIENTS:
    raise ConfigError(f"KL gradient {gradient!r}; choose one of {KL_GRADIENTS}")
  sg = jax.lax.stop_gradient
  local = jnp.mean(code, axis=0)
  rho_hat = local + sg(pmean(local, axis_name) - local)  # Value: the all-device mean.
  if gradient == "batch":
    return beta * jnp.sum(losses.bernoulli_kl(rho, rho_hat)), rho_hat
  n = code.shape[0] * (1 if axis_name is None else jax.lax.psum(1, axis_name))
  others = sg((n * rho_hat - code) / (n - 1))
  slope = jax.grad(lambda q: jnp.sum(losses.bernoulli_kl(rho, q)))(others)
  value = beta * jnp.sum(losses.bernoulli_kl(rho, sg(rho_hat)))
  surrogate = beta * jnp.sum(jnp.mean(slope * (code - sg(code)), axis=0))
  return value + surrogate, rho_hat


def auxk_reconstruction_error(
  target: jax.Array,
  logits: jax.Array,
  pre: jax.Array,
  dead: jax.Array,
  decoder_kernel: jax.Array,
  *,
  aux_k: int,
  output_activation: str = "none",
) -> jax.Array:
  """Gao et al.'s AuxK term, per example: ½·Σ_pixels (x − f(sg(logits) + z_aux·W_dec))².

  z_aux keeps the ReLU of the `aux_k` largest pre-activations among `dead` units (a bool per
  unit) and is 0 elsewhere; `logits` are the main reconstruction's decoder outputs, held
  fixed, and f is the output activation. With f the identity this is ½‖e − z_aux·W_dec‖², e
  = x − x̂ the main reconstruction's residual, as in the paper; the gradient flows only into
  the dead units' encoder weights and decoder rows. With no dead unit it is the main
  reconstruction error, with no gradient.
  """
  z_aux = keep_top_k(jnp.where(dead, pre, -jnp.inf), aux_k)
  correction = (z_aux @ decoder_kernel).reshape(logits.shape)
  output = activation_fn(output_activation)(jax.lax.stop_gradient(logits) + correction)
  return 0.5 * jnp.sum((target - output) ** 2, axis=tuple(range(1, target.ndim)))


class SparseAutoencoder(Autoencoder):
  """An `Autoencoder` with `config.model.name='sparse_ae'` and a sparsity objective."""

  def __init__(self, config, dataset):
    super().__init__(config, dataset)
    self.sparsity = config.sparsity
    kind = self.sparsity.kind
    if kind not in KINDS:
      raise ConfigError(f"config.sparsity.kind={kind!r}; choose one of {KINDS}")
    expected = {"kl": "sigmoid", "l1": "relu", "topk": "topk"}[kind]
    if self.model.code != expected:
      raise ConfigError(f"sparsity {kind!r} needs config.model.code={expected!r}")
    self.aux_k = int(self.sparsity.get("aux_k", 0))
    if self.aux_k and kind != "topk":
      raise ConfigError("config.sparsity.aux_k (the dead-latent loss) needs kind='topk'")
    if not 0 <= self.aux_k <= self.model.code_dim:
      raise ConfigError(f"config.sparsity.aux_k={self.aux_k} must lie in 0..code_dim")
    # Configs saved before `kl_gradient` existed were trained with the batch gradient.
    if kind == "kl" and self.sparsity.get("kl_gradient", "batch") not in KL_GRADIENTS:
      raise ConfigError(
        f"config.sparsity.kl_gradient={self.sparsity.kl_gradient!r}; choose one of {KL_GRADIENTS}"
      )
    if kind == "kl" and "code_bias_init" not in config.model:
      # Start every unit at the target rate. From 0 (σ = 0.5, ten times ρ = 0.05) the KL's
      # large early gradient has Adam lower the rate through every weight of a unit at once,
      # and the offset settles in the weights' constant component (each patch has mean 0.5)
      # instead of the bias.
      rho = self.sparsity.rho
      self.model = self.model.clone(code_bias_init=float(np.log(rho / (1.0 - rho))))
    self.active_above = 0.5 if self.model.code == "sigmoid" else 0.0
    self.num_pixels = int(np.prod(dataset.target_shape))

  def init_state(self, key, batch) -> TrainState:
    state = super().init_state(key, batch)
    if not self.aux_k:
      return state
    since_fired = {"examples_since_fired": jnp.zeros((self.model.code_dim,), jnp.int32)}
    return TrainState.create(
      params={**state.params, ACTIVITY: since_fired},
      tx={"model": self.tx, ACTIVITY: optax.set_to_zero()},  # Counted, not trained.
    )

  def train_step(self, state, batch, key, *, axis_name):
    if not self.aux_k:
      return super().train_step(state, batch, key, axis_name=axis_name)
    since = state.params[ACTIVITY]["examples_since_fired"]
    dead = since >= self.sparsity.aux_dead_after

    def loss_fn(params):
      return self.batch_loss(params, batch, key, axis_name=axis_name, dead=dead)

    (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params["model"])
    fired = psum(parts.pop("fired"), axis_name) > 0
    examples = batch["image"].shape[0] * psum(1, axis_name)
    since = jnp.where(fired, 0, jnp.minimum(since + examples, NEVER))
    grads = pmean(grads, axis_name)
    metrics = pmean({"loss": loss, **parts}, axis_name)
    metrics["dead_latents"] = jnp.mean(dead)  # Fraction dead before this step.
    metrics.update(optimization_metrics(grads, state.params["model"]))
    finite = all_finite(metrics)
    since = jnp.where(finite, since, state.params[ACTIVITY]["examples_since_fired"])
    state = state.apply_gradients({"model": grads}, finite=finite)
    return state.replace(
      params={**state.params, ACTIVITY: {"examples_since_fired": since}}
    ), metrics

  def batch_loss(self, params, batch, key, *, axis_name, dead=None):
    """The objective and its parts; `dead` (a bool per unit) adds the AuxK term and a
    per-unit `fired` count on this device's examples to the parts."""
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
        gradient=self.sparsity.get("kl_gradient", "batch"),
        axis_name=axis_name,
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
    _, _, aux = self.per_example_loss(state.params["model"], batch, self.eval_key)
    mask = batch["mask"][:, None]
    active = (aux["code"] > self.active_above) * mask
    sums["unit_mean"] = jnp.sum(aux["code"] * mask, axis=0)
    sums["unit_active"] = jnp.sum(active, axis=0)
    sums["l0"] = jnp.sum(active)
    return sums

  def summarize(self, means):
    means = dict(means)
    unit_mean = np.asarray(means.pop("unit_mean"))
    active_rate = np.asarray(means.pop("unit_active"))
    means["rho_hat_mean"] = float(unit_mean.mean())
    means["dead_fraction"] = float(np.mean(active_rate == 0))
    self._last_rho_hat = unit_mean
    return means

  def protocol(self):
    return {
      **super().protocol(),
      "sparsity": self.sparsity.to_dict(),
      "code_units": self.model.code_dim,
      "code_bias_init": self.model.code_bias_init,
      "active_means_above": self.active_above,
      "nmse": "mse / mse_mean_baseline (mse_to_baseline_ratio)",
    }

  def definitions(self):
    return {
      **super().definitions(),
      "rho_hat_mean": "mean over code units of ρ̂_j, unit j's mean activation on the test split",
      "l0": "mean number of active code units per test example",
      "dead_fraction": "fraction of code units never active on the whole test split",
    }

  def extra_images(self, state, step):
    kernel = np.asarray(state.params["model"]["decoder"]["kernel"])  # (code_dim, H·W·C)
    filters = kernel.reshape(kernel.shape[0], *self.dataset.target_shape)
    lo = filters.min(axis=(1, 2, 3), keepdims=True)
    hi = filters.max(axis=(1, 2, 3), keepdims=True)
    filters = (filters - lo) / np.maximum(hi - lo, 1e-12)
    columns = int(np.ceil(np.sqrt(len(filters))))
    padded = np.concatenate([filters, np.ones((-len(filters) % columns, *filters.shape[1:]))])
    views = {
      "filters": image_grid(list(padded.reshape(-1, columns, *filters.shape[1:])), min_size=24)
    }
    if getattr(self, "_last_rho_hat", None) is not None:
      views["rho_hat_histogram"] = self._rho_histogram(step)
    return views

  def _rho_histogram(self, step):
    fig, ax = subplots(figsize=(5, 3))
    ax.hist(self._last_rho_hat, bins=30)
    if self.sparsity.kind == "kl":
      ax.axvline(self.sparsity.rho, color="k", linestyle="--", label=f"ρ = {self.sparsity.rho}")
      ax.legend()
    ax.set(xlabel="ρ̂_j (mean activation on the test split)", ylabel="units", title=f"step {step}")
    return figure_pixels(fig)
