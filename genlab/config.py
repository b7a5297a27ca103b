"""Experiment configs: load `experiments/<name>.py`, apply `--config.` overrides, validate.

An experiment is a Python file whose `get_config()` returns an
`ml_collections.ConfigDict`, usually `base_config(family)` with some fields
changed: the shared fields, and the family's own group of options, which the
family's module defines (`Family.default_options`). Every experiment has the
top-level fields listed in `REQUIRED_FIELDS`; `apply_overrides` lets the command
line change any existing field (`--config.model.latent_dim=16`) and refuses
fields that do not exist, naming the closest match.
"""

from __future__ import annotations

import ast
import contextlib
import difflib
import importlib.util
import json
import pathlib
from collections.abc import Sequence
from typing import Any

import ml_collections

from genlab import evaluators, families
from genlab.errors import ConfigError
from genlab.families import get_family
from genlab.kernels import KERNELS

REQUIRED_FIELDS = ("seed", "batch_size", "num_steps", "dataset", "model", "family")
# Shared fields that only the families that read them have (`Family.reads`).
OPTIONAL_FIELDS = ("loss", "corruption")
MESH_DEFAULTS = {
  "devices": 0,  # 0: every device of every process; N: the first N (one process).
  "fsdp": 1,  # Devices that split each large state array (-1: all; 1: none).
  "fsdp_min_size": 1 << 18,  # Arrays with fewer elements stay replicated.
}
# Fields a resumed run may change: none of them alters what a step computes.
SAFE_ON_RESUME = (
  "num_steps",
  "num_epochs",
  # Results do not depend on the devices, their layout or the kernels beyond float rounding
  # (tested to 1e-5 on the parameters, not bit-exact).
  "mesh.devices",
  "mesh.fsdp",
  "mesh.fsdp_min_size",
  "kernels",
  "eval_batch_size",
  "log_every",
  "eval_every",
  "image_every",
  "checkpoint_every",
  "keep_checkpoints",
  "num_images",
  "eval_at_start",
  "on_nonfinite",
  "on_unusable_checkpoints",
  "preemption_check_every",
  "data.data_dir",
  "data.device_resident",  # The same batches either way.
  "data.workers",  # The same batches either way.
  "data.stream_train",  # The same batches either way.
  "data.accept_changed_data",  # Whether to go on when the data changed (checked apart).
  "steps_per_dispatch",  # The same steps, fewer calls.
)


# Fields earlier versions named otherwise: old name → today's (same meaning).
RENAMED_FIELDS = {
  "sae.aux_dead_after": "sae.dead_after",
  "sae.threshold_decay": "model.threshold_decay",  # BatchTopK's, now a field of its code.
  # The GAN's sample metrics, shared since by every family that samples (genlab.evaluators).
  "gan.fd_n_real": "sample_metrics.fd_n_real",
  "gan.fd_n_fake": "sample_metrics.fd_n_fake",
  "gan.prdc_k": "sample_metrics.prdc_k",
  "gan.feature_net_steps": "sample_metrics.feature_net_steps",
}

# Fields earlier versions had, and what replaced them.
REMOVED_FIELDS = {
  "parallel": "every run is jax.jit over a mesh of its devices; set config.mesh.devices "
  "(1 for one device) and config.mesh.fsdp",
}


def base_config(family: str = "autoencoder") -> ml_collections.ConfigDict:
  """Fields every experiment shares, and `family`'s own options, with their defaults;
  experiments override them.

  Data values are mapped onto `data.range` (integer pixels read as 0..255,
  float as 0..1). Periods (`*_every`) count train steps.
  """
  placeholder = ml_collections.config_dict.placeholder
  config = ml_collections.ConfigDict()
  config.seed = 0  # Seeds the initial parameters, the data order and every key of the run.
  # The model family: a name of genlab.families.REGISTRY, or 'package.module:Class'.
  config.family = family
  config.dataset = "digits"  # An embedded or TFDS dataset name, or a .npz path.
  config.data = ml_collections.ConfigDict(
    {
      "data_dir": placeholder(str),  # TFDS data dir; None: $TFDS_DATA_DIR or ~/tensorflow_datasets.
      "image_key": "image",  # The TFDS feature that is the model's input.
      "label_key": "label",  # The TFDS feature with the labels, if any.
      "target_key": placeholder(str),  # TFDS feature with the target map, if any.
      "range": (0.0, 1.0),  # Pixel values are mapped linearly onto this range.
      # auto | on | off: keep the converted train split on the devices and gather each
      # batch inside the compiled step (auto: one process, split ≤ 1 GiB). Same batches.
      "device_resident": "auto",
      # Streamed batches (not device-resident) are built by a grain pipeline: in one
      # thread (0), or in this many worker processes. Same batches either way.
      "workers": 0,
      # Per-example augmentations of the streamed training images, in order: "" (none),
      # or names from genlab.data.augment: "flip", "crop" (e.g. "flip,crop"). Keyed by
      # each example's position in the run; device-resident data is not augmented, so
      # auto streams when this is set.
      "augment": "",
      "crop_padding": 4,  # "crop": a random window of the image reflected by this many pixels.
      # A .npz's x_*: image | series | tokens (None: image; named datasets know theirs).
      "modality": placeholder(str),
      # A TFDS or embedded dataset by name: read the train split from disk batch by batch
      # (tfds.data_source) rather than into memory, for datasets larger than memory. The
      # same batches either way. Directories of ArrayRecord files are always read so.
      "stream_train": False,
      # A resumed run refuses data whose examples changed since its checkpoints were trained
      # (a fingerprint of each split, WORKDIR/dataset.json); True goes on with the data as it
      # is now, and records its fingerprint.
      "accept_changed_data": False,
    }
  )
  config.batch_size = 64  # Global: summed over processes and devices.
  config.eval_batch_size = placeholder(int)  # None: batch_size.
  config.num_steps = 1000  # Train steps of the run (a resumed run continues to it).
  # Or the run's length in epochs, num_steps = num_epochs · ⌊train examples / batch⌋ (set one
  # of the two, the other to None).
  config.num_epochs = placeholder(int)
  # The run's devices as a mesh (genlab.run.runner): jax.jit over it, batches split over
  # every device, parameters and optimizer states replicated, or split over `fsdp` devices.
  config.mesh = ml_collections.ConfigDict(MESH_DEFAULTS)
  # Which layers models build (genlab.kernels): auto (genlab's XLA:CPU kernels when every
  # device is a CPU, else flax's own) | flax | xla_cpu.
  config.kernels = "auto"
  # Steps per call of the compiled step (lax.scan); logging, eval, images and checkpoints
  # happen between calls, so their periods must be multiples of it. Same results as 1.
  config.steps_per_dispatch = 1
  # The model: `name` and the fields of its Flax module (the family's docs list them).
  config.model = ml_collections.ConfigDict({"name": "conv_ae"})
  # Computation dtype: float32 | bfloat16 (params, optimizer state and losses stay float32).
  config.dtype = "float32"
  # The reconstruction loss: mse | bce (images); mse | gaussian_nll | cross_entropy (sequences).
  config.loss = "mse"
  config.corruption = ""  # Denoising input noise, e.g. "gaussian:0.5" (genlab.corruptions).
  # An optax optimizer by name; the other fields are passed to it when set.
  config.optimizer = ml_collections.ConfigDict(
    {
      "name": "adam",  # Any optax optimizer: adam, adamw, sgd, lion, ...
      "learning_rate": 1e-3,  # The peak learning rate.
      "b1": placeholder(float),  # Adam-like β1 (None: optax's default).
      "b2": placeholder(float),  # Adam-like β2 (None: optax's default).
      "eps": placeholder(float),  # Adam-like ε (None: optax's default).
      "weight_decay": placeholder(float),  # For optimizers that take it (adamw, lion, ...).
      "momentum": placeholder(float),  # For sgd.
      "warmup_steps": 0,  # The learning rate ramps linearly from 0 over these steps.
      "grad_clip_norm": placeholder(float),  # Clip gradients to this global norm (None: off).
    }
  )
  config.log_every = 100  # Steps between train-metric lines (means over the steps between).
  config.eval_every = 500  # Steps between evaluations on the whole test split.
  config.image_every = 500  # Steps between the family's views (images/).
  config.checkpoint_every = 500  # Steps between checkpoints (and one at the end).
  config.keep_checkpoints = 3  # The newest checkpoints kept.
  config.num_images = 8  # Test examples shown in each PNG grid.
  config.eval_at_start = False  # Also evaluate before the first step of a fresh run.
  config.on_nonfinite = "stop"  # stop | skip: what a NaN/Inf loss or gradient does.
  config.on_unusable_checkpoints = "fail"  # fail | restart: when no checkpoint can be restored.
  config.preemption_check_every = 1  # Steps between the processes' agreement on a stop signal.
  family_class = get_family(family)
  for name in OPTIONAL_FIELDS:  # Shared fields that only some families read.
    if name not in family_class.reads:
      del config[name]
  options = family_class.default_options()
  if options is not None:
    config[family_class.options_group] = options
  if family_class.sample_evaluators is not None:  # A family that samples: metrics of them.
    config.sample_metrics = evaluators.options(family_class.sample_evaluators)
  return config


def load_experiment(path: str | pathlib.Path) -> ml_collections.ConfigDict:
  """Imports an experiment file and returns its `get_config()`.

  Args:
    path: path to a Python file defining `get_config()`.

  Returns:
    The experiment's config, unlocked copy.

  Raises:
    ConfigError: the file does not exist or has no `get_config()`.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise ConfigError(f"experiment file not found: {path}{_nearest_file(path)}")
  spec = importlib.util.spec_from_file_location(f"genlab_experiment_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"{path} defines no get_config()")
  config = module.get_config()
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f"{path}: get_config() must return an ml_collections.ConfigDict")
  return config


def _nearest_file(path: pathlib.Path) -> str:
  """` (did you mean experiments/x.py?)` for the closest .py file in `path`'s folder (or
  ./experiments if that folder does not exist), or ''."""
  folder = path.parent if path.parent.is_dir() else pathlib.Path("experiments")
  if not folder.is_dir():
    return ""
  names = sorted(p.name for p in folder.glob("*.py"))
  name = path.name if path.suffix == ".py" else path.name + ".py"
  close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
  return f" (did you mean {folder / close[0]}?)" if close else ""


def _parse_value(text: str) -> Any:
  """Parses a command-line value as a Python literal, else keeps the string."""
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def _all_field_names(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  names = []
  for key, value in config.items():
    names.append(prefix + key)
    if isinstance(value, ml_collections.ConfigDict):
      names.extend(_all_field_names(value, prefix + key + "."))
  return names


def set_field(config: ml_collections.ConfigDict, dotted: str, text: str) -> None:
  """Sets `config.<dotted>` from its command-line text, keeping the field's type.

  Raises:
    ConfigError: the field does not exist, or the value has the wrong type.
  """
  *parents, leaf = dotted.split(".")
  node = config
  for i, name in enumerate(parents):
    child = node.get(name)
    if not isinstance(child, ml_collections.ConfigDict):
      if name in node:
        raise ConfigError(
          f"--config.{dotted}: {'.'.join(parents[: i + 1])} is a value, not a group"
        )
      _raise_unknown(config, ".".join(parents[: i + 1]))
    node = child
  if leaf not in node:
    _raise_unknown(config, dotted)
  if isinstance(node[leaf], ml_collections.ConfigDict):
    raise ConfigError(f"--config.{dotted} is a group of fields; set one of them")
  # The declared type: a placeholder field (None for now) still knows it.
  field_type = node.get_type(leaf)
  value = _parse_value(text)
  if field_type is type(None):  # An untyped None: take the literal as it is.
    pass
  elif issubclass(field_type, str) and not isinstance(value, str):
    value = text  # `--config.data.data_dir=2024` on a string field means the string "2024".
  elif field_type is bool and not isinstance(value, bool):
    if text.strip().lower() not in ("true", "false"):
      raise ConfigError(f"--config.{dotted} expects True or False, got {text!r}")
    value = text.strip().lower() == "true"  # The spelling of JSON and absl flags too.
  elif field_type is not bool and isinstance(value, bool):
    raise ConfigError(f"--config.{dotted} expects {field_type.__name__}, got the bool {text}")
  elif field_type is float and isinstance(value, int):
    value = float(value)
  elif field_type is tuple and isinstance(value, list):
    value = tuple(value)
  elif field_type is list and isinstance(value, tuple):
    value = list(value)
  elif field_type is tuple and not isinstance(value, tuple):
    value = (value,)
  try:
    node[leaf] = value
  except (TypeError, ValueError) as e:
    raise ConfigError(
      f"--config.{dotted}={text}: expected {field_type.__name__}, got {type(value).__name__}"
    ) from e


def _raise_unknown(config: ml_collections.ConfigDict, dotted: str) -> None:
  if dotted in REMOVED_FIELDS:
    raise ConfigError(f"--config.{dotted} is gone: {REMOVED_FIELDS[dotted]}")
  close = difflib.get_close_matches(dotted, _all_field_names(config), n=1)
  hint = f" (did you mean --config.{close[0]}?)" if close else ""
  raise ConfigError(f"unknown config field --config.{dotted}{hint}")


# Fields of which a run uses one: the one given on the command line wins over the other.
EXCLUSIVE = {"num_steps": "num_epochs", "num_epochs": "num_steps"}


def _declare_model_field(config: ml_collections.ConfigDict, dotted: str) -> None:
  """A field of the model's class that the experiment leaves at its default can be set too:
  `--config.model.FIELD` declares it (at its default) before it is set."""
  group, _, leaf = dotted.partition(".")
  if group != "model" or not leaf or "." in leaf or leaf in config.get("model", {}):
    return
  try:
    defaults = get_family(config.family).model_defaults(config)
  except ConfigError:
    return  # An unknown family or model is reported where the config is validated.
  if defaults is not None and leaf in defaults:
    with config.unlocked() if config.is_locked else contextlib.nullcontext():
      config.model[leaf] = defaults[leaf]


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> list[str]:
  """Applies `--config.a.b=value` strings to `config` in place.

  Returns:
    Notes for the user on what an override replaced: `--config.num_steps` clears the
    experiment's `num_epochs`, and `--config.num_epochs` its `num_steps`.
  """
  notes = []
  for item in overrides:
    if not item.startswith("--config.") or "=" not in item:
      raise ConfigError(f"cannot read override {item!r}: expected --config.FIELD=VALUE")
    dotted, text = item[len("--config.") :].split("=", 1)
    _declare_model_field(config, dotted)
    set_field(config, dotted, text)
    other = EXCLUSIVE.get(dotted)
    if other is not None and config.get(other) is not None and config[dotted] is not None:
      notes.append(f"--config.{dotted} given: the experiment's {other}={config[other]} is not used")
      config[other] = None
  return notes


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks the fields every experiment must have and their ranges."""
  missing = [f for f in REQUIRED_FIELDS if f not in config]
  if missing:
    raise ConfigError(f"config lacks required fields: {', '.join(missing)}")
  for name, instead in REMOVED_FIELDS.items():
    if name in config:
      raise ConfigError(f"config.{name} is gone: {instead}")
  if config.get("kernels", "auto") not in KERNELS:
    raise ConfigError(f"config.kernels={config.kernels!r}; choose one of {KERNELS}")
  mesh = mesh_settings(config)
  for name, allowed, what in (
    ("devices", lambda v: v >= 0, "0 (every device) or a count"),
    ("fsdp", lambda v: v >= 1 or v == -1, "-1 (every device) or a positive count"),
    ("fsdp_min_size", lambda v: v >= 0, "a count of elements"),
  ):
    value = mesh[name]
    if not isinstance(value, int) or isinstance(value, bool) or not allowed(value):
      raise ConfigError(f"config.mesh.{name} must be {what}, got {value!r}")
  if config.get("num_epochs") is not None and config.get("num_steps") is not None:
    raise ConfigError(
      f"config sets both num_steps={config.num_steps} and num_epochs={config.num_epochs}: a run "
      "is one or the other; set one to None (a --config. override of one clears the other)"
    )
  length = "num_epochs" if config.get("num_epochs") is not None else "num_steps"
  for name in ("batch_size", length):
    value = config[name]
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      raise ConfigError(f"config.{name} must be a positive integer, got {value!r}")
  for name, choices in (
    ("on_nonfinite", ("stop", "skip")),
    ("on_unusable_checkpoints", ("fail", "restart")),
  ):
    if name in config and config[name] not in choices:
      raise ConfigError(f"config.{name}={config[name]!r}; choose one of {choices}")
  periods = ("log_every", "eval_every", "checkpoint_every", "image_every", "keep_checkpoints")
  for name in periods + ("preemption_check_every", "steps_per_dispatch"):
    if name in config and (not isinstance(config[name], int) or config[name] < 1):
      raise ConfigError(f"config.{name} must be a positive integer, got {config[name]!r}")
  k = config.get("steps_per_dispatch", 1)
  for name in ("num_steps", "log_every", "eval_every", "image_every", "checkpoint_every"):
    if config.get(name) is not None and config[name] % k:
      raise ConfigError(
        f"config.{name}={config[name]} is not a multiple of steps_per_dispatch={k}: logs, "
        "evaluations and checkpoints happen between dispatches"
      )
  if config.get("dtype", "float32") not in ("float32", "bfloat16"):
    raise ConfigError(f"config.dtype={config.dtype!r}; choose float32 or bfloat16")
  data = config.get("data", {})
  resident = data.get("device_resident", "off")
  if resident not in ("auto", "on", "off"):
    raise ConfigError(f"config.data.device_resident={resident!r}; choose one of auto, on, off")
  workers = data.get("workers", 0)
  if not isinstance(workers, int) or isinstance(workers, bool) or workers < 0:
    raise ConfigError(f"config.data.workers must be a non-negative integer, got {workers!r}")
  if data.get("augment") and resident == "on":
    raise ConfigError(
      f"config.data.augment={data.augment!r} with data.device_resident='on': device-resident "
      "batches are not augmented; set device_resident to auto or off"
    )


def canonicalize(config: ml_collections.ConfigDict) -> None:
  """Names what `config` chooses by name so that any process finds it again (in place), and
  drops the shared fields its family does not read (`OPTIONAL_FIELDS`, as `upgrade` does
  for a saved config): `family` and every model `name` of `config.model` become what their
  registries record
  (`Registry.canonical`: genlab's and installed packages' names as they are, a class
  registered in this process as its 'package.module:Class' path), and gives a family that
  samples its `sample_metrics` group at its defaults if the config lacks it. A run does this
  before it saves config.json, which `genlab eval`, `sample` and `encode` read alone."""
  from genlab import models

  config.family = families.REGISTRY.canonical(config.family)
  family_class = get_family(config.family)
  reads = family_class.reads
  if family_class.sample_evaluators is not None and "sample_metrics" not in config:
    # What the family reads anyway, written down: a resume compares it with the saved
    # config, which `upgrade` gives every group the family has.
    config.sample_metrics = evaluators.options(family_class.sample_evaluators)
  for name in OPTIONAL_FIELDS:  # A config built for another family may carry them: unread.
    if name in config and name not in reads:
      del config[name]

  def walk(group):
    for key, value in group.items():
      if isinstance(value, ml_collections.ConfigDict):
        walk(value)
      elif key == "name" and isinstance(value, str):
        try:
          group[key] = models.REGISTRY.canonical(value)
        except ConfigError:  # Not a model (the GAN's pair is `gan`): its family says.
          pass

  walk(config.model)


def mesh_settings(config: ml_collections.ConfigDict) -> dict[str, int]:
  """`config.mesh` as a dict, a field it lacks at its default (`MESH_DEFAULTS`)."""
  return {**MESH_DEFAULTS, **(config.get("mesh") or {})}


def resolve_num_steps(config: ml_collections.ConfigDict, num_train: int) -> None:
  """Turns a run's length in epochs into `num_steps` (in place): `num_epochs` · ⌊num_train /
  batch_size⌋ steps, from now on (a resumed run compares the steps). A run of no steps, or
  of steps that `steps_per_dispatch` does not divide, is refused in one line."""
  if config.get("num_epochs") is None:
    return
  steps = config.num_epochs * (num_train // config.batch_size)
  k = config.get("steps_per_dispatch", 1)
  if steps < 1 or steps % k:
    raise ConfigError(
      f"config.num_epochs={config.num_epochs} of {num_train} examples in batches of "
      f"{config.batch_size} is {steps} steps"
      + (", none" if steps < 1 else f", not a multiple of steps_per_dispatch={k}")
      + "; set num_steps instead, or another num_epochs or batch_size"
    )
  config.num_steps, config.num_epochs = steps, None


def _flatten(tree: dict, prefix: str = "") -> dict:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      flat[prefix + key] = value
  return flat


def check_resumable(saved: ml_collections.ConfigDict, config: ml_collections.ConfigDict) -> None:
  """Refuses to resume a run whose config differs from the saved one in an unsafe field.

  Raises:
    ConfigError: listing every differing field outside `SAFE_ON_RESUME`, with
      its saved and its new value.
  """
  # Model fields as the run builds them: one left at its default equals one set to it.
  old = _flatten(_with_model_defaults(saved))
  new = _flatten(_with_model_defaults(config))
  differing = [
    f"{key} (saved {old.get(key, '<absent>')!r}, now {new.get(key, '<absent>')!r})"
    for key in sorted(set(old) | set(new))
    if key not in SAFE_ON_RESUME and old.get(key) != new.get(key)
  ]
  if differing:
    raise ConfigError(
      "the workdir's checkpoints were trained with another config; these fields differ: "
      + "; ".join(differing)
      + ". Use a new workdir, or the saved values (fields a resume may change: "
      + ", ".join(SAFE_ON_RESUME)
      + ")"
    )


def _with_model_defaults(config: ml_collections.ConfigDict) -> dict[str, Any]:
  try:
    return resolved(config)
  except ConfigError:  # An unknown family or model: compared as written.
    return json.loads(to_json(config))


def resolved(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """`config` as `genlab config` shows it: with `model` holding every field of its model's
  class at its default unless the config sets it (leaving out those the family sets from
  the data), as the run will build it."""
  shown = json.loads(to_json(config))
  model = get_family(config.family).model_defaults(config)
  if model is not None:
    shown["model"] = json.loads(json.dumps(model, sort_keys=True, default=str))
  return shown


def to_json(config: ml_collections.ConfigDict) -> str:
  """Serialises a config to stable, human-readable JSON (tuples become lists)."""
  return json.dumps(config.to_dict(), indent=2, sort_keys=True)


def from_json(text: str) -> ml_collections.ConfigDict:
  """Inverse of `to_json`: lists of the saved file come back as tuples."""

  def tuplify(value):
    if isinstance(value, dict):
      return {k: tuplify(v) for k, v in value.items()}
    if isinstance(value, list):
      return tuple(tuplify(v) for v in value)
    return value

  return upgrade(ml_collections.ConfigDict(tuplify(json.loads(text))))


def upgrade(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A config saved by an earlier genlab, in today's fields: `parallel` (jit, pmap or
  shard_map, all now one mesh path, same results) dropped, renamed fields (`RENAMED_FIELDS`)
  under their new names with their saved values, and every field it lacks added with
  today's default (each default keeps what a run without the field did)."""
  if "parallel" in config:
    del config["parallel"]
  for old, new in RENAMED_FIELDS.items():
    (group, old_name), (new_group, new_name) = old.split("."), new.split(".")
    if old_name in config.get(group, {}):
      if new_group not in config:
        config[new_group] = ml_collections.ConfigDict()
      config[new_group][new_name] = config[group][old_name]
      del config[group][old_name]
  try:
    defaults = base_config(config.get("family", "autoencoder"))
  except ConfigError:  # An unknown family is said by whoever builds it; the rest upgrades.
    defaults = base_config("autoencoder")
  for name in OPTIONAL_FIELDS:  # Saved by a genlab that gave every family every field.
    if name not in defaults and name in config:
      del config[name]
  _add_missing(config, defaults)
  return config


def _add_missing(config: ml_collections.ConfigDict, defaults: ml_collections.ConfigDict) -> None:
  for key, value in defaults.items():
    if key not in config:
      config[key] = value
    elif isinstance(value, ml_collections.ConfigDict) and isinstance(
      config[key], ml_collections.ConfigDict
    ):
      _add_missing(config[key], value)
