"""Genlab's five reference models in plain PyTorch, eager or `torch.compile`d, timed.

This is the yardstick for scripts/benchmark.py: the same architectures, batches, losses and
optimizers, written the way a researcher writes PyTorch (`model.train()`,
`optimizer.zero_grad()`, `loss.backward()`, `optimizer.step()`), with no channels_last, no
fused or hand-tuned kernels. `--compile` runs each step's forward pass and loss through
`torch.compile` (inductor; AOTAutograd compiles the backward pass with it), what a
performance-minded PyTorch user does; the optimizer step stays eager.

Install. PyTorch is not a dependency of genlab: put it in a virtual environment of its own
so genlab's stays as it is. A CPU build is enough (and much smaller than the default CUDA
wheel):

    python3 -m venv /work/venv-torch
    /work/venv-torch/bin/pip install torch==2.13.0 numpy \\
        --extra-index-url https://download.pytorch.org/whl/cpu

(On genlab's development machines pip's configured `find-links` already holds
torch-2.13.0+cpu, and `torch==2.13.0` resolves to it: a local version `+cpu` satisfies
`==2.13.0` and sorts above the plain release, so the extra index is not needed there.)

Run (no genlab import; any Python with torch):

    /work/venv-torch/bin/python scripts/benchmark_torch.py --model all --json
    /work/venv-torch/bin/python scripts/benchmark_torch.py --model lstm_ae --steps 100 --threads 2

To compare with genlab, run both on the same machine, interleaved, so that both see the same
load, e.g.

    for i in 1 2 3; do
      python scripts/benchmark.py --model conv_ae --json
      /work/venv-torch/bin/python scripts/benchmark_torch.py --model conv_ae --json
    done

What it measures: the wall time of `--steps` training steps (forward, backward, optimizer
update) after `--warmup` steps, `--repeats` times; the figure is the median block's time per
step (`step_ms`) and `batch / step` (`examples_per_s`). For `dcgan` a step is one
discriminator update plus one generator update, as in genlab's `train_step`. The data are
random tensors made once (pixel values k/255 in [0, 1] — [-1, 1] for the GAN — and N(0, 1)
sequences) in a pool of `POOL_BATCHES` batches cycled through, so the input path costs
nothing measurable and is the same for every model.

Time on an otherwise idle machine. PyTorch's OpenMP threads wait for each other at every
operator, so when other processes hold cores a step can take many times longer than alone
(on 2 shared cores, mlp_vae ran at 41 ms/step with 2 threads against 8.8 ms with
`--threads 1`); XLA's thread pool degrades differently, so figures from a loaded machine
compare the load, not the frameworks.

One JSON line per model: `framework` ("pytorch"), `torch_version`, `model`, `batch`,
`examples_per_s`, `step_ms`, `spread_ms` (fastest and slowest block), `num_params`,
`threads` (`torch.get_num_threads()`), `device` (`--device`: cpu, or cuda for a GPU),
`dtype`, `compiled` (`--compile`), `steps`, `warmup`, `repeats`, `loss` (the last step's, a
sanity check).

The reference models (scripts/benchmark.py's `REFERENCE`; genlab's modules named for each):
  mlp_vae    784-500-20 MLP VAE, Bernoulli decoder (BCE from logits summed per example,
             + KL to N(0, I), mean over the batch), batch 128, Adam 1e-3.   `models.vae.VAE`
  conv_ae    28×28×1 → Conv(32, 3×3, s2) → Conv(64, 3×3, s2) → ConvT(32, 4×4, s2)
             → ConvT(1, 4×4, s2), ReLU between, no output activation, MSE, batch 128, Adam
             1e-3. 28 → 14 → 7 → 14 → 28 ('SAME' in genlab; padding 1 here gives the same
             sizes).                                 `models.conv_ae.ConvEncoder/ConvDecoder`
  dcgan      G: z 100 → Dense 7·7·128 → ReLU → ConvT(64, 4×4, s2) → ReLU → ConvT(1, 4×4, s2)
             → tanh; D: Conv(64, 4×4, s2) → Conv(128, 4×4, s2) → Dense 1, leaky ReLU
             (slope 0.2, DCGAN's; genlab's 'leaky_relu' is flax's default 0.01: same cost);
             non-saturating G loss, BCE from logits; batch 128; two Adams (2e-4, β1 0.5).
             D's step draws fresh z and uses G(z) without gradient; G's step draws fresh z
             and differentiates G only (D's weights have requires_grad off meanwhile, the
             usual idiom; genlab likewise differentiates only G's parameters there).
                                                   `models.gan.Generator/Discriminator`
  lstm_ae    sequences 40×1 → LSTM 128 → z = Dense 32 of the final hidden state → LSTM 128
             whose input at every step is [z, position embedding (32)] and whose initial
             state is c = Dense(z), h = tanh(Dense(z)) → Dense 1 per step; MSE; batch 128;
             Adam 1e-3.                             `models.recurrent_ae.RecurrentAutoencoder`
             (feature_dims=(), cell='lstm', hidden_dim=128, latent_dim=32)
  sparse_ae  784 → 1024 sigmoid → 784 sigmoid; ½·Σ_pixels (x − x̂)² per example (mean over
             the batch) + β·Σ_j KL(ρ ‖ ρ̂_j) (ρ̂ the batch-mean code, ρ = 0.05, β = 3) +
             λ/2·(‖W_enc‖² + ‖W_dec‖²) (λ = 1e-4, genlab's default); batch 256; Adam 1e-3.
                                                   `sae.model.SparseAutoencoder`

Parameter counts equal genlab's except `lstm_ae`: 176,161 here against 175,137, because
`torch.nn.LSTM` keeps two bias vectors per gate (b_ih and b_hh, 4·128 each) where flax's
`OptimizedLSTMCell` keeps one; the computation is the same up to one bias add per step.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Callable

import machine  # scripts/machine.py: the CPU and its vector extensions

try:
  import torch
  import torch.nn.functional as F
  from torch import nn
except ImportError:  # An optional script: say how to get PyTorch rather than a traceback.
  sys.exit(
    "scripts/benchmark_torch.py needs PyTorch, which genlab does not depend on: "
    "python3 -m venv /work/venv-torch && /work/venv-torch/bin/pip install torch numpy "
    "(see this script's docstring)"
  )

BATCH = {"mlp_vae": 128, "conv_ae": 128, "dcgan": 128, "lstm_ae": 128, "sparse_ae": 256}
POOL_BATCHES = 8  # Distinct batches made once and cycled through.
IMAGE = (1, 28, 28)  # NCHW, PyTorch's layout.
SEQUENCE = (40, 1)  # (steps, features).
LATENT_GAN = 100
# Where each step's forward pass and loss run: `torch.autocast` for `--dtype bfloat16`
# (PyTorch's own mixed precision: bf16 products, float32 parameters and optimizer), nothing
# extra for float32. Backward passes and optimizer steps run outside it, as PyTorch advises.
autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext


def compiled(fn: Callable) -> Callable:
  """`fn` (a step's forward pass and loss), or with `--compile`, `torch.compile(fn)`
  (inductor): its backward pass is compiled too; the optimizer step stays eager."""
  return torch.compile(fn) if COMPILE else fn


COMPILE = False


# Models ---------------------------------------------------------------------------------


class MLPVAE(nn.Module):
  """The flax VAE example's 784-500-20: Dense+ReLU, then Dense mean and Dense log-variance."""

  def __init__(self, pixels: int = 784, hidden: int = 500, latent: int = 20):
    super().__init__()
    self.encoder = nn.Linear(pixels, hidden)
    self.mean = nn.Linear(hidden, latent)
    self.logvar = nn.Linear(hidden, latent)
    self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, pixels))

  def forward(self, x):
    h = F.relu(self.encoder(x.flatten(1)))
    mean, logvar = self.mean(h), self.logvar(h)
    z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
    return self.decoder(z), mean, logvar


def conv_autoencoder() -> nn.Module:
  return nn.Sequential(
    nn.Conv2d(1, 32, 3, stride=2, padding=1),  # 28 → 14
    nn.ReLU(),
    nn.Conv2d(32, 64, 3, stride=2, padding=1),  # 14 → 7
    nn.ReLU(),
    nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1),  # 7 → 14
    nn.ReLU(),
    nn.ConvTranspose2d(32, 1, 4, stride=2, padding=1),  # 14 → 28
  )


def dcgan_generator(latent: int = LATENT_GAN) -> nn.Module:
  return nn.Sequential(
    nn.Linear(latent, 7 * 7 * 128),
    nn.ReLU(),
    nn.Unflatten(1, (128, 7, 7)),
    nn.ConvTranspose2d(128, 64, 4, stride=2, padding=1),  # 7 → 14
    nn.ReLU(),
    nn.ConvTranspose2d(64, 1, 4, stride=2, padding=1),  # 14 → 28
    nn.Tanh(),
  )


def dcgan_discriminator() -> nn.Module:
  return nn.Sequential(
    nn.Conv2d(1, 64, 4, stride=2, padding=1),  # 28 → 14
    nn.LeakyReLU(0.2),
    nn.Conv2d(64, 128, 4, stride=2, padding=1),  # 14 → 7
    nn.LeakyReLU(0.2),
    nn.Flatten(),
    nn.Linear(7 * 7 * 128, 1),
  )


class LSTMAutoencoder(nn.Module):
  """genlab's RecurrentAutoencoder (one LSTM layer each way, no feature MLP): the decoder
  reads [z, position embedding] at every step from the state c = Dense(z), h = tanh(Dense(z))."""

  def __init__(self, features: int = 1, length: int = 40, hidden: int = 128, latent: int = 32):
    super().__init__()
    self.encoder = nn.LSTM(features, hidden, batch_first=True)
    self.to_latent = nn.Linear(hidden, latent)
    self.position = nn.Embedding(length, latent)
    self.init_state = nn.Linear(latent, hidden)
    self.decoder = nn.LSTM(2 * latent, hidden, batch_first=True)
    self.output = nn.Linear(hidden, features)

  def forward(self, x):
    _, (h, _) = self.encoder(x)
    z = self.to_latent(h[-1])
    batch, (length, latent) = z.shape[0], self.position.weight.shape
    steps = torch.cat(
      [z[:, None].expand(batch, length, latent), self.position.weight.expand(batch, -1, -1)],
      dim=-1,
    )
    c = self.init_state(z)[None]  # (num_layers=1, batch, hidden)
    out, _ = self.decoder(steps, (torch.tanh(c), c))
    return self.output(out)


class SparseAutoencoder(nn.Module):
  def __init__(self, pixels: int = 784, code: int = 1024):
    super().__init__()
    self.encoder = nn.Linear(pixels, code)
    self.decoder = nn.Linear(code, pixels)

  def forward(self, x):
    code = torch.sigmoid(self.encoder(x.flatten(1)))
    return torch.sigmoid(self.decoder(code)).view_as(x), code


# Training steps -------------------------------------------------------------------------


def count(*modules: nn.Module) -> int:
  return sum(p.numel() for m in modules for p in m.parameters())


def images(batch: int, *, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
  """A pool of images with uint8 values k/255 mapped onto [low, high]:
  (POOL_BATCHES, batch, C, H, W)."""
  pixels = torch.randint(0, 256, (POOL_BATCHES, batch, *IMAGE)).float() / 255.0
  return low + (high - low) * pixels


def one_optimizer_step(loss_of, optimizer, data) -> Callable[[int], torch.Tensor]:
  """`step(i)`: the usual zero_grad → loss → backward → optimizer step on pool batch i."""

  def step(i):
    optimizer.zero_grad()
    loss = loss_of(data[i % POOL_BATCHES])
    loss.backward()
    optimizer.step()
    return loss

  return step


def build(name: str, batch: int) -> tuple[Callable[[int], torch.Tensor], int]:
  """The model's training step `step(i) -> loss` on pool batch i mod POOL_BATCHES, and its
  parameter count."""
  if name == "mlp_vae":
    model, data = MLPVAE(), images(batch)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()

    @compiled
    def loss_of(x):
      with autocast():
        logits, mean, logvar = model(x)
        reconstruction = F.binary_cross_entropy_with_logits(logits, x.flatten(1), reduction="sum")
        kl = 0.5 * torch.sum(mean.square() + logvar.exp() - logvar - 1.0)
        return (reconstruction + kl) / x.shape[0]

    return one_optimizer_step(loss_of, optimizer, data), count(model)

  if name == "conv_ae":
    model, data = conv_autoencoder(), images(batch)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()

    @compiled
    def loss_of(x):
      with autocast():
        return F.mse_loss(model(x), x)

    return one_optimizer_step(loss_of, optimizer, data), count(model)

  if name == "dcgan":
    generator, discriminator = dcgan_generator(), dcgan_discriminator()
    data = images(batch, low=-1.0, high=1.0)
    g_optimizer = torch.optim.Adam(generator.parameters(), lr=2e-4, betas=(0.5, 0.999))
    d_optimizer = torch.optim.Adam(discriminator.parameters(), lr=2e-4, betas=(0.5, 0.999))
    generator.train()
    discriminator.train()
    ones, zeros = torch.ones(batch, 1), torch.zeros(batch, 1)

    @compiled
    def d_loss_of(real, z):
      # Discriminator: real against G(z), G held fixed.
      with torch.no_grad(), autocast():
        fake = generator(z)
      with autocast():
        return F.binary_cross_entropy_with_logits(
          discriminator(real), ones
        ) + F.binary_cross_entropy_with_logits(discriminator(fake), zeros)

    @compiled
    def g_loss_of(z):
      # Generator: non-saturating −log D(G(z)) on fresh z; D's weights take no gradient.
      with autocast():
        return F.binary_cross_entropy_with_logits(discriminator(generator(z)), ones)

    def step(i):
      d_optimizer.zero_grad()
      d_loss = d_loss_of(data[i % POOL_BATCHES], torch.randn(batch, LATENT_GAN))
      d_loss.backward()
      d_optimizer.step()
      discriminator.requires_grad_(False)
      g_optimizer.zero_grad()
      g_loss = g_loss_of(torch.randn(batch, LATENT_GAN))
      g_loss.backward()
      g_optimizer.step()
      discriminator.requires_grad_(True)
      return d_loss.detach() + g_loss.detach()

    return step, count(generator, discriminator)

  if name == "lstm_ae":
    model = LSTMAutoencoder(SEQUENCE[1], SEQUENCE[0])
    data = torch.randn(POOL_BATCHES, batch, *SEQUENCE)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()

    @compiled
    def loss_of(x):
      with autocast():
        return F.mse_loss(model(x), x)

    return one_optimizer_step(loss_of, optimizer, data), count(model)

  if name == "sparse_ae":
    model, data = SparseAutoencoder(), images(batch)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    rho, beta, weight_decay, eps = 0.05, 3.0, 1e-4, 1e-6

    @compiled
    def loss_of(x):
      with autocast():
        output, code = model(x)
        squared_error = 0.5 * (output - x).square().sum() / x.shape[0]
        rho_hat = code.float().mean(dim=0).clamp(eps, 1.0 - eps)
        kl = rho * torch.log(rho / rho_hat) + (1.0 - rho) * torch.log((1.0 - rho) / (1.0 - rho_hat))
        decay = model.encoder.weight.square().sum() + model.decoder.weight.square().sum()
        return squared_error + beta * kl.sum() + 0.5 * weight_decay * decay

    return one_optimizer_step(loss_of, optimizer, data), count(model)

  raise ValueError(f"unknown model {name!r}; choose one of {sorted(BATCH)}")


# Timing ---------------------------------------------------------------------------------


def _synchronize(device: str) -> None:
  if device.startswith("cuda"):
    torch.cuda.synchronize()


def benchmark(name: str, args) -> dict:
  torch.manual_seed(0)
  batch = args.batch or BATCH[name]
  step, num_params = build(name, batch)
  done = 0

  def run(n):
    nonlocal done
    loss = None
    for _ in range(n):
      loss = step(done)
      done += 1
    return loss

  run(args.warmup)
  times = []
  for _ in range(args.repeats):
    _synchronize(args.device)
    begin = time.perf_counter()
    loss = run(args.steps).detach()
    _synchronize(args.device)  # Eager on the CPU is synchronous; on a GPU, wait for it.
    times.append((time.perf_counter() - begin) / args.steps)
  step_s = statistics.median(times)
  return {
    "model": name,
    "framework": "pytorch",
    "torch_version": torch.__version__,
    **machine.cpu(),
    "batch": batch,
    "examples_per_s": round(batch / step_s, 1),
    "step_ms": round(step_s * 1e3, 3),
    "spread_ms": [round(min(times) * 1e3, 3), round(max(times) * 1e3, 3)],
    "num_params": num_params,
    "threads": torch.get_num_threads(),
    "device": args.device,
    "dtype": args.dtype,
    "compiled": COMPILE,
    "steps": args.steps,
    "warmup": args.warmup,
    "repeats": args.repeats,
    "data": f"synthetic, a pool of {POOL_BATCHES} batches",
    "loss": round(loss.item(), 5),
  }


def main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", default="all", choices=[*BATCH, "all"])
  parser.add_argument("--batch", type=int, default=None, help="default: the model's reference")
  parser.add_argument("--steps", type=int, default=200, help="steps per timed block")
  parser.add_argument("--warmup", type=int, default=20)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--threads", type=int, default=None, help="default: PyTorch's (the cores)")
  parser.add_argument("--device", default="cpu", help="cpu | cuda: where models and data live")
  parser.add_argument(
    "--dtype", default="float32", choices=["float32", "bfloat16"], help="bfloat16: autocast"
  )
  parser.add_argument(
    "--compile", action="store_true", help="torch.compile each step's forward pass and loss"
  )
  parser.add_argument("--json", action="store_true", help="JSON lines only (the default too)")
  args = parser.parse_args(argv)
  global COMPILE
  COMPILE = args.compile
  torch.set_default_device(args.device)  # Parameters, data and noise all made there.
  if args.dtype == "bfloat16":
    global autocast
    device_type = torch.device(args.device).type
    autocast = lambda: torch.autocast(device_type, dtype=torch.bfloat16)  # noqa: E731
  if args.steps < 1 or args.repeats < 1 or args.warmup < 0:
    parser.error("--steps and --repeats must be at least 1, --warmup at least 0")
  if args.threads:
    torch.set_num_threads(args.threads)
  names = list(BATCH) if args.model == "all" else [args.model]
  for name in names:
    print(json.dumps(benchmark(name, args)), flush=True)


if __name__ == "__main__":
  main(sys.argv[1:])
