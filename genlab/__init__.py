"""genlab: generative representation learning in JAX/Flax.

Families (autoencoders, ...) provide pure step functions; one trainer runs
them under jit, pmap or shard_map, with orbax checkpoints and deterministic,
resumable data and keys.
"""

from genlab import config, data, families, image_metrics, losses, metrics, models, train
from genlab.config import apply_overrides, base_config, load_experiment
from genlab.data import Batcher, Dataset, load_dataset
from genlab.errors import ConfigError, DataError, GenlabError, WorkdirError
from genlab.families import Family, get_family
from genlab.models import ConvAutoencoder, ConvDecoder, ConvEncoder
from genlab.train import Runner, TrainState, example_keys, root_key, step_key, stream_key
from genlab.train.loop import evaluate_workdir, train_and_evaluate

__version__ = "0.1.0"

__all__ = [
  "Batcher",
  "ConfigError",
  "ConvAutoencoder",
  "ConvDecoder",
  "ConvEncoder",
  "DataError",
  "Dataset",
  "Family",
  "GenlabError",
  "Runner",
  "TrainState",
  "WorkdirError",
  "apply_overrides",
  "base_config",
  "config",
  "data",
  "evaluate_workdir",
  "example_keys",
  "families",
  "get_family",
  "image_metrics",
  "load_dataset",
  "load_experiment",
  "losses",
  "metrics",
  "models",
  "root_key",
  "step_key",
  "stream_key",
  "train",
  "train_and_evaluate",
]
