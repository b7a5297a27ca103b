"""SAEs in and out of genlab in SAELens' format (`genlab export`, `genlab import`).

    export_workdir(workdir, out)                    # genlab export --format saelens
    import_workdir(source, config, workdir)         # genlab import --format saelens

An export reads a trained activation-SAE workdir's newest usable checkpoint and writes
`cfg.json` and `sae_weights.safetensors` (`genlab.sae.saelens`). An import makes a genlab
workdir whose checkpoint (step 0) holds an SAE read from those files, with the host of the
experiment it is given, so that `genlab eval` reports its loss recovered, explained variance
and L0 on that host, and `genlab train` can fine-tune it.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import ml_collections
import numpy as np

from genlab import config as config_lib
from genlab.console import log
from genlab.errors import ConfigError, WorkdirError
from genlab.run import resources
from genlab.run.checkpoint import Checkpointer
from genlab.run.evaluation import restore_workdir
from genlab.run.lock import WorkdirLock
from genlab.run.loop import CONFIG_FILE, check_dataset
from genlab.run.pins import record_pins
from genlab.run.setup import build, check_workdir
from genlab.run.writers import write_atomically
from genlab.sae import CODES, saelens

FORMATS = ("saelens",)


def _check_format(fmt: str) -> None:
  if fmt not in FORMATS:
    raise ConfigError(f"--format {fmt!r}: genlab reads and writes {', '.join(FORMATS)}")


def export_workdir(
  workdir: str | pathlib.Path,
  out: str | pathlib.Path,
  *,
  fmt: str = "saelens",
  variant: str | None = None,
) -> dict[str, Any]:
  """Writes the SAE of an activation-SAE workdir's newest usable checkpoint (of a set of
  SAEs, the one named `variant`) to the folder `out` in SAELens' format; returns the
  cfg.json written."""
  _check_format(fmt)
  s, state, step = restore_workdir(workdir, provide=resources.provide)
  if s.config.family != "activation_sae":
    raise ConfigError(
      f"{workdir} is a {s.config.family} run: genlab exports activation SAEs (their host "
      "and layer are what SAELens' format describes)"
    )
  family = s.family
  if family.lone:
    if variant is not None:
      raise ConfigError(f"{workdir} holds one SAE, not a set: --variant names an SAE of a set")
    member = family.members[0]
  elif variant is None:
    names = ", ".join(m.name for m in family.members)
    raise ConfigError(f"{workdir} holds a set of SAEs: name one with --variant ({names})")
  else:
    member = family.member(variant)
  o = member.options
  part = member.name
  params, stats = jax.device_get((state.params[part], state.stats[part]))
  host = family.host
  source = family.source
  folded = {
    "normalize": o.normalize,
    "normalize_examples": int(o.normalize_examples),
    "scale_mean": float(np.mean(source.scales[member.read])),
  }
  metadata = {
    "model_name": host.description,
    "hook_name": member.read,
    "dataset_path": s.config.dataset,
    "prepend_bos": False,
    "genlab": {
      "workdir": str(pathlib.Path(workdir).resolve()),
      "checkpoint_step": int(step),
      "code": member.code,
      "k": int(member.model.k) if member.code_class.sparsity == "k" else None,
      "variant": None if family.lone else member.name,
      "normalization_folded": folded,
      "host_identity": host.identity,
    },
  }
  normalization = {
    "shift": np.asarray(source.shifts[member.read]),
    "scale": np.asarray(source.scales[member.read]),
  }
  if member.write != member.read:  # A transcoder: its output's normalisation too.
    metadata["hook_name_out"] = member.write
    folded["output_scale_mean"] = float(np.mean(source.scales[member.write]))
    normalization["output_shift"] = np.asarray(source.shifts[member.write])
    normalization["output_scale"] = np.asarray(source.scales[member.write])
  cfg, tensors = saelens.to_saelens(
    params, stats, member.model.code_fn, metadata=metadata, **normalization
  )
  saelens.write(out, cfg, tensors)
  log(
    f"genlab: SAE {'' if family.lone else member.name + ' '}of {workdir} (checkpoint step "
    f"{step}, code {member.code}) "
    f"written to {out} in SAELens {saelens.SAELENS_VERSION}'s format as {cfg['architecture']}"
  )
  return cfg


def import_workdir(
  source: str | pathlib.Path,
  config: ml_collections.ConfigDict,
  workdir: str | pathlib.Path,
  *,
  fmt: str = "saelens",
) -> pathlib.Path:
  """Makes `workdir` (new or empty) an activation-SAE run of `config` (its host, data and
  evaluation) whose checkpoint of step 0 holds the SAE in `source`, SAELens' format; its
  code and size come from the files, and it reads the host's raw activations
  (`sae.normalize='none'`, the format's convention). A SAELens transcoder needs a config
  that names the output layer it reconstructs (`sae.output_layer`), and an SAE one that
  names none."""
  _check_format(fmt)
  if config.get("family") == "activation_sae" and config.sae.get("variants"):
    raise ConfigError(
      "genlab import reads one SAE of SAELens' format: leave config.sae.variants (a set's) empty"
    )
  cfg, tensors = saelens.read(source)
  fields, params = saelens.from_saelens(cfg, tensors)
  if config.get("family") != "activation_sae":
    raise ConfigError(
      f"genlab import needs an activation_sae experiment (its host and data); "
      f"config.family is {config.get('family')!r}"
    )
  output_layer = config.sae.get("output_layer")
  if saelens.is_transcoder(cfg) and not output_layer:
    out = cfg.get("metadata", {}).get("hook_name_out")
    raise ConfigError(
      f"the SAE in {source} is a {cfg['architecture']} (its output: {out!r}): give an "
      "experiment whose config.sae.output_layer names the layer it reconstructs"
    )
  if output_layer and not saelens.is_transcoder(cfg):
    raise ConfigError(
      f"the SAE in {source} is a {cfg.get('architecture', 'standard')} SAE, not a transcoder: "
      f"leave config.sae.output_layer ({output_layer!r}) empty"
    )
  for name, value in fields.items():
    config.model[name] = value
  if config.sae.normalize != "none":
    log(
      f"genlab: config.sae.normalize={config.sae.normalize!r} -> 'none' (SAELens' weights "
      "take the host's raw activations)"
    )
    config.sae.normalize = "none"
  if config.sae.get("aux_k") and not CODES.get(fields["code"]).takes_aux_k:
    log(f"genlab: config.sae.aux_k={config.sae.aux_k} -> 0 (code {fields['code']!r} has no AuxK)")
    config.sae.aux_k = 0
  config_lib.validate(config)
  config_lib.canonicalize(config)
  workdir = pathlib.Path(workdir)
  if workdir.is_dir() and any(workdir.iterdir()):
    raise WorkdirError(f"{workdir} is not empty: genlab import makes a new workdir")
  s = build(config, provide=resources.provide)
  member = s.family.members[0]
  widths = s.family.source.widths
  for field, layer in (("d_in", member.read), ("d_out", member.write)):
    if field in cfg and widths[layer] != cfg[field]:
      raise ConfigError(
        f"the SAE in {source} has {field}={cfg[field]}, and the host's layer {layer!r} gives "
        f"width {widths[layer]}"
      )
  check_workdir(workdir)
  with WorkdirLock(workdir, exclusive=True, what="import"):
    state = s.initial_state
    now = state.params["model"]
    if jax.tree.structure(now) != jax.tree.structure(params):
      raise ConfigError(
        f"the SAE's parameters {jax.tree.structure(params)} do not fit the model's "
        f"{jax.tree.structure(now)}"
      )
    placed = jax.tree.map(
      lambda new, old: jax.device_put(np.asarray(new, old.dtype), old.sharding), params, now
    )
    state = state.replace(params={**state.params, "model": placed})
    record_pins(workdir, s.family.resources)
    check_dataset(workdir, s, resuming=False)
    if jax.process_index() == 0:
      write_atomically(workdir / CONFIG_FILE, lambda f: f.write(config_lib.to_json(config)))
    ckpt = Checkpointer(workdir / "checkpoints", keep=config.keep_checkpoints)
    try:
      ckpt.save(0, state, force=True)
      ckpt.wait()
    finally:
      ckpt.close()
  log(
    f"genlab: {workdir} holds the SAE of {source} ({cfg.get('architecture', 'standard')} -> "
    f"code {fields['code']}, {fields['code_dim']} latents) at step 0; "
    f"genlab eval --workdir {workdir}"
  )
  return workdir


__all__ = ["FORMATS", "export_workdir", "import_workdir"]
