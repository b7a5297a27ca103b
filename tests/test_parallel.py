"""One code path on every mesh: one device, data parallel and FSDP give the same results.

Multi-device cases run in a subprocess with 4 fake CPU devices
(XLA_FLAGS=--xla_force_host_platform_device_count=4 must be set before JAX starts).
"""

from __future__ import annotations

import json

import chex
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from conftest import compare_parallel, run_python
from genlab.core.sharding import fsdp_spec


@pytest.mark.slow
@pytest.mark.parametrize(
  "experiment, steps, modes",
  [
    ("vae_digits.py", 10, ("data",)),
    ("gan_digits.py", 20, ("data", "fsdp")),
    ("sparse_ae_patches.py", 20, ("data",)),
    # The variants' own randomness and state: IWAE's k samples per example, the labels a
    # conditional VAE or GAN reads and draws, WGAN-GP's per-example mixing weights and
    # second-order penalty, SNGAN's power iteration.
    ("iwae_digits.py", 10, ("data",)),
    ("cvae_digits.py", 10, ("data",)),
    ("wgan_gp_digits.py", 10, ("data",)),
    ("cgan_digits.py", 10, ("data",)),
    ("sngan_digits.py", 4, ("data",)),
  ],
)
def test_data_parallel_and_fsdp_meshes_match_one_device(experiment, steps, modes, data_dir):
  # vae_digits and gan_digits draw per-example noise: keys must not depend on devices;
  # gan_digits also updates two networks with two optimizers per step; sparse_ae_patches'
  # KL-ρ penalty depends on ρ̂ over the whole global batch (a reduction inside the loss).
  # vae_digits stops at 10 steps: the all-reduce sums in another order than one device
  # does, and by step 20 those last-bit differences have flipped a ReLU unit near zero and
  # the trajectories part (6.8e-5, measured); its keys show from step 1. In `fsdp` every
  # array of 256 elements or more is split over the 4 devices. The conv AE: data parallel
  # in test_dispatch.py (denoising_digits), data and fsdp across two processes in
  # test_preemption.py.
  rows = compare_parallel(experiment, data_dir, steps=steps, modes=",".join(modes))
  reference = np.array(rows["one"]["losses"])
  assert len(reference) == steps
  for mode in modes:
    assert rows[mode]["devices"] == 4
    np.testing.assert_allclose(rows[mode]["losses"], reference, rtol=1e-4, err_msg=mode)
    # Params too: a gradient summed instead of averaged over devices moves them
    # while Adam keeps the losses deceptively close.
    assert rows[mode]["max_abs_param_diff_vs_1_device"] < 1e-5, rows[mode]
    # The evaluation each run ends with: the test split summed from 4 devices' shards, and
    # the samples (drawn from example keys) scored as on one device.
    _assert_same_evaluation(rows[mode]["test"], rows["one"]["test"], mode)


# A k-NN fraction counts samples inside k-NN balls: one that lies at a ball's edge may fall
# on either side when the trained parameters differ by rounding (one sample of the 1,497 is
# 0.07%), so these are held to 0.01. An evaluation that loses or repeats a device's shard
# changes `num_examples` and the sums, which are held exactly and to 1e-4.
KNN_FRACTIONS = ("precision", "recall", "density", "coverage")


def _assert_same_evaluation(got: dict, expected: dict, mode: str) -> None:
  """The final test metrics of a run on `mode`'s mesh against the one-device run's: the same
  names, the same examples, each value to the losses' rtol (measured on Zen 4 over the eight
  experiments: at most 4.2e-7 apart, the k-NN fractions equal)."""
  assert got.keys() == expected.keys(), (mode, sorted(got), sorted(expected))
  assert got["num_examples"] == expected["num_examples"], mode
  for name, value in expected.items():
    if name.removesuffix("_floor") in KNN_FRACTIONS:
      assert abs(got[name] - value) <= 0.01, (mode, name, got[name], value)
    else:
      np.testing.assert_allclose(got[name], value, rtol=1e-4, err_msg=f"{mode}: test/{name}")


NOISY_STEP = """
import json
import jax, jax.numpy as jnp, numpy as np, optax
from genlab.core import TrainState, example_keys, gradient_step, root_key, stream_key
from genlab.data import Batcher
from genlab.run.runner import Runner, StreamedFeed

def noisy_step(state, batch, key):
  # Per-example noise from each example's global index: device-count independent.
  keys = example_keys(stream_key(key, "noise"), batch["index"])
  noise = jax.vmap(lambda k: jax.random.normal(k, batch["x"].shape[1:]))(keys)
  def loss_fn(w):
    return jnp.mean(((batch["x"] + noise) @ w - batch["y"]) ** 2), {}
  return gradient_step(state, "w", loss_fn)

rng = np.random.default_rng(0)
split = {"image": rng.normal(size=(40, 3)).astype(np.float32),
         "target": rng.normal(size=(40, 2)).astype(np.float32)}
out = {}
for name, devices, fsdp in (("one", 1, 1), ("data", 0, 1), ("fsdp", 0, -1)):
  runner = Runner(global_batch_size=8, devices=devices, fsdp=fsdp, fsdp_min_size=1)
  state = TrainState.create(params={"w": jnp.ones((4, 2))}, tx={"w": optax.sgd(0.1)})
  state = runner.place_state(jax.device_get(state))
  batcher = Batcher(split, global_batch_size=8, key=jax.random.key(0), value_range=None)
  feed = StreamedFeed(batcher, runner, start=0, end=5, steps_per_dispatch=1)
  def step_fn(state, batch, key):
    batch = {"x": jnp.pad(batch["image"], ((0, 0), (0, 1))), "y": batch["target"],
             "index": batch["index"]}
    return noisy_step(state, batch, key)
  step = runner.train_step(step_fn, feed, state)
  for s in range(5):
    state, metrics = step(state, root_key(7), feed.inputs(s))
  final = runner.to_host(state)
  out[name] = {"w": np.asarray(final.params["w"]).tolist(), "step": int(final.step),
               "devices": runner.num_devices, "spec": str(state.params["w"].sharding.spec)}
print(json.dumps(out))
"""


@pytest.mark.slow
def test_per_example_randomness_does_not_depend_on_the_mesh():
  out = json.loads(run_python(NOISY_STEP, devices=4).strip().splitlines()[-1])
  assert out["one"]["devices"] == 1 and out["data"]["devices"] == 4
  assert "fsdp" in out["fsdp"]["spec"] and "fsdp" not in out["data"]["spec"], out
  for mode in ("data", "fsdp"):
    assert out[mode]["step"] == 5
    np.testing.assert_allclose(out[mode]["w"], out["one"]["w"], rtol=1e-5, err_msg=mode)
  # The noise matters: without it the step would be deterministic and the test vacuous.
  assert not np.allclose(out["one"]["w"], 1.0)


FSDP_SHARDS = """
import json
import jax
from genlab.config import load_experiment
from genlab.run import setup
config = load_experiment("experiments/conv_ae_digits.py")
config.data.data_dir = DATA_DIR
config.mesh.fsdp = -1
config.mesh.fsdp_min_size = 1000
s = setup(config)
state = s.runner.place_state(s.initial_state)
rows = []
for path, x in jax.tree_util.tree_leaves_with_path(state.params):
  rows.append({"path": jax.tree_util.keystr(path), "shape": list(x.shape), "size": x.size,
               "spec": str(x.sharding.spec),
               "shard": list(x.addressable_shards[0].data.shape)})
mu = jax.tree.leaves(state.opt_state["model"][0].mu)
print(json.dumps({"rows": rows, "mu_specs": [str(m.sharding.spec) for m in mu],
                  "mesh": dict(s.runner.mesh.shape)}))
"""


@pytest.mark.slow
def test_fsdp_shards_large_parameters_and_their_optimizer_state(data_dir):
  code = FSDP_SHARDS.replace("DATA_DIR", repr(data_dir))
  out = json.loads(run_python(code, devices=4).strip().splitlines()[-1])
  assert out["mesh"] == {"data": 1, "fsdp": 4}
  sharded = [r for r in out["rows"] if "fsdp" in r["spec"]]
  assert sharded, out["rows"]
  for row in out["rows"]:
    if row["size"] >= 1000 and any(d % 4 == 0 for d in row["shape"]):
      # Split 4 ways along one axis: each device holds a quarter.
      assert "fsdp" in row["spec"], row
      assert np.prod(row["shard"]) * 4 == row["size"], row
    else:
      assert "fsdp" not in row["spec"] and row["shard"] == row["shape"], row
  # Adam's moments follow their parameters.
  assert sum("fsdp" in spec for spec in out["mu_specs"]) == len(sharded)


def test_fsdp_rule_splits_the_largest_divisible_axis_of_large_arrays():
  assert fsdp_spec((784, 500), 4, min_size=1000) == P("fsdp", None)
  assert fsdp_spec((3, 3, 32, 64), 4, min_size=1000) == P(None, None, None, "fsdp")
  assert fsdp_spec((6, 500), 4, min_size=1000) == P(None, "fsdp")  # 6 does not divide.
  assert fsdp_spec((7, 9), 4, min_size=10) == P()  # No axis divides.
  assert fsdp_spec((784, 500), 4, min_size=10**6) == P()  # Too small to shard.
  assert fsdp_spec((784, 500), 1, min_size=0) == P()  # No fsdp axis.
  assert fsdp_spec((), 4, min_size=0) == P()


def _family_and_state(test_config):
  from genlab.core import stream_key
  from genlab.data import Batcher
  from genlab.run import setup

  s = setup(test_config(batch_size=4))
  batcher = Batcher(s.dataset.train, global_batch_size=4, key=stream_key(s.root_key, "data"))
  return s, batcher


def test_train_step_compiles_once(test_config):
  from genlab.run.runner import StreamedFeed

  s, batcher = _family_and_state(test_config)
  traced = chex.assert_max_traces(s.family.train_step, n=1)
  feed = StreamedFeed(batcher, s.runner, start=0, end=4, steps_per_dispatch=1)
  state = s.runner.place_state(s.initial_state)
  step = s.runner.train_step(traced, feed, state)
  for i in range(4):
    state, _ = step(state, s.root_key, feed.inputs(i))
  assert int(state.step) == 4


@pytest.mark.slow
def test_batch_not_divisible_by_devices_is_refused():
  code = """
from genlab.errors import ConfigError
from genlab.run.runner import Runner
for kwargs in ({"global_batch_size": 6}, {"global_batch_size": 8, "eval_batch_size": 10},
               {"global_batch_size": 8, "fsdp": 3}, {"global_batch_size": 8, "devices": 5}):
  try:
    Runner(**kwargs)
  except ConfigError as e:
    print("refused:", e)
"""
  out = run_python(code, devices=4)
  assert "refused: batch_size 6 is not divisible by the 4 devices" in out
  assert "refused: eval_batch_size 10 is not divisible by the 4 devices" in out
  assert "refused: mesh.fsdp=3 must divide the 4 devices of the run" in out
  assert "refused: mesh.devices=5: there are 4 devices" in out


@pytest.mark.slow
def test_use_cpu_devices_splits_the_cpu_before_jax_starts_and_refuses_after():
  code = """
import os
os.environ.pop("XLA_FLAGS")
import jax
from genlab.errors import ConfigError
from genlab.run.runner import use_cpu_devices
use_cpu_devices(2)
print("devices", jax.device_count(), jax.default_backend())
use_cpu_devices(2)  # The count it already has: nothing to do.
for bad in (3, 0, 1.5):
  try:
    use_cpu_devices(bad)
  except ConfigError as e:
    print("refused:", e)
"""
  out = run_python(code)
  assert "devices 2 cpu" in out
  assert "refused: cannot split the CPU into 3 devices: JAX has already started (with 2" in out
  assert "refused: cpu_devices must be a positive integer, got 0" in out
  assert "refused: cpu_devices must be a positive integer, got 1.5" in out

  # JAX started on its own with one CPU device: asking for that one count is no change.
  started = """
import os
os.environ.pop("XLA_FLAGS")
import jax
from genlab.run.runner import use_cpu_devices
jax.numpy.ones(1)
use_cpu_devices(1)
print("kept", jax.device_count())
"""
  assert "kept 1" in run_python(started)
