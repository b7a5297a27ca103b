"""Experiment configs: load `experiments/<name>.py`, apply `--config.` overrides, validate.

An experiment is a Python file whose `get_config()` returns an
`ml_collections.ConfigDict`. Every experiment has the top-level fields listed
in `REQUIRED_FIELDS`; `apply_overrides` lets the command line change any
existing field (`--config.model.latent_dim=16`) and refuses fields that do not
exist, naming the closest match.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import json
import pathlib
from collections.abc import Sequence
from typing import Any

import ml_collections

from genlab.errors import ConfigError

REQUIRED_FIELDS = ("seed", "batch_size", "num_steps", "dataset", "model", "parallel", "family")
# Fields a resumed run may change: none of them alters what a step computes.
SAFE_ON_RESUME = (
  "num_steps",
  "num_epochs",
  "parallel",  # Results do not depend on the device count (tested to 1e-7, not bit-exact).
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
  "steps_per_dispatch",  # The same steps, fewer calls.
)
PARALLEL_MODES = ("auto", "pmap", "shard_map", "none")


def base_config() -> ml_collections.ConfigDict:
  """Fields every experiment shares, with their defaults; experiments override them.

  Data values are mapped onto `data.range` (integer pixels read as 0..255,
  float as 0..1). Periods (`*_every`) count train steps.
  """
  placeholder = ml_collections.config_dict.placeholder
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.family = "autoencoder"
  config.dataset = "digits"  # An embedded or TFDS dataset name, or a .npz path.
  config.data = ml_collections.ConfigDict(
    {
      "data_dir": placeholder(str),  # TFDS data dir; None: $TFDS_DATA_DIR or ~/tensorflow_datasets.
      "image_key": "image",
      "label_key": "label",
      "target_key": placeholder(str),  # TFDS feature with the target map, if any.
      "range": (0.0, 1.0),
      # auto | on | off: keep the converted train split on the devices and gather each
      # batch inside the compiled step (auto: one process, split ≤ 1 GiB). Same batches.
      "device_resident": "auto",
      # A .npz's x_*: image | series | tokens (None: image; named datasets know theirs).
      "modality": placeholder(str),
    }
  )
  config.batch_size = 64  # Global: summed over processes and devices.
  config.eval_batch_size = placeholder(int)  # None: batch_size.
  config.num_steps = 1000
  config.num_epochs = placeholder(int)  # If set: num_steps = num_epochs · ⌊train examples / batch⌋.
  config.parallel = "auto"  # auto | pmap | shard_map | none.
  # Steps per call of the compiled step (lax.scan); logging, eval, images and checkpoints
  # happen between calls, so their periods must be multiples of it. Same results as 1.
  config.steps_per_dispatch = 1
  config.model = ml_collections.ConfigDict({"name": "conv_ae"})
  # Computation dtype: float32 | bfloat16 (params, optimizer state and losses stay float32).
  config.dtype = "float32"
  config.loss = "mse"
  config.corruption = ""  # Denoising input noise, e.g. "gaussian:0.5" (genlab.corruptions).
  config.optimizer = ml_collections.ConfigDict({"name": "adam", "learning_rate": 1e-3})
  config.log_every = 100
  config.eval_every = 500
  config.image_every = 500
  config.checkpoint_every = 500
  config.keep_checkpoints = 3
  config.num_images = 8  # Test examples shown in each PNG grid.
  config.eval_at_start = False  # Also evaluate before the first step of a fresh run.
  # Reliability (README, "What survives what").
  config.on_nonfinite = "stop"  # stop | skip: what a NaN/Inf loss or gradient does.
  config.on_unusable_checkpoints = "fail"  # fail | restart: when no checkpoint can be restored.
  config.preemption_check_every = 1  # Steps between the processes' agreement on a stop signal.
  return config


def vae_options(**overrides) -> ml_collections.ConfigDict:
  """`config.vae` of the VAE family (genlab.families.vae), with its defaults."""
  options = ml_collections.ConfigDict(
    {
      "beta": 1.0,  # Weight of the KL term.
      "kl_warmup_steps": 0,  # β ramps linearly from 0 over these steps (0: no warm-up).
      "binarize": "none",  # none | dynamic (a fresh Bernoulli draw of x at every step).
      "nll_k": 5000,  # Importance samples per test example for `nll` in `genlab eval`.
    }
  )
  options.update(overrides)
  return options


def sparsity_options(**overrides) -> ml_collections.ConfigDict:
  """`config.sparsity` of the sparse-autoencoder family, with its defaults."""
  options = ml_collections.ConfigDict(
    {
      "kind": "kl",  # kl (sigmoid codes) | l1 (ReLU codes) | topk (TopK codes).
      "rho": 0.05,  # Target mean activation of each unit (kl).
      "beta": 3.0,  # Weight of Σ_j KL(ρ ‖ ρ̂_j) (kl).
      # Gradient of the KL (kl): batch (its own, Ng's; on a minibatch it also penalises each
      # unit's variance) | leave_one_out (example i's activation gets KL' at the mean of the
      # others). See genlab.families.sparse_ae.kl_sparsity_penalty.
      "kl_gradient": "batch",
      "l1": 1e-3,  # Weight of the code's L1 norm (l1).
      "weight_decay": 1e-4,  # λ of λ/2·(‖W_enc‖² + ‖W_dec‖²).
      # TopK dead-latent loss (AuxK, Gao et al. 2024): the aux_k largest pre-activations of
      # dead units model the residual (0: off), weighted by aux_weight; a unit is dead after
      # aux_dead_after training examples without firing (theirs: 10M tokens).
      "aux_k": 0,
      "aux_weight": 1 / 32,
      "aux_dead_after": 10000,
    }
  )
  options.update(overrides)
  return options


def sequence_options(**overrides) -> ml_collections.ConfigDict:
  """`config.sequence` of the recurrent-autoencoder family, with its defaults."""
  options = ml_collections.ConfigDict(
    {
      # input (autoencoder) | reversed (encoder-decoder: the input backwards) |
      # target (encoder-decoder: the dataset's `target` sequences).
      "target": "input",
      # Labels that mark anomalies: ROC-AUC of the per-sequence error as anomaly score.
      "anomaly_labels": (),
      "num_plots": 6,  # Test sequences drawn in the input-vs-output view.
    }
  )
  options.update(overrides)
  return options


def gan_options(**overrides) -> ml_collections.ConfigDict:
  """`config.gan` of the GAN family (genlab.families.gan), with its defaults."""
  options = ml_collections.ConfigDict(
    {
      "generator_loss": "non_saturating",  # non_saturating | minimax | hinge.
      "n_disc": 1,  # Discriminator steps per generator step.
      "fd_n_real": 10000,  # Train images behind the real statistics of `fd` (at most all).
      "fd_n_fake": 0,  # Samples behind the fake statistics (0: as many as fd_n_real).
      "feature_net_steps": 2000,  # Training steps of the cached feature classifier.
    }
  )
  options.update(overrides)
  return options


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
    raise ConfigError(f"experiment file not found: {path}")
  spec = importlib.util.spec_from_file_location(f"genlab_experiment_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"{path} defines no get_config()")
  config = module.get_config()
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f"{path}: get_config() must return an ml_collections.ConfigDict")
  return config


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
  elif field_type is tuple and not isinstance(value, tuple):
    value = (value,)
  try:
    node[leaf] = value
  except (TypeError, ValueError) as e:
    raise ConfigError(
      f"--config.{dotted}={text}: expected {field_type.__name__}, got {type(value).__name__}"
    ) from e


def _raise_unknown(config: ml_collections.ConfigDict, dotted: str) -> None:
  close = difflib.get_close_matches(dotted, _all_field_names(config), n=1)
  hint = f" (did you mean --config.{close[0]}?)" if close else ""
  raise ConfigError(f"unknown config field --config.{dotted}{hint}")


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> None:
  """Applies `--config.a.b=value` strings to `config` in place."""
  for item in overrides:
    if not item.startswith("--config.") or "=" not in item:
      raise ConfigError(f"cannot read override {item!r}: expected --config.FIELD=VALUE")
    dotted, text = item[len("--config.") :].split("=", 1)
    set_field(config, dotted, text)


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks the fields every experiment must have and their ranges."""
  missing = [f for f in REQUIRED_FIELDS if f not in config]
  if missing:
    raise ConfigError(f"config lacks required fields: {', '.join(missing)}")
  if config.parallel not in PARALLEL_MODES:
    raise ConfigError(f"config.parallel={config.parallel!r}; choose one of {PARALLEL_MODES}")
  for name in ("batch_size", "num_steps"):
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
    if name in config and config[name] % k:
      raise ConfigError(
        f"config.{name}={config[name]} is not a multiple of steps_per_dispatch={k}: logs, "
        "evaluations and checkpoints happen between dispatches"
      )
  if config.get("dtype", "float32") not in ("float32", "bfloat16"):
    raise ConfigError(f"config.dtype={config.dtype!r}; choose float32 or bfloat16")
  resident = config.get("data", {}).get("device_resident", "off")
  if resident not in ("auto", "on", "off"):
    raise ConfigError(f"config.data.device_resident={resident!r}; choose one of auto, on, off")


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
  old = _flatten(json.loads(to_json(saved)))
  new = _flatten(json.loads(to_json(config)))
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

  return ml_collections.ConfigDict(tuplify(json.loads(text)))
