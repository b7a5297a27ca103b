"""genlab: generative representation learning in JAX/Flax.

Families (autoencoders, VAEs, GANs, ...) give pure step functions built from one
gradient step (`genlab.core`); one runner compiles them with `jax.jit` over a mesh
of the run's devices and one loop drives them (`genlab.run`), with orbax
checkpoints and deterministic, resumable data and keys.

Layers, each importing only those below it: `errors`, `registry`, `losses`, `metrics`,
`image_metrics`, `corruptions`, `views`, `data`, `core` and `kernels` (the backend
seam); `models`; `families`; `config`; `run`; `cli`.

The names below load on first use (PEP 562), so that `import genlab` (and `genlab
--help`) does not start JAX: `genlab.train_and_evaluate` imports the run layer when it
is first read.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# Public name → the module that defines it (a submodule's own name maps to itself).
_EXPORTS = {
  "config": "genlab.config",
  "core": "genlab.core",
  "corruptions": "genlab.corruptions",
  "data": "genlab.data",
  "families": "genlab.families",
  "image_metrics": "genlab.image_metrics",
  "kernels": "genlab.kernels",
  "losses": "genlab.losses",
  "metrics": "genlab.metrics",
  "models": "genlab.models",
  "registry": "genlab.registry",
  "run": "genlab.run",
  "apply_overrides": "genlab.config",
  "base_config": "genlab.config",
  "load_experiment": "genlab.config",
  "TrainState": "genlab.core",
  "example_keys": "genlab.core",
  "gradient_step": "genlab.core",
  "root_key": "genlab.core",
  "step_key": "genlab.core",
  "stream_key": "genlab.core",
  "Batcher": "genlab.data",
  "Dataset": "genlab.data",
  "load_dataset": "genlab.data",
  "ConfigError": "genlab.errors",
  "DataError": "genlab.errors",
  "GenlabError": "genlab.errors",
  "WorkdirError": "genlab.errors",
  "Family": "genlab.families",
  "Report": "genlab.families",
  "Views": "genlab.families",
  "get_family": "genlab.families",
  "register_family": "genlab.families",
  "register_model": "genlab.models",
  "Runner": "genlab.run",
  "evaluate_workdir": "genlab.run",
  "sample_workdir": "genlab.run",
  "setup": "genlab.run",
  "train_and_evaluate": "genlab.run",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
  module = _EXPORTS.get(name)
  if module is None:
    raise AttributeError(f"module 'genlab' has no attribute {name!r}")
  loaded = importlib.import_module(module)
  value = loaded if module == f"genlab.{name}" else getattr(loaded, name)
  globals()[name] = value  # Read once: the next access is a plain attribute.
  return value


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # What static tools see; nothing here runs.
  from genlab import (  # noqa: F401
    config,
    core,
    corruptions,
    data,
    families,
    image_metrics,
    kernels,
    losses,
    metrics,
    models,
    registry,
    run,
  )
  from genlab.config import apply_overrides, base_config, load_experiment  # noqa: F401
  from genlab.core import (  # noqa: F401
    TrainState,
    example_keys,
    gradient_step,
    root_key,
    step_key,
    stream_key,
  )
  from genlab.data import Batcher, Dataset, load_dataset  # noqa: F401
  from genlab.errors import ConfigError, DataError, GenlabError, WorkdirError  # noqa: F401
  from genlab.families import Family, Report, Views, get_family, register_family  # noqa: F401
  from genlab.models import register_model  # noqa: F401
  from genlab.run import (  # noqa: F401
    Runner,
    evaluate_workdir,
    sample_workdir,
    setup,
    train_and_evaluate,
  )
