/* engine/ops.c: context, tensor helpers and the checked op wrappers. */
#include "ops.h"

#include <assert.h>
#include <stdio.h>
#include <string.h>

#include "backend.h"
#include "error.h"

/* Workspace tensors start on 256-byte boundaries: what vectorised CPU loops
 * and CUDA's widest loads want. */
#define ENG_ALIGN 256

void eng_backend_destroy(eng_backend *be)
{
    if (be)
        be->ops->destroy(be);
}
eng_device eng_backend_device(const eng_backend *be) { return be->dev; }
eng_dtype eng_backend_dtype(const eng_backend *be) { return be->dtype; }
const char *eng_backend_describe(const eng_backend *be) { return be->desc; }
void eng_backend_memory(const eng_backend *be, size_t *used, size_t *total)
{
    be->ops->memory(be, used, total);
}
void *eng_backend_alloc(eng_backend *be, size_t bytes) { return be->ops->alloc(be, bytes); }
void eng_backend_free(eng_backend *be, void *p)
{
    if (p)
        be->ops->free(be, p);
}
int eng_backend_upload(eng_backend *be, void *dst, const float *src, size_t n)
{
    return be->ops->upload(be, dst, src, n);
}
int eng_backend_download(eng_backend *be, float *dst, const void *src, size_t n)
{
    return be->ops->download(be, dst, src, n);
}
int eng_backend_sync(eng_backend *be) { return be->ops->sync(be); }

void eng_backend_set_tuning(eng_backend *be, int on)
{
    if (be->ops->set_tuning)
        be->ops->set_tuning(be, on);
}

int eng_backend_graphs_on(const eng_backend *be)
{
    return be->ops->graphs_on ? be->ops->graphs_on(be) : 0;
}

int eng_backend_graph_begin(eng_backend *be, const void *shape, size_t shape_len, const void *bufs,
                            size_t bufs_len)
{
    return be->ops->graph_begin ? be->ops->graph_begin(be, shape, shape_len, bufs, bufs_len)
                                : ENG_GRAPH_EAGER;
}

int eng_backend_graph_end(eng_backend *be, int keep)
{
    return be->ops->graph_end ? be->ops->graph_end(be, keep) : (keep ? 0 : ENG_GRAPH_REDO);
}

int eng_backend_binarize(eng_backend *be, uint8_t *dst, const void *x, int64_t n, float lo,
                         float hi, uint64_t counts[2])
{
    return be->ops->binarize(be, dst, x, n, lo, hi, counts);
}

int eng_ctx_init(eng_ctx *ctx, eng_backend *be, size_t bytes)
{
    memset(ctx, 0, sizeof *ctx);
    ctx->be = be;
    if (bytes == 0) {
        ctx->measure = 1;
        return 0;
    }
    ctx->base = eng_backend_alloc(be, bytes);
    if (!ctx->base) {
        char why[512]; /* the backend's reason (free and total device memory) */
        snprintf(why, sizeof why, "%s", eng_last_error());
        return eng_error(ENG_ENOMEM, "cannot allocate a %zu MiB workspace on %s: %s", bytes >> 20,
                         be->desc, why);
    }
    ctx->cap = bytes;
    return 0;
}

int eng_ctx_commit(eng_ctx *ctx)
{
    assert(ctx->measure);
    if (ctx->status)
        return ctx->status;
    return eng_ctx_init(ctx, ctx->be, ctx->peak ? ctx->peak : ENG_ALIGN);
}

void eng_ctx_free(eng_ctx *ctx)
{
    if (ctx->base)
        eng_backend_free(ctx->be, ctx->base);
    ctx->base = NULL;
    ctx->cap = ctx->off = 0;
}

int eng_ctx_fail(eng_ctx *ctx, int code)
{
    if (!ctx->status)
        ctx->status = code;
    return ctx->status;
}

int64_t eng_numel(const eng_tensor *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++)
        n *= t->shape[i];
    return n;
}

size_t eng_nbytes(const eng_tensor *t) { return (size_t)eng_numel(t) * eng_dtype_size(t->dtype); }

static void eng__contig_strides(eng_tensor *t)
{
    int64_t s = 1;
    for (int i = t->ndim - 1; i >= 0; i--) {
        t->stride[i] = s;
        s *= t->shape[i];
    }
}

eng_tensor eng_view(void *data, eng_dtype dt, eng_device dev, int ndim, const int64_t *shape)
{
    eng_tensor t;
    memset(&t, 0, sizeof t);
    assert(ndim >= 1 && ndim <= ENG_MAX_DIMS);
    t.dtype = dt;
    t.dev = dev;
    t.ndim = ndim;
    for (int i = 0; i < ndim; i++)
        t.shape[i] = shape[i];
    eng__contig_strides(&t);
    t.data = data;
    return t;
}

eng_tensor eng_new(eng_ctx *ctx, int ndim, const int64_t *shape)
{
    eng_tensor t = eng_view(NULL, ctx->be->dtype, ctx->be->dev, ndim, shape);
    size_t bytes = (eng_nbytes(&t) + ENG_ALIGN - 1) & ~(size_t)(ENG_ALIGN - 1);
    if (ctx->measure) {
        ctx->off += bytes;
    } else if (ctx->status || ctx->off + bytes > ctx->cap) {
        if (!ctx->status)
            eng_ctx_fail(ctx, eng_error(ENG_ENOMEM,
                                        "workspace exhausted: %zu of %zu bytes in use, %zu more "
                                        "asked (larger batch than planned?)",
                                        ctx->off, ctx->cap, bytes));
        return t;
    } else {
        t.data = ctx->base + ctx->off;
        ctx->off += bytes;
    }
    if (ctx->off > ctx->peak)
        ctx->peak = ctx->off;
    return t;
}

eng_tensor eng_new1(eng_ctx *ctx, int64_t a) { return eng_new(ctx, 1, (int64_t[]){a}); }
eng_tensor eng_new2(eng_ctx *ctx, int64_t a, int64_t b)
{
    return eng_new(ctx, 2, (int64_t[]){a, b});
}
eng_tensor eng_new3(eng_ctx *ctx, int64_t a, int64_t b, int64_t c)
{
    return eng_new(ctx, 3, (int64_t[]){a, b, c});
}
eng_tensor eng_new4(eng_ctx *ctx, int64_t a, int64_t b, int64_t c, int64_t d)
{
    return eng_new(ctx, 4, (int64_t[]){a, b, c, d});
}

eng_tensor eng_reshape2(eng_tensor t, int64_t a, int64_t b)
{
    assert(a * b == eng_numel(&t));
    return eng_view(t.data, t.dtype, t.dev, 2, (int64_t[]){a, b});
}

eng_tensor eng_reshape3(eng_tensor t, int64_t a, int64_t b, int64_t c)
{
    assert(a * b * c == eng_numel(&t));
    return eng_view(t.data, t.dtype, t.dev, 3, (int64_t[]){a, b, c});
}

eng_tensor eng_rows(eng_tensor t, int64_t r0, int64_t n)
{
    assert(t.ndim == 2 && r0 >= 0 && r0 + n <= t.shape[0]);
    eng_tensor r = t;
    r.shape[0] = n;
    if (t.data)
        r.data = (uint8_t *)t.data + (size_t)(r0 * t.stride[0]) * eng_dtype_size(t.dtype);
    return r;
}

/* ---- wrappers ---- */

/* Skip when measuring or after an error; record a backend failure. */
#define ENG__RUN(ctx, call)                                                                        \
    do {                                                                                           \
        if ((ctx)->measure || (ctx)->status)                                                       \
            return;                                                                                \
        int rc_ = (call);                                                                          \
        if (rc_)                                                                                   \
            eng_ctx_fail((ctx), rc_);                                                              \
    } while (0)

#define ENG__DATA(t) ((t) ? (t)->data : NULL)

static int64_t eng__cols(const eng_tensor *t) { return t->shape[t->ndim - 1]; }
static int64_t eng__rows(const eng_tensor *t) { return eng_numel(t) / eng__cols(t); }

void eng_linear(eng_ctx *ctx, eng_tensor *y, const eng_tensor *x, const eng_tensor *w,
                const eng_tensor *b, eng_act act, const eng_tensor *res)
{
    int64_t M = eng__rows(x), K = eng__cols(x), N = w->shape[0];
    assert(w->ndim == 2 && w->shape[1] == K);
    assert(eng__rows(y) == M && eng__cols(y) == N);
    assert(!b || eng_numel(b) == N);
    assert(!res || eng_numel(res) == M * N);
    /* A 2-D x may be a strided row view (rows of a fused buffer). */
    int64_t ldx = x->ndim == 2 ? x->stride[0] : K;
    ENG__RUN(ctx, ctx->be->ops->linear(ctx->be, y->data, x->data, ldx, w->data, ENG__DATA(b),
                                       ENG__DATA(res), (int)M, (int)K, (int)N, act));
}

void eng_matmul_nn(eng_ctx *ctx, eng_tensor *y, const eng_tensor *x, const eng_tensor *w,
                   const eng_tensor *b, int group)
{
    int64_t M = eng__rows(x), K = eng__cols(x), N = eng_numel(w) / K;
    assert(w->shape[0] == K && eng_numel(y) == M * N && group >= 1 && N % group == 0);
    assert(!b || eng_numel(b) == N / group);
    ENG__RUN(ctx, ctx->be->ops->matmul_nn(ctx->be, y->data, x->data, w->data, ENG__DATA(b), (int)M,
                                          (int)K, (int)N, group));
}

void eng_layernorm(eng_ctx *ctx, eng_tensor *y, const eng_tensor *x, const eng_tensor *res,
                   const eng_tensor *g, const eng_tensor *b, float eps)
{
    int64_t M = eng__rows(x), N = eng__cols(x);
    assert(eng_numel(y) == M * N && eng_numel(g) == N && eng_numel(b) == N);
    assert(!res || eng_numel(res) == M * N);
    ENG__RUN(ctx, ctx->be->ops->layernorm(ctx->be, y->data, x->data, ENG__DATA(res), g->data,
                                          b->data, (int)M, (int)N, eps));
}

void eng_activate(eng_ctx *ctx, eng_tensor *y, const eng_tensor *x, eng_act act)
{
    assert(eng_numel(y) == eng_numel(x));
    ENG__RUN(ctx, ctx->be->ops->activate(ctx->be, y->data, x->data, eng_numel(x), act));
}

void eng_add(eng_ctx *ctx, eng_tensor *y, const eng_tensor *a, const eng_tensor *b)
{
    int64_t n = eng_numel(a), bn = eng_numel(b);
    assert(eng_numel(y) == n && bn > 0 && n % bn == 0);
    ENG__RUN(ctx, ctx->be->ops->add(ctx->be, y->data, a->data, b->data, n, bn));
}

void eng_copy(eng_ctx *ctx, eng_tensor *y, const eng_tensor *x)
{
    assert(eng_numel(y) == eng_numel(x));
    ENG__RUN(ctx, ctx->be->ops->copy(ctx->be, y->data, x->data, eng_numel(x)));
}

void eng_transpose(eng_ctx *ctx, eng_tensor *y, const eng_tensor *x)
{
    int64_t M = eng__rows(x), N = eng__cols(x);
    assert(eng_numel(y) == M * N);
    ENG__RUN(ctx, ctx->be->ops->transpose(ctx->be, y->data, x->data, (int)M, (int)N));
}

void eng_attention(eng_ctx *ctx, eng_tensor *out, const eng_tensor *q, const eng_tensor *k,
                   const eng_tensor *v, const eng_attn *a)
{
    assert(eng_numel(out) == (int64_t)a->B * a->Tq * a->H * a->D);
    assert(!a->relpos || (a->Tq == a->Tk && a->relpos->h * a->relpos->w == a->Tq &&
                          a->relpos->rel_h->shape[1] == a->D &&
                          a->relpos->rel_h->shape[0] == 2 * a->relpos->h - 1 &&
                          a->relpos->rel_w->shape[0] == 2 * a->relpos->w - 1));
    assert(!a->key_bias || eng_numel(a->key_bias) == (int64_t)a->B * a->Tk);
    (void)k;
    eng_attn d = *a;
    if (!d.q_rs)
        d.q_rs = (int64_t)a->H * a->D;
    if (!d.kv_rs)
        d.kv_rs = (int64_t)a->H * a->D;
    ENG__RUN(ctx, ctx->be->ops->attention(ctx->be, out->data, q->data, k->data, v->data, &d,
                                          a->relpos ? a->relpos->rel_h->data : NULL,
                                          a->relpos ? a->relpos->rel_w->data : NULL));
}

void eng_conv2d(eng_ctx *ctx, eng_tensor *y, const eng_tensor *x, int x_chw, int H, int W,
                const eng_tensor *w, const eng_tensor *b, int stride, int pad)
{
    assert(w->ndim == 4);
    int Cout = (int)w->shape[0], Cin = (int)w->shape[1], kh = (int)w->shape[2],
        kw = (int)w->shape[3];
    int OH = (H + 2 * pad - kh) / stride + 1, OW = (W + 2 * pad - kw) / stride + 1;
    assert(eng_numel(x) == (int64_t)Cin * H * W);
    assert(eng_numel(y) == (int64_t)OH * OW * Cout);
    assert(!b || eng_numel(b) == Cout);
    ENG__RUN(ctx, ctx->be->ops->conv2d(ctx->be, y->data, x->data, x_chw, Cin, H, W, w->data,
                                       ENG__DATA(b), Cout, kh, kw, stride, pad));
}

void eng_conv_transpose2x2(eng_ctx *ctx, eng_tensor *y, const eng_tensor *x, int H, int W,
                           const eng_tensor *w, const eng_tensor *b)
{
    int Cin = (int)w->shape[0], Cout = (int)w->shape[1];
    assert(w->ndim == 4 && w->shape[2] == 2 && w->shape[3] == 2);
    assert(eng_numel(x) == (int64_t)H * W * Cin && eng_numel(y) == (int64_t)4 * H * W * Cout);
    ENG__RUN(ctx, ctx->be->ops->conv_transpose2x2(ctx->be, y->data, x->data, H, W, Cin, w->data,
                                                  ENG__DATA(b), Cout));
}

void eng_conv_transpose2x2_norm_act(eng_ctx *ctx, eng_tensor *y, const eng_tensor *x, int H, int W,
                                    const eng_tensor *w, const eng_tensor *b,
                                    const eng_tensor *norm_g, const eng_tensor *norm_b, float eps,
                                    eng_act act)
{
    int Cin = (int)w->shape[0], Cout = (int)w->shape[1];
    assert(w->ndim == 4 && w->shape[2] == 2 && w->shape[3] == 2);
    assert(eng_numel(x) == (int64_t)H * W * Cin && eng_numel(y) == (int64_t)4 * H * W * Cout);
    assert(!norm_g == !norm_b);
    assert(!norm_g || (eng_numel(norm_g) == Cout && eng_numel(norm_b) == Cout));
    if (!ctx->be->ops->conv_transpose2x2_norm_act) {
        eng_conv_transpose2x2(ctx, y, x, H, W, w, b);
        eng_tensor rows = eng_reshape2(*y, (int64_t)4 * H * W, Cout);
        if (norm_g)
            eng_layernorm(ctx, &rows, &rows, NULL, norm_g, norm_b, eps);
        if (act != ENG_ACT_NONE)
            eng_activate(ctx, &rows, &rows, act);
        return;
    }
    ENG__RUN(ctx, ctx->be->ops->conv_transpose2x2_norm_act(
                      ctx->be, y->data, x->data, H, W, Cin, w->data, ENG__DATA(b), Cout,
                      ENG__DATA(norm_g), ENG__DATA(norm_b), eps, act));
}

void eng_window_partition(eng_ctx *ctx, eng_tensor *y, const eng_tensor *x, int H, int W, int ws)
{
    int C = (int)eng__cols(x);
    int Hp = (H + ws - 1) / ws * ws, Wp = (W + ws - 1) / ws * ws;
    assert(eng__rows(x) == (int64_t)H * W && eng_numel(y) == (int64_t)Hp * Wp * C);
    ENG__RUN(ctx, ctx->be->ops->window_partition(ctx->be, y->data, x->data, H, W, C, ws));
}

void eng_window_unpartition_add(eng_ctx *ctx, eng_tensor *y, const eng_tensor *x, int H, int W,
                                int ws)
{
    int C = (int)eng__cols(y);
    int Hp = (H + ws - 1) / ws * ws, Wp = (W + ws - 1) / ws * ws;
    assert(eng__rows(y) == (int64_t)H * W && eng_numel(x) == (int64_t)Hp * Wp * C);
    ENG__RUN(ctx, ctx->be->ops->window_unpartition_add(ctx->be, y->data, x->data, H, W, C, ws));
}

void eng_resize_bilinear(eng_ctx *ctx, eng_tensor *y, const eng_tensor *x, int crop_h, int crop_w,
                         int OH, int y0)
{
    assert(x->ndim == 3 && y->ndim == 3 && x->shape[0] == y->shape[0]);
    assert(crop_h >= 1 && crop_h <= x->shape[1] && crop_w >= 1 && crop_w <= x->shape[2]);
    assert(y0 >= 0 && y0 + y->shape[1] <= OH);
    ENG__RUN(ctx, ctx->be->ops->resize_bilinear(ctx->be, y->data, x->data, (int)x->shape[0],
                                                (int)x->shape[1], (int)x->shape[2], crop_h, crop_w,
                                                OH, (int)y->shape[2], y0, (int)y->shape[1]));
}

/* ---- backward wrappers ---- */

int eng_backend_has_backward(const eng_backend *be)
{
    const eng_backend_ops *o = be->ops;
    return o->fill && o->linear_backward && o->layernorm_backward && o->activate_backward &&
           o->attention_backward && o->conv_transpose2x2_backward;
}

/* As ENG__RUN for an optional entry: a backend without it fails the op. */
#define ENG__RUN_OPT(ctx, entry, call)                                                             \
    do {                                                                                           \
        if ((ctx)->measure || (ctx)->status)                                                       \
            return;                                                                                \
        if (!(ctx)->be->ops->entry) {                                                              \
            eng_ctx_fail((ctx), eng_error(ENG_EUNSUP,                                              \
                                          "%s has no " #entry                                      \
                                          " (backward ops, for training, run on the CPU "          \
                                          "backend)",                                              \
                                          (ctx)->be->desc));                                       \
            return;                                                                                \
        }                                                                                          \
        int rc_ = (call);                                                                          \
        if (rc_)                                                                                   \
            eng_ctx_fail((ctx), rc_);                                                              \
    } while (0)

void eng_fill(eng_ctx *ctx, eng_tensor *y, float value)
{
    ENG__RUN_OPT(ctx, fill, ctx->be->ops->fill(ctx->be, y->data, eng_numel(y), value));
}

void eng_linear_backward(eng_ctx *ctx, eng_tensor *dx, eng_tensor *dw, eng_tensor *db,
                         const eng_tensor *dy, const eng_tensor *x, const eng_tensor *w, int acc)
{
    int64_t M = eng__rows(dy), N = eng__cols(dy), K = w->shape[w->ndim - 1];
    assert(w->ndim == 2 && w->shape[0] == N);
    assert(!dx || (eng__rows(dx) == M && eng__cols(dx) == K));
    assert(!dx || !dx->data || dx->data != dy->data);
    assert(!dw || (x && eng__rows(x) == M && eng__cols(x) == K && eng_numel(dw) == N * K));
    assert(!db || eng_numel(db) == N);
    int64_t ldx = x ? (x->ndim == 2 ? x->stride[0] : K) : K;
    ENG__RUN_OPT(ctx, linear_backward,
                 ctx->be->ops->linear_backward(ctx->be, ENG__DATA(dx), ENG__DATA(dw), ENG__DATA(db),
                                               dy->data, ENG__DATA(x), ldx, w->data, (int)M, (int)K,
                                               (int)N, acc));
}

void eng_layernorm_backward(eng_ctx *ctx, eng_tensor *dx, eng_tensor *dg, eng_tensor *db,
                            const eng_tensor *dy, const eng_tensor *x, const eng_tensor *g,
                            float eps, int acc)
{
    int64_t M = eng__rows(x), N = eng__cols(x);
    assert(eng_numel(dy) == M * N && eng_numel(g) == N);
    assert(!dx || eng_numel(dx) == M * N);
    assert(!dx || !acc || !dx->data || dx->data != dy->data);
    assert(!dg || eng_numel(dg) == N);
    assert(!db || eng_numel(db) == N);
    ENG__RUN_OPT(ctx, layernorm_backward,
                 ctx->be->ops->layernorm_backward(ctx->be, ENG__DATA(dx), ENG__DATA(dg),
                                                  ENG__DATA(db), dy->data, x->data, g->data, (int)M,
                                                  (int)N, eps, acc));
}

void eng_activate_backward(eng_ctx *ctx, eng_tensor *dx, const eng_tensor *dy, const eng_tensor *x,
                           eng_act act)
{
    assert(eng_numel(dx) == eng_numel(x) && eng_numel(dy) == eng_numel(x));
    ENG__RUN_OPT(
        ctx, activate_backward,
        ctx->be->ops->activate_backward(ctx->be, dx->data, dy->data, x->data, eng_numel(x), act));
}

void eng_attention_backward(eng_ctx *ctx, eng_tensor *dq, eng_tensor *dk, eng_tensor *dv,
                            const eng_tensor *dout, const eng_tensor *q, const eng_tensor *k,
                            const eng_tensor *v, const eng_attn *a)
{
    int64_t nq = (int64_t)a->B * a->Tq * a->H * a->D, nk = (int64_t)a->B * a->Tk * a->H * a->D;
    assert(eng_numel(dout) == nq && eng_numel(dq) == nq);
    assert(eng_numel(dk) == nk && eng_numel(dv) == nk);
    assert(!a->key_bias || eng_numel(a->key_bias) == (int64_t)a->B * a->Tk);
    if (a->relpos && !ctx->measure && !ctx->status) {
        eng_ctx_fail(ctx, eng_error(ENG_EUNSUP, "attention backward: no relative-position bias"));
        return;
    }
    eng_attn d = *a;
    if (!d.q_rs)
        d.q_rs = (int64_t)a->H * a->D;
    if (!d.kv_rs)
        d.kv_rs = (int64_t)a->H * a->D;
    ENG__RUN_OPT(ctx, attention_backward,
                 ctx->be->ops->attention_backward(ctx->be, dq->data, dk->data, dv->data, dout->data,
                                                  q->data, k->data, v->data, &d));
}

void eng_conv_transpose2x2_backward(eng_ctx *ctx, eng_tensor *dx, eng_tensor *dw, eng_tensor *db,
                                    const eng_tensor *dy, const eng_tensor *x, int H, int W,
                                    const eng_tensor *w, int acc)
{
    int Cin = (int)w->shape[0], Cout = (int)w->shape[1];
    assert(w->ndim == 4 && w->shape[2] == 2 && w->shape[3] == 2);
    assert(eng_numel(dy) == (int64_t)4 * H * W * Cout);
    assert(!dx || eng_numel(dx) == (int64_t)H * W * Cin);
    assert(!dw || (x && eng_numel(x) == (int64_t)H * W * Cin && eng_numel(dw) == eng_numel(w)));
    assert(!db || eng_numel(db) == Cout);
    ENG__RUN_OPT(ctx, conv_transpose2x2_backward,
                 ctx->be->ops->conv_transpose2x2_backward(ctx->be, ENG__DATA(dx), ENG__DATA(dw),
                                                          ENG__DATA(db), dy->data, ENG__DATA(x), H,
                                                          W, Cin, w->data, Cout, acc));
}
