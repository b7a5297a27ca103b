"""Where arrays live on a run's devices: one `Mesh`, batches split, parameters by a rule.

Every run is `jax.jit` over a 2-D mesh of its devices with the axes

* `data` — data parallelism: each device along it holds other examples;
* `fsdp` — fully sharded data parallelism: devices along it hold other examples
  *and* other slices of the parameters and optimizer states.

A batch is split over both axes (`batch_spec`). A state array is split over
`fsdp` by `fsdp_spec`'s rule — its largest axis that the `fsdp` size divides, if
it has at least `min_size` elements — and replicated otherwise; with `fsdp` = 1
everything is replicated (plain data parallelism). XLA inserts the collectives:
all-gathers of a sharded kernel where a layer uses it, reduce-scatters of its
gradient. One device is a 1 × 1 mesh, the same code path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from genlab.errors import ConfigError

DATA, FSDP = "data", "fsdp"
BATCH_AXES = (DATA, FSDP)  # A batch's leading axis is split over every device.


def make_mesh(devices: Sequence[jax.Device], fsdp: int = 1) -> Mesh:
  """A (len(devices) / fsdp, fsdp) mesh with axes (`data`, `fsdp`), in the order given.

  The order matters with several processes: rows of a global batch go to devices in mesh
  order, so each process's devices must be consecutive (as in `jax.devices()`), to hold
  the rows that process loaded.
  """
  n = len(devices)
  if fsdp < 1 or n % fsdp:
    raise ConfigError(
      f"mesh.fsdp={fsdp} must divide the {n} devices of the run; pass "
      "--config.mesh.fsdp=1 (or another divisor) to run here"
    )
  # Auto axes, said: XLA places the collectives (`jax.make_mesh` would make them Explicit,
  # and would reorder TPU devices, where each process's rows must stay its own devices').
  return Mesh(
    np.array(devices).reshape(n // fsdp, fsdp), (DATA, FSDP), axis_types=(AxisType.Auto,) * 2
  )


def batch_spec(leading: int = 0) -> P:
  """The spec of a batch: axis `leading` split over every device (`leading` = 1 for K
  steps' batches stacked on a first axis)."""
  return P(*([None] * leading), BATCH_AXES)


def fsdp_spec(shape: Sequence[int], fsdp: int, min_size: int) -> P:
  """The spec of one state array: its largest axis divisible by `fsdp` split over `fsdp`
  (the first of equal ones), if the array has at least `min_size` elements; else
  replicated."""
  if fsdp <= 1 or math.prod(shape) < min_size:
    return P()
  for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
    if shape[axis] % fsdp == 0:
      return P(*[FSDP if a == axis else None for a in range(len(shape))])
  return P()


def to_host(tree: Any) -> Any:
  """`tree`'s arrays as host NumPy arrays, whole: for what a computation on the state gives
  (images, codes, samples, metric sums), never for the state itself. An array spread over
  several processes is gathered from them (`process_allgather`): every process must then
  call this, as they all ran the computation (views and evaluation run on every process;
  only process 0 writes)."""

  def whole(x):
    if not isinstance(x, jax.Array):
      return np.asarray(x)
    if x.sharding.is_fully_replicated:
      return np.asarray(x.addressable_data(0))
    if x.is_fully_addressable:
      return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))

  return jax.tree.map(whole, tree)


def state_shardings(state: Any, mesh: Mesh, *, min_size: int) -> Any:
  """A `NamedSharding` for every array of `state` (a pytree), by `fsdp_spec`."""
  fsdp = mesh.shape[FSDP]
  return jax.tree.map(lambda x: NamedSharding(mesh, fsdp_spec(np.shape(x), fsdp, min_size)), state)


__all__ = [
  "BATCH_AXES",
  "DATA",
  "FSDP",
  "batch_spec",
  "fsdp_spec",
  "make_mesh",
  "state_shardings",
  "to_host",
]
