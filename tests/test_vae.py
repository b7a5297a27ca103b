"""Variational autoencoders: KL, reparameterization, importance-sampled NLL (incl. exact PPCA)."""

from __future__ import annotations

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genlab import losses
from genlab.families.vae import importance_sampled_nll, lerp, slerp
from genlab.models.vae import VAE, reparameterize


def numpy_kl(mean, logvar):
  return 0.5 * np.sum(mean**2 + np.exp(logvar) - logvar - 1.0, axis=1)


def test_kl_matches_numpy_under_jit():
  rng = np.random.default_rng(0)
  mean, logvar = rng.normal(size=(5, 7)), rng.normal(size=(5, 7))
  got = jax.jit(losses.kl_to_standard_normal)(mean, logvar)
  chex.assert_shape(got, (5,))
  np.testing.assert_allclose(got, numpy_kl(mean, logvar), rtol=1e-5)
  per_dim = losses.kl_to_standard_normal_per_dim(mean, logvar)
  np.testing.assert_allclose(per_dim.sum(axis=1), got, rtol=1e-5)


def test_kl_matches_a_monte_carlo_estimate():
  mean, logvar = jnp.array([[0.7, -1.2, 0.1]]), jnp.array([[-0.5, 0.3, -2.0]])
  z = reparameterize(
    jax.random.key(1), jnp.broadcast_to(mean, (400_000, 3)), jnp.broadcast_to(logvar, (400_000, 3))
  )
  log_q = losses.gaussian_log_density(z, mean, logvar)
  log_p = losses.gaussian_log_density(z, 0.0, 0.0)
  samples = np.asarray(log_q - log_p)
  standard_error = samples.std() / np.sqrt(len(samples))
  exact = float(losses.kl_to_standard_normal(mean, logvar)[0])
  assert abs(samples.mean() - exact) < 4 * standard_error, (samples.mean(), exact, standard_error)


def test_reparameterize_has_the_right_moments_and_gradients():
  mean, logvar = jnp.array([1.5, -0.5]), jnp.array([0.4, -1.0])
  z = jax.vmap(lambda k: reparameterize(k, mean, logvar))(
    jax.random.split(jax.random.key(0), 200_000)
  )
  np.testing.assert_allclose(z.mean(axis=0), mean, atol=0.01)
  np.testing.assert_allclose(z.var(axis=0), np.exp(logvar), rtol=0.02)
  key = jax.random.key(3)
  eps = jax.random.normal(key, mean.shape)
  grad_mean, grad_logvar = jax.grad(
    lambda m, lv: jnp.sum(reparameterize(key, m, lv)), argnums=(0, 1)
  )(mean, logvar)
  np.testing.assert_allclose(grad_mean, np.ones(2), rtol=1e-6)
  np.testing.assert_allclose(grad_logvar, 0.5 * np.exp(0.5 * logvar) * eps, rtol=1e-5)
  # Same key, same draw; another key, another draw.
  chex.assert_trees_all_equal(reparameterize(key, mean, logvar), reparameterize(key, mean, logvar))
  assert not np.allclose(
    reparameterize(key, mean, logvar), reparameterize(jax.random.key(4), mean, logvar)
  )


def test_interpolations_start_and_end_at_the_endpoints():
  a, b, t = np.array([1.0, 0.0]), np.array([0.0, 2.0]), np.linspace(0, 1, 5)
  for path in (lerp, slerp):
    points = path(a, b, t)
    np.testing.assert_allclose(points[0], a, atol=1e-9)
    np.testing.assert_allclose(points[-1], b, atol=1e-9)
  # Spherical: the norm moves smoothly between |a| and |b| along the arc, not through the chord.
  mid = slerp(np.array([1.0, 0.0]), np.array([0.0, 1.0]), np.array([0.5]))[0]
  np.testing.assert_allclose(np.linalg.norm(mid), 1.0, rtol=1e-9)


def test_importance_sampled_nll_matches_the_exact_likelihood_of_probabilistic_pca():
  """A linear Gaussian VAE is probabilistic PCA: p(x) = N(b, A Aᵀ + σ² I) exactly."""
  D, K, sigma = 12, 3, 0.5
  rng = np.random.default_rng(0)
  A, b = rng.normal(size=(D, K)), rng.normal(size=D)
  model = VAE(
    output_shape=(D, 1, 1),
    latent_dim=K,
    hidden=(),
    likelihood="gaussian",
    gaussian_variance="fixed",
    gaussian_sigma=sigma,
  )
  # The exact posterior is N(M⁻¹Aᵀ(x − b), σ²M⁻¹) with M = AᵀA + σ²I; the encoder gets
  # its mean and the diagonal of its covariance, so q is close to, not equal to, p(z|x).
  M_inv = np.linalg.inv(A.T @ A + sigma**2 * np.eye(K))
  encoder = {
    "kernel": np.concatenate([A @ M_inv, np.zeros((D, K))], axis=1),
    "bias": np.concatenate([-b @ A @ M_inv, np.log(np.diag(sigma**2 * M_inv))]),
  }
  params = {"encoder": {"dense_0": encoder}, "decoder": {"dense_0": {"kernel": A.T, "bias": b}}}
  params = jax.tree.map(jnp.float32, params)
  x = rng.multivariate_normal(b, A @ A.T + sigma**2 * np.eye(D), size=16)
  nll = importance_sampled_nll(
    model,
    params,
    jnp.float32(x.reshape(16, D, 1, 1)),
    jax.random.split(jax.random.key(0), 16),
    num_samples=5000,
    log_likelihood=lambda d, xs: losses.gaussian_log_density(xs, d["mean"], d["logvar"]),
  )
  cov = A @ A.T + sigma**2 * np.eye(D)
  _, logdet = np.linalg.slogdet(cov)
  centred = x - b
  exact = 0.5 * (
    D * np.log(2 * np.pi) + logdet + np.sum(centred @ np.linalg.inv(cov) * centred, axis=1)
  )
  np.testing.assert_allclose(np.asarray(nll), exact, atol=0.1)
  assert abs(float(nll.mean()) - exact.mean()) < 0.1


@pytest.fixture(scope="module")
def trained_vae_workdir(tmp_path_factory, data_dir):
  """vae_digits, shortened: 1,500 steps, a smaller net; nll with k = 500."""
  from conftest import EXPERIMENTS
  from genlab import config as config_lib
  from genlab.run import evaluate_workdir, train_and_evaluate

  config = config_lib.load_experiment(EXPERIMENTS / "vae_digits.py")
  config.data.data_dir = data_dir
  config.update(
    num_steps=1500, log_every=500, eval_every=1500, image_every=1500, checkpoint_every=1500
  )
  config.model.hidden = (64,)
  config.vae.nll_k = 500
  workdir = tmp_path_factory.mktemp("vae")
  train_and_evaluate(config, workdir)
  evaluate_workdir(workdir)
  return workdir


@pytest.mark.slow
def test_trained_vae_reports_an_nll_below_its_neg_elbo_and_writes_every_view(trained_vae_workdir):
  report = json.loads((trained_vae_workdir / "eval.json").read_text())
  metrics = report["metrics"]
  assert report["protocol"]["nll_k"] == 500 and report["num_examples"] == 300
  assert metrics["nll"] <= metrics["neg_elbo"]
  np.testing.assert_allclose(
    metrics["neg_elbo"], metrics["reconstruction"] + metrics["kl"], rtol=1e-5
  )
  np.testing.assert_allclose(sum(metrics["kl_per_dim"]), metrics["kl"], rtol=1e-3)
  assert 1 <= metrics["active_units"] <= 8
  # Better than a model that ignores z and predicts each pixel's frequency.
  assert metrics["neg_elbo"] < 35.0
  names = {p.name.rsplit("_step_", 1)[0] for p in (trained_vae_workdir / "images").iterdir()}
  assert names == {
    "reconstruction",
    "samples",
    "interpolation_linear",
    "interpolation_spherical",
    "latent_cloud",
  }


@pytest.mark.slow  # Its workdir trains 1,500 steps (shared with the test above).
def test_genlab_sample_writes_a_grid(trained_vae_workdir, tmp_path):
  from PIL import Image

  from genlab.run import sample_workdir

  out = sample_workdir(trained_vae_workdir, num=10, out=tmp_path / "s.png", seed=3)
  image = np.asarray(Image.open(out))
  assert image.ndim == 3 and image.shape[2] == 3
  # 10 samples on a 4-wide grid: 3 rows of 64-pixel cells (8×8 enlarged) with 2-pixel gaps.
  assert image.shape[:2] == (3 * 66 + 2, 4 * 66 + 2)


def test_kl_warmup_and_dynamic_binarization(test_config, data_dir):
  from genlab.data import Batcher
  from genlab.families.vae import options as vae_options
  from genlab.run import setup

  config = test_config(family="vae")
  config.model = config.model.__class__({"name": "vae", "hidden": (16,), "latent_dim": 2})
  config.vae = vae_options(beta=2.0, kl_warmup_steps=100, binarize="dynamic")
  s = setup(config)
  assert float(s.family.beta(jnp.int32(0))) == 0.0
  assert float(s.family.beta(jnp.int32(50))) == pytest.approx(1.0)
  assert float(s.family.beta(jnp.int32(500))) == pytest.approx(2.0)
  batch = jax.tree.map(
    jnp.asarray, Batcher(s.dataset.train, global_batch_size=16, key=jax.random.key(0)).batch(0)
  )
  first = s.family.observe(batch, jax.random.key(0))
  assert set(np.unique(np.asarray(first))) <= {0.0, 1.0}
  chex.assert_trees_all_equal(first, s.family.observe(batch, jax.random.key(0)))
  assert not np.array_equal(first, s.family.observe(batch, jax.random.key(1)))


@pytest.mark.slow
def test_vae_mnist_experiment_runs_on_mock_binarized_mnist(tmp_path):
  """The flax-example experiment through TFDS by name (mocked: no network here)."""
  import tensorflow_datasets as tfds

  from conftest import EXPERIMENTS
  from genlab import config as config_lib
  from genlab.run import evaluate_workdir, train_and_evaluate

  config = config_lib.load_experiment(EXPERIMENTS / "vae_mnist.py")
  config.update(num_epochs=2, eval_batch_size=32, eval_every=1000, image_every=1000)
  config.vae.nll_k = 20
  with tfds.testing.mock_data(num_examples=256):
    result = train_and_evaluate(config, tmp_path)
    report = evaluate_workdir(tmp_path)
  assert result.step == 2 * (256 // 128)  # num_epochs sets the step budget.
  assert report["dataset"] == "binarized_mnist" and report["num_examples"] == 256
  assert report["metrics"]["nll"] <= report["metrics"]["neg_elbo"] + 1.0
  assert len(report["metrics"]["kl_per_dim"]) == 20


def test_importance_sampled_nll_does_not_depend_on_batch_or_chunking():
  """Sample s of an example is keyed by (example key, s): chunk sizes follow the batch size."""
  model = VAE(output_shape=(4, 4, 1), latent_dim=2, hidden=(8,))
  x = jax.random.bernoulli(jax.random.key(0), 0.5, (300, 4, 4, 1)).astype(jnp.float32)
  params = model.init(jax.random.key(1), x[:1], jax.random.split(jax.random.key(2), 1))["params"]
  keys = jax.random.split(jax.random.key(3), 300)

  def ll(d, xs):
    return losses.bernoulli_log_likelihood(d["logits"], xs)

  big = importance_sampled_nll(model, params, x, keys, num_samples=200, log_likelihood=ll)
  small = importance_sampled_nll(
    model, params, x[:75], keys[:75], num_samples=200, log_likelihood=ll
  )
  np.testing.assert_allclose(small, big[:75], rtol=1e-5)


def numpy_mlp(layers, h):
  """genlab's MLP in float64: Dense layers in order, ReLU between them, none after the last."""
  names = sorted(layers, key=lambda name: int(name.split("_")[1]))
  for i, name in enumerate(names):
    h = h @ np.float64(layers[name]["kernel"]) + np.float64(layers[name]["bias"])
    if i < len(names) - 1:
      h = np.maximum(h, 0.0)
  return h


@pytest.mark.parametrize("conditional", [False, True])
def test_importance_sampled_nll_equals_a_plain_numpy_importance_sampler(conditional):
  """The on-device sampler (chunked scan, running log-sum-exp, float32) against the textbook
  estimator in float64 NumPy: −log (1/k) Σ_s p(x|z_s) p(z_s) / q(z_s|x), on the same draws;
  and, for a conditional VAE, −log p(x|y) with the one-hot y beside x and beside z."""
  classes = 3 if conditional else None
  model = VAE(output_shape=(4, 4, 1), latent_dim=3, hidden=(16,), num_classes=classes)
  n, k, latent = 6, 300, 3
  x = jax.random.bernoulli(jax.random.key(0), 0.4, (n, 4, 4, 1)).astype(jnp.float32)
  labels = jnp.array([0, 1, 2, 2, 1, 0]) if conditional else None
  params = model.init(
    jax.random.key(1),
    x[:1],
    jax.random.split(jax.random.key(2), 1),
    None if labels is None else labels[:1],
  )["params"]
  keys = jax.random.split(jax.random.key(3), n)
  got = importance_sampled_nll(
    model,
    params,
    x,
    keys,
    num_samples=k,
    log_likelihood=lambda d, xs: losses.bernoulli_log_likelihood(d["logits"], xs),
    labels=labels,
  )

  # The sampler's documented draws: sample s of example b is N(0, I) from fold_in(keys[b], s).
  draw = lambda kb, s: jax.random.normal(jax.random.fold_in(kb, s), (latent,))  # noqa: E731
  eps = np.float64(jax.vmap(lambda kb: jax.vmap(lambda s: draw(kb, s))(jnp.arange(k)))(keys))
  xs = np.asarray(x, np.float64).reshape(n, -1)
  y = np.eye(3)[np.asarray(labels)] if conditional else np.zeros((n, 0))
  h = numpy_mlp(params["encoder"], np.concatenate([xs, y], axis=1))
  mean, logvar = h[:, :latent], h[:, latent:]
  z = mean[:, None] + np.exp(0.5 * logvar)[:, None] * eps
  y_rows = np.repeat(y, k, axis=0)
  decoder_in = np.concatenate([z.reshape(n * k, latent), y_rows], axis=1)
  logits = numpy_mlp(params["decoder"], decoder_in).reshape(n, k, -1)
  log_px = np.sum(xs[:, None] * logits - np.logaddexp(0.0, logits), axis=-1)
  log_pz = -0.5 * np.sum(z**2 + np.log(2 * np.pi), axis=-1)
  log_qz = -0.5 * np.sum(eps**2 + logvar[:, None] + np.log(2 * np.pi), axis=-1)
  log_w = log_px + log_pz - log_qz
  top = log_w.max(axis=1)
  expected = -(top + np.log(np.mean(np.exp(log_w - top[:, None]), axis=1)))

  # The reference decoder is the model's: checked, so a mismatch below is the sampler's.
  first_labels = None if labels is None else jnp.full((k,), labels[0])
  decoded = model.apply({"params": params}, jnp.float32(z[0]), first_labels, method=VAE.decode)[
    "logits"
  ]
  np.testing.assert_allclose(np.asarray(decoded).reshape(k, -1), logits[0], atol=1e-4)
  chex.assert_shape(got, (n,))
  np.testing.assert_allclose(np.asarray(got, np.float64), expected, atol=0.05)
  assert np.max(np.abs(np.asarray(got, np.float64) - expected)) < 1e-3  # float32 rounding only


def test_a_conditional_vae_refuses_missing_labels_in_one_line_and_uses_them():
  model = VAE(output_shape=(4, 4, 1), latent_dim=2, hidden=(8,), num_classes=10)
  x = jnp.ones((3, 4, 4, 1))
  keys = jax.random.split(jax.random.key(0), 3)
  with pytest.raises(ValueError, match=r"needs one integer label per example: shape \(3,\)"):
    model.init(jax.random.key(1), x, keys)
  params = model.init(jax.random.key(1), x, keys, jnp.array([0, 1, 2]))["params"]
  z = jnp.zeros((2, 2))
  a = model.apply({"params": params}, z, jnp.array([3, 3]), method=VAE.decode)["logits"]
  b = model.apply({"params": params}, z, jnp.array([4, 4]), method=VAE.decode)["logits"]
  assert not np.allclose(a, b)  # The same z decodes differently given another class.


def _vae_setup(test_config, **vae_overrides):
  from genlab.data import Batcher
  from genlab.families.vae import options as vae_options
  from genlab.run import setup

  config = test_config(family="vae")
  config.model = config.model.__class__({"name": "vae", "hidden": (16,), "latent_dim": 3})
  config.vae = vae_options(binarize="dynamic", **vae_overrides)
  s = setup(config)
  batch = Batcher(s.dataset.train, global_batch_size=64, key=jax.random.key(0)).batch(0)
  return s, jax.tree.map(jnp.asarray, batch)


@pytest.mark.slow
def test_iwae_with_one_sample_is_the_elbo_objective(test_config):
  elbo, batch = _vae_setup(test_config, objective="elbo")
  iwae, _ = _vae_setup(test_config, objective="iwae", train_k=1)
  key = jax.random.key(4)
  new_elbo, _ = jax.jit(elbo.family.train_step)(elbo.initial_state, batch, key)
  new_iwae, _ = jax.jit(iwae.family.train_step)(iwae.initial_state, batch, key)
  chex.assert_trees_all_equal(new_iwae.params, new_elbo.params)


@pytest.mark.slow
def test_iwae_bound_is_the_log_mean_weight_of_its_samples_and_at_least_their_elbo(test_config):
  """L_k = log (1/k) Σ w_i over the step's own samples ≥ (1/k) Σ log w_i, their ELBO
  (Jensen), on the same batch and keys; and it tightens with k."""
  s, batch = _vae_setup(test_config, objective="iwae", train_k=8)
  family, params, key = s.family, s.initial_state.params["model"], jax.random.key(9)
  bound = np.asarray(family.iwae_bound(params, batch, key, 8), np.float64)
  # The same samples by hand: sample i of an example is N(0, I) from fold_in(its key, i).
  from genlab.core import example_keys, stream_key

  x = family.observe(batch, key)
  keys = example_keys(stream_key(key, "z"), batch["index"])
  mean, logvar = family.posterior(params, x)
  eps = jax.vmap(
    lambda k: jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(k, i), (3,)))(jnp.arange(8))
  )(keys)
  z = mean[:, None] + jnp.exp(0.5 * logvar)[:, None] * eps
  decoded = family.model.apply({"params": params}, z.reshape(-1, 3), method=VAE.decode)
  x_rep = jnp.repeat(x, 8, axis=0)
  log_px = family.log_likelihood(decoded, x_rep).reshape(-1, 8)
  log_pz = -0.5 * jnp.sum(z**2 + losses.LOG_2PI, axis=-1)
  log_qz = -0.5 * jnp.sum(eps**2 + logvar[:, None] + losses.LOG_2PI, axis=-1)
  log_w = np.asarray(log_px + log_pz - log_qz, np.float64)
  top = log_w.max(axis=1, keepdims=True)
  np.testing.assert_allclose(bound, top[:, 0] + np.log(np.exp(log_w - top).mean(axis=1)), atol=1e-4)
  assert np.all(bound >= log_w.mean(axis=1) - 1e-4)
  assert np.all(bound > log_w.mean(axis=1) + 1e-3)  # Strictly, where the weights differ.
  # Averaged over the batch, more samples give a tighter (higher) bound.
  more = np.asarray(family.iwae_bound(params, batch, key, 64))
  assert more.mean() > bound.mean()


@pytest.mark.slow
def test_an_iwae_run_trains_and_reports_its_protocol(test_config, tmp_path):
  from genlab.run import evaluate_workdir, train_and_evaluate

  config = test_config(family="vae", num_steps=200, eval_every=200, image_every=200)
  config.model = config.model.__class__({"name": "vae", "hidden": (32,), "latent_dim": 4})
  from genlab.families.vae import options as vae_options

  config.vae = vae_options(binarize="dynamic", objective="iwae", train_k=5, nll_k=50)
  train_and_evaluate(config, tmp_path)
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  losses_logged = [r["train/neg_iwae_bound"] for r in rows if "train/neg_iwae_bound" in r]
  assert len(losses_logged) >= 2 and losses_logged[-1] < losses_logged[0]
  report = evaluate_workdir(tmp_path)
  assert report["protocol"]["objective"] == "iwae" and report["protocol"]["train_k"] == 5
  assert report["metrics"]["nll"] <= report["metrics"]["neg_elbo"]
  assert report["metrics"]["neg_elbo"] < 35.0  # Below a model that ignores z (test above).


@pytest.mark.slow
def test_iwae_mnist_experiment_runs_on_mock_mnist(tmp_path):
  """The IWAE paper's model through TFDS `mnist` by name (mocked: no network here)."""
  import tensorflow_datasets as tfds

  from conftest import EXPERIMENTS
  from genlab import config as config_lib
  from genlab.run import evaluate_workdir, train_and_evaluate

  config = config_lib.load_experiment(EXPERIMENTS / "iwae_mnist.py")
  config.update(num_epochs=1, eval_batch_size=32, log_every=1, eval_every=1000)
  config.update(image_every=1000, checkpoint_every=1000)
  config.vae.nll_k = 20
  with tfds.testing.mock_data(num_examples=200):
    result = train_and_evaluate(config, tmp_path)
    report = evaluate_workdir(tmp_path)
  assert result.step == 200 // 20
  assert report["protocol"]["objective"] == "iwae" and report["protocol"]["train_k"] == 50
  m = report["metrics"]
  assert len(m["kl_per_dim"]) == 50
  # The KL is the sum of its per-dimension parts; the k = 20 importance-sampled NLL is at
  # most the one-sample bound (the IWAE bound grows with k), and the ELBO splits exactly.
  rounding = 0.5e-5 * len(m["kl_per_dim"])  # kl_per_dim is reported to 5 decimals.
  assert sum(m["kl_per_dim"]) == pytest.approx(m["kl"], rel=1e-5, abs=rounding)
  assert m["neg_elbo"] == pytest.approx(m["reconstruction"] + m["kl"], rel=1e-6)
  assert 0 < m["nll"] <= m["neg_elbo"], m


@pytest.mark.slow
def test_a_conditional_vae_run_reports_and_samples_by_class(test_config, tmp_path):
  from genlab.families.vae import options as vae_options
  from genlab.run import evaluate_workdir, setup, train_and_evaluate

  config = test_config(family="vae", num_steps=100, eval_every=100, image_every=100)
  config.model = config.model.__class__({"name": "vae", "hidden": (32,), "latent_dim": 4})
  config.vae = vae_options(binarize="dynamic", conditional=True, nll_k=50)
  train_and_evaluate(config, tmp_path)
  report = evaluate_workdir(tmp_path)
  assert report["protocol"]["conditional_on"] == "label"
  assert report["metrics"]["nll"] <= report["metrics"]["neg_elbo"]
  assert (tmp_path / "images" / "samples_step_000100.png").is_file()
  family = setup(config).family
  np.testing.assert_array_equal(family.sample_labels(12), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1])
