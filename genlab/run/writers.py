"""What a run leaves in its workdir: metrics.jsonl, TensorBoard events, PNG grids.

Only process 0 writes. Each line of `metrics.jsonl` is one JSON object with
`step` and metrics named `<split>/<name>` (`train/loss`, `test/mse`, ...);
train values are means over the steps since the previous line, and each line
says over how many steps (`train/num_steps`) or examples (`test/num_examples`).
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping

import jax
import numpy as np
from PIL import Image


class MetricWriter:
  """Appends metrics to `<workdir>/metrics.jsonl` and TensorBoard event files."""

  def __init__(self, workdir: str | pathlib.Path):
    self.workdir = pathlib.Path(workdir)
    self.active = jax.process_index() == 0
    self._tb = None
    if self.active:
      from tensorboardX import SummaryWriter

      self._tb = SummaryWriter(str(self.workdir / "tensorboard"))
      self._jsonl = open(self.workdir / "metrics.jsonl", "a")  # noqa: SIM115 - closed in close().

  def write(self, step: int, metrics: Mapping[str, float | int]) -> None:
    if not self.active:
      return
    self._jsonl.write(json.dumps({"step": int(step), **metrics}) + "\n")
    self._jsonl.flush()
    for name, value in metrics.items():
      if isinstance(value, int | float) and not isinstance(value, bool):
        self._tb.add_scalar(name, value, step)

  def write_image(self, step: int, name: str, grid: np.ndarray) -> pathlib.Path | None:
    """Saves a uint8 (H, W, 3) grid as `images/<name>_step_<step>.png` and in TensorBoard."""
    if not self.active:
      return None
    path = self.workdir / "images" / f"{name}_step_{step:06d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)
    self._tb.add_image(name, grid, step, dataformats="HWC")
    return path

  def close(self) -> None:
    if self.active:
      self._jsonl.close()
      self._tb.close()
