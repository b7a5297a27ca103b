"""What a run or an evaluation builds from a config: data, mesh, family, first state.

`setup(config)` loads the dataset, lays the run's devices out as a mesh
(`Runner`), builds the registered family (its maths, views and words) for those
devices, and derives the state's shapes and shardings (`abstract_state`, what checkpoints
restore into) without computing anything. The first state is made only when asked for
(`initial_state`), born sharded: each device computes only its own shards
(`Runner.init_state`), so a state larger than one device is never whole on one.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable

import jax
import ml_collections

from genlab import config as config_lib
from genlab.core import rngs
from genlab.core.state import TrainState
from genlab.data import Dataset, eval_batches, load_dataset
from genlab.errors import ConfigError, WorkdirError
from genlab.families import Family, Report, Views, get_family
from genlab.run.runner import Runner


@dataclasses.dataclass
class Setup:
  """Everything a run or an evaluation builds from a config."""

  config: ml_collections.ConfigDict
  dataset: Dataset
  family: Family
  views: Views
  report: Report
  runner: Runner
  root_key: jax.Array
  # The state's shapes, dtypes and shardings (`jax.ShapeDtypeStruct`s): what checkpoints
  # restore into, each array straight into its shards.
  abstract_state: TrainState | None = None
  # What pins the resources a workdir's checkpoints were trained with (an SAE's host: its
  # checkpoint step and parameters' digest), by resource name; `genlab.run.resources`.
  pins: dict = dataclasses.field(default_factory=dict)
  _init: Callable[[], TrainState] | None = dataclasses.field(default=None, repr=False)
  _initial: TrainState | None = dataclasses.field(default=None, repr=False)

  @property
  def initial_state(self) -> TrainState:
    """A fresh state on the run's mesh, born sharded (made on first use, then kept)."""
    if self._initial is None:
      self._initial = self._init()
    return self._initial

  def forget_initial_state(self) -> None:
    """Frees the fresh state (a run that restored a checkpoint has no use for it)."""
    self._initial = None


def setup(
  config: ml_collections.ConfigDict,
  *,
  provide: Callable[[Setup], None] | None = None,
  pins: dict | None = None,
) -> Setup:
  """Checks `config` (`genlab.config.validate`), loads the data and builds the runner, the
  family and a fresh state for it.

  `provide` builds the resources the family needs (`genlab.run.resources.provide`); it
  runs before the first state is made, since a family's shapes may depend on them (an
  SAE's input width is its host model's)."""
  config_lib.validate(config)
  return build(config, provide=provide, pins=pins)


def build(
  config: ml_collections.ConfigDict,
  *,
  provide: Callable[[Setup], None] | None = None,
  pins: dict | None = None,
) -> Setup:
  """`setup` of a config its caller has validated already: the train loop and `genlab eval`
  check theirs once, before they touch the workdir. `pins` are the resources' pins a
  workdir recorded (`genlab.run.resources.read_pins`): `provide` builds exactly those."""
  dataset = load_dataset(
    config.dataset,
    data_dir=config.data.data_dir,
    image_key=config.data.image_key,
    label_key=config.data.label_key,
    target_key=config.data.target_key,
    stream_train=config.data.get("stream_train", False),
    modality=config.data.get("modality"),
  )
  config_lib.resolve_num_steps(config, len(dataset.train["image"]))
  mesh = config_lib.mesh_settings(config)
  runner = Runner(
    global_batch_size=config.batch_size,
    eval_batch_size=config.eval_batch_size or config.batch_size,
    devices=mesh["devices"],
    fsdp=mesh["fsdp"],
    fsdp_min_size=mesh["fsdp_min_size"],
    kernels=config.get("kernels", "auto"),
  )
  family_class = get_family(config.family)
  # The seed enters here, once: every key of the run derives from this one by name.
  root_key = rngs.root_key(config.seed)
  family = family_class(config, dataset, root_key=root_key, kernels=runner.kernels)
  s = Setup(
    config=config,
    dataset=dataset,
    family=family,
    views=family_class.views(family),
    report=family_class.report(family),
    runner=runner,
    root_key=root_key,
    pins=dict(pins or {}),
  )
  if provide is not None:
    provide(s)
  example = next(eval_batches(dataset.train, global_batch_size=1, value_range=family.value_range))
  key = rngs.stream_key(root_key, "init")
  try:  # Shapes only: nothing is computed, so a bad shape is found in a second.
    s.abstract_state = runner.abstract_state(family.init_state, key, example)
  except (TypeError, ValueError, ConfigError) as e:  # Flax reports shape mismatches so.
    raise ConfigError(
      f"model {config.model.name!r} cannot take {dataset.name}'s images of shape "
      f"{dataset.image_shape} (target {dataset.target_shape}): {str(e).splitlines()[0][:300]}"
    ) from e
  s._init = lambda: runner.init_state(family.init_state, s.abstract_state, key, example)
  return s


def check_workdir(workdir: pathlib.Path) -> None:
  """Creates the folder `workdir` (a workdir, or one inside it) and checks that it is
  writable, before any work starts."""
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    probe = workdir / f".write_probe_{jax.process_index()}"
    probe.write_text("ok")
    probe.unlink()
  except OSError as e:
    raise WorkdirError(f"cannot write to {workdir}: {e.strerror or e}") from e


__all__ = ["Setup", "build", "check_workdir", "setup"]
