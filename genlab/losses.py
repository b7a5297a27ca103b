"""Per-example losses: unreduced over the batch, reduced over everything else.

Each function returns one value per example (shape `(batch,)`); the step
decides how to reduce (mean over the batch, masked sums in eval). The
elementwise parts come from optax.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax


def _mean_per_example(values: jax.Array) -> jax.Array:
  return jnp.mean(values.reshape(values.shape[0], -1).astype(jnp.float32), axis=1)


def mean_squared_error(predictions: jax.Array, targets: jax.Array) -> jax.Array:
  """Mean over all non-batch axes of (predictions − targets)², per example."""
  return _mean_per_example(optax.losses.squared_error(predictions, targets))


def sigmoid_binary_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Mean over all non-batch axes of the Bernoulli cross-entropy of `logits`
  against targets in [0, 1], per example (numerically stable, from logits)."""
  return _mean_per_example(optax.losses.sigmoid_binary_cross_entropy(logits, targets))


RECONSTRUCTION_LOSSES = ("mse", "bce")


# Variational autoencoders: log-densities summed over all non-batch axes, per example.

LOG_2PI = math.log(2.0 * math.pi)  # Plain Python: importing genlab must not start a backend.


def _sum_per_example(values: jax.Array) -> jax.Array:
  return jnp.sum(values.reshape(values.shape[0], -1).astype(jnp.float32), axis=1)


def kl_to_standard_normal(mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """KL(N(mean, exp(logvar)) ‖ N(0, I)) per example, in closed form, summed over dimensions."""
  return _sum_per_example(kl_to_standard_normal_per_dim(mean, logvar))


def kl_to_standard_normal_per_dim(mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """The same KL, one value per latent dimension: ½(μ² + σ² − log σ² − 1)."""
  return 0.5 * (jnp.square(mean) + jnp.exp(logvar) - logvar - 1.0)


def bernoulli_log_likelihood(logits: jax.Array, x: jax.Array) -> jax.Array:
  """log p(x | logits) of independent Bernoullis, summed per example (x in [0, 1])."""
  return -_sum_per_example(optax.losses.sigmoid_binary_cross_entropy(logits, x))


def gaussian_log_density(x: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """log N(x; mean, diag(exp(logvar))), summed per example (broadcasting mean/logvar)."""
  return _sum_per_example(-0.5 * (LOG_2PI + logvar + jnp.square(x - mean) * jnp.exp(-logvar)))


# GANs, from discriminator logits ℓ (D = sigmoid(ℓ) is P(real)); numerically stable forms:
# log D = −softplus(−ℓ), log(1 − D) = −softplus(ℓ).

GENERATOR_LOSSES = ("non_saturating", "minimax", "hinge")


def discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
  """−[log D(x) + log(1 − D(G(z)))] per pair: minimising it maximises the minimax objective."""
  return jax.nn.softplus(-real_logits) + jax.nn.softplus(fake_logits)


def discriminator_hinge_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
  """max(0, 1 − ℓ_real) + max(0, 1 + ℓ_fake) per pair (Lim & Ye 2017; SNGAN)."""
  return jax.nn.relu(1.0 - real_logits) + jax.nn.relu(1.0 + fake_logits)


def generator_loss(fake_logits: jax.Array, *, kind: str = "non_saturating") -> jax.Array:
  """The generator's loss per fake example.

  Args:
    fake_logits: D's logits on G(z).
    kind: `minimax`: log(1 − D(G(z))), the original objective's term (its gradient
      vanishes while D confidently rejects fakes, early in training);
      `non_saturating`: −log D(G(z)), the same fixed point with strong gradients
      when D wins (Goodfellow et al. 2014, the default); `hinge`: −ℓ.
  """
  if kind == "non_saturating":
    return jax.nn.softplus(-fake_logits)
  if kind == "minimax":
    return -jax.nn.softplus(fake_logits)
  if kind == "hinge":
    return -fake_logits
  raise ValueError(f"unknown generator loss {kind!r}; choose one of {GENERATOR_LOSSES}")


# Sparse autoencoders.


def bernoulli_kl(rho: float, rho_hat: jax.Array, *, eps: float = 1e-6) -> jax.Array:
  """KL(ρ ‖ ρ̂_j) between Bernoullis, per unit: large when a unit fires far more *or* far
  less often than the target rate ρ."""
  rho_hat = jnp.clip(rho_hat, eps, 1.0 - eps)
  return rho * jnp.log(rho / rho_hat) + (1.0 - rho) * jnp.log((1.0 - rho) / (1.0 - rho_hat))
