"""An SAE on the residual stream of a third-party JAX language model: Google DeepMind's
`gemma` library's `Transformer` (a Linen module), at a tiny random-weight configuration.

    pip install gemma "sentencepiece==0.2.0"   # beside genlab (see below)
    python scripts/sae_gemma_host.py [--steps 300] [--data_dir DIR]

The host is `gemma.gm.nn.Transformer` with 4 layers of width 64 and random weights, reading
the characters of `pydoc_text` as token ids (its vocabulary holds them; 0 is padding for both).
The SAE reads the residual stream after layer 1: Gemma's blocks return `(cache, x)`, so the
layer is `'layer_1[1]'`, element 1 of that block's output (`genlab.models.activations`). It
trains `experiments/sae_pydoc_residual.py`'s BatchTopK SAE (8x expansion, k = 16) with this
host through `config.sae.host_factory`, and prints its explained variance, L0 and loss
recovered on the test split. Random weights make the loss figures meaningless; the point is
that nothing of genlab changes for a third-party model.

Real weights on an accelerator: in `gemma_host`, build a released model and its checkpoint
instead of the tiny config, e.g. `model = gm.nn.Gemma3_270M()` and `params =
gm.ckpts.load_params(gm.ckpts.CheckpointPath.GEMMA3_270M_PT)`; feed tokens of
`gm.text.Gemma3Tokenizer` (a `.npz` of token sequences as `config.dataset`, see docs/data.md);
pick the layer (`'layer_6[1]'`); set `config.model.code_dim` to a multiple of the model's
width (640 for 270M); and run `genlab train --config ... --config.sae.host_factory=
sae_gemma_host:gemma_host` with this folder on PYTHONPATH (it must be importable again for
`genlab eval`). The SAE and its host's parameters are placed and sharded by the mesh like any
state (`--config.mesh.fsdp=-1` to split them).

Dependencies: `gemma` 3.3.0 pulls kauldron and TensorFlow (about 2 GB); sentencepiece 0.2.1+
needs a newer protobuf than TensorFlow 2.21 allows, hence the pin. They are not in genlab's
test extras: this script is not run by the test suite, whose tests of the same mechanism use a
small Linen model with Gemma's `(cache, x)` block output (tests/test_activation_sae.py).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent


def gemma_host(layer: str = "layer_1[1]"):
  """The tiny random-weight Gemma Transformer as an SAE host (a `sae.host_factory`)."""
  import jax
  import jax.numpy as jnp
  import optax
  from gemma import gm
  from gemma.gm.nn import _config, _modules

  from genlab.models.activations import HostModel

  config = _config.TransformerConfig(
    num_embed=256,
    embed_dim=64,
    hidden_dim=256,
    num_heads=2,
    head_dim=32,
    num_kv_heads=1,
    final_logit_softcap=None,
    use_post_attn_norm=True,
    use_post_ffw_norm=True,
    use_qk_norm=True,
    attention_types=(_modules.AttentionType.GLOBAL,) * 4,
  )
  model = gm.nn.Transformer(config=config, tokens="batch.tokens", dtype=jnp.float32)
  params = model.init(jax.random.key(0), jnp.ones((1, 8), jnp.int32))["params"]

  def positions(batch):  # Every real character but the first (it sees no context).
    t = jnp.arange(batch["image"].shape[1])[None, :]
    return ((t >= 1) & (t < batch["length"][:, None])).astype(jnp.float32)

  def token_loss(output, batch):  # Next-token cross-entropy where a next token exists.
    tokens = batch["image"]
    following = jnp.pad(tokens[:, 1:], ((0, 0), (0, 1)))  # Position t predicts token t + 1.
    loss = optax.softmax_cross_entropy_with_integer_labels(output.logits, following)
    t = jnp.arange(tokens.shape[1])[None, :]
    return loss, (t + 1 < batch["length"][:, None]).astype(jnp.float32)

  return HostModel(
    model=model,
    params=params,
    layer=layer,
    inputs=lambda batch: (batch["image"],),
    positions=positions,
    token_loss=token_loss,
    description="gemma.gm.nn.Transformer, 4 layers of width 64, random weights (seed 0)",
    logits=lambda output: output.logits,  # Gemma returns an Output(logits=..., cache=...).
  )


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--data_dir", default=None, help="TFDS data dir (default: a new one)")
  args = parser.parse_args(argv)
  sys.path.insert(0, str(HERE))  # The host factory's module, for genlab to import by name.
  from genlab import config as config_lib
  from genlab.run import train_and_evaluate

  config = config_lib.load_experiment(HERE.parent / "experiments" / "sae_pydoc_residual.py")
  config.data.data_dir = args.data_dir or tempfile.mkdtemp(prefix="tfds_")
  config.sae.update(host_workdir="", host_factory="sae_gemma_host:gemma_host", aux_k=64)
  config.model.update(code_dim=512, k=16)
  config.optimizer.warmup_steps = min(config.optimizer.warmup_steps, args.steps // 4)
  config.update(num_steps=args.steps, log_every=max(1, args.steps // 5))
  config.update(eval_every=args.steps, image_every=args.steps, checkpoint_every=args.steps)
  with tempfile.TemporaryDirectory(prefix="sae_gemma_") as workdir:
    result = train_and_evaluate(config, workdir)
  m = result.test_metrics
  print(
    f"SAE on gemma layer_1[1] (width 64, 512 latents, BatchTopK k=16, {args.steps} steps, "
    f"test split, {m.get('eval_positions')} positions): explained_variance "
    f"{m['explained_variance']:.4f}, l0 {m['l0']:.2f}, loss_recovered {m['loss_recovered']:.4f}"
  )


if __name__ == "__main__":
  main()
