"""What genlab prints while it runs: `log` on stdout, `warn` on stderr, from process 0 only
(every process of a multi-process run would print the same), without breaking a progress bar."""

from __future__ import annotations

import sys

import jax
import tqdm


def log(message: str) -> None:
  """Prints on process 0 only, without breaking a progress bar."""
  if jax.process_index() == 0:
    tqdm.tqdm.write(message, file=sys.stdout)


def warn(message: str) -> None:
  """A warning on stderr, from process 0 only."""
  if jax.process_index() == 0:
    tqdm.tqdm.write(f"genlab: warning: {message}", file=sys.stderr)
