"""Drawing helpers for the views families write beside their metrics (PNG grids, plots).

Pure NumPy / matplotlib on the host: a family's `Views` turns its model's outputs
into uint8 RGB images with these, and the run layer writes them
(`genlab.run.writers.MetricWriter.write_image`).
"""

from __future__ import annotations

import functools
import pathlib
from collections.abc import Sequence

import numpy as np
from PIL import Image

from genlab.core.sharding import to_host


def _to_rgb_uint8(images: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
  lo, hi = value_range
  x = np.clip((np.asarray(images, np.float32) - lo) / (hi - lo), 0.0, 1.0)
  if x.shape[-1] == 1:
    x = np.repeat(x, 3, axis=-1)
  elif x.shape[-1] != 3:
    x = np.repeat(x.mean(-1, keepdims=True), 3, axis=-1)  # Show other depths as intensity.
  return np.round(x * 255).astype(np.uint8)


def image_grid(
  rows: Sequence[np.ndarray],
  *,
  labels: Sequence[str] | None = None,
  value_range: tuple[float, float] = (0.0, 1.0),
  min_size: int = 64,
  pad: int = 2,
) -> np.ndarray:
  """Lays out one row per kind (e.g. inputs above outputs), examples left to right.

  Args:
    rows: arrays (N, H, W, C) with the same N; sizes and channels may differ
      (one channel is shown as grey, three as RGB).
    labels: one name per row, written in a margin on the left (e.g. "input", "output").
    value_range: the range the values are in (mapped to black..white).
    min_size: small images are enlarged (nearest neighbour) to at least this side.
    pad: white pixels between cells.

  Returns:
    A uint8 (len(rows)·cell, margin + N·cell, 3) image.
  """
  if labels is not None and len(labels) != len(rows):
    raise ValueError(f"{len(labels)} labels for {len(rows)} rows")
  height = max(r.shape[1] for r in rows)
  scale = max(1, -(-min_size // height))
  cells = [_to_rgb_uint8(r, value_range).repeat(scale, axis=1).repeat(scale, axis=2) for r in rows]
  cell_h = max(c.shape[1] for c in cells)
  cell_w = max(c.shape[2] for c in cells)
  n = len(rows[0])
  margin = _label_width(labels) if labels else 0
  grid = np.full(
    (len(cells) * (cell_h + pad) + pad, margin + n * (cell_w + pad) + pad, 3), 255, np.uint8
  )
  for i, row in enumerate(cells):
    for j in range(n):
      y, x = pad + i * (cell_h + pad), margin + pad + j * (cell_w + pad)
      grid[y : y + row.shape[1], x : x + row.shape[2]] = row[j]
  if labels:
    grid = _write_labels(grid, labels, row_height=cell_h + pad, pad=pad)
  return grid


def class_rows(draw, z: np.ndarray, num_classes: int, value_range) -> np.ndarray:
  """A class-conditional model's samples as a grid: one row per class (at most 10), the
  same latents `z` (one per column) in every row; `draw(z, labels)` gives the images."""
  classes = min(10, num_classes)
  z = np.asarray(z)
  labels = np.repeat(np.arange(classes, dtype=np.int32), len(z))
  images = to_host(draw(np.tile(z, (classes, 1)), labels))
  return image_grid(
    list(images.reshape(classes, len(z), *images.shape[1:])),
    labels=[f"y = {c}" for c in range(classes)],
    value_range=value_range,
  )


LABEL_FONT_SIZE = 11


@functools.cache
def _font():
  """DejaVu Sans, which matplotlib ships: it has the arrows and Greek letters labels use,
  where PIL's default font draws "▯" for "→"."""
  import matplotlib
  from PIL import ImageFont

  path = pathlib.Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
  return ImageFont.truetype(str(path), LABEL_FONT_SIZE)


def _label_width(labels: Sequence[str]) -> int:
  from PIL import ImageDraw

  draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
  return 8 + max(int(draw.textlength(label, font=_font())) for label in labels)


def _write_labels(grid: np.ndarray, labels: Sequence[str], *, row_height: int, pad: int):
  from PIL import ImageDraw

  image = Image.fromarray(grid)
  draw = ImageDraw.Draw(image)
  for i, label in enumerate(labels):
    y = pad + i * row_height + row_height // 2 - 6
    draw.text((4, y), label, fill=(0, 0, 0), font=_font())
  return np.asarray(image)


def categorical_colours(n: int) -> list:
  """`n` distinct colours for classes (matplotlib's tab10, or tab20 beyond 10 classes)."""
  import matplotlib

  cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
  return [cmap(i % cmap.N) for i in range(n)]


def subplots(*args, **kwargs):
  """`matplotlib.pyplot.subplots` on the file-only Agg backend (no display needed):
  the family views draw with it and hand the figure to `figure_pixels`."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt.subplots(*args, **kwargs)


def figure_pixels(fig, dpi: int = 100) -> np.ndarray:
  """A matplotlib figure as an (H, W, 3) uint8 array, for `write_image`; the figure is closed."""
  import io

  import matplotlib.pyplot as plt

  buffer = io.BytesIO()
  fig.tight_layout()
  fig.savefig(buffer, format="png", dpi=dpi)
  plt.close(fig)
  buffer.seek(0)
  return np.asarray(Image.open(buffer).convert("RGB"))
