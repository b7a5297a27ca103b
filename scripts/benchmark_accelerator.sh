#!/usr/bin/env bash
# The reference models on an accelerator (docs/performance.md, "On a GPU"): genlab with
# flax's own layers and with genlab's XLA:CPU kernels forced, in float32 and bf16; the same
# models in PyTorch on the same device, eager, then torch.compile'd; and the README's main
# job, trained and evaluated there. JSON lines go to DIR (default benchmark_accelerator).
#
#   bash scripts/benchmark_accelerator.sh [DIR]
set -u
out=${1:-benchmark_accelerator}
mkdir -p "$out"
python3 -c "import jax; print('jax', jax.__version__, jax.devices())"
for dtype in float32 bfloat16; do
  for kernels in flax xla_cpu; do
    python3 scripts/benchmark.py --model all --dtype "$dtype" --kernels "$kernels" --repeats 3 \
      | tee -a "$out/genlab.jsonl"
  done
done
for dtype in float32 bfloat16; do
  python3 scripts/benchmark_torch.py --device cuda --model all --dtype "$dtype" --repeats 3 \
    | tee -a "$out/torch.jsonl"
done
work=$(mktemp -d)
python3 -m genlab train --config experiments/conv_ae_digits.py --workdir "$work/conv_ae" \
  --config.data.data_dir="$work/tfds" 2>&1 | tail -4 | tee "$out/main_job.txt"
python3 -m genlab eval --workdir "$work/conv_ae" > "$out/main_job_eval.json"
for dtype in float32 bfloat16; do
  python3 scripts/benchmark_torch.py --device cuda --model all --dtype "$dtype" --repeats 3 \
    --compile | tee -a "$out/torch.jsonl"
done
