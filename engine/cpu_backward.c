/*
 * engine/cpu_backward.c: the CPU backend's backward ops (training), fp32 with
 * OpenBLAS for every product and the worker pool for the loops between, like
 * the forward ops in cpu.c. Contracts in backend.h / ops.h; conventions:
 * activation gradients are written (or added when `acc`), parameter
 * gradients always added.
 *
 * Letters: M rows (tokens, pixels), K input and N output features of a
 * linear layer; B batch, H heads, Tq/Tk query/key tokens, D head width.
 */
#include <assert.h>
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_internal.h"
#include "error.h"
#include "parallel.h"

int eng__cpu_fill(eng_backend *be, void *yv, int64_t n, float v)
{
    float *y = yv;
    if (v == 0.0f && !signbit(v)) {
        memset(y, 0, (size_t)n * sizeof(float));
        return 0;
    }
    for (int64_t i = 0; i < n; i++)
        y[i] = v;
    return 0;
}

/* ---- C[N,K] += A[M,N]^T B[M,K], split over the pool ----
 * The weight gradient of a linear layer (dw += dy^T x): every worker takes
 * a block of C's rows, or of its columns when C has few rows. */

typedef struct {
    int M, N, K;
    const float *A; /* [M, N], row stride lda */
    int lda;
    const float *B; /* [M, K], row stride ldb */
    int ldb;
    float *C; /* [N, K], row stride ldc */
    int ldc;
    int split_k; /* 1: workers take column blocks of C */
} eng__tn;

static void eng__tn_block(void *p, int64_t i0, int64_t i1, int worker)
{
    const eng__tn *g = p;
    if (g->split_k)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, g->N, (int)(i1 - i0), g->M, 1.0f, g->A,
                    g->lda, g->B + i0, g->ldb, 1.0f, g->C + i0, g->ldc);
    else
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)(i1 - i0), g->K, g->M, 1.0f,
                    g->A + i0, g->lda, g->B, g->ldb, 1.0f, g->C + i0 * g->ldc, g->ldc);
}

static void eng__gemm_tn_acc(float *C, const float *A, int lda, const float *B, int ldb, int M,
                             int N, int K)
{
    eng__tn g = {M, N, K, A, lda, B, ldb, C, K, K > N};
    int64_t n = g.split_k ? K : N;
    if (eng_parallel_threads() == 1 || n < 32)
        eng__tn_block(&g, 0, n, 0);
    else
        eng_parallel_run(n, eng__tn_block, &g);
}

/* C[M,N] (+)= A[M,K] op(B): op(B) = B[N,K]^T when tb, B[K,N] otherwise;
 * contiguous rows. The input gradient of a linear layer or convolution. */
static void eng__gemm_dx(float *C, const float *A, const float *B, int M, int N, int K, int tb,
                         int acc)
{
    eng__gemm g = {.tb = tb,
                   .M = M,
                   .N = N,
                   .K = K,
                   .alpha = 1.0f,
                   .beta = acc ? 1.0f : 0.0f,
                   .A = A,
                   .lda = K,
                   .B = B,
                   .ldb = tb ? K : N,
                   .C = C,
                   .ldc = N,
                   .group = 1};
    eng__gemm_run(&g);
}

/* ---- db[N] += column sums of dy[M, N] ---- */

typedef struct {
    float *db;
    const float *dy;
    int M, N;
} eng__colsum;

static void eng__colsum_cols(void *p, int64_t c0, int64_t c1)
{
    const eng__colsum *s = p;
    for (int64_t r = 0; r < s->M; r++) {
        const float *restrict row = s->dy + r * s->N;
        float *restrict db = s->db;
        for (int64_t j = c0; j < c1; j++)
            db[j] += row[j];
    }
}

static void eng__colsum_acc(float *db, const float *dy, int M, int N)
{
    eng__colsum s = {db, dy, M, N};
    eng_parallel_for(N, 64, eng__colsum_cols, &s);
}

int eng__cpu_linear_backward(eng_backend *be, void *dx, void *dw, void *db, const void *dy,
                             const void *x, int64_t ldx, const void *w, int M, int K, int N,
                             int acc)
{
    if (dx) /* dx[M,K] = dy[M,N] w[N,K]: w read as it lies (not transposed) */
        eng__gemm_dx(dx, dy, w, M, K, N, 0, acc);
    if (dw)
        eng__gemm_tn_acc(dw, dy, N, x, (int)ldx, M, N, K);
    if (db)
        eng__colsum_acc(db, dy, M, N);
    return 0;
}

/* ---- layernorm ----
 * With xhat = (x - mean) rstd and gdy = dy g:
 *   dx = rstd (gdy - mean(gdy) - xhat mean(gdy xhat)).
 * Statistics are recomputed with the forward's own routine; the two row
 * means are summed in double (a row is at most a few thousand values). */

typedef struct {
    float *dx;
    const float *dy, *x, *g;
    int N;
    float eps;
    int acc;
} eng__lnb;

static void eng__lnb_rows(void *p, int64_t r0, int64_t r1)
{
    const eng__lnb *l = p;
    const int N = l->N;
    for (int64_t r = r0; r < r1; r++) {
        const float *x = l->x + r * N, *dy = l->dy + r * N;
        float *dx = l->dx + r * N;
        float mean, rstd;
        eng__ln_stats(x, N, l->eps, &mean, &rstd);
        double s1 = 0, s2 = 0;
        for (int j = 0; j < N; j++) {
            double gdy = (double)dy[j] * l->g[j];
            s1 += gdy;
            s2 += gdy * ((x[j] - mean) * rstd);
        }
        float m1 = (float)(s1 / N), m2 = (float)(s2 / N);
        for (int j = 0; j < N; j++) {
            float xhat = (x[j] - mean) * rstd;
            float v = rstd * (dy[j] * l->g[j] - m1 - xhat * m2);
            dx[j] = l->acc ? dx[j] + v : v;
        }
    }
}

int eng__cpu_layernorm_backward(eng_backend *be, void *dx, void *dgv, void *dbv, const void *dyv,
                                const void *xv, const void *g, int M, int N, float eps, int acc)
{
    const float *dy = dyv, *x = xv;
    float *dg = dgv, *db = dbv;
    /* parameter gradients first: dx may overwrite dy */
    for (int64_t r = 0; (dg || db) && r < M; r++) {
        const float *xr = x + r * N, *dyr = dy + r * N;
        float mean, rstd;
        eng__ln_stats(xr, N, eps, &mean, &rstd);
        for (int j = 0; j < N; j++) {
            if (dg)
                dg[j] += dyr[j] * ((xr[j] - mean) * rstd);
            if (db)
                db[j] += dyr[j];
        }
    }
    if (dx) {
        eng__lnb l = {dx, dy, x, g, N, eps, acc};
        eng_parallel_for(M, 16, eng__lnb_rows, &l);
    }
    return 0;
}

/* ---- activations ----
 * GELU(x) = x Phi(x): GELU'(x) = Phi(x) + x phi(x), with the forward's own
 * erf so that the derivative belongs to the function the forward computed. */

typedef struct {
    float *dx;
    const float *dy, *x;
    eng_act act;
} eng__actb;

static inline __attribute__((always_inline)) void eng__gelu_grad_body(float *dx, const float *dy,
                                                                      const float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        float v = x[i];
        float cdf = 0.5f * (1.0f + eng__erf(v * 0.70710678118654752f));
        float pdf = 0.39894228040143268f * eng__exp_neg(-0.5f * v * v);
        dx[i] = dy[i] * (cdf + v * pdf);
    }
}

static void eng__gelu_grad_base(float *dx, const float *dy, const float *x, int64_t n)
{
    eng__gelu_grad_body(dx, dy, x, n);
}

#ifdef ENG__TWO_BUILDS
__attribute__((target("avx2"))) static void eng__gelu_grad_avx2(float *dx, const float *dy,
                                                                const float *x, int64_t n)
{
    eng__gelu_grad_body(dx, dy, x, n);
}
#endif

static void eng__actb_range(void *p, int64_t i0, int64_t i1)
{
    const eng__actb *s = p;
    float *dx = s->dx;
    const float *dy = s->dy, *x = s->x;
    if (s->act == ENG_ACT_GELU) {
#ifdef ENG__TWO_BUILDS
        if (eng__have_avx2()) {
            eng__gelu_grad_avx2(dx + i0, dy + i0, x + i0, i1 - i0);
            return;
        }
#endif
        eng__gelu_grad_base(dx + i0, dy + i0, x + i0, i1 - i0);
    } else if (s->act == ENG_ACT_RELU) {
        for (int64_t i = i0; i < i1; i++)
            dx[i] = x[i] > 0.0f ? dy[i] : 0.0f;
    } else if (dx != dy) {
        memmove(dx + i0, dy + i0, (size_t)(i1 - i0) * sizeof(float));
    }
}

int eng__cpu_activate_backward(eng_backend *be, void *dx, const void *dy, const void *x, int64_t n,
                               eng_act act)
{
    eng__actb s = {dx, dy, x, act};
    eng_parallel_for(n, 1 << 14, eng__actb_range, &s);
    return 0;
}

/* ---- attention ----
 * Per (batch, head), over blocks of QB queries: recompute S = softmax(scale
 * q k^T + key_bias) [QB, Tk], then
 *   dv += S^T dout,  dP = dout v^T,  dS = S (dP - rowsum(S dP)),
 *   dq = scale dS k,  dk += scale dS^T q.
 * dk and dv of one (b, h) are sums over every query block, so a task owns a
 * whole (b, h): tasks write disjoint columns of dk/dv. QB grows as Tk
 * shrinks (the image-to-token attention has 4096 queries and a handful of
 * keys) so that each block's products stay large enough for BLAS. */

typedef struct {
    const eng_attn *a;
    const float *q, *k, *v, *dout, *key_bias;
    float *dq, *dk, *dv;
    int QB;
    float *scratch; /* per worker: 2 * QB * Tk floats */
    size_t per_worker;
} eng__attb;

static void eng__attb_task(void *p, int64_t t0, int64_t t1, int worker)
{
    const eng__attb *s = p;
    const eng_attn *a = s->a;
    const int64_t HD = (int64_t)a->H * a->D;
    float *S = s->scratch + (size_t)worker * s->per_worker, *dP = S + (size_t)s->QB * a->Tk;
    for (int64_t t = t0; t < t1; t++) {
        const int h = (int)(t % a->H), b = (int)(t / a->H);
        const float *kb = s->k + (int64_t)b * a->Tk * a->kv_rs + (int64_t)h * a->D;
        const float *vb = s->v + (int64_t)b * a->Tk * a->kv_rs + (int64_t)h * a->D;
        float *dkb = s->dk + (int64_t)b * a->Tk * HD + (int64_t)h * a->D;
        float *dvb = s->dv + (int64_t)b * a->Tk * HD + (int64_t)h * a->D;
        const float *kbias = s->key_bias ? s->key_bias + (int64_t)b * a->Tk : NULL;
        for (int i0 = 0; i0 < a->Tq; i0 += s->QB) {
            const int nq = a->Tq - i0 < s->QB ? a->Tq - i0 : s->QB;
            const float beta = i0 ? 1.0f : 0.0f;
            const float *qb = s->q + ((int64_t)b * a->Tq + i0) * a->q_rs + (int64_t)h * a->D;
            const float *dob = s->dout + ((int64_t)b * a->Tq + i0) * HD + (int64_t)h * a->D;
            float *dqb = s->dq + ((int64_t)b * a->Tq + i0) * HD + (int64_t)h * a->D;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nq, a->Tk, a->D, a->scale, qb,
                        (int)a->q_rs, kb, (int)a->kv_rs, 0.0f, S, a->Tk);
            for (int i = 0; i < nq; i++)
                eng__softmax_row(S + (size_t)i * a->Tk, kbias, a->Tk);
            /* dv [Tk, D] (+)= S^T dout */
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, a->Tk, a->D, nq, 1.0f, S, a->Tk,
                        dob, (int)HD, beta, dvb, (int)HD);
            /* dP [nq, Tk] = dout v^T */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nq, a->Tk, a->D, 1.0f, dob,
                        (int)HD, vb, (int)a->kv_rs, 0.0f, dP, a->Tk);
            for (int i = 0; i < nq; i++) {
                const float *sr = S + (size_t)i * a->Tk;
                float *dr = dP + (size_t)i * a->Tk;
                double dot = 0;
                for (int j = 0; j < a->Tk; j++)
                    dot += (double)sr[j] * dr[j];
                const float d = (float)dot;
                for (int j = 0; j < a->Tk; j++)
                    dr[j] = sr[j] * (dr[j] - d);
            }
            /* dq [nq, D] = scale dS k;  dk [Tk, D] (+)= scale dS^T q */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nq, a->D, a->Tk, a->scale, dP,
                        a->Tk, kb, (int)a->kv_rs, 0.0f, dqb, (int)HD);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, a->Tk, a->D, nq, a->scale, dP,
                        a->Tk, qb, (int)a->q_rs, beta, dkb, (int)HD);
        }
    }
}

int eng__cpu_attention_backward(eng_backend *be, void *dq, void *dk, void *dv, const void *dout,
                                const void *q, const void *k, const void *v, const eng_attn *a)
{
    eng_cpu *c = (eng_cpu *)be;
    if (a->relpos)
        return eng_error(ENG_EUNSUP, "attention backward: no relative-position bias");
    int QB = 65536 / (a->Tk > 0 ? a->Tk : 1);
    QB = QB < 64 ? 64 : QB;
    QB = QB > a->Tq ? a->Tq : QB;
    QB = QB < 1 ? 1 : QB;
    const size_t per = (size_t)2 * QB * a->Tk;
    const int nt = eng_parallel_threads();
    float *scratch = eng__cpu_scratch(c, per * nt);
    if (!scratch)
        return ENG_ENOMEM;
    eng__attb s = {a,  q,  k,  v,  dout,    a->key_bias ? (const float *)a->key_bias->data : NULL,
                   dq, dk, dv, QB, scratch, per};
    eng_parallel_run((int64_t)a->B * a->H, eng__attb_task, &s);
    return 0;
}

/* ---- 2x2 stride-2 transposed convolution ----
 * The forward is t = x w ([H*W, Cin] x [Cin, Cout*4]) scattered to the 2x2
 * output pixels, so the backward gathers dy into dt [H*W, Cout*4] and runs
 * the two products of a linear layer against it. */

typedef struct {
    float *dt;
    const float *dy;
    int W, Cout;
} eng__ctg;

/* dt[i*W+j, co*4 + a*2 + bb] = dy[(2i+a)*(2W) + 2j+bb, co] */
static void eng__ct_gather(void *p, int64_t r0, int64_t r1)
{
    const eng__ctg *s = p;
    for (int64_t r = r0; r < r1; r++) {
        int i = (int)(r / s->W), j = (int)(r % s->W);
        float *t = s->dt + r * s->Cout * 4;
        for (int a = 0; a < 2; a++)
            for (int bb = 0; bb < 2; bb++) {
                const float *y = s->dy + ((int64_t)(2 * i + a) * (2 * s->W) + 2 * j + bb) * s->Cout;
                for (int co = 0; co < s->Cout; co++)
                    t[co * 4 + a * 2 + bb] = y[co];
            }
    }
}

int eng__cpu_conv_transpose2x2_backward(eng_backend *be, void *dx, void *dw, void *db,
                                        const void *dy, const void *x, int H, int W, int Cin,
                                        const void *w, int Cout, int acc)
{
    eng_cpu *c = (eng_cpu *)be;
    const int64_t P = (int64_t)H * W;
    const int N4 = Cout * 4;
    if (dx || dw) {
        float *dt = eng__cpu_scratch(c, (size_t)(P * N4));
        if (!dt)
            return ENG_ENOMEM;
        eng__ctg s = {dt, dy, W, Cout};
        eng_parallel_for(P, 64, eng__ct_gather, &s);
        if (dx) /* dx[P, Cin] = dt[P, Cout*4] w[Cin, Cout*4]^T */
            eng__gemm_dx(dx, dt, w, (int)P, Cin, N4, 1, acc);
        if (dw) /* dw[Cin, Cout*4] += x^T dt */
            eng__gemm_tn_acc(dw, x, Cin, dt, N4, (int)P, Cin, N4);
    }
    if (db)
        eng__colsum_acc(db, dy, (int)(4 * P), Cout);
    return 0;
}
