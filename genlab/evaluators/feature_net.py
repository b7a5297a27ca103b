"""Sample metrics in the space of a classifier trained on the run's own dataset.

`feature_net`: the Fréchet distance `fd` between gaussians fitted to the features of
`fd_n_real` train images (a fixed subset, keyed by the root key's stream
'fd_real_rows') and of `fd_n_fake` samples; `fd_floor`, train vs test images; the
classifier score `cs` exp(E KL(p(y|x) ‖ p(y))) of the samples (the Inception
score's formula); `class_entropy` of the samples' predicted-class histogram;
`precision`, `recall`, `density` and `coverage` of the samples' features against the
same real ones, with k-NN balls (k = `prdc_k`; Kynkäänniemi et al. 2019, Naeem et
al. 2020), and the test images' precision and recall as their floor; for a
class-conditional family, `class_accuracy` and `fd_class_mean`.

The feature network is the `feature_net` resource (`genlab.run.feature_net`): a
classifier trained once per dataset on its labelled train split and cached. It is
trained on images in [-1, 1] (`FEATURE_RANGE`) whatever the run's `data.range`, and
every image it sees, real or sampled, is mapped linearly there first, so that runs of
any family on one dataset are measured by the same network (its hash in the protocol).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from genlab import metrics
from genlab.core import stream_key
from genlab.data import scale_values
from genlab.errors import ConfigError
from genlab.evaluators.base import Evaluator, to_range

# The value range the feature classifier is trained on and reads.
FEATURE_RANGE = (-1.0, 1.0)


class FeatureNetEvaluator(Evaluator):
  """Fréchet distance, precision/recall/density/coverage and the classifier score in the
  feature space of a classifier trained on the dataset (see the module docstring)."""

  name = "feature_net"
  definitions = {
    "fd": "Fréchet distance between gaussians fitted to feature-network features of train "
    "images and of generated samples (lower is better; compare with fd_floor)",
    "fd_floor": "the same distance between the fd_n_real train images and the test images "
    "(sizes in protocol): a reference for a generator that matches the data; when the test "
    "split is smaller than fd_n_fake its sample-size bias is larger than fd's",
    "cs": "classifier score exp(E_x KL(p(y|x) ‖ p(y))) of the samples (higher: confident and "
    "diverse; at most the number of classes)",
    "class_entropy": "entropy in nats of the samples' predicted-class histogram (log 10 = 2.303 "
    "is balanced; mode collapse lowers it)",
    "precision": "fraction of the fd_n_fake samples whose features lie within the k-NN ball "
    "of some real image's features (k = prdc_k, among the fd_n_real train images): realism",
    "recall": "fraction of the real images' features within the k-NN ball of some sample's "
    "features (k = prdc_k, among the samples): how much of the data's variety is reached",
    "density": "mean number of real k-NN balls holding a sample's features, divided by k (about "
    "1 when samples and data match; above 1 where samples crowd dense regions)",
    "coverage": "fraction of real images whose k-NN ball holds some sample's features",
    "precision_floor": "precision of the test images' features against the same real ones "
    "(as fd_floor): what a generator that matches the data would score",
    "recall_floor": "recall of the test images against the same real ones (as fd_floor)",
    "class_accuracy": "class-conditional families: fraction of the fd_n_fake samples (classes "
    "0, 1, …, C − 1 in turn) that the feature network classifies as the class they were "
    "drawn for",
    "fd_class_mean": "class-conditional families: mean over classes of the Fréchet distance "
    "between the real images of a class (among the fd_n_real) and the samples drawn for it",
  }

  def __init__(self, options, **kwargs):
    super().__init__(options, **kwargs)
    if "label" not in self.dataset.train:
      raise ConfigError(
        f"config.sample_metrics.evaluators names feature_net, a classifier trained on the "
        f"dataset's labels, and {self.dataset.name} has none"
      )
    self.check_sizes()

  @property
  def n_real(self) -> int:
    return min(self.options.fd_n_real, len(self.dataset.train["image"]))

  @property
  def num_samples(self) -> int:
    return self.options.fd_n_fake or self.n_real

  def check_sizes(self) -> None:
    """Refuses sample sizes the metrics cannot take, when the family is built: otherwise
    they fail at the first evaluation, after steps that no checkpoint holds yet.

    A Fréchet distance fits a covariance to each set (`metrics.gaussian_statistics`), which
    needs 2 samples or more; precision, recall, density and coverage take each sample's k-th
    nearest neighbour among the others of its set (`metrics.knn_radii`), which needs more
    than k of them: 1 ≤ prdc_k < min(real train images, samples, test images).
    """
    options = self.options
    n_train, n_test = len(self.dataset.train["image"]), len(self.dataset.test["image"])
    if options.fd_n_real < 2:
      raise ConfigError(
        f"config.sample_metrics.fd_n_real={options.fd_n_real} must be at least 2: the Fréchet "
        "distance fits a covariance to the real images' features"
      )
    if options.fd_n_fake < 0 or options.fd_n_fake == 1:
      raise ConfigError(
        f"config.sample_metrics.fd_n_fake={options.fd_n_fake} must be 0 (as many samples as "
        "real images) or at least 2: the Fréchet distance fits a covariance to the samples' "
        "features"
      )
    if options.prdc_k < 1:
      raise ConfigError(
        f"config.sample_metrics.prdc_k={options.prdc_k} must be at least 1 (the k of the k-NN "
        "balls of precision, recall, density and coverage)"
      )
    n_real = min(options.fd_n_real, n_train)
    sets = {
      f"real train images (min(sample_metrics.fd_n_real={options.fd_n_real}, the {n_train} "
      "of the train split))": n_real,
      "samples (sample_metrics.fd_n_fake, 0: as many as the real images)": options.fd_n_fake
      or n_real,
      "test images (the metrics' floor)": n_test,
    }
    for what, n in sets.items():
      if options.prdc_k >= n:
        raise ConfigError(
          f"config.sample_metrics.prdc_k={options.prdc_k} must be below the {n} {what}: "
          "precision, recall, density and coverage take each one's k-th nearest neighbour "
          "among the others, so they need more than k of them"
        )

  def needs(self):
    return {"feature_net": {"steps": self.options.feature_net_steps, "value_range": FEATURE_RANGE}}

  def provide(self, resources):
    super().provide(resources)
    self.real_statistics()  # Features of the real images, once.

  @property
  def feature_net(self):
    if "feature_net" not in self.resources:
      raise ConfigError(
        "the feature_net sample metrics need their feature network: evaluate through "
        "genlab.run (`genlab eval`), which trains or loads it, or pass it with provide()"
      )
    return self.resources["feature_net"]

  def real_statistics(self):
    """Features of `fd_n_real` train images (a fixed subset) and the train-vs-test floor."""
    if not hasattr(self, "_real_stats"):
      train = self.dataset.train["image"]
      n_real = self.n_real
      rows = np.asarray(
        jax.random.permutation(stream_key(self.root_key, "fd_real_rows"), len(train))[:n_real]
      )
      _, real = self.feature_net(scale_values(train[rows], FEATURE_RANGE))
      _, test = self.feature_net(scale_values(self.dataset.test["image"], FEATURE_RANGE))
      self._real_stats = metrics.gaussian_statistics(real)
      self._real_features = real
      self._real_labels = np.asarray(self.dataset.train["label"][rows])
      floor = metrics.precision_recall_density_coverage(real, test, k=self.options.prdc_k)
      self._prdc_floor = {"precision_floor": floor["precision"], "recall_floor": floor["recall"]}
      self._floor = metrics.frechet_distance(*self._real_stats, *metrics.gaussian_statistics(test))
      self.n_test = len(test)
    return self._real_stats

  def evaluate(self, samples, labels) -> dict[str, Any]:
    real_stats = self.real_statistics()
    samples = to_range(samples, self.value_range, FEATURE_RANGE)
    probabilities, features = self.feature_net(samples)
    prdc = metrics.precision_recall_density_coverage(
      self._real_features, features, k=self.options.prdc_k
    )
    out = {
      "fd": metrics.frechet_distance(*real_stats, *metrics.gaussian_statistics(features)),
      "fd_floor": self._floor,
      **prdc,
      **self._prdc_floor,
      "cs": metrics.classifier_score(probabilities),
      "class_entropy": metrics.class_histogram_entropy(probabilities),
    }
    if labels is not None:
      labels = np.asarray(labels)
      out["class_accuracy"] = float(np.mean(np.argmax(probabilities, axis=1) == labels))
      per_class = [
        metrics.frechet_distance_of(
          self._real_features[self._real_labels == c], features[labels == c]
        )
        for c in np.unique(labels)
        if np.sum(self._real_labels == c) > 1 and np.sum(labels == c) > 1
      ]
      out["fd_class_mean"] = float(np.mean(per_class))
    return out

  def protocol(self) -> dict[str, Any]:
    self.real_statistics()
    return {
      "fd_n_real": self.n_real,
      "fd_real_split": "train",
      "fd_n_fake": self.num_samples,
      "fd_floor": f"train ({self.n_real}) vs test ({self.n_test}) images",
      "prdc_k": self.options.prdc_k,
      "prdc_space": "the feature network's features, the fd_n_real train images against the "
      "fd_n_fake samples",
      "feature_network_input_range": list(FEATURE_RANGE),
      **self.feature_net.protocol(),
    }


__all__ = ["FEATURE_RANGE", "FeatureNetEvaluator"]
