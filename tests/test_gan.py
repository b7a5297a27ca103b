"""GANs: losses against NumPy, the two keyed steps, Fréchet distance, and the digits experiment."""

from __future__ import annotations

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genlab import losses, metrics


def np_softplus(x):
  return np.logaddexp(0.0, x)


LOGITS = np.array([-30.0, -3.0, -0.5, 0.0, 0.7, 4.0, 30.0], np.float32)


def test_discriminator_loss_matches_numpy():
  real, fake = LOGITS, LOGITS[::-1].copy()
  got = jax.jit(losses.discriminator_loss)(real, fake)
  # −[log D(x) + log(1 − D(G(z)))], from probabilities where float64 holds them exactly ...
  moderate = np.abs(real) <= 5
  d_real, d_fake = (
    1 / (1 + np.exp(-real.astype(np.float64))),
    1 / (1 + np.exp(-fake.astype(np.float64))),
  )
  naive = -(np.log(d_real) + np.log1p(-d_fake))
  np.testing.assert_allclose(got[moderate], naive[moderate], rtol=1e-5)
  # ... and from logits with NumPy's logaddexp everywhere (±30 included).
  np.testing.assert_allclose(got, np_softplus(-real) + np_softplus(fake), rtol=1e-6)
  hinge = np.maximum(0, 1 - real) + np.maximum(0, 1 + fake)
  np.testing.assert_allclose(losses.discriminator_hinge_loss(real, fake), hinge, rtol=1e-6)


def test_generator_losses_match_numpy_saturating_and_not():
  d = 1 / (1 + np.exp(-LOGITS.astype(np.float64)))
  moderate = np.abs(LOGITS) <= 5
  minimax = jax.jit(lambda x: losses.generator_loss(x, kind="minimax"))(LOGITS)
  np.testing.assert_allclose(minimax[moderate], np.log1p(-d)[moderate], rtol=1e-5)  # log(1 − D)
  np.testing.assert_allclose(minimax, -np_softplus(LOGITS), rtol=1e-6)
  non_saturating = losses.generator_loss(LOGITS)  # The default.
  np.testing.assert_allclose(non_saturating[moderate], -np.log(d)[moderate], rtol=1e-5)  # −log D
  np.testing.assert_allclose(non_saturating, np_softplus(-LOGITS), rtol=1e-6)
  np.testing.assert_allclose(losses.generator_loss(LOGITS, kind="hinge"), -LOGITS)
  # Why non-saturating is the default: when D rejects fakes (logit −30), the minimax gradient
  # vanishes while the non-saturating one does not.
  grad_mm = jax.grad(lambda x: losses.generator_loss(x, kind="minimax"))(-30.0)
  grad_ns = jax.grad(lambda x: losses.generator_loss(x))(-30.0)
  assert abs(grad_mm) < 1e-12 and abs(grad_ns) > 0.99
  assert all(np.isfinite(np.asarray(losses.discriminator_loss(LOGITS * 100, LOGITS * 100))))


@pytest.fixture(scope="module")
def gan(data_dir):
  from conftest import EXPERIMENTS
  from genlab import config as config_lib
  from genlab.data import Batcher
  from genlab.run import setup

  config = config_lib.load_experiment(EXPERIMENTS / "gan_digits.py")
  config.data.data_dir = data_dir
  config.model.generator.hidden = (32,)
  config.model.discriminator.hidden = (32,)
  s = setup(config)
  batch = Batcher(
    s.dataset.train, global_batch_size=16, key=jax.random.key(0), value_range=(-1.0, 1.0)
  ).batch(0)
  return s, jax.tree.map(jnp.asarray, batch)


def test_each_step_updates_only_its_own_network(gan):
  s, batch = gan
  state = s.initial_state
  after_d, m = jax.jit(lambda st, b, k: s.family.discriminator_step(st, b, k))(
    state, batch, jax.random.key(0)
  )
  chex.assert_trees_all_equal(after_d.params["generator"], state.params["generator"])
  chex.assert_trees_all_equal(after_d.opt_state["generator"], state.opt_state["generator"])
  assert not np.allclose(
    after_d.params["discriminator"]["MLP_0"]["dense_0"]["kernel"],
    state.params["discriminator"]["MLP_0"]["dense_0"]["kernel"],
  )
  assert 0.0 < float(m["d_real"]) < 1.0 and 0.0 < float(m["d_fake"]) < 1.0

  after_g, _ = jax.jit(lambda st, k, i: s.family.generator_step(st, k, i))(
    state, jax.random.key(1), batch["index"]
  )
  chex.assert_trees_all_equal(after_g.params["discriminator"], state.params["discriminator"])
  chex.assert_trees_all_equal(after_g.opt_state["discriminator"], state.opt_state["discriminator"])
  assert not np.allclose(
    after_g.params["generator"]["MLP_0"]["dense_0"]["kernel"],
    state.params["generator"]["MLP_0"]["dense_0"]["kernel"],
  )


def _penalty_setup(kernels="flax", dtype=jnp.float32, activation="leaky_relu"):
  from genlab.models import Discriminator

  d = Discriminator(
    architecture="mlp", hidden=(16, 16), activation=activation, kernels=kernels, dtype=dtype
  )
  rng = np.random.default_rng(0)
  real = jnp.float32(rng.uniform(-1, 1, (6, 4, 4, 1)))
  fake = jnp.float32(rng.uniform(-1, 1, (6, 4, 4, 1)))
  mix = jnp.float32(rng.uniform(0, 1, 6))
  params = d.init(jax.random.key(0), real)["params"]

  def penalties(p):
    critic = lambda x: d.apply({"params": p}, x)  # noqa: E731
    return {
      "gp": losses.wgan_gradient_penalty(critic, real, fake, mix),
      "r1": losses.r1_penalty(critic, real),
    }

  return d, params, real, fake, mix, penalties


def _central_differences(f, x, h):
  """∂f/∂x by central differences, f: (D,) → scalar, in float64 arithmetic on f's values."""
  grad = np.zeros(x.size)
  for i in range(x.size):
    step = np.zeros(x.size, np.float32)
    step[i] = h
    grad[i] = (float(f(x + step.reshape(x.shape))) - float(f(x - step.reshape(x.shape)))) / (2 * h)
  return grad


@pytest.mark.slow
def test_gradient_penalties_match_finite_differences():
  """Both penalties from input gradients taken by central differences, and their own
  gradients with respect to the parameters (second order) against central differences
  along that gradient; float32, rtol 1e-3. A smooth critic (tanh), so that the
  differences see no kink of a leaky ReLU."""
  d, params, real, fake, mix, penalties = _penalty_setup(activation="tanh")
  got = penalties(params)
  critic = lambda x: d.apply({"params": params}, x[None])[0]  # noqa: E731
  gp, r1 = [], []
  for i in range(len(real)):
    hat = mix[i] * real[i] + (1 - mix[i]) * fake[i]
    gp.append((np.linalg.norm(_central_differences(critic, hat, 3e-3)) - 1.0) ** 2)
    r1.append(np.sum(_central_differences(critic, real[i], 3e-3) ** 2))
  np.testing.assert_allclose(got["gp"], gp, rtol=1e-3)
  np.testing.assert_allclose(got["r1"], r1, rtol=1e-3)

  for name in ("gp", "r1"):

    def total(p, name=name):
      return jnp.mean(penalties(p)[name])

    # Along the gradient's own direction, where the derivative is largest (‖g‖) and the
    # differences are best conditioned in float32.
    grads = jax.grad(total)(params)
    norm = np.sqrt(sum(float(jnp.sum(g**2)) for g in jax.tree.leaves(grads)))
    direction = jax.tree.map(lambda g, norm=norm: g / norm, grads)

    def shifted(sign, total=total, direction=direction, h=1e-2):
      return float(total(jax.tree.map(lambda p, v: p + sign * h * v, params, direction)))

    numeric = (shifted(1.0) - shifted(-1.0)) / (2 * 1e-2)
    np.testing.assert_allclose(norm, numeric, rtol=1e-3, err_msg=name)


@pytest.mark.slow
def test_gradient_penalties_through_genlabs_bf16_layers():
  """The XLA:CPU kernels in bf16 give the penalties and their parameter gradients (second
  order) close to float32's, nonzero and finite."""
  _, params, *_, f32 = _penalty_setup(kernels="xla_cpu", dtype=jnp.float32)
  _, _, *_, bf16 = _penalty_setup(kernels="xla_cpu", dtype=jnp.bfloat16)
  for name in ("gp", "r1"):
    g32 = jax.grad(lambda p, name=name: jnp.mean(f32(p)[name]))(params)
    g16 = jax.grad(lambda p, name=name: jnp.mean(bf16(p)[name]))(params)
    for a, b in zip(jax.tree.leaves(g32), jax.tree.leaves(g16), strict=True):
      # (The last layer's bias moves no input gradient: its penalty gradient is 0 in both.)
      assert np.all(np.isfinite(b)) and np.any(b != 0) == np.any(a != 0), name
      assert np.linalg.norm(np.asarray(b) - np.asarray(a)) <= 0.05 * np.linalg.norm(a), name


@pytest.mark.parametrize(
  "generator_loss, penalty", [("wasserstein", "gp"), ("non_saturating", "r1")]
)
def test_wgan_gp_and_r1_discriminator_steps(generator_loss, penalty, data_dir):
  from conftest import EXPERIMENTS
  from genlab import config as config_lib
  from genlab.data import Batcher
  from genlab.run import setup

  config = config_lib.load_experiment(EXPERIMENTS / "gan_digits.py")
  config.data.data_dir = data_dir
  config.model.generator.hidden = (32,)
  config.model.discriminator.hidden = (32,)
  config.gan.update(generator_loss=generator_loss, penalty=penalty)
  s = setup(config)
  batch = Batcher(
    s.dataset.train, global_batch_size=16, key=jax.random.key(0), value_range=(-1.0, 1.0)
  ).batch(0)
  batch = jax.tree.map(jnp.asarray, batch)
  step = jax.jit(s.family.train_step)
  state, m = step(s.initial_state, batch, jax.random.key(0))
  assert float(m["d_penalty"]) > 0 and np.isfinite(float(m["d_loss"]))
  # Keyed: the same step from the same key repeats, bit for bit.
  again, m2 = step(s.initial_state, batch, jax.random.key(0))
  chex.assert_trees_all_equal(state.params, again.params)
  assert float(m2["d_penalty"]) == float(m["d_penalty"])


def test_latents_are_keyed_per_example(gan):
  s, _ = gan
  index = jnp.arange(8)
  z = s.family.latents(jax.random.key(0), index)
  chex.assert_shape(z, (8, s.family.latent_dim))
  chex.assert_trees_all_equal(z, s.family.latents(jax.random.key(0), index))
  assert not np.allclose(z, s.family.latents(jax.random.key(1), index))
  # Example 5's z does not depend on which other examples share its batch (or device).
  chex.assert_trees_all_close(s.family.latents(jax.random.key(0), index[4:])[1], z[5])


def test_frechet_distance_is_zero_on_itself_and_matches_the_gaussian_closed_form():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(500, 6)) @ rng.normal(size=(6, 6))
  assert abs(metrics.frechet_distance_of(x, x)) < 1e-8
  # Diagonal gaussians: ‖μ1 − μ2‖² + Σ (σ1 − σ2)².
  mu1, mu2 = rng.normal(size=4), rng.normal(size=4)
  s1, s2 = rng.uniform(0.5, 2, size=4), rng.uniform(0.5, 2, size=4)
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((s1 - s2) ** 2)
  got = metrics.frechet_distance(mu1, np.diag(s1**2), mu2, np.diag(s2**2))
  np.testing.assert_allclose(got, expected, rtol=1e-9)
  # Full covariances against scipy's matrix square root.
  import scipy.linalg

  a, b = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
  c1, c2 = a @ a.T + np.eye(5), b @ b.T + np.eye(5)
  reference = np.sum((mu1[:1] - mu2[:1]) ** 2) + np.trace(
    c1 + c2 - 2 * scipy.linalg.sqrtm(c1 @ c2).real
  )
  np.testing.assert_allclose(
    metrics.frechet_distance(np.r_[mu1[:1], np.zeros(4)], c1, np.r_[mu2[:1], np.zeros(4)], c2),
    reference,
    rtol=1e-6,
  )


def test_classifier_score_and_class_entropy_extremes():
  balanced = np.eye(10)[np.arange(1000) % 10]
  np.testing.assert_allclose(metrics.classifier_score(balanced), 10.0, rtol=1e-6)
  np.testing.assert_allclose(metrics.class_histogram_entropy(balanced), np.log(10), rtol=1e-9)
  collapsed = np.eye(10)[np.zeros(1000, int)]
  np.testing.assert_allclose(metrics.classifier_score(collapsed), 1.0, rtol=1e-6)
  assert metrics.class_histogram_entropy(collapsed) == 0.0


def _naive_prdc(real, fake, k):
  """The four metrics from their definitions, by brute force."""
  d_rr = np.linalg.norm(real[:, None] - real[None], axis=-1)
  d_ff = np.linalg.norm(fake[:, None] - fake[None], axis=-1)
  d_rf = np.linalg.norm(real[:, None] - fake[None], axis=-1)
  r_real = np.sort(d_rr, axis=1)[:, k]  # Column 0 is the point itself.
  r_fake = np.sort(d_ff, axis=1)[:, k]
  inside = d_rf <= r_real[:, None]  # inside[i, j]: fake j in real i's ball.
  return {
    "precision": inside.any(axis=0).mean(),
    "recall": (d_rf <= r_fake[None, :]).any(axis=1).mean(),
    "density": inside.sum(axis=0).mean() / k,
    "coverage": inside.any(axis=1).mean(),
  }


def _clusters(rng, n, classes, dim=8):
  centres = np.random.default_rng(123).normal(0, 4, (10, dim))
  return centres[classes] + rng.normal(size=(n, dim))


def test_precision_recall_density_coverage_against_their_definitions():
  rng = np.random.default_rng(0)
  real = _clusters(rng, 300, rng.integers(0, 10, 300))
  fake = _clusters(rng, 200, rng.integers(0, 5, 200)) + 0.5
  for k in (1, 3, 5):
    got = metrics.precision_recall_density_coverage(real, fake, k=k)
    expected = _naive_prdc(real, fake, k)
    for name in expected:
      np.testing.assert_allclose(got[name], expected[name], rtol=1e-12, err_msg=f"{name} k={k}")


@pytest.mark.slow
def test_precision_and_recall_of_real_against_real_and_of_a_collapsed_generator():
  rng = np.random.default_rng(1)
  train = _clusters(rng, 3000, rng.integers(0, 10, 3000))
  test = _clusters(rng, 1000, rng.integers(0, 10, 1000))
  same = metrics.precision_recall_density_coverage(train, test, k=5)
  assert same["precision"] >= 0.9 and same["recall"] >= 0.9, same
  # 1,000 samples cannot reach every one of 3,000 real balls; density stays near 1.
  assert same["coverage"] > 0.6 and 0.8 < same["density"] < 1.2, same
  collapsed = _clusters(rng, 1000, np.zeros(1000, int))  # Every sample from one class.
  one_class = metrics.precision_recall_density_coverage(train, collapsed, k=5)
  assert one_class["precision"] >= 0.9, one_class  # Realistic samples...
  assert one_class["recall"] < 0.2 and one_class["coverage"] < 0.2, one_class  # ...of one mode.


@pytest.mark.slow
def test_dcgan_digits_fd_falls_below_half_its_start(data_dir, tmp_path, capsys):
  """The experiment for its first 400 steps: FD at step 0 vs 400, log lines naming d_loss
  and g_loss; then genlab eval and genlab sample (each command run by genlab.cli in this
  process: a new process would spend seconds importing JAX, and none of this is about one)."""
  from test_cli import genlab_here

  def genlab(*args):
    return genlab_here(capsys, *args)

  from conftest import EXPERIMENTS

  workdir = tmp_path / "run"
  proc = genlab(
    "train",
    "--config",
    str(EXPERIMENTS / "dcgan_digits.py"),
    "--workdir",
    str(workdir),
    f"--config.data.data_dir={data_dir}",
    # 400 of the shipped 1,500 steps, FD at the start and the end (measured on 2 AMD EPYC
    # cores: 1,773 at step 0, 1,107 at 100, 705 at 300, 628 at 400, 200 at 750).
    "--config.num_steps=400",
    "--config.eval_every=400",
    "--config.image_every=200",
    "--config.checkpoint_every=400",
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = [json.loads(line) for line in (workdir / "metrics.jsonl").open()]
  fd = {m["step"]: m["test/fd"] for m in lines if "test/fd" in m}
  assert fd[0] > 0 and fd[400] < 0.5 * fd[0], fd
  # The log names the two objectives; a GAN has no combined `loss` to report.
  assert "step 200: train d_loss " in proc.stdout and ", g_loss " in proc.stdout
  train = [m for m in lines if "train/d_loss" in m]
  assert train and all("train/loss" not in m for m in train)
  assert len([p for p in (workdir / "images").iterdir() if p.name.startswith("samples_")]) >= 3

  assert genlab("eval", "--workdir", str(workdir)).returncode == 0
  report = json.loads((workdir / "eval.json").read_text())
  m, protocol = report["metrics"], report["protocol"]
  assert {"fd", "fd_floor", "cs", "class_entropy", "d_real", "d_fake"} <= set(m)
  assert all(0.0 <= m[name] <= 1.0 for name in ("precision", "recall", "coverage"))
  assert m["density"] >= 0.0 and protocol["prdc_k"] == 5
  # Real test images against real train images: near 1, the reference the samples approach.
  assert m["precision_floor"] >= 0.9 and m["recall_floor"] >= 0.9, m
  assert m["fd_floor"] < m["fd"] < 0.5 * fd[0]
  assert protocol["fd_n_real"] == 1497 and protocol["fd_n_fake"] == 1497
  assert protocol["feature_network_test_accuracy"] > 0.9
  assert (
    genlab(
      "sample", "--workdir", str(workdir), "--num", "16", "--out", str(tmp_path / "s.png")
    ).returncode
    == 0
  )
  assert (tmp_path / "s.png").stat().st_size > 0


@pytest.mark.slow
def test_dcgan_mnist_runs_on_mock_tfds(tmp_path):
  import tensorflow_datasets as tfds

  from conftest import EXPERIMENTS
  from genlab import config as config_lib
  from genlab.run import evaluate_workdir, train_and_evaluate

  config = config_lib.load_experiment(EXPERIMENTS / "dcgan_mnist.py")
  config.update(
    num_steps=2, batch_size=16, eval_batch_size=16, eval_every=2, image_every=2, checkpoint_every=2
  )
  config.sample_metrics.update(fd_n_real=32, feature_net_steps=5)
  with tfds.testing.mock_data(num_examples=64):
    train_and_evaluate(config, tmp_path)
    report = evaluate_workdir(tmp_path)
  m = report["metrics"]
  assert report["dataset"] == "mnist" and report["protocol"]["fd_n_real"] == 32
  # Two steps in, the samples are far from the data: further than the test images are.
  assert m["fd"] > m["fd_floor"] >= 0, m
  # The bounds of each statistic's definition (10 classes): a formula gone wrong leaves them.
  assert 1.0 <= m["cs"] <= 10.0 and 0.0 <= m["class_entropy"] <= np.log(10) + 1e-6, m
  for name in ("precision", "recall", "density", "coverage"):
    assert m[name] >= 0 and (name == "density" or m[name] <= 1), (name, m)
  assert 0 < m["d_real"] < 1 and 0 < m["d_fake"] < 1, m


@pytest.mark.slow
def test_spectral_norm_divides_each_kernel_by_its_largest_singular_value():
  from genlab.models import Discriminator

  x = jnp.float32(np.random.default_rng(0).uniform(-1, 1, (4, 4, 4, 1)))
  sn = Discriminator(architecture="mlp", hidden=(12, 8), spectral_norm=True)
  variables = sn.init(jax.random.key(0), x)
  for _ in range(200):  # Power iteration, one step per call, as in training.
    _, updated = sn.apply(variables, x, update_stats=True, mutable=["batch_stats"])
    variables = {**variables, **updated}
  plain_params = {"MLP_0": {}}
  for i in range(3):
    kernel = np.asarray(variables["params"]["MLP_0"][f"dense_{i}"]["kernel"], np.float64)
    sigma = float(
      variables["batch_stats"]["MLP_0"][f"spectral_norm_{i}"][f"dense_{i}/kernel/sigma"]
    )
    np.testing.assert_allclose(sigma, np.linalg.svd(kernel, compute_uv=False)[0], rtol=1e-3)
    plain_params["MLP_0"][f"dense_{i}"] = {
      "kernel": jnp.float32(kernel / sigma),
      "bias": variables["params"]["MLP_0"][f"dense_{i}"]["bias"],
    }
  # The normalized network is the plain one with every kernel divided by its σ.
  plain = Discriminator(architecture="mlp", hidden=(12, 8))
  np.testing.assert_allclose(
    sn.apply(variables, x), plain.apply({"params": plain_params}, x), rtol=1e-5, atol=1e-6
  )


@pytest.mark.slow
def test_sngan_keeps_its_power_iteration_outside_params_and_resumes_exactly(data_dir, tmp_path):
  from conftest import EXPERIMENTS
  from genlab import config as config_lib
  from genlab.run import train_and_evaluate

  def config(steps):
    c = config_lib.load_experiment(EXPERIMENTS / "sngan_digits.py")
    c.data.data_dir = data_dir
    c.model.generator.features = (8, 16)
    c.model.discriminator.features = (8, 16)
    c.sample_metrics.fd_n_real = 200
    c.update(num_steps=steps, eval_every=10, image_every=20, checkpoint_every=10)
    c.update(eval_at_start=False)
    return c

  unbroken = train_and_evaluate(config(20), tmp_path / "unbroken").state
  train_and_evaluate(config(10), tmp_path / "resumed")
  resumed = train_and_evaluate(config(20), tmp_path / "resumed").state
  stats = unbroken.stats["discriminator"]
  leaves = jax.tree_util.tree_flatten_with_path(stats)[0]
  assert any("sigma" in jax.tree_util.keystr(path) for path, _ in leaves)
  assert not any(
    "sigma" in jax.tree_util.keystr(p)
    for p, _ in jax.tree_util.tree_flatten_with_path(unbroken.params)[0]
  )
  chex.assert_trees_all_equal(jax.device_get(resumed.params), jax.device_get(unbroken.params))
  chex.assert_trees_all_equal(jax.device_get(resumed.stats), jax.device_get(unbroken.stats))


def test_projection_discriminator_is_psi_of_phi_plus_the_class_embedding_projection():
  from genlab.models import Discriminator, Generator
  from genlab.models.conv_ae import activation_fn

  d = Discriminator(architecture="mlp", hidden=(12, 8), num_classes=5)
  x = jnp.float32(np.random.default_rng(0).uniform(-1, 1, (4, 4, 4, 1)))
  y = jnp.array([0, 3, 4, 3])
  params = d.init(jax.random.key(0), x, y)["params"]
  logits, state = d.apply({"params": params}, x, y, capture_intermediates=True)
  phi = activation_fn("leaky_relu")(state["intermediates"]["MLP_0"]["__call__"][0])
  psi = phi @ params["psi"]["kernel"] + params["psi"]["bias"]
  expected = psi[:, 0] + jnp.sum(params["class_embedding"][y] * phi, axis=1)
  np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match=r"needs one integer label per example: shape \(4,\)"):
    d.apply({"params": params}, x)
  g = Generator(output_shape=(4, 4, 1), architecture="mlp", hidden=(8,), num_classes=5)
  z = jnp.ones((2, 3))
  g_params = g.init(jax.random.key(1), z, jnp.array([0, 0]))
  assert not np.allclose(
    g.apply(g_params, z, jnp.array([1, 1])), g.apply(g_params, z, jnp.array([2, 2]))
  )


@pytest.mark.slow
def test_a_conditional_gan_reports_class_accuracy_and_per_class_fd(data_dir, tmp_path):
  from conftest import EXPERIMENTS
  from genlab import config as config_lib
  from genlab.run import evaluate_workdir, setup, train_and_evaluate

  config = config_lib.load_experiment(EXPERIMENTS / "cgan_digits.py")
  config.data.data_dir = data_dir
  config.update(num_steps=200, eval_every=200, image_every=200, checkpoint_every=200)
  config.update(eval_at_start=False)
  train_and_evaluate(config, tmp_path)
  report = evaluate_workdir(tmp_path)
  m = report["metrics"]
  assert report["protocol"]["conditional_on"] == "label"
  assert 0.0 <= m["class_accuracy"] <= 1.0 and np.isfinite(m["fd_class_mean"])
  assert m["class_accuracy"] > 0.1  # Above chance among 10 classes after 200 steps.
  assert (tmp_path / "images" / "samples_step_000200.png").is_file()
  family = setup(config).family
  np.testing.assert_array_equal(family.sample_labels(12), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1])
