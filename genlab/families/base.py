"""What a model family is: its maths, with its views and its words on the class.

A family is a `Family` subclass, in genlab's own `genlab/families/` or in a package of
the user's:

* the maths. It builds its model(s) (`model_class`: genlab's by name, or the user's) and
  optimizer(s) from the config and the dataset's shapes, and gives pure functions:
  `init_state`, `train_step` (built from `genlab.core.gradient_step`) and `eval_step`
  (sums over a batch), plus, if it has them, `summarize`, `final_eval_step`,
  `distribution_metrics`, `reference_metrics`, `sample` and `encode`. Its config options
  are its own: `default_options()`, the `config.<options_group>` group.
* `views`: a `Views` subclass — the images written beside the metrics (grids, plots):
  drawing only, no maths.
* `report`: a `Report` subclass — the words of `eval.json`: how the numbers were obtained
  (`protocol`) and what each one means (`definitions`).
* if it samples, `sample_evaluators`: its default choice of the evaluators
  (`genlab.evaluators`, the shared group `config.sample_metrics`) that measure its samples
  at every evaluation; this base class builds them, gathers their resources, draws their
  samples (`metric_samples`) and adds their numbers, protocol and definitions.

A config names it by `config.family` (`genlab.families.REGISTRY`: genlab's names, a
`register_family` call, an installed package's entry point, or 'package.module:Class').
The run layer (`genlab.run`) compiles and drives the functions; no family has a loop of
its own, and no family imports the run layer. docs/extending.md walks through one.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from genlab import evaluators as evaluators_lib
from genlab import kernels as kernels_lib
from genlab import models as models_lib
from genlab.core.nnx_model import NNXModel, is_nnx_class, takes
from genlab.core.rngs import stream_key
from genlab.core.state import TrainState
from genlab.core.step import Metrics
from genlab.data import Dataset
from genlab.errors import ConfigError, GenlabError


def label_count(dataset: Dataset) -> int:
  """The classes of a labelled dataset: its largest label in either split, plus one."""
  return int(max(np.max(dataset.train["label"]), np.max(dataset.test["label"]))) + 1


class Views:
  """Images of a family's model, written to `images/` and TensorBoard at every image
  step: drawing only (`genlab.views`), the maths stay in the family."""

  def __init__(self, family: Family):
    self.family = family

  def images(
    self, state: TrainState, batch: dict[str, np.ndarray], step: int
  ) -> dict[str, np.ndarray]:
    """Named uint8 RGB images (H, W, 3) of `state`; `batch` holds the first `num_images`
    test examples (the same at every step), `mask` 1 on the real ones."""
    return {}


class Report:
  """The words of `eval.json`: how the family's numbers were obtained, and what each means.

  `definitions` maps every metric the family may report to its meaning; `eval.json` keeps
  those of the metrics a run reported (`describe`)."""

  definitions: ClassVar[dict[str, str]] = {}

  def __init__(self, family: Family):
    self.family = family

  def protocol(self) -> dict[str, Any]:
    """Settings that say how the eval numbers were obtained (sample counts, k, ...)."""
    return {}

  def describe(self, metrics: Mapping[str, Any]) -> dict[str, str]:
    """The definitions of the metrics in `metrics`: the family's, and those of its sample
    evaluators (`config.sample_metrics`)."""
    sample_metrics = self.family.sample_metrics
    definitions = {**(sample_metrics.definitions if sample_metrics else {}), **self.definitions}
    return {k: v for k, v in definitions.items() if k in metrics}

  def eval_protocol(self) -> dict[str, Any]:
    """What `eval.json` says of how its numbers were obtained: the family's `protocol` and
    that of its sample evaluators."""
    sample_metrics = self.family.sample_metrics
    return {**self.protocol(), **(sample_metrics.protocol() if sample_metrics else {})}


class Family(abc.ABC):
  """The maths of one model family: its state, its steps and its evaluation.

  Args:
    config: the experiment config.
    dataset: the loaded dataset (for shapes and baselines).
    root_key: the run's root key (`genlab.core.root_key(config.seed)`, made once by the run
      layer): the family's own randomness outside the train step (its evaluation's noise,
      which rows a metric uses) derives from it by name (`stream_key(root_key, name)`).
    kernels: which layers the models build, `flax` or `xla_cpu`, as the runner resolved
      `config.kernels` for the run's devices (`genlab.kernels.resolve`).
  """

  # The name of the family's own config group (`config.vae`, ...), whose fields and
  # defaults `default_options()` gives; None if it has none.
  options_group: ClassVar[str | None] = None
  # Fields `genlab eval` may override for this family (they change how it evaluates,
  # not what was trained), e.g. `vae.nll_k`.
  eval_overrides: ClassVar[tuple[str, ...]] = ()
  # The train metrics each log line and the progress bar show: the training objective(s).
  headline: ClassVar[tuple[str, ...]] = ("loss",)
  # Resources the run layer builds and hands over with `provide` before training or
  # evaluation (e.g. `feature_net`, a trained classifier); see `needs`.
  resources: dict[str, Any]
  # The classes a class-conditional family draws from (`conditional_classes`); None if not.
  num_classes: int | None = None
  # Its images (`Views`) and the words of its eval.json (`Report`).
  views: ClassVar[type[Views]] = Views
  report: ClassVar[type[Report]] = Report
  # The shared config fields it reads besides those every family reads (`genlab.config.
  # OPTIONAL_FIELDS`: `loss`, `corruption`); `base_config(family)` has only these.
  reads: ClassVar[tuple[str, ...]] = ()
  # genlab's models (`genlab.models.REGISTRY` names) `config.model.name` may name. A model of
  # the user's own, registered or named 'package.module:Class', is taken if it meets the
  # family's contract (its docs page says what the family calls).
  models: ClassVar[tuple[str, ...]] = ()
  # The model's fields the family sets itself (shapes from the data, the run's kernels and
  # dtype), left out of what `genlab config` shows of config.model.
  model_arguments: ClassVar[tuple[str, ...]] = ("kernels", "dtype")
  # A family that samples (`sample`) has the shared group `config.sample_metrics`: the
  # evaluators its samples go through at every evaluation (`genlab.evaluators`); this is
  # their default choice ("" none, "feature_net", ...). None: the family does not sample.
  sample_evaluators: ClassVar[str | None] = None
  # The evaluators of its samples (`config.sample_metrics`); None if it does not sample.
  sample_metrics: evaluators_lib.SampleMetrics | None = None

  @staticmethod
  def default_options() -> ml_collections.ConfigDict | None:
    """The family's config group with its defaults (None: no options)."""
    return None

  def __init__(
    self,
    config: ml_collections.ConfigDict,
    dataset: Dataset,
    *,
    root_key: jax.Array,
    kernels: str,
  ) -> None:
    if kernels not in kernels_lib.RESOLVED:
      raise ValueError(
        f"kernels={kernels!r}: a family takes what the runner resolved, one of "
        f"{kernels_lib.RESOLVED} (genlab.kernels.resolve)"
      )
    self.config = config
    self.dataset = dataset
    self.value_range = tuple(config.data.range)
    self.root_key = root_key
    self.kernels = kernels
    self.resources = {}
    if self.sample_evaluators is not None:
      self.sample_metrics = evaluators_lib.SampleMetrics(
        self.merged_group("sample_metrics", evaluators_lib.options(self.sample_evaluators)),
        dataset=dataset,
        value_range=self.value_range,
        root_key=root_key,
        key_name=self.sample_metrics_key_name,
      )

  # Building blocks ------------------------------------------------------------------

  def family_options(self) -> ml_collections.ConfigDict:
    """`config.<options_group>` over the family's defaults: a field the config lacks (a
    config saved by an older genlab) takes its default; a field the family does not know
    is an error."""
    return self.merged_group(self.options_group, self.default_options())

  def merged_group(
    self, group: str, defaults: ml_collections.ConfigDict
  ) -> ml_collections.ConfigDict:
    """`config.<group>` over `defaults` (see `family_options`)."""
    given = self.config.get(group)
    if given is None:
      return defaults
    unknown = sorted(set(given) - set(defaults))
    if unknown:
      raise ConfigError(
        f"config.{group} has no field {', '.join(unknown)}; its fields are "
        f"{', '.join(sorted(defaults))}"
      )
    merged = defaults.copy_and_resolve_references()
    merged.update(given.to_dict())
    return merged

  def conditional_classes(self, option: str) -> int:
    """The number of classes of a class-conditional family, asked for by config `option`:
    the dataset's largest label plus one; no labels is a config error."""
    if "label" not in self.dataset.train:
      raise ConfigError(f"{option} needs labels, and {self.dataset.name} has none")
    return label_count(self.dataset)

  def sample_labels(self, num: int) -> jax.Array | None:
    """The classes of a conditional family's `num` samples: 0, 1, …, C − 1, 0, 1, …; None
    if the family is not conditional."""
    if self.num_classes is None:
      return None
    return jnp.arange(num, dtype=jnp.int32) % self.num_classes

  def model_class(self) -> tuple[type, dict[str, Any]]:
    """The class `config.model.name` names and `config.model`'s other fields.

    The name is one of this family's `models`, or a model of the user's own: registered
    with `genlab.register_model`, declared by an installed package, or a
    'package.module:Class' path (`genlab.models.REGISTRY`)."""
    fields = self.config.model.to_dict()
    name = fields.pop("name", None)
    if models_lib.REGISTRY.builtin(name) and name not in self.models:
      raise ConfigError(
        f"family {self.config.family!r} takes config.model.name in {self.models} (genlab's), "
        f"or a model of your own ('package.module:Class'); got {name!r}"
      )
    return models_lib.REGISTRY.get(name), fields

  @classmethod
  def model_defaults(cls, config: ml_collections.ConfigDict) -> dict[str, Any] | None:
    """`config.model` with every field of its model's class at its default (what `genlab
    config` shows), leaving out the fields the family sets (`model_arguments`); None if the
    model cannot be resolved."""
    fields = config.model.to_dict()
    try:
      module = models_lib.REGISTRY.get(fields.get("name"))
    except ConfigError:
      return None
    return {**models_lib.field_defaults(module, skip=cls.model_arguments), **fields}

  def host_model(self, params, layer: str, *, skip_first: int = 0, description: str = ""):
    """This family's model with `params` as the host of an activation SAE reading `layer`
    (a `genlab.models.activations.HostModel`), for `config.sae.host_workdir` runs of this
    family; None (the default): its runs cannot be hosts."""
    return None

  def build(self, module: type, **fields: Any):
    """`module(**fields)` with the run's `kernels` and, with `config.dtype='bfloat16'`,
    computing in bf16 (its params stay float32); a field it does not take is reported as
    a config error.

    An `nnx.Module` class is taken through `genlab.core.NNXModel` (constructed with
    `rngs=nnx.Rngs(key)` at `init`; docs/extending.md, "Your model in NNX"): the fields
    above are passed where its constructor takes them."""
    nnx = is_nnx_class(module)
    if nnx:
      declared = {name for name in ("dtype", "kernels") if takes(module, name)}
    else:
      declared = getattr(module, "__dataclass_fields__", {})
    dtype = self.config.get("dtype", "float32")
    if dtype != "float32":
      if "dtype" not in declared:
        raise ConfigError(f"config.dtype={dtype!r}: {module.__name__} computes in float32 only")
      fields["dtype"] = jnp.dtype(dtype)
    if "kernels" in declared:
      fields["kernels"] = self.kernels
    if nnx:
      model = NNXModel(module, fields)
      _ = model.graphdef  # Constructed once from shapes: a field it does not take fails here.
      return model
    try:
      return module(**fields)
    except TypeError as e:
      raise ConfigError(f"config.model: {e}") from e

  # The maths -------------------------------------------------------------------------

  @abc.abstractmethod
  def init_state(self, key: jax.Array, batch: dict[str, np.ndarray]) -> TrainState:
    """A fresh state, shaped by an example batch."""

  @abc.abstractmethod
  def train_step(
    self, state: TrainState, batch: dict[str, jax.Array], key: jax.Array
  ) -> tuple[TrainState, Metrics]:
    """One update on the global batch, with `key` this step's key (per example:
    `genlab.core.example_keys(key, batch['index'])`). Built from `gradient_step`."""

  @abc.abstractmethod
  def eval_step(self, state: TrainState, batch: dict[str, jax.Array]) -> Metrics:
    """Sums over the batch's examples where `batch['mask']` is 1 (no averaging)."""

  def summarize(self, means: dict[str, Any]) -> dict[str, Any]:
    """Turns the per-example means of `eval_step`'s sums into the reported metrics."""
    return means

  # Set to a function like `eval_step` for metrics too costly for periodic eval
  # (the VAE's importance-sampled NLL); `genlab eval` runs it too.
  final_eval_step = None

  def distribution_metrics(self, state: TrainState) -> dict[str, Any]:
    """Metrics of the model as a whole, added to every eval: by default, those of its
    sample evaluators (`config.sample_metrics`) on `metric_samples`."""
    if not self.sample_metrics:
      return {}
    return self.sample_metrics.evaluate(*self.metric_samples(state))

  # The name of the stream of the root key the evaluated samples are drawn from.
  sample_metrics_key_name: ClassVar[str] = "sample_metrics"

  def metric_samples(
    self, state: TrainState, num: int | None = None
  ) -> tuple[np.ndarray, jax.Array | None]:
    """`num` samples (default: as many as the sample evaluators take) from the fixed key
    `sample_metrics_key_name`, the same at every evaluation, and their classes for a
    class-conditional family (`sample_labels`; else None)."""
    num = self.sample_metrics.num_samples if num is None else num
    key = stream_key(self.root_key, self.sample_metrics_key_name)
    return self.sample(state, key, num), self.sample_labels(num)

  def reference_metrics(self, metrics: dict[str, Any]) -> dict[str, Any]:
    """Trivial baselines on the test split for `genlab eval`, and the measured `metrics`
    against them (ratios)."""
    return {}

  def sample(self, state: TrainState, key: jax.Array, num: int) -> np.ndarray:
    """`num` generated examples (N, H, W, C) in the data's value range, for `genlab sample`."""
    raise GenlabError(f"the {type(self).__name__} family does not generate samples")

  def encode(self, params: Any, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """The codes of a batch's examples, as the model computes them at evaluation (named
    arrays with one row per example), for `genlab encode`."""
    raise GenlabError(f"the {type(self).__name__} family has no encoder to export codes of")

  # Resources -----------------------------------------------------------------------

  def needs(self) -> dict[str, dict[str, Any]]:
    """Resources to build before training or evaluation, by name, with their settings
    (`{'feature_net': {'steps': 2000}}`); the run layer builds them (`genlab.run`). By
    default, what its sample evaluators need."""
    return self.sample_metrics.needs() if self.sample_metrics else {}

  def provide(self, resources: Mapping[str, Any]) -> None:
    """Receives what `needs` asked for, built (and hands its sample evaluators theirs)."""
    self.resources = dict(resources)
    if self.sample_metrics:
      self.sample_metrics.provide(self.resources)


__all__ = ["Family", "Report", "Views", "label_count"]
