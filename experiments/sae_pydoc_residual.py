"""An SAE on the residual stream of a character-level transformer: interpretability, offline.

    genlab train --config experiments/char_lm_pydoc.py --workdir runs/char_lm_pydoc
    genlab train --config experiments/sae_pydoc_residual.py --workdir runs/sae_pydoc_residual
    genlab eval --workdir runs/sae_pydoc_residual

The host is the language model of experiments/char_lm_pydoc.py (trained first, in
`runs/char_lm_pydoc`; `--config.sae.host_workdir=...` points elsewhere). The SAE
reads the residual stream after its middle block (`block_1`, width 96) at every
character position but the first, normalised so that E‖x‖² = 96; 16× expansion
(1,536 latents), BatchTopK with k = 32 (`--config.model.code=topk` for TopK,
`matryoshka_batchtopk` with `--config.model.matryoshka_widths=(128,512,1536)` for nested
dictionaries,
`jumprelu` with `--config.sae.l0=...`, `relu` with `--config.sae.l1=...`), decoder
rows kept at unit norm, AuxK (k_aux = 256) for dead latents; Adam 1e-3 (warm-up
200 steps), batch 64 sequences (≈ 1,600 positions), 3,000 steps.

Reported (`genlab eval`): explained_variance, fvu, l0, dead_fraction,
dense_fraction, loss_clean / loss_sae / loss_zero, loss_recovered, kl_sae.
Views: images/latent_density_*.png, images/top_contexts_*.png.

What to expect (2 CPU cores, seed 0, host at step 3,000; 59,434 test positions): explained
variance 0.923 at L0 32.1 (the learned inference threshold; 32.0 in training), 0.4% of
latents dead, 5.7% dense, loss recovered 0.983 (host loss 1.233 clean, 1.324 with the SAE,
6.673 zero-ablated), KL 0.135 nats per token; about 6 minutes. TopK (k = 32): 0.923, 0.983.
The other codes: docs/families/sparse_ae.md.
"""

from genlab.config import base_config


def get_config():
  config = base_config("activation_sae")
  config.dataset = "pydoc_text"
  config.batch_size = 64
  config.eval_batch_size = 512
  config.num_steps = 3000
  config.model.update(name="sparse_ae", code="batchtopk", code_dim=1536, k=32)
  # JumpReLU's (--config.model.code=jumprelu): the thresholds' start and the width of their
  # straight-through kernel, in the normalised activations' units.
  config.model.update(threshold_init=0.5, bandwidth=0.1)
  config.sae.update(host_workdir="runs/char_lm_pydoc", layer="block_1", skip_first=1, aux_k=256)
  config.optimizer.update(learning_rate=1e-3, warmup_steps=200)
  config.log_every = 200
  config.eval_every = 1000
  config.image_every = 1000
  config.checkpoint_every = 1000
  return config
