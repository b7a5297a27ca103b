"""Datasets shipped inside registry packages, registered as TF-free TFDS builders.

They are prepared (array_record, `tfds.features.Tensor` only, no TensorFlow)
into the TFDS data dir on first use, then read with `tfds.data_source` like any
other TFDS dataset. Nothing is downloaded.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

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
