"""The backend seam: flax's layers off CPUs, genlab's XLA:CPU kernels on them, same params."""

from __future__ import annotations

import dataclasses
import json
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import FLOAT32_U, assert_close_normwise, make_test_config, run_python
from genlab import kernels
from genlab.errors import ConfigError
from genlab.models import (
  VAE,
  VQVAE,
  ConvAutoencoder,
  Discriminator,
  Generator,
  RecurrentAutoencoder,
)
from genlab.sae import SparseAutoencoder


@dataclasses.dataclass(frozen=True)
class FakeDevice:
  """What `genlab.kernels.resolve` reads of a device: its platform."""

  platform: str


GPU, TPU = FakeDevice("gpu"), FakeDevice("tpu")


def test_auto_picks_genlab_kernels_only_when_every_device_is_a_cpu():
  cpus = jax.devices("cpu")
  assert kernels.resolve("auto", cpus) == "xla_cpu"
  assert kernels.resolve("auto", [GPU]) == "flax"
  assert kernels.resolve("auto", [TPU, TPU]) == "flax"
  assert kernels.resolve("auto", [*cpus, GPU]) == "flax"
  # Forced either way, whatever the devices.
  assert kernels.resolve("flax", cpus) == "flax"
  assert kernels.resolve("xla_cpu", [GPU]) == "xla_cpu"
  with pytest.raises(ConfigError, match="config.kernels='cuda'"):
    kernels.resolve("cuda", cpus)


IMAGE = (1, 28, 28, 1)
MODELS = {
  "conv_ae": (
    lambda k, dtype: ConvAutoencoder(
      output_shape=(28, 28, 1), features=(8, 16), latent_dim=8, kernels=k, dtype=dtype
    ),
    lambda: (jnp.ones(IMAGE),),
  ),
  "vae_mlp": (
    lambda k, dtype: VAE(
      output_shape=(28, 28, 1), hidden=(32,), latent_dim=4, kernels=k, dtype=dtype
    ),
    lambda: (jnp.ones(IMAGE), jax.random.split(jax.random.key(1), 1)),
  ),
  "vae_conv": (
    lambda k, dtype: VAE(
      output_shape=(28, 28, 1), architecture="conv", features=(8, 16), kernels=k, dtype=dtype
    ),
    lambda: (jnp.ones(IMAGE), jax.random.split(jax.random.key(1), 1)),
  ),
  "generator": (
    lambda k, dtype: Generator(output_shape=(28, 28, 1), features=(8, 16), kernels=k, dtype=dtype),
    lambda: (jnp.ones((1, 12)),),
  ),
  "discriminator": (
    lambda k, dtype: Discriminator(features=(8, 16), kernels=k, dtype=dtype),
    lambda: (jnp.ones(IMAGE),),
  ),
  "sparse_ae": (
    lambda k, dtype: SparseAutoencoder(output_shape=(8, 8, 1), code_dim=16, kernels=k, dtype=dtype),
    lambda: (jnp.ones((1, 8, 8, 1)),),
  ),
  "vq_vae": (
    lambda k, dtype: VQVAE(
      output_shape=(28, 28, 1),
      features=(8, 16),
      codebook_size=8,
      code_dim=4,
      kernels=k,
      dtype=dtype,
    ),
    lambda: (jnp.ones(IMAGE),),
  ),
  "rnn_lstm_bidirectional": (
    lambda k, dtype: RecurrentAutoencoder(
      output_dim=3, output_length=6, hidden_dim=8, bidirectional=True, kernels=k, dtype=dtype
    ),
    lambda: (jnp.ones((1, 6, 3)), jnp.array([5])),
  ),
  "rnn_gru_tokens": (
    lambda k, dtype: RecurrentAutoencoder(
      output_dim=11,
      output_length=6,
      vocab_size=11,
      cell="gru",
      hidden_dim=8,
      kernels=k,
      dtype=dtype,
    ),
    lambda: (jnp.ones((1, 6), jnp.int32), jnp.array([6])),
  ),
}


# Parameters do not depend on the dtype; bf16 outputs are checked where the kernels differ
# most (bf16 products, the fused LSTM, ConvTranspose).
CASES = [(name, jnp.float32) for name in sorted(MODELS)] + [
  (name, jnp.bfloat16) for name in ("vae_mlp", "generator", "rnn_lstm_bidirectional")
]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "dtype"), CASES)
def test_both_kernels_give_the_same_parameters_and_outputs(name, dtype):
  build, inputs = MODELS[name]
  args = inputs()
  params = {}
  outputs = {}
  for k in ("flax", "xla_cpu"):
    model = build(k, dtype)
    params[k] = model.init(jax.random.key(0), *args)["params"]
    out = model.apply({"params": params[k]}, *args)
    outputs[k] = out[0] if isinstance(out, tuple) else out
  # The same names, shapes and initial values: a checkpoint restores into either.
  chex.assert_trees_all_equal(params["flax"], params["xla_cpu"])
  # The same function, up to float32 rounding in another order: these small models sum at
  # most a few hundred products per entry (≈ 200·2^-24 ≈ 1.2e-5 of the terms' scale); in bf16
  # (8-bit significands, products accumulated in float32 on one side only) 3e-2.
  rel = 200 * FLOAT32_U if dtype == jnp.float32 else 3e-2
  assert_close_normwise(outputs["xla_cpu"], outputs["flax"], rel=rel)


def _xla_cpu_sources() -> str:
  """The folder of genlab's XLA:CPU kernels, as compiled programs' locations name it."""
  import pathlib

  import genlab.kernels.xla_cpu

  return str(pathlib.Path(genlab.kernels.xla_cpu.__file__).parent)


FAMILY_CONFIGS = {
  "conv_ae": {},
  "vae_bf16": {
    "family": "vae",
    "dtype": "bfloat16",
    "model": {"name": "vae", "architecture": "mlp", "hidden": (32,), "latent_dim": 4},
  },
  "dcgan_bf16": {
    "family": "gan",
    "dtype": "bfloat16",
    "data.range": (-1.0, 1.0),
    "model": {
      "name": "gan",
      "architecture": "dcgan",
      "latent_dim": 8,
      "generator": {"features": (8, 16), "kernel_size": 4},
      "discriminator": {"features": (8, 16), "kernel_size": 4},
    },
  },
  "lstm_bf16": {
    "family": "recurrent_autoencoder",
    "dataset": "japanese_vowels",
    "loss": "mse",
    "dtype": "bfloat16",
    "batch_size": 10,
    "model": {"name": "rnn_ae", "cell": "lstm", "hidden_dim": 8, "latent_dim": 4},
  },
}


def _traced_train_step(name, data_dir, devices):
  import ml_collections

  from genlab.core import rngs
  from genlab.data import Batcher, load_dataset
  from genlab.families import get_family

  overrides = dict(FAMILY_CONFIGS[name])
  model = overrides.pop("model", None)
  config = make_test_config(data_dir, **overrides)
  if model is not None:
    config.model = ml_collections.ConfigDict(model)
  dataset = load_dataset(config.dataset, data_dir=data_dir)
  family = get_family(config.family)(
    config, dataset, root_key=rngs.root_key(0), kernels=kernels.resolve("auto", devices)
  )
  batcher = Batcher(
    dataset.train,
    global_batch_size=config.batch_size,
    key=jax.random.key(0),
    value_range=family.value_range,
  )
  batch = jax.tree.map(jnp.asarray, batcher.batch(0))
  state = jax.eval_shape(family.init_state, rngs.root_key(0), batch)  # Shapes: no compile.
  # The step's program as lowered for compilation, with each op's source location.
  lowered = jax.jit(family.train_step).lower(state, batch, jax.random.key(0))
  return family, lowered.as_text(debug_info=True)


ON_GPUS = """
import json, sys
import jax
import test_kernels as t
from genlab import kernels

def unreachable():
  raise AssertionError("genlab's XLA:CPU kernels were reached on a GPU run")

kernels._xla_cpu = unreachable
out = {}
for name in sorted(t.FAMILY_CONFIGS):
  for devices in ([t.GPU],):  # TPUs resolve alike: test_auto_picks_genlab_kernels_only_when...
    family, program = t._traced_train_step(name, DATA_DIR, devices)
    out[f"{name} {devices[0].platform}"] = [family.kernels, t._xla_cpu_sources() in program]
print(json.dumps(out))
"""


@pytest.mark.slow
def test_on_gpus_families_build_flax_layers_and_compile_no_genlab_kernel(data_dir):
  # In a fresh process: JAX caches traces of its own helpers with the source locations of
  # their first call, so a program traced after an XLA:CPU one may cite genlab's files.
  code = ON_GPUS.replace("DATA_DIR", repr(data_dir))
  out = json.loads(run_python(code).strip().splitlines()[-1])
  assert len(out) == len(FAMILY_CONFIGS)
  for name, (chosen, cites_genlab_kernels) in out.items():
    assert chosen == "flax", name
    # No op of the compiled step comes from genlab's XLA:CPU kernels.
    assert not cites_genlab_kernels, name


@pytest.mark.parametrize("name", sorted(FAMILY_CONFIGS))
def test_on_cpus_families_compile_genlab_kernels(name, data_dir):
  # The control of the test above: the check sees genlab's kernels where they run.
  family, program = _traced_train_step(name, data_dir, jax.devices("cpu"))
  assert family.kernels == "xla_cpu"
  assert _xla_cpu_sources() in program, name


@pytest.mark.slow
def test_flax_without_the_private_names_falls_back_to_its_own_layers_with_a_warning():
  code = """
import warnings
import flax.linen.recurrent as recurrent
del recurrent.flip_sequences  # As if a flax release renamed it.
import jax
from genlab import kernels
with warnings.catch_warnings(record=True) as caught:
  warnings.simplefilter("always")
  print("kernels", kernels.resolve("auto", jax.devices()))
print("warned", [str(w.message)[:60] for w in caught])
from genlab.models import ConvAutoencoder
chosen = kernels.resolve("auto", jax.devices())
model = ConvAutoencoder(output_shape=(8, 8, 1), features=(4,), kernels=chosen)
params = model.init(jax.random.key(0), jax.numpy.ones((1, 8, 8, 1)))
print("built", sorted(params["params"]["decoder"]))
"""
  out = run_python(code)
  assert "kernels flax" in out, out
  assert "genlab's XLA:CPU kernels are unavailable with this flax" in out, out
  assert "built ['deconv_0', 'project']" in out, out


def test_compiler_options_xla_does_not_take_are_dropped_with_a_warning(monkeypatch):
  good = dict(kernels.CPU_COMPILER_OPTIONS)
  monkeypatch.setenv("XLA_FLAGS", "")
  monkeypatch.setattr(
    kernels,
    "CPU_COMPILER_OPTIONS",
    {**good, "xla_genlab_option_that_does_not_exist": "1"},
  )
  with pytest.warns(UserWarning, match="xla_genlab_option_that_does_not_exist"):
    options = kernels.compiler_options("xla_cpu")
  assert options == good
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # Checked once: no second warning for the same options.
    assert kernels.compiler_options("xla_cpu") == good
  # Only the XLA:CPU kernels compile with options; a user's XLA_FLAGS setting wins.
  monkeypatch.setattr(kernels, "CPU_COMPILER_OPTIONS", good)
  assert kernels.compiler_options("flax") is None
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=individual_dot")
  assert kernels.compiler_options("xla_cpu") is None


def test_runner_compiles_with_the_options_of_its_kernels(monkeypatch):
  from genlab.run.runner import Runner

  monkeypatch.setenv("XLA_FLAGS", "")
  cpu = Runner(global_batch_size=2, devices=1, kernels="auto")
  assert cpu.kernels == "xla_cpu" and cpu._options == kernels.CPU_COMPILER_OPTIONS
  plain = Runner(global_batch_size=2, devices=1, kernels="flax")
  assert plain.kernels == "flax" and plain._options is None
  step = plain.eval_step(lambda state, batch: {"sum": jnp.sum(batch["x"])})
  batch = {"x": np.ones((2, 3), np.float32), "mask": np.ones(2, np.float32)}
  assert float(step(None, plain.shard(batch))["sum"]) == 6.0


def _total(outputs) -> jax.Array:
  return sum(jnp.sum(y) for y in jax.tree.leaves(outputs))


@pytest.mark.slow
def test_multi_step_dispatches_are_unrolled_on_cpus_only_when_the_step_convolves():
  """XLA:CPU runs a convolution's gradient ~100× slower inside a loop, so a dispatch of a
  step that convolves is unrolled; any other step stays a loop (smaller, faster program)."""
  x = jnp.ones((2, 8, 8, 1))
  conv_ae = ConvAutoencoder(output_shape=(8, 8, 1), features=(4,), kernels="xla_cpu")
  params = conv_ae.init(jax.random.key(0), x)

  def conv_step(p):  # Convolutions inside grad, custom_vjp (the ConvTranspose) and pjit.
    return jax.jit(jax.grad(lambda q: _total(conv_ae.apply(q, x))))(p)

  lstm = RecurrentAutoencoder(output_dim=1, output_length=5, hidden_dim=4, kernels="xla_cpu")
  seq, lengths = jnp.ones((2, 5, 1)), jnp.full((2,), 5)
  lstm_params = lstm.init(jax.random.key(0), seq, lengths)

  def lstm_step(p):  # Products inside a scan inside grad: no convolution.
    return jax.grad(lambda q: _total(lstm.apply(q, seq, lengths)))(p)

  assert kernels.has_convolution(jax.make_jaxpr(conv_step)(params).jaxpr)
  assert not kernels.has_convolution(jax.make_jaxpr(lstm_step)(lstm_params).jaxpr)
  assert kernels.scan_unroll("xla_cpu", 10, conv_step, params) == 10
  assert kernels.scan_unroll("xla_cpu", 10, lstm_step, lstm_params) == 1
  assert kernels.scan_unroll("flax", 10, conv_step, params) == 1
