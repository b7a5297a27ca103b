"""Sparse autoencoders on a host model's activations, piece by piece.

An activation SAE (`genlab.families.activation_sae`, the thin family on top) composes:

* `source.ActivationSource`: what the SAE reads of its host (`genlab.models.activations.
  HostModel`): the activations at the example positions, normalised, optionally cached;
* `codes`: one class per SAE architecture (`Code`: ReLU, TopK, BatchTopK, JumpReLU,
  MatryoshkaBatchTopK, and the image family's Sigmoid) behind a registry (`CODES`,
  `register_code`, the `genlab.sae_codes` entry-point group), with their maths
  (`keep_top_k`, `batch_top_k`, `jump_relu`, AuxK);
* `model.SparseAutoencoder`: the Linen module (encoder, code, decoder);
* `training.SAEObjective`: the objective, dead latents, resampling;
* `evaluation`: the eval step's sums and the reported ratios (explained variance, L0, loss
  recovered with the host spliced).

A new architecture is one `Code` subclass and one `register_code` line
(docs/families/sparse_ae.md, "Your own SAE code").
"""

from genlab.sae import evaluation
from genlab.sae.codes import (
  CODES,
  NEVER,
  BatchTopK,
  Code,
  JumpReLU,
  MatryoshkaBatchTopK,
  ReLU,
  Sigmoid,
  TopK,
  auxk_reconstruction_error,
  batch_top_k,
  heaviside_step,
  jump_relu,
  keep_top_k,
  kth_largest_relu,
  register_code,
)
from genlab.sae.model import SparseAutoencoder
from genlab.sae.source import NORMALIZATIONS, ActivationSource
from genlab.sae.training import SAEObjective, resample_dead_latents, reset_moments

__all__ = [
  "CODES",
  "NEVER",
  "NORMALIZATIONS",
  "ActivationSource",
  "BatchTopK",
  "Code",
  "JumpReLU",
  "MatryoshkaBatchTopK",
  "ReLU",
  "SAEObjective",
  "Sigmoid",
  "SparseAutoencoder",
  "TopK",
  "auxk_reconstruction_error",
  "batch_top_k",
  "evaluation",
  "heaviside_step",
  "jump_relu",
  "keep_top_k",
  "kth_largest_relu",
  "register_code",
  "resample_dead_latents",
  "reset_moments",
]
