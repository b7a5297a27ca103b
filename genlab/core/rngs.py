"""Keys that depend only on (seed, step, stream, example index).

One root key from the seed; each train step uses `step_key(root, step)`; a
step that needs several kinds of randomness splits them by name with
`stream_key`; per-example randomness uses `example_keys(key, batch['index'])`,
where `index` is the example's position in the *global* batch — so an example
gets the same noise whichever device holds it, and a resumed run repeats
exactly. Nothing depends on how many steps this process has run.
"""

from __future__ import annotations

import zlib

import jax


def root_key(seed: int) -> jax.Array:
  """The run's root key."""
  return jax.random.key(seed)


def step_key(root: jax.Array, step: jax.typing.ArrayLike) -> jax.Array:
  """The key of train step `step` (traceable: `step` may be the state's counter)."""
  return jax.random.fold_in(root, step)


def stream_key(key: jax.Array, name: str) -> jax.Array:
  """A key for one named kind of randomness (`'noise'`, `'dropout'`, `'z'`, ...)."""
  return jax.random.fold_in(key, zlib.crc32(name.encode()) & 0x7FFFFFFF)


def example_keys(key: jax.Array, index: jax.Array) -> jax.Array:
  """One key per example, from its position `index` in the global batch."""
  return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, index)
