"""Threefry draws that XLA:CPU compiles faster: the same bits, drawn as a flat vector.

JAX's threefry2x32 gives element `i` (in row-major order) of a draw of shape `s` from
the counter `i`, so `bits(key, s) == bits(key, (prod(s),)).reshape(s)` bit for bit; this
holds with `jax_threefry_partitionable` on or off. What differs is the program: for a
4-d shape, the counters are built from four iotas, and XLA:CPU's LLVM pipeline takes
much longer over the nested loops than over one. A lone `jax.random.bits` of a
3×3×8×16 kernel compiled in 1.4 s against 0.17 s for the same 1,152 values as a vector
(2-core AMD EPYC, Zen 4); a fresh conv_ae_digits state's program in 0.63 s against 1.57
s, dcgan_digits' in 0.78 s against 2.49 s, with the same parameters bit for bit
(docs/performance.md).

`FLAT_THREEFRY` is that implementation: threefry2x32's seed, split and fold_in, and its
random bits drawn flat and reshaped. It serves only the programs that make a fresh state
replicated: a reshape from a flat vector does not let XLA split the draw of an array
sharded on an inner axis, so a state born sharded keeps the shaped draws.
"""

from __future__ import annotations

import math

import jax
from jax.extend import random as jax_random

_THREEFRY = jax_random.threefry_prng_impl


def _flat_random_bits(key: jax.Array, bit_width: int, shape: tuple[int, ...]) -> jax.Array:
  return _THREEFRY.random_bits(key, bit_width, (math.prod(shape),)).reshape(shape)


FLAT_THREEFRY = jax_random.define_prng_impl(
  key_shape=_THREEFRY.key_shape,
  seed=_THREEFRY.seed,
  split=_THREEFRY.split,
  random_bits=_flat_random_bits,
  fold_in=_THREEFRY.fold_in,
  name="threefry2x32_flat",
  tag="fry_flat",
)


def _impl(key) -> str | None:
  """The name of a typed key's implementation (`threefry2x32`, `fry_flat`); None for
  anything else."""
  if isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    return str(jax.random.key_impl(key))
  return None


def is_threefry(key) -> bool:
  """Whether `key` is a typed key of JAX's threefry2x32 (what `FLAT_THREEFRY` mirrors)."""
  return _impl(key) == _THREEFRY.name


def flat(key: jax.Array) -> jax.Array:
  """`key`, a threefry2x32 key, as a `FLAT_THREEFRY` one: the same key data."""
  return jax.random.wrap_key_data(jax.random.key_data(key), impl=FLAT_THREEFRY)


def threefry(key: jax.Array) -> jax.Array:
  """A `FLAT_THREEFRY` key back as threefry2x32's (what a state keeps)."""
  return jax.random.wrap_key_data(jax.random.key_data(key), impl=_THREEFRY.name)


def is_flat(key) -> bool:
  """Whether `key` is a typed key of `FLAT_THREEFRY`."""
  return _impl(key) == str(FLAT_THREEFRY)
