"""The one seam between genlab's models and the kernels their layers run on.

Models take their Dense, ConvTranspose and recurrent layers from here, by a
`kernels` name that the run resolves from its devices (`config.kernels`):

* `flax` — flax's own layers (`nn.Dense`, `nn.ConvTranspose`, `nn.RNN` over
  `nn.OptimizedLSTMCell` / `nn.GRUCell`), compiled with XLA's defaults. What
  runs on GPUs and TPUs, and what a model built outside a run gets.
* `xla_cpu` — genlab's versions for XLA:CPU (`genlab.kernels.xla_cpu`): custom
  gradients for `ConvTranspose`, bf16 products accumulated in float32, a fused
  bf16 LSTM layer, genlab's compiler options, and multi-step dispatches unrolled
  when the step convolves.
  They exist only to make XLA:CPU fast (docs/performance.md measures them).
* `auto` — `xla_cpu` when every device of the run is a CPU, else `flax`.

Both give the same parameters (names, shapes, initial values), so a checkpoint
does not depend on which ran. The XLA:CPU versions use flax names that flax does
not promise to keep; if they are gone, this module warns once and gives flax's
layers. Compiler options XLA does not take are dropped with a warning.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from genlab.errors import ConfigError

KERNELS = ("auto", "flax", "xla_cpu")
RESOLVED = ("flax", "xla_cpu")  # What `resolve` gives: the layers a model builds.

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


def resolve(kernels: str, devices: Sequence[Any]) -> str:
  """`flax` or `xla_cpu` for a run on `devices` (`auto`: `xla_cpu` iff all are CPUs)."""
  if kernels not in KERNELS:
    raise ConfigError(f"config.kernels={kernels!r}; choose one of {KERNELS}")
  if kernels == "auto":
    kernels = "xla_cpu" if all(d.platform == "cpu" for d in devices) else "flax"
  if kernels == "xla_cpu" and _xla_cpu() is None:
    return "flax"
  return kernels


@functools.cache
def _xla_cpu():
  """genlab's XLA:CPU layers, or None (with a warning) if flax lacks a name they use."""
  try:
    from genlab.kernels import xla_cpu
  except (ImportError, AttributeError) as e:
    warnings.warn(
      f"genlab's XLA:CPU kernels are unavailable with this flax ({type(e).__name__}: {e}); "
      "using flax's own layers instead (same parameters, slower on CPUs)",
      stacklevel=2,
    )
    return None
  return xla_cpu


def dense(features: int, *, kernels: str, **kwargs) -> nn.Module:
  """A Dense layer: `nn.Dense(features, **kwargs)`, or genlab's XLA:CPU one (bf16 products
  accumulated in float32)."""
  if kernels == "xla_cpu":
    return _xla_cpu().precision.Dense(features, **kwargs)
  return nn.Dense(features, **kwargs)


def conv_transpose(features: int, kernel_size, *, kernels: str, **kwargs) -> nn.Module:
  """A transposed convolution: `nn.ConvTranspose(...)`, or genlab's XLA:CPU one (the same
  function, with gradients XLA:CPU runs fast)."""
  if kernels == "xla_cpu":
    return _xla_cpu().conv_transpose.ConvTranspose(features, kernel_size, **kwargs)
  return nn.ConvTranspose(features, kernel_size, **kwargs)


CELLS = ("lstm", "gru")


def recurrent_layer(
  cell: str, features: int, *, kernels: str, name: str, dtype: Any, **rnn_kwargs
) -> nn.Module:
  """A whole recurrent layer with `nn.RNN`'s interface over an LSTM or GRU cell named
  `{name}_cell`. `xla_cpu` in bfloat16: the LSTM is one fused op (`xla_cpu.lstm.LSTM`)
  and its cell's products accumulate in float32."""
  if cell not in CELLS:
    raise ConfigError(f"unknown cell {cell!r}; choose one of {list(CELLS)}")
  cells = {"lstm": nn.OptimizedLSTMCell, "gru": nn.GRUCell}
  if kernels == "xla_cpu" and cell == "lstm":
    xla_cpu = _xla_cpu()
    if dtype is not None and jax.numpy.dtype(dtype) == jax.numpy.bfloat16:
      return xla_cpu.lstm.LSTM(features, dtype=dtype, name=f"{name}_cell", **rnn_kwargs)
    cells["lstm"] = xla_cpu.lstm.LSTMCell
  return nn.RNN(cells[cell](features, dtype=dtype, name=f"{name}_cell"), name=name, **rnn_kwargs)


def scan_unroll(kernels: str, steps: int, step_fn=None, *args) -> int:
  """How far to unroll a `lax.scan` of `steps` train steps `step_fn(*args)`: fully for
  `xla_cpu` when the step has a convolution (XLA:CPU ran a Conv's gradient ~100× slower
  inside a while loop: 5 s vs 43 ms), not at all otherwise. Unrolled, the program holds K
  copies of the step and their temporaries: lstm_ae's 10-step dispatch went 2.9k → 4.1k
  examples/s rolled (docs/performance.md). Without `step_fn`, as if it had a convolution."""
  if kernels != "xla_cpu":
    return 1
  if step_fn is None or has_convolution(jax.make_jaxpr(step_fn)(*args).jaxpr):
    return steps
  return 1


def has_convolution(jaxpr) -> bool:
  """Whether `jaxpr` or a jaxpr inside it (scan, cond, custom_vjp, pjit, ...) convolves."""
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "conv_general_dilated":
      return True
    for value in eqn.params.values():
      for sub in value if isinstance(value, (list, tuple)) else (value,):
        inner = getattr(sub, "jaxpr", sub)  # A ClosedJaxpr's, or a Jaxpr itself.
        if hasattr(inner, "eqns") and has_convolution(inner):
          return True
  return False


def compiler_options(kernels: str) -> dict[str, str] | None:
  """The XLA options to compile train and eval steps with: genlab's CPU options for
  `xla_cpu` (those XLA takes, and not set in XLA_FLAGS), none otherwise."""
  if kernels != "xla_cpu":
    return None
  flags = os.environ.get("XLA_FLAGS", "")
  wanted = tuple((k, v) for k, v in CPU_COMPILER_OPTIONS.items() if f"--{k}" not in flags)
  return dict(_options_xla_takes(wanted)) or None


@functools.cache
def _options_xla_takes(options: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
  """The options XLA:CPU compiles with, each tried once on a tiny program; the others are
  dropped with a warning (a renamed option must not make every step fail to compile)."""
  kept = []
  cpu = jax.local_devices(backend="cpu")[0]
  for name, value in options:
    try:
      with jax.default_device(cpu):
        probe = jax.jit(lambda x: x + 1, compiler_options={name: value})
        probe.lower(np.float32(0)).compile()
    except Exception as e:  # noqa: BLE001 - XLA reports option errors as runtime errors.
      reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
      warnings.warn(
        f"XLA does not take the compiler option {name}={value} ({reason}); compiling without it",
        stacklevel=3,
      )
    else:
      kept.append((name, value))
  return tuple(kept)


__all__ = [
  "CELLS",
  "CPU_COMPILER_OPTIONS",
  "KERNELS",
  "RESOLVED",
  "compiler_options",
  "conv_transpose",
  "dense",
  "has_convolution",
  "recurrent_layer",
  "resolve",
  "scan_unroll",
]
