"""Character-level transformer language model of CPython's reference manual: an SAE's host.

    genlab train --config experiments/char_lm_pydoc.py --workdir runs/char_lm_pydoc
    genlab eval --workdir runs/char_lm_pydoc

Data: the embedded `pydoc_text` (chunks of 8–32 characters of the language
reference that ships inside CPython; train and test split by topic). Model: a
pre-norm causal transformer, width 96, 3 blocks of 4 heads and an MLP of 384,
learned positions (357k parameters); position t predicts character t + 1. Adam
2e-3 after 100 warm-up steps, gradients clipped at norm 1, batch 64, 3,000 steps.

Reported: cross_entropy (nats per predicted character), bits_per_token,
token_accuracy, against `cross_entropy_unigram_baseline`. Views:
images/continuations_step_*.png (greedy continuations of test prefixes).

This run is the host of experiments/sae_pydoc_residual.py, an SAE on the
residual stream after its middle block (`block_1`).

What to expect (2 CPU cores, seed 0; about 5 minutes): on the 2,293 test chunks,
cross_entropy 1.242 nats per character (1.79 bits), token_accuracy 0.660, against 3.272
for the unigram model.
"""

from genlab.config import base_config


def get_config():
  config = base_config("language_model")
  config.dataset = "pydoc_text"
  config.batch_size = 64
  config.eval_batch_size = 1024
  config.num_steps = 3000
  config.model.update(name="transformer", width=96, depth=3, heads=4, mlp_ratio=4)
  config.optimizer.update(learning_rate=2e-3, warmup_steps=100, grad_clip_norm=1.0)
  config.log_every = 200
  config.eval_every = 1000
  config.image_every = 1000
  config.checkpoint_every = 1000
  return config
