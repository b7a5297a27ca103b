"""GANs on the shared trainer: two networks, two optimizers, two explicit keyed steps.

`train_step` runs `gan.n_disc` calls of `discriminator_step(state, batch, key)`
(on the same real batch, each with fresh fakes) then one
`generator_step(state, key, index)`. Each draws its z from its own key
stream, per example (`example_keys(stream_key(key, 'z'), index)`), so the
device count changes nothing; each updates only its own network, with its own
optimizer (DCGAN defaults: Adam 2e-4, β1 = 0.5).

The discriminator maximises E_x[log D(x)] + E_z[log(1 − D(G(z)))]; the
generator minimises, by default, the non-saturating −E_z[log D(G(z))]
(`gan.generator_loss='non_saturating'`). The minimax form E_z[log(1 − D(G(z)))]
(`'minimax'`) has the same fixed point but its gradient vanishes while D
confidently rejects the fakes — which is how training starts — so G barely
learns; −log D(G(z)) gives strong gradients exactly then. `'hinge'` pairs with
the hinge discriminator loss.

Evaluation, in the feature space of a classifier genlab trains on the same
dataset's labelled train split (`genlab.feature_net`): `fd`, the Fréchet
distance between gaussians fitted to the features of `fd_n_real` train images
and of `fd_n_fake` samples (from a fixed z); `fd_floor`, train vs test images;
`cs`, the classifier score exp(E KL(p(y|x) ‖ p(y))) of the samples (the
Inception score's formula); `class_entropy`, the entropy of the samples'
predicted-class histogram (mode collapse lowers it; log 10 ≈ 2.303 is
balanced); and mean D(x) on test images and mean D(G(z)).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from genlab import losses, metrics
from genlab.data import scale_values
from genlab.errors import ConfigError
from genlab.families.base import Family, Metrics
from genlab.models.gan import Discriminator, Generator
from genlab.train.parallel import masked_sum, pmean
from genlab.train.rngs import example_keys, stream_key
from genlab.train.state import TrainState, all_finite, make_optimizer, optimization_metrics
from genlab.train.writers import image_grid


class GAN(Family):
  """Generator and discriminator updated in alternation; see the module docstring."""

  def __init__(self, config, dataset):
    super().__init__(config, dataset)
    _, fields = self.model_fields("gan")
    self.latent_dim, architecture = fields["latent_dim"], fields["architecture"]
    self.generator = self.build(
      Generator, output_shape=dataset.image_shape, architecture=architecture, **fields["generator"]
    )
    self.discriminator = self.build(
      Discriminator, architecture=architecture, **fields["discriminator"]
    )
    self.options = config.gan
    if self.options.generator_loss not in losses.GENERATOR_LOSSES:
      raise ConfigError(f"config.gan.generator_loss must be one of {losses.GENERATOR_LOSSES}")
    disc_optimizer = config.get("disc_optimizer") or config.optimizer
    self.tx = {
      "generator": make_optimizer(config.optimizer),
      "discriminator": make_optimizer(disc_optimizer),
    }
    self.eval_key = stream_key(jax.random.key(config.seed), "gan_eval")
    self._generate = jax.jit(lambda params, z: self.generator.apply({"params": params}, z))
    self._discriminate = jax.jit(lambda params, x: self.discriminator.apply({"params": params}, x))

  # Keyed pieces -----------------------------------------------------------------

  def latents(self, key: jax.Array, index: jax.Array) -> jax.Array:
    """One z ~ N(0, I) per example, from its position in the global batch."""
    keys = example_keys(stream_key(key, "z"), index)
    return jax.vmap(lambda k: jax.random.normal(k, (self.latent_dim,)))(keys)

  def d_loss(self, real_logits, fake_logits):
    if self.options.generator_loss == "hinge":
      return losses.discriminator_hinge_loss(real_logits, fake_logits)
    return losses.discriminator_loss(real_logits, fake_logits)

  def discriminator_step(self, state, batch, key, *, axis_name=None) -> tuple[TrainState, Metrics]:
    """One update of the discriminator on real `batch['image']` and G(z), z from `key`."""
    fake = self.generator.apply(
      {"params": state.params["generator"]}, self.latents(key, batch["index"])
    )
    fake = jax.lax.stop_gradient(fake)

    def loss_fn(params):
      real_logits = self.discriminator.apply({"params": params}, batch["image"])
      fake_logits = self.discriminator.apply({"params": params}, fake)
      loss = self.d_loss(real_logits, fake_logits).mean()
      return loss, (jax.nn.sigmoid(real_logits).mean(), jax.nn.sigmoid(fake_logits).mean())

    (loss, (d_real, d_fake)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params["discriminator"]
    )
    grads = pmean(grads, axis_name)
    m = pmean({"d_loss": loss, "d_real": d_real, "d_fake": d_fake}, axis_name)
    m["d_grad_norm"] = optimization_metrics(grads, state.params["discriminator"])["grad_norm"]
    return state.apply_gradients({"discriminator": grads}, finite=all_finite(m)), m

  def generator_step(self, state, key, index, *, axis_name=None) -> tuple[TrainState, Metrics]:
    """One update of the generator; z for example i of the global batch from (key, index[i])."""
    z = self.latents(key, index)

    def loss_fn(params):
      fake = self.generator.apply({"params": params}, z)
      logits = self.discriminator.apply({"params": state.params["discriminator"]}, fake)
      return losses.generator_loss(logits, kind=self.options.generator_loss).mean()

    loss, grads = jax.value_and_grad(loss_fn)(state.params["generator"])
    grads = pmean(grads, axis_name)
    m = {"g_loss": pmean(loss, axis_name)}
    m["g_grad_norm"] = optimization_metrics(grads, state.params["generator"])["grad_norm"]
    return state.apply_gradients({"generator": grads}, finite=all_finite(m)), m

  # Family interface -------------------------------------------------------------

  def init_state(self, key, batch) -> TrainState:
    g_key, d_key = jax.random.split(key)
    z = jnp.zeros((1, self.latent_dim))
    params = {
      "generator": self.generator.init(g_key, z)["params"],
      "discriminator": self.discriminator.init(d_key, jnp.asarray(batch["image"][:1]))["params"],
    }
    return TrainState.create(params=params, tx=self.tx)

  def train_step(self, state, batch, key, *, axis_name) -> tuple[TrainState, Metrics]:
    d_metrics = []
    for i in range(self.options.n_disc):
      d_key = jax.random.fold_in(stream_key(key, "discriminator"), i)
      state, m = self.discriminator_step(state, batch, d_key, axis_name=axis_name)
      d_metrics.append(m)
    state, g_metrics = self.generator_step(
      state, stream_key(key, "generator"), batch["index"], axis_name=axis_name
    )
    out = jax.tree.map(lambda *xs: sum(xs) / len(xs), *d_metrics)
    out.update(g_metrics)
    out["loss"] = out["d_loss"] + out["g_loss"]  # For the log line; each net has its own.
    return state, out

  def eval_step(self, state, batch) -> Metrics:
    logits = self.discriminator.apply({"params": state.params["discriminator"]}, batch["image"])
    return {"d_real": masked_sum(jax.nn.sigmoid(logits), batch["mask"])}

  def prepare(self) -> None:
    self._fd_real()  # Trains the feature network if it is not cached, then its real statistics.

  @functools.cached_property
  def feature_net(self):
    from genlab.feature_net import feature_network

    return feature_network(self.dataset, self.config.data, steps=self.options.feature_net_steps)

  def _fd_real(self):
    """Features of `fd_n_real` train images (a fixed subset) and the train-vs-test floor."""
    if not hasattr(self, "_real_stats"):
      train = self.dataset.train["image"]
      n_real = min(self.options.fd_n_real, len(train))
      rows = np.random.default_rng(self.config.seed).permutation(len(train))[:n_real]
      _, real = self.feature_net(scale_values(train[rows], self.value_range))
      _, test = self.feature_net(scale_values(self.dataset.test["image"], self.value_range))
      self._real_stats = metrics.gaussian_statistics(real)
      self._floor = metrics.frechet_distance(*self._real_stats, *metrics.gaussian_statistics(test))
      self._n_real, self._n_test = n_real, len(test)
    return self._real_stats

  def distribution_metrics(self, state) -> dict:
    real_stats = self._fd_real()
    n_fake = self.options.fd_n_fake or self._n_real
    samples = self.sample(state, self.eval_key, n_fake)
    probabilities, features = self.feature_net(samples)
    fake_logits = np.concatenate(
      [
        np.asarray(self._discriminate(state.params["discriminator"], samples[i : i + 500]))
        for i in range(0, n_fake, 500)
      ]
    )
    return {
      "fd": metrics.frechet_distance(*real_stats, *metrics.gaussian_statistics(features)),
      "fd_floor": self._floor,
      "cs": metrics.classifier_score(probabilities),
      "class_entropy": metrics.class_histogram_entropy(probabilities),
      "d_fake": float(np.mean(1.0 / (1.0 + np.exp(-fake_logits)))),
    }

  def sample(self, state, key, num: int) -> np.ndarray:
    z = self.latents(key, jnp.arange(num))
    return np.concatenate(
      [
        np.asarray(self._generate(state.params["generator"], z[i : i + 500]))
        for i in range(0, num, 500)
      ]
    )

  def image_rows(self, state, batch):
    return {}

  def extra_images(self, state, step):
    samples = self.sample(state, stream_key(self.eval_key, "grid"), 64)
    return {
      "samples": image_grid(
        list(samples.reshape(8, 8, *samples.shape[1:])), value_range=self.value_range
      )
    }

  def protocol(self):
    self._fd_real()
    return {
      "fd_n_real": self._n_real,
      "fd_real_split": "train",
      "fd_n_fake": self.options.fd_n_fake or self._n_real,
      "fd_floor": f"train ({self._n_real}) vs test ({self._n_test}) images",
      "generator_loss": self.options.generator_loss,
      "n_disc": self.options.n_disc,
      **self.feature_net.protocol(),
    }

  def definitions(self):
    return {
      "fd": "Fréchet distance between gaussians fitted to feature-network features of train "
      "images and of generated samples (lower is better; compare with fd_floor)",
      "fd_floor": "the same distance between the fd_n_real train images and the test images "
      "(sizes in protocol): a reference for a generator that matches the data; when the test "
      "split is smaller than fd_n_fake its sample-size bias is larger than fd's",
      "cs": "classifier score exp(E_x KL(p(y|x) ‖ p(y))) of the samples (higher: confident and "
      "diverse; at most the number of classes)",
      "class_entropy": "entropy in nats of the samples' predicted-class histogram (log 10 = 2.303 "
      "is balanced; mode collapse lowers it)",
      "d_real": "mean D(x) = P(real) on test images",
      "d_fake": "mean D(G(z)) on the fd_n_fake samples",
    }
