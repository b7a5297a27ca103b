"""What pins the resources a workdir's checkpoints were trained with.

A family's resources are built by the run layer (`genlab.run.resources`) before its state,
from things outside the workdir that may change meanwhile: an activation SAE's host is
the newest checkpoint of another workdir, which may train on. A resource that knows what
identifies it (`identity`: the host's checkpoint step and a SHA-256 of its parameters) is
recorded in `WORKDIR/resources.json` when a run starts; a resume and `genlab eval` read it
back (`read_pins`) and the providers build exactly that resource, or refuse in one line.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from genlab.errors import WorkdirError
from genlab.run.writers import write_atomically

PINS_FILE = "resources.json"


def params_digest(params: Any) -> str:
  """A digest of a pytree of arrays that is the same whatever devices and processes hold
  them, computed where they lie: per leaf, two position-weighted sums of its bits modulo
  2^32 (integer sums: exact in any order), with its path, dtype and shape, through SHA-256.
  Not a cryptographic hash of the bytes (that would copy every array whole to one host):
  a check that the parameters are the same ones."""
  digest = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    sums = _weighted_bit_sums(leaf)
    sums = np.asarray(sums.addressable_data(0) if isinstance(sums, jax.Array) else sums)
    digest.update(f"{jax.tree_util.keystr(path)}:{leaf.dtype}:{tuple(leaf.shape)};".encode())
    digest.update(sums.astype("<u4").tobytes())
  return digest.hexdigest()


@jax.jit
def _weighted_bit_sums(x: jax.Array) -> jax.Array:
  x = jnp.asarray(x).reshape(-1)
  width = x.dtype.itemsize * 8
  if width not in (8, 16, 32):  # float64 and friends: compared as their float32 values.
    x, width = x.astype(jnp.float32), 32
  bits = jax.lax.bitcast_convert_type(x, {8: jnp.uint8, 16: jnp.uint16, 32: jnp.uint32}[width])
  bits = bits.astype(jnp.uint32)
  index = jnp.arange(x.size, dtype=jnp.uint32)
  first = jnp.sum(bits * (index * jnp.uint32(2654435761) + jnp.uint32(1)), dtype=jnp.uint32)
  rotated = (bits << 13) | (bits >> 19)
  second = jnp.sum((rotated ^ index) * jnp.uint32(2246822519), dtype=jnp.uint32)
  return jnp.stack([first, second])


def read_pins(workdir: str | pathlib.Path) -> dict[str, dict]:
  """The pins `workdir` recorded, by resource name ({} if none)."""
  path = pathlib.Path(workdir) / PINS_FILE
  if not path.is_file():
    return {}
  try:
    pins = json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise WorkdirError(
      f"{path} cannot be read ({type(e).__name__}: {str(e)[:120]}): it says which resources "
      "(an SAE's host checkpoint) the checkpoints were trained with; restore it from a copy"
    ) from e
  if not isinstance(pins, dict):
    raise WorkdirError(f"{path} holds {type(pins).__name__}, not the resources' pins")
  return pins


def record_pins(workdir: str | pathlib.Path, resources: dict[str, Any]) -> None:
  """Writes the identities of `resources` that have one to `workdir` (process 0)."""
  pins = {
    name: resource.identity
    for name, resource in resources.items()
    if getattr(resource, "identity", None)
  }
  if pins and jax.process_index() == 0:
    text = json.dumps(pins, indent=2, sort_keys=True) + "\n"
    write_atomically(pathlib.Path(workdir) / PINS_FILE, lambda f: f.write(text))


__all__ = ["PINS_FILE", "params_digest", "read_pins", "record_pins"]
