/* This CPU core's fp32 multiply-add throughput, measured: scripts/machine.py compiles it
   with -O2 -march=native and runs one copy per core at once; their sum is the peak.

   CHAINS independent accumulators of the widest vector the target has (AVX-512: 16 floats,
   AVX: 8, else 4) get a*b+c per iteration: enough chains in flight to hide an FMA's latency
   on 2 FMA units, and few enough that they stay in registers (16 ymm registers under AVX2:
   16 chains of 16 floats there spill to memory, and the loop then measures the stores, a
   tenth of the FMA rate). So the rate is the core's throughput at the clock it really runs
   vector code at (turbo included), which nominal figures miss.
   Prints GFLOP/s (a multiply-add counts 2) and the lanes per vector. */
#include <stdio.h>
#include <time.h>

#if defined(__AVX512F__)
#define LANES 16
#define CHAINS 16
#elif defined(__AVX__)
#define LANES 8
#define CHAINS 12
#else
#define LANES 4
#define CHAINS 12
#endif

typedef float vec __attribute__((vector_size(LANES * 4)));

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

int main(void) {
  vec acc[CHAINS], b, c;
  for (int j = 0; j < LANES; j++) { b[j] = 1.0000001f; c[j] = 1e-7f; }
  for (int k = 0; k < CHAINS; k++)
    for (int j = 0; j < LANES; j++) acc[k][j] = (float)(k + j);
  const long iterations = 200000000L * 16 / LANES / CHAINS * 8;
  double start = now();
  for (long i = 0; i < iterations; i++) {
#pragma GCC unroll 16
    for (int k = 0; k < CHAINS; k++) acc[k] = acc[k] * b + c;
  }
  double seconds = now() - start;
  float checksum = 0;
  for (int k = 0; k < CHAINS; k++)
    for (int j = 0; j < LANES; j++) checksum += acc[k][j];
  printf("%.3f %d %g\n", iterations * (double)CHAINS * LANES * 2 / seconds / 1e9, LANES, checksum);
  return 0;
}
