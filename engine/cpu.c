/*
 * engine/cpu.c: the CPU backend. fp32 everywhere, OpenBLAS for every GEMM,
 * the worker pool (parallel.h) for the loops in between. It is the reference
 * the CUDA backend is checked against, so it favours plain, exact code:
 * two-pass LayerNorm, max-subtracted softmax, erf GELU.
 *
 * The backward ops (training) are in cpu_backward.c; what both files share
 * is in cpu_internal.h.
 *
 * Scratch: im2col buffers and attention score matrices live in one scratch
 * buffer owned by the backend, grown to the largest size a model asks for
 * during its first (measure-free) forward and then reused: steady-state
 * requests allocate nothing.
 */
#include <assert.h>
#include <cblas.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_internal.h"
#include "error.h"
#include "parallel.h"

/* Header before each allocation so free() can account for its size. */
typedef struct {
    size_t bytes;
    size_t pad[7]; /* keep the payload 64-byte aligned */
} eng__cpu_hdr;

static void *cpu_alloc(eng_backend *be, size_t bytes)
{
    eng_cpu *c = (eng_cpu *)be;
    void *p = NULL;
    if (posix_memalign(&p, 64, sizeof(eng__cpu_hdr) + bytes) != 0) {
        eng_error(ENG_ENOMEM, "cannot allocate %zu MiB of host memory", bytes >> 20);
        return NULL;
    }
    ((eng__cpu_hdr *)p)->bytes = bytes;
    pthread_mutex_lock(&c->mu);
    c->used += bytes;
    pthread_mutex_unlock(&c->mu);
    return (eng__cpu_hdr *)p + 1;
}

static void cpu_free(eng_backend *be, void *p)
{
    eng_cpu *c = (eng_cpu *)be;
    eng__cpu_hdr *h = (eng__cpu_hdr *)p - 1;
    pthread_mutex_lock(&c->mu);
    c->used -= h->bytes;
    pthread_mutex_unlock(&c->mu);
    free(h);
}

static int cpu_upload(eng_backend *be, void *dst, const float *src, size_t n)
{
    if (dst != src)
        memcpy(dst, src, n * sizeof(float));
    return 0;
}

static int cpu_download(eng_backend *be, float *dst, const void *src, size_t n)
{
    if (dst != src)
        memcpy(dst, src, n * sizeof(float));
    return 0;
}

static int cpu_sync(eng_backend *be) { return 0; }

static void cpu_destroy(eng_backend *be)
{
    eng_cpu *c = (eng_cpu *)be;
    free(c->scratch);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

static void cpu_memory(const eng_backend *be, size_t *used, size_t *total)
{
    const eng_cpu *c = (const eng_cpu *)be;
    if (used)
        *used = c->used + c->scratch_n * sizeof(float);
    if (total)
        *total = 0;
}

/* Scratch of at least n floats. Ops are called from one thread per backend
 * (the worker owning the model), so the buffer is not shared concurrently. */
float *eng__cpu_scratch(eng_cpu *c, size_t n)
{
    if (n > c->scratch_n) {
        float *p = realloc(c->scratch, n * sizeof(float));
        if (!p) {
            eng_error(ENG_ENOMEM, "cannot grow CPU scratch to %zu MiB", (n * 4) >> 20);
            return NULL;
        }
        c->scratch = p;
        c->scratch_n = n;
    }
    return c->scratch;
}

/* ---- hot element-wise loops, built twice ----
 * The GELU and softmax loops also get an AVX2 build (8 lanes instead of the
 * baseline's 4), chosen once at run time. Neither build uses FMA, and the
 * reductions keep their explicit 8 partial lanes, so both give the same
 * bits. Each body is always_inline so that each wrapper compiles it for its
 * own target. */
#ifdef ENG__TWO_BUILDS
int eng__have_avx2(void)
{
    static int have = -1; /* -1 until probed; threads may probe at once */
    int h = __atomic_load_n(&have, __ATOMIC_RELAXED);
    if (h < 0) {
        h = __builtin_cpu_supports("avx2") ? 1 : 0;
        __atomic_store_n(&have, h, __ATOMIC_RELAXED);
    }
    return h;
}
#endif

/* GELU (erf form), y may alias x. */
static inline __attribute__((always_inline)) void eng__gelu_body(float *y, const float *x,
                                                                 int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        y[i] = 0.5f * x[i] * (1.0f + eng__erf(x[i] * 0.70710678118654752f));
}

static void eng__gelu_base(float *y, const float *x, int64_t n) { eng__gelu_body(y, x, n); }

#ifdef ENG__TWO_BUILDS
__attribute__((target("avx2"))) static void eng__gelu_avx2(float *y, const float *x, int64_t n)
{
    eng__gelu_body(y, x, n);
}
#endif

static void eng__gelu(float *y, const float *x, int64_t n)
{
#ifdef ENG__TWO_BUILDS
    if (eng__have_avx2()) {
        eng__gelu_avx2(y, x, n);
        return;
    }
#endif
    eng__gelu_base(y, x, n);
}

static void eng__act_vec(float *y, const float *x, int64_t n, eng_act act)
{
    if (act == ENG_ACT_GELU)
        eng__gelu(y, x, n);
    else if (act == ENG_ACT_RELU)
        for (int64_t i = 0; i < n; i++)
            y[i] = x[i] > 0.0f ? x[i] : 0.0f;
    else if (y != x)
        memmove(y, x, (size_t)n * sizeof(float));
}

static void eng__add_vec(float *restrict y, const float *restrict b, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        y[i] += b[i];
}

/* ---- GEMM: OpenBLAS single-threaded per call, split over the pool ----
 * OpenBLAS runs with one thread (set at create) and every GEMM is cut into
 * one block of rows (or of columns, when there are few rows) per worker, so
 * all CPU parallelism lives in one pool and GEMMs can also be called from
 * inside parallel tasks (attention) without oversubscribing the cores. The
 * epilogue (bias, activation, residual) runs on each block while it is hot. */

static void eng__gemm_epilogue(const eng__gemm *g, int64_t r0, int64_t r1, int64_t c0, int64_t c1);

#ifndef ENG_GEMV_ROWS
#define ENG_GEMV_ROWS 4
#endif

static void eng__gemm_block(void *p, int64_t i0, int64_t i1, int worker)
{
    const eng__gemm *g = p;
    int64_t r0 = 0, r1 = g->M, c0 = 0, c1 = g->N;
    if (g->split_n) {
        c0 = i0;
        c1 = i1;
    } else {
        r0 = i0;
        r1 = i1;
    }
    const float *B = g->tb ? g->B + c0 * g->ldb : g->B + c0;
    if (g->tb && r1 - r0 <= ENG_GEMV_ROWS) {
        /* A few rows (decoder tokens, a text batch): matrix-vector products
         * read the weight as it lies; sgemm would first pack all of it. */
        for (int64_t r = r0; r < r1; r++)
            cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)(c1 - c0), g->K, g->alpha, B, g->ldb,
                        g->A + r * g->lda, 1, g->beta, g->C + r * g->ldc + c0, 1);
    } else {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, g->tb ? CblasTrans : CblasNoTrans, (int)(r1 - r0),
                    (int)(c1 - c0), g->K, g->alpha, g->A + r0 * g->lda, g->lda, B, g->ldb, g->beta,
                    g->C + r0 * g->ldc + c0, g->ldc);
    }
    if (g->bias || g->res || g->act != ENG_ACT_NONE)
        eng__gemm_epilogue(g, r0, r1, c0, c1);
}

void eng__gemm_run(eng__gemm *g)
{
    int nt = eng_parallel_threads();
    /* Blocks of at least 16 rows / 64 columns keep the BLAS kernels efficient. */
    int64_t by_rows = g->M / 16, by_cols = g->N / 64;
    if (g->group < 1)
        g->group = 1;
    g->split_n = by_rows < nt && by_cols > by_rows;
    int64_t n = g->split_n ? g->N : g->M;
    if (nt == 1 || (g->split_n ? by_cols : by_rows) < 2)
        eng__gemm_block(g, 0, n, 0);
    else if (g->split_n)
        /* column blocks must keep bias groups whole: split in units of `group` */
        eng_parallel_run(n, eng__gemm_block, g);
    else
        eng_parallel_run(n, eng__gemm_block, g);
}

/* ---- bias + activation + residual epilogue ---- */

static void eng__gemm_epilogue(const eng__gemm *g, int64_t r0, int64_t r1, int64_t c0, int64_t c1)
{
    int64_t n = c1 - c0;
    float *bias = NULL;
    float bbuf[1024]; /* the block's bias, expanded from groups */
    if (g->bias && g->group > 1 && n <= 1024) {
        for (int64_t j = 0; j < n; j++)
            bbuf[j] = g->bias[(c0 + j) / g->group];
        bias = bbuf;
    } else if (g->bias && g->group == 1) {
        bias = (float *)g->bias + c0;
    }
    for (int64_t r = r0; r < r1; r++) {
        float *y = g->C + r * g->ldc + c0;
        if (bias)
            eng__add_vec(y, bias, n);
        else if (g->bias) /* wide grouped block: rare, index per element */
            for (int64_t j = 0; j < n; j++)
                y[j] += g->bias[(c0 + j) / g->group];
        if (g->act != ENG_ACT_NONE)
            eng__act_vec(y, y, n, g->act);
        if (g->res)
            eng__add_vec(y, g->res + r * g->N + c0, n);
    }
}

static int cpu_linear(eng_backend *be, void *yv, const void *xv, int64_t ldx, const void *wv,
                      const void *bv, const void *resv, int M, int K, int N, eng_act act)
{
    float *y = yv;
    const float *res = resv;
    /* With no activation the residual rides in GEMM's beta; y may alias it. */
    float beta = 0.0f;
    if (res && act == ENG_ACT_NONE) {
        if (res != y)
            memcpy(y, res, (size_t)M * N * sizeof(float));
        beta = 1.0f;
        res = NULL;
    }
    assert(!res || res != y); /* act + residual needs y distinct from res */
    eng__gemm g = {.tb = 1,
                   .M = M,
                   .N = N,
                   .K = K,
                   .alpha = 1.0f,
                   .beta = beta,
                   .A = xv,
                   .lda = (int)ldx,
                   .B = wv,
                   .ldb = K,
                   .C = y,
                   .ldc = N,
                   .bias = bv,
                   .group = 1,
                   .res = res,
                   .act = act};
    eng__gemm_run(&g);
    return 0;
}

static int cpu_matmul_nn(eng_backend *be, void *y, const void *x, const void *w, const void *b,
                         int M, int K, int N, int group)
{
    eng__gemm g = {.tb = 0,
                   .M = M,
                   .N = N,
                   .K = K,
                   .alpha = 1.0f,
                   .A = x,
                   .lda = K,
                   .B = w,
                   .ldb = N,
                   .C = y,
                   .ldc = N,
                   .bias = b,
                   .group = group};
    eng__gemm_run(&g);
    return 0;
}

/* ---- layernorm ---- */

typedef struct {
    float *y;
    const float *x, *res, *g, *b;
    int N;
    float eps;
} eng__ln;

/* Sum of n floats with 8 partial lanes (vectorises without reassociation
 * flags; also more accurate than one running sum). */
float eng__sum8(const float *restrict x, int n)
{
    float s8[8] = {0};
    int j = 0;
    for (; j + 8 <= n; j += 8)
        for (int l = 0; l < 8; l++)
            s8[l] += x[j + l];
    float s = 0;
    for (; j < n; j++)
        s += x[j];
    return s + ((s8[0] + s8[1]) + (s8[2] + s8[3])) + ((s8[4] + s8[5]) + (s8[6] + s8[7]));
}

/* Mean and 1 / sqrt(biased variance + eps) of a row, two-pass with 8
 * partial lanes: the forward and the backward share it, so the backward
 * normalises exactly as the forward did. */
void eng__ln_stats(const float *restrict y, int N, float eps, float *mean_out, float *rstd_out)
{
    float mean = eng__sum8(y, N) / (float)N;
    float d8[8] = {0};
    int j = 0;
    for (; j + 8 <= N; j += 8)
        for (int k = 0; k < 8; k++)
            d8[k] += (y[j + k] - mean) * (y[j + k] - mean);
    float var = 0;
    for (; j < N; j++)
        var += (y[j] - mean) * (y[j] - mean);
    var += ((d8[0] + d8[1]) + (d8[2] + d8[3])) + ((d8[4] + d8[5]) + (d8[6] + d8[7]));
    *mean_out = mean;
    *rstd_out = 1.0f / sqrtf(var / (float)N + eps);
}

/* Two-pass mean and variance (biased, as PyTorch) per row. */
static void eng__ln_rows(void *p, int64_t r0, int64_t r1)
{
    const eng__ln *l = p;
    int N = l->N;
    for (int64_t r = r0; r < r1; r++) {
        const float *x = l->x + r * N;
        const float *res = l->res ? l->res + r * N : NULL;
        float *restrict y = l->y + r * N;
        if (res)
            for (int j = 0; j < N; j++)
                y[j] = x[j] + res[j];
        else if (y != x)
            memcpy(y, x, (size_t)N * sizeof(float));
        float mean, rstd;
        eng__ln_stats(y, N, l->eps, &mean, &rstd);
        const float *restrict g = l->g, *restrict b = l->b;
        for (int j = 0; j < N; j++)
            y[j] = (y[j] - mean) * rstd * g[j] + b[j];
    }
}

static int cpu_layernorm(eng_backend *be, void *y, const void *x, const void *res, const void *g,
                         const void *b, int M, int N, float eps)
{
    eng__ln l = {y, x, res, g, b, N, eps};
    eng_parallel_for(M, 16, eng__ln_rows, &l);
    return 0;
}

/* ---- elementwise ---- */

typedef struct {
    float *y;
    const float *a, *b;
    int64_t bn;
    eng_act act;
} eng__ew;

static void eng__act_range(void *p, int64_t i0, int64_t i1)
{
    const eng__ew *e = p;
    eng__act_vec(e->y + i0, e->a + i0, i1 - i0, e->act);
}

static int cpu_activate(eng_backend *be, void *y, const void *x, int64_t n, eng_act act)
{
    eng__ew e = {y, x, NULL, 0, act};
    eng_parallel_for(n, 1 << 14, eng__act_range, &e);
    return 0;
}

/* Items are rows of bn elements (b is one row, broadcast). */
static void eng__add_rows(void *p, int64_t r0, int64_t r1)
{
    const eng__ew *e = p;
    for (int64_t r = r0; r < r1; r++) {
        float *y = e->y + r * e->bn;
        const float *a = e->a + r * e->bn;
        if (y != a)
            memcpy(y, a, (size_t)e->bn * sizeof(float));
        eng__add_vec(y, e->b, e->bn);
    }
}

static void eng__add_range(void *p, int64_t i0, int64_t i1)
{
    const eng__ew *e = p;
    for (int64_t i = i0; i < i1; i++)
        e->y[i] = e->a[i] + e->b[i];
}

static int cpu_add(eng_backend *be, void *y, const void *a, const void *b, int64_t n, int64_t bn)
{
    eng__ew e = {y, a, b, bn, ENG_ACT_NONE};
    if (bn == n)
        eng_parallel_for(n, 1 << 14, eng__add_range, &e);
    else
        eng_parallel_for(n / bn, 64, eng__add_rows, &e);
    return 0;
}

static int cpu_copy(eng_backend *be, void *y, const void *x, int64_t n)
{
    if (y != x)
        memmove(y, x, (size_t)n * sizeof(float));
    return 0;
}

static int cpu_transpose(eng_backend *be, void *yv, const void *xv, int M, int N)
{
    float *y = yv;
    const float *x = xv;
    /* Blocked so both sides stay in cache. */
    for (int i0 = 0; i0 < M; i0 += 32)
        for (int j0 = 0; j0 < N; j0 += 32)
            for (int i = i0; i < i0 + 32 && i < M; i++)
                for (int j = j0; j < j0 + 32 && j < N; j++)
                    y[(int64_t)j * M + i] = x[(int64_t)i * N + j];
    return 0;
}

/* ---- attention ----
 * Blocked like flash attention, so the scores stay in cache: a task is one
 * (batch, head, block of QB queries); it computes S = scale Q_blk K^T
 * [QB, Tk] (sgemm), adds the decomposed rel-pos bias, the key mask, takes
 * the row softmax and writes O_blk = S V. Tasks run on the pool, each with
 * its own scratch (QB * Tk + the rel-pos tables). The rel-pos terms come
 * from one small sgemm per block against the whole table,
 * QR = Q_blk rel^T [QB, 2S-1], then a gather: bias term (i, ky) =
 * QR[i, qy(i) - ky + S - 1]. */

#define ENG_ATT_QB 64

/* r[k] += bh + rw[k] for k < n. */
static void eng__add_bias_row(float *restrict r, const float *restrict rw, float bh, int n)
{
    for (int k = 0; k < n; k++)
        r[k] += bh + rw[k];
}

/* In place: row[j] = softmax(row + kbias)[j] over n entries. Separate
 * passes with 8 partial lanes so every loop vectorises without
 * reassociation flags. */
static inline __attribute__((always_inline)) void
eng__softmax_body(float *restrict row, const float *restrict kbias, int n)
{
    if (kbias)
        for (int j = 0; j < n; j++)
            row[j] += kbias[j];
    float mx8[8];
    for (int l = 0; l < 8; l++)
        mx8[l] = -INFINITY;
    int j = 0;
    for (; j + 8 <= n; j += 8)
        for (int l = 0; l < 8; l++)
            mx8[l] = row[j + l] > mx8[l] ? row[j + l] : mx8[l];
    float mx = -INFINITY;
    for (int l = 0; l < 8; l++)
        mx = mx8[l] > mx ? mx8[l] : mx;
    for (; j < n; j++)
        mx = row[j] > mx ? row[j] : mx;
    for (j = 0; j < n; j++)
        row[j] = eng__exp_neg(row[j] - mx);
    float s8[8] = {0};
    for (j = 0; j + 8 <= n; j += 8)
        for (int l = 0; l < 8; l++)
            s8[l] += row[j + l];
    float sum = 0;
    for (int l = 0; l < 8; l++)
        sum += s8[l];
    for (; j < n; j++)
        sum += row[j];
    float inv = 1.0f / sum;
    for (j = 0; j < n; j++)
        row[j] *= inv;
}

static void eng__softmax_base(float *row, const float *kbias, int n)
{
    eng__softmax_body(row, kbias, n);
}

#ifdef ENG__TWO_BUILDS
__attribute__((target("avx2"))) static void eng__softmax_avx2(float *row, const float *kbias, int n)
{
    eng__softmax_body(row, kbias, n);
}
#endif

void eng__softmax_row(float *row, const float *kbias, int n)
{
#ifdef ENG__TWO_BUILDS
    if (eng__have_avx2()) {
        eng__softmax_avx2(row, kbias, n);
        return;
    }
#endif
    eng__softmax_base(row, kbias, n);
}

typedef struct eng__att {
    const eng_attn *a;
    const float *q, *k, *v, *rel_h, *rel_w, *key_bias;
    float *out;
    int nqb;        /* query blocks per (b, h) */
    float *scratch; /* per worker: per_worker floats */
    size_t per_worker;
} eng__att;

static void eng__att_task(void *p, int64_t t0, int64_t t1, int worker)
{
    const eng__att *s = p;
    const eng_attn *a = s->a;
    int64_t HD = (int64_t)a->H * a->D;
    int gh = a->relpos ? a->relpos->h : 0, gw = a->relpos ? a->relpos->w : 0;
    int nrh = a->relpos ? 2 * gh - 1 : 0, nrw = a->relpos ? 2 * gw - 1 : 0;
    float *S = s->scratch + (size_t)worker * s->per_worker;
    float *QRh = S + (size_t)ENG_ATT_QB * a->Tk, *QRw = QRh + (size_t)ENG_ATT_QB * nrh;
    for (int64_t t = t0; t < t1; t++) {
        int qb = (int)(t % s->nqb), h = (int)(t / s->nqb % a->H), b = (int)(t / s->nqb / a->H);
        int i0 = qb * ENG_ATT_QB, nq = a->Tq - i0 < ENG_ATT_QB ? a->Tq - i0 : ENG_ATT_QB;
        const float *qb_ = s->q + ((int64_t)b * a->Tq + i0) * a->q_rs + (int64_t)h * a->D;
        const float *kb = s->k + (int64_t)b * a->Tk * a->kv_rs + (int64_t)h * a->D;
        const float *vb = s->v + (int64_t)b * a->Tk * a->kv_rs + (int64_t)h * a->D;
        float *ob = s->out + ((int64_t)b * a->Tq + i0) * HD + (int64_t)h * a->D;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nq, a->Tk, a->D, a->scale, qb_,
                    (int)a->q_rs, kb, (int)a->kv_rs, 0.0f, S, a->Tk);
        if (a->relpos) {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nq, nrh, a->D, 1.0f, qb_,
                        (int)a->q_rs, s->rel_h, a->D, 0.0f, QRh, nrh);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nq, nrw, a->D, 1.0f, qb_,
                        (int)a->q_rs, s->rel_w, a->D, 0.0f, QRw, nrw);
        }
        const float *kbias = s->key_bias ? s->key_bias + (int64_t)b * a->Tk : NULL;
        for (int i = 0; i < nq; i++) {
            float *row = S + (size_t)i * a->Tk;
            if (a->relpos) {
                int qi = i0 + i, qy = qi / gw, qx = qi % gw;
                const float *rh = QRh + (size_t)i * nrh + qy + gh - 1; /* rh[-ky] */
                const float *rw = QRw + (size_t)i * nrw + qx + gw - 1; /* rw[-kx] */
                float rwr[128]; /* rw reversed into order; grid sides <= 128 (checked) */
                for (int kx = 0; kx < gw; kx++)
                    rwr[kx] = rw[-kx];
                for (int ky = 0; ky < gh; ky++)
                    eng__add_bias_row(row + (size_t)ky * gw, rwr, rh[-ky], gw);
            }
            eng__softmax_row(row, kbias, a->Tk);
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nq, a->D, a->Tk, 1.0f, S, a->Tk, vb,
                    (int)a->kv_rs, 0.0f, ob, (int)HD);
    }
}

static int cpu_attention(eng_backend *be, void *outv, const void *qv, const void *kv,
                         const void *vv, const eng_attn *a, const void *rel_h, const void *rel_w)
{
    eng_cpu *c = (eng_cpu *)be;
    if (a->relpos && (a->relpos->h > 128 || a->relpos->w > 128))
        return eng_error(ENG_EUNSUP, "relative-position grid %dx%d over 128", a->relpos->h,
                         a->relpos->w);
    int nrel = a->relpos ? (2 * a->relpos->h - 1) + (2 * a->relpos->w - 1) : 0;
    size_t per = (size_t)ENG_ATT_QB * (a->Tk + nrel);
    int nt = eng_parallel_threads();
    float *scratch = eng__cpu_scratch(c, per * nt);
    if (!scratch)
        return ENG_ENOMEM;
    eng__att s = {a,
                  qv,
                  kv,
                  vv,
                  rel_h,
                  rel_w,
                  a->key_bias ? (const float *)a->key_bias->data : NULL,
                  outv,
                  (a->Tq + ENG_ATT_QB - 1) / ENG_ATT_QB,
                  scratch,
                  per};
    eng_parallel_run((int64_t)a->B * a->H * s.nqb, eng__att_task, &s);
    return 0;
}

/* ---- convolution as GEMM ---- */

typedef struct {
    float *col;
    const float *x;
    int x_chw, Cin, H, W, kh, kw, stride, pad, OW;
} eng__im2col;

/* Row (oy, ox) of the column matrix holds the patch in weight order
 * (c, ky, kx), zeros where the kernel hangs over the padded border. */
static void eng__im2col_rows(void *p, int64_t r0, int64_t r1)
{
    const eng__im2col *m = p;
    int64_t K = (int64_t)m->Cin * m->kh * m->kw;
    for (int64_t r = r0; r < r1; r++) {
        int oy = (int)(r / m->OW), ox = (int)(r % m->OW);
        float *col = m->col + r * K;
        for (int c = 0; c < m->Cin; c++)
            for (int ky = 0; ky < m->kh; ky++) {
                int iy = oy * m->stride - m->pad + ky;
                for (int kx = 0; kx < m->kw; kx++) {
                    int ix = ox * m->stride - m->pad + kx;
                    float v = 0.0f;
                    if (iy >= 0 && iy < m->H && ix >= 0 && ix < m->W)
                        v = m->x_chw ? m->x[((int64_t)c * m->H + iy) * m->W + ix]
                                     : m->x[((int64_t)iy * m->W + ix) * m->Cin + c];
                    *col++ = v;
                }
            }
    }
}

static int cpu_conv2d(eng_backend *be, void *y, const void *x, int x_chw, int Cin, int H, int W,
                      const void *w, const void *b, int Cout, int kh, int kw, int stride, int pad)
{
    eng_cpu *c = (eng_cpu *)be;
    int OH = (H + 2 * pad - kh) / stride + 1, OW = (W + 2 * pad - kw) / stride + 1;
    int64_t K = (int64_t)Cin * kh * kw, P = (int64_t)OH * OW;
    const float *col = x;
    if (!(kh == 1 && kw == 1 && stride == 1 && pad == 0 && !x_chw)) {
        float *buf = eng__cpu_scratch(c, (size_t)(P * K));
        if (!buf)
            return ENG_ENOMEM;
        eng__im2col m = {buf, x, x_chw, Cin, H, W, kh, kw, stride, pad, OW};
        eng_parallel_for(P, 16, eng__im2col_rows, &m);
        col = buf;
    }
    eng__gemm g = {.tb = 1,
                   .M = (int)P,
                   .N = Cout,
                   .K = (int)K,
                   .alpha = 1.0f,
                   .A = col,
                   .lda = (int)K,
                   .B = w,
                   .ldb = (int)K,
                   .C = y,
                   .ldc = Cout,
                   .bias = b,
                   .group = 1};
    eng__gemm_run(&g);
    return 0;
}

typedef struct {
    float *y;
    const float *t, *b;
    int W, Cout;
} eng__ct;

/* t[i*W+j, co*4 + a*2 + bb] -> y[(2i+a)*(2W) + 2j+bb, co] (+ bias). */
static void eng__ct_scatter(void *p, int64_t r0, int64_t r1)
{
    const eng__ct *s = p;
    for (int64_t r = r0; r < r1; r++) {
        int i = (int)(r / s->W), j = (int)(r % s->W);
        const float *t = s->t + r * s->Cout * 4;
        for (int a = 0; a < 2; a++)
            for (int bb = 0; bb < 2; bb++) {
                float *y = s->y + ((int64_t)(2 * i + a) * (2 * s->W) + 2 * j + bb) * s->Cout;
                for (int co = 0; co < s->Cout; co++)
                    y[co] = t[co * 4 + a * 2 + bb] + (s->b ? s->b[co] : 0.0f);
            }
    }
}

static int cpu_conv_transpose2x2(eng_backend *be, void *y, const void *x, int H, int W, int Cin,
                                 const void *w, const void *b, int Cout)
{
    eng_cpu *c = (eng_cpu *)be;
    int64_t P = (int64_t)H * W;
    float *t = eng__cpu_scratch(c, (size_t)(P * Cout * 4));
    if (!t)
        return ENG_ENOMEM;
    eng__gemm g = {.tb = 0,
                   .M = (int)P,
                   .N = Cout * 4,
                   .K = Cin,
                   .alpha = 1.0f,
                   .A = x,
                   .lda = Cin,
                   .B = w,
                   .ldb = Cout * 4,
                   .C = t,
                   .ldc = Cout * 4,
                   .group = 1};
    eng__gemm_run(&g);
    eng__ct s = {y, t, b, W, Cout};
    eng_parallel_for(P, 64, eng__ct_scatter, &s);
    return 0;
}

/* ---- windows ---- */

static int cpu_window_partition(eng_backend *be, void *yv, const void *xv, int H, int W, int C,
                                int ws)
{
    float *y = yv;
    const float *x = xv;
    int nwx = (W + ws - 1) / ws, nwy = (H + ws - 1) / ws;
    for (int wy = 0; wy < nwy; wy++)
        for (int wx = 0; wx < nwx; wx++)
            for (int iy = 0; iy < ws; iy++)
                for (int ix = 0; ix < ws; ix++) {
                    int gy = wy * ws + iy, gx = wx * ws + ix;
                    float *dst = y + (((int64_t)(wy * nwx + wx) * ws + iy) * ws + ix) * C;
                    if (gy < H && gx < W)
                        memcpy(dst, x + ((int64_t)gy * W + gx) * C, (size_t)C * sizeof(float));
                    else
                        memset(dst, 0, (size_t)C * sizeof(float));
                }
    return 0;
}

static int cpu_window_unpartition_add(eng_backend *be, void *yv, const void *xv, int H, int W,
                                      int C, int ws)
{
    float *y = yv;
    const float *x = xv;
    int nwx = (W + ws - 1) / ws;
    for (int gy = 0; gy < H; gy++)
        for (int gx = 0; gx < W; gx++) {
            int wy = gy / ws, wx = gx / ws, iy = gy % ws, ix = gx % ws;
            const float *src = x + (((int64_t)(wy * nwx + wx) * ws + iy) * ws + ix) * C;
            float *dst = y + ((int64_t)gy * W + gx) * C;
            for (int c = 0; c < C; c++)
                dst[c] += src[c];
        }
    return 0;
}

/* ---- bilinear resize (align_corners=False), PyTorch's index rule ---- */

typedef struct {
    float *y;
    const float *x;
    int H, W, crop_h, crop_w, OH, OW, y0, rows;
    const int *x0, *x1;
    const float *lx;
    float *scratch; /* per worker: two horizontally resized source rows [2, OW] */
} eng__rs;

static void eng__src_index(int in, int out, int o, int *i0, int *i1, float *l)
{
    float scale = (float)in / (float)out;
    float src = scale * ((float)o + 0.5f) - 0.5f;
    if (src < 0)
        src = 0;
    int i = (int)src;
    if (i > in - 1)
        i = in - 1;
    *i0 = i;
    *i1 = i + (i < in - 1 ? 1 : 0);
    float lam = src - (float)i;
    *l = lam < 0 ? 0 : (lam > 1 ? 1 : lam);
}

/* Source row `row` of x resized horizontally: dst[ox] = (1 - lx) x[a] + lx x[b]. */
static void eng__resize_hrow(const eng__rs *s, const float *row, float *restrict dst)
{
    for (int ox = 0; ox < s->OW; ox++) {
        float lx = s->lx[ox];
        dst[ox] = (1.0f - lx) * row[s->x0[ox]] + lx * row[s->x1[ox]];
    }
}

/* Output rows [r0, r1) of the C x rows band. Separable: each source row is
 * resized horizontally once into the worker's two-row cache (an upscale
 * reuses it for several output rows), then every output row is one
 * vectorised blend of two cached rows. The arithmetic is PyTorch's:
 * (1 - ly) * top + ly * bottom of the horizontally interpolated rows. */
static void eng__resize_rows(void *p, int64_t r0, int64_t r1, int worker)
{
    const eng__rs *s = p;
    float *cache[2] = {s->scratch + (size_t)worker * 2 * s->OW,
                       s->scratch + (size_t)worker * 2 * s->OW + s->OW};
    int64_t held[2] = {-1, -1}; /* c * H + source row in each cache line */
    for (int64_t r = r0; r < r1; r++) {
        int c = (int)(r / s->rows), oy = (int)(r % s->rows), y0, y1;
        float ly;
        eng__src_index(s->crop_h, s->OH, s->y0 + oy, &y0, &y1, &ly);
        int64_t want[2] = {(int64_t)c * s->H + y0, (int64_t)c * s->H + y1};
        int h0 = held[0] == want[0] ? 0 : held[1] == want[0] ? 1 : -1;
        int h1 = held[0] == want[1] ? 0 : held[1] == want[1] ? 1 : -1;
        if (h0 < 0) { /* into the line that does not hold the other row */
            h0 = h1 == 0 ? 1 : 0;
            eng__resize_hrow(s, s->x + want[0] * s->W, cache[h0]);
            held[h0] = want[0];
        }
        if (h1 < 0) {
            h1 = h0 ^ 1;
            eng__resize_hrow(s, s->x + want[1] * s->W, cache[h1]);
            held[h1] = want[1];
        }
        const float *rows[2] = {cache[h0], cache[h1]};
        const float *restrict top = rows[0], *restrict bot = rows[1];
        float *restrict dst = s->y + ((int64_t)c * s->rows + oy) * s->OW;
        for (int ox = 0; ox < s->OW; ox++)
            dst[ox] = (1.0f - ly) * top[ox] + ly * bot[ox];
    }
}

static int cpu_resize_bilinear(eng_backend *be, void *y, const void *x, int C, int H, int W,
                               int crop_h, int crop_w, int OH, int OW, int y0, int rows)
{
    int workers = eng_parallel_threads();
    int *xi = malloc(sizeof(int) * 2 * (size_t)OW);
    float *lx = malloc(sizeof(float) * (size_t)OW);
    float *scratch = malloc(sizeof(float) * 2 * (size_t)OW * (size_t)workers);
    if (!xi || !lx || !scratch) {
        free(xi);
        free(lx);
        free(scratch);
        return eng_error(ENG_ENOMEM, "resize: out of memory");
    }
    for (int o = 0; o < OW; o++)
        eng__src_index(crop_w, OW, o, &xi[o], &xi[OW + o], &lx[o]);
    eng__rs s = {y, x, H, W, crop_h, crop_w, OH, OW, y0, rows, xi, xi + OW, lx, scratch};
    eng_parallel_run((int64_t)C * rows, eng__resize_rows, &s);
    free(xi);
    free(lx);
    free(scratch);
    return 0;
}

/* Host memory already: threshold and count in one pass (vectorises). */
static int cpu_binarize(eng_backend *be, uint8_t *dst, const void *xv, int64_t n, float lo,
                        float hi, uint64_t counts[2])
{
    const float *x = xv;
    uint64_t c_hi = 0, c_lo = 0;
    for (int64_t i = 0; i < n; i++) {
        dst[i] = x[i] > 0.0f;
        c_hi += x[i] > hi;
        c_lo += x[i] > lo;
    }
    counts[0] = c_hi;
    counts[1] = c_lo;
    return 0;
}

static const eng_backend_ops eng__cpu_ops = {
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_upload,
    .download = cpu_download,
    .sync = cpu_sync,
    .destroy = cpu_destroy,
    .memory = cpu_memory,
    .linear = cpu_linear,
    .matmul_nn = cpu_matmul_nn,
    .layernorm = cpu_layernorm,
    .activate = cpu_activate,
    .add = cpu_add,
    .copy = cpu_copy,
    .transpose = cpu_transpose,
    .attention = cpu_attention,
    .conv2d = cpu_conv2d,
    .conv_transpose2x2 = cpu_conv_transpose2x2,
    .window_partition = cpu_window_partition,
    .window_unpartition_add = cpu_window_unpartition_add,
    .resize_bilinear = cpu_resize_bilinear,
    .binarize = cpu_binarize,
    .fill = eng__cpu_fill,
    .linear_backward = eng__cpu_linear_backward,
    .layernorm_backward = eng__cpu_layernorm_backward,
    .activate_backward = eng__cpu_activate_backward,
    .attention_backward = eng__cpu_attention_backward,
    .conv_transpose2x2_backward = eng__cpu_conv_transpose2x2_backward,
};

int eng_backend_cpu_create(eng_backend **out, int threads)
{
    *out = NULL;
    eng_cpu *c = calloc(1, sizeof *c);
    if (!c)
        return eng_error(ENG_ENOMEM, "out of memory");
    c->base.ops = &eng__cpu_ops;
    c->base.dev = ENG_DEV_CPU;
    c->base.dtype = ENG_F32;
    pthread_mutex_init(&c->mu, NULL);
    if (threads > 0)
        eng_parallel_set_threads(threads);
    /* all parallelism is the pool's: see the GEMM section */
    openblas_set_num_threads(1);
    snprintf(c->base.desc, sizeof c->base.desc, "cpu (fp32, OpenBLAS, %d threads)",
             eng_parallel_threads());
    *out = &c->base;
    return 0;
}

void eng_cpu_set_spin_us(int us) { eng_parallel_set_spin_us(us); }

#ifndef ENG_HAVE_CUDA
int eng_backend_cuda_create(eng_backend **out, int device_index, eng_dtype dtype)
{
    *out = NULL;
    return eng_error(ENG_EUNSUP, "this build has no CUDA backend (make builds it where nvcc and an "
                                 "NVIDIA GPU are present; CUDA=1 forces it)");
}
#endif
