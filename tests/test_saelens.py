"""SAEs in SAELens' format: read back with safetensors and NumPy only, encoded and decoded by
SAELens' own definitions, and through genlab export / import / eval."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file
from test_activation_sae import _sae_family, _train

from genlab.sae import saelens

CODES = ["relu", "topk", "batchtopk", "jumprelu", "matryoshka_batchtopk"]
MODEL = {"matryoshka_batchtopk": {"matryoshka_widths": (8, 16)}}


def saelens_encode_decode(directory, x):
  """NumPy, float64, by SAELens 6.54.12's definitions of each architecture's inference
  (sae_lens/saes/sae.py `process_sae_in`; standard_sae.py, topk_sae.py (`TopK`: the k
  largest, then ReLU), jumprelu_sae.py `encode`: relu(h)·[h > threshold]; transcoder.py's
  `Transcoder` (ReLU) and `JumpReLUTranscoder`, whose `process_sae_in` subtracts no b_dec;
  every `decode`: f W_dec + b_dec), from the files alone."""
  cfg = json.loads((directory / "cfg.json").read_text())
  w = {
    k: v.astype(np.float64)
    for k, v in load_file(str(directory / "sae_weights.safetensors")).items()
  }
  # SAEConfig's defaults where a field is left out.
  assert (
    cfg.get("normalize_activations", "none") == cfg.get("reshape_activations", "none") == "none"
  )
  transcoder = cfg["architecture"] in ("transcoder", "jumprelu_transcoder")
  x = np.asarray(x, np.float64)
  if not transcoder and cfg.get("apply_b_dec_to_input", True):
    x = x - w["b_dec"]
  h = x @ w["W_enc"] + w["b_enc"]
  if cfg["architecture"] in ("standard", "transcoder"):
    f = np.maximum(h, 0)
  elif cfg["architecture"] == "topk":
    kth = -np.sort(-h, axis=1)[:, cfg["k"] - 1 : cfg["k"]]
    f = np.where(h >= kth, np.maximum(h, 0), 0)
  else:
    f = np.maximum(h, 0) * (h > w["threshold"])
  return f, f @ w["W_dec"] + w["b_dec"]


def _genlab_encode_decode(family, state, raw, read=None, write=None):
  """genlab's own inference on raw host activations of layer `read` (default: the source's
  first): normalise, encode (at the learned threshold where the code has one), decode,
  denormalise as layer `write` (default: `read`; a transcoder's output layer)."""
  source = family.source
  read = read or source.layers[0]
  write = write or read
  params, stats = state.params["model"], state.stats["model"]
  x = source.normalized(jnp.asarray(raw), read)
  code = family.model.code_fn
  threshold = code.inference_threshold(params, stats) if "threshold" in stats else None
  f = family.model.apply({"params": params}, x, threshold, method="encode")
  y_hat = family.model.apply({"params": params}, f, method="decode")
  return np.asarray(f), np.asarray(y_hat / source.scales[write] + source.shifts[write])


def _held_out(family):
  test = family.dataset.test
  _, act = family.host.capture({k: jnp.asarray(v) for k, v in test.items()})
  return np.asarray(act).reshape(-1, act.shape[-1])


def _normwise(a, b):
  return float(np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b))


@pytest.mark.parametrize("code", CODES)
@pytest.mark.parametrize("normalize", ["norm", "per_dimension"])
def test_each_code_exports_what_saelens_definitions_compute_as_genlab_does(
  code, normalize, tmp_path
):
  family = _sae_family(code, model=MODEL.get(code), normalize=normalize)
  state, _ = _train(family, 30)
  params, stats = jax.device_get((state.params["model"], state.stats["model"]))
  cfg, tensors = saelens.to_saelens(
    params,
    stats,
    family.model.code_fn,
    shift=np.asarray(family.source.shift),
    scale=np.asarray(family.source.scale),
    metadata={"hook_name": "hidden", "model_name": "TinyHost"},
  )
  saelens.write(tmp_path, cfg, tensors)
  raw = _held_out(family)
  f, x_hat = saelens_encode_decode(tmp_path, raw)
  g_f, g_x_hat = _genlab_encode_decode(family, state, raw)
  assert np.count_nonzero(f) > 0 and np.count_nonzero(f) < f.size / 2  # A sparse code.
  # Folding the normalisation into float32 weights: relative errors of a few float32 ulps,
  # summed over the 8 inputs or 32 latents of each row.
  assert _normwise(g_f, f) < 1e-5
  assert _normwise(g_x_hat, x_hat) < 1e-5
  # cfg.json: what SAELens' SAEConfig and its architecture's config take, with their types.
  written = json.loads((tmp_path / "cfg.json").read_text())
  types = {
    "architecture": str,
    "d_in": int,
    "d_sae": int,
    "dtype": str,
    "device": str,
    "apply_b_dec_to_input": bool,
    "normalize_activations": str,
    "reshape_activations": str,
    "metadata": dict,
  }
  if written["architecture"] == "topk":
    types.update(k=int, rescale_acts_by_decoder_norm=bool)
  for field, kind in types.items():
    assert isinstance(written[field], kind), (field, written)
  assert written["architecture"] == saelens.ARCHITECTURES[code]
  assert (written["d_in"], written["d_sae"]) == (family.source.width, 32)
  assert written["metadata"]["sae_lens_version"] == saelens.SAELENS_VERSION
  assert written["metadata"]["hook_name"] == "hidden"
  names = {"W_enc", "b_enc", "W_dec", "b_dec"} | (
    {"threshold"} if code not in ("relu", "topk") else set()
  )
  weights = load_file(str(tmp_path / "sae_weights.safetensors"))
  assert set(weights) == names and all(v.dtype == np.float32 for v in weights.values())


TRANSCODER_CODES = ["relu", "jumprelu", "batchtopk"]


@pytest.mark.parametrize("code", TRANSCODER_CODES)
@pytest.mark.parametrize("normalize", ["norm", "per_dimension"])
def test_each_transcoder_exports_what_saelens_definitions_compute_as_genlab_does(
  code, normalize, tmp_path
):
  """A transcoder from the input of a Dense layer (6 wide) to its output (8 wide): its
  input's normalisation folded into the encoder, its output's into the decoder."""
  from test_transcoder import _tiny_transcoder

  family, _ = _tiny_transcoder(code=code, normalize=normalize)
  state, _ = _train(family, 30)
  params, stats = jax.device_get((state.params["model"], state.stats["model"]))
  source = family.source
  read, write = "hidden:input", "hidden"
  cfg, tensors = saelens.to_saelens(
    params,
    stats,
    family.model.code_fn,
    shift=np.asarray(source.shifts[read]),
    scale=np.asarray(source.scales[read]),
    output_shift=np.asarray(source.shifts[write]),
    output_scale=np.asarray(source.scales[write]),
    metadata={"hook_name": read, "hook_name_out": write, "model_name": "TinyHost"},
  )
  saelens.write(tmp_path, cfg, tensors)
  raw = _held_out(family)  # The Dense layer's input, raw.
  f, y_hat = saelens_encode_decode(tmp_path, raw)
  g_f, g_y_hat = _genlab_encode_decode(family, state, raw, read, write)
  assert y_hat.shape == (len(raw), 8) and np.count_nonzero(f) > 0
  assert _normwise(g_f, f) < 1e-5
  assert _normwise(g_y_hat, y_hat) < 1e-5
  # The output's normalisation differs from the input's, so folding the wrong one fails.
  assert not np.allclose(source.scales[read][0], source.scales[write][0])
  written = json.loads((tmp_path / "cfg.json").read_text())
  assert written["architecture"] == saelens.TRANSCODER_ARCHITECTURES[code]
  assert (written["d_in"], written["d_sae"], written["d_out"]) == (6, 32, 8)
  assert isinstance(written["d_out"], int) and written["apply_b_dec_to_input"] is False
  assert written["metadata"]["hook_name_out"] == write
  weights = load_file(str(tmp_path / "sae_weights.safetensors"))
  assert weights["W_dec"].shape == (32, 8) and weights["b_dec"].shape == (8,)
  assert ("threshold" in weights) == (code != "relu")
  assert saelens.is_transcoder(written)


def test_a_transcoder_round_trips_and_what_saelens_has_not_is_refused(tmp_path):
  from test_transcoder import _tiny_transcoder

  from genlab.errors import ConfigError

  family, _ = _tiny_transcoder(code="relu", normalize="none")
  state, _ = _train(family, 5)
  params = jax.device_get(state.params["model"])
  unit = {"shift": np.zeros(6), "scale": np.ones(6)}
  out = {"output_shift": np.zeros(8), "output_scale": np.ones(8)}
  cfg, tensors = saelens.to_saelens(params, {}, family.model.code_fn, **unit, **out, metadata={})
  saelens.write(tmp_path, cfg, tensors)
  fields, back = saelens.from_saelens(*saelens.read(tmp_path))
  assert fields == {"code": "relu", "code_dim": 32}
  for part in ("encoder", "decoder"):
    for name in ("kernel", "bias"):
      np.testing.assert_array_equal(back[part][name], params[part][name])
  # SAELens 6.54.12 has no TopK transcoder.
  topk, _ = _tiny_transcoder(code="topk", normalize="none")
  with pytest.raises(ConfigError, match="no transcoder of SAE code 'topk'"):
    saelens.to_saelens(params, {}, topk.model.code_fn, **unit, **out, metadata={})
  with pytest.raises(ConfigError, match="lacks d_out"):
    saelens.from_saelens({k: v for k, v in cfg.items() if k != "d_out"}, tensors)
  with pytest.raises(ConfigError, match="apply_b_dec_to_input=true"):
    saelens.from_saelens({**cfg, "apply_b_dec_to_input": True}, tensors)
  with pytest.raises(ConfigError, match=r"W_dec should have shape \(32, 8\)"):
    saelens.from_saelens(cfg, {**tensors, "W_dec": tensors["W_dec"][:, :6]})


@pytest.mark.parametrize("code", ["relu", "topk", "jumprelu"])
def test_export_then_import_gives_the_same_parameters(code, tmp_path):
  family = _sae_family(code, normalize="none")  # Nothing to fold: the weights as trained.
  state, _ = _train(family, 10)
  params = jax.device_get(state.params["model"])
  cfg, tensors = saelens.to_saelens(
    params, {}, family.model.code_fn, shift=np.zeros(8), scale=np.ones(8), metadata={}
  )
  saelens.write(tmp_path, cfg, tensors)
  fields, back = saelens.from_saelens(*saelens.read(tmp_path))
  assert fields["code"] == code and fields["code_dim"] == 32
  for part in ("encoder", "decoder"):
    for name in ("kernel", "bias"):
      np.testing.assert_array_equal(back[part][name], params[part][name])
  if code == "jumprelu":  # θ is written, log θ read back: the same θ.
    np.testing.assert_array_equal(np.exp(back["log_threshold"]), np.exp(params["log_threshold"]))


def test_what_genlab_cannot_read_is_refused_in_one_line(tmp_path):
  from genlab.errors import ConfigError

  cfg = {"architecture": "gated", "d_in": 6, "d_sae": 32}
  with pytest.raises(ConfigError, match="architecture 'gated': genlab reads standard, topk"):
    saelens.from_saelens(cfg, {})
  cfg = {"architecture": "standard", "d_in": 6, "d_sae": 32, "normalize_activations": "layer_norm"}
  with pytest.raises(ConfigError, match="normalize_activations='layer_norm'"):
    saelens.from_saelens(cfg, {})
  cfg = {"architecture": "standard", "d_in": 6, "d_sae": 32}
  with pytest.raises(ConfigError, match=r"W_enc should have shape \(6, 32\), has None"):
    saelens.from_saelens(cfg, {})
  with pytest.raises(ConfigError, match="holds no cfg.json"):
    saelens.read(tmp_path)
  # SAELens' own b_dec subtraction is folded into b_enc.
  rng = np.random.default_rng(0)
  t = {
    "W_enc": rng.normal(size=(6, 32)).astype(np.float32),
    "b_enc": rng.normal(size=32).astype(np.float32),
    "W_dec": rng.normal(size=(32, 6)).astype(np.float32),
    "b_dec": rng.normal(size=6).astype(np.float32),
  }
  saelens.write(tmp_path, {**cfg, "apply_b_dec_to_input": True, "normalize_activations": "none"}, t)
  _, params = saelens.from_saelens(*saelens.read(tmp_path))
  x = rng.normal(size=(5, 6))
  f, _ = saelens_encode_decode(tmp_path, x)
  ours = np.maximum(x @ params["encoder"]["kernel"] + params["encoder"]["bias"], 0)
  assert _normwise(ours, f) < 1e-5


@pytest.mark.slow
def test_genlab_export_import_and_eval_give_the_same_sae_on_the_same_host(
  data_dir, tmp_path, capsys
):
  from test_activation_sae import _lm_config, _sae_config
  from test_cli import genlab_here

  from conftest import EXPERIMENTS
  from genlab.run import evaluate_workdir, train_and_evaluate

  host = tmp_path / "host"
  train_and_evaluate(_lm_config(data_dir), host)
  trained = tmp_path / "sae"
  train_and_evaluate(_sae_config(data_dir, host), trained)  # BatchTopK, k = 4, normalised.
  exported = tmp_path / "exported"
  proc = genlab_here(capsys, "export", "--workdir", str(trained), str(exported))
  assert proc.returncode == 0, proc.stderr
  cfg = json.loads((exported / "cfg.json").read_text())
  assert cfg["architecture"] == "jumprelu" and cfg["metadata"]["hook_name"] == "block_0"
  assert cfg["metadata"]["genlab"]["checkpoint_step"] == 10
  imported = tmp_path / "imported"
  args = [
    "import",
    str(exported),
    "--config",
    str(EXPERIMENTS / "sae_pydoc_residual.py"),
    "--workdir",
    str(imported),
    f"--config.data.data_dir={data_dir}",
    f"--config.sae.host_workdir={host}",
    "--config.sae.layer=block_0",
    "--config.mesh.devices=1",
  ]
  proc = genlab_here(capsys, *args)
  assert proc.returncode == 0, proc.stderr
  before, after = evaluate_workdir(trained), evaluate_workdir(imported)
  assert after["checkpoint_step"] == 0 and after["protocol"]["sae"]["normalize"] == "none"
  # The same SAE on the same host: its figures agree up to the folded normalisation's
  # float32 rounding (explained variance is a ratio, the same in either units).
  for name in ("l0", "explained_variance", "loss_recovered", "kl_sae", "loss_sae"):
    assert after["metrics"][name] == pytest.approx(before["metrics"][name], rel=1e-4), name
  assert after["metrics"]["loss_clean"] == before["metrics"]["loss_clean"]
  # A second import into the same workdir is refused in one line; so is a non-SAE workdir.
  proc = genlab_here(capsys, *args)
  assert proc.returncode == 2 and "is not empty" in proc.stderr, proc.stderr
  proc = genlab_here(capsys, "export", "--workdir", str(host), str(tmp_path / "x"))
  assert proc.returncode == 2 and "genlab exports activation SAEs" in proc.stderr, proc.stderr
