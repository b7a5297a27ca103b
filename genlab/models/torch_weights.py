"""Reads a PyTorch `.pth` state dict into NumPy arrays, without PyTorch and without running
the file's code.

`torch.save` writes a zip archive (PyTorch ≥ 1.6: `<name>/data.pkl`, the pickled object,
and `<name>/data/<key>`, the raw bytes of each storage) or, before that, one stream of
pickles followed by the storages (the legacy format). The pickle names PyTorch functions
that rebuild tensors from storages; a pickle can name any function, so this reader's
unpickler admits only the few names a state dict needs (`ALLOWED`: an OrderedDict, the
tensor-rebuild function, the storage types) and refuses every other one in one line.
"""

from __future__ import annotations

import collections
import pathlib
import pickle
import struct
import zipfile
from typing import Any

import numpy as np

# The storage types of torch.save, by the dtype of their elements.
STORAGE_DTYPES = {
  "DoubleStorage": np.float64,
  "FloatStorage": np.float32,
  "HalfStorage": np.float16,
  "LongStorage": np.int64,
  "IntStorage": np.int32,
  "ShortStorage": np.int16,
  "CharStorage": np.int8,
  "ByteStorage": np.uint8,
  "BoolStorage": np.bool_,
}
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class UnsafePickle(pickle.UnpicklingError):
  """The file's pickle names something a state dict does not need."""


class _Storage:
  """A storage's elements, filled in when its bytes are read."""

  def __init__(self, dtype: np.dtype, numel: int):
    self.dtype, self.numel, self.data = np.dtype(dtype), numel, None


class _Tensor:
  """A tensor to rebuild from its storage once the storage's bytes are in."""

  def __init__(self, storage: _Storage, offset: int, size, stride):
    self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

  def array(self) -> np.ndarray:
    data = self.storage.data
    if not self.size:
      return np.array(data[self.offset])
    strides = [s * data.itemsize for s in self.stride]
    view = np.lib.stride_tricks.as_strided(data[self.offset :], shape=self.size, strides=strides)
    return np.array(view)  # A copy: the arrays own their memory.


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, *args):
  del requires_grad, args  # Backward hooks and metadata: nothing for NumPy arrays.
  return _Tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(tensor, requires_grad=False, backward_hooks=None):
  del requires_grad, backward_hooks
  return tensor


class _StorageType:
  def __init__(self, name: str):
    self.name, self.dtype = name, STORAGE_DTYPES[name]


ALLOWED = {
  ("collections", "OrderedDict"): collections.OrderedDict,
  ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
  ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _Unpickler(pickle.Unpickler):
  def __init__(self, file, storages: dict[str, _Storage]):
    super().__init__(file)
    self.storages = storages

  def find_class(self, module, name):
    if (module, name) in ALLOWED:
      return ALLOWED[(module, name)]
    if module == "torch" and name in STORAGE_DTYPES:
      return _StorageType(name)
    raise UnsafePickle(
      f"the file's pickle names {module}.{name}, which a state dict of tensors does not need; "
      "it is not run (genlab reads only OrderedDicts of tensors)"
    )

  def persistent_load(self, pid):
    kind, storage_type, key, _location, numel = pid[:5]
    if kind != "storage" or not isinstance(storage_type, _StorageType):
      raise UnsafePickle(f"unexpected persistent id {pid!r}")
    if key not in self.storages:
      self.storages[key] = _Storage(storage_type.dtype, numel)
    return self.storages[key]


def _arrays(tree: Any) -> Any:
  if isinstance(tree, _Tensor):
    return tree.array()
  if isinstance(tree, dict):
    return type(tree)((k, _arrays(v)) for k, v in tree.items())
  if isinstance(tree, list | tuple):
    return type(tree)(_arrays(v) for v in tree)
  return tree


def _read_zip(path: pathlib.Path) -> Any:
  with zipfile.ZipFile(path) as archive:
    names = archive.namelist()
    pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
    if len(pickles) != 1:
      raise ValueError(f"{path}: a torch.save archive holds one data.pkl, this one {pickles}")
    prefix = pickles[0][: -len("data.pkl")]
    order = "little"
    if f"{prefix}byteorder" in names:
      order = archive.read(f"{prefix}byteorder").decode().strip()
    storages: dict[str, _Storage] = {}
    with archive.open(pickles[0]) as file:
      obj = _Unpickler(file, storages).load()
    for key, storage in storages.items():
      dtype = storage.dtype.newbyteorder("<" if order == "little" else ">")
      data = np.frombuffer(archive.read(f"{prefix}data/{key}"), dtype=dtype)
      storage.data = data[: storage.numel].astype(storage.dtype)
  return _arrays(obj)


def _read_legacy(path: pathlib.Path) -> Any:
  with open(path, "rb") as file:
    restricted = lambda: _Unpickler(file, {})  # noqa: E731 (the header holds plain values)
    if restricted().load() != LEGACY_MAGIC:
      raise ValueError(f"{path} is neither a zip archive nor a legacy torch.save file")
    restricted().load()  # Protocol version.
    restricted().load()  # System info (byte order, sizes).
    storages: dict[str, _Storage] = {}
    obj = _Unpickler(file, storages).load()
    keys = _Unpickler(file, {}).load()
    for key in keys:
      storage = storages[key]
      (numel,) = struct.unpack("<q", file.read(8))
      size = numel * storage.dtype.itemsize
      storage.data = np.frombuffer(file.read(size), dtype=storage.dtype.newbyteorder("<")).astype(
        storage.dtype
      )
  return _arrays(obj)


def read_state_dict(path: str | pathlib.Path) -> dict[str, np.ndarray]:
  """The tensors of the state dict `torch.save` wrote to `path`, as NumPy arrays by name.

  Raises:
    UnsafePickle: the file's pickle names a function or class a state dict does not need.
    ValueError: the file is not a torch.save file of a dict.
  """
  path = pathlib.Path(path)
  obj = _read_zip(path) if zipfile.is_zipfile(path) else _read_legacy(path)
  if not isinstance(obj, dict):
    raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict")
  return dict(obj)


__all__ = ["UnsafePickle", "read_state_dict"]
