"""Sequence datasets shipped inside registry packages, as TF-free TFDS builders.

Like the image sets of `genlab.data.embedded`, they are prepared (array_record,
`tfds.features.Tensor` only) into the TFDS data dir on first use and read with
`tfds.data_source`; nothing is downloaded. Every example has

* `sequence`: (T, D) float32 for real-valued series, (T,) int64 token ids for text,
  padded after its end with zeros (token 0 is the padding symbol);
* `length`: the number of valid steps (1..T); the padding is masked everywhere;
* `label`: an integer class (a speaker, an anomaly flag), where the data has one.

`MODALITY` on each builder says which kind it is ('series' or 'tokens'); the
loader skips image-only checks and scaling for them.
"""

from __future__ import annotations

import textwrap

import numpy as np
import tensorflow_datasets as tfds


class JapaneseVowels(tfds.core.GeneratorBasedBuilder):
  """Japanese vowels: 12 LPC cepstral coefficients per 10 ms frame, 7–29 frames per utterance.

  Source: the UCR/UEA archive's JapaneseVowels (Kudo, Toyama & Shimbo 1999), as
  bundled with the `aeon` package (`aeon.datasets.load_classification`). Nine male
  speakers uttering /ae/; 270 train and 370 test utterances (the archive's split).
  Audio features of variable length: `sequence` (29, 12) float32, the frames of
  the utterance followed by zero padding, `length` 7..29, `label` the speaker 0..8.
  Values are the archive's, unscaled (about −2..2).
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "aeon's JapaneseVowels, padded to 29 frames."}
  MODALITY = "series"
  MAX_LENGTH, CHANNELS = 29, 12

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description=self.__doc__,
      features=tfds.features.FeaturesDict(
        {
          "sequence": tfds.features.Tensor(
            shape=(self.MAX_LENGTH, self.CHANNELS), dtype=np.float32
          ),
          "length": tfds.features.Tensor(shape=(), dtype=np.int64),
          "label": tfds.features.Tensor(shape=(), dtype=np.int64),
        }
      ),
      homepage="https://timeseriesclassification.com/description.php?Dataset=JapaneseVowels",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # The archive ships with aeon.
    return {split: self._generate_examples(split) for split in ("train", "test")}

  def _generate_examples(self, split: str):
    from aeon.datasets import load_classification

    series, labels = load_classification("JapaneseVowels", split=split)
    for i, (x, label) in enumerate(zip(series, labels, strict=True)):
      frames = np.asarray(x, np.float32).T  # aeon: (channels, length).
      padded = np.zeros((self.MAX_LENGTH, self.CHANNELS), np.float32)
      padded[: len(frames)] = frames
      yield i, {"sequence": padded, "length": len(frames), "label": int(label) - 1}


class InternalBleeding(tfds.core.GeneratorBasedBuilder):
  """Windows of an arterial blood-pressure series with one labelled anomaly.

  Source: UCR Time Series Anomaly Archive (Wu & Keogh 2021), series 135
  "InternalBleeding16", as bundled with `aeon` (`load_kdd_tsad_135`): 7,501
  samples, the first 1,200 anomaly-free (the archive's training part), one
  anomaly at samples 4,187–4,198. Values are standardised with the mean and
  standard deviation of the first 1,200 samples.

  Train: every window of 64 samples at stride 2 within samples 0..1,199 (569
  windows, all normal). Test: windows of 64 at stride 4 over samples
  1,200..7,500 (1,560 windows); `label` 1 where the window overlaps the anomaly
  (19 windows), else 0 — the reconstruction error of a window is its anomaly score.
  `sequence` (64, 1) float32, `length` always 64, `start` the window's first sample.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "UCR anomaly 135, windows of 64."}
  MODALITY = "series"
  WINDOW, TRAIN_END, TRAIN_STRIDE, TEST_STRIDE = 64, 1200, 2, 4

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description=self.__doc__,
      features=tfds.features.FeaturesDict(
        {
          "sequence": tfds.features.Tensor(shape=(self.WINDOW, 1), dtype=np.float32),
          "length": tfds.features.Tensor(shape=(), dtype=np.int64),
          "label": tfds.features.Tensor(shape=(), dtype=np.int64),
          "start": tfds.features.Tensor(shape=(), dtype=np.int64),
        }
      ),
      homepage="https://www.cs.ucr.edu/~eamonn/time_series_data_2018/",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # The series ships with aeon.
    return {split: self._generate_examples(split) for split in ("train", "test")}

  def _generate_examples(self, split: str):
    import warnings

    from aeon.datasets import load_kdd_tsad_135

    with warnings.catch_warnings():
      warnings.simplefilter("ignore")  # aeon deprecates the loader in favour of a download.
      series, anomaly = load_kdd_tsad_135()
    series, anomaly = np.asarray(series, np.float64), np.asarray(anomaly, bool)
    normal = series[: self.TRAIN_END]
    series = (series - normal.mean()) / normal.std()
    if split == "train":
      starts = range(0, self.TRAIN_END - self.WINDOW + 1, self.TRAIN_STRIDE)
    else:
      starts = range(self.TRAIN_END, len(series) - self.WINDOW + 1, self.TEST_STRIDE)
    for start in starts:
      window = slice(start, start + self.WINDOW)
      yield (
        start,
        {
          "sequence": series[window, None].astype(np.float32),
          "length": self.WINDOW,
          "label": int(anomaly[window].any()),
          "start": start,
        },
      )


PYDOC_MAX_LENGTH = 32
# Token ids: 0 pads; printable ASCII ' '..'~' are 1..95.
PYDOC_VOCAB_SIZE = 96


def encode_text(text: str) -> np.ndarray:
  """Token ids of printable-ASCII `text` (1..95); other characters are refused."""
  ids = np.frombuffer(text.encode("ascii"), np.uint8).astype(np.int64) - 31
  if ids.size and (ids.min() < 1 or ids.max() >= PYDOC_VOCAB_SIZE):
    raise ValueError(f"not printable ASCII: {text!r}")
  return ids


def decode_text(ids) -> str:
  """Text of token ids, stopping at the first padding token."""
  chars = []
  for i in np.asarray(ids).tolist():
    if i <= 0:
      break
    chars.append(chr(min(int(i), PYDOC_VOCAB_SIZE - 1) + 31))
  return "".join(chars)


def pydoc_chunks(text: str, width: int = PYDOC_MAX_LENGTH) -> list[str]:
  """Word-wrapped chunks of `text` (≤ `width` characters, ≥ 8), non-ASCII characters
  and rule lines (`*****`, `-----`) dropped."""
  text = text.encode("ascii", "ignore").decode()
  chunks = []
  for paragraph in text.split("\n\n"):
    for chunk in textwrap.wrap(" ".join(paragraph.split()), width=width):
      if len(chunk) >= 8 and len(set(chunk) - set("*-=^~ ")) > 2:
        chunks.append(chunk)
  return chunks


class PydocText(tfds.core.GeneratorBasedBuilder):
  """Character sequences of the Python reference manual that ships inside CPython.

  Source: the standard library's `pydoc_data.topics` (the language reference's
  topics behind `help()`: 79 topics in CPython 3.11; a different CPython may ship
  slightly different text). Each topic's paragraphs are word-wrapped into chunks of
  8–32 characters (`pydoc_chunks`), printable ASCII only. Split by topic: the
  topics at positions i % 5 == 0 of the sorted topic names are `test`.
  `sequence` (32,) int64 character ids (`encode_text`: ' '..'~' → 1..95, 0 pads),
  `length` the chunk's characters, `label` the topic's position.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "pydoc_data.topics, 32-character chunks, split by topic."}
  MODALITY = "tokens"

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description=self.__doc__,
      features=tfds.features.FeaturesDict(
        {
          "sequence": tfds.features.Tensor(shape=(PYDOC_MAX_LENGTH,), dtype=np.int64),
          "length": tfds.features.Tensor(shape=(), dtype=np.int64),
          "label": tfds.features.Tensor(shape=(), dtype=np.int64),
        }
      ),
      homepage="https://docs.python.org/3/reference/",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # The text ships with Python.
    return {split: self._generate_examples(split) for split in ("train", "test")}

  def _generate_examples(self, split: str):
    from pydoc_data.topics import topics

    for t, name in enumerate(sorted(topics)):
      if (t % 5 == 0) != (split == "test"):
        continue
      for i, chunk in enumerate(pydoc_chunks(topics[name])):
        ids = np.zeros(PYDOC_MAX_LENGTH, np.int64)
        ids[: len(chunk)] = encode_text(chunk)
        yield f"{name}-{i}", {"sequence": ids, "length": len(chunk), "label": t}


SEQUENCE_BUILDERS: dict[str, type[tfds.core.GeneratorBasedBuilder]] = {
  "japanese_vowels": JapaneseVowels,
  "internal_bleeding": InternalBleeding,
  "pydoc_text": PydocText,
}
