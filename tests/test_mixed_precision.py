"""`config.dtype='bfloat16'`: bf16 computation, float32 params, optimizer state and losses."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from conftest import make_test_config
from genlab.data import eval_batches
from genlab.errors import ConfigError


def _dot_dtypes(family, state, batch) -> set[str]:
  """The operand dtypes of every matrix product / convolution in one train step."""
  jaxpr = jax.make_jaxpr(lambda s, b: family.train_step(s, b, jax.random.key(0), axis_name=None))(
    state, batch
  )
  found = set()

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name in ("dot_general", "conv_general_dilated"):
        found.update(str(v.aval.dtype) for v in eqn.invars)
      for sub in jax.core.jaxprs_in_params(eqn.params):
        walk(sub)

  walk(jaxpr.jaxpr)
  return found


@pytest.mark.parametrize("family", ["autoencoder", "vae", "sparse_autoencoder"])
def test_bf16_computes_in_bf16_keeps_fp32_state_and_trains_like_fp32(family, tmp_path):
  from genlab.config import sparsity_options, vae_options
  from genlab.train.loop import setup, train_and_evaluate

  runs = {}
  for dtype in ("float32", "bfloat16"):
    config = make_test_config(str(tmp_path / "tfds"), family=family, dtype=dtype)
    if family == "vae":
      config.model = config.model.__class__(
        {"name": "vae", "architecture": "mlp", "hidden": (32,), "latent_dim": 4}
      )
      config.vae = vae_options()
    if family == "sparse_autoencoder":
      config.model = config.model.__class__({"name": "sparse_ae", "code_dim": 16})
      config.sparsity = sparsity_options(kind="kl", rho=0.1)
    config.update(num_steps=60, log_every=20, eval_every=60, image_every=60, checkpoint_every=60)
    result = train_and_evaluate(config, tmp_path / dtype)
    lines = [json.loads(x) for x in (tmp_path / dtype / "metrics.jsonl").open()]
    runs[dtype] = [m["train/loss"] for m in lines if "train/loss" in m], result
  losses, result = runs["bfloat16"]
  assert losses[-1] < losses[0]
  np.testing.assert_allclose(losses[-1], runs["float32"][0][-1], rtol=0.1)
  leaves = jax.tree.leaves((result.state.params, result.state.opt_state))
  assert {np.asarray(x).dtype for x in leaves if np.asarray(x).dtype.kind == "f"} == {
    np.dtype("float32")
  }
  s = setup(config)
  example = next(eval_batches(s.dataset.train, global_batch_size=4, value_range=(0.0, 1.0)))
  example.pop("mask")
  assert _dot_dtypes(s.family, s.initial_state, example) == {"bfloat16"}


def test_an_unknown_dtype_is_refused(test_config):
  from genlab.train.loop import setup

  config = test_config(dtype="float16")
  with pytest.raises(ConfigError, match="choose float32 or bfloat16"):
    setup(config)
