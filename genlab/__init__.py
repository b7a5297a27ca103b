"""genlab: generative representation learning in JAX/Flax.

Families (autoencoders, VAEs, GANs, ...) give pure step functions built from one
gradient step (`genlab.core`); one runner compiles them with `jax.jit` over a mesh
of the run's devices and one loop drives them (`genlab.run`), with orbax
checkpoints and deterministic, resumable data and keys.

Layers, each importing only those below it: `errors`, `losses`, `metrics`,
`image_metrics`, `corruptions`, `views`, `data`, `core` and `kernels` (the backend
seam); `models`; `families`; `config`; `run`; `cli`.
"""

from genlab import (
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
  run,
)
from genlab.config import apply_overrides, base_config, load_experiment
from genlab.core import TrainState, example_keys, gradient_step, root_key, step_key, stream_key
from genlab.data import Batcher, Dataset, load_dataset
from genlab.errors import ConfigError, DataError, GenlabError, WorkdirError
from genlab.families import Family, Report, Views, get_family
from genlab.run import Runner, evaluate_workdir, sample_workdir, setup, train_and_evaluate

__version__ = "0.1.0"

__all__ = [
  "Batcher",
  "ConfigError",
  "DataError",
  "Dataset",
  "Family",
  "GenlabError",
  "Report",
  "Runner",
  "TrainState",
  "Views",
  "WorkdirError",
  "apply_overrides",
  "base_config",
  "config",
  "core",
  "corruptions",
  "data",
  "evaluate_workdir",
  "example_keys",
  "families",
  "get_family",
  "gradient_step",
  "image_metrics",
  "kernels",
  "load_dataset",
  "load_experiment",
  "losses",
  "metrics",
  "models",
  "root_key",
  "run",
  "sample_workdir",
  "setup",
  "step_key",
  "stream_key",
  "train_and_evaluate",
]
