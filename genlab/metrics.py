"""Distribution metrics on features: Fréchet distance, classifier score, class-histogram
entropy, and precision, recall, density and coverage of k-NN balls."""

from __future__ import annotations

import numpy as np


def gaussian_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean and (unbiased) covariance of (N, d) features, in float64."""
  features = np.asarray(features, np.float64)
  return features.mean(axis=0), np.cov(features, rowvar=False)


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
  values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
  return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """‖μ₁ − μ₂‖² + Tr Σ₁ + Tr Σ₂ − 2 Tr (Σ₁^½ Σ₂ Σ₁^½)^½ between two gaussians.

  Computed with symmetric eigendecompositions (no complex square roots).
  """
  root1 = _sqrt_psd(sigma1)
  cross = np.sqrt(np.clip(np.linalg.eigvalsh(root1 @ sigma2 @ root1), 0.0, None)).sum()
  diff = np.asarray(mu1) - np.asarray(mu2)
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * cross)


def frechet_distance_of(features1: np.ndarray, features2: np.ndarray) -> float:
  """Fréchet distance between gaussians fitted to two feature sets."""
  return frechet_distance(*gaussian_statistics(features1), *gaussian_statistics(features2))


def classifier_score(probabilities: np.ndarray) -> float:
  """exp(E_x KL(p(y|x) ‖ p(y))), the Inception-score formula on any classifier's p(y|x)."""
  p = np.clip(np.asarray(probabilities, np.float64), 1e-12, 1.0)
  marginal = p.mean(axis=0, keepdims=True)
  return float(np.exp(np.mean(np.sum(p * (np.log(p) - np.log(marginal)), axis=1))))


def class_histogram_entropy(probabilities: np.ndarray) -> float:
  """Entropy (nats) of the histogram of predicted classes; log(#classes) when balanced."""
  predicted = np.argmax(probabilities, axis=1)
  counts = np.bincount(predicted, minlength=probabilities.shape[1]).astype(np.float64)
  freq = counts[counts > 0] / counts.sum()
  return float(-(freq * np.log(freq)).sum())


def _pairwise_distances(a: np.ndarray, b: np.ndarray, chunk: int = 2048):
  """Yields (start, D) with D the Euclidean distances of rows a[start:start+chunk] to every
  row of b, in float64, a chunk of rows at a time (memory: chunk × len(b))."""
  b = np.asarray(b, np.float64)
  b_sq = np.sum(b * b, axis=1)
  for start in range(0, len(a), chunk):
    rows = np.asarray(a[start : start + chunk], np.float64)
    squared = np.sum(rows * rows, axis=1)[:, None] + b_sq[None, :] - 2.0 * rows @ b.T
    yield start, np.sqrt(np.clip(squared, 0.0, None))


def knn_radii(features: np.ndarray, k: int) -> np.ndarray:
  """Each row's distance to its k-th nearest other row (itself excluded)."""
  if not 1 <= k < len(features):
    raise ValueError(f"k = {k} needs more than k features (got {len(features)})")
  radii = np.empty(len(features))
  for start, d in _pairwise_distances(features, features):
    d[np.arange(len(d)), start + np.arange(len(d))] = np.inf  # Not its own neighbour.
    radii[start : start + len(d)] = np.partition(d, k - 1, axis=1)[:, k - 1]
  return radii


def precision_recall_density_coverage(real: np.ndarray, fake: np.ndarray, k: int = 5) -> dict:
  """Improved precision and recall (Kynkäänniemi et al. 2019) and density and coverage
  (Naeem et al. 2020) of `fake` against `real` features, with k-NN balls:

  * precision: fraction of fakes inside some real ball (radius: that real's k-th NN
    distance among the reals) — are the samples realistic?
  * recall: fraction of reals inside some fake ball (radii among the fakes) — is the
    data's variety covered?
  * density: mean number of real balls a fake falls in, over k (≈ 1 for matching sets;
    can exceed 1);
  * coverage: fraction of reals whose ball holds at least one fake.
  """
  real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
  real_radii, fake_radii = knn_radii(real, k), knn_radii(fake, k)
  inside_counts = np.zeros(len(fake))  # Per fake: how many real balls hold it.
  covered = np.zeros(len(real), bool)  # Per real: does its ball hold a fake?
  recalled = np.zeros(len(real), bool)  # Per real: is it inside some fake ball?
  for start, d in _pairwise_distances(real, fake):  # d[i, j]: real start+i to fake j.
    radii = real_radii[start : start + len(d), None]
    inside_counts += np.sum(d <= radii, axis=0)
    covered[start : start + len(d)] = np.min(d, axis=1) <= radii[:, 0]
    recalled[start : start + len(d)] = np.any(d <= fake_radii[None, :], axis=1)
  return {
    "precision": float(np.mean(inside_counts > 0)),
    "recall": float(np.mean(recalled)),
    "density": float(np.mean(inside_counts) / k),
    "coverage": float(np.mean(covered)),
  }


# The Inception metrics' conventions (genlab.evaluators.inception): the formulas as their
# reference implementations compute them, so that the numbers compare with published ones.


def frechet_distance_sqrtm(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
  """The Fréchet distance as pytorch-fid computes it (`fid_score.calculate_frechet_distance`):
  ‖μ₁ − μ₂‖² + Tr Σ₁ + Tr Σ₂ − 2 Tr (Σ₁Σ₂)^½, the square root by `scipy.linalg.sqrtm` of the
  product in float64; if that is not finite, `eps`·I is added to both covariances; an
  imaginary part of the root's diagonal (numerical error) is dropped, and refused above 10⁻³.

  `frechet_distance` (eigendecompositions of symmetric matrices) gives the same value up to
  rounding; this one is the standard's own algorithm, for numbers quoted as FID.
  """
  from scipy import linalg

  mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
  sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
  sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
    raise ValueError(f"shapes differ: {mu1.shape}, {sigma1.shape} vs {mu2.shape}, {sigma2.shape}")
  diff = mu1 - mu2
  covmean, _ = linalg.sqrtm(sigma1.dot(sigma2), disp=False)
  if not np.isfinite(covmean).all():
    offset = np.eye(sigma1.shape[0]) * eps
    covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
  if np.iscomplexobj(covmean):
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
      raise ValueError(f"imaginary component {np.max(np.abs(covmean.imag))} in the square root")
    covmean = covmean.real
  return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def kernel_inception_distance(
  real: np.ndarray,
  fake: np.ndarray,
  *,
  subset_size: int = 1000,
  subsets: int = 100,
  rng: np.random.RandomState,
) -> tuple[float, float]:
  """KID (Bińkowski et al. 2018): the unbiased estimate of the squared MMD with the
  polynomial kernel k(x, y) = (xᵀy / d + 1)³ (degree 3, γ = 1/d, coefficient 1), averaged
  over `subsets` random pairs of subsets of `subset_size` features each, drawn without
  replacement (samples first, then real features, from `rng`), as clean-fid's
  `kernel_distance` and torch-fidelity compute it.

  Returns:
    The mean over subsets and its standard deviation over subsets (torch-fidelity's
    `kernel_inception_distance_std`).
  """
  real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
  d = real.shape[1]
  m = subset_size
  if not 2 <= m <= min(len(real), len(fake)):
    raise ValueError(f"subset size {m} needs 2 ≤ it ≤ {min(len(real), len(fake))} features")
  values = np.empty(subsets)
  for i in range(subsets):
    x = fake[rng.choice(len(fake), m, replace=False)]
    y = real[rng.choice(len(real), m, replace=False)]
    a = (x @ x.T / d + 1) ** 3 + (y @ y.T / d + 1) ** 3
    b = (x @ y.T / d + 1) ** 3
    values[i] = ((a.sum() - np.diag(a).sum()) / (m - 1) - b.sum() * 2 / m) / m
  return float(values.mean()), float(values.std())


def inception_score(logits: np.ndarray, *, splits: int = 10) -> tuple[float, float]:
  """The Inception score (Salimans et al. 2016) of samples' classifier `logits` (N, C):
  p(y|x) = softmax(logits) in float64, the samples cut in `splits` consecutive parts (in
  their order, as the original code does), in each exp(mean_x KL(p(y|x) ‖ p(y))) with p(y)
  the part's mean; the mean and standard deviation over parts."""
  logits = np.asarray(logits, np.float64)
  logits = logits - logits.max(axis=1, keepdims=True)
  p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
  n = len(p)
  if not 1 <= splits <= n:
    raise ValueError(f"{splits} splits need 1 ≤ splits ≤ {n} samples")
  scores = []
  for k in range(splits):
    part = p[k * (n // splits) : (k + 1) * (n // splits)]
    marginal = part.mean(axis=0, keepdims=True)
    kl = np.sum(part * (np.log(part + 1e-30) - np.log(marginal + 1e-30)), axis=1)
    scores.append(np.exp(kl.mean()))
  return float(np.mean(scores)), float(np.std(scores))
