"""genlab's layers for XLA:CPU, reached only through `genlab.kernels` (the seam).

* `precision` — Dense with bf16 products accumulated in float32, on YNNPACK's bf16
  kernel, and float32 kernel and bias gradients;
* `conv_transpose` — `nn.ConvTranspose`'s function with gradients by output phase,
  which XLA:CPU runs as library convolutions instead of its generic loop emitter;
* `lstm` — a whole bf16 LSTM layer as one differentiable op, and an LSTM cell whose
  bf16 products accumulate in float32.

Each gives the parameters of the flax layer it stands for. They rely on flax names
that flax does not export as public API; importing this package touches every one
of them, so that a flax without them fails here, where the seam catches it, and
not inside a model.
"""

from flax.linen import recurrent as _recurrent
from flax.linen.linear import canonicalize_padding as _canonicalize_padding
from flax.linen.recurrent import flip_sequences as _flip_sequences

from genlab.kernels.xla_cpu import conv_transpose, lstm, precision

PRIVATE_FLAX_NAMES = (_recurrent.DenseParams, _canonicalize_padding, _flip_sequences)

__all__ = ["PRIVATE_FLAX_NAMES", "conv_transpose", "lstm", "precision"]
