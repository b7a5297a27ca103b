"""What every family builds on: the train state, keys, the gradient step, sharding.

Nothing here knows a family, a model or the loop; families import from here, and
the run layer (`genlab.run`) compiles and drives what they build.
"""

from genlab.core.nnx_model import NNXModel, is_nnx_class
from genlab.core.rngs import example_keys, root_key, step_key, stream_key
from genlab.core.sharding import make_mesh, state_shardings, to_host
from genlab.core.state import TrainState, all_finite, make_optimizer
from genlab.core.step import Metrics, gradient_step, masked_sum, optimization_metrics

__all__ = [
  "Metrics",
  "NNXModel",
  "TrainState",
  "all_finite",
  "example_keys",
  "gradient_step",
  "is_nnx_class",
  "make_mesh",
  "make_optimizer",
  "masked_sum",
  "optimization_metrics",
  "root_key",
  "state_shardings",
  "step_key",
  "stream_key",
  "to_host",
]
