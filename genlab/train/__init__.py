"""The shared trainer's parts: state, keys, parallel runner, checkpoints, writers.

The loop that ties them to a family is `genlab.train.loop` (imported from
`genlab` directly, since it depends on `genlab.families`).
"""

from genlab.train.checkpoint import Checkpointer
from genlab.train.parallel import Runner, masked_sum, pmean, psum
from genlab.train.rngs import example_keys, root_key, step_key, stream_key
from genlab.train.state import TrainState, make_optimizer, optimization_metrics

__all__ = [
  "Checkpointer",
  "Runner",
  "TrainState",
  "example_keys",
  "make_optimizer",
  "masked_sum",
  "optimization_metrics",
  "pmean",
  "psum",
  "root_key",
  "step_key",
  "stream_key",
]
