"""Encoder-decoder mode: read a chunk of text, write it backwards (the input is not the target).

    genlab train --config experiments/rnn_reverse_text.py --workdir runs/rnn_reverse_text
    genlab eval --workdir runs/rnn_reverse_text

`rnn_ae_text` with `sequence.target='reversed'`: the decoder must emit each
chunk's valid characters in reverse order (padding stays at the end), through
the same 64-dimensional z. Same data, model and metrics as `rnn_ae_text`.

What to expect (2 CPU cores, seed 0): see the README's recurrent-autoencoder section.
"""

import pathlib

from genlab.config import load_experiment


def get_config():
  config = load_experiment(pathlib.Path(__file__).with_name("rnn_ae_text.py"))
  config.sequence.target = "reversed"
  return config
