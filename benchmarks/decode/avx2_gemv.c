/* A hand-written AVX2 reference of the CPU decode GEMV (int4 weights, int8 activations), the ceiling the
 * generated kernel (lowbit.kernels.gemv_a8.quantized_gemv_a8 on TVM) is compared with by avx2_ceiling.py.
 * Same algorithm and layouts as the generated kernel: weights column-tiled [N/32][K/8][32] int32 words of
 * offset-binary nibbles, activations per group of 128: 64 even-k codes then 64 odd-k codes, vpmaddubsw on
 * the nibbles, i16 sums widened by vpmaddwd, fp16 scales per (group, column). Written by hand (not generated)
 * on purpose: it is the yardstick, not part of lowbit.
 *
 *   avx2_gemv M N K [flush]   (M = 1 or 16; OpenMP threads from OMP_NUM_THREADS)
 * prints: median microseconds of 15 calls (caches evicted before each call when `flush`). */
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }

static void gemv(int M, const int32_t *w, const int8_t *xq, const float *xs, const int32_t *xsum, const uint16_t *sc,
                 float *y, int N, int K) {
  const __m256i mask = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
  #pragma omp parallel for schedule(static)
  for (int b = 0; b < N / 32; b++) {
    __m256 acc[16][4];
    for (int r = 0; r < M; r++) for (int j = 0; j < 4; j++) acc[r][j] = _mm256_setzero_ps();
    const int32_t *wb = w + (size_t)b * (K / 8) * 32;
    for (int g = 0; g < K / 128; g++) {
      __m256i p[16][4];
      for (int r = 0; r < M; r++) for (int j = 0; j < 4; j++) p[r][j] = _mm256_setzero_si256();
      const int32_t *wg = wb + g * 16 * 32;
      if (M == 1) {  /* one pass over the words: lo and hi nibbles of each vector at once */
        const int8_t *x = xq + g * 128;
        for (int h = 0; h < 4; h++) {
          __m256i s[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256()};
          for (int t = 0; t < 4; t++) {
            int row = h * 4 + t;
            __m256i xe = _mm256_set1_epi32(*(const int32_t *)(x + row * 4));
            __m256i xo = _mm256_set1_epi32(*(const int32_t *)(x + 64 + row * 4));
            for (int j = 0; j < 4; j++) {
              __m256i ww = _mm256_loadu_si256((const __m256i *)(wg + row * 32 + j * 8));
              __m256i lo = _mm256_and_si256(ww, mask), hi = _mm256_and_si256(_mm256_srli_epi32(ww, 4), mask);
              s[j] = _mm256_add_epi16(s[j], _mm256_add_epi16(_mm256_maddubs_epi16(lo, xe), _mm256_maddubs_epi16(hi, xo)));
            }
          }
          for (int j = 0; j < 4; j++) p[0][j] = _mm256_add_epi32(p[0][j], _mm256_madd_epi16(s[j], ones));
        }
      } else {  /* per column vector: 8 quads unpacked once, reused by every pair of rows */
        for (int half = 0; half < 2; half++)
          for (int c = 0; c < 2; c++)
            for (int j = 0; j < 4; j++) {
              __m256i bq[8];
              for (int t = 0; t < 8; t++) {
                __m256i ww = _mm256_loadu_si256((const __m256i *)(wg + (c * 8 + t) * 32 + j * 8));
                bq[t] = _mm256_and_si256(half ? _mm256_srli_epi32(ww, 4) : ww, mask);
              }
              for (int r = 0; r < M; r += 2) {
                __m256i a0 = _mm256_setzero_si256(), a1 = _mm256_setzero_si256();
                const int8_t *x0 = xq + (size_t)r * K + g * 128 + half * 64 + c * 32, *x1 = x0 + K;
                for (int t = 0; t < 8; t++) {
                  a0 = _mm256_add_epi16(a0, _mm256_maddubs_epi16(bq[t], _mm256_set1_epi32(*(const int32_t *)(x0 + t * 4))));
                  a1 = _mm256_add_epi16(a1, _mm256_maddubs_epi16(bq[t], _mm256_set1_epi32(*(const int32_t *)(x1 + t * 4))));
                }
                p[r][j] = _mm256_add_epi32(p[r][j], _mm256_madd_epi16(a0, ones));
                p[r + 1][j] = _mm256_add_epi32(p[r + 1][j], _mm256_madd_epi16(a1, ones));
              }
            }
      }
      for (int r = 0; r < M; r++) {
        __m256 sx = _mm256_set1_ps(xs[r * (K / 128) + g]);
        __m256i bias = _mm256_set1_epi32(8 * xsum[r * (K / 128) + g]);  /* p holds sum(xq * (q + 8)) */
        for (int j = 0; j < 4; j++) {
          __m256 s = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(sc + (size_t)g * N + b * 32 + j * 8)));
          __m256i q = _mm256_sub_epi32(p[r][j], bias);
          acc[r][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q), _mm256_mul_ps(s, sx), acc[r][j]);
        }
      }
    }
    for (int r = 0; r < M; r++) for (int j = 0; j < 4; j++) _mm256_storeu_ps(y + (size_t)r * N + b * 32 + j * 8, acc[r][j]);
  }
}

static int cmp(const void *a, const void *b) { double d = *(const double *)a - *(const double *)b; return (d > 0) - (d < 0); }

int main(int argc, char **argv) {
  if (argc < 4) { fprintf(stderr, "usage: avx2_gemv M N K [flush]\n"); return 2; }
  int M = atoi(argv[1]), N = atoi(argv[2]), K = atoi(argv[3]), flush = argc > 4;
  if ((M != 1 && M != 16) || N % 32 || K % 128) { fprintf(stderr, "M must be 1 or 16, N %% 32 == 0, K %% 128 == 0\n"); return 2; }
  int32_t *w = aligned_alloc(64, (size_t)N * K / 2);
  for (size_t i = 0; i < (size_t)N * K / 8; i++) w[i] = rand();
  int8_t *xq = malloc((size_t)M * K);
  for (size_t i = 0; i < (size_t)M * K; i++) xq[i] = (int8_t)(rand() % 255 - 127);
  float *xs = malloc(sizeof(float) * M * (K / 128));
  for (int i = 0; i < M * (K / 128); i++) xs[i] = 0.01f;
  int32_t *xsum = malloc(sizeof(int32_t) * M * (K / 128));
  for (int i = 0; i < M * (K / 128); i++) xsum[i] = rand() % 1024 - 512;
  uint16_t *sc = malloc(2 * (size_t)N * (K / 128));
  for (size_t i = 0; i < (size_t)N * (K / 128); i++) sc[i] = 0x3c00;
  float *y = malloc(sizeof(float) * (size_t)M * N);
  static char evict[96 << 20];
  double ts[15];
  for (int r = 0; r < 3; r++) gemv(M, w, xq, xs, xsum, sc, y, N, K);
  for (int r = 0; r < 15; r++) {
    if (flush) for (size_t i = 0; i < sizeof evict; i += 64) evict[i]++;
    double t = now();
    gemv(M, w, xq, xs, xsum, sc, y, N, K);
    ts[r] = now() - t;
  }
  qsort(ts, 15, sizeof ts[0], cmp);
  printf("%.1f\n", ts[7] * 1e6);
  return y[0] == 12345.0f;  /* keep y live */
}
