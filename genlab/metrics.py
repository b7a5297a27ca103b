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
