"""VQ-VAE: the quantiser against NumPy, the straight-through gradient, the losses, Sonnet's EMA
update, dead-code re-initialisation, the usage metrics, a short run, determinism, and 1 vs 4
devices."""

from __future__ import annotations

import json

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import compare_parallel, make_test_config, train_shipped
from genlab.data import scale_values
from genlab.families.vq_vae import (
  code_counts,
  code_usage,
  codebook_loss,
  commitment_loss,
  draw_codes,
  ema_update,
)
from genlab.families.vq_vae import options as vq_options
from genlab.models.vq_vae import VQVAE, nearest_code, straight_through


def make_test_model(**overrides) -> VQVAE:
  fields = dict(
    output_shape=(8, 8, 1), codebook_size=8, code_dim=3, features=(4, 8), strides=(2, 1)
  )
  return VQVAE(**{**fields, **overrides})


def vq_config(data_dir, *, num_steps=20, **vq):
  """make_test_config's tiny run as a VQ-VAE (a 4×4 map of 3-vectors, 8 codes)."""
  config = make_test_config(data_dir, family="vq_vae", num_steps=num_steps)
  config.model = ml_collections.ConfigDict(
    {"name": "vq_vae", "codebook_size": 8, "code_dim": 3, "features": (4, 8), "strides": (2, 1)}
  )
  config.vq = vq_options(**vq)
  return config


def test_shapes_and_the_nearest_code_match_numpy():
  model = make_test_model()
  x = jax.random.uniform(jax.random.key(0), (2, 8, 8, 1))
  params = model.init(jax.random.key(1), x)["params"]
  output, aux = jax.jit(model.apply)({"params": params}, x)
  chex.assert_shape(output, (2, 8, 8, 1))
  chex.assert_shape(aux["z_e"], (2, 4, 4, 3))
  chex.assert_shape(aux["indices"], (2, 4, 4))
  chex.assert_shape(aux["codes"], (2, 4, 4, 3))
  chex.assert_shape(params["quantizer"]["codebook"], (8, 3))
  codebook = np.asarray(params["quantizer"]["codebook"])
  np.testing.assert_array_equal(aux["codes"], codebook[np.asarray(aux["indices"])])
  # The nearest code against NumPy's full distances, on vectors spread among the codes.
  z = jax.random.normal(jax.random.key(2), (50, 3))
  distances = ((np.asarray(z)[:, None, :] - codebook[None]) ** 2).sum(-1)
  np.testing.assert_array_equal(jax.jit(nearest_code)(z, codebook), distances.argmin(1))
  assert len(np.unique(distances.argmin(1))) > 1  # Not vacuous.


def test_the_straight_through_gradient_of_the_reconstruction_is_its_gradient_at_the_codes():
  model = make_test_model()
  x = jax.random.uniform(jax.random.key(0), (2, 8, 8, 1))
  params = model.init(jax.random.key(1), x)["params"]
  _, aux = model.apply({"params": params}, x)

  def reconstruction(z_q):
    logits = model.apply({"params": params}, z_q, method="decode")
    return jnp.mean((jax.nn.sigmoid(logits) - x) ** 2)

  codes = aux["codes"]
  through = jax.jit(jax.grad(lambda z_e: reconstruction(straight_through(z_e, codes))))
  d_z_e = through(aux["z_e"])
  d_z_q = jax.grad(reconstruction)(codes)
  np.testing.assert_allclose(d_z_e, d_z_q, rtol=1e-6, atol=1e-9)
  assert np.abs(d_z_q).max() > 0
  # The value is the codes'.
  np.testing.assert_allclose(straight_through(aux["z_e"], codes), codes, atol=1e-7)  # z + (e − z).
  # And no gradient reaches the codebook through the straight-through path.
  d_codes = jax.grad(lambda c: reconstruction(straight_through(aux["z_e"], c)))(codes)
  np.testing.assert_array_equal(d_codes, 0.0)


def test_commitment_and_codebook_losses_match_numpy_with_their_stop_gradients():
  z_e = jax.random.normal(jax.random.key(0), (3, 2, 2, 4))
  codes = jax.random.normal(jax.random.key(1), (3, 2, 2, 4))
  expected = ((np.asarray(z_e) - np.asarray(codes)) ** 2).reshape(3, -1).mean(1)
  np.testing.assert_allclose(jax.jit(commitment_loss)(z_e, codes), expected, rtol=1e-6)
  np.testing.assert_allclose(jax.jit(codebook_loss)(z_e, codes), expected, rtol=1e-6)
  n = 2 * 2 * 4
  grad = jax.grad(lambda z, c: jnp.sum(commitment_loss(z, c)), argnums=(0, 1))(z_e, codes)
  np.testing.assert_allclose(grad[0], 2 * (z_e - codes) / n, rtol=1e-5)
  np.testing.assert_array_equal(grad[1], 0.0)  # Commitment trains the encoder only.
  grad = jax.grad(lambda z, c: jnp.sum(codebook_loss(z, c)), argnums=(0, 1))(z_e, codes)
  np.testing.assert_array_equal(grad[0], 0.0)  # The codebook loss trains the codes only.
  np.testing.assert_allclose(grad[1], 2 * (codes - z_e) / n, rtol=1e-5)


def _sonnet_ema_numpy(batches, codebook_size, *, decay, epsilon):
  """Sonnet 2's VectorQuantizerEMA update, step by step in NumPy: zero-started debiased
  moving averages of the counts and sums, then the Laplace-smoothed division."""
  hidden_n, hidden_dw, t = np.zeros(codebook_size), None, 0
  for z, k in batches:
    encodings = np.eye(codebook_size)[k]
    dw = z.T @ encodings  # (D, K), as Sonnet.
    hidden_dw = np.zeros_like(dw) if hidden_dw is None else hidden_dw
    t += 1
    hidden_n -= (hidden_n - encodings.sum(0)) * (1 - decay)
    hidden_dw -= (hidden_dw - dw) * (1 - decay)
    n_avg, dw_avg = hidden_n / (1 - decay**t), hidden_dw / (1 - decay**t)
    n = n_avg.sum()
    n_avg = (n_avg + epsilon) / (n + codebook_size * epsilon) * n
    codebook = (dw_avg / n_avg[None, :]).T
  return codebook, hidden_n, hidden_dw.T


def test_ema_update_matches_a_numpy_reference_of_sonnets_formulas():
  rng = np.random.default_rng(0)
  k, d, decay, epsilon = 5, 3, 0.9, 1e-3
  batches = [(rng.normal(size=(12, d)), rng.integers(0, k - 1, size=12)) for _ in range(3)]
  ema = {
    "cluster_size": jnp.zeros(k),
    "embedding_sum": jnp.zeros((k, d)),
    "count": jnp.zeros((), jnp.int32),
  }
  update = jax.jit(lambda ema, z, i: ema_update(ema, z, i, decay=decay, epsilon=epsilon))
  for z, i in batches:
    new = update(ema, jnp.asarray(z, jnp.float32), jnp.asarray(i))
    ema = {name: new[name] for name in ("cluster_size", "embedding_sum", "count")}
  codebook, hidden_n, hidden_sum = _sonnet_ema_numpy(batches, k, decay=decay, epsilon=epsilon)
  assert int(new["count"]) == 3
  np.testing.assert_allclose(new["cluster_size"], hidden_n, rtol=1e-5)
  np.testing.assert_allclose(new["embedding_sum"], hidden_sum, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(new["codebook"], codebook, rtol=1e-4, atol=1e-6)
  # Code k − 1 was never chosen: Sonnet's zero-started averages leave it at 0.
  np.testing.assert_allclose(new["codebook"][-1], 0.0, atol=1e-6)


def test_dead_codes_take_batch_vectors_and_only_they_change_deterministically_under_a_key():
  candidates = jax.random.normal(jax.random.key(0), (20, 3))
  codebook = jnp.full((6, 3), 7.0)
  dead = jnp.array([True, False, True, False, False, True])
  draw = jax.jit(draw_codes)
  new, drawn = draw(jax.random.key(1), candidates, codebook, dead)
  np.testing.assert_array_equal(new[~dead], codebook[~dead])
  for row in np.asarray(new[dead]):
    assert np.any(np.all(row == np.asarray(candidates), axis=1)), row
  assert len({tuple(r) for r in np.asarray(drawn)}) == 6  # Without replacement (N ≥ K).
  again, _ = draw(jax.random.key(1), candidates, codebook, dead)
  np.testing.assert_array_equal(again, new)
  other, _ = draw(jax.random.key(2), candidates, codebook, dead)
  assert not np.array_equal(other, new)


@pytest.mark.parametrize("update", ["ema", "loss"])
def test_the_family_reinitialises_exactly_the_dead_codes_from_the_batchs_encoder_outputs(
  update, data_dir
):
  from genlab.run import setup

  s = setup(vq_config(data_dir, codebook_update=update, dead_code_reinit=True, dead_after=16))
  family, state = s.family, s.initial_state
  dead = np.array([True, False, False, True, False, False, False, True])
  stats = dict(state.stats["model"], unused_examples=jnp.asarray(np.where(dead, 16, 3)))
  state = state.replace(stats={"model": stats})
  x = jnp.asarray(scale_values(s.dataset.train["image"][:16], family.value_range))
  batch = {"image": x, "index": jnp.arange(16)}
  key = jax.random.key(3)
  before = np.asarray(family.codebook(state))
  after_state = jax.jit(family.reinit_dead_codes)(state, batch, key)
  after = np.asarray(family.codebook(after_state))
  np.testing.assert_array_equal(after[~dead], before[~dead])
  params = family.model_params(state.params["model"], state.stats["model"])
  z_e = np.asarray(family.model.apply({"params": params}, x, method="encode")).reshape(-1, 3)
  for row in after[dead]:
    assert np.min(np.abs(z_e - row).max(axis=1)) < 1e-6, row
  np.testing.assert_array_equal(after_state.stats["model"]["unused_examples"], np.where(dead, 0, 3))
  again = jax.jit(family.reinit_dead_codes)(state, batch, key)
  np.testing.assert_array_equal(family.codebook(again), after)
  if update == "ema":  # The revived codes' averages restart at one use of their vector.
    size = np.asarray(after_state.stats["model"]["cluster_size"])
    np.testing.assert_array_equal(size[dead], 0.0)  # count = 0: no update made yet.
  # Nothing dead: the state is returned as it was.
  alive = state.replace(stats={"model": dict(stats, unused_examples=jnp.zeros(8, jnp.int32))})
  same = jax.jit(family.reinit_dead_codes)(alive, batch, key)
  np.testing.assert_array_equal(family.codebook(same), before)


def test_usage_metrics_match_numpy_on_a_known_assignment():
  indices = np.array([[[0, 0], [1, 2]], [[0, 2], [2, 2]], [[5, 5], [5, 5]]])  # 3 examples, K = 8.
  mask = np.array([1.0, 1.0, 0.0])  # The third is padding.
  counts = np.asarray(jax.jit(code_counts, static_argnums=1)(indices, 8, mask))
  np.testing.assert_array_equal(counts, [3, 1, 4, 0, 0, 0, 0, 0])
  p = np.array([3, 1, 4]) / 8
  usage = code_usage(counts)
  np.testing.assert_allclose(usage["perplexity"], np.exp(-(p * np.log(p)).sum()), rtol=1e-6)
  assert float(usage["codebook_usage"]) == 3 / 8 and int(usage["dead_codes"]) == 5
  uniform = code_usage(np.ones(8))
  np.testing.assert_allclose(uniform["perplexity"], 8.0, rtol=1e-6)


@pytest.mark.slow
def test_a_short_run_trains_reports_usage_and_keeps_the_ema_codebook_in_stats(data_dir, tmp_path):
  from conftest import restore_latest
  from genlab.run import evaluate_workdir, train_and_evaluate

  config = vq_config(data_dir, num_steps=30, codebook_update="ema", dead_code_reinit=True)
  config.optimizer.learning_rate = 1e-2
  config.vq.dead_after = 32  # Two steps of 16: some codes die and are re-initialised.
  train_and_evaluate(config, tmp_path)
  lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").open()]
  train = [line["train/loss"] for line in lines if "train/loss" in line]
  assert train[-1] < 0.8 * train[0], train
  report = evaluate_workdir(tmp_path)
  m, protocol = report["metrics"], report["protocol"]
  assert m["mse_to_baseline_ratio"] == pytest.approx(m["mse"] / m["mse_mean_baseline"]), m
  assert 1.0 <= m["perplexity"] <= 8.0 and 0 < m["codebook_usage"] <= 1, m
  assert m["dead_codes"] == round(8 * (1 - m["codebook_usage"])), m
  assert protocol["codebook_update"] == "ema" and protocol["codebook_size"] == 8
  assert protocol["decay"] == 0.99 and protocol["dead_after_examples"] == 32
  assert set(report["definitions"]) >= {"perplexity", "codebook_usage", "dead_codes", "mse"}
  names = {p.name.rsplit("_step_", 1)[0] for p in (tmp_path / "images").iterdir()}
  assert {"reconstruction", "code_usage"} <= names
  _, state = restore_latest(tmp_path)
  assert "quantizer" not in state.params["model"]  # Not trained: no optimizer sees it.
  stats = state.stats["model"]
  assert stats["codebook"].shape == (8, 3) and int(stats["count"]) == 30
  # A code dead at a step's start is revived: none goes unused for more than dead_after.
  assert np.all(np.asarray(stats["unused_examples"]) <= 32), stats["unused_examples"]


def test_steps_are_deterministic_under_a_fixed_key(data_dir):
  from genlab.run import setup

  s = setup(vq_config(data_dir, codebook_update="ema", dead_code_reinit=True, dead_after=16))
  family = s.family
  x = jnp.asarray(scale_values(s.dataset.train["image"][:16], family.value_range))
  batch = {"image": x, "index": jnp.arange(16)}
  step = jax.jit(family.train_step)

  def run(seed):
    state = s.initial_state
    for i in range(4):
      state, metrics = step(state, batch, jax.random.fold_in(jax.random.key(seed), i))
    return state, metrics

  first, metrics = run(0)
  second, _ = run(0)
  chex.assert_trees_all_equal(first.params, second.params)
  chex.assert_trees_all_equal(first.stats, second.stats)
  assert np.isfinite(float(metrics["loss"])) and float(metrics["perplexity"]) >= 1.0


@pytest.mark.slow
@pytest.mark.parametrize("update", ["ema"])  # The untrained codebook; `loss` is plain params.
def test_one_and_four_devices_give_the_same_run(update, data_dir):
  # The shipped experiment for 16 steps: at step 11 about 30 codes unused since the start
  # die and are re-initialised from the global batch, and a few more at each later step
  # (measured from the train log's dead_codes), on top of the EMA's sums over the batch.
  # Re-initialising every step for longer parts the runs: blank regions give identical
  # encoder outputs, drawn for several codes, and the exact ties between those codes break
  # by the last bits of the encoder's convolutions, which differ between 16 and 64 examples
  # per device (dead_after=64, 12 steps: params 2.4e-4 apart, losses 3e-7).
  rows = compare_parallel(
    "vq_vae_digits.py", data_dir, f"--config.vq.codebook_update={update}", steps=16, modes="data"
  )
  reference = np.array(rows["one"]["losses"])
  assert len(reference) == 16 and rows["data"]["devices"] == 4
  np.testing.assert_allclose(rows["data"]["losses"], reference, rtol=1e-4)
  assert rows["data"]["max_abs_param_diff_vs_1_device"] < 1e-5, rows["data"]
  assert rows["data"]["max_abs_stats_diff_vs_1_device"] < 1e-5, rows["data"]


@pytest.mark.slow
def test_the_shipped_experiment_meets_the_issues_bar(data_dir, tmp_path):
  """vq_vae_digits.py as shipped (2,000 steps, seed 0): perplexity above half the codebook
  with dead-code re-initialisation on, and mse at most 1.5 × conv_ae_digits.py's (0.0058,
  same seed and steps, measured; its docstring), well below the mean image's. Measured:
  mse 0.0043, perplexity 56.9 of 64, no dead code."""
  m = train_shipped("vq_vae_digits.py", data_dir, tmp_path)
  assert m["perplexity"] > 64 / 2, m
  assert m["mse"] <= 1.5 * 0.0058, m
  assert m["mse_to_baseline_ratio"] < 0.1, m
