/*
 * engine/plan.c: the plan backend. It holds no memory and computes nothing:
 * alloc hands out distinct, 256-byte aligned addresses that are never
 * dereferenced and counts their bytes; every op succeeds at once. It
 * presents itself as a CUDA device with the CUDA backend's fixed buffers
 * (ENG_CUDA_*_BYTES), and its ops count the scratch the CUDA backend's would
 * grow to: im2col columns, transposed-convolution products, and the generic
 * attention's score matrices (the path sm_75 takes by default; the flash
 * kernels need far less). Keep those three in step with engine/cuda/.
 *
 * So eng_sam_load on it plans a model exactly as on a GPU (weights, resident
 * embeddings, the workspace from measure mode, the warm-up's scratch) without
 * one: bench/memplan prints the device memory a configuration needs.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "error.h"

#define PLAN_BASE  ((uintptr_t)1 << 40) /* first fake address */
#define PLAN_ALIGN 256

typedef struct plan_alloc {
    uintptr_t p;
    size_t bytes;
} plan_alloc;

typedef struct eng_plan {
    eng_backend base;
    uintptr_t next;   /* next fake address */
    size_t used;      /* bytes of live allocations */
    size_t scratch;   /* largest scratch an op asked for, rounded as the CUDA backend does */
    plan_alloc *live; /* live allocations */
    int n_live, cap_live;
} eng_plan;

static void *plan_alloc_fn(eng_backend *be, size_t bytes)
{
    eng_plan *pl = (eng_plan *)be;
    if (pl->n_live == pl->cap_live) {
        int cap = pl->cap_live ? 2 * pl->cap_live : 64;
        plan_alloc *l = realloc(pl->live, (size_t)cap * sizeof *l);
        if (!l) {
            eng_error(ENG_ENOMEM, "plan: out of host memory");
            return NULL;
        }
        pl->live = l;
        pl->cap_live = cap;
    }
    uintptr_t p = pl->next;
    pl->next += (bytes + PLAN_ALIGN - 1) / PLAN_ALIGN * PLAN_ALIGN + PLAN_ALIGN;
    pl->live[pl->n_live].p = p;
    pl->live[pl->n_live].bytes = bytes;
    pl->n_live++;
    pl->used += bytes;
    return (void *)p;
}

static void plan_free_fn(eng_backend *be, void *p)
{
    eng_plan *pl = (eng_plan *)be;
    for (int i = 0; i < pl->n_live; i++)
        if (pl->live[i].p == (uintptr_t)p) {
            pl->used -= pl->live[i].bytes;
            pl->live[i] = pl->live[--pl->n_live];
            return;
        }
}

static int plan_upload(eng_backend *be, void *dst, const float *src, size_t n) { return 0; }
static int plan_download(eng_backend *be, float *dst, const void *src, size_t n) { return 0; }
static int plan_sync(eng_backend *be) { return 0; }

static void plan_destroy(eng_backend *be)
{
    eng_plan *pl = (eng_plan *)be;
    if (!pl)
        return;
    free(pl->live);
    free(pl);
}

static void plan_memory(const eng_backend *be, size_t *used, size_t *total)
{
    const eng_plan *pl = (const eng_plan *)be;
    if (used)
        *used = pl->used + pl->scratch + ENG_CUDA_LT_WS_BYTES + ENG_CUDA_TUNE_BYTES +
                ENG_CUDA_STAGE_FLOATS * sizeof(float);
    if (total)
        *total = 0;
}

static void plan_scratch(eng_backend *be, size_t bytes)
{
    eng_plan *pl = (eng_plan *)be;
    bytes = (bytes + ((size_t)1 << 20) - 1) & ~(((size_t)1 << 20) - 1);
    if (bytes > pl->scratch)
        pl->scratch = bytes;
}

static size_t plan_es(const eng_backend *be) { return be->dtype == ENG_F32 ? 4 : 2; }

static int plan_linear(eng_backend *be, void *y, const void *x, int64_t ldx, const void *w,
                       const void *b, const void *res, int M, int K, int N, eng_act act)
{
    return 0;
}
static int plan_matmul_nn(eng_backend *be, void *y, const void *x, const void *w, const void *b,
                          int M, int K, int N, int group)
{
    return 0;
}
static int plan_layernorm(eng_backend *be, void *y, const void *x, const void *res, const void *g,
                          const void *b, int M, int N, float eps)
{
    return 0;
}
static int plan_activate(eng_backend *be, void *y, const void *x, int64_t n, eng_act act)
{
    return 0;
}
static int plan_add(eng_backend *be, void *y, const void *a, const void *b, int64_t n, int64_t bn)
{
    return 0;
}
static int plan_copy(eng_backend *be, void *y, const void *x, int64_t n) { return 0; }
static int plan_transpose(eng_backend *be, void *y, const void *x, int M, int N) { return 0; }

/* engine/cuda/attention.cu, generic path: S [B, Tq, Tk] f32 (256-aligned),
 * then P in the storage type. */
static int plan_attention(eng_backend *be, void *out, const void *q, const void *k, const void *v,
                          const eng_attn *a, const void *rel_h, const void *rel_w)
{
    size_t per = (size_t)a->B * a->Tq * a->Tk;
    plan_scratch(be, ((per * 4 + 255) & ~(size_t)255) + per * plan_es(be));
    return 0;
}

/* engine/cuda/conv.cu: im2col columns [OH*OW, Cin*kh*kw] unless a 1x1
 * stride-1 unpadded HWC convolution (a linear). */
static int plan_conv2d(eng_backend *be, void *y, const void *x, int x_chw, int Cin, int H, int W,
                       const void *w, const void *b, int Cout, int kh, int kw, int stride, int pad)
{
    if (kh == 1 && kw == 1 && stride == 1 && pad == 0 && !x_chw)
        return 0;
    size_t OH = (size_t)((H + 2 * pad - kh) / stride + 1),
           OW = (size_t)((W + 2 * pad - kw) / stride + 1);
    plan_scratch(be, OH * OW * (size_t)Cin * kh * kw * plan_es(be));
    return 0;
}

/* engine/cuda/conv.cu: the product t [H*W, Cout*4] */
static int plan_conv_transpose2x2(eng_backend *be, void *y, const void *x, int H, int W, int Cin,
                                  const void *w, const void *b, int Cout)
{
    plan_scratch(be, (size_t)H * W * Cout * 4 * plan_es(be));
    return 0;
}

static int plan_window_partition(eng_backend *be, void *y, const void *x, int H, int W, int C,
                                 int ws)
{
    return 0;
}
static int plan_window_unpartition_add(eng_backend *be, void *y, const void *x, int H, int W, int C,
                                       int ws)
{
    return 0;
}
static int plan_resize_bilinear(eng_backend *be, void *y, const void *x, int C, int H, int W,
                                int crop_h, int crop_w, int OH, int OW, int y0, int rows)
{
    return 0;
}
static int plan_binarize(eng_backend *be, uint8_t *dst, const void *x, int64_t n, float lo,
                         float hi, uint64_t counts[2])
{
    memset(dst, 0, (size_t)n);
    counts[0] = counts[1] = 0;
    return 0;
}

static const eng_backend_ops eng__plan_ops = {
    .alloc = plan_alloc_fn,
    .free = plan_free_fn,
    .upload = plan_upload,
    .download = plan_download,
    .sync = plan_sync,
    .destroy = plan_destroy,
    .memory = plan_memory,
    .linear = plan_linear,
    .matmul_nn = plan_matmul_nn,
    .layernorm = plan_layernorm,
    .activate = plan_activate,
    .add = plan_add,
    .copy = plan_copy,
    .transpose = plan_transpose,
    .attention = plan_attention,
    .conv2d = plan_conv2d,
    .conv_transpose2x2 = plan_conv_transpose2x2,
    .window_partition = plan_window_partition,
    .window_unpartition_add = plan_window_unpartition_add,
    .resize_bilinear = plan_resize_bilinear,
    .binarize = plan_binarize,
};

void eng_backend_plan_bytes(const eng_backend *be, size_t *allocs, size_t *scratch, size_t *fixed)
{
    const eng_plan *pl = be->ops == &eng__plan_ops ? (const eng_plan *)be : NULL;
    if (allocs)
        *allocs = pl ? pl->used : 0;
    if (scratch)
        *scratch = pl ? pl->scratch : 0;
    if (fixed)
        *fixed =
            pl ? ENG_CUDA_LT_WS_BYTES + ENG_CUDA_TUNE_BYTES + ENG_CUDA_STAGE_FLOATS * sizeof(float)
               : 0;
}

int eng_backend_plan_create(eng_backend **out, eng_dtype dtype)
{
    *out = NULL;
    if (dtype != ENG_F32 && dtype != ENG_F16 && dtype != ENG_BF16)
        return eng_error(ENG_EINVAL, "plan: storage dtype %s is not f32, f16 or bf16",
                         eng_dtype_name(dtype));
    eng_plan *pl = calloc(1, sizeof *pl);
    if (!pl)
        return eng_error(ENG_ENOMEM, "out of memory");
    pl->base.ops = &eng__plan_ops;
    pl->base.dev = ENG_DEV_CUDA;
    pl->base.dtype = dtype;
    pl->next = PLAN_BASE;
    snprintf(pl->base.desc, sizeof pl->base.desc, "plan (%s; sizes only, no device)",
             dtype == ENG_BF16 ? "bf16" : (dtype == ENG_F16 ? "fp16" : "fp32"));
    *out = &pl->base;
    return 0;
}

#ifndef ENG_HAVE_CUDA
/* CUDA=0 builds: no CUDA backend to measure. */
int eng_backend_cuda_sm75_peak(eng_backend *be, double *tflops)
{
    *tflops = 0;
    return eng_error(ENG_EUNSUP, "this build has no CUDA backend");
}
#endif
