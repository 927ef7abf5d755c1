/* What one core issues of the int2 x16 GEMV's vector mix (benchmarks/README.md, session 52): per 64-byte word
 * vector one load, four planes (an and; a shift and an and for three of them) and eight vpdpbusd with
 * memory-broadcast x quads (m32{1to16}) into eight accumulators, as the generated loop has them; four word
 * vectors a block (32 vpdpbusd), or 32 (256 vpdpbusd, -DBIG: a body of ~500 instructions, the generated loop's
 * size). Modes: the full decode, ands without the shifts, no decode. Cycles at 3.66 GHz. Hand-written inline
 * assembly (a compiler reorders, hoists the broadcasts and spills): it bounds what the mix can issue.
 *   gcc -O2 -march=native vnni_mix.c -o vnni_mix && ./vnni_mix  (add -DBIG for the long body) */
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+1e-9*t.tv_nsec;}
static int32_t xb[1024] __attribute__((aligned(64)));
static int32_t wd[4096] __attribute__((aligned(64)));
#define WV(off, xo, SH) \
  "vmovdqu64 " #off "(%[w]), %%zmm24\n\t" \
  "vpandd %%zmm24, %[m], %%zmm25\n\t" \
  "vpdpbusd " #xo "+0(%[x])%{1to16%}, %%zmm25, %%zmm0\n\t" "vpdpbusd " #xo "+128(%[x])%{1to16%}, %%zmm25, %%zmm1\n\t" \
  SH("2") "vpdpbusd " #xo "+16(%[x])%{1to16%}, %%zmm26, %%zmm2\n\t" "vpdpbusd " #xo "+144(%[x])%{1to16%}, %%zmm26, %%zmm3\n\t" \
  SH("4") "vpdpbusd " #xo "+32(%[x])%{1to16%}, %%zmm26, %%zmm4\n\t" "vpdpbusd " #xo "+160(%[x])%{1to16%}, %%zmm26, %%zmm5\n\t" \
  SH("6") "vpdpbusd " #xo "+48(%[x])%{1to16%}, %%zmm26, %%zmm6\n\t" "vpdpbusd " #xo "+176(%[x])%{1to16%}, %%zmm26, %%zmm7\n\t"
#define SHIFT(n) "vpsrld $" n ", %%zmm24, %%zmm26\n\t" "vpandd %%zmm26, %[m], %%zmm26\n\t"
#define NOSH(n) "vpandd %%zmm24, %[m], %%zmm26\n\t"
#define NONE(n) "vmovdqa64 %%zmm25, %%zmm26\n\t"
#define B4(SH) WV(0, 0, SH) WV(64, 4, SH) WV(128, 8, SH) WV(192, 12, SH)
#ifdef BIG
#define BODY(SH) B4(SH) B4(SH) B4(SH) B4(SH) B4(SH) B4(SH) B4(SH) B4(SH)
#define DOTS 256
#define N 2000000L
#else
#define BODY(SH) B4(SH)
#define DOTS 32
#define N 10000000L
#endif
#define RUN(SH, name) { double t = now(); for (long i = 0; i < N; i++) { __asm__ volatile(BODY(SH) \
   ::[w]"r"(wd), [x]"r"(xb), [m]"v"(mk) : "zmm0","zmm1","zmm2","zmm3","zmm4","zmm5","zmm6","zmm7","zmm24","zmm25","zmm26","memory"); } \
   printf("%-30s %.2f cycles per vpdpbusd (%d a block)\n", name, (now() - t) / N * 3.66e9 / DOTS, DOTS); }
int main(void) {
  __m512i mk = _mm512_set1_epi32(0x03030303);
  for (int i = 0; i < 1024; i++) xb[i] = i * 77;
  for (int i = 0; i < 4096; i++) wd[i] = (int32_t)(i * 2654435761u);
  __asm__ volatile("vpxord %%zmm0,%%zmm0,%%zmm0\n\tvpxord %%zmm1,%%zmm1,%%zmm1\n\tvpxord %%zmm2,%%zmm2,%%zmm2\n\t"
                   "vpxord %%zmm3,%%zmm3,%%zmm3\n\tvpxord %%zmm4,%%zmm4,%%zmm4\n\tvpxord %%zmm5,%%zmm5,%%zmm5\n\t"
                   "vpxord %%zmm6,%%zmm6,%%zmm6\n\tvpxord %%zmm7,%%zmm7,%%zmm7"
                   ::: "zmm0","zmm1","zmm2","zmm3","zmm4","zmm5","zmm6","zmm7");
  RUN(SHIFT, "load, and, 3 x (shift, and)")
  RUN(NOSH, "load, 4 ands (no shift)")
  RUN(NONE, "load, and, 3 moves (no decode)")
  return 0;
}
