"""Resources a family needs, built by the run layer: `provide(setup)`.

A family says what it needs (`Family.needs()`: a name and its settings) and
receives it built (`Family.provide`); what builds each is listed here: the GAN's
`feature_net`, a classifier trained once per dataset and cached
(`genlab.run.feature_net`), and an activation SAE's `host_model`, restored from a
genlab workdir or made by a user's function (`genlab.models.activations.HostModel`).
"""

from __future__ import annotations

import importlib
import pathlib

from genlab.errors import ConfigError, WorkdirError
from genlab.models.activations import HostModel
from genlab.run.console import log
from genlab.run.evaluation import restore_workdir
from genlab.run.feature_net import feature_network
from genlab.run.setup import Setup


def _feature_net(s: Setup, *, steps: int):
  return feature_network(s.dataset, s.config.data, steps=steps)


def _host_model(
  s: Setup, *, workdir: str = "", layer: str = "", skip_first: int = 0, factory: str = ""
) -> HostModel:
  """The host of an activation SAE: `factory()` ('package.module:function'), or the model
  of the genlab run in `workdir` (its newest usable checkpoint) reading `layer`."""
  if factory:
    module, _, name = factory.partition(":")
    try:
      make = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
      raise ConfigError(f"config.sae.host_factory={factory!r}: {e}") from e
    host = make()
    if not isinstance(host, HostModel):
      raise ConfigError(f"{factory} returned a {type(host).__name__}, not a HostModel")
    return host
  if not pathlib.Path(workdir).is_dir():
    raise WorkdirError(
      f"config.sae.host_workdir={workdir!r} does not exist: train the host there first (for "
      "experiments/sae_pydoc_residual.py, the command in experiments/char_lm_pydoc.py), or "
      "point the option at a trained language_model run"
    )
  host_setup, state, step = restore_workdir(workdir)
  family = host_setup.family
  if not hasattr(family, "host_model"):
    raise ConfigError(
      f"config.sae.host_workdir={workdir!r} is a {host_setup.config.family} run; SAEs read "
      "language_model runs, or any Flax model through config.sae.host_factory"
    )
  if host_setup.config.dataset != s.config.dataset:
    raise ConfigError(
      f"the host in {workdir} was trained on {host_setup.config.dataset!r}, and this run's "
      f"dataset is {s.config.dataset!r}: the SAE reads the host on its own inputs"
    )
  description = f"genlab {host_setup.config.family} run {workdir}, checkpoint step {step}"
  log(f"genlab: SAE host: {description}, layer {layer!r}")
  return family.host_model(
    state.params["model"], layer, skip_first=skip_first, description=description
  )


PROVIDERS = {"feature_net": _feature_net, "host_model": _host_model}


def provide(s: Setup) -> None:
  """Builds every resource `s.family` needs and hands them to it."""
  built = {}
  for name, settings in s.family.needs().items():
    if name not in PROVIDERS:
      raise ConfigError(
        f"the {s.config.family} family needs {name!r}, which genlab cannot build; "
        f"it builds {sorted(PROVIDERS)}"
      )
    built[name] = PROVIDERS[name](s, **settings)
  s.family.provide(built)


__all__ = ["PROVIDERS", "provide"]
