/* This CPU core's fp32 multiply-add throughput, measured: scripts/benchmark.py compiles it
   with -O2 -march=native and runs one copy per core at once; their sum is the peak.

   16 independent accumulators of 16 floats each get a*b+c per iteration: enough chains in
   flight to hide an FMA's latency on 2 FMA units, so the rate is the core's throughput at
   the clock it really runs vector code at (turbo included), which nominal figures miss.
   Prints GFLOP/s (a multiply-add counts 2). */
#include <stdio.h>
#include <time.h>

typedef float v16 __attribute__((vector_size(64)));

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

int main(void) {
  v16 acc[16], b, c;
  for (int j = 0; j < 16; j++) { b[j] = 1.0000001f; c[j] = 1e-7f; }
  for (int k = 0; k < 16; k++)
    for (int j = 0; j < 16; j++) acc[k][j] = (float)(k + j);
  const long iterations = 100000000L;
  double start = now();
  for (long i = 0; i < iterations; i++) {
#pragma GCC unroll 16
    for (int k = 0; k < 16; k++) acc[k] = acc[k] * b + c;
  }
  double seconds = now() - start;
  float checksum = 0;
  for (int k = 0; k < 16; k++)
    for (int j = 0; j < 16; j++) checksum += acc[k][j];
  printf("%.3f %g\n", iterations * 16.0 * 16 * 2 / seconds / 1e9, checksum);
  return 0;
}
