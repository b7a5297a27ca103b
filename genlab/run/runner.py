"""A run's devices as one mesh, and the family's steps compiled over it.

Every run is `jax.jit` over a `Mesh` of its devices (`genlab.core.sharding`):
one device is a 1 × 1 mesh, several are split into a `data` axis and an
optional `fsdp` axis (`config.mesh`). Batches are split over every device; the
state is replicated, or, over `fsdp`, sharded by a rule so that a model larger
than one device's memory can train. The family's step is written over the global
batch; XLA adds the collectives. Several processes (`jax.distributed`) make one
mesh of all their devices; each process feeds its own rows of every batch.

`Runner.train_step` wraps the family's `(state, batch, key) -> (state, metrics)`:
the key of a step is `fold_in(root, state.step)`, from the state's own counter,
so keys never depend on how many steps this process has run; a NaN/Inf metric
sets the `nonfinite` flag; K steps per call run under `lax.scan`. Its input
comes from a feed (`StreamedFeed` or `ResidentFeed`): the compiled function is
`(state, root_key, inputs) -> (state, metrics)` either way, and the feed turns
`inputs` into each step's batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from genlab import kernels as kernels_lib
from genlab.core import rngs, sharding
from genlab.core.state import TrainState, all_finite
from genlab.data import Batcher, ResidentSplit
from genlab.errors import ConfigError

StepFn = Callable[..., tuple[TrainState, dict[str, jax.Array]]]
EvalFn = Callable[..., dict[str, jax.Array]]
# Arrays of a state with at least this many elements are sharded over `fsdp`.
FSDP_MIN_SIZE = 1 << 18


class Runner:
  """Places state and batches on a mesh of the run's devices and compiles steps over it.

  Args:
    devices: how many devices to use: 0 for every device of every process, N for the
      first N (one process).
    fsdp: the size of the mesh's `fsdp` axis (parameters and optimizer states are sharded
      over it); -1 for every device, 1 for plain data parallelism.
    fsdp_min_size: arrays with fewer elements stay replicated.
    global_batch_size: checked to be divisible by the devices and processes.
    eval_batch_size: checked the same way, so an evaluation cannot fail mid-run.
    kernels: `auto`, `flax` or `xla_cpu` (see `genlab.kernels`); decides the compiler
      options and how multi-step dispatches are unrolled.
  """

  def __init__(
    self,
    *,
    global_batch_size: int,
    eval_batch_size: int | None = None,
    devices: int = 0,
    fsdp: int = 1,
    fsdp_min_size: int = FSDP_MIN_SIZE,
    kernels: str = "auto",
  ):
    available = jax.devices()
    if devices < 0 or devices > len(available):
      raise ConfigError(
        f"mesh.devices={devices}: there are {len(available)} devices (0 uses all of them)"
      )
    if devices and devices < len(available) and jax.process_count() > 1:
      raise ConfigError("several processes use every device: set mesh.devices=0")
    self.devices = available[: devices or len(available)]
    self.num_devices = len(self.devices)
    fsdp = self.num_devices if fsdp == -1 else fsdp
    self.mesh = sharding.make_mesh(self.devices, fsdp)
    self.fsdp_min_size = fsdp_min_size
    self.kernels = kernels_lib.resolve(kernels, self.devices)
    self._options = kernels_lib.compiler_options(self.kernels)
    self.replicated = NamedSharding(self.mesh, P())
    self.batch_sharding = NamedSharding(self.mesh, sharding.batch_spec())
    for name, size in {"batch_size": global_batch_size, "eval_batch_size": eval_batch_size}.items():
      if size is None:
        continue
      if size % self.num_devices:
        raise ConfigError(
          f"{name} {size} is not divisible by the {self.num_devices} devices; pick a multiple "
          f"of {self.num_devices}"
        )
      if size % jax.process_count():
        raise ConfigError(f"{name} {size} is not divisible by {jax.process_count()} processes")

  def describe(self) -> str:
    """The mesh in words, for the log: `mesh data=4 fsdp=1 (4 cpu devices)`."""
    platforms = sorted({d.platform for d in self.devices})
    return (
      f"mesh data={self.mesh.shape[sharding.DATA]} fsdp={self.mesh.shape[sharding.FSDP]} "
      f"({self.num_devices} {'/'.join(platforms)} device{'s' * (self.num_devices > 1)}) "
      f"kernels={self.kernels}"
    )

  # Placement -----------------------------------------------------------------

  def state_shardings(self, state: Any) -> Any:
    """The `NamedSharding` of every array of `state` (arrays or `jax.ShapeDtypeStruct`s):
    at least `fsdp_min_size` elements split over `fsdp` (`sharding.fsdp_spec`), the others
    replicated."""
    return sharding.state_shardings(state, self.mesh, min_size=self.fsdp_min_size)

  def abstract_state(self, init: Callable[..., Any], *args) -> Any:
    """`init(*args)`'s shapes and dtypes (`jax.eval_shape`: nothing is computed), each with
    the sharding the state will have: what a checkpoint restores into."""
    shapes = jax.eval_shape(init, *args)
    return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      shapes,
      self.state_shardings(shapes),
    )

  def init_state(self, init: Callable[..., Any], abstract: Any, *args) -> Any:
    """`init(*args)` born sharded: compiled with `abstract`'s shardings as its outputs', so
    each device computes and holds only its own shards of every split array.

    A `TrainState` whose optimizer states are those of a fresh `TrainState.create` (`tx.init`
    of its parameters, as `abstract` shows) is made in two programs: first everything but
    the optimizer states, then those from the parameters. The parameters' random draws hold
    large temporaries (XLA:CPU kept those of many layers at once), and Adam's moments are
    twice the parameters: made apart, they never meet (on 2 processes × 2 devices, a 1.07
    GiB state's creation rose 0.69× the state's size per process in one program, 0.5× so:
    scripts/benchmark_memory.py)."""
    shardings = jax.tree.map(lambda x: x.sharding, abstract)
    if not _fresh_optimizer_states(abstract):
      return jax.jit(init, out_shardings=shardings)(*args)
    rest = jax.jit(
      lambda *a: init(*a).replace(opt_state=None),
      out_shardings=shardings.replace(opt_state=None),
    )(*args)
    opt_state = jax.jit(
      lambda state: {name: state.tx[name].init(state.params[name]) for name in state.tx},
      out_shardings=shardings.opt_state,
    )(rest)
    return rest.replace(opt_state=opt_state)

  def describe_state(self, abstract: Any) -> str:
    """What `fsdp` splits, for the run's first log line: `state: 6 of 14 arrays split over
    fsdp=4 (1.2 of 1.3 MiB)`, or that everything is replicated."""
    leaves = jax.tree.leaves(abstract)
    total = sum(x.size * x.dtype.itemsize for x in leaves)
    split = [x for x in leaves if not x.sharding.is_fully_replicated]
    mib = sum(x.size * x.dtype.itemsize for x in split) / 2**20
    fsdp = self.mesh.shape[sharding.FSDP]
    if not split:
      reason = "fsdp=1" if fsdp == 1 else f"no array has {self.fsdp_min_size} elements"
      return f"state: {len(leaves)} arrays ({total / 2**20:.3g} MiB) replicated ({reason})"
    return (
      f"state: {len(split)} of {len(leaves)} arrays split over fsdp={fsdp} ({mib:.3g} of "
      f"{total / 2**20:.3g} MiB)"
    )

  def place_state(self, state: Any) -> Any:
    """Puts a host state on the mesh (each device receives only its shards), sharded as
    `state_shardings` says."""
    return jax.device_put(state, self.state_shardings(state))

  def replicate(self, tree: Any) -> Any:
    """Puts a host pytree on every device, whole."""
    return jax.device_put(tree, self.replicated)

  def shard(self, batch: dict[str, np.ndarray], *, leading: int = 0) -> dict[str, jax.Array]:
    """This process's rows of a global batch, split over the devices (axis `leading`: 1
    for K steps' batches stacked on a first axis)."""
    split = NamedSharding(self.mesh, sharding.batch_spec(leading))
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(split, x), batch)

  def to_host(self, tree: Any) -> Any:
    """`sharding.to_host`: small results (metrics) as host NumPy arrays, never the state."""
    return sharding.to_host(tree)

  def fetch(self, metrics: dict[str, jax.Array], steps: int | None = None) -> Any:
    """Device metrics as floats (arrays for vector metrics). With `steps`, the metrics of a
    K-step dispatch (stacked on axis 0): a list of K dicts."""
    host = self.to_host(metrics)

    def value(v):
      return float(v) if v.size == 1 else v

    if steps is None:
      return {k: value(v) for k, v in host.items()}
    return [{k: value(v[i]) for k, v in host.items()} for i in range(steps)]

  # Compilation ---------------------------------------------------------------

  def train_step(
    self, step_fn: StepFn, feed: StreamedFeed | ResidentFeed, state: Any
  ) -> Callable[[Any, jax.Array, Any], tuple[Any, dict[str, jax.Array]]]:
    """Compiles the family's `step_fn(state, batch, key) -> (state, metrics)` for `feed`'s
    K steps per call.

    Args:
      step_fn: the family's train step, over the global batch.
      feed: where the batches come from; its `steps_per_dispatch` steps run per call.
      state: the placed state (`place_state`), whose shardings the new state keeps.

    Returns:
      `(state, root_key, inputs) -> (state, metrics)`, `inputs` = `feed.inputs(step)`;
      with K > 1 every metric has a leading axis of K.
    """
    k = feed.steps_per_dispatch
    one = self._guarded(step_fn)

    def run(state, root_key, inputs):
      def step(st, i):
        batch = jax.lax.with_sharding_constraint(
          feed.batch(inputs, i, st.step), self.batch_sharding
        )
        return one(st, batch, root_key)

      if k == 1:
        return step(state, 0)
      unroll = kernels_lib.scan_unroll(self.kernels, k, step, state, 0)
      return jax.lax.scan(step, state, jnp.arange(k), unroll=unroll)

    state_shardings = jax.tree.map(lambda x: x.sharding, state)
    return jax.jit(
      run,
      donate_argnums=0,
      out_shardings=(state_shardings, self.replicated),
      compiler_options=self._options,
    )

  def _guarded(self, step_fn: StepFn) -> Callable:
    """`step_fn` with the step key, the non-finite flag and the step counter."""

    def body(state: TrainState, batch, root_key):
      key = rngs.step_key(root_key, state.step)
      new_state, metrics = step_fn(state, batch, key)
      # A step with a NaN/Inf metric (loss, grad norm, ...) made no update: the family
      # skipped it (`genlab.core.gradient_step`). The flag tells the loop, which stops or
      # counts it (`on_nonfinite`).
      finite = all_finite(metrics)
      metrics = {**metrics, "nonfinite": 1.0 - finite.astype(jnp.float32)}
      return new_state.replace(step=state.step + 1), metrics

    return body

  def eval_step(self, eval_fn: EvalFn) -> Callable:
    """Compiles `eval_fn(state, batch) -> sums over the batch` (with `num_examples`, the
    sum of the mask, added); the batch comes from `shard`."""

    def body(state: TrainState, batch):
      batch = jax.lax.with_sharding_constraint(batch, self.batch_sharding)
      sums = eval_fn(state, batch)
      sums["num_examples"] = jnp.sum(batch["mask"])
      return sums

    return jax.jit(body, out_shardings=self.replicated, compiler_options=self._options)


class StreamedFeed:
  """Batches built on the host by a `Batcher`, a thread ahead of the devices, K steps'
  stacked per dispatch and split over the devices.

  Args:
    batcher: the train split's batches as a function of (seed, step).
    runner: places them.
    start, end: the steps the run takes, `start` .. `end` − 1.
    steps_per_dispatch: K.
  """

  def __init__(self, batcher: Batcher, runner: Runner, *, start: int, end: int, steps_per_dispatch):
    self.steps_per_dispatch = steps_per_dispatch
    self._runner = runner
    self._next_step = start
    self._batches = batcher.iterate(start, end)

  def inputs(self, first_step: int) -> dict[str, jax.Array]:
    """The batches of steps `first_step` .. `first_step` + K − 1, stacked (K, B, ...);
    dispatches must be asked for in order."""
    if first_step != self._next_step:
      raise ValueError(f"streamed batches go in order: step {self._next_step}, not {first_step}")
    k = self.steps_per_dispatch
    group = [next(self._batches) for _ in range(k)]
    self._next_step += k
    stacked = {key: np.stack([b[key] for b in group]) for key in group[0]}
    return self._runner.shard(stacked, leading=1)

  def close(self) -> None:
    """Stops the pipeline (its worker processes, if any) and frees what it prefetched."""
    self._batches.close()

  @staticmethod
  def batch(inputs, i, step):
    """Step `i` of the dispatch's batches (traced)."""
    del step
    return jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(x, i, keepdims=False), inputs)


class ResidentFeed:
  """The train split held on the devices (`ResidentSplit`): each step gathers its own
  rows inside the compiled step, and a dispatch's inputs change only once an epoch."""

  def __init__(self, split: ResidentSplit, runner: Runner, *, steps_per_dispatch: int):
    self.steps_per_dispatch = steps_per_dispatch
    self._split, self._runner = split, runner
    self._arrays = runner.replicate(split.arrays)
    self._host_orders = self._orders = None

  def inputs(self, first_step: int) -> dict[str, Any]:
    orders = self._split.orders(first_step, self.steps_per_dispatch)
    if orders is not self._host_orders:  # A new epoch: its order goes to the devices.
      self._host_orders, self._orders = orders, self._runner.replicate(orders)
    return {"arrays": self._arrays, "orders": self._orders}

  def close(self) -> None:
    """Nothing to stop: the split stays on the devices until the feed is dropped."""

  def batch(self, inputs, i, step):
    """The global batch of `step` (traced), gathered from the resident split."""
    del i
    return self._split.batch(inputs["arrays"], inputs["orders"], step)


def _fresh_optimizer_states(abstract: Any) -> bool:
  """Whether `abstract` is a `TrainState` whose optimizer states have the shapes of its
  optimizers' `init` of its parameters (what `TrainState.create` makes)."""
  if not isinstance(abstract, TrainState) or set(abstract.tx) != set(abstract.params):
    return False
  fresh = jax.eval_shape(
    lambda params: {name: abstract.tx[name].init(params[name]) for name in abstract.tx},
    abstract.params,
  )

  def same(a, b):
    return a.shape == b.shape and a.dtype == b.dtype

  if jax.tree.structure(fresh) != jax.tree.structure(abstract.opt_state):
    return False
  return all(jax.tree.leaves(jax.tree.map(same, fresh, abstract.opt_state)))


def use_cpu_devices(count: int) -> None:
  """Splits this host's CPU into `count` JAX devices (e.g. one per core), so that a run's
  mesh spreads a step's slices of the batch over the cores.

  XLA:CPU otherwise runs one program whose every op is split over the cores, with a
  hand-over between the threads at each op; models made of many small ops (recurrent
  steps, small convolutions) spend much of their step there (docs/performance.md: the
  recurrent and convolutional reference models gain, those whose step is a few large
  products lose). The results are those of one device up to float rounding. Batch sizes
  must divide by `count`. Call it before anything runs on JAX (`genlab train --cpu_devices
  N` does); the environment variable JAX_NUM_CPU_DEVICES=N does the same.
  """
  if isinstance(count, bool) or not isinstance(count, int) or count < 1:
    raise ConfigError(f"cpu_devices must be a positive integer, got {count!r}")
  try:
    # JAX's own validator refuses a new count once a backend has started.
    jax.config.update("jax_num_cpu_devices", count)
  except RuntimeError as e:
    if jax.default_backend() == "cpu" and jax.local_device_count() == count:
      return
    raise ConfigError(
      f"cannot split the CPU into {count} devices: JAX has already started (with "
      f"{jax.local_device_count()} {jax.default_backend()} devices); set it before anything "
      "runs on JAX, or set JAX_NUM_CPU_DEVICES before Python starts"
    ) from e


__all__ = ["FSDP_MIN_SIZE", "ResidentFeed", "Runner", "StreamedFeed", "use_cpu_devices"]
