"""Per-example augmentations of training images: pure functions of (example, generator).

The streamed pipeline (`genlab.data.pipeline.Batcher`) applies them on the host, after
an example's values are converted, and before batches reach the devices. Each takes one
example (`image` (H, W, C), and `target` when the task has one) and a NumPy generator,
and returns the example with the same shapes. A geometric augmentation moves the image
and its target map together, so an image → map task stays aligned.

The generator of an example is keyed by `(the run's data key, position)`, its position in the run's
stream of training examples (step · global batch + its row in the global batch):
`example_generator`. So an example's augmentation depends on neither the number of
processes, devices or data workers nor on where a run was resumed, and a run with
augmentation resumes bit for bit like one without.

    config.data.augment = "flip,crop"   # in an experiment, or --config.data.augment=flip
    config.data.crop_padding = 4
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from genlab.errors import ConfigError

Example = dict[str, np.ndarray]
Augmentation = Callable[[Example, np.random.Generator], Example]
AUGMENT_STREAM = 0xA06  # Mixed into every example's seed: augmentation's own stream.
GEOMETRIC_KEYS = ("image", "target")


def example_generator(key_words: np.ndarray, position: int) -> np.random.Generator:
  """The generator of the example at `position` of the training stream of the run whose
  data key has the uint32 words `key_words` (`genlab.data.pipeline.key_words`)."""
  entropy = [int(w) for w in np.asarray(key_words, np.uint32).ravel()]
  return np.random.Generator(
    np.random.Philox(np.random.SeedSequence([*entropy, AUGMENT_STREAM, position]))
  )


def flip(example: Example, rng: np.random.Generator) -> Example:
  """Mirrors the image (and its target) left to right with probability ½."""
  if rng.random() < 0.5:
    return {k: v[:, ::-1] if k in GEOMETRIC_KEYS else v for k, v in example.items()}
  return example


def crop(padding: int) -> Augmentation:
  """A random crop of the image's own size from the image reflected by `padding` pixels on
  every side (the same window of the target)."""

  def random_crop(example: Example, rng: np.random.Generator) -> Example:
    dy, dx = rng.integers(0, 2 * padding + 1, size=2)
    out = dict(example)
    for key in GEOMETRIC_KEYS:
      if key in example:
        x = example[key]
        height, width = x.shape[:2]
        padded = np.pad(x, ((padding, padding), (padding, padding), (0, 0)), mode="reflect")
        out[key] = padded[dy : dy + height, dx : dx + width]
    return out

  return random_crop


AUGMENTATIONS = ("flip", "crop")


def parse(spec: str, *, crop_padding: int, image_shape, target_shape=None) -> list[Augmentation]:
  """The augmentations `spec` names ("flip,crop", "" for none), in order, checked against
  the data: images (H, W, C) only, and a crop needs the target map at the image's size."""
  names = [name.strip() for name in spec.split(",") if name.strip()]
  unknown = [name for name in names if name not in AUGMENTATIONS]
  if unknown:
    raise ConfigError(
      f"config.data.augment={spec!r}: unknown {unknown}; choose from {list(AUGMENTATIONS)}"
    )
  if names and len(image_shape) != 3:
    raise ConfigError(
      f"config.data.augment={spec!r} needs images (H, W, C); this dataset's examples are "
      f"{tuple(image_shape)}"
    )
  result = []
  for name in names:
    if name == "flip":
      result.append(flip)
    else:
      if not isinstance(crop_padding, int) or crop_padding < 1:
        raise ConfigError(
          f"config.data.crop_padding must be a positive integer, got {crop_padding!r}"
        )
      if crop_padding >= min(image_shape[:2]):
        raise ConfigError(
          f"config.data.crop_padding={crop_padding} must be smaller than the image's "
          f"{tuple(image_shape[:2])} (the crop reflects the image at its borders)"
        )
      if target_shape is not None and tuple(target_shape[:2]) != tuple(image_shape[:2]):
        raise ConfigError(
          f"config.data.augment={spec!r}: a crop needs the target map at the image's size, "
          f"{tuple(target_shape[:2])} against {tuple(image_shape[:2])}"
        )
      result.append(crop(crop_padding))
  return result


def augment_batch(
  augmentations: list[Augmentation], batch: dict, *, key_words: np.ndarray, first_position: int
) -> dict:
  """`batch` with each example augmented, example j by the generator of position
  `first_position + j`; keys other than `image` and `target` pass through."""
  if not augmentations:
    return batch
  out = {key: np.array(value) for key, value in batch.items()}
  for j in range(len(batch["image"])):
    rng = example_generator(key_words, first_position + j)
    example = {key: value[j] for key, value in batch.items() if key in GEOMETRIC_KEYS}
    for augmentation in augmentations:
      example = augmentation(example, rng)
    for key, value in example.items():
      out[key][j] = value
  return out


__all__ = ["AUGMENTATIONS", "augment_batch", "crop", "example_generator", "flip", "parse"]
