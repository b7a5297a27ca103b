"""Sparse autoencoders on a host model's internal activations (interpretability).

The run's dataset holds the *host's* inputs (e.g. `pydoc_text` for a character
language model). The host — a trained Flax model and the layer to read
(`genlab.models.activations.HostModel`) — comes from `sae.host_workdir` (a genlab
`language_model` run) or from `sae.host_factory` (`'package.module:function'`
returning a `HostModel`: any Flax model). Each train step runs the host on the
batch under jit and reads the layer (`capture`), or, with `sae.cache_dir`, reads
the train split's activations from an on-disk cache written once; positions per
sequence are examples (`HostModel.positions`: valid ones, the first
`sae.skip_first` dropped). Activations are normalised (`sae.normalize`): `none`;
`norm`, one fixed scale c with E‖c·x‖² = the width d (SAELens's
`normalize_activations='expected_average_only_in'`); or `per_dimension`, (x − μ)/σ.
Both are estimated once from the first `sae.normalize_examples` train positions and
written in the protocol.

The SAE (`genlab.models.SparseAutoencoder`, `config.model.name='sparse_ae'`)
reconstructs the normalised activation; the objective is Σ_d (x − x̂)² per
position, averaged over positions, plus by `config.model.code`:
* `relu`: `sae.l1` · Σ_j |f_j|·‖W_dec,j‖ (`sae.l1_decoder_norm`; else Σ_j |f_j|);
* `topk` / `batchtopk` (k per position; BatchTopK the k·n largest over the batch's
  n positions, and at inference the running mean of the batches' smallest kept
  value as threshold, `stats`): no penalty; with `sae.aux_k` > 0 the AuxK term of
  dead latents (`sparse_ae.auxk_reconstruction_error`);
* `jumprelu`: `sae.l0` · Σ_j H(z_j − θ_j), the thresholds trained through the
  paper's straight-through estimators (θ in float32 whatever `dtype` is).
With `sae.unit_norm_decoder` the decoder's rows are put back on the unit sphere
after every update. A latent is dead after `sae.dead_after` positions without firing;
with `sae.resample_every` the dead ones are resampled (`resample_dead_latents`).

Reported on the test split (the host's inputs; every example position): `mse`
(per dimension), `fvu` = Σ‖x − x̂‖² / Σ‖x − x̄‖² and `explained_variance` = 1 − fvu,
`l0`, `dead_fraction` (latents never active over the split's positions),
`dense_fraction` (active on more than `sae.dense_above` of them), and the host's
loss with the layer replaced by the SAE's reconstruction (`loss_sae`) against the
clean loss and zero-ablation: `loss_recovered` = (L_zero − L_sae) / (L_zero −
L_clean), and `kl_sae` (KL of the spliced next-token distribution from the clean
one, nats per predicted token). Views: the latents' firing-frequency histogram,
and the text contexts where some latents fire most.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pathlib
import uuid

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from genlab.console import warn
from genlab.core import Metrics, TrainState, gradient_step, make_optimizer, stream_key, to_host
from genlab.data.sequences import decode_text
from genlab.errors import ConfigError, GenlabError
from genlab.families.base import Family, Report, Views
from genlab.families.sparse_ae import NEVER, auxk_reconstruction_error
from genlab.models import field_defaults
from genlab.models.activations import HostModel, as_rows
from genlab.models.sparse_ae import SparseAutoencoder, batch_top_k
from genlab.paths import free_name
from genlab.views import figure_pixels, subplots

CODES = ("relu", "topk", "batchtopk", "jumprelu")
NORMALIZATIONS = ("none", "norm", "per_dimension")


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
      "aux_k": 0,  # topk / batchtopk: AuxK's dead latents per position (0: off).
      "aux_weight": 1 / 32,  # AuxK's weight.
      # A latent is dead after this many positions without firing (AuxK, resampling, logs).
      "dead_after": 200_000,
      # Every this many steps, dead latents are resampled (Anthropic's 2023 recipe: new
      # directions from the batch's badly reconstructed positions, their Adam moments reset;
      # `resample_dead_latents`). 0: never.
      "resample_every": 0,
      "resample_encoder_scale": 0.2,  # A new encoder row's norm over the live rows' mean.
      "threshold_decay": 0.99,  # batchtopk: EMA decay of the inference threshold.
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
  def protocol(self):
    family = self.family
    o = family.options
    return {
      "split": "test (the host's inputs; every example position)",
      "host": family.host.description if family.host else None,
      "layer": family.host.layer if family.host else o.layer,
      "skip_first": o.skip_first if o.host_workdir else "the host factory's positions",
      "normalize": o.normalize,
      "normalize_examples": o.normalize_examples,
      "normalize_scale_mean": float(np.mean(family.scale)),
      "width": family.width,
      "latents": family.model.code_dim,
      "code": family.code,
      "k": family.model.k if family.code in ("topk", "batchtopk") else None,
      "sae": o.to_dict(),
      "dead": "never active on the test split's positions (eval_positions)",
    }

  definitions = {
    "loss": "the objective on the test positions (BatchTopK at its inference threshold)",
    "mse": "squared error per dimension of the normalised activation, mean over positions",
    "fvu": "fraction of variance unexplained: Σ‖x − x̂‖² / Σ‖x − x̄‖² over the test "
    "positions, x̄ their mean (normalised activations)",
    "explained_variance": "1 − fvu",
    "l0": "mean number of active latents per test position",
    "dead_fraction": "fraction of latents never active over the test positions",
    "dense_fraction": "fraction of latents active on more than sae.dense_above of the test "
    "positions",
    "loss_clean": "the host's own loss, clean: its sum over every predicted token of the test "
    "split over their number (a mean over tokens, not over sequences as a language model's "
    "cross_entropy is)",
    "loss_sae": "the same loss with the layer's activation at the example positions "
    "replaced by the SAE's reconstruction",
    "loss_zero": "the same loss with that activation replaced by zeros (zero-ablation)",
    "loss_recovered": "(loss_zero − loss_sae) / (loss_zero − loss_clean)",
    "kl_sae": "KL(clean ‖ spliced) of the host's output distribution, nats per predicted token",
    "kl_zero": "KL(clean ‖ zero-ablated), nats per predicted token",
    "eval_positions": "example positions of the test split (the window of dead_fraction)",
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
    self.options = self.family_options()
    o = self.options
    if bool(o.host_workdir) == bool(o.host_factory):
      raise ConfigError("config.sae: set exactly one of host_workdir and host_factory")
    if o.normalize not in NORMALIZATIONS:
      raise ConfigError(f"config.sae.normalize={o.normalize!r}; choose one of {NORMALIZATIONS}")
    self.model_cls, self.fields = self.model_class()
    self.code = self.fields.get("code", "sigmoid")
    if self.code not in CODES:
      raise ConfigError(f"config.model.code={self.code!r}; activation SAEs take one of {CODES}")
    if o.aux_k and self.code not in ("topk", "batchtopk"):
      raise ConfigError("config.sae.aux_k (the dead-latent loss) needs code topk or batchtopk")
    code_dim = self.fields.get("code_dim", field_defaults(self.model_cls).get("code_dim"))
    if code_dim is not None and not 0 <= o.aux_k <= code_dim:
      raise ConfigError(f"config.sae.aux_k={o.aux_k} must lie in 0..code_dim={code_dim}")
    if o.dead_after < 1 or o.resample_every < 0 or o.resample_encoder_scale <= 0:
      raise ConfigError(
        f"config.sae: dead_after={o.dead_after} must be positive, resample_every="
        f"{o.resample_every} 0 (off) or positive, resample_encoder_scale="
        f"{o.resample_encoder_scale} positive"
      )
    self.tx = make_optimizer(config.optimizer)
    self.host: HostModel | None = None
    self.model: SparseAutoencoder | None = None

  # The host, the normalisation and the cache ------------------------------------------

  def needs(self):
    o = self.options
    if o.host_factory:
      return {"host_model": {"factory": o.host_factory}}
    return {"host_model": {"workdir": o.host_workdir, "layer": o.layer, "skip_first": o.skip_first}}

  def provide(self, resources):
    super().provide(resources)
    self.host = resources["host_model"]
    example = {k: jnp.asarray(v[:2]) for k, v in self.dataset.train.items()}
    width = jax.eval_shape(self.host.capture, example)[1].shape[-1]
    self.width = int(width)
    self.model = self.build(
      self.model_cls, output_shape=(self.width,), output_activation="none", **self.fields
    )
    # The host's params are arguments, not constants compiled into the program.
    capture = jax.jit(lambda batch, params: self.host.capture(batch, params)[1])
    self._capture = lambda batch: capture(batch, self.host.params)
    self._codes = jax.jit(self._codes_of)
    self.shift, self.scale = self._normalization()
    self.eval_positions = int(
      sum(float(jnp.sum(self.host.positions(b))) for b in self._host_batches(self.dataset.test))
    )
    if self.options.cache_dir:
      if not isinstance(self.dataset.train, dict):
        raise ConfigError(
          "config.sae.cache_dir caches the activations of a train split held in memory; "
          "with data.stream_train on, leave cache_dir empty (activations are then computed "
          "in every step)"
        )
      self.dataset.train["activations"] = self._cached_activations()

  def _host_batches(self, split, size=512):
    for start in range(0, len(split["image"]), size):
      yield {
        k: jnp.asarray(v[start : start + size]) for k, v in split.items() if k != "activations"
      }

  def _normalization(self) -> tuple[np.ndarray, np.ndarray]:
    """(shift, scale), x' = (x − shift)·scale, from the first train positions."""
    d = self.width
    if self.options.normalize == "none":
      return np.zeros(d, np.float32), np.ones(d, np.float32)
    rows, need = [], self.options.normalize_examples
    for batch in self._host_batches(self.dataset.train):
      act = to_host(as_rows(self._capture(batch)))
      weights = np.asarray(self.host.positions(batch)).reshape(-1)
      rows.append(act[weights > 0])
      need -= len(rows[-1])
      if need <= 0:
        break
    x = np.concatenate(rows)[: self.options.normalize_examples].astype(np.float64)
    if self.options.normalize == "norm":
      scale = np.sqrt(d / np.mean(np.sum(x**2, axis=1)))
      return np.zeros(d, np.float32), np.full(d, scale, np.float32)
    return x.mean(0).astype(np.float32), (1.0 / np.maximum(x.std(0), 1e-6)).astype(np.float32)

  def _cached_activations(self) -> np.ndarray:
    """The train split's activations (sequences, positions, width), written once to
    `sae.cache_dir` and memory-mapped; keyed by the host, the layer and the data.

    Several runs may share the folder: each writes a file of its own and renames it into
    place whole (the same content whoever finishes first). A file that does not read back
    whole at the expected shape (cut short, overwritten) is set aside, never deleted, and
    the cache is computed again."""
    train = self.dataset.train
    digest = hashlib.sha256()
    digest.update(self.host.description.encode())
    digest.update(self.host.layer.encode())
    for leaf in jax.tree.leaves(self.host.params):
      digest.update(np.asarray(leaf).tobytes())
    digest.update(np.ascontiguousarray(train["image"]).tobytes())
    path = pathlib.Path(self.options.cache_dir).expanduser() / f"{digest.hexdigest()[:16]}.npy"
    first = self._capture({k: jnp.asarray(v[:1]) for k, v in train.items()})
    shape = (len(train["image"]), *first.shape[1:])
    if path.is_file():
      try:
        cached = np.load(path, mmap_mode="r")
        if cached.shape == shape and cached.dtype == np.float32:
          return cached
        why = f"it holds {cached.dtype} {cached.shape}, not float32 {shape}"
      except (OSError, ValueError) as e:  # Cut short: "mmap length is greater than file size".
        why = f"{type(e).__name__}: {e}"
      aside = free_name(path.with_name(f"{path.stem}.damaged.npy"))
      path.rename(aside)
      warn(f"the activation cache {path} cannot be used ({why}): moved to {aside}, computed again")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.stem}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}.npy")
    try:
      out = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float32, shape=shape)
      start = 0
      for batch in self._host_batches(train):
        act = to_host(self._capture(batch))
        out[start : start + len(act)] = act
        start += len(act)
      out.flush()
      del out
      os.replace(partial, path)  # Whole or absent: a crash never leaves a half-written cache.
    finally:
      partial.unlink(missing_ok=True)
    meta = {"host": self.host.description, "layer": self.host.layer, "sequences": shape[0]}
    meta_path = path.with_suffix(".json")
    tmp = meta_path.with_name(f".{meta_path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, meta_path)
    return np.load(path, mmap_mode="r")

  # The maths ----------------------------------------------------------------------------

  def _require_host(self):
    if self.model is None:
      raise GenlabError(
        "the activation_sae family has no host model yet: the run layer provides it "
        "(genlab.run.resources); from Python, call family.provide({'host_model': host})"
      )

  def init_state(self, key, batch) -> TrainState:
    self._require_host()
    params = self.model.init(key, jnp.zeros((1, self.width)), jnp.zeros(()))["params"]
    params = self._unit_norm(params)
    stats = {"examples_since_fired": jnp.zeros((self.model.code_dim,), jnp.int32)}
    if self.code == "batchtopk":
      stats |= {"threshold": jnp.zeros(()), "threshold_updates": jnp.zeros((), jnp.int32)}
    # The host's params ride in the state's untrained part: the runner places them on the
    # devices like any state (replicated, or split with mesh.fsdp), steps take them as an
    # argument rather than baking them into the program as constants, and a checkpoint
    # holds the host its SAE was trained with.
    host = jax.tree.map(jnp.asarray, self.host.params)
    return TrainState.create(
      params={"model": params}, tx={"model": self.tx}, stats={"model": stats, "host": host}
    )

  def _unit_norm(self, params):
    if not self.options.unit_norm_decoder:
      return params
    kernel = params["decoder"]["kernel"]
    norm = jnp.linalg.norm(kernel, axis=1, keepdims=True)
    return {**params, "decoder": {**params["decoder"], "kernel": kernel / jnp.maximum(norm, 1e-8)}}

  def activations(self, batch, host_params) -> tuple[jax.Array, jax.Array]:
    """(normalised activations, one row per position; their weights: 1 on examples)."""
    if "activations" in batch:
      act = batch["activations"]
    else:
      act = jax.lax.stop_gradient(self.host.capture(batch, host_params)[1])
    return self.normalized(act), self.host.positions(batch).reshape(-1).astype(jnp.float32)

  def normalized(self, act: jax.Array) -> jax.Array:
    """The host's activation as the SAE sees it: one row per position, (x − shift)·scale."""
    return (as_rows(act).astype(jnp.float32) - self.shift) * self.scale

  def reconstruct(self, params, x, weights, stats, *, train: bool):
    """(x̂, code, pre-activations, the batch's BatchTopK threshold or None)."""
    apply = self.model.apply
    pre = apply({"params": params}, x, method="pre_activations")
    threshold = None
    if self.code == "batchtopk" and train:
      code, threshold = batch_top_k(pre, self.model.k, weights)
    else:
      inference = stats.get("threshold") if self.code == "batchtopk" else None
      code = apply({"params": params}, pre, inference, method="code_of")
    return apply({"params": params}, code, method="decode"), code, pre, threshold

  def penalty_sum(self, params, code, pre, weights) -> jax.Array:
    """The sparsity penalty summed over the rows, each times its weight: relu's L1 (each
    |f_j| times ‖W_dec,j‖ with `sae.l1_decoder_norm`), jumprelu's L0 (with its
    straight-through gradient to θ); 0 for topk and batchtopk."""
    if self.code == "relu":
      magnitude = jnp.abs(code)
      if self.options.l1_decoder_norm:
        magnitude = magnitude * jnp.linalg.norm(params["decoder"]["kernel"], axis=1)
      return self.options.l1 * jnp.sum(magnitude * weights[:, None])
    if self.code == "jumprelu":
      active = self.model.apply({"params": params}, pre, method="active")
      return self.options.l0 * jnp.sum(active * weights[:, None])
    return jnp.zeros(())

  def objective(self, params, x, weights, stats, *, train: bool):
    """(the objective, its parts, the new stats)."""
    count = jnp.maximum(jnp.sum(weights), 1.0)

    def mean(per_row):
      return jnp.sum(per_row * weights) / count

    x_hat, code, pre, threshold = self.reconstruct(params, x, weights, stats, train=train)
    squared = jnp.sum((x - x_hat) ** 2, axis=1)
    parts = {"mse": mean(squared) / self.width}
    fired = code > 0
    parts["l0"] = mean(jnp.sum(fired, axis=1))
    o = self.options
    penalty = self.penalty_sum(params, code, pre, weights) / count
    since = stats["examples_since_fired"]
    dead = since >= o.dead_after
    if o.aux_k:
      aux = auxk_reconstruction_error(
        x, x_hat, pre, dead, params["decoder"]["kernel"], aux_k=o.aux_k
      )
      parts["aux_loss"] = mean(aux)
      penalty = penalty + o.aux_weight * parts["aux_loss"]
    parts["sparsity_penalty"] = penalty
    parts["dead_latents"] = jnp.mean(dead)
    new = dict(stats)
    fired_any = jnp.sum(fired * weights[:, None], axis=0) > 0
    new["examples_since_fired"] = jnp.where(
      fired_any, 0, jnp.minimum(since + jnp.sum(weights).astype(jnp.int32), NEVER)
    )
    if threshold is not None:
      updates = stats["threshold_updates"]
      decay = jnp.where(updates == 0, 0.0, o.threshold_decay)
      new["threshold"] = decay * stats["threshold"] + (1 - decay) * jax.lax.stop_gradient(threshold)
      new["threshold_updates"] = updates + 1
    return mean(squared) + penalty, parts, new

  def train_step(self, state, batch, key) -> tuple[TrainState, Metrics]:
    """One update; with `sae.resample_every`, dead latents are resampled first on the
    steps it divides (the only use of `key`)."""
    x, weights = self.activations(batch, state.stats["host"])
    resampled = None
    if self.options.resample_every:
      state, resampled = self.resample(state, x, weights, key)
    stats = state.stats["model"]

    def loss_fn(params):
      loss, parts, new = self.objective(params, x, weights, stats, train=True)
      return loss, (parts, new)

    state, metrics = gradient_step(state, "model", loss_fn, has_stats=True)
    if resampled is not None:
      metrics["resampled_latents"] = resampled
    params = self._unit_norm(state.params["model"])
    return state.replace(params={**state.params, "model": params}), metrics

  def resample(self, state, x, weights, key) -> tuple[TrainState, jax.Array]:
    """`state` with its dead latents resampled from the rows `x` if `state.step` is a
    positive multiple of `sae.resample_every` (else unchanged), and how many were."""
    o = self.options
    params, stats = state.params["model"], state.stats["model"]
    dead = stats["examples_since_fired"] >= o.dead_after
    due = (state.step > 0) & (state.step % o.resample_every == 0) & jnp.any(dead)

    def resample(parts):
      params, opt_state, since = parts
      x_hat, _, _, _ = self.reconstruct(params, x, weights, stats, train=False)
      loss = jnp.sum((x - x_hat) ** 2, axis=1) * weights
      log_threshold = math.log(self.model.threshold_init) if self.code == "jumprelu" else None
      params, reset = resample_dead_latents(
        stream_key(key, "resample"), params, x, loss, dead, o.resample_encoder_scale, log_threshold
      )
      opt_state = optax.tree_utils.tree_map_params(
        self.tx, _reset_moments, opt_state, reset, transform_non_params=lambda leaf: leaf
      )
      return params, opt_state, jnp.where(dead, 0, since)

    parts = (params, state.opt_state["model"], stats["examples_since_fired"])
    params, opt_state, since = jax.lax.cond(due, resample, lambda parts: parts, parts)
    state = state.replace(
      params={**state.params, "model": params},
      opt_state={**state.opt_state, "model": opt_state},
      stats={**state.stats, "model": {**stats, "examples_since_fired": since}},
    )
    return state, jnp.where(due, jnp.sum(dead), 0)

  def eval_step(self, state, batch) -> Metrics:
    """Sums over the batch's example positions (and its sequences where `mask` is 1)."""
    params, stats, host_params = state.params["model"], state.stats["model"], state.stats["host"]
    output, act = self.host.capture(batch, host_params)
    x = self.normalized(act)
    positions = self.host.positions(batch)
    rows_per_example = x.shape[0] // batch["mask"].shape[0]
    weights = positions.reshape(-1) * jnp.repeat(batch["mask"], rows_per_example)
    x_hat, code, pre, _ = self.reconstruct(params, x, weights, stats, train=False)
    w = weights[:, None]
    active = (code > 0) * w
    sums = {
      "positions": jnp.sum(weights),
      "penalty": self.penalty_sum(params, code, pre, weights),
      "squared_error": jnp.sum((x - x_hat) ** 2 * w),
      "x_sum": jnp.sum(x * w, axis=0),
      "x_squared": jnp.sum(x**2 * w),
      "active": jnp.sum(active),
      "latent_active": jnp.sum(active, axis=0),
    }
    # The host with the layer replaced at the example positions (denormalised x̂), or zeroed.
    shape = act.shape
    where = positions.reshape(*shape[:-1], 1) > 0
    x_hat_raw = (x_hat / self.scale + self.shift).reshape(shape).astype(act.dtype)
    spliced = self.host.splice(batch, lambda a: jnp.where(where, x_hat_raw, a), host_params)
    zeroed = self.host.splice(
      batch, lambda a: jnp.where(where, 0.0, a).astype(a.dtype), host_params
    )
    clean_loss, token_weights = self.host.token_loss(output, batch)
    token_weights = token_weights * batch["mask"].reshape(-1, *[1] * (token_weights.ndim - 1))
    sums["tokens"] = jnp.sum(token_weights)
    for name, out in (("clean", output), ("sae", spliced), ("zero", zeroed)):
      sums[f"loss_{name}"] = jnp.sum(self.host.token_loss(out, batch)[0] * token_weights)
    for name, out in (("sae", spliced), ("zero", zeroed)):
      sums[f"kl_{name}"] = jnp.sum(categorical_kl(output, out) * token_weights)
    return sums

  def summarize(self, means):
    """Ratios of the eval step's sums (their means over sequences: the same ratios)."""
    n = float(means["positions"])
    tokens = float(means["tokens"])
    x_mean = np.asarray(means["x_sum"]) / n
    variance = float(means["x_squared"]) / n - float(np.sum(x_mean**2))
    fvu = float(means["squared_error"]) / n / variance
    latent_rate = np.asarray(means["latent_active"]) / n
    self.latent_rate = latent_rate  # For the views.
    loss = {name: float(means[f"loss_{name}"]) / tokens for name in ("clean", "sae", "zero")}
    return {
      "loss": (float(means["squared_error"]) + float(means["penalty"])) / n,
      "mse": float(means["squared_error"]) / n / self.width,
      "fvu": fvu,
      "explained_variance": 1.0 - fvu,
      "l0": float(means["active"]) / n,
      "dead_fraction": float(np.mean(latent_rate == 0)),
      "dense_fraction": float(np.mean(latent_rate > self.options.dense_above)),
      "loss_clean": loss["clean"],
      "loss_sae": loss["sae"],
      "loss_zero": loss["zero"],
      "loss_recovered": (loss["zero"] - loss["sae"]) / (loss["zero"] - loss["clean"]),
      "kl_sae": float(means["kl_sae"]) / tokens,
      "kl_zero": float(means["kl_zero"]) / tokens,
      "eval_positions": self.eval_positions,
    }

  # Views --------------------------------------------------------------------------------

  def _codes_of(self, state, batch):
    """(the SAE's code of every position of `batch`, the positions' weights)."""
    x, weights = self.activations(batch, state.stats["host"])
    params, stats = state.params["model"], state.stats["model"]
    _, code, _, _ = self.reconstruct(params, x, weights, stats, train=False)
    return code, weights

  def latent_activity(self, state, split="test"):
    """(code of every example position (positions, latents), (sequence, position) of
    each row), over a split; for the views."""
    data = self.dataset.split(split)
    rows, where = [], []
    for start in range(0, len(data["image"]), 512):
      batch = {
        k: jnp.asarray(v[start : start + 512]) for k, v in data.items() if k != "activations"
      }
      code, weights = to_host(self._codes(state, batch))
      per = len(weights) // len(batch["image"])
      index = np.stack(np.divmod(np.arange(len(weights)), per), axis=1)
      index[:, 0] += start
      rows.append(code[weights > 0])
      where.append(index[weights > 0])
    return np.concatenate(rows), np.concatenate(where)


def resample_dead_latents(
  key: jax.Array,
  params: dict,
  x: jax.Array,
  loss: jax.Array,
  dead: jax.Array,
  encoder_scale: float = 0.2,
  log_threshold: float | None = None,
) -> tuple[dict, dict]:
  """Dead latents given new directions (Bricken et al. 2023, "Towards Monosemanticity",
  neuron resampling).

  For each dead latent j a row x_i of `x` (n, d) is drawn with probability ∝ `loss[i]`²
  (rows of zero loss, e.g. padding, are never drawn; uniformly among the rows when every
  loss is zero); with u = x_i/‖x_i‖, the decoder row j becomes u, the encoder column j
  `encoder_scale` · (mean norm of the live latents' encoder columns) · u, and the encoder
  bias j zero; with `log_threshold` (JumpReLU's log θ at initialisation), its threshold
  restarts there.

  Returns:
    `(params, reset)`: the new params, and a tree of the params' structure whose entries
    are True where a value was replaced (to reset the optimizer's moments there).
  """
  encoder, decoder = params["encoder"], params["decoder"]
  weights = loss.astype(jnp.float32) ** 2
  weights = jnp.where(jnp.sum(weights) > 0, weights, (loss >= 0).astype(jnp.float32))
  rows = jax.random.choice(key, x.shape[0], (dead.shape[0],), p=weights / jnp.sum(weights))
  chosen = x[rows]
  unit = chosen / jnp.maximum(jnp.linalg.norm(chosen, axis=1, keepdims=True), 1e-8)
  norms = jnp.linalg.norm(encoder["kernel"], axis=0)
  live = ~dead
  live_norm = jnp.sum(norms * live) / jnp.maximum(jnp.sum(live), 1)
  live_norm = jnp.where(jnp.any(live), live_norm, 1.0)
  new = {
    **params,
    "encoder": {
      "kernel": jnp.where(
        dead[None, :],
        (encoder_scale * live_norm * unit.T).astype(encoder["kernel"].dtype),
        encoder["kernel"],
      ),
      "bias": jnp.where(dead, 0.0, encoder["bias"]).astype(encoder["bias"].dtype),
    },
    "decoder": {
      **decoder,
      "kernel": jnp.where(dead[:, None], unit.astype(decoder["kernel"].dtype), decoder["kernel"]),
    },
  }
  reset = jax.tree.map(lambda leaf: jnp.zeros(leaf.shape, bool), params)
  reset["encoder"] = {
    "kernel": jnp.broadcast_to(dead[None, :], encoder["kernel"].shape),
    "bias": dead,
  }
  reset["decoder"] = {
    **reset["decoder"],
    "kernel": jnp.broadcast_to(dead[:, None], decoder["kernel"].shape),
  }
  if log_threshold is not None:
    new["log_threshold"] = jnp.where(dead, log_threshold, params["log_threshold"])
    reset["log_threshold"] = dead
  return new, reset


def _reset_moments(moment: jax.Array, mask: jax.Array) -> jax.Array:
  """An optimizer's per-entry moment (Adam's m or v) zeroed where `mask`; a state of
  another shape (factored or per-tensor: Adafactor, NovoGrad) is left as it is."""
  if moment.shape != mask.shape:
    return moment
  return jnp.where(mask, jnp.zeros_like(moment), moment)


def categorical_kl(clean_logits: jax.Array, other_logits: jax.Array) -> jax.Array:
  """KL(p_clean ‖ p_other) over the last axis, nats."""
  log_p = jax.nn.log_softmax(clean_logits.astype(jnp.float32), axis=-1)
  log_q = jax.nn.log_softmax(other_logits.astype(jnp.float32), axis=-1)
  return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)


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
