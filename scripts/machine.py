"""What a benchmark's figures were measured on, and the yardstick they are set against.

    from machine import cpu, fp32_peak, fraction_of_peak

`cpu()` names the CPU and its vector extensions (every benchmark prints it with its
figures: the machines genlab is measured on change between Zen 4 with AVX-512 and
AVX2-only EPYCs). `fp32_peak()` measures the cores' fp32 multiply-add throughput
(scripts/fma_peak.c) and checks the measurement against what the CPU's vector width and
clock allow: a figure far below that is a failed measurement (spilled accumulators, a
vector width the compiler split, a core busy with something else), reported with its
reason and never used as a yardstick. `fraction_of_peak` refuses a fraction above 1 the
same way.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import tempfile

# The extensions that decide which kernels XLA:CPU, YNNPACK and oneDNN run.
VECTOR_EXTENSIONS = (
  "sse4_2",
  "avx",
  "avx2",
  "fma",
  "avx512f",
  "avx512bw",
  "avx512vl",
  "avx512_vnni",
  "avx512_bf16",
  "amx_tile",
  "amx_bf16",
)
# A measured peak below this fraction of what 256-bit FMAs at the nominal clock give is a
# failed measurement. 256 bits, not the widest: Zen 4 runs a 512-bit FMA as two 256-bit
# halves, so its real peak is that of AVX2 at the same clock.
PLAUSIBLE = 0.5


def _cpuinfo() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      return f.read()
  except OSError:
    return ""


@functools.cache
def cpu() -> dict:
  """The CPU model, its vector extensions and how many cores this process sees."""
  text = _cpuinfo()
  name = re.search(r"model name\s*:\s*(.*)", text)
  flags = re.search(r"flags\s*:\s*(.*)", text)
  flags = set(flags.group(1).split()) if flags else set()
  return {
    "cpu": name.group(1).strip() if name else "unknown",
    "vector_extensions": [f for f in VECTOR_EXTENSIONS if f in flags],
    "cores": os.cpu_count() or 1,
  }


def _ghz(text: str) -> float | None:
  """The clock from the model name (`@ 2.45GHz`), else BogoMIPS / 2 (KVM guests hide it)."""
  name = re.search(r"model name\s*:\s*(.*)", text)
  if name and (m := re.search(r"@\s*([\d.]+)GHz", name.group(1))):
    return float(m.group(1))
  bogomips = re.search(r"bogomips\s*:\s*([\d.]+)", text)
  return float(bogomips.group(1)) / 2000.0 if bogomips else None


def nominal_gflops(lanes: int) -> tuple[float | None, str]:
  """Cores × clock × 2 FMA units × `lanes` fp32 lanes × 2 FLOP, from /proc/cpuinfo."""
  cores, ghz = cpu()["cores"], _ghz(_cpuinfo())
  if ghz is None:
    return None, "no clock in /proc/cpuinfo"
  how = f"{cores} cores × {ghz:.2f} GHz × 2 FMA units × {lanes} fp32 lanes × 2 FLOP"
  return cores * ghz * 2 * lanes * 2, how


def _measure(compiler: str, flags: list[str]) -> tuple[float, int] | None:
  """(GFLOP/s summed over one copy per core run at once, lanes per vector) of
  fma_peak.c built with `flags`, or None if it does not build."""
  source = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fma_peak.c")
  with tempfile.TemporaryDirectory() as tmp:
    binary = os.path.join(tmp, "fma_peak")
    built = subprocess.run([compiler, *flags, "-o", binary, source], capture_output=True)
    if built.returncode != 0:
      return None
    runs = [
      subprocess.Popen([binary], stdout=subprocess.PIPE, text=True) for _ in range(cpu()["cores"])
    ]
    outputs = [run.communicate()[0].split() for run in runs]
  return sum(float(out[0]) for out in outputs), int(outputs[0][1])


@functools.cache
def fp32_peak() -> dict:
  """This machine's fp32 peak: `gflops` (None if the measurement failed), `how` it was
  obtained, and `failed`, the reason when it did.

  fma_peak.c is built with -march=native and, on an AVX-512 CPU, also without AVX-512 (on
  Zen 4 the 256-bit build is the faster), run on every core at once, and the faster build
  counts. Without a C compiler, the nominal 256-bit figure, and `how` says so.
  """
  compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
  nominal, nominal_how = nominal_gflops(8)
  if compiler is None:
    return {"gflops": nominal, "how": f"nominal (no C compiler): {nominal_how}", "failed": None}
  builds = [["-O2", "-march=native"]]
  if "avx512f" in cpu()["vector_extensions"]:
    builds.append(["-O2", "-march=native", "-mno-avx512f"])
  results = {" ".join(flags): _measure(compiler, flags) for flags in builds}
  results = {flags: r for flags, r in results.items() if r is not None}
  if not results:
    return {"gflops": None, "how": "scripts/fma_peak.c", "failed": "fma_peak.c did not build"}
  flags, (gflops, lanes) = max(results.items(), key=lambda item: item[1][0])
  how = (
    f"measured: scripts/fma_peak.c ({flags}, {lanes} lanes) on {cpu()['cores']} cores at "
    f"once: {gflops:.1f} GFLOP/s"
  )
  if nominal is not None and gflops < PLAUSIBLE * nominal:
    return {
      "gflops": None,
      "how": how,
      "failed": (
        f"the measured {gflops:.1f} GFLOP/s is below {PLAUSIBLE:g}× what 256-bit FMAs give "
        f"({nominal_how} = {nominal:.0f}): a failed measurement (compiler flags, a vector "
        "width split into spilled registers, or busy cores), so no fraction of peak is given"
      ),
    }
  return {"gflops": gflops, "how": how, "failed": None}


def fraction_of_peak(gflops: float | None, peak: dict) -> dict:
  """`{"fraction_of_fp32_peak": x}`, or, when the peak measurement failed or the fraction
  would exceed 1 (the yardstick is then wrong, not the code fast), `{"fraction_of_fp32_
  peak": None, "fraction_not_given": why}`."""
  if gflops is None:
    return {"fraction_of_fp32_peak": None, "fraction_not_given": "no FLOP count"}
  if peak["gflops"] is None:
    return {"fraction_of_fp32_peak": None, "fraction_not_given": peak["failed"]}
  fraction = gflops / peak["gflops"]
  if fraction > 1:
    return {
      "fraction_of_fp32_peak": None,
      "fraction_not_given": (
        f"{gflops:.1f} GFLOP/s exceeds the measured peak {peak['gflops']:.1f}: the peak "
        "measurement is wrong (or the FLOP count), not the code faster than the machine"
      ),
    }
  return {"fraction_of_fp32_peak": round(fraction, 3)}


__all__ = ["cpu", "fp32_peak", "fraction_of_peak", "nominal_gflops"]
