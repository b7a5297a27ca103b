"""SAEs in SAELens' on-disk format: `cfg.json` and `sae_weights.safetensors`.

The format is SAELens 6.x's inference format (read from sae-lens 6.54.12's source:
`sae_lens/saes/sae.py` `SAEConfig`, `save_model`, `load_from_disk`;
`sae_lens/loading/pretrained_sae_loaders.py` `sae_lens_disk_loader`), which SAELens'
`SAE.load_from_disk`, SAEBench and Neuronpedia read. Each architecture's encode and decode
(`sae_lens/saes/standard_sae.py`, `topk_sae.py`, `jumprelu_sae.py`):

    x' = x − b_dec·[apply_b_dec_to_input]
    standard:  f = relu(x' W_enc + b_enc)
    topk:      f = relu of the k largest entries of x' W_enc + b_enc, the others 0
    jumprelu:  f = relu(h)·[h > threshold],  h = x' W_enc + b_enc
    decode:    x̂ = f W_dec + b_dec

genlab's codes map onto them as SAELens saves its own: `relu` → standard, `topk` → topk,
`jumprelu` → jumprelu with its learned thresholds, and `batchtopk` and
`matryoshka_batchtopk` → jumprelu with the learned inference threshold for every latent
(SAELens' `BatchTopKTrainingSAE.process_state_dict_for_saving_inference`). genlab's
activation normalisation, x' = (x − shift)·scale, is folded into the weights (SAELens'
`fold_activation_norm_scaling_factor`, generalised to a shift and a scale per dimension), so
the files take the host's raw activations and say `normalize_activations: "none"`; genlab
subtracts no b_dec before encoding (`apply_b_dec_to_input: false`). The decoder rows are
written as trained (SAELens' `fold_W_dec_norm` may be applied when loading them).

A transcoder (genlab's `sae.output_layer`) is SAELens' `transcoder` (`relu`) or
`jumprelu_transcoder` (`jumprelu`, and `batchtopk` and `matryoshka_batchtopk` with their
inference threshold) of `sae_lens/saes/transcoder.py`: the same encode without any b_dec on
the input (SAELens refuses `apply_b_dec_to_input` for them), a decoder W_dec (d_sae, d_out)
and b_dec (d_out) onto the output layer, `d_out` in cfg.json and the output layer as
metadata `hook_name_out`. The input's normalisation is folded into the encoder and the
output's into the decoder. SAELens 6.54.12 has no TopK transcoder, so a `topk` one is
refused in one line.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import numpy as np

from genlab.errors import ConfigError

SAELENS_VERSION = "6.54.12"  # The SAELens release whose loader the files are written for.
CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
# genlab's code → SAELens' inference architecture.
ARCHITECTURES = {
  "relu": "standard",
  "topk": "topk",
  "jumprelu": "jumprelu",
  "batchtopk": "jumprelu",
  "matryoshka_batchtopk": "jumprelu",
}
# genlab's code → SAELens' transcoder architecture (it has no TopK one).
TRANSCODER_ARCHITECTURES = {
  "relu": "transcoder",
  "jumprelu": "jumprelu_transcoder",
  "batchtopk": "jumprelu_transcoder",
  "matryoshka_batchtopk": "jumprelu_transcoder",
}
# SAELens' architecture → genlab's code, and whether it is a transcoder.
READS = {
  "standard": ("relu", False),
  "topk": ("topk", False),
  "jumprelu": ("jumprelu", False),
  "transcoder": ("relu", True),
  "jumprelu_transcoder": ("jumprelu", True),
}


def to_saelens(
  params: dict,
  stats: dict,
  code: Any,
  *,
  shift: np.ndarray,
  scale: np.ndarray,
  metadata: dict[str, Any],
  output_shift: np.ndarray | None = None,
  output_scale: np.ndarray | None = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """(cfg.json's dict, the tensors) of an SAE with genlab parameters `params` (its `encoder`
  and `decoder` Dense params and its code's), state `stats` and code `code` (a
  `genlab.sae.Code`) trained on activations normalised as (x − shift)·scale. A transcoder's
  output was normalised as (y − output_shift)·output_scale (both given: it is written as a
  SAELens transcoder; `metadata` should then name its `hook_name_out`).

  Raises:
    ConfigError: a code SAELens has no architecture (or no transcoder) for.
  """
  transcoder = output_shift is not None or output_scale is not None
  table = TRANSCODER_ARCHITECTURES if transcoder else ARCHITECTURES
  architecture = table.get(code.name)
  if architecture is None and transcoder:
    raise ConfigError(
      f"SAELens (sae-lens {SAELENS_VERSION}) has no transcoder of SAE code {code.name!r}: "
      f"genlab exports transcoders of codes {', '.join(table)} (a batchtopk transcoder is "
      "written as jumprelu_transcoder with its inference threshold)"
    )
  if architecture is None:
    raise ConfigError(
      f"SAELens' format has no architecture for SAE code {code.name!r}; genlab exports "
      f"{', '.join(table)}"
    )
  if transcoder and (output_shift is None or output_scale is None):
    raise ValueError("a transcoder needs both output_shift and output_scale")
  f64 = lambda a: np.asarray(a, np.float64)  # noqa: E731 - folded in float64, written in float32.
  w_enc, b_enc = f64(params["encoder"]["kernel"]), f64(params["encoder"]["bias"])
  w_dec, b_dec = f64(params["decoder"]["kernel"]), f64(params["decoder"]["bias"])
  shift, scale = f64(shift), f64(scale)
  out_shift, out_scale = (f64(output_shift), f64(output_scale)) if transcoder else (shift, scale)
  # pre = ((x − shift)·scale) W_enc + b_enc;  x̂ = (f W_dec + b_dec)/out_scale + out_shift.
  tensors = {
    "W_enc": scale[:, None] * w_enc,
    "b_enc": b_enc - (shift * scale) @ w_enc,
    "W_dec": w_dec / out_scale[None, :],
    "b_dec": b_dec / out_scale + out_shift,
  }
  d_in, d_sae = w_enc.shape
  if architecture.startswith("jumprelu"):
    threshold = code.inference_threshold(params, stats)
    tensors["threshold"] = np.broadcast_to(f64(threshold), (d_sae,))
  cfg = {
    "architecture": architecture,
    "d_in": int(d_in),
    "d_sae": int(d_sae),
    "dtype": "float32",
    "device": "cpu",
    "apply_b_dec_to_input": False,
    "normalize_activations": "none",
    "reshape_activations": "none",
    "metadata": {
      "sae_lens_version": SAELENS_VERSION,
      "sae_lens_training_version": None,
      **metadata,
    },
  }
  if architecture == "topk":
    cfg.update(k=int(code.k), rescale_acts_by_decoder_norm=False)
  if transcoder:
    cfg["d_out"] = int(w_dec.shape[1])
  return cfg, {k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()}


def from_saelens(cfg: dict[str, Any], tensors: dict[str, np.ndarray]) -> tuple[dict, dict]:
  """(the genlab SAE module's fields: `code`, `code_dim`, `k`; its parameters) of an SAE
  (or a transcoder: `is_transcoder(cfg)`) in SAELens' format, for activations as the host
  gives them (`sae.normalize='none'`).

  Raises:
    ConfigError: what genlab cannot take, in one line (another architecture, a run-time
      normalisation, reshaped activations, missing or misshapen tensors).
  """
  architecture = cfg.get("architecture", "standard")
  if architecture not in READS:
    raise ConfigError(
      f"SAELens architecture {architecture!r}: genlab reads {', '.join(READS)} (a BatchTopK "
      "or Matryoshka SAE is saved as jumprelu)"
    )
  code, transcoder = READS[architecture]
  for field, allowed in (("normalize_activations", "none"), ("reshape_activations", "none")):
    if cfg.get(field, "none") != allowed:
      raise ConfigError(
        f"SAELens cfg {field}={cfg[field]!r}: genlab reads SAEs on raw activations ('none'); "
        "fold the normalisation into the weights first (SAELens' "
        "fold_activation_norm_scaling_factor)"
      )
  if architecture == "topk" and cfg.get("rescale_acts_by_decoder_norm", False):
    raise ConfigError("SAELens cfg rescale_acts_by_decoder_norm=true: genlab's TopK does not")
  d_in, d_sae = int(cfg["d_in"]), int(cfg["d_sae"])
  if transcoder and "d_out" not in cfg:
    raise ConfigError(f"SAELens cfg of a {architecture} lacks d_out")
  d_out = int(cfg["d_out"]) if transcoder else d_in
  shapes = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_out), "b_dec": (d_out,)}
  if code == "jumprelu":
    shapes["threshold"] = (d_sae,)
  for name, shape in shapes.items():
    if name not in tensors or tuple(tensors[name].shape) != shape:
      got = None if name not in tensors else tuple(tensors[name].shape)
      raise ConfigError(f"SAELens weights: {name} should have shape {shape}, has {got}")
  t = {k: np.asarray(tensors[k], np.float32) for k in shapes}
  b_enc = t["b_enc"]
  if transcoder and cfg.get("apply_b_dec_to_input", False):
    raise ConfigError(
      f"SAELens cfg of a {architecture} with apply_b_dec_to_input=true: b_dec has the output's "
      "width (SAELens' TranscoderConfig refuses it too)"
    )
  if cfg.get("apply_b_dec_to_input", True):  # (x − b_dec) W_enc + b_enc, folded.
    b_enc = (b_enc.astype(np.float64) - t["b_dec"].astype(np.float64) @ t["W_enc"]).astype(
      np.float32
    )
  params = {
    "encoder": {"kernel": t["W_enc"], "bias": b_enc},
    "decoder": {"kernel": t["W_dec"], "bias": t["b_dec"]},
  }
  fields = {"code": code, "code_dim": d_sae}
  if architecture == "topk":
    fields["k"] = int(cfg["k"])
  if code == "jumprelu":
    with np.errstate(divide="ignore"):  # A threshold of 0 is log θ = −inf: a plain ReLU.
      params["log_threshold"] = np.log(np.maximum(t["threshold"], 0.0)).astype(np.float32)
  return fields, params


def is_transcoder(cfg: dict[str, Any]) -> bool:
  """Whether a SAELens cfg.json's dict is a transcoder's (SAELens' `transcoder.py`)."""
  return READS.get(cfg.get("architecture", "standard"), ("", False))[1]


def write(directory: str | pathlib.Path, cfg: dict, tensors: dict[str, np.ndarray]) -> None:
  """Writes `cfg.json` and `sae_weights.safetensors` into `directory` (created)."""
  from safetensors.numpy import save_file

  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  save_file(tensors, str(directory / WEIGHTS_FILE))
  (directory / CFG_FILE).write_text(json.dumps(cfg, indent=2, allow_nan=False) + "\n")


def read(directory: str | pathlib.Path) -> tuple[dict, dict[str, np.ndarray]]:
  """(cfg.json's dict, the tensors) of an SAE in SAELens' format in `directory`."""
  from safetensors.numpy import load_file

  directory = pathlib.Path(directory)
  for name in (CFG_FILE, WEIGHTS_FILE):
    if not (directory / name).is_file():
      raise ConfigError(f"{directory} holds no {name}: not an SAE in SAELens' format")
  try:
    cfg = json.loads((directory / CFG_FILE).read_text())
    tensors = load_file(str(directory / WEIGHTS_FILE))
  except (OSError, ValueError) as e:
    raise ConfigError(f"{directory}: cannot read the SAE ({type(e).__name__}: {e})") from None
  if not isinstance(cfg, dict) or not {"d_in", "d_sae"} <= set(cfg):
    raise ConfigError(f"{directory / CFG_FILE} lacks d_in and d_sae: not an SAELens cfg.json")
  return cfg, tensors


__all__ = [
  "ARCHITECTURES",
  "SAELENS_VERSION",
  "TRANSCODER_ARCHITECTURES",
  "from_saelens",
  "is_transcoder",
  "read",
  "to_saelens",
  "write",
]
