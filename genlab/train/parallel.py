"""One step body, three ways to run it: `jit` on one device, `pmap`, `shard_map`.

A family writes its step once, `(state, batch, key, *, axis_name) -> (state,
metrics)`, averaging gradients and metrics with `pmean(x, axis_name)` (a no-op
when `axis_name` is None). `Runner` wraps that body:

* `none` — `jax.jit` on the first local device, `axis_name=None`;
* `pmap` — `jax.pmap` over the local devices, named axis `batch`; the state is
  replicated with a leading device axis and each batch is reshaped to
  `(devices, batch / devices, ...)`;
* `shard_map` — `jax.jit(jax.shard_map(...))` over a 1-D `Mesh` of all devices,
  state replicated (`P()`), batch split on axis 0 (`P('batch')`);
* `auto` — `pmap` when there is more than one device, else `none`.

The wrapper derives the step's key from the root key and the state's own step
counter (`fold_in(root, state.step)`) and increments the counter, so keys never
depend on how many steps this process has run.

`Runner.train_step(..., steps_per_dispatch=K)` runs K steps per call with
`lax.scan` (batches stacked on a leading axis): the same step body, K times
fewer dispatches (unrolled on CPU, whose convolutions are slow inside loops).
With `data=ResidentSplit(...)` the compiled function takes no batch at all:
each step gathers its rows from the device-resident split.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from genlab.errors import ConfigError
from genlab.train import rngs
from genlab.train.state import TrainState, all_finite

AXIS = "batch"
StepFn = Callable[..., tuple[TrainState, dict[str, jax.Array]]]
EvalFn = Callable[..., dict[str, jax.Array]]


def pmean(tree: Any, axis_name: str | None) -> Any:
  """Mean over the device axis, or the identity on one device."""
  return tree if axis_name is None else jax.lax.pmean(tree, axis_name)


def psum(tree: Any, axis_name: str | None) -> Any:
  """Sum over the device axis, or the identity on one device."""
  return tree if axis_name is None else jax.lax.psum(tree, axis_name)


def resolve_mode(mode: str, num_devices: int) -> str:
  if mode == "auto":
    return "pmap" if num_devices > 1 else "none"
  return mode


class Runner:
  """Places state and batches on devices and compiles steps for one parallel mode.

  Args:
    mode: `auto`, `pmap`, `shard_map` or `none` (see the module docstring).
    global_batch_size: checked to be divisible by the number of devices and processes.
    eval_batch_size: checked the same way, so an evaluation cannot fail mid-run.
  """

  def __init__(self, mode: str, *, global_batch_size: int, eval_batch_size: int | None = None):
    self.mode = resolve_mode(mode, jax.device_count())
    if self.mode == "none":
      self.devices = jax.local_devices()[:1]
    elif self.mode == "pmap":
      self.devices = jax.local_devices()
    elif self.mode == "shard_map":
      self.devices = jax.devices()
    else:
      raise ConfigError(f"unknown parallel mode {mode!r}")
    if self.mode == "none" and jax.process_count() > 1:
      raise ConfigError(
        "parallel='none' runs on one device; several processes need pmap or shard_map"
      )
    self.num_devices = len(self.devices) if self.mode != "pmap" else jax.device_count()
    sizes = {"batch_size": global_batch_size, "eval_batch_size": eval_batch_size}
    for name, size in sizes.items():
      if size is None:
        continue
      if size % self.num_devices:
        raise ConfigError(
          f"{name} {size} is not divisible by the {self.num_devices} devices "
          f"(parallel={self.mode}); pick a multiple of {self.num_devices}"
        )
      if size % jax.process_count():
        raise ConfigError(f"{name} {size} is not divisible by {jax.process_count()} processes")
    if self.mode == "pmap":  # Replicas stacked on a leading axis, one per local device.
      self._stacked = NamedSharding(Mesh(np.array(self.devices), (AXIS,)), P(AXIS))
    if self.mode == "shard_map":
      self.mesh = Mesh(np.array(self.devices), (AXIS,))
      self._replicated = NamedSharding(self.mesh, P())
      self._split = NamedSharding(self.mesh, P(AXIS))

  @property
  def axis_name(self) -> str | None:
    return None if self.mode == "none" else AXIS

  # Placement -----------------------------------------------------------------

  def replicate(self, tree: Any) -> Any:
    """Puts a host/one-device pytree where the compiled steps expect it."""
    if self.mode == "none":
      return jax.device_put(tree, self.devices[0])
    if self.mode == "pmap":
      n = len(self.devices)
      stacked = jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (n,) + np.shape(x)), tree)
      return jax.device_put(stacked, self._stacked)
    return jax.device_put(tree, self._replicated)

  def unreplicate(self, tree: Any) -> Any:
    """One copy of a replicated pytree, as host NumPy arrays.

    Reads this process's first shard, so it works when the global array spans
    devices of other processes too.
    """

    def first_copy(x):
      shard = np.asarray(x.addressable_data(0))
      if self.mode == "pmap" and shard.shape != x.shape[1:]:
        shard = shard[0]  # The shard kept the stacked axis, with size 1.
      return shard

    return jax.tree.map(first_copy, tree)

  def shard(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """Splits this process's batch over its devices."""
    if self.mode == "none":
      return jax.device_put(batch, self.devices[0])
    if self.mode == "pmap":
      n = len(self.devices)
      return jax.tree.map(lambda x: x.reshape((n, x.shape[0] // n) + x.shape[1:]), batch)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(self._split, x), batch)

  def shard_steps(self, batches: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """Like `shard`, for K steps' batches stacked on a leading axis (K, B, ...)."""
    if self.mode == "none":
      return jax.device_put(batches, self.devices[0])
    if self.mode == "pmap":  # (K, B, ...) -> (devices, K, B / devices, ...).
      n = len(self.devices)

      def split(x):
        x = x.reshape((x.shape[0], n, x.shape[1] // n) + x.shape[2:])
        return np.swapaxes(x, 0, 1)

      return jax.tree.map(split, batches)
    sharding = NamedSharding(self.mesh, P(None, AXIS))
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batches)

  def fetch(self, metrics: dict[str, jax.Array], steps: int | None = None) -> Any:
    """Device metrics (already reduced over devices): floats, or arrays for vector metrics.
    With `steps`, the metrics of a K-step dispatch (stacked on axis 0): a list of K dicts."""
    host = self.unreplicate(metrics)

    def value(v):
      return float(v) if v.size == 1 else v

    if steps is None:
      return {k: value(v) for k, v in host.items()}
    return [{k: value(v[i]) for k, v in host.items()} for i in range(steps)]

  # Compilation ---------------------------------------------------------------

  def _wrap(self, body: Callable, in_specs, out_specs, donate: bool, pmap_in_axes) -> Callable:
    """`pmap_in_axes`: 0 for arguments with a leading device axis under pmap (the
    replicated state, batches), None for broadcast ones (the root key)."""
    donate_argnums = (0,) if donate else ()
    options = compiler_options()
    if self.mode == "none":
      return jax.jit(body, donate_argnums=donate_argnums, compiler_options=options)
    if self.mode == "pmap":  # jax.pmap takes no compiler options.
      return jax.pmap(body, axis_name=AXIS, in_axes=pmap_in_axes, donate_argnums=donate_argnums)
    # check_vma=False gives the body pmap's semantics. With it on, the gradient of
    # replicated (device-invariant) params through a per-device loss is summed over
    # devices by JAX itself, and the body's own `pmean` would then see D× the mean.
    mapped = jax.shard_map(
      body, mesh=self.mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False
    )
    return jax.jit(mapped, donate_argnums=donate_argnums, compiler_options=options)

  def train_step(self, step_fn: StepFn, *, steps_per_dispatch: int = 1, data=None) -> Callable:
    """Compiles `step_fn` for this mode.

    Args:
      step_fn: the family's `(state, batch, key, *, axis_name) -> (state, metrics)`.
      steps_per_dispatch: K steps per call, under `lax.scan`; metrics then have a
        leading axis of K.
      data: a `genlab.data.ResidentSplit` whose batches the steps gather themselves.

    Returns:
      Streaming: `(state, batch, root_key) -> (state, metrics)`, the batch (B, ...) or,
      with K > 1, (K, B, ...) (see `shard_steps`). Resident: `(state, root_key, arrays,
      orders) -> (state, metrics)`, `arrays` = `replicate(data.arrays)` and `orders` =
      `replicate(data.orders(step, K))`.
    """
    axis_name, k = self.axis_name, steps_per_dispatch
    one = self._guarded(step_fn)
    # XLA:CPU runs convolutions inside a while loop ~100x slower than outside one (it
    # measured 5 s vs 43 ms for a Conv's gradient): on CPU the K steps are unrolled.
    unroll = k if jax.default_backend() == "cpu" else 1
    if data is None:

      def streaming(state, batch, root_key):
        if k == 1:
          return one(state, batch, root_key)
        return jax.lax.scan(lambda st, b: one(st, b, root_key), state, batch, unroll=unroll)

      batch_spec = P(AXIS) if k == 1 else P(None, AXIS)
      specs = dict(in_specs=(P(), batch_spec, P()), out_specs=(P(), P()))
      return self._wrap(streaming, **specs, donate=True, pmap_in_axes=(0, 0, None))
    if self.mode != "none" and jax.process_count() > 1:
      raise ConfigError("device-resident data works in one process; set data.device_resident=off")
    parts = 1 if axis_name is None else self.num_devices

    def resident(state, root_key, arrays, orders):
      part = 0 if axis_name is None else jax.lax.axis_index(axis_name)

      def step(st, _):
        batch = data.batch(arrays, orders, st.step, part=part, parts=parts)
        return one(st, batch, root_key)

      if k == 1:
        return step(state, None)
      return jax.lax.scan(step, state, None, length=k, unroll=unroll)

    specs = dict(in_specs=(P(), P(), P(), P()), out_specs=(P(), P()))
    return self._wrap(resident, **specs, donate=True, pmap_in_axes=(0, None, 0, 0))

  def _guarded(self, step_fn: StepFn) -> Callable:
    """`step_fn` with the step key, the non-finite flag and the step counter."""
    axis_name = self.axis_name

    def body(state: TrainState, batch, root_key):
      key = rngs.step_key(root_key, state.step)
      new_state, metrics = step_fn(state, batch, key, axis_name=axis_name)
      # A step with a NaN/Inf metric (loss, grad norm, ...) made no update: the
      # family skipped it (`TrainState.apply_gradients(finite=...)`). The flag
      # tells the loop, which stops or counts it (`on_nonfinite`).
      finite = all_finite(metrics)
      if axis_name is not None:
        finite = jax.lax.pmin(finite, axis_name)
      metrics = {**metrics, "nonfinite": 1.0 - finite.astype(jnp.float32)}
      return new_state.replace(step=state.step + 1), metrics

    return body

  def eval_step(self, eval_fn: EvalFn) -> Callable:
    """Compiles `eval_fn(state, batch) -> per-batch sums` into sums over all devices."""
    axis_name = self.axis_name

    def body(state: TrainState, batch):
      sums = eval_fn(state, batch)
      sums["num_examples"] = jnp.sum(batch["mask"])
      return psum(sums, axis_name)

    return self._wrap(
      body, in_specs=(P(), P(AXIS)), out_specs=P(), donate=False, pmap_in_axes=(0, 0)
    )


# XLA:CPU (jaxlib 0.10) hands dots, convolutions and reductions to YNNPACK by default.
# Its convolutions run these models' gradients 3-4x slower than XLA's own emitter: a 3x3
# stride-2 Conv's kernel gradient on 128 maps of 28x28x32 took 38 ms against 11 ms, and
# whole steps went conv_ae 5.95k -> 7.45k and dcgan 934 -> 1,393 examples/s on 2 cores.
# So convolutions are taken off the list, dots and reductions kept (without REDUCE,
# mlp_vae and sparse_ae lose ~12%). Set per compiled step, not process-wide; an
# XLA_FLAGS setting of the same flag wins.
CPU_COMPILER_OPTIONS = {
  "xla_cpu_experimental_ynn_fusion_type": (
    "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"
  ),
}


def compiler_options() -> dict[str, str] | None:
  """The XLA options genlab compiles its train and eval steps with on this backend."""
  if jax.default_backend() != "cpu":
    return None
  flags = os.environ.get("XLA_FLAGS", "")
  options = {k: v for k, v in CPU_COMPILER_OPTIONS.items() if f"--{k}" not in flags}
  return options or None


def use_cpu_devices(count: int) -> None:
  """Splits this host's CPU into `count` JAX devices (e.g. one per core), so that `pmap`
  and `shard_map` run a step's slices of the batch side by side, one per core.

  XLA:CPU otherwise runs one program whose every op is split over the cores, with a
  hand-over between the threads at each op; models made of many small ops (recurrent
  steps, small convolutions) spend much of their step there. README, Speed: the recurrent
  and convolutional reference models gain, those whose step is a few large products lose.
  The results are those of one device up to float rounding (data parallelism: gradients
  and metrics are averaged over the devices). Batch sizes must divide by `count`.

  Also puts `cpu_xla_flags()` into XLA_FLAGS, for `jax.pmap` (`parallel='auto'`), which
  takes no per-step compiler options. Call it before anything runs on JAX (`genlab train
  --cpu_devices N` does); the environment variable JAX_NUM_CPU_DEVICES=N does the same,
  without the flags. Only the CPU backend is affected.
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
  flags = os.environ.get("XLA_FLAGS", "")
  missing = [f for f in cpu_xla_flags().split() if f.split("=")[0] not in flags]
  if missing:
    os.environ["XLA_FLAGS"] = " ".join([flags, *missing]).strip()


def cpu_xla_flags() -> str:
  """`CPU_COMPILER_OPTIONS` as XLA_FLAGS (set before JAX starts), for what takes no
  per-step options: `jax.pmap`, whose mode is otherwise compiled with XLA's defaults."""

  def flag_value(value: str) -> str:
    return ",".join(v.removeprefix("LIBRARY_FUSION_TYPE_").lower() for v in value.split(","))

  return " ".join(f"--{k}={flag_value(v)}" for k, v in CPU_COMPILER_OPTIONS.items())


def masked_sum(values: jax.Array, mask: jax.Array) -> jax.Array:
  """Sum of per-example `values` over the examples where `mask` is 1, in float32."""
  return jnp.sum(values.astype(jnp.float32) * mask)


__all__ = [
  "AXIS",
  "Runner",
  "compiler_options",
  "cpu_xla_flags",
  "masked_sum",
  "pmean",
  "psum",
  "resolve_mode",
  "use_cpu_devices",
]
