"""Sparse autoencoders: reconstruction plus a sparsity objective on the code.

The reconstruction term is ½·Σ_pixels (x − x̂)² per example, averaged over the
batch, plus weight decay λ/2·(‖W_enc‖² + ‖W_dec‖²) (`sparsity.weight_decay`), as
in Ng's exercise: without it the code can satisfy any mean-rate target with
tiny variations around ρ that a large decoder amplifies. `config.loss` is not
used here. `config.sparsity.kind`:
* `kl` (sigmoid codes): β · Σ_j KL(ρ ‖ ρ̂_j), ρ̂_j the mean activation of unit j
  over the global batch. It penalises units that fire more than the target
  rate ρ *and* units that fire less (Ng, "Sparse autoencoder" notes, 2011).
  Under several devices ρ̂ is the all-device mean; the gradient flows through
  this device's share of it, so pmean-ed gradients equal one device's.
* `l1` (ReLU codes): λ · mean_x ‖code‖₁.
* `topk` (TopK codes, Gao et al. 2024): no penalty, k units per example; plus
  an optional auxiliary loss for dead latents (`aux_k`, weight `aux_weight`):
  the reconstruction error's residual predicted from the `aux_k` largest
  pre-activations of units dead over the last batch — left for later; the
  option is refused, not ignored.

Logged on the test split: `rho_hat_mean` (mean of ρ̂_j over units), `l0` (mean
number of active units per example), `dead_fraction` (units never active over
the whole eval pass; active means > 0.5 for sigmoid codes, > 0 otherwise),
`nmse` = Σ‖x − x̂‖² / Σ‖x − x̄‖² with x̄ the mean training example (the
`mse_to_baseline_ratio` of `genlab eval`). Views: the decoder's filters and a
histogram of ρ̂_j.
"""

from __future__ import annotations

import io

import jax
import jax.numpy as jnp
import numpy as np

from genlab import losses
from genlab.errors import ConfigError
from genlab.families.autoencoder import Autoencoder
from genlab.train.writers import image_grid

KINDS = ("kl", "l1", "topk")


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
    if self.sparsity.get("aux_k"):
      raise ConfigError("config.sparsity.aux_k (the TopK dead-latent loss) is not implemented yet")
    self.active_above = 0.5 if self.model.code == "sigmoid" else 0.0
    self.num_pixels = int(np.prod(dataset.target_shape))

  def batch_loss(self, params, batch, key, *, axis_name):
    loss, parts, aux = self.per_example_loss(params, batch, key)
    code = aux["code"]
    parts = jax.tree.map(jnp.mean, parts)
    # Ng's objective: ½·Σ_pixels (x − x̂)² per example (not the pixel mean), + λ/2·Σ W².
    objective = 0.5 * self.num_pixels * parts["mse"]
    kernels = [params["encoder"]["kernel"], params["decoder"]["kernel"]]
    objective += 0.5 * self.sparsity.weight_decay * sum(jnp.sum(w**2) for w in kernels)
    if self.sparsity.kind == "kl":
      local = jnp.mean(code, axis=0)
      # Value: the all-device mean; gradient: through this device's share only.
      rho_hat = (
        local
        if axis_name is None
        else local + jax.lax.stop_gradient(jax.lax.pmean(local, axis_name) - local)
      )
      penalty = self.sparsity.beta * jnp.sum(losses.bernoulli_kl(self.sparsity.rho, rho_hat))
      parts["rho_hat_mean"] = jnp.mean(rho_hat)
    elif self.sparsity.kind == "l1":
      penalty = self.sparsity.l1 * jnp.mean(jnp.sum(jnp.abs(code), axis=1))
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    fig, ax = plt.subplots(figsize=(5, 3), dpi=100)
    ax.hist(self._last_rho_hat, bins=30)
    if self.sparsity.kind == "kl":
      ax.axvline(self.sparsity.rho, color="k", linestyle="--", label=f"ρ = {self.sparsity.rho}")
      ax.legend()
    ax.set(xlabel="ρ̂_j (mean activation on the test split)", ylabel="units", title=f"step {step}")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return np.asarray(Image.open(buffer).convert("RGB"))
