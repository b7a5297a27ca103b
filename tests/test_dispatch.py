"""Device-resident data and multi-step dispatch change how steps are run, never what they
compute: the same batches as streaming, the same states as one step per call."""

from __future__ import annotations

import json

import chex
import jax
import numpy as np
import pytest

from conftest import assert_close_normwise, compare_parallel, make_test_config
from genlab.data import Batcher, ResidentSplit, load_dataset
from genlab.errors import ConfigError


@pytest.mark.parametrize("value_range", [(0.0, 1.0), (-1.0, 1.0)])
def test_resident_batches_equal_streamed_ones_across_epochs(value_range, data_dir):
  split = load_dataset("digits", data_dir=data_dir).train
  streamed = Batcher(split, global_batch_size=64, key=jax.random.key(3), value_range=value_range)
  resident = ResidentSplit(
    split, global_batch_size=64, key=jax.random.key(3), value_range=value_range
  )
  arrays = jax.device_put(resident.arrays)
  gather = jax.jit(resident.batch)
  for step in (0, 1, 22, 23, 24, 50):  # 23 steps per epoch: both sides of two boundaries.
    expected = streamed.batch(step)
    orders = resident.orders(step, 1)
    chex.assert_trees_all_equal(jax.device_get(gather(arrays, orders, step)), expected)
  # A dispatch's orders cover its first epoch and the next.
  orders = resident.orders(20, 5)
  np.testing.assert_array_equal(orders["perms"][1], streamed.permutation(1))


def _final_params(data_dir, tmp_path, name, **overrides):
  from genlab.run import train_and_evaluate

  config = make_test_config(data_dir, **overrides)
  config.update(num_steps=30, log_every=10, eval_every=30, image_every=30, checkpoint_every=30)
  return train_and_evaluate(config, tmp_path / name).state


@pytest.mark.slow
def test_resident_equals_streaming_and_k_steps_equal_k_single_steps(data_dir, tmp_path):
  # The corruption draws per-example noise from keys of the step: inside lax.scan
  # they must follow the state's step counter exactly as between calls. (Resident data
  # with one step per call: test_parallel's runs, where 'auto' makes the split resident.)
  corruption = "gaussian:0.3"
  runs = {
    "streamed": {"data.device_resident": "off"},
    # Small K: on XLA:CPU a dispatch's scan is unrolled, so compile time grows with K.
    "streamed_k2": {"data.device_resident": "off", "steps_per_dispatch": 2},
    "resident_k5": {"data.device_resident": "on", "steps_per_dispatch": 5},
  }
  states = {
    name: _final_params(data_dir, tmp_path, name, corruption=corruption, **overrides)
    for name, overrides in runs.items()
  }
  reference = states.pop("streamed")
  assert int(reference.step) == 30
  for name, state in states.items():
    assert int(state.step) == 30, name
    # The same steps compiled into other programs (a scan, a gather on the devices): float32
    # rounding in another order, normwise.
    assert_close_normwise(state.params, reference.params, rel=1e-6)
    assert_close_normwise(state.opt_state, reference.opt_state, rel=1e-6)


def test_metrics_of_every_step_of_a_dispatch_are_logged(data_dir, tmp_path):
  from genlab.run import train_and_evaluate

  # The run `resident_k5` of the test above, shorter: the same programs (a short conv AE
  # run's compile ~11 s cold, the unrolled 5-step dispatch ~2.6 s of it), compiled once.
  config = make_test_config(
    data_dir, corruption="gaussian:0.3", steps_per_dispatch=5, **{"data.device_resident": "on"}
  )
  config.update(num_steps=20, log_every=10, eval_every=20, image_every=20, checkpoint_every=10)
  train_and_evaluate(config, tmp_path / "w")
  lines = [json.loads(x) for x in (tmp_path / "w" / "metrics.jsonl").open()]
  train = [m for m in lines if "train/loss" in m]
  assert [m["step"] for m in train] == [10, 20]
  assert all(m["train/num_steps"] == 10 for m in train)
  assert sorted(p.name for p in (tmp_path / "w" / "checkpoints").iterdir() if p.name.isdigit()) == [
    "10",
    "20",
  ]


def test_periods_must_be_multiples_of_the_dispatch(test_config):
  from genlab.config import validate

  config = test_config(steps_per_dispatch=4)
  with pytest.raises(ConfigError, match="log_every=5 is not a multiple of steps_per_dispatch=4"):
    validate(config)
  config = test_config(**{"data.device_resident": "sometimes"})
  with pytest.raises(ConfigError, match="device_resident='sometimes'"):
    validate(config)


@pytest.mark.slow
def test_four_devices_with_k_step_dispatch_match_one_device(data_dir):
  # Resident data, the harder case: each device gathers its shard of K batches. Streamed
  # batches over several devices: the two-process test in test_preemption.py.
  rows = compare_parallel(
    "denoising_digits.py",
    data_dir,
    "--config.data.device_resident=on",
    "--config.steps_per_dispatch=5",
    modes="data",  # FSDP against one device: test_parallel.
  )
  assert len(rows["one"]["losses"]) == 4  # Means over each dispatch of 5 steps.
  for mode in ("data",):
    np.testing.assert_allclose(rows[mode]["losses"], rows["one"]["losses"], rtol=1e-4)
    assert rows[mode]["max_abs_param_diff_vs_1_device"] < 1e-5, rows[mode]
