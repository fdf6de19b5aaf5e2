/*
 * engine/backend.h: the function table a backend implements (private to
 * engine/). The op wrappers in ops.c check shapes, honour measure mode and
 * the sticky error, then call these with raw device pointers and sizes.
 * Every entry is required unless marked optional. Pointers are device
 * memory in the backend's storage dtype. Return 0 or a negative ENG_E*.
 * The backward entries at the end are optional (training); a backend
 * without them leaves them NULL and the op wrappers fail with ENG_EUNSUP.
 */
#ifndef TASAM_ENGINE_BACKEND_H
#define TASAM_ENGINE_BACKEND_H

#include "ops.h"

typedef struct eng_backend_ops {
    void *(*alloc)(eng_backend *be, size_t bytes);
    void (*free)(eng_backend *be, void *p);
    int (*upload)(eng_backend *be, void *dst, const float *src, size_t n);
    int (*download)(eng_backend *be, float *dst, const void *src, size_t n);
    int (*sync)(eng_backend *be);
    void (*destroy)(eng_backend *be);
    void (*memory)(const eng_backend *be, size_t *used, size_t *total);

    /* y[M,N] = act(x[M,K] w[N,K]^T + b) + res; x rows at stride ldx. */
    int (*linear)(eng_backend *be, void *y, const void *x, int64_t ldx, const void *w,
                  const void *b, const void *res, int M, int K, int N, eng_act act);
    /* y[M,N] = x[M,K] w[K,N] + b[n / group]. */
    int (*matmul_nn)(eng_backend *be, void *y, const void *x, const void *w, const void *b, int M,
                     int K, int N, int group);
    int (*layernorm)(eng_backend *be, void *y, const void *x, const void *res, const void *g,
                     const void *b, int M, int N, float eps);
    int (*activate)(eng_backend *be, void *y, const void *x, int64_t n, eng_act act);
    /* y = a + b; b has n elements, or bn < n elements broadcast (n % bn == 0). */
    int (*add)(eng_backend *be, void *y, const void *a, const void *b, int64_t n, int64_t bn);
    int (*copy)(eng_backend *be, void *y, const void *x, int64_t n);
    int (*transpose)(eng_backend *be, void *y, const void *x, int M, int N);
    int (*attention)(eng_backend *be, void *out, const void *q, const void *k, const void *v,
                     const eng_attn *a, const void *rel_h, const void *rel_w);
    int (*conv2d)(eng_backend *be, void *y, const void *x, int x_chw, int Cin, int H, int W,
                  const void *w, const void *b, int Cout, int kh, int kw, int stride, int pad);
    int (*conv_transpose2x2)(eng_backend *be, void *y, const void *x, int H, int W, int Cin,
                             const void *w, const void *b, int Cout);
    int (*window_partition)(eng_backend *be, void *y, const void *x, int H, int W, int C, int ws);
    int (*window_unpartition_add)(eng_backend *be, void *y, const void *x, int H, int W, int C,
                                  int ws);
    /* Output rows [y0, y0 + rows) of the OH x OW result into y [C, rows, OW]. */
    int (*resize_bilinear)(eng_backend *be, void *y, const void *x, int C, int H, int W, int crop_h,
                           int crop_w, int OH, int OW, int y0, int rows);
    /* Masks from logits, written to HOST memory: dst[i] = x[i] > 0 (0/1) for n values,
     * counts[0] = |x > hi|, counts[1] = |x > lo|; synchronises. */
    int (*binarize)(eng_backend *be, uint8_t *dst, const void *x, int64_t n, float lo, float hi,
                    uint64_t counts[2]);

    /* ---- optional: backward ops (training) ----
     * `acc` 1: add the activation gradient dx into dx, 0: overwrite it.
     * Parameter gradients (dw, dg, db) are always added. Any gradient
     * pointer may be NULL when it is not wanted. */
    /* y[0..n) = v. */
    int (*fill)(eng_backend *be, void *y, int64_t n, float v);
    /* Of y[M,N] = x[M,K] w[N,K]^T + b: dx[M,K] = dy w, dw[N,K] += dy^T x
     * (x rows at stride ldx), db[N] += column sums of dy. */
    int (*linear_backward)(eng_backend *be, void *dx, void *dw, void *db, const void *dy,
                           const void *x, int64_t ldx, const void *w, int M, int K, int N, int acc);
    /* Of y[M,N] = LayerNorm(x) g + b (x after any residual): dx, dg[N] += sum dy xhat,
     * db[N] += sum dy. dx may alias dy when acc is 0. */
    int (*layernorm_backward)(eng_backend *be, void *dx, void *dg, void *db, const void *dy,
                              const void *x, const void *g, int M, int N, float eps, int acc);
    /* dx = dy act'(x) over n elements, x the activation's input (ReLU: its output
     * serves as well); dx may alias dy. */
    int (*activate_backward)(eng_backend *be, void *dx, const void *dy, const void *x, int64_t n,
                             eng_act act);
    /* Of eng_attention without relative-position bias: dq [B*Tq, H*D], dk and
     * dv [B*Tk, H*D] contiguous, written; q, k, v as the forward read them
     * (row strides a->q_rs, a->kv_rs); dout [B*Tq, H*D]. */
    int (*attention_backward)(eng_backend *be, void *dq, void *dk, void *dv, const void *dout,
                              const void *q, const void *k, const void *v, const eng_attn *a);
    /* Of eng_conv_transpose2x2: dx [H*W, Cin], dw [Cin, Cout*4] +=, db [Cout] +=. */
    int (*conv_transpose2x2_backward)(eng_backend *be, void *dx, void *dw, void *db, const void *dy,
                                      const void *x, int H, int W, int Cin, const void *w, int Cout,
                                      int acc);

    /* ---- optional: a fused pass, tuning and graphs (NULL: ops.c composes the
     * plain ops, or does nothing) ---- */

    /* y = act(LN(conv_transpose2x2(x) + b)) in one pass over y; g, beta the
     * LayerNorm over each output pixel's Cout channels, or NULL (no norm). */
    int (*conv_transpose2x2_norm_act)(eng_backend *be, void *y, const void *x, int H, int W,
                                      int Cin, const void *w, const void *b, int Cout,
                                      const void *g, const void *beta, float eps, eng_act act);
    /* eng_backend_set_tuning, eng_backend_graphs_on, eng_backend_graph_begin
     * / _end (ops.h) */
    void (*set_tuning)(eng_backend *be, int on);
    int (*graphs_on)(const eng_backend *be);
    int (*graph_begin)(eng_backend *be, const void *shape, size_t shape_len, const void *bufs,
                       size_t bufs_len);
    int (*graph_end)(eng_backend *be, int keep);
} eng_backend_ops;

/* The CUDA backend's fixed buffers, made at create (engine/cuda/backend.cu),
 * which the plan backend (engine/plan.c) counts too. */
#define ENG_CUDA_STAGE_FLOATS ((size_t)2 << 20)  /* f32 staging, device (and pinned host) */
#define ENG_CUDA_LT_WS_BYTES  ((size_t)32 << 20) /* cuBLASLt workspace */
#define ENG_CUDA_TUNE_BYTES   ((size_t)32 << 20) /* GEMM tuning output */

struct eng_backend {
    const eng_backend_ops *ops;
    eng_device dev;
    eng_dtype dtype; /* storage dtype of every tensor this backend holds */
    char desc[160];  /* eng_backend_describe() */
};

#endif
