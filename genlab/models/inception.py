"""The FID Inception-v3: the TF graph of 2015-12-05 as pytorch-fid ports it, in Linen.

The network of the FID (Heusel et al. 2017), the KID and the Inception score: torchvision's
Inception-v3 with pytorch-fid's patches to match the TensorFlow graph the scores were
defined with (`FIDInceptionA`, `FIDInceptionC`, `FIDInceptionE_1`: average pools that do
not count the padding; `FIDInceptionE_2`: a max pool in its pool branch), 1,008 classes, no
auxiliary head. Its outputs are `pool3`, the 2,048-d features of the final average pool,
and `logits`, the 1,008-way classifier on them (the Inception score's p(y|x)).

Every convolution is torchvision's `BasicConv2d`: a convolution without bias, batch norm
with running statistics (ε = 10⁻³), ReLU. Parameter names follow the PyTorch state dict's
(`Mixed_5b.branch1x1.conv.weight` is `params['Mixed_5b']['branch1x1']['conv']['kernel']`),
so `variables_from_state_dict` is a renaming and a transposition.

Input: (N, 299, 299, 3) images in [-1, 1] (pytorch-fid's normalisation, 2·(x/255) − 1 of
8-bit pixels); resizing is the caller's (`genlab.evaluators.inception`).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

BN_EPSILON = 1e-3  # torchvision's BasicConv2d.
NUM_CLASSES = 1008  # The TF graph's classifier (1,000 ImageNet classes and 8 unused).


def _pair(v) -> tuple[int, int]:
  return (v, v) if isinstance(v, int) else tuple(v)


class BasicConv(nn.Module):
  """Convolution (no bias), batch norm from running statistics, ReLU."""

  features: int
  kernel_size: Any
  strides: Any = 1
  padding: Any = 0

  @nn.compact
  def __call__(self, x):
    ph, pw = _pair(self.padding)
    x = nn.Conv(
      self.features,
      _pair(self.kernel_size),
      strides=_pair(self.strides),
      padding=((ph, ph), (pw, pw)),
      use_bias=False,
      name="conv",
    )(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPSILON, name="bn")(x)
    return nn.relu(x)


def _avg_pool_same(x):
  """3×3 average, stride 1, padding 1, the padding not counted (TF's; pytorch-fid's patch)."""
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool(x, stride: int = 2, padding: int = 0):
  return nn.max_pool(x, (3, 3), strides=(stride, stride), padding=((padding,) * 2,) * 2)


class InceptionA(nn.Module):  # FIDInceptionA
  pool_features: int

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv(64, 1, name="branch1x1")(x)
    b5 = BasicConv(48, 1, name="branch5x5_1")(x)
    b5 = BasicConv(64, 5, padding=2, name="branch5x5_2")(b5)
    b3 = BasicConv(64, 1, name="branch3x3dbl_1")(x)
    b3 = BasicConv(96, 3, padding=1, name="branch3x3dbl_2")(b3)
    b3 = BasicConv(96, 3, padding=1, name="branch3x3dbl_3")(b3)
    bp = BasicConv(self.pool_features, 1, name="branch_pool")(_avg_pool_same(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):  # torchvision's InceptionB (Mixed_6a)
  @nn.compact
  def __call__(self, x):
    b3 = BasicConv(384, 3, strides=2, name="branch3x3")(x)
    bd = BasicConv(64, 1, name="branch3x3dbl_1")(x)
    bd = BasicConv(96, 3, padding=1, name="branch3x3dbl_2")(bd)
    bd = BasicConv(96, 3, strides=2, name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max_pool(x)], axis=-1)


class InceptionC(nn.Module):  # FIDInceptionC
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    b1 = BasicConv(192, 1, name="branch1x1")(x)
    b7 = BasicConv(c7, 1, name="branch7x7_1")(x)
    b7 = BasicConv(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
    b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
    bd = BasicConv(c7, 1, name="branch7x7dbl_1")(x)
    bd = BasicConv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
    bd = BasicConv(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
    bd = BasicConv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
    bd = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
    bp = BasicConv(192, 1, name="branch_pool")(_avg_pool_same(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):  # torchvision's InceptionD (Mixed_7a)
  @nn.compact
  def __call__(self, x):
    b3 = BasicConv(192, 1, name="branch3x3_1")(x)
    b3 = BasicConv(320, 3, strides=2, name="branch3x3_2")(b3)
    b7 = BasicConv(192, 1, name="branch7x7x3_1")(x)
    b7 = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = BasicConv(192, 3, strides=2, name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max_pool(x)], axis=-1)


class InceptionE(nn.Module):
  """FIDInceptionE_1 (`max_pool=False`: a 3×3 average not counting the padding) or
  FIDInceptionE_2 (`max_pool=True`: a 3×3 max pool, as the TF graph has it)."""

  max_pool: bool

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv(320, 1, name="branch1x1")(x)
    b3 = BasicConv(384, 1, name="branch3x3_1")(x)
    b3 = jnp.concatenate(
      [
        BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
        BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3),
      ],
      axis=-1,
    )
    bd = BasicConv(448, 1, name="branch3x3dbl_1")(x)
    bd = BasicConv(384, 3, padding=1, name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate(
      [
        BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
        BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd),
      ],
      axis=-1,
    )
    pooled = _max_pool(x, stride=1, padding=1) if self.max_pool else _avg_pool_same(x)
    bp = BasicConv(192, 1, name="branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class FIDInceptionV3(nn.Module):
  """The FID Inception-v3 (see the module docstring): `(pool3, logits)` of images in [-1, 1]."""

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    x = BasicConv(32, 3, strides=2, name="Conv2d_1a_3x3")(x)
    x = BasicConv(32, 3, name="Conv2d_2a_3x3")(x)
    x = BasicConv(64, 3, padding=1, name="Conv2d_2b_3x3")(x)
    x = _max_pool(x)
    x = BasicConv(80, 1, name="Conv2d_3b_1x1")(x)
    x = BasicConv(192, 3, name="Conv2d_4a_3x3")(x)
    x = _max_pool(x)
    x = InceptionA(32, name="Mixed_5b")(x)
    x = InceptionA(64, name="Mixed_5c")(x)
    x = InceptionA(64, name="Mixed_5d")(x)
    x = InceptionB(name="Mixed_6a")(x)
    x = InceptionC(128, name="Mixed_6b")(x)
    x = InceptionC(160, name="Mixed_6c")(x)
    x = InceptionC(160, name="Mixed_6d")(x)
    x = InceptionC(192, name="Mixed_6e")(x)
    x = InceptionD(name="Mixed_7a")(x)
    x = InceptionE(max_pool=False, name="Mixed_7b")(x)
    x = InceptionE(max_pool=True, name="Mixed_7c")(x)
    pool3 = jnp.mean(x, axis=(1, 2))
    logits = nn.Dense(NUM_CLASSES, name="fc")(pool3)
    return pool3, logits


def variables_from_state_dict(state: dict[str, np.ndarray]) -> dict[str, Any]:
  """Linen variables of `FIDInceptionV3` from pytorch-fid's state dict (NumPy arrays by
  name, `genlab.models.torch_weights.read_state_dict`): convolution kernels (O, I, kh, kw)
  → (kh, kw, I, O), the classifier's (O, I) → (I, O), batch norm's weight, bias and running
  statistics → scale, bias, mean, var. Every variable the module has must be in `state`,
  and every tensor of `state` used (but batch norm's counters).

  Raises:
    ValueError: naming the missing or unused tensors, or a shape that does not fit.
  """
  abstract = jax.eval_shape(
    FIDInceptionV3().init, jax.random.key(0), jnp.zeros((1, 299, 299, 3), jnp.float32)
  )
  used, variables = set(), {}
  for collection, leaves in abstract.items():
    flat = jax.tree_util.tree_flatten_with_path(leaves)[0]
    for path, leaf in flat:
      names = [p.key for p in path]
      *module, leaf_name = names
      torch_leaf = {
        ("params", "kernel"): "weight",
        ("params", "scale"): "weight",
        ("params", "bias"): "bias",
        ("batch_stats", "mean"): "running_mean",
        ("batch_stats", "var"): "running_var",
      }[(collection, leaf_name)]
      key = ".".join([*module, torch_leaf])
      if key not in state:
        raise ValueError(f"the state dict has no {key}, which the FID Inception needs")
      value = np.asarray(state[key], np.float32)
      if leaf_name == "kernel":
        value = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T
      if value.shape != leaf.shape:
        raise ValueError(f"{key} has shape {value.shape}, the FID Inception's is {leaf.shape}")
      used.add(key)
      node = variables.setdefault(collection, {})
      for name in module:
        node = node.setdefault(name, {})
      node[leaf_name] = value
  unused = sorted(k for k in state if k not in used and not k.endswith("num_batches_tracked"))
  if unused:
    raise ValueError(
      f"the state dict has tensors the FID Inception does not use: {', '.join(unused[:5])}"
      + (f" and {len(unused) - 5} more" if len(unused) > 5 else "")
    )
  return variables


__all__ = ["NUM_CLASSES", "FIDInceptionV3", "variables_from_state_dict"]
