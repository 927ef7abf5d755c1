/* What one core of this CPU issues per instruction mix of the CPU GEMV kernels (session 46): the numbers
 * behind choosing between vdpbf16ps pair dots, fp32 FMA table lookups and AMX tiles. Each mix runs in
 * registers on independent chains (no memory), except the AMX rows, which store a B tile with vector stores
 * and load it into a tile register as the decoded GEMM forms do.
 *
 *   gcc -O2 -march=native -mamx-tile -mamx-bf16 port_rates.c -o port_rates && ./port_rates
 *
 * Prints ns per instruction or per mix; compare rows of one run (the VM is shared). */
#include <immintrin.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

#define N 100000000L
#define KEEP(v) __asm__ volatile("" : "+v"(v))

typedef struct {
    unsigned char palette, start, reserved[14];
    unsigned short colsb[16];
    unsigned char rows[16];
} tilecfg;

static char A[1024] __attribute__((aligned(64))), B[64][1024] __attribute__((aligned(64)));
static float C[256] __attribute__((aligned(64)));

int main(void) {
    __m512 acc[16], f[16];
    __m512i w[8];
    for (int i = 0; i < 16; i++) acc[i] = f[i] = _mm512_setzero_ps();
    for (int i = 0; i < 8; i++) w[i] = _mm512_set1_epi32(0x12345 + i);
    __m512bh x = (__m512bh)_mm512_set1_epi32(0x3f803f80);
    __m512i ctl = _mm512_set1_epi64(0x0102030405060708LL), m = _mm512_set1_epi32(0x00700070);
    __m512i c = _mm512_set1_epi32(0x3f803f80);
    __m512 tb = _mm512_set1_ps(1.0f), one = _mm512_set1_ps(1.0f);

    double t = now();
    for (long i = 0; i < N / 16; i++)
        for (int j = 0; j < 16; j++) acc[j] = _mm512_dpbf16_ps(acc[j], (__m512bh)w[j & 7], x);
    printf("vdpbf16ps, 16 chains:                    %.3f ns each (32 MACs)\n", (now() - t) / N * 1e9);

    t = now();
    for (long i = 0; i < N / 16; i++)
        for (int j = 0; j < 16; j++) f[j] = _mm512_fmadd_ps(f[j], one, tb);
    printf("vfmadd ps, 16 chains:                    %.3f ns each (16 MACs)\n", (now() - t) / N * 1e9);

    t = now();
    for (long i = 0; i < N / 8; i++) {
        for (int j = 0; j < 8; j++) {
            __m512i p = _mm512_multishift_epi64_epi8(ctl, w[j]);
            p = _mm512_ternarylogic_epi32(p, m, c, 0x6c);
            acc[j] = _mm512_dpbf16_ps(acc[j], (__m512bh)p, x);
        }
        KEEP(w[0]); KEEP(w[1]); KEEP(w[2]); KEEP(w[3]); KEEP(w[4]); KEEP(w[5]); KEEP(w[6]); KEEP(w[7]);
    }
    printf("multishift + ternlog + vdpbf16ps:        %.3f ns per 32 weights\n", (now() - t) / N * 1e9);

    t = now();
    for (long i = 0; i < N / 8; i++) {
        for (int j = 0; j < 8; j++) {
            __m512i s = _mm512_srli_epi32(w[j], 4);
            f[j] = _mm512_fmadd_ps(_mm512_permutexvar_ps(s, tb), one, f[j]);
        }
        KEEP(w[0]); KEEP(w[1]); KEEP(w[2]); KEEP(w[3]); KEEP(w[4]); KEEP(w[5]); KEEP(w[6]); KEEP(w[7]);
    }
    printf("shift + vpermps + FMA (a 4-bit field):   %.3f ns per field of 16 columns\n", (now() - t) / N * 1e9);

    syscall(SYS_arch_prctl, 0x1023, 18); /* ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA */
    tilecfg cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int i = 0; i < 8; i++) cfg.colsb[i] = 64, cfg.rows[i] = 16;
    _tile_loadconfig(&cfg);
    memset(A, 0, sizeof A);
    memset(B, 0, sizeof B);
    long n = 2000000;
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    _tile_loadd(4, A, 64);
    t = now();
    for (long i = 0; i < n; i++) {
        _tile_loadd(5, B[i & 7], 64);
        _tile_dpbf16ps(0, 4, 5);
        _tile_loadd(6, B[(i + 1) & 7], 64);
        _tile_dpbf16ps(1, 4, 6);
        _tile_loadd(7, B[(i + 2) & 7], 64);
        _tile_dpbf16ps(2, 4, 7);
        _tile_dpbf16ps(3, 4, 5);
    }
    printf("tdpbf16ps (B tiles from L1):             %.3f ns each (8192 MACs)\n", (now() - t) / (4 * n) * 1e9);
    for (int dist = 0; dist <= 16; dist = dist ? dist * 4 : 1) {
        t = now();
        for (long i = 0; i < n; i++) {
            char *b = B[i & 63];
            for (int r = 0; r < 16; r++) _mm512_store_si512((void *)(b + 64 * r), _mm512_add_epi32(c, w[r & 7]));
            _tile_loadd(5, B[(i - dist) & 63], 64);
            _tile_dpbf16ps(0, 4, 5);
        }
        printf("16 stores + tileloadd of the tile stored %2d iterations before + tdpbf16ps: %.2f ns\n", dist,
               (now() - t) / n * 1e9);
    }
    _tile_stored(0, C, 64);
    _tile_release();
    float s = C[0];
    for (int j = 0; j < 16; j++) s += _mm512_reduce_add_ps(acc[j]) + _mm512_reduce_add_ps(f[j]);
    printf("(checksum %g)\n", s);
    return 0;
}
