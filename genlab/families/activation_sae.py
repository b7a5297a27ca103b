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

import ast
import dataclasses
import types
from typing import Any

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
      # With host_workdir: the host's submodule (path) whose output the SAE reads
      # ('path:input': its input).
      "layer": "block_1",
      # A transcoder: the submodule whose output the SAE reconstructs from `layer` (and
      # which its eval replaces), e.g. layer='block_1/mlp_in:input',
      # output_layer='block_1/mlp_out'. "": an SAE (it reconstructs `layer`).
      "output_layer": "",
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
      # A set of SAEs trained from one pass of the host over the same batches, each with
      # its own parameters, optimizer state and metrics (`name/metric`): "name: field=value,
      # ...; name: ..." with model fields (k, code_dim, code, ...) and the options in
      # VARIANT_OPTIONS (layer, l1, aux_k, ...), e.g. "k16: k=16; k32_b0: k=32, layer=block_0".
      # "": one SAE.
      "variants": "",
    }
  )
  group.update(overrides)
  return group


# Per-SAE options a variant of a set may change (the rest are the run's: one host, one data).
VARIANT_OPTIONS = (
  "layer",
  "output_layer",
  "l1",
  "l1_decoder_norm",
  "l0",
  "unit_norm_decoder",
  "aux_k",
  "aux_weight",
  "dead_after",
  "resample_every",
  "resample_encoder_scale",
  "dense_above",
  "view_latents",
)


def parse_variants(text: str) -> dict[str, dict[str, Any]]:
  """`sae.variants`, "name: field=value, field=value; name: ..." → {name: {field: value}}.

  Values are Python literals (`k=16`, `matryoshka_widths=(64, 256)`) or, where they do not
  parse, strings (`layer=block_0`)."""
  variants = {}
  for item in filter(None, (part.strip() for part in text.split(";"))):
    name, colon, body = item.partition(":")
    name = name.strip()
    if not colon or not name.isidentifier():
      raise ConfigError(
        f"config.sae.variants: {item!r} is not 'name: field=value, ...' (a name of letters, "
        "digits and _, then its overrides), e.g. 'k16: k=16; k32_block0: k=32, layer=block_0'"
      )
    if name in variants or name == "host":
      why = "given twice" if name in variants else "reserved (the host's part of the state)"
      raise ConfigError(f"config.sae.variants: the name {name!r} is {why}")
    overrides = {}
    for assignment in _split_top_level(body):
      field, equals, value = assignment.partition("=")
      if not equals or not field.strip():
        raise ConfigError(f"config.sae.variants: {name}: {assignment!r} is not field=value")
      try:
        overrides[field.strip()] = ast.literal_eval(value.strip())
      except (ValueError, SyntaxError):
        overrides[field.strip()] = value.strip()
    variants[name] = overrides
  return variants


def _split_top_level(body: str) -> list[str]:
  """`body` split at the commas outside brackets (a tuple value keeps its commas)."""
  parts, depth, start = [], 0, 0
  for i, char in enumerate(body):
    depth += char in "([{"
    depth -= char in ")]}"
    if char == "," and depth == 0:
      parts.append(body[start:i])
      start = i + 1
  parts.append(body[start:])
  return [part.strip() for part in parts if part.strip()]


@dataclasses.dataclass
class Member:
  """One SAE of the family: the lone SAE (its state's part `model`), or one of a set
  (`sae.variants`: the part is the variant's name)."""

  name: str
  options: ml_collections.ConfigDict  # config.sae with the variant's overrides.
  fields: dict[str, Any]  # The model's fields with the variant's overrides.
  code_class: type
  layer: str | None = None  # The layer the variant names; None: the host's.
  read: str = ""  # The layer it encodes ("" until the host is known).
  write: str = ""  # The layer it reconstructs (`read` but for a transcoder).
  width: int = 0  # The width it reconstructs.
  model: Any = None
  objective: SAEObjective | None = None

  @property
  def code(self) -> str:
    return self.code_class.name


class ActivationSAEViews(Views):
  """The latents' firing frequencies on the test split (log10 histogram), and for some
  latents the test contexts where they fire most (the firing character in brackets); for a
  set of SAEs, each SAE's, named after it."""

  def images(self, state, batch, step):
    views = {}
    for member in self.family.members:
      suffix = "" if self.family.lone else f"_{member.name}"
      for name, image in self._images(state, step, member).items():
        views[name + suffix] = image
    return views

  def _images(self, state, step, member):
    from genlab.views import figure_pixels, subplots

    family = self.family
    codes, where = family.latent_activity(state, member=member.name)
    rate = np.mean(codes > 0, axis=0)
    fig, ax = subplots(figsize=(5, 3))
    alive = rate[rate > 0]
    ax.hist(np.log10(alive), bins=40)
    title = f"step {step}: {np.sum(rate == 0)} of {len(rate)} never fire"
    ax.set(
      xlabel="log10 firing frequency on the test split's positions",
      ylabel="latents",
      title=title if family.lone else f"{member.name}, {title}",
    )
    views = {"latent_density": figure_pixels(fig)}
    if family.dataset.modality == "tokens":
      alive_latents = np.flatnonzero(rate > 0)
      shown = member.options.view_latents
      chosen = alive_latents[:: max(1, len(alive_latents) // shown)]
      lines = []
      for latent in chosen[:shown]:
        lines.append(f"latent {latent} (fires on {rate[latent]:.2%} of test positions)")
        lines += top_contexts(codes, where, family.dataset.test["image"], int(latent))
      fig, ax = subplots(figsize=(8, 0.17 * len(lines) + 0.3))
      ax.axis("off")
      ax.text(0, 1, "\n".join(lines), family="monospace", fontsize=8, va="top")
      views["top_contexts"] = figure_pixels(fig, dpi=90)
    return views


class ActivationSAEReport(Report):
  definitions = evaluation.DEFINITIONS

  def describe(self, metrics):
    """The definitions of the metrics; a set's `name/metric` is defined as `metric`."""
    described = super().describe(metrics)
    for key in metrics:
      name, _, metric = key.rpartition("/")
      if name and metric in self.definitions:
        described[key] = f"{name}'s: {self.definitions[metric]}"
    return described

  def protocol(self):
    family = self.family
    o = family.options
    source = family.source
    host = source.host if source else None
    common = {
      "split": "test (the host's inputs; every example position)",
      "host": host.description if host else None,
      "skip_first": o.skip_first if o.host_workdir else "the host factory's positions",
      "normalize": o.normalize,
      "normalize_examples": o.normalize_examples,
    }
    if family.lone:
      return {**common, **self._sae(family.members[0]), "sae": o.to_dict()}
    protocol = {**common, "sae": o.to_dict()}
    protocol["variants"] = {m.name: self._sae(m) for m in family.members}
    protocol["set"] = (
      "the SAEs of sae.variants, trained together: one pass of the host per step over the "
      "same batches, each SAE with its own parameters, optimizer state and metrics "
      "(name/metric)"
    )
    return protocol

  def _sae(self, member):
    source, model, o = self.family.source, member.model, member.options
    host = source.host if source else None
    read = member.read or (o.layer if o.host_workdir else None)
    return {
      "layer": read if host or read else None,
      "output_layer": o.output_layer or None,
      "transcoder": bool(o.output_layer),
      "normalize_scale_mean": float(np.mean(source.scales[read])) if source else None,
      "width": source.widths[read] if source else None,
      "output_width": member.width if source and o.output_layer else None,
      "latents": model.code_dim if model else None,
      "code": member.code,
      "k": model.k if model and member.code_class.sparsity == "k" else None,
      "dead": "never active on the test split's positions (eval_positions)",
    }


class ActivationSAE(Family):
  """An SAE on `sae.layer` of a host model (`config.model.name='sparse_ae'`), or a set of
  them trained from one pass of the host (`sae.variants`)."""

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
    variants = parse_variants(o.variants)
    self.lone = not variants
    if self.lone:
      self.members = [self._member("model", {})]
    else:
      self.members = [self._member(name, overrides) for name, overrides in variants.items()]
      self.headline = tuple(f"{m.name}/{k}" for m in self.members for k in ("mse", "l0"))
    first = self.members[0]  # The lone SAE's, or the set's first: what `code` etc. name.
    self.code, self.code_class = first.code, first.code_class
    self.tx = make_optimizer(config.optimizer)
    self.source: ActivationSource | None = None

  def _member(self, name: str, overrides: dict[str, Any]) -> Member:
    """The SAE `name` with `overrides` (model fields and `VARIANT_OPTIONS`), checked."""
    where = "config" if self.lone else f"config.sae.variants {name}:"
    defaults = field_defaults(self.model_cls)
    fields, o = dict(self.fields), self.options.copy_and_resolve_references()
    for field, value in overrides.items():
      if field in VARIANT_OPTIONS:
        try:
          o[field] = value
        except TypeError:
          raise ConfigError(
            f"{where} {field}={value!r}: config.sae.{field} is a {type(o[field]).__name__}"
          ) from None
      elif field in defaults or field in fields:
        fields[field] = value
      else:
        raise ConfigError(
          f"{where} {field!r} is neither a field of {self.model_cls.__name__} nor an option "
          f"an SAE of a set may change ({', '.join(VARIANT_OPTIONS)})"
        )
    code = fields.get("code", defaults.get("code"))
    code_class = CODES.get(code)
    sae = "config.sae" if self.lone else f"{where} sae"
    if code_class.name == "sigmoid":
      raise ConfigError(
        f"{'config.model.' if self.lone else where + ' '}code='sigmoid' is the image sparse "
        "AE's "
        "(KL-ρ); activation SAEs take "
        f"{', '.join(n for n in CODES.names() if n != 'sigmoid')}, or a code of your own"
      )
    if o.aux_k and not code_class.takes_aux_k:
      raise ConfigError(
        f"{sae}.aux_k (the dead-latent loss) needs a code that takes it (topk, "
        f"batchtopk, matryoshka_batchtopk); code {code!r} does not"
      )
    code_dim = fields.get("code_dim", defaults.get("code_dim"))
    if code_dim is not None:  # The code's own fields, against the dictionary's size.
      code_class.of(types.SimpleNamespace(**(defaults | fields))).check(code_dim)
    if code_dim is not None and not 0 <= o.aux_k <= code_dim:
      raise ConfigError(f"{sae}.aux_k={o.aux_k} must lie in 0..code_dim={code_dim}")
    if o.dead_after < 1 or o.resample_every < 0 or o.resample_encoder_scale <= 0:
      raise ConfigError(
        f"{sae}: dead_after={o.dead_after} must be positive, resample_every="
        f"{o.resample_every} 0 (off) or positive, resample_encoder_scale="
        f"{o.resample_encoder_scale} positive"
      )
    layer = overrides.get("layer")
    return Member(name=name, options=o, fields=fields, code_class=code_class, layer=layer)

  # The host and the SAE -----------------------------------------------------------------

  def needs(self):
    o = self.options
    if o.host_factory:
      return {"host_model": {"factory": o.host_factory}}
    return {"host_model": {"workdir": o.host_workdir, "layer": o.layer, "skip_first": o.skip_first}}

  def provide(self, resources):
    super().provide(resources)
    o = self.options
    host = resources["host_model"]
    for member in self.members:
      member.read = member.layer or host.layer
      member.write = member.options.output_layer or member.read
    layers = [layer for m in self.members for layer in (m.read, m.write)]
    self.source = ActivationSource(
      host,
      self.dataset,
      normalize=o.normalize,
      normalize_examples=o.normalize_examples,
      cache_dir=o.cache_dir,
      layers=layers,
    )
    for member in self.members:
      member.width = self.source.widths[member.write]
      member.model = self.build(
        self.model_cls, output_shape=(member.width,), output_activation="none", **member.fields
      )
      member.objective = SAEObjective(member.model, member.options, self.tx)
    self._codes = jax.jit(self._codes_of, static_argnames="member")

  # The lone SAE's (or the set's first SAE's) pieces, by the names they have always had.

  @property
  def model(self):
    return self.members[0].model

  @property
  def objective(self) -> SAEObjective | None:
    return self.members[0].objective

  @objective.setter
  def objective(self, objective: SAEObjective) -> None:  # A test's own objective.
    self.members[0].objective = objective

  @property
  def width(self) -> int:
    return self.members[0].width

  @property
  def layers(self) -> tuple[str, str]:
    return self.members[0].read, self.members[0].write

  def member(self, name: str) -> Member:
    """The SAE of the set named `name` (`model`: the lone SAE)."""
    for member in self.members:
      if member.name == name:
        return member
    raise ConfigError(
      f"no SAE {name!r} in this run; it has {', '.join(m.name for m in self.members)}"
    )

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
    """Every SAE of a set from the same `key`: each starts as it would in a run of its own."""
    self._require_host()
    params, stats = {}, {}
    for m in self.members:
      width = self.source.widths[m.read]
      init = m.model.init(key, jnp.zeros((1, width)), jnp.zeros(()))["params"]
      params[m.name] = m.objective.unit_norm(init)
      stats[m.name] = m.objective.initial_stats()
    # The host's params ride in the state's untrained part: the runner places them on the
    # devices like any state (replicated, or split with mesh.fsdp), steps take them as an
    # argument rather than baking them into the program as constants, and a checkpoint
    # holds the host its SAE was trained with.
    stats["host"] = jax.tree.map(jnp.asarray, self.source.host.params)
    tx = {m.name: self.tx for m in self.members}
    return TrainState.create(params=params, tx=tx, stats=stats)

  def activations(self, batch, host_params) -> tuple[jax.Array, jax.Array]:
    """(normalised activations read, one row per position; their weights: 1 on examples)."""
    return self.source.activations(batch, host_params)

  def reconstruct(self, params, x, weights, stats, *, train: bool):
    """(x̂, latents, pre-activations, the code's new stats or None) of the lone SAE."""
    return self.objective.reconstruct(params, x, weights, stats, train=train)

  def train_step(self, state, batch, key) -> tuple[TrainState, Metrics]:
    """One update of every SAE, on one pass of the host; with `sae.resample_every`, dead
    latents are resampled first on the steps it divides (the only use of `key`)."""
    rows, weights = self.source.all_activations(batch, state.stats["host"])
    metrics = {}
    for m in self.members:
      x, target = rows[m.read], (rows[m.write] if m.write != m.read else None)
      state, own = self._update(state, m, x, target, weights, key)
      metrics.update(own if self.lone else {f"{m.name}/{k}": v for k, v in own.items()})
    return state, metrics

  def _update(self, state, m: Member, x, target, weights, key):
    objective = m.objective
    resampled = None
    if m.options.resample_every:
      state, resampled = objective.resample(state, x, weights, key, part=m.name, target=target)
    stats = state.stats[m.name]

    def loss_fn(params):
      loss, parts, new = objective(params, x, weights, stats, train=True, target=target)
      return loss, (parts, new)

    state, metrics = gradient_step(state, m.name, loss_fn, has_stats=True)
    if resampled is not None:
      metrics["resampled_latents"] = resampled
    params = objective.unit_norm(state.params[m.name])
    return state.replace(params={**state.params, m.name: params}), metrics

  def resample(self, state, x, weights, key, target=None):
    """`SAEObjective.resample` of the state's (lone) SAE."""
    return self.objective.resample(state, x, weights, key, target=target)

  def eval_step(self, state, batch) -> Metrics:
    """Sums over the batch's example positions (and its sequences where `mask` is 1), of
    every SAE of the run from the host's shared passes (`evaluation.set_eval_sums`)."""
    judged = [
      evaluation.Judged(m.objective, state.params[m.name], state.stats[m.name], m.read, m.write)
      for m in self.members
    ]
    every = evaluation.set_eval_sums(self.source, state.stats["host"], batch, judged)
    if self.lone:
      return every[0]
    return {
      f"{m.name}/{k}": v for m, own in zip(self.members, every, strict=True) for k, v in own.items()
    }

  def summarize(self, means):
    """Ratios of the eval step's sums (their means over sequences: the same ratios)."""
    metrics, self.latent_rates = {}, {}
    for m in self.members:
      prefix = "" if self.lone else f"{m.name}/"
      own = {k.removeprefix(prefix): v for k, v in means.items() if k.startswith(prefix)}
      ratios, self.latent_rates[m.name] = evaluation.summarize(
        own, width=m.width, dense_above=m.options.dense_above
      )
      metrics.update({f"{prefix}{k}": v for k, v in ratios.items()})
    self.latent_rate = self.latent_rates[self.members[0].name]
    return {**metrics, "eval_positions": self.source.eval_positions}

  # Views --------------------------------------------------------------------------------

  def _codes_of(self, state, batch, member: str = "model"):
    """(the code of every position of `batch` of the SAE `member`, the positions' weights)."""
    m = self.members[0] if self.lone else self.member(member)
    rows, weights = self.source.all_activations(batch, state.stats["host"])
    _, code, _, _ = m.objective.reconstruct(
      state.params[m.name], rows[m.read], weights, state.stats[m.name], train=False
    )
    return code, weights

  def latent_activity(self, state, split="test", member: str | None = None):
    """(code of every example position (positions, latents), (sequence, position) of
    each row), over a split, of the SAE `member` (default: the lone or first); for the
    views."""
    member = member or self.members[0].name
    rows, where, start = [], [], 0
    for batch in self.source.batches(self.dataset.split(split), size=HOST_BATCH):
      mask = batch.pop("mask")
      device_batch = {k: jnp.asarray(v) for k, v in batch.items()}
      code, weights = to_host(self._codes(state, device_batch, member=member))
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
