"""Input corruptions for denoising autoencoders: pure keyed functions `(key, x) -> x_noisy`.

Each function corrupts one example (or any array) from its own key; the
autoencoder family calls them with per-example keys (`example_keys(key,
batch['index'])`), so an example's noise does not depend on the device count.
Compose several with `compose`, or parse a command-line spec with `parse`:

    parse("gaussian:0.5")                      # σ = 0.5
    parse("masking:0.25+salt_and_pepper:0.1")  # mask 25% of values, then 10% to lo/hi
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from genlab.errors import ConfigError

Corruption = Callable[[jax.Array, jax.Array], jax.Array]


def gaussian(key: jax.Array, x: jax.Array, *, sigma: float) -> jax.Array:
  """Adds N(0, σ²) noise to every value."""
  return x + sigma * jax.random.normal(key, x.shape, x.dtype)


def masking(key: jax.Array, x: jax.Array, *, rate: float, fill: float = 0.0) -> jax.Array:
  """Sets each value to `fill` with probability `rate` (masking / dropout noise)."""
  return jnp.where(jax.random.bernoulli(key, rate, x.shape), jnp.asarray(fill, x.dtype), x)


def salt_and_pepper(
  key: jax.Array, x: jax.Array, *, rate: float, low: float = 0.0, high: float = 1.0
) -> jax.Array:
  """Sets each value with probability `rate` to `low` or `high` (even odds)."""
  hit_key, salt_key = jax.random.split(key)
  hit = jax.random.bernoulli(hit_key, rate, x.shape)
  salt = jax.random.bernoulli(salt_key, 0.5, x.shape)
  return jnp.where(hit, jnp.where(salt, high, low).astype(x.dtype), x)


def compose(*corruptions: Corruption) -> Corruption:
  """Applies corruptions in order, each with its own key folded from the given one."""

  def corrupt(key: jax.Array, x: jax.Array) -> jax.Array:
    for i, fn in enumerate(corruptions):
      x = fn(jax.random.fold_in(key, i), x)
    return x

  return corrupt


def parse(spec: str, *, value_range: tuple[float, float] = (0.0, 1.0)) -> Corruption | None:
  """Builds a corruption from `kind:amount[+kind:amount...]`; '' or 'none' gives None.

  Kinds: `gaussian:σ`, `masking:rate` (to the low end of `value_range`),
  `salt_and_pepper:rate` (to the ends of `value_range`).
  """
  if spec in ("", "none"):
    return None
  lo, hi = value_range
  fns = []
  for part in spec.split("+"):
    kind, _, amount = part.partition(":")
    try:
      value = float(amount)
    except ValueError:
      raise ConfigError(f"corruption {part!r}: expected kind:number, e.g. gaussian:0.5") from None
    if kind == "gaussian":
      fns.append(functools.partial(gaussian, sigma=value))
    elif kind == "masking":
      fns.append(functools.partial(masking, rate=value, fill=lo))
    elif kind == "salt_and_pepper":
      fns.append(functools.partial(salt_and_pepper, rate=value, low=lo, high=hi))
    else:
      raise ConfigError(f"unknown corruption {kind!r}; choose gaussian, masking or salt_and_pepper")
    if value < 0 or (kind != "gaussian" and value > 1):
      raise ConfigError(f"corruption {part!r}: the amount is out of range")
  return compose(*fns)
