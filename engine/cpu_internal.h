/*
 * engine/cpu_internal.h: what the CPU backend's files share (cpu.c: the
 * forward ops and the function table; cpu_backward.c: the backward ops).
 * Private to engine/cpu*.c.
 */
#ifndef TASAM_ENGINE_CPU_INTERNAL_H
#define TASAM_ENGINE_CPU_INTERNAL_H

#include <pthread.h>
#include <stdint.h>
#include <string.h>

#include "backend.h"

typedef struct eng_cpu {
    eng_backend base;
    pthread_mutex_t mu; /* guards the counters and scratch growth */
    size_t used;        /* bytes handed out by alloc */
    float *scratch;
    size_t scratch_n; /* floats */
} eng_cpu;

/* Scratch of at least n floats (grown, never shrunk; NULL + message when the
 * host is out of memory). Ops run on one thread per backend, so one op owns
 * it until it returns; a pointer is valid until the next call. */
float *eng__cpu_scratch(eng_cpu *c, size_t n);

/* exp for x <= 0 (softmax after max subtraction): 2^n * p(r), |r| <= ln2/2,
 * degree-6 polynomial, about 1 ulp; branch-free so the loop vectorises. */
static inline float eng__exp_neg(float x)
{
    x = x < -87.0f ? -87.0f : x;
    /* round to nearest with the 1.5 * 2^23 trick: no libm call, vectorises */
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.0f + r * (1.0f + r * (0.5f + r * (0.166666672f +
                                                  r * (0.0416666679f + r * (0.00833333377f +
                                                                            r * 0.00138888892f)))));
    int32_t e = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &e, 4);
    return p * scale;
}

/* erf to about 1.5e-7 absolute (Abramowitz & Stegun 7.1.26), branch-free so
 * GELU loops vectorise; libm's erff is exact to an ulp but scalar and was a
 * tenth of the decoder's time. The fp32 tolerances (2e-3) leave ample room. */
static inline float eng__erf(float x)
{
    float ax = x < 0 ? -x : x;
    float t = 1.0f / (1.0f + 0.3275911f * ax);
    float poly =
        t * (0.254829592f +
             t * (-0.284496736f + t * (1.421413741f + t * (-1.453152027f + t * 1.061405429f))));
    float e = eng__exp_neg(-ax * ax);
    float y = 1.0f - poly * e;
    return x < 0 ? -y : y;
}

/* Hot element-wise loops are built twice, for the baseline and for AVX2,
 * and chosen once at run time (cpu.c explains). */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define ENG__TWO_BUILDS 1
/* 1 when the CPU has AVX2. */
int eng__have_avx2(void);
#endif

/* One GEMM C = alpha A op(B) + beta C, split over the worker pool, with an
 * optional epilogue (bias, activation, residual). */
typedef struct eng__gemm {
    int tb; /* B is [N, K] (transposed use) rather than [K, N] */
    int M, N, K;
    float alpha, beta;
    const float *A; /* [M, K], row stride lda */
    int lda;
    const float *B;
    int ldb;
    float *C; /* [M, N], row stride ldc */
    int ldc;
    int split_n;       /* 1: workers take column blocks */
    const float *bias; /* [N / group] or NULL */
    int group;
    const float *res; /* [M, N] contiguous or NULL, added after act */
    eng_act act;
} eng__gemm;
void eng__gemm_run(eng__gemm *g);

/* Sum of n floats with 8 partial lanes. */
float eng__sum8(const float *restrict x, int n);
/* A LayerNorm row's mean and 1 / sqrt(var + eps), as the forward computes them. */
void eng__ln_stats(const float *restrict y, int N, float eps, float *mean, float *rstd);
/* In place: row = softmax(row + kbias) over n entries (kbias may be NULL). */
void eng__softmax_row(float *row, const float *kbias, int n);

/* ---- backward ops (cpu_backward.c); contracts in backend.h ---- */

int eng__cpu_fill(eng_backend *be, void *y, int64_t n, float v);
int eng__cpu_linear_backward(eng_backend *be, void *dx, void *dw, void *db, const void *dy,
                             const void *x, int64_t ldx, const void *w, int M, int K, int N,
                             int acc);
int eng__cpu_layernorm_backward(eng_backend *be, void *dx, void *dg, void *db, const void *dy,
                                const void *x, const void *g, int M, int N, float eps, int acc);
int eng__cpu_activate_backward(eng_backend *be, void *dx, const void *dy, const void *x, int64_t n,
                               eng_act act);
int eng__cpu_attention_backward(eng_backend *be, void *dq, void *dk, void *dv, const void *dout,
                                const void *q, const void *k, const void *v, const eng_attn *a);
int eng__cpu_conv_transpose2x2_backward(eng_backend *be, void *dx, void *dw, void *db,
                                        const void *dy, const void *x, int H, int W, int Cin,
                                        const void *w, int Cout, int acc);

#endif
