"""Distribution metrics on features: Fréchet distance, classifier score, class-histogram entropy."""

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
