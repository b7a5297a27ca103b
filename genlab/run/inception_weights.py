"""The FID Inception's weights: pytorch-fid's published file, fetched once and checked.

`inception_network(weights)` builds the `inception` resource of the sample evaluators
(`genlab.evaluators.inception`): from a file the user names, or, by default, from
`pt_inception-2015-12-05-6726825d.pth` as pytorch-fid publishes it, fetched once into
`$GENLAB_CACHE_DIR/inception/` (`fetch_weights`) and checked against its SHA-256
(`PUBLISHED_SHA256`, whose first 8 digits the file's name carries, as torch.hub names its
files). The file is read without PyTorch (`genlab.models.torch_weights`), and its SHA-256
goes into the protocol of every number computed with it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pathlib
import tempfile
import urllib.request
from collections.abc import Callable

from genlab.console import log
from genlab.errors import ConfigError, GenlabError
from genlab.evaluators.inception import PUBLISHED_SHA256, PUBLISHED_WEIGHTS, InceptionNet
from genlab.models.inception import variables_from_state_dict
from genlab.models.torch_weights import UnsafePickle, read_state_dict
from genlab.run.feature_net import cache_dir

PUBLISHED_URL = (
  "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + PUBLISHED_WEIGHTS
)


def sha256_of(path: str | pathlib.Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def fetch_weights(
  url: str = PUBLISHED_URL,
  *,
  sha256: str = PUBLISHED_SHA256,
  directory: str | pathlib.Path | None = None,
  opener: Callable = urllib.request.urlopen,
) -> pathlib.Path:
  """The file at `url`, from `directory` (default `$GENLAB_CACHE_DIR/inception`) if it is
  there, else fetched there once (to a temporary file, renamed into place only when its
  SHA-256 is `sha256`).

  Raises:
    GenlabError: the fetch failed, or the file fetched is not the one expected (it is then
      deleted).
  """
  directory = pathlib.Path(directory or cache_dir() / "inception")
  path = directory / url.rsplit("/", 1)[-1]
  if path.is_file():
    return path
  directory.mkdir(parents=True, exist_ok=True)
  log(f"genlab: fetching the FID Inception's weights once: {url} -> {path}")
  digest = hashlib.sha256()
  fd, temporary = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.")
  try:
    with os.fdopen(fd, "wb") as out, contextlib.closing(opener(url)) as response:
      for block in iter(lambda: response.read(1 << 20), b""):
        digest.update(block)
        out.write(block)
    if digest.hexdigest() != sha256:
      raise GenlabError(
        f"{url} gave a file of SHA-256 {digest.hexdigest()}, not the expected {sha256}: it was "
        "not kept; fetch it yourself and pass its path in config.sample_metrics.inception_weights"
      )
    os.replace(temporary, path)
  except OSError as e:
    raise GenlabError(
      f"could not fetch {url} ({e}); download it yourself and pass its path in "
      "config.sample_metrics.inception_weights"
    ) from e
  finally:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(temporary)
  return path


def inception_network(weights: str = "") -> InceptionNet:
  """The FID Inception of the weights file `weights` ("" : the published one, fetched once),
  caching real images' features beside the cache's other entries."""
  path = pathlib.Path(weights).expanduser() if weights else fetch_weights()
  if not path.is_file():
    raise ConfigError(f"config.sample_metrics.inception_weights={weights!r}: no such file")
  try:
    variables = variables_from_state_dict(read_state_dict(path))
  except (UnsafePickle, ValueError, KeyError, EOFError) as e:
    raise ConfigError(
      f"config.sample_metrics.inception_weights={str(path)!r} is not pytorch-fid's FID "
      f"Inception state dict: {str(e)[:300]}"
    ) from e
  return InceptionNet(
    variables,
    weights=str(path),
    sha256=sha256_of(path),
    cache_dir=cache_dir() / "inception_stats",
  )


__all__ = ["PUBLISHED_URL", "fetch_weights", "inception_network", "sha256_of"]
