/* What an M = 1 GEMV's instruction mix costs a weight stream from DRAM (benchmarks/README.md, session 41): a
 * ring of 8 MiB buffers (1 GiB in all, so every call reads DRAM), 2 OpenMP threads each reading its half as four
 * streams, 256 bytes of each in turn (the GEMV's four column tiles), and per 64-byte line one of these bodies:
 *   read    one xor (a plain read)
 *   bf16    the W4A16 pair dot's mix: 3 shifts, 4 vpermw (the table decode), 4 vdpbf16ps, 16 accumulators
 *   vnni2   int8 x in two planes: 2 ands + 1 shift (the nibbles), 4 vpdpbusd
 *   vnni1   int8 x in one plane (the a8 GEMV's work): 2 ands + 1 shift, 2 vpdpbusd
 *   a8      the a8 GEMV's structure (one stream): per 2 KiB (a group of 32 columns), a pass of low nibbles, then
 *           one of high nibbles over the same lines, then the group's fp32 epilogue with a scale stream beside
 * Medians of the calls after the first round, GB/s of the buffer's bytes; "hot" as the second argument keeps
 * one buffer (served from the caches). Written by hand, not generated: it bounds what a kernel of each mix can
 * stream on this machine, which the generated kernels are compared with.
 *   gcc -O2 -march=native -fopenmp stream_mix.c -o stream_mix && OMP_PROC_BIND=true ./stream_mix 8 [hot] */
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

#define DP(acc, v, x) acc = _mm512_dpbf16_ps(acc, (__m512bh)(v), (__m512bh)(x))
enum { READ, BF16, VNNI2, VNNI1, A8, MODES };
static const char *NAMES[MODES] = {"read", "bf16", "vnni2", "vnni1", "a8"};

static float run(const char *b, size_t size, int mode) {
  float out = 0;
#pragma omp parallel num_threads(2) reduction(+ : out)
  {
    size_t half = size / 2, base = (size_t)omp_get_thread_num() * half;
    const __m512i T = _mm512_set1_epi16(0x3f80), M4 = _mm512_set1_epi8(15), x = _mm512_set1_epi32(0x3f803f80);
    __m512 a[16];
    for (int i = 0; i < 16; i++) a[i] = _mm512_setzero_ps();
    __m512i ai[8];
    for (int i = 0; i < 8; i++) ai[i] = _mm512_setzero_si512();
    if (mode == A8) {
      size_t wpart = half - half / 32;  // weights, then their scale rows (1/32 of the bytes)
      const char *sc = b + base + wpart;
      for (size_t off = 0, g = 0; off + 2048 <= wpart; off += 2048, g++) {
        const char *p = b + base + off;
        __m512i c[8];
        for (int i = 0; i < 8; i++) c[i] = _mm512_setzero_si512();
        for (int l = 0; l < 32; l++)
          c[l & 7] = _mm512_dpbusd_epi32(c[l & 7], _mm512_and_si512(_mm512_loadu_si512(p + 64 * l), M4), x);
        for (int l = 0; l < 32; l++)
          c[l & 7] = _mm512_dpbusd_epi32(
              c[l & 7], _mm512_and_si512(_mm512_srli_epi16(_mm512_loadu_si512(p + 64 * l), 4), M4), x);
        __m512i s0 = _mm512_add_epi32(_mm512_add_epi32(c[0], c[2]), _mm512_add_epi32(c[4], c[6]));
        __m512 sg = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(sc + (64 * g) % (half / 32))));
        a[g & 3] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s0), sg, a[g & 3]);
      }
    } else {
      // four streams per thread, 256 bytes of each in turn (the W4A16 GEMV's 4 column tiles of a program)
      size_t part = half / 4;
      for (size_t line = 0; line < half / 64; line++) {
        size_t s = (line / 4) & 3, off = s * part + (line / 16) * 256 + (line & 3) * 64;
        __m512i w = _mm512_loadu_si512(b + base + off);
        int j = (int)line & 3, k = (int)line & 15;
        if (mode == READ) {
          ai[j] = _mm512_xor_si512(ai[j], w);
        } else if (mode == BF16) {
          DP(a[k], _mm512_permutexvar_epi16(w, T), x);
          DP(a[k], _mm512_permutexvar_epi16(_mm512_srli_epi16(w, 4), T), x);
          DP(a[k], _mm512_permutexvar_epi16(_mm512_srli_epi16(w, 8), T), x);
          DP(a[k], _mm512_permutexvar_epi16(_mm512_srai_epi16(w, 12), T), x);
        } else {
          __m512i lo = _mm512_and_si512(w, M4), hi = _mm512_and_si512(_mm512_srli_epi16(w, 4), M4);
          ai[j] = _mm512_dpbusd_epi32(ai[j], lo, x);
          ai[j + 4] = _mm512_dpbusd_epi32(ai[j + 4], hi, x);
          if (mode == VNNI2) {
            ai[j] = _mm512_dpbusd_epi32(ai[j], lo, x);
            ai[j + 4] = _mm512_dpbusd_epi32(ai[j + 4], hi, x);
          }
        }
      }
    }
    for (int j = 0; j < 16; j++) out += _mm512_reduce_add_ps(a[j]);
    for (int j = 0; j < 8; j++) out += (float)_mm512_reduce_add_epi32(ai[j]);
  }
  return out;
}

static int cmp(const void *p, const void *q) {
  double d = *(const double *)p - *(const double *)q;
  return (d > 0) - (d < 0);
}

int main(int argc, char **argv) {
  size_t size = (size_t)atoi(argc > 1 ? argv[1] : "8") << 20;
  int hot = argc > 2, rings = hot ? 1 : (int)((1ull << 30) / size), reps = hot ? 200 : 5;
  char **ring = malloc(rings * sizeof(char *));
  for (int i = 0; i < rings; i++) {
    ring[i] = aligned_alloc(4096, size);
    memset(ring[i], i + 1, size);
  }
  double *ts = malloc(sizeof(double) * rings * reps);
  float sink = 0;
  for (int mode = 0; mode < MODES; mode++) {
    int n = 0;
    for (int r = 0; r < reps; r++)
      for (int i = 0; i < rings; i++) {
        double t0 = now();
        sink += run(ring[i], size, mode);
        if (r) ts[n++] = now() - t0;
      }
    qsort(ts, n, sizeof(double), cmp);
    printf("%s %-6s median %5.1f GB/s (%.3f ms for %zu MiB), best %5.1f\n", hot ? "hot " : "dram", NAMES[mode],
           size / ts[n / 2] / 1e9, 1e3 * ts[n / 2], size >> 20, size / ts[0] / 1e9);
  }
  return sink == 12345.0f;  // keeps the sums live
}
