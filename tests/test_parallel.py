"""The same step body under jit, pmap and shard_map: equal results, one compilation.

Multi-device cases run in a subprocess with 4 fake CPU devices
(XLA_FLAGS=--xla_force_host_platform_device_count=4 must be set before JAX starts).
"""

from __future__ import annotations

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import compare_parallel, run_python


@pytest.mark.parametrize(
  "experiment, steps",
  [
    ("conv_ae_digits.py", 20),
    ("vae_digits.py", 10),
    ("gan_digits.py", 20),
    ("sparse_ae_patches.py", 20),
  ],
)
def test_pmap_and_shard_map_match_one_device(experiment, steps, data_dir):
  # vae_digits and gan_digits draw per-example noise: keys must not depend on devices;
  # gan_digits also updates two networks with two optimizers per step; sparse_ae_patches'
  # KL-ρ penalty depends on ρ̂ over the whole global batch (a collective inside the loss).
  # vae_digits stops at 10 steps: pmean sums in another order than one device does, and
  # by step 20 those last-bit differences (3e-8 at step 10) have flipped a ReLU unit near
  # zero and the trajectories part (6.8e-5, measured); its keys show from step 1.
  rows = compare_parallel(experiment, data_dir, steps=steps)
  reference = np.array(rows["none"]["losses"])
  assert len(reference) == steps
  for mode in ("pmap", "shard_map"):
    assert rows[mode]["devices"] == 4
    np.testing.assert_allclose(rows[mode]["losses"], reference, rtol=1e-4, err_msg=mode)
    # Params too: a gradient summed instead of averaged over devices moves them
    # while Adam keeps the losses deceptively close.
    assert rows[mode]["max_abs_param_diff_vs_1_device"] < 1e-5, rows[mode]


NOISY_STEP = """
import json
import jax, jax.numpy as jnp, numpy as np
from genlab.train import Runner, TrainState, example_keys, stream_key, pmean, root_key
import optax

def noisy_step(state, batch, key, *, axis_name):
  # Per-example noise from each example's global index: device-count independent.
  keys = example_keys(stream_key(key, "noise"), batch["index"])
  noise = jax.vmap(lambda k: jax.random.normal(k, (3,)))(keys)
  def loss_fn(w):
    return jnp.mean(((batch["x"] + noise) @ w - batch["y"]) ** 2)
  loss, grads = jax.value_and_grad(loss_fn)(state.params["w"])
  grads = pmean(grads, axis_name)
  return state.apply_gradients({"w": grads}), {"loss": pmean(loss, axis_name)}

rng = np.random.default_rng(0)
batches = [{"x": rng.normal(size=(8, 3)).astype(np.float32),
            "y": rng.normal(size=(8, 2)).astype(np.float32),
            "index": np.arange(8, dtype=np.int32)} for _ in range(5)]
out = {}
for mode in ("none", "pmap", "shard_map"):
  runner = Runner(mode, global_batch_size=8)
  state = TrainState.create(params={"w": jnp.ones((3, 2))}, tx={"w": optax.sgd(0.1)})
  state = runner.replicate(jax.device_get(state))
  step = runner.train_step(noisy_step)
  for b in batches:
    state, metrics = step(state, runner.shard(b), root_key(7))
  final = runner.unreplicate(state)
  out[mode] = {"w": np.asarray(final.params["w"]).tolist(), "step": int(final.step),
               "devices": runner.num_devices}
print(json.dumps(out))
"""


def test_per_example_randomness_does_not_depend_on_device_count():
  out = json.loads(run_python(NOISY_STEP, devices=4).strip().splitlines()[-1])
  assert out["none"]["devices"] == 1 and out["pmap"]["devices"] == 4
  for mode in ("pmap", "shard_map"):
    assert out[mode]["step"] == 5
    np.testing.assert_allclose(out[mode]["w"], out["none"]["w"], rtol=1e-5, err_msg=mode)
  # The noise matters: without it the step would be deterministic and the test vacuous.
  assert not np.allclose(out["none"]["w"], 1.0)


def _family_and_state(test_config):
  from genlab.train.loop import setup

  s = setup(test_config())
  from genlab.data import Batcher

  batcher = Batcher(s.dataset.train, global_batch_size=16, seed=0)
  return s, batcher


def test_train_step_compiles_once(test_config):
  from genlab.train.parallel import Runner

  s, batcher = _family_and_state(test_config)
  traced = chex.assert_max_traces(s.family.train_step, n=1)
  runner = Runner("none", global_batch_size=16)
  step = runner.train_step(traced)
  state = runner.replicate(s.initial_state)
  for i in range(4):
    state, _ = step(state, runner.shard(batcher.batch(i)), s.root_key)
  assert int(state.step) == 4


def test_jit_and_no_jit_steps_agree(test_config):
  s, batcher = _family_and_state(test_config)
  batch = jax.tree.map(jnp.asarray, batcher.batch(0))
  key = jax.random.key(0)
  with jax.disable_jit():
    eager_state, eager_metrics = s.family.train_step(s.initial_state, batch, key, axis_name=None)
  jit_step = jax.jit(lambda st, b, k: s.family.train_step(st, b, k, axis_name=None))
  jit_state, jit_metrics = jit_step(s.initial_state, batch, key)
  chex.assert_trees_all_close(eager_state.params, jit_state.params, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(eager_metrics, jit_metrics, rtol=1e-5, atol=1e-6)


def test_batch_not_divisible_by_devices_is_refused():
  code = """
from genlab.errors import ConfigError
from genlab.train import Runner
try:
  Runner("pmap", global_batch_size=6)
except ConfigError as e:
  print("refused:", e)
"""
  out = run_python(code, devices=4)
  assert "refused:" in out and "not divisible by the 4 devices" in out
  code = code.replace(
    'Runner("pmap", global_batch_size=6)', 'Runner("pmap", global_batch_size=8, eval_batch_size=10)'
  )
  out = run_python(code, devices=4)
  assert "refused: eval_batch_size 10 is not divisible by the 4 devices" in out


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the options are XLA:CPU's")
def test_cpu_steps_compile_with_genlab_xla_options_unless_xla_flags_set_them(monkeypatch):
  from genlab.train import parallel

  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
  assert parallel.compiler_options() == parallel.CPU_COMPILER_OPTIONS
  # The options reach XLA: a value it cannot parse fails the step's compilation.
  monkeypatch.setattr(
    parallel, "CPU_COMPILER_OPTIONS", {"xla_cpu_experimental_ynn_fusion_type": "NOT_A_TYPE"}
  )
  runner = parallel.Runner("none", global_batch_size=2)
  step = runner.eval_step(lambda state, batch: {"sum": jnp.sum(batch["x"])})
  batch = {"x": np.ones((2, 3), np.float32), "mask": np.ones(2, np.float32)}
  with pytest.raises(Exception, match="NOT_A_TYPE"):
    step(None, batch)
  # A user's own XLA_FLAGS setting of the flag wins over genlab's.
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=individual_dot")
  assert parallel.compiler_options() is None
  # The same options as flags, for jax.pmap (scripts/compare_parallel.py sets them).
  monkeypatch.undo()
  assert parallel.cpu_xla_flags() == "--xla_cpu_experimental_ynn_fusion_type=individual_dot,reduce"


def test_use_cpu_devices_splits_the_cpu_before_jax_starts_and_refuses_after():
  from genlab.train import parallel

  code = """
import os
os.environ.pop("XLA_FLAGS")
import jax
from genlab.errors import ConfigError
from genlab.train import parallel
parallel.use_cpu_devices(2)
print("devices", jax.device_count(), jax.default_backend())
print("flags", os.environ["XLA_FLAGS"])
parallel.use_cpu_devices(2)  # The count it already has: nothing to do.
for bad in (3, 0, 1.5):
  try:
    parallel.use_cpu_devices(bad)
  except ConfigError as e:
    print("refused:", e)
"""
  out = run_python(code)
  assert "devices 2 cpu" in out
  assert "flags " + parallel.cpu_xla_flags() in out  # For jax.pmap, which takes no options.
  assert "refused: cannot split the CPU into 3 devices: JAX has already started (with 2" in out
  assert "refused: cpu_devices must be a positive integer, got 0" in out
  assert "refused: cpu_devices must be a positive integer, got 1.5" in out

  # JAX started on its own with one CPU device: asking for that one count is no change.
  started = """
import os
os.environ.pop("XLA_FLAGS")
import jax
from genlab.train import parallel
jax.numpy.ones(1)
parallel.use_cpu_devices(1)
print("kept", jax.device_count())
"""
  assert "kept 1" in run_python(started)
