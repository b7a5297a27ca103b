"""LSTM autoencoder as an anomaly detector: windows of a blood-pressure series (UCR anomaly 135).

    genlab train --config experiments/rnn_ae_anomaly.py --workdir runs/rnn_ae_anomaly
    genlab eval --workdir runs/rnn_ae_anomaly

The classic use of recurrent autoencoders: train on normal data only, score
test windows by their reconstruction error. Data: the embedded
`internal_bleeding` (UCR Time Series Anomaly Archive series 135 via aeon): 569
train windows of 64 samples from the anomaly-free start of the series, 1,560
test windows from the rest, 19 of which overlap the one labelled anomaly
(label 1). Model: per-step Dense(32)+ReLU → LSTM(64) → z ∈ R^16 → LSTM(64) →
Dense(1); MSE; Adam 3e-3, batch 64.

Reported: `roc_auc` of the per-window MSE against the anomaly labels, besides
the reconstruction metrics. Views: images/sequences_step_*.png and
images/anomaly_scores_step_*.png (per-window error along the test split,
labelled anomalies in red).

What to expect (2 CPU cores, seed 0): see the README's recurrent-autoencoder section.
"""

from genlab.config import base_config


def get_config():
  config = base_config("recurrent_autoencoder")
  config.dataset = "internal_bleeding"
  config.batch_size = 64
  config.eval_batch_size = 520
  config.num_steps = 1000
  config.loss = "mse"
  config.model.update(
    name="rnn_ae",
    feature_dims=(32,),
    cell="lstm",
    num_layers=1,
    bidirectional=False,
    hidden_dim=64,
    latent_dim=16,
  )
  config.sequence.update(target="input", anomaly_labels=(1,), num_plots=4)
  config.optimizer.learning_rate = 3e-3
  config.log_every = 100
  config.eval_every = 500
  config.image_every = 500
  config.checkpoint_every = 500
  return config
