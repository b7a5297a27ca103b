"""Sparse autoencoders on a host model's internal activations (interpretability).

The run's dataset holds the *host's* inputs (e.g. `pydoc_text` for a character
language model). The host — a trained Flax model and the layer to read
(`genlab.models.activations.HostModel`) — comes from `sae.host_workdir` (a genlab
`language_model` run) or from `sae.host_factory` (`'package.module:function'`
returning a `HostModel`: any Flax model; the module must be importable whenever the
workdir is trained, evaluated or read). What this family composes lives in
`genlab.sae`:

* `ActivationSource`: the host's activations, one row per example position, normalised
  (`sae.normalize`), optionally cached on disk (`sae.cache_dir`);
* the code (`config.model.code`, `genlab.sae.CODES`): `relu` (L1), `topk`, `batchtopk`,
  `jumprelu`, `matryoshka_batchtopk`, or one of the user's;
* `SAEObjective`: Σ_d (x − x̂)² per position plus the code's penalty, AuxK for dead
  latents (`sae.aux_k`), resampling (`sae.resample_every`), unit-norm decoder rows;
* `genlab.sae.evaluation`: explained variance, L0, dead and dense latents, and the host's
  loss with the layer replaced by the reconstruction (loss recovered, KL).

Views: the latents' firing-frequency histogram, and the text contexts where some latents
fire most. docs/families/sparse_ae.md has the maths, the codes and the figures.
"""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from genlab.core import Metrics, TrainState, gradient_step, make_optimizer, to_host
from genlab.data.sequences import decode_text
from genlab.errors import ConfigError, GenlabError
from genlab.families.base import Family, Report, Views
from genlab.models import field_defaults
from genlab.sae import CODES, ActivationSource, SAEObjective, evaluation
from genlab.sae.source import HOST_BATCH


def options(**overrides) -> ml_collections.ConfigDict:
  """`config.sae`, the activation-SAE family's options, with their defaults."""
  group = ml_collections.ConfigDict(
    {
      # The host: a genlab language_model workdir (its newest usable checkpoint); or "".
      "host_workdir": "",
      # Or 'package.module:function': a function of no arguments returning a HostModel.
      "host_factory": "",
      # With host_workdir: the host's submodule (path) whose output the SAE reads.
      "layer": "block_1",
      # With host_workdir: positions dropped at the start of every sequence.
      "skip_first": 1,
      "normalize": "norm",  # none | norm (E‖x‖² = width) | per_dimension ((x − μ)/σ).
      "normalize_examples": 8192,  # Train positions the normalisation is estimated on.
      "l1": 0.05,  # relu: weight of the L1 penalty.
      "l1_decoder_norm": True,  # relu: weight each |f_j| by ‖W_dec,j‖.
      "l0": 0.05,  # jumprelu: weight of the L0 penalty.
      "unit_norm_decoder": True,  # Decoder rows back to norm 1 after every update.
      "aux_k": 0,  # Codes with k (topk, batchtopk, ...): AuxK's dead latents per position; 0 off.
      "aux_weight": 1 / 32,  # AuxK's weight.
      # A latent is dead after this many positions without firing (AuxK, resampling, logs).
      "dead_after": 200_000,
      # Every this many steps, dead latents are resampled (Anthropic's 2023 recipe: new
      # directions from the batch's badly reconstructed positions, their Adam moments reset;
      # `resample_dead_latents`). 0: never.
      "resample_every": 0,
      "resample_encoder_scale": 0.2,  # A new encoder row's norm over the live rows' mean.
      "dense_above": 0.1,  # A latent firing on more than this fraction of positions is dense.
      # Cache the train split's activations here (a memory-mapped .npy per host and layer)
      # and train from it; "" computes them in every step.
      "cache_dir": "",
      "view_latents": 8,  # Latents shown in the top-activating-contexts view.
    }
  )
  group.update(overrides)
  return group


class ActivationSAEViews(Views):
  """The latents' firing frequencies on the test split (log10 histogram), and for some
  latents the test contexts where they fire most (the firing character in brackets)."""

  def images(self, state, batch, step):
    from genlab.views import figure_pixels, subplots

    family = self.family
    codes, where = family.latent_activity(state)
    rate = np.mean(codes > 0, axis=0)
    fig, ax = subplots(figsize=(5, 3))
    alive = rate[rate > 0]
    ax.hist(np.log10(alive), bins=40)
    ax.set(
      xlabel="log10 firing frequency on the test split's positions",
      ylabel="latents",
      title=f"step {step}: {np.sum(rate == 0)} of {len(rate)} never fire",
    )
    views = {"latent_density": figure_pixels(fig)}
    if family.dataset.modality == "tokens":
      alive_latents = np.flatnonzero(rate > 0)
      chosen = alive_latents[:: max(1, len(alive_latents) // family.options.view_latents)]
      lines = []
      for latent in chosen[: family.options.view_latents]:
        lines.append(f"latent {latent} (fires on {rate[latent]:.2%} of test positions)")
        lines += top_contexts(codes, where, family.dataset.test["image"], int(latent))
      fig, ax = subplots(figsize=(8, 0.17 * len(lines) + 0.3))
      ax.axis("off")
      ax.text(0, 1, "\n".join(lines), family="monospace", fontsize=8, va="top")
      views["top_contexts"] = figure_pixels(fig, dpi=90)
    return views


class ActivationSAEReport(Report):
  definitions = evaluation.DEFINITIONS

  def protocol(self):
    family = self.family
    o = family.options
    source, model = family.source, family.model
    host = source.host if source else None
    return {
      "split": "test (the host's inputs; every example position)",
      "host": host.description if host else None,
      "layer": host.layer if host else (o.layer if o.host_workdir else None),
      "skip_first": o.skip_first if o.host_workdir else "the host factory's positions",
      "normalize": o.normalize,
      "normalize_examples": o.normalize_examples,
      "normalize_scale_mean": float(np.mean(source.scale)) if source else None,
      "width": source.width if source else None,
      "latents": model.code_dim if model else None,
      "code": family.code,
      "k": model.k if model and family.code_class.sparsity == "k" else None,
      "sae": o.to_dict(),
      "dead": "never active on the test split's positions (eval_positions)",
    }


class ActivationSAE(Family):
  """An SAE on `sae.layer` of a host model (`config.model.name='sparse_ae'`)."""

  views = ActivationSAEViews
  report = ActivationSAEReport

  options_group = "sae"
  headline = ("loss", "mse", "l0")

  default_options = staticmethod(options)
  models = ("sparse_ae",)
  model_arguments = ("output_shape", "output_activation", "kernels", "dtype")

  def __init__(self, config, dataset, **kwargs):
    super().__init__(config, dataset, **kwargs)
    self.value_range = None  # The host's inputs are used as they are.
    self.options = o = self.family_options()
    if bool(o.host_workdir) == bool(o.host_factory):
      raise ConfigError("config.sae: set exactly one of host_workdir and host_factory")
    self.model_cls, self.fields = self.model_class()
    defaults = field_defaults(self.model_cls)
    self.code = self.fields.get("code", defaults.get("code"))
    self.code_class = CODES.get(self.code)
    if self.code_class.name == "sigmoid":
      raise ConfigError(
        "config.model.code='sigmoid' is the image sparse AE's (KL-ρ); activation SAEs take "
        f"{', '.join(n for n in CODES.names() if n != 'sigmoid')}, or a code of your own"
      )
    if o.aux_k and not self.code_class.takes_aux_k:
      raise ConfigError(
        f"config.sae.aux_k (the dead-latent loss) needs a code that takes it (topk, "
        f"batchtopk, matryoshka_batchtopk); code {self.code!r} does not"
      )
    code_dim = self.fields.get("code_dim", defaults.get("code_dim"))
    if code_dim is not None:  # The code's own fields, against the dictionary's size.
      self.code_class.of(types.SimpleNamespace(**(defaults | self.fields))).check(code_dim)
    if code_dim is not None and not 0 <= o.aux_k <= code_dim:
      raise ConfigError(f"config.sae.aux_k={o.aux_k} must lie in 0..code_dim={code_dim}")
    if o.dead_after < 1 or o.resample_every < 0 or o.resample_encoder_scale <= 0:
      raise ConfigError(
        f"config.sae: dead_after={o.dead_after} must be positive, resample_every="
        f"{o.resample_every} 0 (off) or positive, resample_encoder_scale="
        f"{o.resample_encoder_scale} positive"
      )
    self.tx = make_optimizer(config.optimizer)
    self.source: ActivationSource | None = None
    self.model = None
    self.objective: SAEObjective | None = None

  # The host and the SAE -----------------------------------------------------------------

  def needs(self):
    o = self.options
    if o.host_factory:
      return {"host_model": {"factory": o.host_factory}}
    return {"host_model": {"workdir": o.host_workdir, "layer": o.layer, "skip_first": o.skip_first}}

  def provide(self, resources):
    super().provide(resources)
    o = self.options
    self.source = ActivationSource(
      resources["host_model"],
      self.dataset,
      normalize=o.normalize,
      normalize_examples=o.normalize_examples,
      cache_dir=o.cache_dir,
    )
    self.width = self.source.width
    self.model = self.build(
      self.model_cls, output_shape=(self.width,), output_activation="none", **self.fields
    )
    self.objective = SAEObjective(self.model, o, self.tx)
    self._codes = jax.jit(self._codes_of)

  @property
  def host(self):
    return self.source.host if self.source else None

  def _require_host(self):
    if self.objective is None:
      raise GenlabError(
        "the activation_sae family has no host model yet: the run layer provides it "
        "(genlab.run.resources); from Python, call family.provide({'host_model': host})"
      )

  # The maths ----------------------------------------------------------------------------

  def init_state(self, key, batch) -> TrainState:
    self._require_host()
    params = self.model.init(key, jnp.zeros((1, self.width)), jnp.zeros(()))["params"]
    params = self.objective.unit_norm(params)
    # The host's params ride in the state's untrained part: the runner places them on the
    # devices like any state (replicated, or split with mesh.fsdp), steps take them as an
    # argument rather than baking them into the program as constants, and a checkpoint
    # holds the host its SAE was trained with.
    host = jax.tree.map(jnp.asarray, self.source.host.params)
    stats = {"model": self.objective.initial_stats(), "host": host}
    return TrainState.create(params={"model": params}, tx={"model": self.tx}, stats=stats)

  def activations(self, batch, host_params) -> tuple[jax.Array, jax.Array]:
    """(normalised activations, one row per position; their weights: 1 on examples)."""
    return self.source.activations(batch, host_params)

  def reconstruct(self, params, x, weights, stats, *, train: bool):
    """(x̂, latents, pre-activations, the code's new stats or None)."""
    return self.objective.reconstruct(params, x, weights, stats, train=train)

  def train_step(self, state, batch, key) -> tuple[TrainState, Metrics]:
    """One update; with `sae.resample_every`, dead latents are resampled first on the
    steps it divides (the only use of `key`)."""
    x, weights = self.activations(batch, state.stats["host"])
    resampled = None
    if self.options.resample_every:
      state, resampled = self.objective.resample(state, x, weights, key)
    stats = state.stats["model"]

    def loss_fn(params):
      loss, parts, new = self.objective(params, x, weights, stats, train=True)
      return loss, (parts, new)

    state, metrics = gradient_step(state, "model", loss_fn, has_stats=True)
    if resampled is not None:
      metrics["resampled_latents"] = resampled
    params = self.objective.unit_norm(state.params["model"])
    return state.replace(params={**state.params, "model": params}), metrics

  def resample(self, state, x, weights, key):
    """`SAEObjective.resample` of the state's SAE."""
    return self.objective.resample(state, x, weights, key)

  def eval_step(self, state, batch) -> Metrics:
    """Sums over the batch's example positions (and its sequences where `mask` is 1)."""
    params, stats = state.params["model"], state.stats["model"]
    return evaluation.eval_sums(
      self.objective, self.source, params, stats, state.stats["host"], batch
    )

  def summarize(self, means):
    """Ratios of the eval step's sums (their means over sequences: the same ratios)."""
    metrics, self.latent_rate = evaluation.summarize(
      means, width=self.width, dense_above=self.options.dense_above
    )
    return {**metrics, "eval_positions": self.source.eval_positions}

  # Views --------------------------------------------------------------------------------

  def _codes_of(self, state, batch):
    """(the SAE's code of every position of `batch`, the positions' weights)."""
    x, weights = self.activations(batch, state.stats["host"])
    _, code, _, _ = self.reconstruct(
      state.params["model"], x, weights, state.stats["model"], train=False
    )
    return code, weights

  def latent_activity(self, state, split="test"):
    """(code of every example position (positions, latents), (sequence, position) of
    each row), over a split; for the views."""
    rows, where, start = [], [], 0
    for batch in self.source.batches(self.dataset.split(split), size=HOST_BATCH):
      mask = batch.pop("mask")
      code, weights = to_host(self._codes(state, {k: jnp.asarray(v) for k, v in batch.items()}))
      per = len(weights) // len(mask)
      index = np.stack(np.divmod(np.arange(len(weights)), per), axis=1)
      index[:, 0] += start
      keep = (weights > 0) & np.repeat(mask > 0, per)
      rows.append(code[keep])
      where.append(index[keep])
      start += int(mask.sum())
    return np.concatenate(rows), np.concatenate(where)


def top_contexts(codes, where, tokens, latent: int, *, top: int = 5, before: int = 24):
  """Text of the `top` positions where `latent` fires most: up to `before` characters of
  context, then the firing character in brackets, each with the activation."""
  order = np.argsort(-codes[:, latent], kind="stable")[:top]
  lines = []
  for row in order:
    value = codes[row, latent]
    if value <= 0:
      break
    sequence, position = where[row]
    text = decode_text(tokens[sequence])
    context = text[max(0, position - before) : position]
    lines.append(f"  {value:6.2f}  {context!r:>28} [{text[position : position + 1]}]")
  return lines
