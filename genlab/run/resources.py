"""Resources a family needs, built by the run layer: `provide(setup)`.

A family says what it needs (`Family.needs()`: a name and its settings) and
receives it built (`Family.provide`); what builds each is listed here: the GAN's
`feature_net`, a classifier trained once per dataset and cached
(`genlab.run.feature_net`), and an activation SAE's `host_model`, restored from a
genlab workdir or made by a user's function (`genlab.models.activations.HostModel`).
"""

from __future__ import annotations

import dataclasses
import pathlib

from genlab import config as config_lib
from genlab.console import log
from genlab.errors import ConfigError, WorkdirError
from genlab.models.activations import HostModel
from genlab.registry import import_path
from genlab.run.evaluation import restore_workdir
from genlab.run.feature_net import feature_network
from genlab.run.inception_weights import inception_network
from genlab.run.pins import params_digest
from genlab.run.setup import Setup


def _feature_net(s: Setup, *, steps: int, value_range: tuple[float, float] | None = None):
  """The dataset's cached feature classifier, trained on images in `value_range` (default:
  the run's `data.range`)."""
  data = s.config.data
  if value_range is not None:
    data = data.copy_and_resolve_references()
    data.range = tuple(value_range)
  return feature_network(s.dataset, data, steps=steps)


def _host_model(
  s: Setup,
  *,
  workdir: str = "",
  layer: str = "",
  skip_first: int = 0,
  factory: str = "",
  pin: dict | None = None,
) -> HostModel:
  """The host of an activation SAE: `factory()` ('package.module:function'), or the model
  of the genlab run in `workdir` (its newest usable checkpoint) reading `layer`. With `pin`
  (what the SAE's workdir recorded: the host checkpoint's step and its parameters' digest),
  exactly that host, or one line saying why it is gone."""
  if factory:
    make = import_path(factory, what="config.sae.host_factory")
    host = make()
    if not isinstance(host, HostModel):
      raise ConfigError(f"{factory} returned a {type(host).__name__}, not a HostModel")
    digest = params_digest(host.params)
    if pin and pin.get("params_sha256") != digest:
      raise WorkdirError(
        f"config.sae.host_factory={factory!r} now gives other host parameters (SHA-256 "
        f"{digest[:12]}) than this SAE was trained with ({pin.get('params_sha256', '?')[:12]}); "
        "make the factory give the same ones, or train a new SAE (--fresh)"
      )
    return dataclasses.replace(host, identity={"factory": factory, "params_sha256": digest})
  if not pathlib.Path(workdir).is_dir():
    raise WorkdirError(
      f"config.sae.host_workdir={workdir!r} does not exist: train the host there first (for "
      "experiments/sae_pydoc_residual.py, the command in experiments/char_lm_pydoc.py), or "
      "point the option at a trained language_model run"
    )
  step = pin.get("step") if pin else None
  # On the SAE run's devices, split by its rule: the host's parameters are never whole on
  # one device because the host was trained elsewhere.
  mesh = [f"--config.mesh.{k}={v}" for k, v in config_lib.mesh_settings(s.config).items()]
  try:
    host_setup, state, step = restore_workdir(workdir, mesh, step=step)
  except WorkdirError as e:
    if step is None:
      raise
    raise WorkdirError(
      f"this SAE was trained on the host checkpoint of step {step} of {workdir}, and {e}; "
      "restore that checkpoint there, or train a new SAE (--fresh)"
    ) from None
  description = f"genlab {host_setup.config.family} run {workdir}, checkpoint step {step}"
  params = state.params["model"]
  host = host_setup.family.host_model(params, layer, skip_first=skip_first, description=description)
  if host is None:
    raise ConfigError(
      f"config.sae.host_workdir={workdir!r} is a {host_setup.config.family} run; SAEs read "
      "language_model runs, or any Flax model through config.sae.host_factory"
    )
  if host_setup.config.dataset != s.config.dataset:
    raise ConfigError(
      f"the host in {workdir} was trained on {host_setup.config.dataset!r}, and this run's "
      f"dataset is {s.config.dataset!r}: the SAE reads the host on its own inputs"
    )
  digest = params_digest(params)
  if pin and pin.get("params_sha256") != digest:
    raise WorkdirError(
      f"the host checkpoint of step {step} in {workdir} holds other parameters (SHA-256 "
      f"{digest[:12]}) than this SAE was trained with ({pin.get('params_sha256', '?')[:12]}): "
      "the host was trained again from scratch there; restore it, or train a new SAE (--fresh)"
    )
  log(f"genlab: SAE host: {description}, layer {layer!r}")
  identity = {"workdir": str(pathlib.Path(workdir).resolve()), "step": int(step)}
  return dataclasses.replace(host, identity={**identity, "params_sha256": digest})


def _inception(s: Setup, *, weights: str = ""):
  """The FID Inception (`genlab.run.inception_weights`)."""
  del s
  return inception_network(weights)


PROVIDERS = {"feature_net": _feature_net, "host_model": _host_model, "inception": _inception}


def provide(s: Setup) -> None:
  """Builds every resource `s.family` needs and hands them to it."""
  built = {}
  for name, settings in s.family.needs().items():
    if name not in PROVIDERS:
      raise ConfigError(
        f"the {s.config.family} family needs {name!r}, which genlab cannot build; "
        f"it builds {sorted(PROVIDERS)}"
      )
    pin = s.pins.get(name)
    built[name] = PROVIDERS[name](s, **settings, **({"pin": pin} if pin else {}))
  s.family.provide(built)


__all__ = ["PROVIDERS", "provide"]
