"""SAEs on a host model's activations: the activation source, the SAE variants (BatchTopK,
JumpReLU), the metrics (loss recovered), and the worked example's pieces end to end."""

from __future__ import annotations

import dataclasses
import json
import sys

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import EXPERIMENTS, REPO, compare_parallel
from genlab.core import make_optimizer


class TinyHost(nn.Module):
  """A host for tests: (B, P, 6) inputs → `hidden` (B, P, 8) → logits over 3 classes."""

  @nn.compact
  def __call__(self, x):
    h = nn.Dense(8, name="hidden")(x)
    self.sow("intermediates", "hidden_relu", nn.relu(h))
    return nn.Dense(3, name="out")(nn.relu(h))


def _tiny_host_and_data(seed=0, n=512, positions=4):
  """A TinyHost with random params and a dataset of sparse-ish inputs with labels."""
  from genlab.data import Dataset
  from genlab.models.activations import HostModel

  rng = np.random.default_rng(seed)
  atoms = rng.normal(size=(24, 6)).astype(np.float32)

  def split(count):
    mix = rng.random((count, positions, 24)) < 0.1
    x = (mix * rng.exponential(size=mix.shape)) @ atoms
    labels = rng.integers(0, 3, size=(count, positions))
    return {"image": x.astype(np.float32), "label": labels}

  model = TinyHost()
  train, test = split(n), split(n // 4)
  params = model.init(jax.random.key(seed), jnp.asarray(train["image"][:1]))["params"]

  def token_loss(logits, batch):
    import optax

    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    return loss, jnp.ones_like(loss)

  host = HostModel(
    model=model,
    params=params,
    layer="hidden",
    inputs=lambda batch: (batch["image"],),
    positions=lambda batch: jnp.ones(batch["image"].shape[:2]),
    token_loss=token_loss,
    description="TinyHost, random params",
  )
  return host, Dataset("tiny", train, test, modality="series")


def _sae_family(
  code="batchtopk",
  dtype="float32",
  model=None,
  learning_rate=3e-3,
  stream=False,
  host_and_data=None,
  **sae,
):
  from genlab.config import base_config
  from genlab.data import RecordSplit
  from genlab.families.activation_sae import ActivationSAE

  host, dataset = host_and_data or _tiny_host_and_data()
  if stream:  # The train split read example by example, as data.stream_train gives it.
    train = dataset.train
    examples = [{k: v[i] for k, v in train.items()} for i in range(len(train["image"]))]
    dataset = dataclasses.replace(dataset, train=RecordSplit(examples))
  config = base_config("activation_sae")
  config.dtype = dtype
  config.mesh.devices = 1
  config.kernels = "flax"
  config.model.update({"name": "sparse_ae", "code": code, "code_dim": 32, "k": 2, **(model or {})})
  config.sae.update(**{"host_factory": "tests:unused", "normalize": "norm", **sae})
  config.optimizer.learning_rate = learning_rate
  family = ActivationSAE(config, dataset, root_key=jax.random.key(0), kernels="flax")
  family.provide({"host_model": host})
  return family


def _train(family, steps, seed=0):
  state = family.init_state(jax.random.key(seed), None)
  step = jax.jit(family.train_step)
  train = family.dataset.train
  for i in range(steps):
    start = (i * 64) % (len(train["image"]) - 64)
    batch = {k: jnp.asarray(v[start : start + 64]) for k, v in train.items()}
    state, metrics = step(state, batch, jax.random.key(i))
    state = state.replace(step=state.step + 1)  # As the runner counts them.
  return state, metrics


def _eval(family, state):
  test = family.dataset.test
  batch = {k: jnp.asarray(v) for k, v in test.items()} | {"mask": jnp.ones(len(test["image"]))}
  sums = jax.jit(family.eval_step)(state, batch)
  n = len(test["image"])
  return family.summarize({k: np.asarray(v) / n for k, v in sums.items()})


# The activation source -------------------------------------------------------------------


def test_capture_gives_exactly_what_capture_intermediates_gives():
  from genlab.models.activations import capture
  from genlab.models.transformer import CausalTransformer

  model = CausalTransformer(vocab_size=20, max_length=10, width=16, depth=3, heads=2)
  tokens = jax.random.randint(jax.random.key(0), (3, 10), 1, 20)
  variables = model.init(jax.random.key(1), tokens)

  @jax.jit
  def direct(v, t):
    out, state = model.apply(v, t, capture_intermediates=True, mutable=["intermediates"])
    return out, state["intermediates"]["block_1"]["__call__"][0]

  out, activation = jax.jit(lambda v, t: capture(model, v, "block_1", t))(variables, tokens)
  want_out, want = direct(variables, tokens)
  chex.assert_shape(activation, (3, 10, 16))
  np.testing.assert_array_equal(activation, want)
  np.testing.assert_array_equal(out, want_out)


def test_capture_reads_sown_values_and_names_a_missing_layer():
  from genlab.errors import ConfigError
  from genlab.models.activations import capture, splice

  host, data = _tiny_host_and_data()
  x = jnp.asarray(data.test["image"][:2])
  variables = {"params": host.params}
  _, sown = capture(host.model, variables, "intermediates/hidden_relu", x)
  _, hidden = capture(host.model, variables, "hidden", x)
  np.testing.assert_allclose(sown, jax.nn.relu(hidden))
  with pytest.raises(ConfigError, match="no submodule"):
    capture(host.model, variables, "hiden", x)
  with pytest.raises(ConfigError, match="can be read, not replaced"):
    splice(host.model, variables, "intermediates/hidden_relu", lambda a: a, x)


class _CacheBlock(nn.Module):
  """A block returning (cache, x), as the blocks of Gemma's Transformer do."""

  @nn.compact
  def __call__(self, x):
    h = x + nn.Dense(x.shape[-1])(jnp.tanh(x))
    return {"k": h[..., :2]}, h


class _TupleHost(nn.Module):
  @nn.compact
  def __call__(self, x):
    _, h = _CacheBlock(name="block_0")(x)
    cache, h = _CacheBlock(name="block_1")(h)
    return nn.Dense(3)(h) + cache["k"].sum(-1, keepdims=True)


def test_an_element_of_a_modules_tuple_output_is_read_and_replaced():
  from genlab.errors import ConfigError
  from genlab.models.activations import capture, splice

  model = _TupleHost()
  x = jax.random.normal(jax.random.key(0), (4, 5, 6))
  variables = model.init(jax.random.key(1), x)
  out, state = model.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])
  cache, want = state["intermediates"]["block_1"]["__call__"][0]
  clean, got = capture(model, variables, "block_1[1]", x)
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(clean, out)
  np.testing.assert_array_equal(splice(model, variables, "block_1[1]", lambda a: a, x), out)
  zeroed = splice(model, variables, "block_1[1]", jnp.zeros_like, x)
  # Only element 1 is replaced: the cache still reaches the output.
  bias = variables["params"]["Dense_0"]["bias"]
  np.testing.assert_allclose(zeroed, bias + cache["k"].sum(-1, keepdims=True), rtol=1e-6)
  with pytest.raises(ConfigError, match=r"block_1\[2\]': the module's output is tuple of 2"):
    capture(model, variables, "block_1[2]", x)


class _JittedHost(nn.Module):
  """A model whose `__call__` is wrapped in `nn.jit`, as Gemma's Transformer's is."""

  @nn.jit
  @nn.compact
  def __call__(self, x):
    return nn.Dense(3)(_CacheBlock(name="block_0")(x)[1])


def test_splices_of_a_model_wrapped_in_nn_jit_each_take_effect():
  from genlab.models.activations import capture, splice

  model = _JittedHost()
  x = jax.random.normal(jax.random.key(0), (4, 6))
  variables = model.init(jax.random.key(1), x)
  clean = model.apply(variables, x)
  # nn.jit reuses a trace of the same scope: without a new one per splice, the second
  # splice would run the first one's replacement (or none).
  for _ in range(2):
    np.testing.assert_array_equal(splice(model, variables, "block_0[1]", lambda a: a, x), clean)
    zeroed = splice(model, variables, "block_0[1]", jnp.zeros_like, x)
    np.testing.assert_allclose(
      zeroed, np.broadcast_to(variables["params"]["Dense_0"]["bias"], clean.shape)
    )
    _, block = capture(model, variables, "block_0[1]", x)
    np.testing.assert_array_equal(capture(model, variables, "block_0[1]", x)[1], block)
    assert not np.allclose(block, 0)


def test_splicing_the_activation_itself_gives_the_clean_output_and_zeros_change_it():
  host, data = _tiny_host_and_data()
  batch = {k: jnp.asarray(v[:8]) for k, v in data.test.items()}
  clean, _ = host.capture(batch)
  np.testing.assert_array_equal(host.splice(batch, lambda a: a), clean)
  assert not np.allclose(host.splice(batch, jnp.zeros_like), clean)


def test_a_perfect_reconstruction_recovers_the_clean_loss():
  from genlab.sae import SAEObjective

  family = _sae_family()

  class Perfect(SAEObjective):
    def reconstruct(self, params, x, weights, stats, *, train):
      x_hat, code, pre, new = super().reconstruct(params, x, weights, stats, train=train)
      return x, code, pre, new

  family.objective = Perfect(family.model, family.options, family.tx)
  state = family.init_state(jax.random.key(0), None)
  m = _eval(family, state)
  assert m["loss_sae"] == pytest.approx(m["loss_clean"], abs=1e-6)
  assert m["kl_sae"] == pytest.approx(0.0, abs=1e-6)
  assert m["loss_recovered"] == pytest.approx(1.0, abs=1e-5)
  assert m["fvu"] == pytest.approx(0.0, abs=1e-6) and m["loss_zero"] != m["loss_clean"]


# The variants ------------------------------------------------------------------------------


def test_kth_largest_and_top_k_match_a_sort():
  from genlab.sae import batch_top_k, keep_top_k, kth_largest_relu

  x = jax.random.normal(jax.random.key(0), (50, 40))
  sorted_desc = -np.sort(-np.maximum(np.asarray(x), 0).ravel())
  assert float(kth_largest_relu(x, 37)) == sorted_desc[36]
  row = np.asarray(kth_largest_relu(x, 5, axis=-1))[:, 0]
  np.testing.assert_array_equal(row, -np.sort(-np.maximum(np.asarray(x), 0), axis=1)[:, 4])
  code = keep_top_k(x, 5)
  assert np.all(np.sum(np.asarray(code) > 0, axis=1) == 5)
  weights = (jnp.arange(50) < 41).astype(jnp.float32)
  code, threshold = jax.jit(batch_top_k, static_argnums=1)(x, 3, weights)
  active = np.asarray(code) > 0
  assert active.sum() == 3 * 41 and not active[41:].any()  # Mean L0 over valid rows: k.
  assert float(threshold) == pytest.approx(np.asarray(x)[:41][active[:41]].min())


def test_batchtopk_trains_at_mean_l0_k_and_its_threshold_gives_l0_near_k_on_held_out_data():
  family = _sae_family("batchtopk")
  state, metrics = _train(family, 300)
  assert float(metrics["l0"]) == pytest.approx(2.0, abs=1e-6)  # Exactly k in training.
  m = _eval(family, state)  # The test split, at the learned inference threshold.
  assert abs(m["l0"] - 2.0) <= 0.2 * 2.0, m
  assert m["explained_variance"] > 0.5, m


def _matryoshka_reference(x, weights, params, k, widths):
  """NumPy, float64: the BatchTopK latents f (the k·n largest ReLU'd pre-activations of the
  n valid rows), then the nested-prefix objective Σ_m Σ_d (x − b_dec − Σ_{j<m} f_j·W_dec,j)²
  over the prefixes m in `widths` and the whole dictionary, averaged over the valid rows (as
  SAELens 6.x trains it: sae_lens/saes/matryoshka_batchtopk_sae.py, `training_forward_pass`
  adds each inner level's `mse_loss_fn(...).sum(dim=-1).mean()` to the whole SAE's loss)."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  x = np.asarray(x, np.float64)
  w_enc, b_enc = p["encoder"]["kernel"], p["encoder"]["bias"]
  w_dec, b_dec = p["decoder"]["kernel"], p["decoder"]["bias"]
  pre = x @ w_enc + b_enc
  valid = np.asarray(weights) > 0
  kept = np.sort(np.maximum(pre[valid], 0.0).ravel())[::-1][k * valid.sum() - 1]
  f = np.where(valid[:, None] & (pre >= kept), np.maximum(pre, 0.0), 0.0)
  total = np.zeros(len(x))
  for m in sorted(set(widths) | {w_dec.shape[0]}):
    total += ((x - b_dec - f[:, :m] @ w_dec[:m]) ** 2).sum(axis=1)
  return (total * weights).sum() / weights.sum()


@pytest.mark.parametrize("widths", [(4, 12), (2, 8, 20, 32)])
def test_matryoshka_batchtopk_loss_matches_the_nested_prefix_formula(widths):
  family = _sae_family("matryoshka_batchtopk", model={"matryoshka_widths": widths})
  state = family.init_state(jax.random.key(0), None)
  params, stats = state.params["model"], state.stats["model"]
  x = jax.random.normal(jax.random.key(1), (48, family.model.output_shape[0]))
  weights = jnp.ones(48).at[40:].set(0.0)  # The last 8 rows are padding.
  loss, parts, _ = jax.jit(lambda p, x, w: family.objective(p, x, w, stats, train=True))(
    params, x, weights
  )
  expected = _matryoshka_reference(x, np.asarray(weights), params, family.model.k, widths)
  # float32 against float64: sums of 32-term products, relative error ~1e-6.
  np.testing.assert_allclose(float(loss), expected, rtol=2e-5)
  assert float(parts["l0"]) == pytest.approx(family.model.k, abs=1e-6)
  # The whole dictionary alone is BatchTopK's objective: each inner prefix adds a positive
  # error of its own.
  plain = _sae_family("batchtopk")
  assert float(loss) > float(plain.objective(params, x, weights, stats, train=True)[0]) > 0


def test_the_docs_own_sae_code_trains_from_a_package_outside_genlab(tmp_path, monkeypatch):
  from genlab.sae import CODES

  text = (REPO / "docs" / "families" / "sparse_ae.md").read_text()
  source = text.split("```python\n# mypackage/codes.py\n", 1)[1].split("```", 1)[0]
  (tmp_path / "mypackage").mkdir()
  (tmp_path / "mypackage" / "__init__.py").write_text("")
  (tmp_path / "mypackage" / "codes.py").write_text(source)
  monkeypatch.syspath_prepend(str(tmp_path))
  # Undone after the test: the registration and the imported package.
  monkeypatch.setattr(CODES, "_registered", dict(CODES._registered))
  monkeypatch.setattr(CODES, "_found", dict(CODES._found))
  for name in ("mypackage", "mypackage.codes"):
    monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, name)
  # By its path (nothing imported yet), then by the name its import registered.
  family = _sae_family("mypackage.codes:SoftThreshold", aux_k=0, l1=0.01)
  assert _sae_family("shrink", aux_k=0).code_class is family.code_class
  state, metrics = _train(family, 40)
  x = jax.random.normal(jax.random.key(0), (8, family.model.output_shape[0]))
  pre = family.model.apply({"params": state.params["model"]}, x, method="pre_activations")
  code = family.model.apply({"params": state.params["model"]}, x, method="encode")
  np.testing.assert_array_equal(code, jax.nn.relu(pre - 0.1))  # Its activate, not another's.
  assert float(metrics["sparsity_penalty"]) > 0 and np.isfinite(float(metrics["loss"]))


def _jumprelu_reference(z, theta, eps, g):
  """NumPy: the paper's pseudo-derivatives (Rajamanoharan et al. 2024, eqs. 11–12)."""
  kernel = (np.abs((z - theta) / eps) < 0.5).astype(np.float64)
  dz_jump = g * (z > theta)
  dtheta_jump = (g * (-theta / eps) * kernel).sum(0)
  dtheta_step = (g * (-1.0 / eps) * kernel).sum(0)
  return dz_jump, dtheta_jump, dtheta_step


def test_jumprelu_straight_through_gradients_match_the_papers_formulas():
  from genlab.sae import heaviside_step, jump_relu

  rng = np.random.default_rng(0)
  z = rng.uniform(0, 1, size=(64, 5)).astype(np.float32)
  theta = np.array([0.1, 0.3, 0.5, 0.52, 0.9], np.float32)
  g = rng.normal(size=z.shape).astype(np.float32)
  eps = 0.05
  dz, dtheta = jax.grad(lambda z, t: jnp.sum(jump_relu(z, t, eps) * g), argnums=(0, 1))(z, theta)
  dz_step, dtheta_step = jax.grad(
    lambda z, t: jnp.sum(heaviside_step(z, t, eps) * g), argnums=(0, 1)
  )(z, theta)
  want_dz, want_dtheta, want_dtheta_step = _jumprelu_reference(z, theta, eps, g)
  np.testing.assert_allclose(dz, want_dz, rtol=1e-6)
  np.testing.assert_allclose(dtheta, want_dtheta, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dtheta_step, want_dtheta_step, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(dz_step, 0.0)
  np.testing.assert_array_equal(jump_relu(z, theta, eps), z * (z > theta))
  assert np.any(dtheta != 0) and np.any(dtheta_step != 0)


def test_jumprelu_thresholds_stay_float32_and_learn_in_bfloat16():
  family = _sae_family("jumprelu", dtype="bfloat16", l0=0.5)
  state = family.init_state(jax.random.key(0), None)
  before = state.params["model"]["log_threshold"]
  assert before.dtype == jnp.float32
  state, _ = _train(family, 30)
  after = state.params["model"]["log_threshold"]
  assert after.dtype == jnp.float32
  assert np.abs(np.asarray(after) - np.asarray(before)).max() > 1e-3  # It learns.


def test_a_larger_l0_coefficient_gives_a_sparser_jumprelu_code():
  l0 = {}
  for coefficient in (0.01, 0.3):
    # Tiny data and few steps: θ must move far, and Adam moves log θ by ≲ lr per step.
    model = {"threshold_init": 0.1, "bandwidth": 0.1}
    family = _sae_family("jumprelu", model=model, learning_rate=1e-2, l0=coefficient)
    state, _ = _train(family, 200)
    l0[coefficient] = _eval(family, state)["l0"]
  assert l0[0.3] < 0.8 * l0[0.01], l0


@pytest.mark.slow
def test_resampling_gives_dead_latents_the_worst_rows_directions_and_resets_their_moments():
  from genlab.sae import resample_dead_latents

  family = _sae_family("topk", dead_after=1, resample_every=2)
  state = family.init_state(jax.random.key(0), None)
  params = state.params["model"]
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(16, family.width)), jnp.float32)
  loss = jnp.zeros(16).at[5].set(2.0)  # One badly reconstructed row: every draw takes it.
  dead = jnp.zeros(32, bool).at[jnp.array([3, 17])].set(True)
  new, reset = resample_dead_latents(jax.random.key(1), params, x, loss, dead, 0.2)
  unit = np.asarray(x[5] / jnp.linalg.norm(x[5]))
  live_norm = np.linalg.norm(np.asarray(params["encoder"]["kernel"]), axis=0)[~np.asarray(dead)]
  for j in (3, 17):
    np.testing.assert_allclose(new["decoder"]["kernel"][j], unit, rtol=1e-6)
    np.testing.assert_allclose(
      new["encoder"]["kernel"][:, j], 0.2 * live_norm.mean() * unit, rtol=1e-5
    )
    assert float(new["encoder"]["bias"][j]) == 0.0
  live = np.flatnonzero(~np.asarray(dead))
  np.testing.assert_array_equal(new["decoder"]["kernel"][live], params["decoder"]["kernel"][live])
  np.testing.assert_array_equal(
    new["encoder"]["kernel"][:, live], params["encoder"]["kernel"][:, live]
  )
  np.testing.assert_array_equal(new["decoder"]["bias"], params["decoder"]["bias"])
  assert int(reset["encoder"]["kernel"].sum()) == 2 * family.width
  assert not reset["decoder"]["bias"].any()

  # In a step: Adam's moments of exactly the resampled entries restart from zero.
  state, _ = _train(family, 3)  # dead_after=1: some TopK latents die at once.
  stats = state.stats["model"]
  dead = np.asarray(stats["examples_since_fired"] >= 1)
  assert dead.any()
  batch = {k: jnp.asarray(v[:64]) for k, v in family.dataset.train.items()}
  x, weights = family.activations(batch, state.stats["host"])
  assert int(state.step) == 3
  resample = jax.jit(family.resample)
  after, count = resample(state.replace(step=4), x, weights, jax.random.key(7))
  assert int(count) == dead.sum()
  adam = after.opt_state["model"]
  mu = [s for s in jax.tree.leaves(adam, is_leaf=lambda s: hasattr(s, "mu")) if hasattr(s, "mu")]
  mu = mu[0].mu["decoder"]["kernel"]
  assert not np.asarray(mu)[dead].any() and np.asarray(mu)[~dead].any()
  assert not np.asarray(after.stats["model"]["examples_since_fired"])[dead].any()
  # Not on a step resample_every does not divide.
  later, count = resample(state, x, weights, jax.random.key(7))
  assert int(count) == 0
  chex.assert_trees_all_equal(later.params, state.params)


def test_resampling_restarts_jumprelu_thresholds_and_works_with_any_optimizers_state():
  import math

  for code, optimizer in (("jumprelu", "adam"), ("relu", "adafactor"), ("relu", "novograd")):
    model = {"threshold_init": 0.25} if code == "jumprelu" else {}
    family = _sae_family(code, model=model, dead_after=1, resample_every=2)
    family.config.optimizer.name = optimizer
    family.tx = make_optimizer(family.config.optimizer)
    family.objective = dataclasses.replace(family.objective, tx=family.tx)
    state = family.init_state(jax.random.key(0), None)
    params = state.params["model"]
    if code == "jumprelu":  # Thresholds moved away from their start.
      params = {**params, "log_threshold": params["log_threshold"] + 1.0}
    since = jnp.zeros(32, jnp.int32).at[jnp.array([3, 17])].set(5)  # Latents 3 and 17 dead.
    state = state.replace(
      step=jnp.asarray(2, jnp.int32),
      params={"model": params},
      stats={**state.stats, "model": {**state.stats["model"], "examples_since_fired": since}},
    )
    batch = {k: jnp.asarray(v[:64]) for k, v in family.dataset.train.items()}
    x, weights = family.activations(batch, state.stats["host"])
    after, count = jax.jit(family.resample)(state, x, weights, jax.random.key(7))
    assert int(count) == 2, (code, optimizer)
    jax.tree.map(lambda a, b: chex.assert_equal_shape([a, b]), after.opt_state, state.opt_state)
    if code == "jumprelu":
      theta = np.asarray(after.params["model"]["log_threshold"])
      np.testing.assert_allclose(theta[[3, 17]], math.log(0.25), rtol=1e-6)
      np.testing.assert_array_equal(
        np.delete(theta, [3, 17]), np.delete(params["log_threshold"], [3, 17])
      )


def test_resampling_revives_the_dead_latents_of_a_relu_sae():
  dead = {}
  for every in (0, 25):  # A strong L1 penalty kills latents (2 of 32 on the test split).
    family = _sae_family("relu", dead_after=512, resample_every=every, learning_rate=1e-2, l1=3)
    state, _ = _train(family, 100)
    dead[every] = _eval(family, state)["dead_fraction"]
  assert dead[0] > 0 and dead[25] < 0.5 * dead[0], dead


def _as_uint8(split):
  return {**split, "image": np.clip(split["image"] * 40 + 128, 0, 255).astype(np.uint8)}


def test_a_host_sees_the_same_dtype_when_normalising_training_and_evaluating():
  """A user's host whose `inputs` rescale by dtype (uint8 images / 255) must see one dtype
  at every stage, or the normalisation is estimated on other values than the steps see.
  The train batches come from the runner's `Batcher`, the eval batches from `eval_batches`,
  as in a run (the family's `value_range` is None: the host's inputs as they are)."""
  from genlab.data import Batcher, Dataset, eval_batches

  host, data = _tiny_host_and_data()
  data = Dataset("tiny_uint8", _as_uint8(data.train), _as_uint8(data.test), modality="series")
  seen = []

  def inputs(batch):
    seen.append(str(batch["image"].dtype))
    x = batch["image"]
    return ((x / 255.0 if x.dtype == jnp.uint8 else x).astype(jnp.float32),)

  host = dataclasses.replace(host, inputs=inputs)
  family = _sae_family(host_and_data=(host, data))
  stages = {"estimation": set(seen)}
  seen.clear()
  batcher = Batcher(
    data.train, global_batch_size=64, key=jax.random.key(0), value_range=family.value_range
  )
  state = family.init_state(jax.random.key(0), None)
  step = jax.jit(family.train_step)
  for i in range(3):
    batch = {k: jnp.asarray(v) for k, v in batcher.batch(i).items()}
    state, _ = step(state, batch, jax.random.key(i))
  stages["train"] = set(seen)
  seen.clear()
  (test,) = eval_batches(data.test, global_batch_size=128, value_range=family.value_range)
  sums = jax.jit(family.eval_step)(state, jax.tree.map(jnp.asarray, test))
  stages["eval"] = set(seen)
  assert len(set.union(*stages.values())) == 1, stages
  m = family.summarize({k: np.asarray(v) / 128 for k, v in sums.items()})
  assert np.isfinite(m["kl_sae"]) and m["kl_zero"] > 0


def test_kl_is_the_same_for_logits_of_shape_b_v_and_b_1_v():
  """A host returning (B, V) logits with (B, 1) token weights, and the same model returning
  (B, 1, V): every metric equal (the KLs broadcast to (B, B) once)."""
  host, data = _tiny_host_and_data(positions=1)
  flat = dataclasses.replace(
    host,
    inputs=lambda batch: (batch["image"][:, 0],),  # (B, 6) → logits (B, 3), activation (B, 8).
    token_loss=lambda logits, batch: (
      optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"][:, 0]),
      jnp.ones((batch["label"].shape[0], 1)),
    ),
  )
  results = []
  for h in (host, flat):
    family = _sae_family(host_and_data=(h, data))
    state, _ = _train(family, 5)
    results.append(_eval(family, state))
  assert results[0].keys() == results[1].keys()
  for name in results[0]:
    np.testing.assert_allclose(results[1][name], results[0][name], rtol=1e-5, err_msg=name)
  assert results[0]["kl_zero"] > 0 and results[0]["kl_sae"] > 0


def test_a_host_whose_output_is_a_structure_names_its_logits():
  host, data = _tiny_host_and_data()

  class Structured(nn.Module):
    @nn.compact
    def __call__(self, x):
      return {"logits": TinyHost(name="inner")(x), "extra": x.sum()}

  params = {"inner": host.params}
  wrapped = dataclasses.replace(
    host,
    model=Structured(),
    params=params,
    layer="inner/hidden",
    token_loss=lambda out, batch: host.token_loss(out["logits"], batch),
    logits=lambda out: out["logits"],
  )
  a, b = (
    _eval(f, _train(f, 5)[0])
    for f in (_sae_family(host_and_data=(h, data)) for h in (host, wrapped))
  )
  for name in ("kl_sae", "kl_zero", "loss_recovered", "explained_variance"):
    assert b[name] == pytest.approx(a[name], rel=1e-5), name


def test_what_is_not_a_usable_host_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
  from test_cli import assert_one_line_error, genlab_here

  (tmp_path / "bad_hosts.py").write_text(
    "import flax.linen as nn, jax, jax.numpy as jnp\n"
    "from genlab.models.activations import HostModel\n"
    "class TokenHost(nn.Module):\n"
    "  @nn.compact\n"
    "  def __call__(self, tokens):\n"
    "    return nn.Dense(4, name='out')(nn.Embed(256, 8, name='hidden')(tokens))\n"
    "def _host(model, layer='hidden'):\n"
    "  params = TokenHost().init(jax.random.key(0), jnp.ones((1, 4), jnp.int32))['params']\n"
    "  loss = lambda out, batch: (out[..., 0], jnp.ones(out.shape[:2]))\n"
    "  return HostModel(model, params, layer, lambda b: (b['image'],),\n"
    "                   lambda b: jnp.ones(b['image'].shape), loss)\n"
    "def not_a_host():\n  return TokenHost()\n"
    "def no_such_layer():\n  return _host(TokenHost(), 'hiden')\n"
    "def a_class():\n  return _host(TokenHost)\n"
  )
  monkeypatch.syspath_prepend(str(tmp_path))
  for factory, needle in (
    ("not_a_host", "returned a TokenHost, not a HostModel"),
    ("no_such_layer", "layer 'hiden': the model has no submodule at that path"),
    ("a_class", "HostModel.model is the class TokenHost"),
  ):
    proc = genlab_here(
      capsys,
      "train",
      "--config",
      str(EXPERIMENTS / "sae_pydoc_residual.py"),
      "--workdir",
      str(tmp_path / factory),
      "--config.sae.host_workdir=",
      f"--config.sae.host_factory=bad_hosts:{factory}",
      f"--config.data.data_dir={tmp_path / 'tfds'}",
    )
    assert_one_line_error(proc, needle)


def test_the_family_refuses_bad_settings():
  from genlab.errors import ConfigError

  with pytest.raises(ConfigError, match="exactly one of host_workdir and host_factory"):
    _sae_family(host_workdir="runs/x")
  with pytest.raises(ConfigError, match="activation SAEs take batchtopk, jumprelu, matry"):
    _sae_family("sigmoid")
  with pytest.raises(ConfigError, match=r"unknown SAE code config.model.code='top_k' \(did you"):
    _sae_family("top_k")
  with pytest.raises(ConfigError, match="needs a code that takes it .*code 'relu' does not"):
    _sae_family("relu", aux_k=4)
  with pytest.raises(ConfigError, match="with data.stream_train on, leave cache_dir empty"):
    _sae_family(stream=True, cache_dir="/nonexistent")
  for widths in ((), (8, 8), (12, 4), (0, 8), (8, 33)):
    with pytest.raises(ConfigError, match="matryoshka_widths=.* must be strictly increasing"):
      _sae_family("matryoshka_batchtopk", model={"matryoshka_widths": widths})
  for bad in ({"dead_after": 0}, {"resample_every": -1}, {"resample_encoder_scale": 0.0}):
    with pytest.raises(ConfigError, match="dead_after=.* must be positive, resample_every"):
      _sae_family("relu", **bad)


# The worked example, tiny: a language model, then an SAE on its residual stream ---------


def _lm_config(data_dir):
  from genlab import config as config_lib

  config = config_lib.load_experiment(EXPERIMENTS / "char_lm_pydoc.py")
  config.data.data_dir = data_dir
  config.mesh.devices = 1
  config.model.update(width=16, depth=2, heads=2)
  config.optimizer.update(learning_rate=1e-2, warmup_steps=0)
  config.eval_batch_size = 1024
  config.update(num_steps=30, log_every=10, eval_every=30, image_every=30, checkpoint_every=30)
  return config


def _sae_config(data_dir, host, **sae):
  from genlab import config as config_lib

  config = config_lib.load_experiment(EXPERIMENTS / "sae_pydoc_residual.py")
  config.data.data_dir = data_dir
  config.mesh.devices = 1
  config.model.update(code_dim=64, k=4)
  config.sae.update(host_workdir=str(host), layer="block_0", aux_k=8, **sae)
  config.update(num_steps=10, log_every=5, eval_every=10, image_every=10, checkpoint_every=10)
  return config


@pytest.fixture(scope="module")
def language_model(data_dir, tmp_path_factory):
  from genlab.run import train_and_evaluate

  workdir = tmp_path_factory.mktemp("char_lm")
  result = train_and_evaluate(_lm_config(data_dir), workdir)
  return workdir, result


@pytest.mark.slow
def test_the_language_model_learns_and_beats_the_unigram_baseline(language_model):
  from genlab.run import evaluate_workdir

  workdir, _ = language_model
  lines = [json.loads(x) for x in (workdir / "metrics.jsonl").open()]
  train = [m["train/loss"] for m in lines if "train/loss" in m]
  assert train[-1] < 0.9 * train[0]
  m = evaluate_workdir(workdir)["metrics"]
  assert m["cross_entropy"] < m["cross_entropy_unigram_baseline"]
  assert m["bits_per_token"] == pytest.approx(m["cross_entropy"] / np.log(2))
  assert (workdir / "images" / "continuations_step_000030.png").is_file()


def test_next_token_loss_matches_numpy():
  from genlab.families.language_model import next_token_loss

  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 5, 7)).astype(np.float32)
  tokens = np.array([[3, 1, 4, 1, 5], [2, 6, 0, 0, 0]])
  batch = {"image": jnp.asarray(tokens), "length": jnp.asarray([5, 2])}
  loss, weights = next_token_loss(jnp.asarray(logits), batch)
  log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  want = np.zeros((2, 5))
  for b, length in enumerate([5, 2]):
    for t in range(length - 1):
      want[b, t] = -log_p[b, t, tokens[b, t + 1]]
  np.testing.assert_allclose(loss, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(weights, want > 0)


@pytest.mark.slow
def test_an_sae_on_the_language_models_residual_stream_trains_and_reports_loss_recovered(
  language_model, data_dir, tmp_path
):
  from genlab.run import evaluate_workdir, resources, restore_workdir, train_and_evaluate

  host, _ = language_model
  cache = tmp_path / "cache"
  train_and_evaluate(_sae_config(data_dir, host, cache_dir=str(cache)), tmp_path / "sae")
  # The cache holds what the step would compute from the tokens (up to the last bits: the
  # cache is computed in batches of 512).
  (cached,) = list(cache.glob("*.npy"))
  s, state, _ = restore_workdir(tmp_path / "sae", provide=resources.provide)
  family = s.family
  tokens = {k: jnp.asarray(v[:8]) for k, v in family.dataset.train.items() if k != "activations"}
  np.testing.assert_allclose(
    np.load(cached, mmap_mode="r")[:8],
    family.host.capture(tokens, state.stats["host"])[1],
    rtol=1e-5,
    atol=1e-5,
  )
  report = evaluate_workdir(tmp_path / "sae")
  m, protocol = report["metrics"], report["protocol"]
  for name in ("fvu", "explained_variance", "l0", "dead_fraction", "dense_fraction", "kl_sae"):
    assert np.isfinite(m[name]), name
  assert min(m["loss_zero"], m["loss_sae"], m["loss_clean"]) > 0  # 10 steps: no quality bar.
  assert m["loss_recovered"] == pytest.approx(
    (m["loss_zero"] - m["loss_sae"]) / (m["loss_zero"] - m["loss_clean"])
  )
  assert protocol["layer"] == "block_0" and "checkpoint step 30" in protocol["host"]
  assert m["eval_positions"] > 2293 and protocol["normalize"] == "norm"
  assert (tmp_path / "sae" / "images" / "top_contexts_step_000010.png").is_file()
  assert (tmp_path / "sae" / "images" / "latent_density_step_000010.png").is_file()


def random_transformer_host():
  """A `sae.host_factory` for tests: an untrained CausalTransformer over pydoc_text's ids."""
  from genlab.families.language_model import next_token_loss
  from genlab.models.activations import HostModel
  from genlab.models.transformer import CausalTransformer

  model = CausalTransformer(vocab_size=96, max_length=32, width=16, depth=2, heads=2)
  params = model.init(jax.random.key(0), jnp.ones((1, 32), jnp.int32))["params"]
  return HostModel(
    model=model,
    params=params,
    layer="block_1",
    inputs=lambda batch: (batch["image"],),
    positions=lambda batch: (jnp.arange(32)[None, :] < batch["length"][:, None]).astype(
      jnp.float32
    ),
    token_loss=next_token_loss,
    description="an untrained CausalTransformer (tests)",
  )


@pytest.mark.slow
def test_a_host_factory_points_an_sae_at_any_flax_model():
  from genlab.errors import ConfigError, WorkdirError
  from genlab.models.activations import HostModel
  from genlab.run.resources import PROVIDERS

  build = PROVIDERS["host_model"]
  host = build(None, factory="test_activation_sae:random_transformer_host")
  assert isinstance(host, HostModel) and host.layer == "block_1"
  batch = {"image": jnp.ones((2, 32), jnp.int32), "length": jnp.array([32, 5])}
  chex.assert_shape(host.capture(batch)[1], (2, 32, 16))
  with pytest.raises(ConfigError, match="host_factory='nowhere:thing'"):
    build(None, factory="nowhere:thing")
  with pytest.raises(ConfigError, match="returned a tuple, not a HostModel"):
    build(None, factory="test_activation_sae:not_a_host")
  with pytest.raises(WorkdirError, match="does not exist: train the host there first"):
    build(None, workdir="runs/no_such_host")


def not_a_host():
  return ()


@pytest.mark.slow
def test_four_devices_match_one_device_with_the_host_split_too(language_model, data_dir):
  # BatchTopK's k·n largest are over the global batch, the AuxK counters count global
  # positions, resampling draws from the global batch, and with fsdp the host's params (in
  # the state's untrained part) are split.
  host, _ = language_model
  rows = compare_parallel(
    "sae_pydoc_residual.py",
    data_dir,
    f"--config.sae.host_workdir={host}",
    "--config.model.code_dim=1024",  # With 4·1,600 firings per batch, some die at once.
    "--config.model.k=4",
    "--config.sae.aux_k=8",
    "--config.sae.dead_after=1",
    "--config.sae.resample_every=2",
    steps=6,
    modes="fsdp",  # Batches split over the 4 devices, and the state (the host's too).
  )
  logs = rows["one"]["logs"]
  assert max(line["train/dead_latents"] for line in logs) > 0.5  # AuxK has dead latents.
  assert sum(line["train/resampled_latents"] for line in logs) > 0
  for mode in ("fsdp",):
    np.testing.assert_allclose(rows[mode]["losses"], rows["one"]["losses"], rtol=1e-4)
    assert rows[mode]["devices"] == 4
    assert rows[mode]["max_abs_param_diff_vs_1_device"] < 1e-5, rows[mode]
    assert rows[mode]["max_abs_stats_diff_vs_1_device"] < 1e-5, rows[mode]


@pytest.mark.slow
def test_an_sae_keeps_the_host_it_was_trained_with_when_the_host_trains_on(
  data_dir, tmp_path, capsys
):
  """Through the CLI: the host trains on after the SAE started; eval and resume of the SAE
  use the host checkpoint it was trained with (normalisation and all), and once the host
  workdir no longer holds it, one line says so.

  The commands run through `genlab.cli.main` in this process (nothing here is about the
  process boundary, and nine new processes would each spend seconds importing JAX): genlab
  keeps no host in memory between commands, so each reads the host workdir afresh."""
  from test_cli import assert_one_line_error, genlab_here

  def genlab(*args):
    return genlab_here(capsys, *args)

  host, sae, unbroken = tmp_path / "host", tmp_path / "sae", tmp_path / "unbroken"
  dd = f"--config.data.data_dir={data_dir}"
  periods = [f"--config.{p}_every=10" for p in ("log", "eval", "image", "checkpoint")]
  lm = ["train", "--config", str(EXPERIMENTS / "char_lm_pydoc.py"), "--workdir", str(host), dd]
  lm += ["--config.model.width=16", "--config.model.depth=2", "--config.model.heads=2", *periods]
  # _lm_config's model and optimizer: the programs the `language_model` fixture compiles.
  lm += ["--config.optimizer.warmup_steps=0", "--config.optimizer.learning_rate=1e-2"]
  lm += ["--config.eval_batch_size=1024"]

  def sae_train(workdir, steps):
    args = ["train", "--config", str(EXPERIMENTS / "sae_pydoc_residual.py"), dd, *periods]
    args += ["--workdir", str(workdir), f"--config.sae.host_workdir={host}"]
    args += ["--config.sae.layer=block_0", "--config.model.code_dim=64", "--config.model.k=4"]
    args += ["--config.sae.aux_k=8"]
    proc = genlab(*args, f"--config.num_steps={steps}")
    assert proc.returncode == 0, proc.stderr[-3000:]

  def evaluate():
    proc = genlab("eval", "--workdir", str(sae))
    report = json.loads((sae / "eval.json").read_text()) if proc.returncode == 0 else None
    return proc, report

  assert genlab(*lm, "--config.num_steps=20").returncode == 0
  sae_train(sae, 10)
  sae_train(unbroken, 20)
  _, before = evaluate()
  assert "checkpoint step 20" in before["protocol"]["host"]
  assert genlab(*lm, "--config.num_steps=30").returncode == 0  # The host trains on.
  _, after = evaluate()
  assert after["metrics"] == before["metrics"] and after["protocol"] == before["protocol"]
  sae_train(sae, 20)  # Resumed on the host it started with: as if never stopped.
  from genlab.run import resources, restore_workdir

  resumed, straight = (restore_workdir(w, provide=resources.provide)[1] for w in (sae, unbroken))
  chex.assert_trees_all_equal(resumed.params, straight.params)
  # Trained on with keep_checkpoints=1, the host workdir keeps only its newest checkpoint.
  assert genlab(*lm, "--config.num_steps=40", "--config.keep_checkpoints=1").returncode == 0
  gone, _ = evaluate()
  assert_one_line_error(gone, "trained on the host checkpoint of step 20", "no longer holds")


def test_aux_k_above_the_dictionary_is_refused_in_one_line():
  from genlab.errors import ConfigError

  with pytest.raises(ConfigError, match=r"config.sae.aux_k=33 must lie in 0..code_dim=32"):
    _sae_family(code="topk", aux_k=33)


def test_runs_sharing_an_activation_cache_each_get_it_whole(tmp_path):
  """Two builders of one cache at once (the second starts and finishes while the first is
  half-way): each writes a file of its own, so neither truncates nor loses the other's."""
  import threading

  halfway, go_on = threading.Event(), threading.Event()
  first = _sae_family(normalize="none")  # Built without a cache: only its capture is used.
  capture = first.source.capture

  def slow_capture(batch):
    out = capture(batch)
    if batch["image"].shape[0] == 512 and not halfway.is_set():  # After its first batch.
      halfway.set()
      go_on.wait(60)
    return out

  first.source.capture = slow_capture
  results = {}
  cache = first.source._cached_activations
  builder = threading.Thread(target=lambda: results.update(first=cache(str(tmp_path))))
  builder.start()
  assert halfway.wait(60)
  second = _sae_family(normalize="none", cache_dir=str(tmp_path))  # Builds it whole meanwhile.
  go_on.set()
  builder.join(60)
  expected = np.asarray(capture({k: jnp.asarray(v) for k, v in first.dataset.train.items()}))
  np.testing.assert_array_equal(results["first"], expected)
  np.testing.assert_array_equal(second.dataset.train["activations"], expected)
  assert [p.suffix for p in tmp_path.iterdir()].count(".npy") == 1, list(tmp_path.iterdir())


def test_a_cut_short_activation_cache_is_set_aside_and_computed_again(tmp_path, capfd):
  family = _sae_family(normalize="none", cache_dir=str(tmp_path))
  expected = np.array(family.dataset.train["activations"])
  (cache,) = tmp_path.glob("*.npy")
  cache.write_bytes(cache.read_bytes()[: cache.stat().st_size // 2])  # A copy that stopped.
  again = _sae_family(normalize="none", cache_dir=str(tmp_path))
  np.testing.assert_array_equal(again.dataset.train["activations"], expected)
  assert "cannot be used" in capfd.readouterr().err
  damaged = tmp_path / f"{cache.stem}.damaged.npy"
  assert damaged.stat().st_size < cache.stat().st_size  # Kept for inspection.
