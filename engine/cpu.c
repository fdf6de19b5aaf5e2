/*
 * engine/cpu.c: the CPU backend. fp32 everywhere, OpenBLAS for every GEMM,
 * the worker pool (parallel.h) for the loops in between. It is the reference
 * the CUDA backend is checked against, so it favours plain, exact code:
 * two-pass LayerNorm, max-subtracted softmax, erf GELU.
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

#include "backend.h"
#include "error.h"
#include "parallel.h"

typedef struct eng_cpu {
    eng_backend base;
    pthread_mutex_t mu; /* guards the counters and scratch growth */
    size_t used;        /* bytes handed out by alloc */
    float *scratch;
    size_t scratch_n;   /* floats */
} eng_cpu;

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
static float *cpu_scratch(eng_cpu *c, size_t n)
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

static inline float eng__gelu(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); }

static inline float eng__act(float x, eng_act act)
{
    switch (act) {
    case ENG_ACT_GELU: return eng__gelu(x);
    case ENG_ACT_RELU: return x > 0.0f ? x : 0.0f;
    default: return x;
    }
}

/* ---- bias + activation + residual epilogue, parallel over rows ---- */

typedef struct {
    float *y;
    const float *b, *res;
    int N;
    eng_act act;
} eng__epi;

static void eng__epi_rows(void *p, int64_t r0, int64_t r1)
{
    const eng__epi *e = p;
    for (int64_t r = r0; r < r1; r++) {
        float *y = e->y + r * e->N;
        const float *res = e->res ? e->res + r * e->N : NULL;
        for (int j = 0; j < e->N; j++) {
            float v = y[j] + (e->b ? e->b[j] : 0.0f);
            v = eng__act(v, e->act);
            y[j] = res ? v + res[j] : v;
        }
    }
}

static int cpu_linear(eng_backend *be, void *yv, const void *xv, int64_t ldx, const void *wv,
                      const void *bv, const void *resv, int M, int K, int N, eng_act act)
{
    float *y = yv;
    const float *res = resv;
    /* With no activation the residual can ride in GEMM's beta; y may alias it. */
    float beta = 0.0f;
    if (res && act == ENG_ACT_NONE) {
        if (res != y)
            memcpy(y, res, (size_t)M * N * sizeof(float));
        beta = 1.0f;
        res = NULL;
    }
    assert(!res || res != y); /* act + residual needs y distinct from res */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, xv, (int)ldx, wv, K, beta,
                y, N);
    if (bv || res || act != ENG_ACT_NONE) {
        eng__epi e = {y, bv, res, N, act};
        eng_parallel_for(M, 64, eng__epi_rows, &e);
    }
    return 0;
}

typedef struct {
    float *y;
    const float *b;
    int N, group;
} eng__gbias;

static void eng__gbias_rows(void *p, int64_t r0, int64_t r1)
{
    const eng__gbias *g = p;
    for (int64_t r = r0; r < r1; r++)
        for (int j = 0; j < g->N; j++)
            g->y[r * g->N + j] += g->b[j / g->group];
}

static int cpu_matmul_nn(eng_backend *be, void *y, const void *x, const void *w, const void *b,
                         int M, int K, int N, int group)
{
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1.0f, x, K, w, N, 0.0f, y, N);
    if (b) {
        eng__gbias g = {y, b, N, group};
        eng_parallel_for(M, 64, eng__gbias_rows, &g);
    }
    return 0;
}

/* ---- layernorm ---- */

typedef struct {
    float *y;
    const float *x, *res, *g, *b;
    int N;
    float eps;
} eng__ln;

static void eng__ln_rows(void *p, int64_t r0, int64_t r1)
{
    const eng__ln *l = p;
    for (int64_t r = r0; r < r1; r++) {
        const float *x = l->x + r * l->N;
        const float *res = l->res ? l->res + r * l->N : NULL;
        float *y = l->y + r * l->N;
        double mean = 0, var = 0;
        if (res)
            for (int j = 0; j < l->N; j++)
                y[j] = x[j] + res[j];
        else if (y != x)
            memcpy(y, x, (size_t)l->N * sizeof(float));
        for (int j = 0; j < l->N; j++)
            mean += y[j];
        mean /= l->N;
        for (int j = 0; j < l->N; j++) {
            double d = y[j] - mean;
            var += d * d;
        }
        var /= l->N;
        float rstd = (float)(1.0 / sqrt(var + l->eps)), m = (float)mean;
        for (int j = 0; j < l->N; j++)
            y[j] = (y[j] - m) * rstd * l->g[j] + l->b[j];
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
    for (int64_t i = i0; i < i1; i++)
        e->y[i] = eng__act(e->a[i], e->act);
}

static int cpu_activate(eng_backend *be, void *y, const void *x, int64_t n, eng_act act)
{
    eng__ew e = {y, x, NULL, 0, act};
    eng_parallel_for(n, 1 << 14, eng__act_range, &e);
    return 0;
}

static void eng__add_range(void *p, int64_t i0, int64_t i1)
{
    const eng__ew *e = p;
    for (int64_t i = i0; i < i1; i++)
        e->y[i] = e->a[i] + e->b[i % e->bn];
}

static int cpu_add(eng_backend *be, void *y, const void *a, const void *b, int64_t n, int64_t bn)
{
    eng__ew e = {y, a, b, bn, ENG_ACT_NONE};
    eng_parallel_for(n, 1 << 14, eng__add_range, &e);
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
 * Per (batch, head): S = scale * Q K^T (sgemm), + decomposed rel-pos bias,
 * + key mask, row softmax, O = S V (sgemm). S is Tq x Tk floats of scratch
 * (64 MiB for SAM's 64x64 global attention), reused head after head. */

typedef struct {
    float *S;
    const float *q; /* this (b, h)'s first query row */
    int64_t q_rs;
    const float *rel_h, *rel_w, *key_bias;
    int Tk, D, gh, gw;
} eng__sm;

static void eng__softmax_rows(void *p, int64_t r0, int64_t r1)
{
    const eng__sm *s = p;
    float rh[128], rw[128]; /* grid sides are <= 64 in SAM; checked by the caller */
    for (int64_t i = r0; i < r1; i++) {
        float *row = s->S + i * s->Tk;
        if (s->rel_h) {
            const float *qi = s->q + i * s->q_rs;
            int qy = (int)(i / s->gw), qx = (int)(i % s->gw);
            for (int ky = 0; ky < s->gh; ky++) {
                const float *r = s->rel_h + (int64_t)(qy - ky + s->gh - 1) * s->D;
                float acc = 0;
                for (int d = 0; d < s->D; d++)
                    acc += qi[d] * r[d];
                rh[ky] = acc;
            }
            for (int kx = 0; kx < s->gw; kx++) {
                const float *r = s->rel_w + (int64_t)(qx - kx + s->gw - 1) * s->D;
                float acc = 0;
                for (int d = 0; d < s->D; d++)
                    acc += qi[d] * r[d];
                rw[kx] = acc;
            }
            for (int ky = 0; ky < s->gh; ky++)
                for (int kx = 0; kx < s->gw; kx++)
                    row[ky * s->gw + kx] += rh[ky] + rw[kx];
        }
        if (s->key_bias)
            for (int j = 0; j < s->Tk; j++)
                row[j] += s->key_bias[j];
        float mx = -INFINITY;
        for (int j = 0; j < s->Tk; j++)
            mx = row[j] > mx ? row[j] : mx;
        float sum = 0;
        for (int j = 0; j < s->Tk; j++) {
            row[j] = expf(row[j] - mx);
            sum += row[j];
        }
        float inv = 1.0f / sum;
        for (int j = 0; j < s->Tk; j++)
            row[j] *= inv;
    }
}

static int cpu_attention(eng_backend *be, void *outv, const void *qv, const void *kv,
                         const void *vv, const eng_attn *a, const void *rel_h, const void *rel_w)
{
    eng_cpu *c = (eng_cpu *)be;
    const float *q = qv, *k = kv, *v = vv;
    float *out = outv;
    int64_t HD = (int64_t)a->H * a->D;
    if (a->relpos && (a->relpos->h > 128 || a->relpos->w > 128))
        return eng_error(ENG_EUNSUP, "relative-position grid %dx%d over 128", a->relpos->h,
                         a->relpos->w);
    float *S = cpu_scratch(c, (size_t)a->Tq * a->Tk);
    if (!S)
        return ENG_ENOMEM;
    for (int b = 0; b < a->B; b++) {
        for (int h = 0; h < a->H; h++) {
            const float *qb = q + (int64_t)b * a->Tq * a->q_rs + (int64_t)h * a->D;
            const float *kb = k + (int64_t)b * a->Tk * a->kv_rs + (int64_t)h * a->D;
            const float *vb = v + (int64_t)b * a->Tk * a->kv_rs + (int64_t)h * a->D;
            float *ob = out + (int64_t)b * a->Tq * HD + (int64_t)h * a->D;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, a->Tq, a->Tk, a->D, a->scale,
                        qb, (int)a->q_rs, kb, (int)a->kv_rs, 0.0f, S, a->Tk);
            eng__sm s = {S,
                         qb,
                         a->q_rs,
                         rel_h,
                         rel_w,
                         a->key_bias ? (const float *)a->key_bias->data + (int64_t)b * a->Tk
                                     : NULL,
                         a->Tk,
                         a->D,
                         a->relpos ? a->relpos->h : 0,
                         a->relpos ? a->relpos->w : 0};
            eng_parallel_for(a->Tq, 32, eng__softmax_rows, &s);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, a->Tq, a->D, a->Tk, 1.0f, S,
                        a->Tk, vb, (int)a->kv_rs, 0.0f, ob, (int)HD);
        }
    }
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
        float *buf = cpu_scratch(c, (size_t)(P * K));
        if (!buf)
            return ENG_ENOMEM;
        eng__im2col m = {buf, x, x_chw, Cin, H, W, kh, kw, stride, pad, OW};
        eng_parallel_for(P, 16, eng__im2col_rows, &m);
        col = buf;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)P, Cout, (int)K, 1.0f, col, (int)K,
                w, (int)K, 0.0f, y, Cout);
    if (b) {
        eng__epi e = {y, b, NULL, Cout, ENG_ACT_NONE};
        eng_parallel_for(P, 64, eng__epi_rows, &e);
    }
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
    float *t = cpu_scratch(c, (size_t)(P * Cout * 4));
    if (!t)
        return ENG_ENOMEM;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)P, Cout * 4, Cin, 1.0f, x, Cin, w,
                Cout * 4, 0.0f, t, Cout * 4);
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

static void eng__resize_rows(void *p, int64_t r0, int64_t r1)
{
    const eng__rs *s = p;
    for (int64_t r = r0; r < r1; r++) {
        int c = (int)(r / s->rows), oy = (int)(r % s->rows), y0, y1;
        float ly;
        eng__src_index(s->crop_h, s->OH, s->y0 + oy, &y0, &y1, &ly);
        const float *row0 = s->x + ((int64_t)c * s->H + y0) * s->W;
        const float *row1 = s->x + ((int64_t)c * s->H + y1) * s->W;
        float *dst = s->y + ((int64_t)c * s->rows + oy) * s->OW;
        for (int ox = 0; ox < s->OW; ox++) {
            float lx = s->lx[ox];
            int a = s->x0[ox], b = s->x1[ox];
            float top = (1.0f - lx) * row0[a] + lx * row0[b];
            float bot = (1.0f - lx) * row1[a] + lx * row1[b];
            dst[ox] = (1.0f - ly) * top + ly * bot;
        }
    }
}

static int cpu_resize_bilinear(eng_backend *be, void *y, const void *x, int C, int H, int W,
                               int crop_h, int crop_w, int OH, int OW, int y0, int rows)
{
    int *xi = malloc(sizeof(int) * 2 * (size_t)OW);
    float *lx = malloc(sizeof(float) * (size_t)OW);
    if (!xi || !lx) {
        free(xi);
        free(lx);
        return eng_error(ENG_ENOMEM, "resize: out of memory");
    }
    for (int o = 0; o < OW; o++)
        eng__src_index(crop_w, OW, o, &xi[o], &xi[OW + o], &lx[o]);
    eng__rs s = {y, x, H, W, crop_h, crop_w, OH, OW, y0, rows, xi, xi + OW, lx};
    eng_parallel_for((int64_t)C * rows, 16, eng__resize_rows, &s);
    free(xi);
    free(lx);
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
    if (threads > 0) {
        eng_parallel_set_threads(threads);
        openblas_set_num_threads(threads);
    }
    snprintf(c->base.desc, sizeof c->base.desc, "cpu (fp32, OpenBLAS, %d threads)",
             eng_parallel_threads());
    *out = &c->base;
    return 0;
}

#ifndef ENG_HAVE_CUDA
int eng_backend_cuda_create(eng_backend **out, int device_index, eng_dtype dtype)
{
    *out = NULL;
    return eng_error(ENG_EUNSUP, "this build has no CUDA backend (rebuild where nvcc is found)");
}
#endif
