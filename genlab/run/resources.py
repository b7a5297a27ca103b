"""Resources a family needs, built by the run layer: `provide(setup)`.

A family says what it needs (`Family.needs()`: a name and its settings) and
receives it built (`Family.provide`); what builds each is listed here. Today
that is the GAN's `feature_net`, a classifier trained once per dataset and
cached (`genlab.run.feature_net`).
"""

from __future__ import annotations

from genlab.errors import ConfigError
from genlab.run.feature_net import feature_network
from genlab.run.setup import Setup


def _feature_net(s: Setup, *, steps: int):
  return feature_network(s.dataset, s.config.data, steps=steps)


PROVIDERS = {"feature_net": _feature_net}


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
