"""What an SAE reads of its host: the activations, their positions, their normalisation.

The run's dataset holds the host's inputs. `ActivationSource` runs the host on them and
reads its layer (`HostModel.capture`), one row per example position
(`HostModel.positions`: valid ones, the first `skip_first` dropped), and normalises the
rows as the SAE sees them (`normalize`): `none`; `norm`, one fixed scale c with E‖c·x‖² =
the width d (SAELens's `normalize_activations='expected_average_only_in'`); or
`per_dimension`, (x − μ)/σ. Both are estimated once from the first `normalize_examples`
train positions. With `cache_dir`, the train split's activations are computed once into a
memory-mapped file (several runs may share it) and read from there in every step.

The host always sees its inputs as the train and eval steps give them (`genlab.data`'s
conversion: integers as int32, floats as float32, with `mask` and `index`), when the scale
is estimated and the cache written too: a host that rescales by dtype sees the same values
at every stage.

A source may read several layers from the same pass of the host (`layers`: a transcoder's
input and output, or the layers of a set of SAEs): each is normalised, and cached, on its
own; `width`, `shift`, `scale`, `normalized` and `activations` are those of the first.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import uuid
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from genlab.console import warn
from genlab.core import to_host
from genlab.data import Dataset, eval_batches
from genlab.errors import ConfigError
from genlab.models.activations import HostModel, as_rows
from genlab.paths import free_name

NORMALIZATIONS = ("none", "norm", "per_dimension")
HOST_BATCH = 512  # Sequences per host pass when estimating, caching or drawing views.


class ActivationSource:
  """The host's activations as an SAE reads them.

  Args:
    host: the host model and its layer.
    dataset: the host's inputs.
    normalize: `none`, `norm` or `per_dimension` (see the module's docstring).
    normalize_examples: train positions the normalisation is estimated on.
    cache_dir: where to cache the train split's activations ('' computes them in every step).
    layers: the layers read, in one pass of the host (default: the host's `layer`).
  """

  def __init__(
    self,
    host: HostModel,
    dataset: Dataset,
    *,
    normalize: str = "norm",
    normalize_examples: int = 8192,
    cache_dir: str = "",
    layers: Sequence[str] = (),
  ):
    if normalize not in NORMALIZATIONS:
      raise ConfigError(f"config.sae.normalize={normalize!r}; choose one of {NORMALIZATIONS}")
    self.host, self.dataset = host, dataset
    self.normalize, self.normalize_examples = normalize, normalize_examples
    self.layers = tuple(dict.fromkeys(layers)) or (host.layer,)
    example = next(self.batches(dataset.train, size=2))
    try:
      output, activations = jax.eval_shape(
        lambda batch: host.capture_many(batch, self.layers), _device(example)
      )
    except ConfigError:
      raise
    except Exception as e:  # noqa: BLE001 - a user's host fails in any way on bad inputs.
      raise ConfigError(
        f"the SAE's host ({host.description or ', '.join(self.layers)}) cannot run on "
        f"{dataset.name}'s "
        f"inputs: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
      ) from None
    self.widths = {}
    for layer, activation in zip(self.layers, activations, strict=True):
      self._check_host(example, activation, layer)
      self.widths[layer] = int(activation.shape[-1])
    self.width = self.widths[self.layers[0]]
    # The host's params are arguments, not constants compiled into the program.
    capture = jax.jit(lambda batch, params: host.capture_many(batch, self.layers, params)[1])
    self.capture_all = lambda batch: capture(batch, host.params)
    self.capture = lambda batch: self.capture_all(batch)[0]
    self.shifts, self.scales = self._estimate_normalization()
    self.shift, self.scale = self.shifts[self.layers[0]], self.scales[self.layers[0]]
    self.eval_positions = int(
      sum(
        float(np.sum(to_host(host.positions(_device(b))) * b["mask"][:, None]))
        for b in self.batches(dataset.test)
      )
    )
    self.cache_path = None
    if cache_dir:
      if not isinstance(dataset.train, dict):
        raise ConfigError(
          "config.sae.cache_dir caches the activations of a train split held in memory; "
          "with data.stream_train on, leave cache_dir empty (activations are then computed "
          "in every step)"
        )
      for layer in self.layers:
        dataset.train[self.column(layer)] = self._cached_activations(cache_dir, layer)

  def column(self, layer: str) -> str:
    """The train split's column holding `layer`'s cached activations."""
    index = self.layers.index(layer)
    return "activations" if index == 0 else f"activations_{index}"

  def _check_host(self, example: dict, activation, layer: str) -> None:
    """Refuses, in one line, a host whose positions do not match its activation's rows."""
    positions = jax.eval_shape(self.host.positions, _device(example))
    rows = int(np.prod(activation.shape[:-1]))
    if int(np.prod(positions.shape)) != rows:
      raise ConfigError(
        f"the SAE's host gives activations of shape {tuple(activation.shape)} at layer "
        f"{layer!r} ({rows} rows of width {activation.shape[-1]}), and positions "
        f"of shape {tuple(positions.shape)}: HostModel.positions must give one weight per "
        "row"
      )

  def batches(self, split, size: int = HOST_BATCH) -> Iterator[dict[str, np.ndarray]]:
    """`split` in batches as the steps see them (converted, padded, with `mask`), without a
    cached `activations` column."""
    if isinstance(split, dict):
      split = {k: v for k, v in split.items() if not k.startswith("activations")}
    yield from eval_batches(split, global_batch_size=size, value_range=None)

  def _estimate_normalization(self) -> tuple[dict, dict]:
    """({layer: shift}, {layer: scale}), x' = (x − shift)·scale, from the first train
    positions (the same positions for every layer)."""
    if self.normalize == "none":
      shifts = {layer: np.zeros(d, np.float32) for layer, d in self.widths.items()}
      return shifts, {layer: np.ones(d, np.float32) for layer, d in self.widths.items()}
    rows, need = {layer: [] for layer in self.layers}, self.normalize_examples
    for batch in self.batches(self.dataset.train):
      device_batch = _device(batch)
      weights = to_host(self.host.positions(device_batch)) * batch["mask"][:, None]
      for layer, act in zip(self.layers, self.capture_all(device_batch), strict=True):
        rows[layer].append(to_host(as_rows(act))[weights.reshape(-1) > 0])
      need -= len(rows[self.layers[0]][-1])
      if need <= 0:
        break
    shifts, scales = {}, {}
    for layer, d in self.widths.items():
      x = np.concatenate(rows[layer])[: self.normalize_examples].astype(np.float64)
      if self.normalize == "norm":
        scale = np.sqrt(d / np.mean(np.sum(x**2, axis=1)))
        shifts[layer], scales[layer] = np.zeros(d, np.float32), np.full(d, scale, np.float32)
      else:
        shifts[layer] = x.mean(0).astype(np.float32)
        scales[layer] = (1.0 / np.maximum(x.std(0), 1e-6)).astype(np.float32)
    return shifts, scales

  def normalized(self, activation: jax.Array, layer: str | None = None) -> jax.Array:
    """The host's activation at `layer` (default: the first) as the SAE sees it: one row
    per position, (x − shift)·scale."""
    layer = layer or self.layers[0]
    return (as_rows(activation).astype(jnp.float32) - self.shifts[layer]) * self.scales[layer]

  def denormalized(self, rows: jax.Array, like: jax.Array, layer: str | None = None) -> jax.Array:
    """Rows the SAE gave back for `layer`, in the host's units and its activation's shape
    and dtype."""
    layer = layer or self.layers[0]
    rows = rows / self.scales[layer] + self.shifts[layer]
    return rows.reshape(like.shape).astype(like.dtype)

  def activations(self, batch, host_params) -> tuple[jax.Array, jax.Array]:
    """(the first layer's normalised activations, one row per position; their weights: 1
    on examples)."""
    rows, weights = self.all_activations(batch, host_params)
    return rows[self.layers[0]], weights

  def all_activations(self, batch, host_params) -> tuple[dict[str, jax.Array], jax.Array]:
    """({layer: normalised activations, one row per position}, their weights: 1 on
    examples), every layer from one pass of the host (or from the cache)."""
    if all(self.column(layer) in batch for layer in self.layers):
      acts = [batch[self.column(layer)] for layer in self.layers]
    else:
      acts = self.host.capture_many(batch, self.layers, host_params)[1]
      acts = [jax.lax.stop_gradient(act) for act in acts]
    rows = {
      layer: self.normalized(act, layer) for layer, act in zip(self.layers, acts, strict=True)
    }
    return rows, self.host.positions(batch).reshape(-1).astype(jnp.float32)

  def _cached_activations(self, cache_dir: str, layer: str | None = None) -> np.ndarray:
    """The train split's activations at `layer` (default: the first) (sequences,
    positions, width), written once to `cache_dir` and memory-mapped; keyed by the host,
    the layer and the data.

    Several runs may share the folder: each writes a file of its own and renames it into
    place whole (the same content whoever finishes first). A file that does not read back
    whole at the expected shape (cut short, overwritten) is set aside, never deleted, and
    the cache is computed again."""
    train = self.dataset.train
    layer = layer or self.layers[0]
    if layer == self.layers[0]:
      capture = self.capture
    else:
      index = self.layers.index(layer)
      capture = lambda batch: self.capture_all(batch)[index]  # noqa: E731
    digest = hashlib.sha256()
    digest.update(self.host.description.encode())
    digest.update(layer.encode())
    for leaf in jax.tree.leaves(self.host.params):
      digest.update(np.asarray(leaf).tobytes())
    digest.update(np.ascontiguousarray(train["image"]).tobytes())
    path = pathlib.Path(cache_dir).expanduser() / f"{digest.hexdigest()[:16]}.npy"
    first = capture(_device(next(self.batches(train, size=1))))
    shape = (len(train["image"]), *first.shape[1:])
    if path.is_file():
      try:
        cached = np.load(path, mmap_mode="r")
        if cached.shape == shape and cached.dtype == np.float32:
          return cached
        why = f"it holds {cached.dtype} {cached.shape}, not float32 {shape}"
      except (OSError, ValueError) as e:  # Cut short: "mmap length is greater than file size".
        why = f"{type(e).__name__}: {e}"
      aside = free_name(path.with_name(f"{path.stem}.damaged.npy"))
      path.rename(aside)
      warn(f"the activation cache {path} cannot be used ({why}): moved to {aside}, computed again")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.stem}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}.npy")
    try:
      out = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float32, shape=shape)
      start = 0
      for batch in self.batches(train):
        count = int(batch["mask"].sum())
        out[start : start + count] = to_host(capture(_device(batch)))[:count]
        start += count
      out.flush()
      del out
      os.replace(partial, path)  # Whole or absent: a crash never leaves a half-written cache.
    finally:
      partial.unlink(missing_ok=True)
    meta = {"host": self.host.description, "layer": layer, "sequences": shape[0]}
    meta_path = path.with_suffix(".json")
    tmp = meta_path.with_name(f".{meta_path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, meta_path)
    return np.load(path, mmap_mode="r")


def _device(batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
  return {k: jnp.asarray(v) for k, v in batch.items()}


__all__ = ["NORMALIZATIONS", "ActivationSource"]
