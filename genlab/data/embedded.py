"""Datasets shipped inside registry packages, registered as TF-free TFDS builders.

Images here; the sequence sets (`genlab.data.sequences`) join `EMBEDDED_BUILDERS` too.

They are prepared (array_record, `tfds.features.Tensor` only, no TensorFlow)
into the TFDS data dir on first use, then read with `tfds.data_source` like any
other TFDS dataset. Nothing is downloaded.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from genlab.data.sequences import SEQUENCE_BUILDERS

DIGITS_TEST_EVERY = 6


def digits_split_of(index: int) -> str:
  """The fixed split of `digits`: every 6th example (index % 6 == 0) is test."""
  return "test" if index % DIGITS_TEST_EVERY == 0 else "train"


class Digits(tfds.core.GeneratorBasedBuilder):
  """The 1,797 real 8×8 handwritten digits that ship inside scikit-learn.

  Source: `sklearn.datasets.load_digits` (the UCI "Optical Recognition of
  Handwritten Digits" test set: 4×4-block counts of 32×32 bitmaps, values 0..16).
  Pixels are rescaled to uint8 as round(v · 255 / 16).

  Split (fixed, no randomness): example i of `load_digits()` is in `test` when
  i % 6 == 0 (300 examples) and in `train` otherwise (1,497 examples).
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "sklearn digits, test = index % 6 == 0."}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description=self.__doc__,
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
          "label": tfds.features.Tensor(shape=(), dtype=np.int64),
          "index": tfds.features.Tensor(shape=(), dtype=np.int64),
        }
      ),
      supervised_keys=("image", "label"),
      homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download: the data ships with scikit-learn.
    return {split: self._generate_examples(split) for split in ("train", "test")}

  def _generate_examples(self, split: str):
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    for i, (image, label) in enumerate(zip(images, digits.target, strict=True)):
      if digits_split_of(i) == split:
        yield i, {"image": image, "label": int(label), "index": i}


EMBEDDED_BUILDERS: dict[str, type[tfds.core.GeneratorBasedBuilder]] = {"digits": Digits}


PHOTO_TRAIN = ("camera", "astronaut", "coffee", "chelsea", "rocket", "coins", "grass", "gravel")
PHOTO_TEST = ("moon", "brick")


def _grey_photo(name: str) -> np.ndarray:
  """A photograph shipped inside scikit-image, as float64 grey levels in [0, 1]."""
  import skimage.data
  from skimage.color import rgb2gray

  image = getattr(skimage.data, name)()
  image = rgb2gray(image) if image.ndim == 3 else image / 255.0
  return np.asarray(image, np.float64)


def whiten(image: np.ndarray) -> np.ndarray:
  """Olshausen & Field (1996) whitening: multiply the spectrum by f·exp(−(f/f0)⁴),
  f0 = 0.4 cycles/pixel, flattening natural images' 1/f amplitude spectrum."""
  h, w = image.shape
  fy, fx = np.meshgrid(np.fft.fftfreq(h), np.fft.fftfreq(w), indexing="ij")
  f = np.sqrt(fx**2 + fy**2)
  spectrum = np.fft.fft2(image - image.mean()) * f * np.exp(-((f / 0.4) ** 4))
  return np.real(np.fft.ifft2(spectrum))


class PhotoPatches8(tfds.core.GeneratorBasedBuilder):
  """8×8 patches of whitened natural photographs, the classic sparse-coding input.

  Source: scikit-image's bundled photographs, grey, each whitened (`whiten`).
  Train: 2,500 patches from each of camera, astronaut, coffee, chelsea, rocket,
  coins, grass and gravel (20,000); test: 2,500 from each of moon and brick
  (5,000) — held-out photographs. Patch positions: uniform, from
  `numpy.random.default_rng(i)` for the i-th photograph. Each patch has its mean
  removed; values are clipped to ±3 standard deviations (over all patches of the
  split) and mapped to [0.1, 0.9] (Ng's sparse-autoencoder recipe), stored as
  float32 `image` (8, 8, 1).
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "skimage photographs, whitened, 8x8, Ng normalisation."}
  SIZE, PER_IMAGE = 8, 2500

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description=self.__doc__,
      features=tfds.features.FeaturesDict(
        {"image": tfds.features.Tensor(shape=(self.SIZE, self.SIZE, 1), dtype=np.float32)}
      ),
      homepage="https://scikit-image.org/docs/stable/api/skimage.data.html",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # The photographs ship with scikit-image.
    return {
      "train": self._generate_examples(PHOTO_TRAIN),
      "test": self._generate_examples(PHOTO_TEST),
    }

  def _generate_examples(self, names):
    patches = []
    for name in names:
      image = whiten(_grey_photo(name))
      rng = np.random.default_rng((PHOTO_TRAIN + PHOTO_TEST).index(name))
      ys = rng.integers(0, image.shape[0] - self.SIZE + 1, self.PER_IMAGE)
      xs = rng.integers(0, image.shape[1] - self.SIZE + 1, self.PER_IMAGE)
      patches += [image[y : y + self.SIZE, x : x + self.SIZE] for y, x in zip(ys, xs, strict=True)]
    patches = np.stack(patches)
    patches -= patches.mean(axis=(1, 2), keepdims=True)
    limit = 3.0 * patches.std()
    patches = (np.clip(patches, -limit, limit) / limit + 1.0) * 0.4 + 0.1
    for i, patch in enumerate(patches.astype(np.float32)):
      yield i, {"image": patch[..., None]}


EMBEDDED_BUILDERS["photo_patches8"] = PhotoPatches8


def spectral_residual_saliency(image: np.ndarray, *, blur_sigma: float = 2.0) -> np.ndarray:
  """Hou & Zhang (2007) spectral-residual saliency of a grey image, scaled to [0, 1].

  The log-amplitude spectrum minus its 3×3 local mean (the "residual": what is
  unexpected against natural images' smooth 1/f spectrum) is transformed back
  with the original phase; the squared magnitude, blurred, is the saliency map.
  """
  from scipy.ndimage import gaussian_filter, uniform_filter

  spectrum = np.fft.fft2(image)
  log_amplitude = np.log(np.abs(spectrum) + 1e-8)
  residual = log_amplitude - uniform_filter(log_amplitude, size=3, mode="wrap")
  saliency = np.abs(np.fft.ifft2(np.exp(residual + 1j * np.angle(spectrum)))) ** 2
  saliency = gaussian_filter(saliency, blur_sigma)
  return (saliency - saliency.min()) / (saliency.max() - saliency.min() + 1e-12)


class PhotoCrops32(tfds.core.GeneratorBasedBuilder):
  """32×32 grey crops of natural photographs, with a bottom-up saliency map of each.

  Source: scikit-image's bundled photographs (train: camera, astronaut, coffee,
  chelsea, rocket, coins, grass, gravel; test: moon, brick), grey, 600 crops
  each at positions from `numpy.random.default_rng(i)` for the i-th photograph.
  Features: `image` (32, 32, 1) uint8, and `saliency` (32, 32, 1) uint8, the
  crop's spectral-residual saliency (Hou & Zhang 2007, `spectral_residual_saliency`)
  scaled to 0..255 — a classic model's estimate of where the eye is drawn,
  computed from the real image, used as the target of image → map training.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "skimage photographs, 32x32 grey crops, spectral-residual saliency."}
  SIZE, PER_IMAGE = 32, 600

  def _info(self) -> tfds.core.DatasetInfo:
    shape = (self.SIZE, self.SIZE, 1)
    return tfds.core.DatasetInfo(
      builder=self,
      description=self.__doc__,
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Tensor(shape=shape, dtype=np.uint8),
          "saliency": tfds.features.Tensor(shape=shape, dtype=np.uint8),
        }
      ),
      homepage="https://scikit-image.org/docs/stable/api/skimage.data.html",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # The photographs ship with scikit-image.
    return {
      "train": self._generate_examples(PHOTO_TRAIN),
      "test": self._generate_examples(PHOTO_TEST),
    }

  def _generate_examples(self, names):
    for name in names:
      image = _grey_photo(name)
      rng = np.random.default_rng((PHOTO_TRAIN + PHOTO_TEST).index(name))
      ys = rng.integers(0, image.shape[0] - self.SIZE + 1, self.PER_IMAGE)
      xs = rng.integers(0, image.shape[1] - self.SIZE + 1, self.PER_IMAGE)
      for i, (y, x) in enumerate(zip(ys, xs, strict=True)):
        crop = image[y : y + self.SIZE, x : x + self.SIZE]
        saliency = spectral_residual_saliency(crop)
        yield (
          f"{name}-{i}",
          {
            "image": np.round(crop * 255).astype(np.uint8)[..., None],
            "saliency": np.round(saliency * 255).astype(np.uint8)[..., None],
          },
        )


EMBEDDED_BUILDERS["photo_crops32"] = PhotoCrops32

# The sequence sets (series, text) are embedded the same way.
EMBEDDED_BUILDERS.update(SEQUENCE_BUILDERS)
