"""A transcoder on the MLP of a character-level transformer's middle block: interpretability.

    genlab train --config experiments/char_lm_pydoc.py --workdir runs/char_lm_pydoc
    genlab train --config experiments/transcoder_pydoc_mlp.py --workdir runs/transcoder_pydoc_mlp
    genlab eval --workdir runs/transcoder_pydoc_mlp

A transcoder (Dunefsky, Chlenski & Nanda 2024, "Transcoders find interpretable LLM feature
circuits") is an SAE that reads a module's input and reconstructs its output, so that its
latents stand for what the module computes. The host is the language model of
experiments/char_lm_pydoc.py (trained first, in `runs/char_lm_pydoc`). The transcoder reads
the input of block 1's MLP (`block_1/mlp_in:input`: the pre-MLP LayerNorm's output, width
96) and reconstructs the MLP's output (`block_1/mlp_out`, width 96, before the residual
add), each normalised so that E‖x‖² = 96; 1,536 latents, BatchTopK with k = 32, AuxK (k_aux
= 256); Adam 1e-3 (warm-up 200 steps), batch 64 sequences, 3,000 steps, as
experiments/sae_pydoc_residual.py.

Reported (`genlab eval`), on the MLP's output: explained_variance, fvu, l0, dead and dense
fractions, and the host's loss with the MLP's output replaced by the transcoder's
(loss_sae; loss_zero with it zeroed, i.e. the MLP ablated), loss_recovered, kl_sae.

What to expect (2 CPU cores, seed 0, host at step 3,000; 59,434 test positions): explained
variance 0.905 of the MLP's output at L0 32.2, no latent dead, 5.6% dense; host loss 1.269
with the transcoder in place of the MLP (1.233 clean, 1.855 with the MLP zeroed): loss
recovered 0.942, KL 0.052 nats per token. 16 minutes on 2 cores shared with other work.
docs/families/sparse_ae.md ("Transcoders") has the details.
"""

import pathlib

from genlab.config import load_experiment


def get_config():
  config = load_experiment(pathlib.Path(__file__).with_name("sae_pydoc_residual.py"))
  config.sae.update(layer="block_1/mlp_in:input", output_layer="block_1/mlp_out")
  return config
