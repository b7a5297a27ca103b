"""Sharded from end to end: a state made, stepped, saved, restored and viewed without ever
being whole on one device or one host; checkpoints by shards, restored onto another mesh."""

from __future__ import annotations

import json
import shutil

import chex
import numpy as np
import pytest

from conftest import assert_close_normwise, make_test_config, run_python

# In a process with 4 fake devices: records every whole copy to the host (np.asarray,
# device_get, float(...) and process_allgather all go through `_value`) of an array split
# over `fsdp`, while a run trains, saves, draws its views, resumes, is evaluated, encodes
# and samples; those shaped like a split state array are the state's.
WATCHED_RUN = """
import json, sys, jax
from jax._src import array as _array
from jax.experimental import multihost_utils
from conftest import make_test_config
from genlab.run import evaluate_workdir, sample_workdir, setup, train_and_evaluate
from genlab.run.commands import encode_workdir

MIN = 64
tmp, data_dir, families = TMP_PATH, DATA_DIR, FAMILIES
copies = []
def split(x):
  return isinstance(x, jax.Array) and x.size >= MIN and any(
    e == "fsdp" for e in getattr(x.sharding, "spec", ()))
value = _array.ArrayImpl.__dict__["_value"]
def watched(self):
  if self._npy_value is None and split(self):
    copies.append(("_value", tuple(self.shape), str(self.sharding.spec)))
  return value.fget(self)
_array.ArrayImpl._value = property(watched)
gather = multihost_utils.process_allgather
def watched_gather(tree, tiled=False):
  leaves = [x for x in jax.tree.leaves(tree) if split(x)]
  copies.extend(("process_allgather", tuple(x.shape), "") for x in leaves)
  return gather(tree, tiled=tiled)
multihost_utils.process_allgather = watched_gather

out = {}
for family, model in families:
  config = make_test_config(data_dir, family=family, num_steps=20, log_every=5, eval_every=10,
    image_every=10, checkpoint_every=10, **{"mesh.devices": 0, "mesh.fsdp": -1,
    "mesh.fsdp_min_size": MIN})
  if model is not None:
    config.model = config.model.__class__(model)
    if family == "vae":
      from genlab.families.vae import options
      config.vae = options(nll_k=4)
  workdir = f"{tmp}/{family}"
  born = [x for x in jax.tree.leaves(setup(config).initial_state) if x.size >= MIN]
  config.num_steps = 10
  train_and_evaluate(config, workdir)
  config.num_steps = 20
  result = train_and_evaluate(config, workdir)  # A resume: restored into its shards.
  report = evaluate_workdir(workdir)
  encode_workdir(workdir, out=f"{tmp}/{family}.npz")
  if family == "vae":
    sample_workdir(workdir, num=4, out=f"{tmp}/{family}.png")
  leaves = [x for x in jax.tree.leaves(result.state) if x.size >= MIN]
  state_shapes = {tuple(x.shape) for x in leaves if split(x)}
  out[family + "_copies"] = [c for c in copies if c[1] in state_shapes]
  copies.clear()
  out[family] = {
    "large": len(leaves),
    "split": sum(any(e == "fsdp" for e in x.sharding.spec) for x in leaves),
    # Made split: no device ever held a whole one (jit's outputs, each device its shards).
    "born_split": all(isinstance(x, jax.Array) and split(x) for x in born) and len(born),
    "mse": report["metrics"].get("mse", report["metrics"].get("neg_elbo")),
  }
print(json.dumps(out))
"""


@pytest.mark.slow
def test_a_state_split_over_fsdp_is_never_copied_whole_to_the_host(data_dir, tmp_path):
  families = [
    ("autoencoder", None),
    ("vae", {"name": "vae", "hidden": (32,), "latent_dim": 4}),
  ]
  code = WATCHED_RUN.replace("FAMILIES", repr(families)).replace("DATA_DIR", repr(data_dir))
  code = code.replace("TMP_PATH", repr(str(tmp_path)))
  out = json.loads(run_python(code, devices=4).splitlines()[-1])
  for family, _ in families:
    # No whole copy of an array shaped like a split state array (parameters, moments).
    assert out.pop(family + "_copies") == [], family
  for family, row in out.items():
    # Every state array of at least fsdp_min_size elements, parameters and Adam's moments,
    # stays split over the 4 devices from birth to the end.
    assert row["large"] >= 4 and row["split"] == row["large"], (family, row)
    assert row["born_split"] == row["large"], (family, row)
    assert np.isfinite(row["mse"])


def test_the_first_log_line_says_what_fsdp_splits(test_config, capsys):
  from genlab.run import setup

  s = setup(test_config(**{"mesh.fsdp": 1}))
  assert s.runner.describe_state(s.abstract_state).endswith("replicated (fsdp=1)")
  code = """
from conftest import make_test_config
from genlab.run import setup
for size in (64, 1 << 18):
  mesh = {"mesh.devices": 0, "mesh.fsdp": -1, "mesh.fsdp_min_size": size}
  s = setup(make_test_config(None, **mesh))
  print(s.runner.describe_state(s.abstract_state))
"""
  small, default = run_python(code, devices=4).strip().splitlines()[-2:]
  assert small.startswith("state: ") and "arrays split over fsdp=4 (" in small, small
  assert default.endswith("replicated (no array has 262144 elements)"), default


def test_the_params_digest_does_not_depend_on_how_the_arrays_are_split():
  code = """
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from genlab.core import make_mesh
from genlab.run.pins import params_digest
mesh = make_mesh(jax.devices(), fsdp=4)
values = {"w": np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32),
          "b": np.arange(8, dtype=np.int32)}
split = jax.device_put(values, {"w": NamedSharding(mesh, P("fsdp", None)),
                                "b": NamedSharding(mesh, P())})
print(params_digest(values) == params_digest(split))
"""
  assert run_python(code, devices=4).strip().splitlines()[-1] == "True"


# `genlab train` of the main experiment, tiny, run by `genlab.cli` in a process of its own
# with the restores that need its number of devices: each new process spends seconds
# importing JAX and TFDS, and only the number of devices (and the two-process run) needs one.
RUNS = """
import json, shutil, jax, numpy as np
from genlab import cli, config as config_lib
from genlab.run import setup
from genlab.run.checkpoint import Checkpointer
from test_preemption import _args

def train(workdir, *overrides):
  args = ["--config.log_every=10", "--config.eval_every=20", "--config.image_every=20",
    "--config.checkpoint_every=20", "--config.mesh.fsdp_min_size=256", *overrides]
  assert cli.run(_args(workdir, DATA_DIR, *args)[1:]) == 0

def restore(workdir, fsdp, out):
  config = config_lib.from_json(open(workdir + "/config.json").read())
  config.mesh.update(devices=0, fsdp=fsdp)
  s = setup(config)
  ckpt = Checkpointer(workdir + "/checkpoints", read_only=True)
  state = ckpt.restore_exactly(s.abstract_state, 20)
  ckpt.close()
  specs = {str(x.sharding.spec) for x in jax.tree.leaves(state.params)}
  np.savez(out, *[np.asarray(x) for x in jax.tree.leaves(state.params)])
  return {"devices": len(jax.devices()), "specs": sorted(specs)}
"""


@pytest.mark.slow
def test_saved_split_on_four_devices_it_resumes_on_two_on_one_and_on_two_processes(
  data_dir, tmp_path
):
  import tensorstore as ts
  from test_preemption import _finish, _two_processes

  saved, four = str(tmp_path / "saved"), ["--config.mesh.fsdp=-1"]

  def in_process(devices, code):
    """Runs `code` after RUNS on `devices` fake devices; its last line printed, as JSON."""
    program = RUNS.replace("DATA_DIR", repr(data_dir)) + code
    return json.loads(run_python(program, devices=devices).splitlines()[-1])

  def restored(devices, fsdp, before="", then=""):
    """The params of `saved`'s step 20 restored onto `devices` devices split by `fsdp`, in
    one process with the code `before` and `then`."""
    out = str(tmp_path / f"restored_{devices}.npz")
    code = f"{before}\nrow = restore({saved!r}, {fsdp}, {out!r})\n{then}\nprint(json.dumps(row))"
    row = in_process(devices, code)
    assert row["devices"] == devices
    assert any("fsdp" in spec for spec in row["specs"]) == (devices == 4), row
    return [v for _, v in sorted(np.load(out).items(), key=lambda kv: int(kv[0][4:]))]

  # On 4 devices split over fsdp: an unbroken run to step 40, one saved at step 20, and its
  # checkpoint restored exactly (split) onto the 4 devices; later on 2 (data parallel) and 1.
  runs = f"""
train({str(tmp_path / "unbroken")!r}, "--config.num_steps=40", *{four!r})
train({saved!r}, "--config.num_steps=20", *{four!r})
"""
  params = {4: restored(4, -1, before=runs)}
  # The checkpoint holds the arrays as they were split: orbax's metadata names the split.
  import orbax.checkpoint as ocp

  item = tmp_path / "saved" / "checkpoints" / "20" / "default"
  metadata = ocp.StandardCheckpointer().metadata(item).item_metadata
  specs = [leaf.sharding.partition_spec for leaf in _leaves(metadata["params"])]
  assert ("fsdp",) in [tuple(s for s in spec if s) for spec in specs], specs

  # Restored exactly onto 2 devices and 1 device, each going on to step 40 in the process
  # that restored there.
  def go_on(name):
    workdir = str(tmp_path / name)
    copy = f"shutil.copytree({saved!r}, {workdir!r})"
    return f"{copy}\ntrain({workdir!r}, '--config.num_steps=40', '--config.mesh.fsdp=1')"

  params[2] = restored(2, 1, then=go_on("two_devices"))
  params[1] = restored(1, 1, then=go_on("one_device"))
  for devices in (2, 1):
    chex.assert_trees_all_equal(params[devices], params[4])
  shutil.copytree(tmp_path / "saved", tmp_path / "two_processes")
  args = ["--config.log_every=10", "--config.eval_every=20", "--config.image_every=20"]
  args += ["--config.checkpoint_every=20", "--config.mesh.fsdp_min_size=256"]
  args += ["--config.num_steps=40", *four]
  results = _finish(_two_processes(tmp_path / "two_processes", data_dir, args))
  assert [code for code, _ in results] == [0, 0], results[0][1][-3000:] + results[1][1][-3000:]
  # Each resumed to step 40: as the unbroken 4-device run, up to float rounding.
  from conftest import restore_latest

  _, expected = restore_latest(tmp_path / "unbroken")
  for name in ("two_devices", "one_device", "two_processes"):
    step, got = restore_latest(tmp_path / name)
    assert step == 40, name
    assert_close_normwise(got.params, expected.params, rel=1e-5, err_msg=f"{name}: ")
  # On 2 processes × 2 devices split over all 4, each process wrote only its own shards.
  item = tmp_path / "two_processes" / "checkpoints" / "40" / "default"
  written = {}
  for process in (0, 1):
    store = ts.KvStore.open(
      {"driver": "ocdbt", "base": f"file://{(item / f'ocdbt.process_{process}').resolve()}"}
    ).result()
    written[process] = {k.decode() for k in store.list().result() if "params." in k.decode()}
  chunks = [{k for k in written[p] if not k.endswith((".zarray", ".zattrs"))} for p in (0, 1)]
  assert chunks[0] and chunks[1] and not chunks[0] & chunks[1], written


def _leaves(tree):
  if isinstance(tree, dict):
    for value in tree.values():
      yield from _leaves(value)
  else:
    yield tree


@pytest.mark.filterwarnings(r"error::DeprecationWarning:genlab(\..*)?")
@pytest.mark.filterwarnings(r"error::FutureWarning:genlab(\..*)?")
def test_genlab_calls_nothing_the_installed_jax_deprecates(test_config, tmp_path):
  """A run, its checkpoint, a resume and an evaluation with every deprecation warning that
  genlab's own code triggers (those attributed to a genlab module) turned into an error."""
  from genlab.run import evaluate_workdir, train_and_evaluate

  train_and_evaluate(test_config(num_steps=10), tmp_path)
  train_and_evaluate(test_config(num_steps=20), tmp_path)
  assert evaluate_workdir(tmp_path)["checkpoint_step"] == 20


FAMILY_MODELS = {
  "autoencoder": None,
  "vae": {"name": "vae", "hidden": (16,), "latent_dim": 4},
  "gan": {
    "name": "gan",
    "architecture": "mlp",
    "latent_dim": 4,
    "generator": {"hidden": (16,)},
    "discriminator": {"hidden": (16,)},
  },
  "vq_vae": {"name": "vq_vae", "features": (8, 16), "code_dim": 4, "codebook_size": 8},
}


@pytest.mark.parametrize("family", sorted(FAMILY_MODELS))
def test_a_state_made_in_two_programs_equals_the_one_its_init_makes(family, data_dir):
  """The first state comes in two programs (everything but the optimizer states, then those
  from the parameters: `Runner.init_state`), exactly as the family's `init_state` makes it."""
  import jax

  from genlab.config import base_config
  from genlab.core import rngs
  from genlab.data import eval_batches
  from genlab.families import get_family
  from genlab.run import setup

  config = make_test_config(data_dir, family=family)
  group = get_family(family).options_group
  if group is not None:
    config[group] = base_config(family)[group]
  if FAMILY_MODELS[family] is not None:
    config.model = config.model.__class__(FAMILY_MODELS[family])
  s = setup(config)
  value_range = s.family.value_range
  example = next(eval_batches(s.dataset.train, global_batch_size=1, value_range=value_range))
  whole = jax.jit(s.family.init_state)(rngs.stream_key(s.root_key, "init"), example)
  chex.assert_trees_all_equal(s.initial_state, whole)
  assert jax.tree.leaves(s.initial_state.opt_state)  # There were optimizer states to make.
