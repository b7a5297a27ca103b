"""FID, KID and the Inception score by their standard conventions, for any family's samples.

`inception`: the FID Inception-v3 (`genlab.models.inception`, the TF graph of 2015-12-05 as
pytorch-fid ports it), read from pytorch-fid's published weights file
`pt_inception-2015-12-05-6726825d.pth` (or a file of the user's; its SHA-256 goes in the
protocol either way), run under `jax.jit` in batches, on images prepared as the reference
implementations prepare them:

1. 8-bit: samples mapped from the data's value range onto [0, 255] and rounded to the
   nearest level (what a saved PNG holds); real images as the dataset stores them (8-bit).
   Grey images are repeated to three channels.
2. Resized to 299 × 299 (`RESIZE_MODES`): `clean` (default) as clean-fid's 'clean' mode,
   PIL's bicubic filter on each channel as a float32 image, clipped to [0, 255]; or
   `legacy_pytorch`, bilinear with align_corners=False (pytorch-fid's in-network resize).
3. Scaled to [-1, 1] as pytorch-fid does, 2 · (x / 255) − 1.

From the 2,048-d pool3 features: `fid`, the Fréchet distance of gaussians fitted to the
features of `inception_n_real` real images (the first of `inception_real_split`) and of
`inception_n_fake` samples, with `scipy.linalg.sqrtm` in float64 as pytorch-fid computes it;
`kid`, the unbiased polynomial-kernel MMD² averaged over `kid_subsets` subsets of
`kid_subset_size` (`genlab.metrics.kernel_inception_distance`). From the 1,008-way logits:
`is`, the Inception score over `is_splits` splits. Published figures use 50,000 samples (the
default); fewer are allowed, and the protocol says so (the FID is biased upwards at small
counts: compare only numbers of equal counts).

The real images' features are computed once and cached (`InceptionNet.cached`), keyed by the
dataset, split, count, the images' bytes, the resize mode and the weights' SHA-256.
"""

from __future__ import annotations

import hashlib
import pathlib
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from genlab import metrics
from genlab.core import stream_key
from genlab.errors import ConfigError
from genlab.evaluators.base import Evaluator
from genlab.models.inception import FIDInceptionV3

INCEPTION_SIZE = 299
RESIZE_MODES = {
  "clean": "clean-fid's 'clean' mode: PIL bicubic on each channel as a float32 image, to "
  "299×299, clipped to [0, 255]",
  "legacy_pytorch": "bilinear, align_corners=False, to 299×299 (pytorch-fid's in-network resize)",
}
PUBLISHED_WEIGHTS = "pt_inception-2015-12-05-6726825d.pth"
PUBLISHED_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
PUBLISHED_SAMPLES = 50_000  # The sample count of published FIDs.
BATCH = 50  # Images per call of the compiled network.


def to_uint8(images: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
  """Images in `value_range` as 8-bit pixels: mapped onto [0, 255], rounded to the nearest
  level, clipped."""
  lo, hi = value_range
  scaled = (np.asarray(images, np.float64) - lo) * (255.0 / (hi - lo))
  return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def stored_uint8(images: np.ndarray) -> np.ndarray:
  """A dataset's images as 8-bit pixels: integers as they are (0..255), floats (0..1) scaled
  and rounded."""
  images = np.asarray(images)
  if np.issubdtype(images.dtype, np.integer):
    return images.astype(np.uint8)
  return to_uint8(images, (0.0, 1.0))


def _bilinear_weights(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) interpolation matrix of torch's bilinear, align_corners=False."""
  scale = n_in / n_out
  src = np.maximum((np.arange(n_out) + 0.5) * scale - 0.5, 0.0)
  lo = np.minimum(np.floor(src).astype(int), n_in - 1)
  hi = np.minimum(lo + 1, n_in - 1)
  frac = src - lo
  w = np.zeros((n_out, n_in))
  np.add.at(w, (np.arange(n_out), lo), 1.0 - frac)
  np.add.at(w, (np.arange(n_out), hi), frac)
  return w


def resize(images: np.ndarray, mode: str = "clean") -> np.ndarray:
  """8-bit images (N, H, W, C) resized to (N, 299, 299, 3) float32 in [0, 255] (`RESIZE_MODES`;
  one channel is repeated to three)."""
  images = np.asarray(images)
  if images.shape[-1] == 1:
    images = np.repeat(images, 3, axis=-1)
  if mode == "clean":
    out = np.empty((len(images), INCEPTION_SIZE, INCEPTION_SIZE, 3), np.float32)
    for i, image in enumerate(images):
      for c in range(3):
        channel = Image.fromarray(image[:, :, c].astype(np.float32))  # Mode 'F'.
        resized = channel.resize((INCEPTION_SIZE, INCEPTION_SIZE), resample=Image.BICUBIC)
        out[i, :, :, c] = np.asarray(resized).clip(0, 255)
    return out
  if mode == "legacy_pytorch":
    rows = _bilinear_weights(images.shape[1], INCEPTION_SIZE)
    cols = _bilinear_weights(images.shape[2], INCEPTION_SIZE)
    out = np.einsum("ph,nhwc->npwc", rows, images.astype(np.float64))  # Rows, then columns:
    out = np.einsum("npwc,qw->npqc", out, cols)  # two products, not one 6-deep loop.
    return out.clip(0, 255).astype(np.float32)
  raise ValueError(f"resize mode {mode!r}; genlab has {sorted(RESIZE_MODES)}")


# One compiled program for every InceptionNet of the process (a run's and its evaluation's).
_apply_inception = jax.jit(FIDInceptionV3().apply)


class InceptionNet:
  """The FID Inception with its variables, compiled: `(pool3, logits)` of 8-bit images.

  Args:
    variables: `genlab.models.inception.variables_from_state_dict` of the weights file.
    weights: the file's path.
    sha256: the file's SHA-256.
    cache_dir: where real images' features are cached (None: not cached).
  """

  def __init__(self, variables, *, weights: str, sha256: str, cache_dir=None):
    self.variables = jax.tree.map(jnp.asarray, variables)
    self.weights, self.sha256 = str(weights), sha256
    self.cache_dir = None if cache_dir is None else pathlib.Path(cache_dir)
    self._apply = _apply_inception

  def __call__(self, images: np.ndarray, *, resize_mode: str = "clean"):
    """pool3 features (N, 2048) and logits (N, 1008), float32, of 8-bit images (N, H, W, C),
    in batches of `BATCH` (the last one padded, so that one program serves every batch)."""
    n = len(images)
    batch = min(BATCH, n)
    pools, logits = [], []
    for start in range(0, n, batch):
      chunk = resize(images[start : start + batch], resize_mode)
      real = len(chunk)
      if real < batch:
        chunk = np.concatenate([chunk, np.zeros((batch - real, *chunk.shape[1:]), chunk.dtype)])
      pool, logit = self._apply(self.variables, jnp.asarray(chunk / 127.5 - 1.0, jnp.float32))
      pools.append(np.asarray(pool)[:real])
      logits.append(np.asarray(logit)[:real])
    return np.concatenate(pools), np.concatenate(logits)

  def cached(self, name: str, compute) -> np.ndarray:
    """`compute()` saved as `<cache_dir>/<name>.npy` the first time, read back after."""
    if self.cache_dir is None:
      return compute()
    path = self.cache_dir / f"{name}.npy"
    if path.is_file():
      return np.load(path)
    value = compute()
    self.cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=self.cache_dir, suffix=".npy", delete=False) as f:
      np.save(f, value)
    pathlib.Path(f.name).replace(path)
    return value


class InceptionEvaluator(Evaluator):
  """FID, KID and IS with the FID Inception-v3 (see the module docstring)."""

  name = "inception"
  definitions = {
    "fid": "Fréchet Inception distance between gaussians fitted to the pool3 features of "
    "inception_n_real real images and of inception_n_fake samples (see the protocol's words "
    "for the weights, resize and counts; lower is better)",
    "kid": "kernel Inception distance: unbiased MMD² with the kernel (xᵀy/2048 + 1)³ between "
    "pool3 features of the real images and of the samples, the mean over kid_subsets random "
    "subsets of kid_subset_size each (lower is better; 0 for matching distributions)",
    "kid_std": "standard deviation of kid over its subsets",
    "is": "Inception score exp(E_x KL(p(y|x) ‖ p(y))) of the samples, p(y|x) the softmax of "
    "the 1,008-way logits, the mean over is_splits consecutive splits of the samples",
    "is_std": "standard deviation of is over its splits",
  }

  def __init__(self, options, **kwargs):
    super().__init__(options, **kwargs)
    self.check_options()
    self.final_only = bool(options.inception_final_only)

  @property
  def real_images(self) -> np.ndarray:
    return getattr(self.dataset, self.options.inception_real_split)["image"]

  @property
  def n_real(self) -> int:
    return min(self.options.inception_n_real, len(self.real_images))

  @property
  def num_samples(self) -> int:
    return self.options.inception_n_fake

  def check_options(self) -> None:
    """Refuses, in one line when the family is built, what the metrics cannot take."""
    o = self.options
    name = "config.sample_metrics"
    if o.inception_resize not in RESIZE_MODES:
      raise ConfigError(
        f"{name}.inception_resize={o.inception_resize!r}; choose one of {sorted(RESIZE_MODES)}"
      )
    if o.inception_real_split not in ("train", "test"):
      raise ConfigError(f"{name}.inception_real_split={o.inception_real_split!r}; train or test")
    channels = self.dataset.train["image"].shape[-1]
    if self.dataset.modality != "image" or channels not in (1, 3):
      raise ConfigError(
        f"{name}.evaluators names inception, which reads images of 1 or 3 channels; "
        f"{self.dataset.name} has {self.dataset.modality} data of {channels} channels"
      )
    if o.inception_n_fake < 2 or o.inception_n_real < 2:
      raise ConfigError(
        f"{name}.inception_n_fake={o.inception_n_fake} and inception_n_real="
        f"{o.inception_n_real} must be at least 2: the FID fits a covariance to each set"
      )
    smallest = min(self.n_real, o.inception_n_fake)
    if not 2 <= o.kid_subset_size <= smallest:
      raise ConfigError(
        f"{name}.kid_subset_size={o.kid_subset_size} must be from 2 to {smallest}, the "
        f"smaller of the real images (min(inception_n_real, the {len(self.real_images)} of "
        f"the {o.inception_real_split} split)) and the samples (inception_n_fake): each KID "
        "subset is drawn from both without replacement"
      )
    if o.kid_subsets < 1:
      raise ConfigError(f"{name}.kid_subsets={o.kid_subsets} must be at least 1")
    if not 1 <= o.is_splits <= o.inception_n_fake:
      raise ConfigError(
        f"{name}.is_splits={o.is_splits} must be from 1 to inception_n_fake="
        f"{o.inception_n_fake}: each split needs a sample"
      )

  def needs(self):
    return {"inception": {"weights": self.options.inception_weights}}

  def provide(self, resources):
    super().provide(resources)
    if not self.final_only:  # Else at the final evaluation, which may never come.
      self.real_features()  # Once (and cached on disk).

  @property
  def net(self) -> InceptionNet:
    if "inception" not in self.resources:
      raise ConfigError(
        "the inception sample metrics need the FID Inception's weights: evaluate through "
        "genlab.run (`genlab eval`), which reads them, or pass them with provide()"
      )
    return self.resources["inception"]

  def real_features(self) -> np.ndarray:
    """pool3 features of the first `inception_n_real` images of the real split (cached)."""
    if not hasattr(self, "_real"):
      o = self.options
      images = stored_uint8(self.real_images[: self.n_real])
      digest = hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()[:12]
      dataset = "".join(c if c.isalnum() or c in "._-" else "_" for c in str(self.dataset.name))
      name = (
        f"{pathlib.Path(dataset).stem}-{o.inception_real_split}-{self.n_real}-{digest}-"
        f"{o.inception_resize}-{self.net.sha256[:16]}"
      )
      self._real = self.net.cached(
        name, lambda: self.net(images, resize_mode=o.inception_resize)[0]
      )
      self._real_stats = metrics.gaussian_statistics(self._real)
      self._cache_name = name
    return self._real

  def evaluate(self, samples, labels) -> dict[str, Any]:
    del labels
    o = self.options
    real = self.real_features()
    pool, logits = self.net(to_uint8(samples, self.value_range), resize_mode=o.inception_resize)
    seed = int(jax.random.randint(stream_key(self.root_key, "kid_subsets"), (), 0, 2**31 - 1))
    kid, kid_std = metrics.kernel_inception_distance(
      real,
      pool,
      subset_size=o.kid_subset_size,
      subsets=o.kid_subsets,
      rng=np.random.RandomState(seed),
    )
    inception_score, is_std = metrics.inception_score(logits, splits=o.is_splits)
    return {
      "fid": metrics.frechet_distance_sqrtm(*self._real_stats, *metrics.gaussian_statistics(pool)),
      "kid": kid,
      "kid_std": kid_std,
      "is": inception_score,
      "is_std": is_std,
    }

  def protocol(self) -> dict[str, Any]:
    o = self.options
    self.real_features()
    published = self.net.sha256 == PUBLISHED_SHA256
    out = {
      "inception_network": "FID Inception-v3 (the TF graph of 2015-12-05 as pytorch-fid's "
      "FIDInceptionA/C/E_1/E_2 blocks port it; genlab.models.inception under jax.jit): pool3 "
      "2048-d features for fid and kid, 1008-way logits for is",
      "inception_weights": self.net.weights,
      "inception_weights_sha256": self.net.sha256,
      "inception_weights_published": published
      or f"no: not {PUBLISHED_WEIGHTS} (SHA-256 {PUBLISHED_SHA256[:12]}…), so fid, kid and "
      "is do not compare with published figures",
      "inception_input": "8-bit images (samples mapped onto [0, 255] and rounded), grey "
      "repeated to 3 channels, resized, then 2·(x/255) − 1",
      "inception_resize": f"{o.inception_resize}: {RESIZE_MODES[o.inception_resize]}",
      "inception_n_fake": o.inception_n_fake,
      "inception_n_real": self.n_real,
      "inception_real_split": o.inception_real_split,
      "inception_real_images": f"the first {self.n_real} of the {o.inception_real_split} split "
      f"(features cached as {self._cache_name})",
      "fid_sqrtm": "scipy.linalg.sqrtm of Σ₁Σ₂ in float64 (pytorch-fid's "
      "calculate_frechet_distance)",
      "kid_subset_size": o.kid_subset_size,
      "kid_subsets": o.kid_subsets,
      "kid_kernel": "(xᵀy/d + 1)³, d = 2048: degree 3, γ = 1/d, coefficient 1; subsets drawn "
      "without replacement, samples then real, by numpy RandomState from the root key's "
      "stream 'kid_subsets' (clean-fid's kernel_distance)",
      "is_splits": o.is_splits,
    }
    if min(o.inception_n_fake, self.n_real) < PUBLISHED_SAMPLES:
      out["inception_sample_counts"] = (
        f"fewer than the {PUBLISHED_SAMPLES} samples and real images of published FIDs: the "
        "FID is biased upwards at small counts; compare only figures of equal counts"
      )
    return out


__all__ = [
  "PUBLISHED_SHA256",
  "PUBLISHED_WEIGHTS",
  "RESIZE_MODES",
  "InceptionEvaluator",
  "InceptionNet",
  "resize",
  "stored_uint8",
  "to_uint8",
]
