"""Keys that depend only on (seed, step, stream, example index).

The run's seed enters once, as `root_key(seed)`; every other key derives from it by
name. Each train step uses `step_key(root, step)`; a step that needs several kinds of
randomness splits them by name with `stream_key`; per-example randomness uses
`example_keys(key, batch['index'])`, where `index` is the example's position in the
*global* batch — so an example gets the same noise whichever device holds it, and a
resumed run repeats exactly. The data order and augmentations use `stream_key(root,
'data')`, a family's evaluation its own named stream of the root (`'vae_eval'`, ...).
Nothing depends on how many steps this process has run.
"""

from __future__ import annotations

import zlib

import jax

# Streams whose constant predates named streams: the data order's was folded in as 0x0DA7A
# from the start, and keeps it so that every run's data order is what it was.
FIXED_STREAMS = {"data": 0x0DA7A}


def root_key(seed: int) -> jax.Array:
  """The run's root key: the one place a seed becomes a key."""
  return jax.random.key(seed)


def step_key(root: jax.Array, step: jax.typing.ArrayLike) -> jax.Array:
  """The key of train step `step` (traceable: `step` may be the state's counter)."""
  return jax.random.fold_in(root, step)


def stream_id(name: str) -> int:
  """The number a stream's name folds into a key: its CRC32 (31 bits)."""
  return FIXED_STREAMS.get(name, zlib.crc32(name.encode()) & 0x7FFFFFFF)


def stream_key(key: jax.Array, name: str) -> jax.Array:
  """A key for one named kind of randomness (`'noise'`, `'dropout'`, `'z'`, ...)."""
  return jax.random.fold_in(key, stream_id(name))


def example_keys(key: jax.Array, index: jax.Array) -> jax.Array:
  """One key per example, from its position `index` in the global batch."""
  return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, index)


__all__ = [
  "example_keys",
  "root_key",
  "step_key",
  "stream_id",
  "stream_key",
]
