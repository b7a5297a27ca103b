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
the hinge discriminator loss; `'wasserstein'` makes D a critic (its loss
E[D(G(z))] − E[D(x)], the generator's −E[D(G(z))]).

`gan.penalty` adds a gradient penalty to the discriminator's loss, weighted by
`gan.penalty_weight`: `'gp'` (WGAN-GP, Gulrajani et al. 2017), λ·E[(‖∇D(x̂)‖ − 1)²]
at x̂ = ε·x + (1 − ε)·G(z), ε ~ U[0, 1] per example (keyed); `'r1'` (Mescheder et
al. 2018), γ/2·E[‖∇D(x)‖²] on the real images. Both differentiate D's input
gradient, a second-order derivative (genlab's bf16 layers give it too).

Evaluation: the sample metrics of `config.sample_metrics` (`genlab.evaluators`,
shared by every family that samples; by default for a GAN `feature_net`: in the
feature space of a classifier trained on the same dataset's labelled train split,
`fd`, the Fréchet distance between gaussians fitted to the features of
`fd_n_real` train images and of `fd_n_fake` samples (from a fixed z); `fd_floor`,
train vs test images; `cs`, the classifier score exp(E KL(p(y|x) ‖ p(y))) of the
samples; `class_entropy` of their predicted-class histogram; `precision`,
`recall`, `density` and `coverage` of the samples' features against the same real
ones, with k-NN balls (k = `sample_metrics.prdc_k`)); and mean D(x) on test images
and mean D(G(z)) on the evaluated samples.

With `model.generator.batch_norm` / `model.discriminator.batch_norm` (DCGAN's BatchNorm,
`genlab.models.gan`), a network normalizes by the batch's statistics in the train step and
by its running averages (in `TrainState.stats`) when it samples or is evaluated. In the
discriminator's step both the real and the fake pass update D's running averages (two
batches, as PyTorch's DCGAN code does), and G makes the fakes with its batch statistics;
in the generator's step G's running averages are updated and D, normalized by the fakes'
batch, keeps its own. A gradient penalty is refused with a batch-normalized D: BatchNorm
mixes the examples of a batch, and the penalty is per example (Gulrajani et al. 2017, §4).

With `gan.conditional` the generator takes the label beside z and D is a projection
discriminator (`genlab.models.gan`); fakes are drawn for uniform random classes
(keyed per example like z), samples for classes 0, 1, … in turn, and the eval adds
`class_accuracy` and `fd_class_mean`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from genlab import losses
from genlab import models as models_lib
from genlab.core import (
  Metrics,
  TrainState,
  example_keys,
  gradient_step,
  make_optimizer,
  masked_sum,
  stream_key,
  to_host,
)
from genlab.errors import ConfigError
from genlab.families.base import Family, Report, Views
from genlab.models.gan import Discriminator, Generator
from genlab.views import class_rows, image_grid

D_FAKE_SAMPLES = 1000  # Samples behind d_fake when no sample evaluator draws them.


def options(**overrides) -> ml_collections.ConfigDict:
  """`config.gan`, the GAN family's options, with their defaults."""
  group = ml_collections.ConfigDict(
    {
      "generator_loss": "non_saturating",  # non_saturating | minimax | hinge | wasserstein.
      "n_disc": 1,  # Discriminator steps per generator step.
      "penalty": "none",  # none | gp (WGAN-GP) | r1: the discriminator's gradient penalty.
      "penalty_weight": 10.0,  # λ of gp, γ of r1 (whose term is γ/2 · E‖∇D(x)‖²).
      # Class-conditional: the label feeds G (beside z) and a projection discriminator.
      "conditional": False,
      # The discriminator's learning rate, if not the generator's (config.optimizer's).
      "disc_learning_rate": ml_collections.config_dict.placeholder(float),
    }
  )
  group.update(overrides)
  return group


class GANViews(Views):
  """64 samples from a fixed z, the same at every step; a conditional GAN's as one row per
  class (at most 10), the same 8 z in every row."""

  def images(self, state, batch, step):
    family = self.family
    key = stream_key(family.eval_key, "grid")
    if family.num_classes is None:
      samples = family.sample(state, key, 64)
      grid = image_grid(
        list(samples.reshape(8, 8, *samples.shape[1:])), value_range=family.value_range
      )
      return {"samples": grid}
    params, stats = state.params["generator"], state.stats.get("generator")
    grid = class_rows(
      lambda z, y: family.generate(params, z, y, stats),
      family.latents(key, jnp.arange(8)),
      family.num_classes,
      family.value_range,
    )
    return {"samples": grid}


class GANReport(Report):
  definitions = {
    "d_real": "mean D(x) = P(real) on test images",
    "d_fake": "mean D(G(z)) on the evaluated samples (the samples_drawn of the protocol; "
    f"{D_FAKE_SAMPLES} when no sample evaluator runs)",
  }

  def protocol(self):
    family = self.family
    return {
      "generator_loss": family.options.generator_loss,
      "discriminator_spectral_norm": family.spectral_norm,
      "penalty": family.options.penalty,
      **(
        {"penalty_weight": family.options.penalty_weight}
        if family.options.penalty != "none"
        else {}
      ),
      "n_disc": family.options.n_disc,
      **({"conditional_on": "label"} if family.num_classes is not None else {}),
      **(
        {
          "batch_norm": "BatchNorm in "
          + " and ".join(
            name for name, on in (("G", family.g_batch_norm), ("D", family.d_batch_norm)) if on
          )
          + ": batch statistics in training, running averages in sampling and evaluation"
        }
        if family.g_batch_norm or family.d_batch_norm
        else {}
      ),
    }


class GAN(Family):
  """A generator and a discriminator updated in alternation (minimax, non-saturating, hinge
  or Wasserstein losses; gradient penalties, spectral norm, class conditioning).

  See the module docstring for the objectives and the metrics."""

  views = GANViews
  report = GANReport

  options_group = "gan"
  default_options = staticmethod(options)
  sample_evaluators = "feature_net"
  # The stream the evaluated samples come from: that of the GAN's own metrics before they
  # were shared, so its numbers stay what they were.
  sample_metrics_key_name = "gan_eval"
  headline = ("d_loss", "g_loss")  # Two networks, two objectives: no single `loss`.

  # What the family passes a network besides config.model.<part>'s fields.
  network_arguments = {
    "generator": ("output_shape", "architecture", "num_classes", "kernels", "dtype"),
    "discriminator": ("architecture", "num_classes", "kernels", "dtype"),
  }

  def __init__(self, config, dataset, **kwargs):
    super().__init__(config, dataset, **kwargs)
    fields = config.model.to_dict()
    if fields.get("name") != "gan":
      raise ConfigError(
        f"family 'gan' takes config.model.name='gan' (its networks are config.model.generator "
        f"and .discriminator), got {fields.get('name')!r}"
      )
    self.latent_dim, architecture = fields["latent_dim"], fields["architecture"]
    self.options = self.family_options()
    if self.options.conditional:
      self.num_classes = self.conditional_classes("config.gan.conditional")
    generator, generator_fields = self.network("generator")
    discriminator, discriminator_fields = self.network("discriminator")
    genlabs = {"architecture": architecture} if generator is Generator else {}
    self.generator = self.build(
      generator,
      output_shape=dataset.image_shape,
      num_classes=self.num_classes,
      **genlabs,
      **generator_fields,
    )
    genlabs = {"architecture": architecture} if discriminator is Discriminator else {}
    self.discriminator = self.build(
      discriminator, num_classes=self.num_classes, **genlabs, **discriminator_fields
    )
    if self.options.generator_loss not in losses.GENERATOR_LOSSES:
      raise ConfigError(f"config.gan.generator_loss must be one of {losses.GENERATOR_LOSSES}")
    if self.options.penalty not in losses.GRADIENT_PENALTIES:
      raise ConfigError(f"config.gan.penalty must be one of {losses.GRADIENT_PENALTIES}")
    if self.d_batch_norm and self.options.penalty != "none":
      raise ConfigError(
        f"config.gan.penalty={self.options.penalty!r} with config.model.discriminator."
        "batch_norm=True: the penalty is per example and BatchNorm mixes the examples of a "
        "batch (Gulrajani et al. 2017, §4); turn one of them off"
      )
    disc_optimizer = config.optimizer.copy_and_resolve_references()
    if self.options.disc_learning_rate is not None:  # Two time-scales (TTUR).
      disc_optimizer.learning_rate = self.options.disc_learning_rate
    self.tx = {
      "generator": make_optimizer(config.optimizer),
      "discriminator": make_optimizer(disc_optimizer),
    }
    self.eval_key = stream_key(self.root_key, "gan_eval")
    self._generate = jax.jit(self.generate)
    self._discriminate = jax.jit(
      lambda params, stats, x, labels: self.critic(params, x, stats, labels)
    )

  def network(self, part: str) -> tuple[type, dict]:
    """The class of `config.model.<part>` (`generator` or `discriminator`; its `name`, or
    genlab's network of that name) and its other fields."""
    fields = dict(self.config.model[part].to_dict())
    name = fields.pop("name", part)
    if models_lib.REGISTRY.builtin(name) and name != part:
      raise ConfigError(
        f"config.model.{part}.name={name!r}: the GAN's {part} is genlab's {part!r} or a "
        "network of your own ('package.module:Class')"
      )
    return models_lib.REGISTRY.get(name), fields

  @classmethod
  def model_defaults(cls, config):
    model = config.model.to_dict()
    for part, skip in cls.network_arguments.items():
      given = dict(model.get(part, {}))
      try:
        network = models_lib.REGISTRY.get(given.get("name", part))
      except ConfigError:
        return None
      model[part] = {**models_lib.field_defaults(network, skip=skip), **given}
    return model

  # Keyed pieces -----------------------------------------------------------------

  @property
  def spectral_norm(self) -> bool:
    return self.discriminator.spectral_norm

  @property
  def d_batch_norm(self) -> bool:
    """Whether D has BatchNorm layers (an optional attribute of a network of your own)."""
    return bool(getattr(self.discriminator, "batch_norm", False))

  @property
  def g_batch_norm(self) -> bool:
    return bool(getattr(self.generator, "batch_norm", False))

  @property
  def d_keeps_stats(self) -> bool:
    """Whether D has a `batch_stats` collection (power-iteration vectors, running averages)."""
    return self.spectral_norm or self.d_batch_norm

  def critic(self, state_or_params, x, stats=None, labels=None, *, train=False) -> jax.Array:
    """D's logits on `x` (given `labels` when conditional), with its `state.stats` when it has
    them, not updated. With `train` a batch-normalized D normalizes by the batch's
    statistics (the generator's step). Takes a TrainState, or params and stats."""
    if isinstance(state_or_params, TrainState):
      params = state_or_params.params["discriminator"]
      stats = state_or_params.stats.get("discriminator")
    else:
      params = state_or_params
    variables = {"params": params, **({"batch_stats": stats} if self.d_keeps_stats else {})}
    if train and self.d_batch_norm:  # The running averages' update is D's step's, not this.
      return self.discriminator.apply(variables, x, labels, train=True, mutable=["batch_stats"])[0]
    return self.discriminator.apply(variables, x, labels)

  def fake_labels(self, key: jax.Array, index: jax.Array) -> jax.Array | None:
    """The classes the generator is asked for: uniform, one per example, keyed like z."""
    if self.num_classes is None:
      return None
    keys = example_keys(stream_key(key, "y"), index)
    return jax.vmap(lambda k: jax.random.randint(k, (), 0, self.num_classes))(keys)

  def real_labels(self, batch) -> jax.Array | None:
    return batch["label"] if self.num_classes is not None else None

  def generate(self, params, z, labels=None, stats=None) -> jax.Array:
    """G(z) as sampled and evaluated: a batch-normalized G by its running averages `stats`."""
    variables = {"params": params, **({"batch_stats": stats} if self.g_batch_norm else {})}
    return self.generator.apply(variables, z, labels)

  def generate_training(self, params, stats, z, labels=None) -> tuple[jax.Array, object]:
    """G(z) as in training, and G's updated running averages: a batch-normalized G
    normalizes by the batch's statistics (the stats are None for a G without BatchNorm)."""
    if not self.g_batch_norm:
      return self.generate(params, z, labels), None
    variables = {"params": params, "batch_stats": stats}
    fake, updated = self.generator.apply(variables, z, labels, train=True, mutable=["batch_stats"])
    return fake, updated["batch_stats"]

  def latents(self, key: jax.Array, index: jax.Array) -> jax.Array:
    """One z ~ N(0, I) per example, from its position in the global batch."""
    keys = example_keys(stream_key(key, "z"), index)
    return jax.vmap(lambda k: jax.random.normal(k, (self.latent_dim,)))(keys)

  def d_loss(self, real_logits, fake_logits):
    if self.options.generator_loss == "hinge":
      return losses.discriminator_hinge_loss(real_logits, fake_logits)
    if self.options.generator_loss == "wasserstein":
      return losses.discriminator_wasserstein_loss(real_logits, fake_logits)
    return losses.discriminator_loss(real_logits, fake_logits)

  def gradient_penalty(self, params, stats, real, fake, key, index, labels=None) -> jax.Array:
    """The weighted penalty term of the discriminator's loss (a scalar; 0 for 'none')."""
    kind, weight = self.options.penalty, self.options.penalty_weight
    # Conditional: the penalty's points are judged under the real images' labels.
    critic = lambda x: self.critic(params, x, stats, labels)  # noqa: E731
    if kind == "gp":
      keys = example_keys(stream_key(key, "gp_mix"), index)
      mix = jax.vmap(lambda k: jax.random.uniform(k))(keys)
      return weight * jnp.mean(losses.wgan_gradient_penalty(critic, real, fake, mix))
    if kind == "r1":
      return 0.5 * weight * jnp.mean(losses.r1_penalty(critic, real))
    return jnp.zeros(())

  def discriminator_step(self, state, batch, key) -> tuple[TrainState, Metrics]:
    """One update of the discriminator on real `batch['image']` and G(z), z from `key`."""
    fake_y, real_y = self.fake_labels(key, batch["index"]), self.real_labels(batch)
    z = self.latents(key, batch["index"])
    fake, _ = self.generate_training(
      state.params["generator"], state.stats.get("generator"), z, fake_y
    )
    fake = jax.lax.stop_gradient(fake)
    # A batch-normalized D normalizes each pass by its batch, updating its running averages.
    bn = {"train": True} if self.d_batch_norm else {}

    def loss_fn(params):
      if self.d_keeps_stats:  # SN: one power-iteration step per update, on the real pass.
        variables = {"params": params, "batch_stats": state.stats["discriminator"]}
        sn = {"update_stats": True} if self.spectral_norm else {}
        real_logits, updated = self.discriminator.apply(
          variables, batch["image"], real_y, mutable=["batch_stats"], **sn, **bn
        )
        stats = updated["batch_stats"]
      else:
        real_logits, stats = self.critic(params, batch["image"], labels=real_y), None
      if self.d_batch_norm:
        variables = {"params": params, "batch_stats": stats}
        fake_logits, updated = self.discriminator.apply(
          variables, fake, fake_y, mutable=["batch_stats"], **bn
        )
        stats = updated["batch_stats"]
      else:
        fake_logits = self.critic(params, fake, stats, fake_y)
      loss = self.d_loss(real_logits, fake_logits).mean()
      d_real, d_fake = jax.nn.sigmoid(real_logits).mean(), jax.nn.sigmoid(fake_logits).mean()
      parts = {"d_real": d_real, "d_fake": d_fake}
      if self.options.penalty != "none":
        penalty = self.gradient_penalty(
          params, stats, batch["image"], fake, key, batch["index"], real_y
        )
        loss, parts["d_penalty"] = loss + penalty, penalty
      return loss, ((parts, stats) if self.d_keeps_stats else parts)

    return gradient_step(state, "discriminator", loss_fn, prefix="d_", has_stats=self.d_keeps_stats)

  def generator_step(self, state, key, index) -> tuple[TrainState, Metrics]:
    """One update of the generator; z for example i of the global batch from (key, index[i])."""
    z, y = self.latents(key, index), self.fake_labels(key, index)

    def loss_fn(params):
      fake, stats = self.generate_training(params, state.stats.get("generator"), z, y)
      logits = self.critic(state, fake, labels=y, train=True)
      loss = losses.generator_loss(logits, kind=self.options.generator_loss).mean()
      return loss, (({}, stats) if self.g_batch_norm else {})

    return gradient_step(state, "generator", loss_fn, prefix="g_", has_stats=self.g_batch_norm)

  # Family interface -------------------------------------------------------------

  def init_state(self, key, batch) -> TrainState:
    g_key, d_key = jax.random.split(key)
    z = jnp.zeros((1, self.latent_dim))
    y = None if self.num_classes is None else jnp.zeros((1,), jnp.int32)
    d_variables = self.discriminator.init(d_key, jnp.asarray(batch["image"][:1]), y)
    g_variables = self.generator.init(g_key, z, y)
    params = {"generator": g_variables["params"], "discriminator": d_variables["params"]}
    stats = {}
    if self.d_keeps_stats:
      stats["discriminator"] = d_variables["batch_stats"]
    if self.g_batch_norm:
      stats["generator"] = g_variables["batch_stats"]
    return TrainState.create(params=params, tx=self.tx, stats=stats)

  def train_step(self, state, batch, key) -> tuple[TrainState, Metrics]:
    d_metrics = []
    for i in range(self.options.n_disc):
      d_key = jax.random.fold_in(stream_key(key, "discriminator"), i)
      state, m = self.discriminator_step(state, batch, d_key)
      d_metrics.append(m)
    state, g_metrics = self.generator_step(state, stream_key(key, "generator"), batch["index"])
    out = jax.tree.map(lambda *xs: sum(xs) / len(xs), *d_metrics)
    out.update(g_metrics)
    return state, out

  def eval_step(self, state, batch) -> Metrics:
    logits = self.critic(state, batch["image"], labels=self.real_labels(batch))
    return {"d_real": masked_sum(jax.nn.sigmoid(logits), batch["mask"])}

  # Distribution metrics: the sample evaluators', and D's mean on the same samples ----

  def distribution_metrics(self, state) -> dict:
    num = (self.sample_metrics.num_samples if self.sample_metrics else 0) or D_FAKE_SAMPLES
    samples, labels = self.metric_samples(state, num)
    out = self.sample_metrics.evaluate(samples, labels) if self.sample_metrics else {}
    d_params, d_stats = state.params["discriminator"], state.stats.get("discriminator")

    def chunk_labels(i):
      return None if labels is None else labels[i : i + 500]

    fake_logits = np.concatenate(
      [
        to_host(self._discriminate(d_params, d_stats, samples[i : i + 500], chunk_labels(i)))
        for i in range(0, num, 500)
      ]
    )
    out["d_fake"] = float(np.mean(1.0 / (1.0 + np.exp(-fake_logits))))
    return out

  def sample(self, state, key, num: int, labels=None) -> np.ndarray:
    """G(z) for `num` z from `key`; a conditional GAN's draws are of `labels`, by default
    cycling through the classes (`sample_labels`)."""
    z = self.latents(key, jnp.arange(num))
    if labels is None:
      labels = self.sample_labels(num)
    params, stats = state.params["generator"], state.stats.get("generator")
    return np.concatenate(
      [
        to_host(
          self._generate(
            params, z[i : i + 500], None if labels is None else labels[i : i + 500], stats
          )
        )
        for i in range(0, num, 500)
      ]
    )
