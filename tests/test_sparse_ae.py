"""Sparse autoencoders: the KL-ρ penalty, TopK codes, statistics, and a short run."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genlab import losses
from genlab.errors import ConfigError
from genlab.models.sparse_ae import SparseAutoencoder, keep_top_k


def test_bernoulli_kl_matches_numpy_and_penalises_both_directions():
  rho, rho_hat = 0.05, np.array([0.001, 0.01, 0.05, 0.2, 0.9])
  expected = rho * np.log(rho / rho_hat) + (1 - rho) * np.log((1 - rho) / (1 - rho_hat))
  np.testing.assert_allclose(
    jax.jit(lambda r: losses.bernoulli_kl(rho, r))(rho_hat), expected, rtol=1e-5
  )
  got = np.asarray(losses.bernoulli_kl(rho, rho_hat))
  assert got[2] == pytest.approx(0.0, abs=1e-7)  # At the target rate: no penalty.
  assert got[0] > 0 and got[3] > 0  # Too quiet and too active are both penalised.


def test_top_k_keeps_the_k_largest_nonnegative_entries():
  pre = jnp.array([[3.0, -1.0, 2.0, 0.5, 5.0], [-3.0, -2.0, -1.0, 4.0, 0.0]])
  out = np.asarray(keep_top_k(pre, 2))
  np.testing.assert_array_equal(out[0], [3.0, 0, 0, 0, 5.0])
  np.testing.assert_array_equal(out[1], [0, 0, 0, 4.0, 0])  # ReLU: the kept 0.0 stays 0.
  model = SparseAutoencoder(output_shape=(4, 4, 1), code_dim=8, code="topk", k=3)
  x = jax.random.uniform(jax.random.key(0), (5, 4, 4, 1))
  params = model.init(jax.random.key(1), x)
  code = model.apply(params, x, method=SparseAutoencoder.encode)
  assert np.all(np.sum(np.asarray(code) > 0, axis=1) <= 3)
  with pytest.raises(ConfigError, match="k=9"):
    SparseAutoencoder(output_shape=(4, 4, 1), code_dim=8, code="topk", k=9).init(
      jax.random.key(1), x
    )


@pytest.mark.parametrize(
  "kind, code, extra",
  [("kl", "sigmoid", {}), ("l1", "relu", {"l1": 1e-3}), ("topk", "topk", {})],
)
def test_short_training_lowers_the_loss_and_reports_sparsity_statistics(
  kind, code, extra, data_dir, tmp_path
):
  from conftest import EXPERIMENTS
  from genlab import config as config_lib
  from genlab.train.loop import evaluate_workdir, train_and_evaluate

  config = config_lib.load_experiment(EXPERIMENTS / "sparse_ae_patches.py")
  config.data.data_dir = data_dir
  config.update(num_steps=300, log_every=50, eval_every=300, image_every=300, checkpoint_every=300)
  config.model.update(code=code, code_dim=16, k=4)
  config.sparsity.update(kind=kind, **extra)
  train_and_evaluate(config, tmp_path)
  lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").open()]
  train = [m["train/loss"] for m in lines if "train/loss" in m]
  assert train[-1] < train[0]
  report = evaluate_workdir(tmp_path)
  m = report["metrics"]
  assert 0.0 <= m["dead_fraction"] <= 1.0 and m["rho_hat_mean"] > 0
  assert m["mse_to_baseline_ratio"] < 1.0
  if kind == "topk":
    assert m["l0"] <= 4.0
  names = {p.name.rsplit("_step_", 1)[0] for p in (tmp_path / "images").iterdir()}
  assert {"filters", "rho_hat_histogram", "reconstruction"} <= names
  assert report["protocol"]["sparsity"]["kind"] == kind


def test_sparsity_kind_must_match_the_code(test_config):
  from genlab.config import sparsity_options
  from genlab.train.loop import setup

  config = test_config(family="sparse_autoencoder")
  config.model = config.model.__class__({"name": "sparse_ae", "code": "relu", "code_dim": 8})
  config.sparsity = sparsity_options(kind="kl")
  with pytest.raises(ConfigError, match="needs config.model.code='sigmoid'"):
    setup(config)
