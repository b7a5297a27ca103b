"""What survives what, in-process: NaN/Inf, config drift on resume, damaged checkpoints."""

from __future__ import annotations

import pathlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import restore_latest
from genlab.errors import ConfigError, NonFiniteError, WorkdirError
from genlab.families.autoencoder import Autoencoder
from genlab.run import train_and_evaluate


class NaNAtStep7(Autoencoder):
  """An autoencoder whose input turns to NaN at the step that starts from step 7."""

  def train_step(self, state, batch, key):
    poisoned = jnp.where(state.step == 7, jnp.nan, batch["image"])
    return super().train_step(state, {**batch, "image": poisoned}, key)


def _lines(workdir):
  import json

  return [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").open()]


@pytest.mark.slow
def test_nan_stops_training_naming_step_and_metric_and_keeps_last_good_checkpoint(
  nan_family, test_config, tmp_path
):
  config = test_config(family=nan_family, num_steps=20, log_every=10, checkpoint_every=5)
  with pytest.raises(NonFiniteError, match=r"step 8: non-finite .*loss=nan") as info:
    train_and_evaluate(config, tmp_path / "run")
  assert "latest checkpoint: step 5" in str(info.value)
  step, state = restore_latest(tmp_path / "run")
  assert step == 5
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state.params))
  # Step 5 is the same as in a run that never saw a NaN.
  clean = train_and_evaluate(test_config(num_steps=5, checkpoint_every=5), tmp_path / "clean")
  chex.assert_trees_all_equal(state.params, clean.state.params)


def test_nan_step_is_skipped_and_counted_when_asked(nan_family, test_config, tmp_path):
  config = test_config(family=nan_family, num_steps=20, log_every=10, on_nonfinite="skip")
  result = train_and_evaluate(config, tmp_path)
  assert result.step == 20
  train_lines = [m for m in _lines(tmp_path) if "train/loss" in m]
  assert [m["train/nonfinite_steps"] for m in train_lines] == [1, 0]
  assert train_lines[0]["train/num_steps"] == 10 and np.isfinite(train_lines[0]["train/loss"])
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(result.state.params))


@pytest.mark.slow
def test_resume_with_a_different_model_or_optimizer_is_refused(test_config, tmp_path):
  train_and_evaluate(test_config(num_steps=10), tmp_path)
  saved = (tmp_path / "config.json").read_bytes()
  changed = test_config(num_steps=20, **{"model.latent_dim": 4, "optimizer.learning_rate": 0.1})
  with pytest.raises(ConfigError) as info:
    train_and_evaluate(changed, tmp_path)
  message = str(info.value)
  assert "model.latent_dim (saved 8, now 4)" in message
  assert "optimizer.learning_rate (saved 0.001, now 0.1)" in message
  assert "num_steps" not in message.split("fields a resume may change")[0]
  assert (tmp_path / "config.json").read_bytes() == saved  # Nothing overwritten.
  # Periods and the step budget may change.
  safe = test_config(num_steps=20, log_every=2, eval_every=20, checkpoint_every=20)
  assert train_and_evaluate(safe, tmp_path).step == 20


def _damage(step_dir: pathlib.Path, *, drop_record: bool = False) -> None:
  if drop_record:
    (step_dir / "genlab_integrity.json").unlink()
  for f in step_dir.rglob("*"):
    if f.is_file() and "ocdbt.process_0" in str(f) and f.parent.name == "d":
      with open(f, "r+b") as handle:
        handle.truncate(10)


@pytest.mark.slow
@pytest.mark.parametrize("drop_record", [False, True], ids=["recorded", "unrecorded"])
def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(
  drop_record, test_config, tmp_path, capsys
):
  straight = train_and_evaluate(test_config(num_steps=20, checkpoint_every=5), tmp_path / "ref")
  run = tmp_path / "run"
  train_and_evaluate(test_config(num_steps=15, checkpoint_every=5), run)
  _damage(run / "checkpoints" / "15", drop_record=drop_record)
  capsys.readouterr()
  resumed = train_and_evaluate(test_config(num_steps=20, checkpoint_every=5), run)
  err = capsys.readouterr().err
  assert "the checkpoint of step 15" in err and "unusable" in err
  assert "fell back to the checkpoint of step 10" in err
  assert (run / "checkpoints_unusable" / "15").is_dir()  # Kept for inspection, not deleted.
  chex.assert_trees_all_equal(resumed.state.params, straight.state.params)


@pytest.mark.slow
def test_no_usable_checkpoint_refuses_to_start_over_unless_asked(test_config, tmp_path, capsys):
  train_and_evaluate(test_config(num_steps=10, checkpoint_every=5), tmp_path)
  for step in ("5", "10"):
    _damage(tmp_path / "checkpoints" / step)
  with pytest.raises(WorkdirError, match="none of the checkpoints .* can be restored"):
    train_and_evaluate(test_config(num_steps=20, checkpoint_every=5), tmp_path)
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == [
    "10",
    "5",
  ]
  restart = test_config(num_steps=20, checkpoint_every=5, on_unusable_checkpoints="restart")
  capsys.readouterr()
  assert train_and_evaluate(restart, tmp_path).step == 20
  assert "starting over from step 0" in capsys.readouterr().err
  assert sorted(p.name for p in (tmp_path / "checkpoints_unusable").iterdir()) == ["10", "5"]


@pytest.mark.slow
def test_eval_noise_belongs_to_the_example_not_to_the_eval_batch(test_config, tmp_path):
  """A denoising AE's test metrics must not change with eval_batch_size (keys by example row)."""
  from genlab.run import evaluate_workdir

  train_and_evaluate(test_config(num_steps=10, corruption="gaussian:0.5"), tmp_path)
  mse = {}
  for size in (16, 100, 300):
    report = evaluate_workdir(tmp_path, [f"--config.eval_batch_size={size}"])
    mse[size] = report["metrics"]["mse"]
  np.testing.assert_allclose(list(mse.values()), mse[16], rtol=1e-6)


def test_a_too_large_batch_is_refused_before_anything_is_written(test_config, tmp_path):
  from genlab.errors import DataError

  with pytest.raises(DataError, match="batch_size 2000 exceeds the 1497 training examples"):
    train_and_evaluate(test_config(batch_size=2000), tmp_path / "run")
  assert not (tmp_path / "run" / "config.json").exists()
  assert not (tmp_path / "run" / "checkpoints").exists()
