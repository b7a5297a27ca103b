"""The benchmarks' yardstick: the fp32 peak is checked before it is used, and every figure
says what it was measured on (scripts/machine.py)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))

import benchmark_vae_nll  # noqa: E402
import machine  # noqa: E402

# The AVX2 EPYC: 2 cores at 2.45 GHz measured 6.6 + 6.5 GFLOP/s.
AVX2_EPYC = (
  "processor\t: 0\nmodel name\t: AMD EPYC 7B12\nflags\t\t: fpu sse4_2 avx avx2 fma\n"
  "bogomips\t: 4900.00\n"
)


@pytest.fixture
def avx2_epyc(monkeypatch):
  monkeypatch.setattr(machine, "_cpuinfo", lambda: AVX2_EPYC)
  monkeypatch.setattr(machine.os, "cpu_count", lambda: 2)
  machine.cpu.cache_clear()
  machine.fp32_peak.cache_clear()
  yield
  machine.cpu.cache_clear()
  machine.fp32_peak.cache_clear()


def _eval_report():
  return {"protocol": {"nll_k": 5000}, "num_examples": 1000, "metrics": {"nll": 1, "neg_elbo": 2}}


def test_an_implausible_peak_is_a_failed_measurement_and_gives_no_fraction(avx2_epyc, monkeypatch):
  assert machine.cpu() == {
    "cpu": "AMD EPYC 7B12",
    "vector_extensions": ["sse4_2", "avx", "avx2", "fma"],
    "cores": 2,
  }
  monkeypatch.setattr(machine, "_measure", lambda compiler, flags: (13.1, 8))
  peak = machine.fp32_peak()
  assert peak["gflops"] is None
  assert "13.1 GFLOP/s is below 0.5× what 256-bit FMAs give" in peak["failed"]
  assert "2 cores × 2.45 GHz × 2 FMA units × 8 fp32 lanes × 2 FLOP = 157" in peak["failed"]
  line = benchmark_vae_nll.figures(_eval_report(), 45.0, peak)
  assert line["fraction_of_fp32_peak"] is None and line["fp32_peak_gflop_per_s"] is None
  assert "failed measurement" in line["fraction_not_given"]
  assert line["cpu"] == "AMD EPYC 7B12" and "avx512f" not in line["vector_extensions"]


def test_a_plausible_peak_gives_the_fraction_and_a_fraction_above_one_is_refused(
  avx2_epyc, monkeypatch
):
  monkeypatch.setattr(machine, "_measure", lambda compiler, flags: (150.0, 8))
  peak = machine.fp32_peak()
  assert peak["gflops"] == 150.0 and peak["failed"] is None
  line = benchmark_vae_nll.figures(_eval_report(), 45.0, peak)
  decoder_gflop = 5000 * 1000 * 2 * (20 * 500 + 500 * 784) / 1e9
  assert line["fraction_of_fp32_peak"] == round(decoder_gflop / 45.0 / 150.0, 3)
  too_fast = machine.fraction_of_peak(151.0, peak)
  assert too_fast["fraction_of_fp32_peak"] is None
  assert "exceeds the measured peak" in too_fast["fraction_not_given"]


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc builds scripts/fma_peak.c")
@pytest.mark.parametrize(("arch", "chains"), [("haswell", 12), ("skylake-avx512", 16)])
def test_the_peak_loop_keeps_each_accumulator_in_a_register_of_its_own(arch, chains):
  """The AVX2 EPYC's 13 GFLOP/s: 16 chains of 16 floats need 32 ymm registers, AVX2 has 16,
  and the loop then cycled 32 multiply-adds through 5 registers and the stack (what the
  compiler made of it before). Each chain must have a register of its own."""
  source = REPO / "scripts" / "fma_peak.c"
  asm = subprocess.run(
    ["gcc", "-O2", f"-march={arch}", "-S", "-o", "-", str(source)],
    capture_output=True,
    text=True,
    check=True,
  ).stdout
  fmas = [line.split()[-1] for line in asm.splitlines() if re.search(r"vfmadd\d*ps", line)]
  assert len(fmas) == chains and len(set(fmas)) == chains, fmas
  assert all(register.startswith("%") for register in fmas)
