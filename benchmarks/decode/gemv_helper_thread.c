/* Does a helper thread help the M = 1 GEMV stream (benchmarks/README.md, session 35)? Mode A: both threads
 * compute the pair-dot GEMV (as gemv_prefetch.c, no prefetch); mode B: thread 0 only reads ahead (a load or a
 * t1 / t2 prefetch per line, 256 KiB-8 MiB ahead of the consumer's progress) while thread 1 computes every
 * tile; plus a plain 2-thread sum. Measured: B took ~2x A's time.
 *   gcc -O3 -march=native -fopenmp gemv_helper_thread.c -o gemv_helper_thread
 *   OMP_NUM_THREADS=2 OMP_PROC_BIND=true ./gemv_helper_thread 11008 4096    (RING=n: n weight copies)
 * Written by hand (not generated). */
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <stdatomic.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
int N,K; long AHEAD; int HINT;
#define BN 256
static __m512i TBL;
static inline void tile(const int *wt,const float *s,const unsigned *xp,float *y,int t){
    __m512 acc[16]; for(int j=0;j<16;j++) acc[j]=_mm512_setzero_ps();
    for(int g=0;g<K/128;g++){
      __m512 a[16]; for(int j=0;j<16;j++) a[j]=_mm512_setzero_ps();
      for(int r=0;r<16;r++){
        const int *row=wt+(size_t)(g*16+r)*BN;
        const unsigned *xr=xp+(g*16+r)*4;
        __m512i wv[16]; for(int j=0;j<16;j++) wv[j]=_mm512_loadu_si512(row+16*j);
        for(int q=0;q<4;q++){
          __m512bh xb=(__m512bh)_mm512_set1_epi32(xr[q]);
          for(int j=0;j<16;j++){
            __m512i d=_mm512_permutexvar_epi16(_mm512_srli_epi16(wv[j],4*q),TBL);
            a[j]=_mm512_dpbf16_ps(a[j],(__m512bh)d,xb);
          }
        }
      }
      const float *sg=s+(size_t)g*N+t*BN;
      for(int j=0;j<16;j++) acc[j]=_mm512_fmadd_ps(a[j],_mm512_loadu_ps(sg+16*j),acc[j]);
    }
    for(int j=0;j<16;j++) _mm512_storeu_ps(y+t*BN+16*j,acc[j]);
}
static void gemvA(const int *w,const float *s,const unsigned *xp,float *y){
  int T=N/BN;
  #pragma omp parallel for schedule(static)
  for(int t=0;t<T;t++) tile(w+(size_t)t*(K/8)*BN,s,xp,y,t);
}
static volatile int sinkv;
static void gemvB(const int *w,const float *s,const unsigned *xp,float *y){
  int T=N/BN; size_t tb=(size_t)(K/8)*BN*4; size_t total=tb*T;
  _Atomic long done=0; // bytes consumed by the computing thread
  #pragma omp parallel num_threads(2)
  { if(omp_get_thread_num()==0){
      const char *p=(const char*)w; int acc=0;
      for(size_t off=0; off<total; off+=64){
        if((off & 4095)==0){ while((long)off - atomic_load_explicit(&done,memory_order_relaxed) > AHEAD) _mm_pause(); }
        if(HINT==0) acc+=*(const volatile int*)(p+off); else if(HINT==1) _mm_prefetch(p+off,_MM_HINT_T1); else _mm_prefetch(p+off,_MM_HINT_T2);
      }
      sinkv=acc;
    } else {
      for(int t=0;t<T;t++){ tile(w+(size_t)t*(K/8)*BN,s,xp,y,t); atomic_store_explicit(&done,(long)(t+1)*tb,memory_order_relaxed);} 
    }
  }
}
static float sumbuf(const int *w,size_t n){
  float tot=0;
  #pragma omp parallel reduction(+:tot)
  { __m512i a0=_mm512_setzero_si512(),a1=a0,a2=a0,a3=a0;
    #pragma omp for schedule(static)
    for(size_t i=0;i<n;i+=64){a0=_mm512_add_epi32(a0,_mm512_loadu_si512(w+i));a1=_mm512_add_epi32(a1,_mm512_loadu_si512(w+i+16));a2=_mm512_add_epi32(a2,_mm512_loadu_si512(w+i+32));a3=_mm512_add_epi32(a3,_mm512_loadu_si512(w+i+48));}
    tot+=_mm512_reduce_add_epi32(_mm512_add_epi32(_mm512_add_epi32(a0,a1),_mm512_add_epi32(a2,a3)));}
  return tot;
}
int main(int argc,char**argv){
  N=atoi(argv[1]);K=atoi(argv[2]);
  TBL=_mm512_set_epi16(-16512,-16384,-16320,-16256,-16224,-16192,-16160,-16128,16608,16576,16544,16512,16448,16384,16256,0,
                                     -16512,-16384,-16320,-16256,-16224,-16192,-16160,-16128,16608,16576,16544,16512,16448,16384,16256,0);
  size_t nw=(size_t)N*K/8, ns=(size_t)N*K/128; size_t bytes=nw*4+ns*2;
  int R=getenv("RING")?atoi(getenv("RING")):1+(8*32*1024*1024+bytes-1)/bytes;
  int **W=malloc(R*sizeof(int*)); float **S=malloc(R*sizeof(float*));
  for(int r=0;r<R;r++){W[r]=aligned_alloc(64,nw*4);S[r]=aligned_alloc(64,ns*4);for(size_t i=0;i<nw;i++)W[r][i]=rand();for(size_t i=0;i<ns;i++)S[r][i]=1.0f;}
  unsigned *xp=malloc(K/2*4); for(int i=0;i<K/2;i++)xp[i]=0x3f803f80; float *y=aligned_alloc(64,N*4);
  long aheads[]={256<<10, 1<<20, 4<<20, 8<<20}; int hints[]={0,1,2};
  int nc=2+4*3; double med[32][12]; volatile float sink=0;
  for(int round=0;round<9;round++){
    for(int c=0;c<nc;c++){
      int mode = c==0?0: c==1?2: 1; if(mode==1){AHEAD=aheads[(c-2)/3]; HINT=hints[(c-2)%3];}
      for(int p=0;p<2;p++) for(int r=0;r<R;r++){ if(mode==0) gemvA(W[r],S[r],xp,y); else if(mode==1) gemvB(W[r],S[r],xp,y); else sink+=sumbuf(W[r],nw);}
      double t0=now(); int cnt=0;
      for(int p=0;p<6;p++) for(int r=0;r<R;r++){ if(mode==0) gemvA(W[r],S[r],xp,y); else if(mode==1) gemvB(W[r],S[r],xp,y); else sink+=sumbuf(W[r],nw); cnt++;}
      med[c][round]=(now()-t0)/cnt*1e3;
    }
  }
  for(int c=0;c<nc;c++){ double v[12]; memcpy(v,med[c],9*sizeof(double));
    for(int i=0;i<9;i++)for(int j=i+1;j<9;j++)if(v[j]<v[i]){double t=v[i];v[i]=v[j];v[j]=t;}
    if(c==0) printf("A 2 compute         : %.3f ms (%.1f GB/s)\n",v[4],bytes/v[4]/1e6);
    else if(c==1) printf("sum                 : %.3f ms (%.1f GB/s)\n",v[4],bytes/v[4]/1e6);
    else printf("B ahead %5ld KiB hint %d: %.3f ms (%.1f GB/s)\n",aheads[(c-2)/3]>>10,hints[(c-2)%3],v[4],bytes/v[4]/1e6);
  }
  return 0;
}
