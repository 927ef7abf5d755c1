/* What the x16 GEMV's instruction mix can stream (benchmarks/README.md, session 47): M = 1, 4096x4096, group 128,
 * bf16 x carried as two int8 planes (x = xs·(256·hi + lo) per group, xs a power of two), codes as bytes on
 * vpdpbusd, 16-column tiles, four interleaved per thread, 2 threads, a ring of weights (90 copies: every call
 * reads DRAM). Modes: a plain read of each weight's bytes; int3 / int2 in the kernel's plane layouts (int2: shift
 * and mask per plane; int3 "int3v2": vpermb + vpmultishiftqb + and per 64 codes over 24-byte quads, the layout the
 * generated kernel does not use); "gen" the vpmultishiftqb decode for any width. The int3, int2 and generic 3-bit
 * decodes are checked against a scalar float64 GEMV first. Written by hand, not generated: it bounds what a
 * kernel of each mix can stream here.
 *   gcc -O3 -march=native -fopenmp planes.c -o planes -lm && OMP_PROC_BIND=true ./planes [hot] */
#include <immintrin.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <math.h>
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+1e-9*t.tv_nsec;}
enum {N=4096, K=4096, G=128, NG=K/G, NT=N/16};
/* int3 layout: tile t, quad q (k=4q..4q+3): 24 bytes; qword j of the decoded vector = columns 2j,2j+1:
   bits 0..11 col 2j codes k0..k3 (3 bits each), bits 12..23 col 2j+1. tile stride K/4*24 bytes. */
static size_t W3 = (size_t)NT*(K/4)*24, W2 = (size_t)NT*(K/4)*16;
static int8_t xhi[K], xlo[K]; static float xs[NG]; static int32_t xsum[NG];
static float *scl; /* [NT][NG][16] */
static void run3(const uint8_t *w, float *y, int planes) {
  const __m512i idx = _mm512_set_epi8(
      0,0,0,0,0,23,22,21, 0,0,0,0,0,20,19,18, 0,0,0,0,0,17,16,15, 0,0,0,0,0,14,13,12,
      0,0,0,0,0,11,10,9, 0,0,0,0,0,8,7,6, 0,0,0,0,0,5,4,3, 0,0,0,0,0,2,1,0);
  const __m512i ms = _mm512_set1_epi64(0x15120f0c09060300LL), m7 = _mm512_set1_epi8(7);
#pragma omp parallel for num_threads(2) schedule(static)
  for (int t0 = 0; t0 < NT; t0 += 4) {
    __m512 acc[4]; for (int i=0;i<4;i++) acc[i]=_mm512_setzero_ps();
    for (int g = 0; g < NG; g++) {
      __m512i h[4], l[4];
      for (int i=0;i<4;i++){h[i]=_mm512_setzero_si512(); l[i]=_mm512_setzero_si512();}
      for (int q = g*32; q < g*32+32; q++) {
        __m512i bh = _mm512_set1_epi32(*(const int32_t*)&xhi[4*q]);
        __m512i bl = _mm512_set1_epi32(*(const int32_t*)&xlo[4*q]);
        for (int i = 0; i < 4; i++) {
          const uint8_t *p = w + ((size_t)(t0+i)*(K/4) + q)*24;
          if (q % 8 == 0) _mm_prefetch((const char*)p + 4096, _MM_HINT_T0);
          __m512i v = _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i*)p));
          __m512i c = _mm512_and_si512(_mm512_multishift_epi64_epi8(ms, _mm512_permutexvar_epi8(idx, v)), m7);
          h[i] = _mm512_dpbusd_epi32(h[i], c, bh);
          if (planes == 2) l[i] = _mm512_dpbusd_epi32(l[i], c, bl);
        }
      }
      for (int i = 0; i < 4; i++) {
        __m512i s = _mm512_sub_epi32(_mm512_add_epi32(_mm512_slli_epi32(h[i], 8), l[i]), _mm512_set1_epi32(4*xsum[g]));
        __m512 sc = _mm512_loadu_ps(scl + ((size_t)(t0+i)*NG + g)*16);
        acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(sc, _mm512_set1_ps(xs[g])), acc[i]);
      }
    }
    for (int i=0;i<4;i++) _mm512_storeu_ps(y + (t0+i)*16, acc[i]);
  }
}
/* int2 layout: tile t, 4 quads per 16 bytes... simpler: per 16 k (4 quads) 64 bytes; byte lane b=4c+r holds
   codes of column c, k = 16blk + 4*plane + r at bits 2*plane. */
static void run2(const uint8_t *w, float *y) {
  const __m512i m3 = _mm512_set1_epi8(3);
#pragma omp parallel for num_threads(2) schedule(static)
  for (int t0 = 0; t0 < NT; t0 += 4) {
    __m512 acc[4]; for (int i=0;i<4;i++) acc[i]=_mm512_setzero_ps();
    for (int g = 0; g < NG; g++) {
      __m512i h[4], l[4];
      for (int i=0;i<4;i++){h[i]=_mm512_setzero_si512(); l[i]=_mm512_setzero_si512();}
      for (int b = g*8; b < g*8+8; b++) {
        for (int i = 0; i < 4; i++) {
          const uint8_t *p = w + ((size_t)(t0+i)*(K/16) + b)*64;
          if (b % 2 == 0) _mm_prefetch((const char*)p + 4096, _MM_HINT_T0);
          __m512i v = _mm512_loadu_si512(p);
          for (int pl = 0; pl < 4; pl++) {
            __m512i c = _mm512_and_si512(pl ? _mm512_srli_epi16(v, 2*pl) : v, m3);
            int k = 16*b + 4*pl;
            h[i] = _mm512_dpbusd_epi32(h[i], c, _mm512_set1_epi32(*(const int32_t*)&xhi[k]));
            l[i] = _mm512_dpbusd_epi32(l[i], c, _mm512_set1_epi32(*(const int32_t*)&xlo[k]));
          }
        }
      }
      for (int i = 0; i < 4; i++) {
        __m512i s = _mm512_sub_epi32(_mm512_add_epi32(_mm512_slli_epi32(h[i], 8), l[i]), _mm512_set1_epi32(2*xsum[g]));
        __m512 sc = _mm512_loadu_ps(scl + ((size_t)(t0+i)*NG + g)*16);
        acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(sc, _mm512_set1_ps(xs[g])), acc[i]);
      }
    }
    for (int i=0;i<4;i++) _mm512_storeu_ps(y + (t0+i)*16, acc[i]);
  }
}

/* int2, the same layout, written for the compiler: four tiles' weights loaded per 16 k, every plane's two
   broadcasts shared by the four tiles, the eight accumulators in registers (session 50). */
static void run2t(const uint8_t *w, float *y) {
  const __m512i m3 = _mm512_set1_epi8(3);
#pragma omp parallel for num_threads(2) schedule(static)
  for (int t0 = 0; t0 < NT; t0 += 4) {
    __m512 a0=_mm512_setzero_ps(),a1=a0,a2=a0,a3=a0;
    const uint8_t *p0 = w + ((size_t)(t0+0)*(K/16))*64, *p1 = w + ((size_t)(t0+1)*(K/16))*64,
                  *p2 = w + ((size_t)(t0+2)*(K/16))*64, *p3 = w + ((size_t)(t0+3)*(K/16))*64;
    for (int g = 0; g < NG; g++) {
      __m512i h0=_mm512_setzero_si512(),h1=h0,h2=h0,h3=h0,l0=h0,l1=h0,l2=h0,l3=h0;
      for (int b = g*8; b < g*8+8; b++) {
        __m512i v0=_mm512_loadu_si512(p0+b*64), v1=_mm512_loadu_si512(p1+b*64), v2=_mm512_loadu_si512(p2+b*64), v3=_mm512_loadu_si512(p3+b*64);
#ifdef PF
        if (b % 2 == 0) { _mm_prefetch((const char*)p0+b*64 + PF, _MM_HINT_T1); _mm_prefetch((const char*)p1+b*64 + PF, _MM_HINT_T1);
                          _mm_prefetch((const char*)p2+b*64 + PF, _MM_HINT_T1); _mm_prefetch((const char*)p3+b*64 + PF, _MM_HINT_T1); }
#endif
#define PL(pl) { int k = 16*b + 4*pl; __m512i bh=_mm512_set1_epi32(*(const int32_t*)&xhi[k]), bl=_mm512_set1_epi32(*(const int32_t*)&xlo[k]); \
        __m512i c0=_mm512_and_si512(_mm512_srli_epi16(v0,2*pl),m3), c1=_mm512_and_si512(_mm512_srli_epi16(v1,2*pl),m3), \
                c2=_mm512_and_si512(_mm512_srli_epi16(v2,2*pl),m3), c3=_mm512_and_si512(_mm512_srli_epi16(v3,2*pl),m3); \
        h0=_mm512_dpbusd_epi32(h0,c0,bh); l0=_mm512_dpbusd_epi32(l0,c0,bl); h1=_mm512_dpbusd_epi32(h1,c1,bh); l1=_mm512_dpbusd_epi32(l1,c1,bl); \
        h2=_mm512_dpbusd_epi32(h2,c2,bh); l2=_mm512_dpbusd_epi32(l2,c2,bl); h3=_mm512_dpbusd_epi32(h3,c3,bh); l3=_mm512_dpbusd_epi32(l3,c3,bl); }
        PL(0) PL(1) PL(2) PL(3)
      }
#define EP(i) { __m512i s = _mm512_sub_epi32(_mm512_add_epi32(_mm512_slli_epi32(h##i, 8), l##i), _mm512_set1_epi32(2*xsum[g])); \
        __m512 sc = _mm512_loadu_ps(scl + ((size_t)(t0+i)*NG + g)*16); a##i = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(sc, _mm512_set1_ps(xs[g])), a##i); }
      EP(0) EP(1) EP(2) EP(3)
    }
    _mm512_storeu_ps(y + (t0+0)*16, a0); _mm512_storeu_ps(y + (t0+1)*16, a1); _mm512_storeu_ps(y + (t0+2)*16, a2); _mm512_storeu_ps(y + (t0+3)*16, a3);
  }
}
/* generic b-bit layout: tile t, quad q: 8*b bytes; qword j (columns 2j, 2j+1) = b bytes holding 8 codes of b bits:
   col 2j k0..k3 then col 2j+1 k0..k3. Decode: vpermb (b bytes into each qword), vpmultishiftqb, and. */
static void runb(const uint8_t *w, float *y, int b, int planes) {
  uint8_t ix[64], ctl[8];
  for (int j = 0; j < 8; j++) for (int i = 0; i < 8; i++) ix[8*j+i] = i < b ? b*j + i : 0;
  for (int r = 0; r < 8; r++) ctl[r] = b * r;
  const __m512i idx = _mm512_loadu_si512(ix), ms = _mm512_set1_epi64(*(int64_t*)ctl);
  const __m512i mk = _mm512_set1_epi8((1 << b) - 1);
  const size_t qb = 8 * b, ts = (size_t)(K/4) * qb;
  const int zero = 1 << (b - 1);
#pragma omp parallel for num_threads(2) schedule(static)
  for (int t0 = 0; t0 < NT; t0 += 4) {
    __m512 acc[4]; for (int i=0;i<4;i++) acc[i]=_mm512_setzero_ps();
    for (int g = 0; g < NG; g++) {
      __m512i h[4], l[4];
      for (int i=0;i<4;i++){h[i]=_mm512_setzero_si512(); l[i]=_mm512_setzero_si512();}
      for (int q = g*32; q < g*32+32; q++) {
        __m512i bh = _mm512_set1_epi32(*(const int32_t*)&xhi[4*q]);
        __m512i bl = _mm512_set1_epi32(*(const int32_t*)&xlo[4*q]);
        for (int i = 0; i < 4; i++) {
          const uint8_t *p = w + (t0+i)*ts + q*qb;
          if ((q*qb) % 64 < qb) _mm_prefetch((const char*)p + 4096, _MM_HINT_T0);
          __m512i v = b <= 4 ? _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i*)p)) : _mm512_loadu_si512(p);
          __m512i c = _mm512_and_si512(_mm512_multishift_epi64_epi8(ms, _mm512_permutexvar_epi8(idx, v)), mk);
          h[i] = _mm512_dpbusd_epi32(h[i], c, bh);
          if (planes == 2) l[i] = _mm512_dpbusd_epi32(l[i], c, bl);
        }
      }
      for (int i = 0; i < 4; i++) {
        __m512i s = _mm512_sub_epi32(_mm512_add_epi32(_mm512_slli_epi32(h[i], 8), l[i]), _mm512_set1_epi32(zero*xsum[g]));
        __m512 sc = _mm512_loadu_ps(scl + ((size_t)(t0+i)*NG + g)*16);
        acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(sc, _mm512_set1_ps(xs[g])), acc[i]);
      }
    }
    for (int i=0;i<4;i++) _mm512_storeu_ps(y + (t0+i)*16, acc[i]);
  }
}
static float readall(const uint8_t *w, size_t n) {
  float out = 0;
#pragma omp parallel num_threads(2) reduction(+:out)
  { size_t half=n/2, base=omp_get_thread_num()*half; __m512i a=_mm512_setzero_si512();
    for (size_t o=0;o+64<=half;o+=64) a=_mm512_xor_si512(a,_mm512_loadu_si512(w+base+o));
    out += _mm512_reduce_add_epi32(a); }
  return out;
}
static int cmp(const void*p,const void*q){double d=*(const double*)p-*(const double*)q;return (d>0)-(d<0);}
int main(int argc, char **argv) {
  int hot = argc > 1;
  /* x and its planes */
  float x[K]; srand(1);
  for (int k=0;k<K;k++) x[k] = ((rand()/(float)RAND_MAX)-0.5f)*4;
  for (int g=0;g<NG;g++){ float m=0; for(int k=g*G;k<g*G+G;k++) m=fmaxf(m,fabsf(x[k]));
    int e; frexpf(m,&e); xs[g]=ldexpf(1.f,e-14); int s=0;
    for(int k=g*G;k<g*G+G;k++){ int v=(int)lrintf(x[k]/xs[g]); int hi=(v+128)>>8; xhi[k]=hi; xlo[k]=v-256*hi; s+=v;} xsum[g]=s; }
  scl = aligned_alloc(64, sizeof(float)*NT*NG*16);
  for (size_t i=0;i<(size_t)NT*NG*16;i++) scl[i]=0.01f+0.001f*(i%7);
  size_t sz3 = W3 + 4096, sz2 = W2 + 4096;
  int rings = hot ? 1 : 90;
  uint8_t **r3 = malloc(rings*sizeof(void*)), **r2 = malloc(rings*sizeof(void*));
  for (int i=0;i<rings;i++){ r3[i]=aligned_alloc(4096,sz3); r2[i]=aligned_alloc(4096,sz2);
    for(size_t j=0;j<sz3;j++) r3[i][j]=(uint8_t)(j*131+i*7); for(size_t j=0;j<sz2;j++) r2[i][j]=(uint8_t)(j*97+i*5);}
  /* check int3 / int2 against scalar */
  float *y = aligned_alloc(64, N*4);
  run3(r3[0], y, 2);
  double maxe=0, maxr=0;
  for (int n=0;n<64;n++){ int t=n/16,c=n%16; double acc=0;
    for(int k=0;k<K;k++){ int q=k/4,r=k%4; const uint8_t*p=r3[0]+((size_t)t*(K/4)+q)*24+3*(c/2);
      uint32_t f=p[0]|p[1]<<8|p[2]<<16; int code=(f>>(12*(c%2)+3*r))&7;
      acc += (double)x[k]*(code-4)*scl[((size_t)t*NG+k/G)*16+c]; }
    maxe=fmax(maxe,fabs(acc-y[n])); maxr=fmax(maxr,fabs(acc)); }
  printf("int3 check: max err %.3g of max %.3g\n", maxe, maxr);
  run2(r2[0], y); maxe=0; maxr=0;
  for (int n=0;n<64;n++){ int t=n/16,c=n%16; double acc=0;
    for(int k=0;k<K;k++){ int b=k/16,pl=(k%16)/4,r=k%4; int code=(r2[0][((size_t)t*(K/16)+b)*64+4*c+r]>>(2*pl))&3;
      acc += (double)x[k]*(code-2)*scl[((size_t)t*NG+k/G)*16+c]; }
    maxe=fmax(maxe,fabs(acc-y[n])); maxr=fmax(maxr,fabs(acc)); }
  printf("int2 check: max err %.3g of max %.3g\n", maxe, maxr);
  { static float y2[N]; run2t(r2[0], y2); double d = 0; for (int n = 0; n < N; n++) d = fmax(d, fabs(y[n] - y2[n]));
    printf("int2t vs int2: max difference %.3g\n", d); }
  size_t sz4 = (size_t)NT*(K/4)*32 + 4096; uint8_t **r4 = malloc(rings*sizeof(void*));
  for (int i=0;i<rings;i++){ r4[i]=aligned_alloc(4096,sz4); for(size_t j=0;j<sz4;j++) r4[i][j]=(uint8_t)(j*53+i*3);}
  runb(r3[0], y, 3, 2); { int t=0,c=5; double acc=0; for(int k=0;k<K;k++){int q=k/4,r=k%4;const uint8_t*p=r3[0]+((size_t)t*(K/4)+q)*24+3*(c/2);
      uint32_t f=p[0]|p[1]<<8|p[2]<<16; int code=(f>>(12*(c%2)+3*r))&7; acc+=(double)x[k]*(code-4)*scl[((size_t)t*NG+k/G)*16+c];}
    printf("generic b=3 check col 5: %g vs %g\n", y[5], acc); }
  const char *names[] = {"read4","int4v2","read3","int3v2","gen3v2","read2","int2v2","gen2v2","int2t"};
  enum {NM=9};
  int reps = hot ? 200 : 8; double *ts = malloc(sizeof(double)*reps*rings*NM); int cnt[NM]={0};
  float sink=0;
  for (int r=0;r<reps;r++) for (int mode=0;mode<NM;mode++) for (int i=0;i<rings;i++) {
    double t0=now();
    switch(mode){case 0: sink+=readall(r4[i],sz4-4096); break; case 1: runb(r4[i],y,4,2); break;
      case 2: sink+=readall(r3[i],W3); break; case 3: run3(r3[i],y,2); break; case 4: runb(r3[i],y,3,2); break;
      case 5: sink+=readall(r2[i],W2); break; case 6: run2(r2[i],y); break; case 7: runb(r2[i],y,2,2); break; case 8: run2t(r2[i],y); break;}
    if (r) ts[(size_t)mode*reps*rings + cnt[mode]++] = now()-t0; }
  for (int mode=0;mode<NM;mode++){ double*t=ts+(size_t)mode*reps*rings; qsort(t,cnt[mode],sizeof(double),cmp);
    printf("%s %-7s median %.3f ms  best %.3f\n", hot?"hot ":"dram", names[mode], 1e3*t[cnt[mode]/2], 1e3*t[0]); }
  return sink==1234.f;
}
