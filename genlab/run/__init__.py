"""The run layer: what drives families on devices and writes workdirs.

`runner` (the mesh and the compiled steps), `checkpoint`, `preemption`,
`writers`, `setup` (data + mesh + family), `loop` (training), `evaluation`
(`genlab eval`, `genlab sample`), `feature_net` and `resources` (what families
need built for them), and `commands`, the entry points the CLI calls. It imports
the families; no family imports it.
"""

from genlab.run.commands import (
  evaluate_workdir,
  restore_workdir,
  sample_workdir,
  train_and_evaluate,
)
from genlab.run.runner import Runner, use_cpu_devices
from genlab.run.setup import Setup, setup

__all__ = [
  "Runner",
  "Setup",
  "evaluate_workdir",
  "restore_workdir",
  "sample_workdir",
  "setup",
  "train_and_evaluate",
  "use_cpu_devices",
]
