"""Train state, keys, checkpoints and image grids."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from genlab.core import TrainState, rngs
from genlab.run.checkpoint import Checkpointer
from genlab.views import image_grid


def make_two_part_state() -> TrainState:
  """A GAN-like state: parts `a` and `b`, each with its own optimizer."""
  params = {
    "a": {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.zeros(3)},
    "b": {"w": jnp.ones((3, 2)), "b": jnp.full(2, 0.5)},
  }
  return TrainState.create(params=params, tx={"a": optax.sgd(0.1), "b": optax.adam(0.01)})


# --- TrainState -----------------------------------------------------------------------------


def test_create_starts_at_step_zero_with_each_part_initialised():
  state = make_two_part_state()

  chex.assert_shape(state.step, ())
  assert state.step.dtype == jnp.int32
  assert int(state.step) == 0
  assert set(state.params) == set(state.opt_state) == {"a", "b"}
  chex.assert_trees_all_equal(state.opt_state["b"], optax.adam(0.01).init(state.params["b"]))


def test_create_rejects_mismatched_parts():
  with pytest.raises(ValueError, match="differ from optimizer parts"):
    TrainState.create(params={"a": jnp.zeros(2)}, tx={"b": optax.sgd(0.1)})


def test_apply_gradients_updates_only_the_named_part():
  state = make_two_part_state()
  grads_a = jax.tree.map(jnp.ones_like, state.params["a"])

  new = jax.jit(lambda s, g: s.apply_gradients({"a": g}))(state, grads_a)

  # SGD(0.1): a ← a − 0.1 · 1.
  expected_a = jax.tree.map(lambda p: p - 0.1, state.params["a"])
  chex.assert_trees_all_close(new.params["a"], expected_a)
  chex.assert_trees_all_equal(new.params["b"], state.params["b"])
  chex.assert_trees_all_equal(new.opt_state["b"], state.opt_state["b"])
  # The step counter belongs to the trainer, not to apply_gradients.
  assert int(new.step) == 0


def test_apply_gradients_skips_the_update_unless_finite():
  state = make_two_part_state()
  ones = jax.tree.map(jnp.ones_like, state.params)
  with_nan = {**ones, "b": {**ones["b"], "w": ones["b"]["w"].at[0, 0].set(jnp.nan)}}
  step = jax.jit(lambda s, g, f: s.apply_gradients(g, finite=f))

  # An explicit False keeps finite gradients out, in params and moments alike.
  skipped = step(state, ones, jnp.asarray(False))
  chex.assert_trees_all_equal(skipped.params, state.params)
  chex.assert_trees_all_equal(skipped.opt_state, state.opt_state)
  # By default a NaN in any named part's gradients skips the whole update.
  unchanged = jax.jit(lambda s, g: s.apply_gradients(g))(state, with_nan)
  chex.assert_trees_all_equal(unchanged.params, state.params)
  chex.assert_trees_all_equal(unchanged.opt_state, state.opt_state)
  # True updates, exactly as an unguarded optax step would.
  done = step(state, ones, jnp.asarray(True))
  updates, _ = optax.adam(0.01).update(ones["b"], state.opt_state["b"], state.params["b"])
  chex.assert_trees_all_close(done.params["b"], optax.apply_updates(state.params["b"], updates))
  chex.assert_trees_all_close(done.params["a"], jax.tree.map(lambda p: p - 0.1, state.params["a"]))


def test_all_finite_looks_at_every_floating_leaf():
  from genlab.core.state import all_finite

  assert bool(all_finite({"a": jnp.ones(3), "n": jnp.arange(3)}))
  assert not bool(all_finite({"a": jnp.ones(3), "b": jnp.asarray([1.0, jnp.inf])}))
  assert not bool(all_finite([jnp.asarray(jnp.nan, jnp.bfloat16)]))
  assert bool(all_finite({}))


def test_apply_gradients_of_both_parts_uses_each_parts_optimizer():
  state = make_two_part_state()
  grads = jax.tree.map(jnp.ones_like, state.params)

  new = state.apply_gradients(grads)

  chex.assert_trees_all_close(new.params["a"], jax.tree.map(lambda p: p - 0.1, state.params["a"]))
  # Adam's first step moves each parameter by ≈ lr in the gradient's sign.
  chex.assert_trees_all_close(
    new.params["b"], jax.tree.map(lambda p: p - 0.01, state.params["b"]), rtol=1e-4
  )
  assert int(new.opt_state["b"][0].count) == 1


# --- Keys -----------------------------------------------------------------------------------


def _key_data(keys: jax.Array) -> np.ndarray:
  return np.asarray(jax.random.key_data(keys))


def test_example_keys_do_not_depend_on_how_the_batch_is_split():
  key = rngs.step_key(rngs.root_key(0), 7)
  example_keys = jax.jit(rngs.example_keys)

  whole = example_keys(key, jnp.arange(8))
  halves = [example_keys(key, jnp.arange(0, 4)), example_keys(key, jnp.arange(4, 8))]
  quarters = [example_keys(key, jnp.arange(i, i + 2)) for i in range(0, 8, 2)]

  chex.assert_shape(whole, (8,))
  np.testing.assert_array_equal(_key_data(whole), np.concatenate([_key_data(k) for k in halves]))
  np.testing.assert_array_equal(_key_data(whole), np.concatenate([_key_data(k) for k in quarters]))
  # Every example gets its own key.
  assert len(np.unique(_key_data(whole), axis=0)) == 8


def test_example_keys_give_same_noise_as_fold_in():
  key = rngs.root_key(3)
  index = jnp.array([5, 0, 2])

  keys = rngs.example_keys(key, index)

  for i, k in zip([5, 0, 2], keys, strict=True):
    np.testing.assert_array_equal(_key_data(k), _key_data(jax.random.fold_in(key, i)))


def test_stream_keys_differ_by_name_and_repeat():
  key = rngs.step_key(rngs.root_key(0), 1)
  names = ["noise", "dropout", "z", "Noise"]

  streams = [_key_data(rngs.stream_key(key, name)) for name in names]

  assert len({s.tobytes() for s in streams}) == len(names)
  np.testing.assert_array_equal(_key_data(rngs.stream_key(key, "noise")), streams[0])
  assert not np.array_equal(streams[0], _key_data(key))


def test_every_stream_of_a_run_is_its_seeds_root_key_folded_by_name(data_dir):
  """The seed enters once (`setup`'s root key): two families' evaluation streams and the
  data order are functions of (seed, step, name) only, whatever was computed before."""
  from conftest import make_test_config
  from genlab.data import epoch_permutation
  from genlab.run import setup
  from genlab.run.loop import training_batcher

  def words(key):
    return np.asarray(jax.random.key_data(key))

  vae = make_test_config(data_dir, family="vae", seed=7)
  vae.model = vae.model.__class__({"name": "vae", "hidden": (8,), "latent_dim": 2})
  from genlab.families.vae import options as vae_options

  vae.vae = vae_options()
  gan = make_test_config(data_dir, seed=7, family="gan")
  gan.model = gan.model.__class__(
    {
      "name": "gan",
      "architecture": "mlp",
      "latent_dim": 4,
      "generator": {"hidden": (8,)},
      "discriminator": {"hidden": (8,)},
    }
  )
  from genlab.families.gan import options as gan_options

  gan.gan = gan_options()
  root = rngs.root_key(7)
  built = {}
  for config, stream in ((vae, "vae_eval"), (gan, "gan_eval")):
    built[stream] = s = setup(config)
    assert np.array_equal(words(s.root_key), words(root))
    np.testing.assert_array_equal(words(s.family.eval_key), words(rngs.stream_key(root, stream)))
  # The data order: step 40's batch is row slice 40 mod 93 of epoch 40 // 93's permutation
  # under the root's `data` stream, asked for first or after other steps.
  s = built["vae_eval"]
  fresh = training_batcher(s).batch(40)["image"]
  batcher = training_batcher(s)
  for step in (3, 500, 41):
    batcher.batch(step)
  np.testing.assert_array_equal(batcher.batch(40)["image"], fresh)
  data = jax.random.fold_in(root, rngs.stream_id("data"))
  rows = np.asarray(epoch_permutation(data, 0, len(s.dataset.train["image"])))[40 * 16 : 41 * 16]
  np.testing.assert_array_equal(fresh, s.dataset.train["image"][rows] / np.float32(255.0))
  s.root_key = rngs.root_key(8)  # Another seed: another order.
  assert not np.array_equal(training_batcher(s).batch(40)["image"], fresh)


def test_step_key_is_deterministic_and_traceable():
  root = rngs.root_key(42)

  eager = _key_data(rngs.step_key(root, 10))
  traced = _key_data(jax.jit(rngs.step_key)(root, jnp.int32(10)))
  other_root = _key_data(rngs.step_key(rngs.root_key(42), 10))

  np.testing.assert_array_equal(eager, traced)
  np.testing.assert_array_equal(eager, other_root)
  assert not np.array_equal(eager, _key_data(rngs.step_key(root, 11)))
  assert not np.array_equal(eager, _key_data(rngs.step_key(rngs.root_key(43), 10)))


# --- Checkpoints ----------------------------------------------------------------------------


def test_checkpoint_round_trip_and_pruning(tmp_path):
  # The template shares the saved states' optimizers (static fields compare by identity).
  template = make_two_part_state()
  state = template
  grads = jax.tree.map(jnp.ones_like, state.params)
  saved = {}
  checkpointer = Checkpointer(tmp_path / "checkpoints", keep=2, every=1)
  for step in (1, 2, 3):
    state = state.apply_gradients(grads).replace(step=jnp.int32(step))
    saved[step] = state
    assert checkpointer.save(step, jax.device_get(state))
  checkpointer.wait()

  assert checkpointer.latest_step() == 3
  assert checkpointer.all_steps() == [2, 3]  # keep=2 pruned step 1.
  chex.assert_trees_all_equal(checkpointer.restore(template), saved[3])
  chex.assert_trees_all_equal(checkpointer.restore(template, step=2), saved[2])
  checkpointer.close()

  # A new Checkpointer on the same folder (a resumed run) finds the same checkpoints.
  reopened = Checkpointer(tmp_path / "checkpoints", keep=2, every=1)
  assert reopened.latest_step() == 3
  restored = reopened.restore(template)
  reopened.close()
  chex.assert_trees_all_equal(restored, saved[3])
  assert isinstance(restored, TrainState)
  assert restored.tx is template.tx


def test_checkpoint_interval(tmp_path):
  state = make_two_part_state()
  checkpointer = Checkpointer(tmp_path / "checkpoints", keep=5, every=10)

  saved = [step for step in (10, 15, 20, 25, 30) if checkpointer.save(step, state)]
  forced = checkpointer.save(33, state, force=True)
  checkpointer.close()

  assert saved == [10, 20, 30]
  assert forced
  reader = Checkpointer(tmp_path / "checkpoints")
  steps = reader.all_steps()
  reader.close()
  assert steps == [10, 20, 30, 33]


def test_empty_checkpoint_folder_has_no_latest_step(tmp_path):
  checkpointer = Checkpointer(tmp_path / "checkpoints")
  latest = checkpointer.latest_step()
  checkpointer.close()
  assert latest is None


# --- Image grids ----------------------------------------------------------------------------


def test_image_grid_mixed_channels():
  rng = np.random.default_rng(0)
  grey = rng.uniform(size=(3, 8, 8, 1)).astype(np.float32)
  colour = rng.uniform(size=(3, 8, 8, 3)).astype(np.float32)

  grid = image_grid([grey, colour], min_size=16, pad=2)

  # Cells of 16×16 (8×8 enlarged 2×), 2 white pixels around each: 2 rows, 3 columns.
  chex.assert_shape(grid, (2 * (16 + 2) + 2, 3 * (16 + 2) + 2, 3))
  assert grid.dtype == np.uint8
  # Row 0, column 1: the grey image, repeated over RGB and enlarged by nearest neighbour.
  cell = grid[2 : 2 + 16, 2 + 18 : 2 + 18 + 16]
  expected = np.round(grey[1].repeat(2, 0).repeat(2, 1) * 255).astype(np.uint8)
  np.testing.assert_array_equal(cell, np.repeat(expected, 3, axis=-1))
  # Row 1, column 2: the colour image.
  cell = grid[2 + 18 : 2 + 18 + 16, 2 + 36 : 2 + 36 + 16]
  expected = np.round(colour[2].repeat(2, 0).repeat(2, 1) * 255).astype(np.uint8)
  np.testing.assert_array_equal(cell, expected)
  # Padding is white.
  assert np.all(grid[:2] == 255) and np.all(grid[:, :2] == 255)


def test_image_grid_value_range_and_sizes():
  images = np.full((2, 4, 4, 1), -1.0, np.float32)
  maps = np.full((2, 2, 2, 3), 1.0, np.float32)

  grid = image_grid([images, maps], value_range=(-1.0, 1.0), min_size=8, pad=1)

  # Scale is set by the tallest row (4 → 8); the 2×2 maps become 4×4 in an 8×8 cell.
  chex.assert_shape(grid, (2 * (8 + 1) + 1, 2 * (8 + 1) + 1, 3))
  assert np.all(grid[1:9, 1:9] == 0)  # −1 is black.
  assert np.all(grid[10:14, 1:5] == 255)  # +1 is white.


def test_grid_labels_draw_arrows_and_greek_not_missing_glyph_boxes():
  """The VAE's interpolation rows read "test 0 → 1": PIL's default font draws "▯" for "→"
  (as for any glyph it lacks); the labels' font has it."""
  from PIL import Image, ImageDraw

  from genlab.views import _font

  def drawn(text):
    image = Image.new("L", (40, 16), 255)
    ImageDraw.Draw(image).text((2, 1), text, font=_font(), fill=0)
    return np.asarray(image)

  missing = drawn("\uffff")  # A code point no font draws: the missing-glyph box.
  for glyph in ("→", "σ", "β"):
    assert (drawn(glyph) < 128).any() and not np.array_equal(drawn(glyph), missing), glyph
