"""Names for what genlab sets aside: it keeps things for inspection and never replaces them."""

from __future__ import annotations

import pathlib


def free_name(path: pathlib.Path) -> pathlib.Path:
  """`path`, or the first of `stem.1.suffix`, `stem.2.suffix`, ... (`name.1`, ... without a
  suffix) that does not exist: a second thing set aside under a name never replaces the
  first."""
  path = pathlib.Path(path)
  n, free = 0, path
  while free.exists() or free.is_symlink():
    n += 1
    name = f"{path.stem}.{n}{path.suffix}" if path.suffix else f"{path.name}.{n}"
    free = path.with_name(name)
  return free


__all__ = ["free_name"]
