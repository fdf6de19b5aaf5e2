/*
 * engine/ops.h: tensors, the compute context and the op interface.
 *
 * The SAM model, the text encoder and the hypernetwork are written once
 * against these ops; a backend (CPU: fp32 + OpenBLAS; CUDA: fp16/bf16
 * storage, fp32 accumulation) implements them. Model code never branches on
 * the backend.
 *
 * Memory: weights live in one backend allocation made at load time.
 * Activations come from the context's workspace, a bump allocator whose size
 * is planned by running the forward once in "measure" mode (shapes are
 * checked, bytes counted, no kernel runs), then allocated once. A forward
 * pass takes a mark before it starts and releases it at the end, so nothing
 * is allocated per request.
 *
 * Errors are sticky: an op that cannot run (workspace exhausted, a device
 * failure) records the first error in the context and every later op is a
 * no-op; the caller checks eng_ctx_status() once at the end. Shape mismatches
 * between operands are programmer errors and assert.
 *
 * Layout conventions (row-major, last index fastest):
 *   "rows" tensors are [M, N]: M tokens/pixels of N features. Images inside
 *   the model are HWC ([H*W, C]) unless a name says CHW.
 */
#ifndef TASAM_ENGINE_OPS_H
#define TASAM_ENGINE_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "dtype.h"

#define ENG_MAX_DIMS 4

typedef enum eng_device { ENG_DEV_CPU = 0, ENG_DEV_CUDA = 1 } eng_device;

/* A view of memory on one device. Tensors made by the context or the weight
 * loader are contiguous; `stride` is in elements. The descriptor does not own
 * its memory. */
typedef struct eng_tensor {
    eng_dtype dtype;
    eng_device dev;
    int ndim;
    int64_t shape[ENG_MAX_DIMS];
    int64_t stride[ENG_MAX_DIMS];
    void *data;
} eng_tensor;

typedef struct eng_backend eng_backend;

/* Activation functions fused into linear/conv epilogues. */
typedef enum eng_act { ENG_ACT_NONE = 0, ENG_ACT_GELU, ENG_ACT_RELU } eng_act;

typedef struct eng_ctx {
    eng_backend *be; /* borrowed; runs the ops */
    uint8_t *base;   /* workspace on the backend's device (NULL in measure mode) */
    size_t cap;      /* workspace bytes */
    size_t off;      /* bump offset */
    size_t peak;     /* high-water mark of off */
    int measure;     /* 1: count bytes and check shapes, run nothing */
    int status;      /* first error (ENG_E*), 0 while all is well */
} eng_ctx;

/* ---- backends ---- */

/* The CPU backend (fp32, OpenBLAS). `threads` <= 0 means all cores. */
int eng_backend_cpu_create(eng_backend **out, int threads);
/* How long the CPU backend's idle threads (and a caller waiting for them)
 * spin before they sleep, in microseconds: spinning spans the short serial
 * gaps between the parallel loops of one request, each of which would
 * otherwise wake the threads through the kernel (100 us or more from an
 * idle core), at the cost of that much CPU time after each request. 0
 * sleeps at once, for machines whose cores are busy with other work.
 * Default ENG_CPU_SPIN_US_DEFAULT; any time, from any thread. */
#define ENG_CPU_SPIN_US_DEFAULT 500
void eng_cpu_set_spin_us(int us);
/* The CUDA backend on `device_index`, storage `dtype` (ENG_F32, ENG_F16 or
 * ENG_BF16; ENG_BF16 needs sm_80+). ENG_EUNSUP when built without CUDA,
 * ENG_EDEVICE with a clear message when no usable GPU/driver is present. */
int eng_backend_cuda_create(eng_backend **out, int device_index, eng_dtype dtype);
/* TFLOP/s of the sm_75 kernels' tensor-core instruction (mma.sync m16n8k8,
 * f16 in, fp32 accumulate) from registers at full occupancy on be's GPU,
 * compute_75 code as those kernels are built: the denominator of their
 * efficiency in the T4 estimate (bench_gpu --peaks). ENG_EUNSUP without a
 * CUDA backend. */
int eng_backend_cuda_sm75_peak(eng_backend *be, double *tflops);
/* The plan backend: no device and no memory, it only counts. It presents
 * itself as a CUDA device in `dtype` with the CUDA backend's fixed buffers;
 * allocations return addresses never to be dereferenced, ops succeed doing
 * nothing, and eng_backend_memory reports the bytes a CUDA backend would
 * hold for the same calls (its scratch as the generic attention, the sm_75
 * default, would take it). A model loaded on it is planned exactly as on a
 * GPU (bench/memplan). */
int eng_backend_plan_create(eng_backend **out, eng_dtype dtype);
/* A plan backend's bytes: live allocations (weights, resident embeddings,
 * workspace, ...), the scratch its ops would grow, and the fixed buffers
 * (all 0 for another backend). */
void eng_backend_plan_bytes(const eng_backend *be, size_t *allocs, size_t *scratch, size_t *fixed);
void eng_backend_destroy(eng_backend *be);

eng_device eng_backend_device(const eng_backend *be);
eng_dtype eng_backend_dtype(const eng_backend *be);
/* "cpu (fp32, OpenBLAS, 2 threads)", "cuda:0 NVIDIA H100 (bf16)" ... */
const char *eng_backend_describe(const eng_backend *be);
/* Bytes of device memory in use by this backend's allocations, and the
 * device's total (0 when unknown). */
void eng_backend_memory(const eng_backend *be, size_t *used, size_t *total);

/* Device memory, `bytes` of it (NULL + error on failure). */
void *eng_backend_alloc(eng_backend *be, size_t bytes);
void eng_backend_free(eng_backend *be, void *p);
/* Convert n f32 host values into device storage at dst / back. */
int eng_backend_upload(eng_backend *be, void *dst, const float *src, size_t n);
int eng_backend_download(eng_backend *be, float *dst, const void *src, size_t n);
/* Masks from the logits at device memory x (n values, storage dtype) into
 * host dst (0/1), with counts[0] = |x > hi| and counts[1] = |x > lo|: on a GPU
 * only the bytes of the mask cross the bus. Waits for queued work. */
int eng_backend_binarize(eng_backend *be, uint8_t *dst, const void *x, int64_t n, float lo,
                         float hi, uint64_t counts[2]);
/* Wait for queued work; returns the first asynchronous error. */
int eng_backend_sync(eng_backend *be);
/* 1 when the backend implements every backward op below (the CPU backend;
 * the CUDA backend has none yet). */
int eng_backend_has_backward(const eng_backend *be);

/* ---- optional backend controls (no-ops where a backend has none) ---- */

/* GEMM algorithm tuning: the CUDA backend times cuBLASLt's candidates the
 * first time it meets a shape class. On at create; a model turns it off once
 * it has run every shape it will use (eng_sam_load warms up), so no request
 * waits for it: a class first met later takes the heuristic's choice. */
void eng_backend_set_tuning(eng_backend *be, int on);

/* Graphs of queued device work (CUDA graphs, TASAM_CUDA_GRAPHS=1; off by
 * default until measured): 1 when the backend records them. The caller
 * brackets ops that only queue device work (no upload, download or wait),
 * whose sequence and shapes are fixed by the bytes `shape` and whose buffers
 * by the bytes `bufs`:
 *
 *   int r = eng_backend_graph_begin(be, &shape, sizeof shape, &bufs, sizeof bufs);
 *   if (r != ENG_GRAPH_REPLAYED) {
 *       ...ops...
 *       if (r == ENG_GRAPH_CAPTURE &&
 *           eng_backend_graph_end(be, eng_ctx_status(ctx) == 0) == ENG_GRAPH_REDO)
 *           ...clear the context's error and run the same ops again (eagerly)...
 *   }
 *
 * The first time a shape is met the ops are recorded (not run) and
 * eng_backend_graph_end queues the recording (keep = 0 discards it: an op
 * failed); later the recording is queued at once (same bufs) or refreshed
 * with the new buffers (other bufs). Buffers are referenced, not copied:
 * what they hold when the queued work runs is what it reads. A negative
 * return is an error. */
#define ENG_GRAPH_EAGER    0 /* run the ops: no graph here */
#define ENG_GRAPH_REPLAYED 1 /* queued from a recording: skip the ops */
#define ENG_GRAPH_CAPTURE  2 /* run the ops (recorded), then eng_backend_graph_end */
#define ENG_GRAPH_REDO     3 /* graph_end: nothing was recorded or queued, run the ops again */
int eng_backend_graphs_on(const eng_backend *be);
int eng_backend_graph_begin(eng_backend *be, const void *shape, size_t shape_len, const void *bufs,
                            size_t bufs_len);
int eng_backend_graph_end(eng_backend *be, int keep);

/* ---- context and tensors ---- */

/* A context over `be` whose workspace is `bytes` (0: measure mode). */
int eng_ctx_init(eng_ctx *ctx, eng_backend *be, size_t bytes);
/* Switch a measure-mode context to a real workspace of its peak size. */
int eng_ctx_commit(eng_ctx *ctx);
void eng_ctx_free(eng_ctx *ctx);
static inline size_t eng_ctx_mark(const eng_ctx *ctx) { return ctx->off; }
static inline void eng_ctx_release(eng_ctx *ctx, size_t mark) { ctx->off = mark; }
static inline int eng_ctx_status(const eng_ctx *ctx) { return ctx->status; }
/* Record an error (first one wins) and return it. */
int eng_ctx_fail(eng_ctx *ctx, int code);

/* A new contiguous activation tensor from the workspace, in the backend's
 * storage dtype. Shape given as ndim sizes. */
eng_tensor eng_new(eng_ctx *ctx, int ndim, const int64_t *shape);
eng_tensor eng_new1(eng_ctx *ctx, int64_t a);
eng_tensor eng_new2(eng_ctx *ctx, int64_t a, int64_t b);
eng_tensor eng_new3(eng_ctx *ctx, int64_t a, int64_t b, int64_t c);
eng_tensor eng_new4(eng_ctx *ctx, int64_t a, int64_t b, int64_t c, int64_t d);
/* Describe existing memory `data` as a contiguous tensor. */
eng_tensor eng_view(void *data, eng_dtype dt, eng_device dev, int ndim, const int64_t *shape);
/* The same memory with another contiguous shape of equal element count. */
eng_tensor eng_reshape2(eng_tensor t, int64_t a, int64_t b);
eng_tensor eng_reshape3(eng_tensor t, int64_t a, int64_t b, int64_t c);
/* Rows [r0, r0+n) of a 2-D tensor (contiguous). */
eng_tensor eng_rows(eng_tensor t, int64_t r0, int64_t n);
int64_t eng_numel(const eng_tensor *t);
size_t eng_nbytes(const eng_tensor *t);

/* ---- ops ----
 * Outputs first, then inputs, then weights, then options. Output tensors are
 * preallocated by the caller with the stated shapes. In-place is allowed
 * where an op says so. */

/* y[M,N] = act(x[M,K] . w[N,K]^T + b[N]) + res[M,N]. b and res may be NULL.
 * y may alias res. `w` may be an activation (e.g. masks = tokens . pixels^T). */
void eng_linear(eng_ctx *ctx, eng_tensor *y, const eng_tensor *x, const eng_tensor *w,
                const eng_tensor *b, eng_act act, const eng_tensor *res);

/* y[M,N] = x[M,K] . w[K,N] (w not transposed) + b broadcast per column
 * group: b has N/group entries, b[n / group] is added (group >= 1). Used for
 * 2x2 transposed convolutions whose weight [Cin, Cout*4] has 4 columns per
 * output channel. */
void eng_matmul_nn(eng_ctx *ctx, eng_tensor *y, const eng_tensor *x, const eng_tensor *w,
                   const eng_tensor *b, int group);

/* LayerNorm over the last dim: y[M,N] = (x - mean) / sqrt(var + eps) * g + b.
 * In-place allowed. Optional residual: x is first replaced by x + res when
 * res != NULL (y = LN(x + res)). */
void eng_layernorm(eng_ctx *ctx, eng_tensor *y, const eng_tensor *x, const eng_tensor *res,
                   const eng_tensor *g, const eng_tensor *b, float eps);

/* Elementwise y = act(x) over all elements (in-place allowed). */
void eng_activate(eng_ctx *ctx, eng_tensor *y, const eng_tensor *x, eng_act act);
/* y = a + b, same shapes; or b is a row vector [N] broadcast over rows of
 * a [M,N]. In-place allowed. */
void eng_add(eng_ctx *ctx, eng_tensor *y, const eng_tensor *a, const eng_tensor *b);
/* y = x (same element count; layouts must both be contiguous). */
void eng_copy(eng_ctx *ctx, eng_tensor *y, const eng_tensor *x);
/* y[N,M] = x[M,N]^T. */
void eng_transpose(eng_ctx *ctx, eng_tensor *y, const eng_tensor *x);

/* Decomposed relative-position bias (SAM's add_decomposed_rel_pos), for
 * queries laid out on a qh x qw grid and keys on a kh x kw grid:
 *   bias(i, j) = q_i . rel_h[qy(i) - ky(j) + kh - 1] + q_i . rel_w[qx(i) - kx(j) + kw - 1]
 * with the *unscaled* query. rel_h [2*kh-1, D], rel_w [2*kw-1, D]; the
 * current checkpoints never need interpolation (qh == kh). */
typedef struct eng_relpos {
    const eng_tensor *rel_h;
    const eng_tensor *rel_w;
    int h, w; /* query and key grid (square attention: q grid == k grid) */
} eng_relpos;

/* Multi-head attention. q [B, Tq, H*D], k and v [B, Tk, H*D] may be views
 * with a row stride (e.g. into a fused qkv buffer [B, T, 3*H*D]): `q_rs`,
 * `kv_rs` are the element strides between consecutive tokens (0 = H*D).
 * out [B, Tq, H*D] contiguous.  scores = (q . k^T) * scale (+ relpos bias)
 * (+ key_bias[b, j], an additive mask [B, Tk] of 0 or large negative, may be
 * NULL); softmax over keys; out = p . v. */
typedef struct eng_attn {
    int B, H, Tq, Tk, D;
    int64_t q_rs, kv_rs;
    float scale;
    const eng_relpos *relpos;   /* NULL: no bias */
    const eng_tensor *key_bias; /* NULL: no mask */
} eng_attn;
void eng_attention(eng_ctx *ctx, eng_tensor *out, const eng_tensor *q, const eng_tensor *k,
                   const eng_tensor *v, const eng_attn *a);

/* Convolution as GEMM. x: image of Cin channels, H x W, layout HWC
 * ([H*W, Cin]) or CHW ([Cin, H, W], `x_chw`); w [Cout, Cin, kh, kw];
 * b [Cout] or NULL. y [OH*OW, Cout] (HWC) with OH = (H + 2p - kh)/s + 1.
 * Zero padding p on all sides. */
void eng_conv2d(eng_ctx *ctx, eng_tensor *y, const eng_tensor *x, int x_chw, int H, int W,
                const eng_tensor *w, const eng_tensor *b, int stride, int pad);

/* 2x2 stride-2 transposed convolution, HWC in and out: x [H*W, Cin],
 * w [Cin, Cout, 2, 2], b [Cout] or NULL, y [(2H)*(2W), Cout]. */
void eng_conv_transpose2x2(eng_ctx *ctx, eng_tensor *y, const eng_tensor *x, int H, int W,
                           const eng_tensor *w, const eng_tensor *b);

/* The mask decoder's upscaling step: y = act(LN(conv_transpose2x2(x, w) + b))
 * with the same shapes as eng_conv_transpose2x2, and a LayerNorm over each
 * output pixel's Cout channels (norm_g, norm_b [Cout]; both NULL: none), in
 * one pass over y where the backend fuses it (CUDA), else as those ops. */
void eng_conv_transpose2x2_norm_act(eng_ctx *ctx, eng_tensor *y, const eng_tensor *x, int H, int W,
                                    const eng_tensor *w, const eng_tensor *b,
                                    const eng_tensor *norm_g, const eng_tensor *norm_b, float eps,
                                    eng_act act);

/* Windows of a HWC image x [H*W, C]: zero-pad bottom/right to a multiple of
 * ws, then y [nWin, ws*ws, C] in row-major window order. */
void eng_window_partition(eng_ctx *ctx, eng_tensor *y, const eng_tensor *x, int H, int W, int ws);
/* Inverse (dropping the padding), accumulated: y[H*W, C] += unpartition(x). */
void eng_window_unpartition_add(eng_ctx *ctx, eng_tensor *y, const eng_tensor *x, int H, int W,
                                int ws);

/* Bilinear resize with align_corners=False (PyTorch F.interpolate, no
 * antialias) of a CHW stack x [C, H, W] to a full result of OH x OW, of which
 * y [C, rows, OW] receives rows [y0, y0 + rows) (banding keeps the
 * workspace small for large originals). Only the top-left crop_h x crop_w of
 * x is read and scaled (crop = H, W for no crop), as SAM's postprocess does
 * after its first upscale. */
void eng_resize_bilinear(eng_ctx *ctx, eng_tensor *y, const eng_tensor *x, int crop_h, int crop_w,
                         int OH, int y0);

/* ---- backward ops (training) ----
 * Gradients of the ops above, for training the LoRA-adapted mask decoder
 * (engine/sam_train.h). Conventions, as in llm.c: an activation gradient
 * dx is written, or added into dx when `acc` is 1; a parameter gradient
 * (dw, dg, db) is always added, so a trainer zeroes it (eng_fill) once per
 * step. Any gradient output may be NULL when not wanted. A backend without
 * backward ops (eng_backend_has_backward() == 0) fails them with ENG_EUNSUP
 * and a message naming the op. */

/* y[:] = value. */
void eng_fill(eng_ctx *ctx, eng_tensor *y, float value);

/* Of y[M,N] = x[M,K] . w[N,K]^T + b (eng_linear without act or residual:
 * those have their own backward): dx[M,K] = dy . w, dw[N,K] += dy^T . x,
 * db[N] += sum over rows of dy. x may be a strided 2-D row view; it is read
 * only for dw. dx must not alias dy. */
void eng_linear_backward(eng_ctx *ctx, eng_tensor *dx, eng_tensor *dw, eng_tensor *db,
                         const eng_tensor *dy, const eng_tensor *x, const eng_tensor *w, int acc);

/* Of y = LayerNorm(x) g + b over the last dim (x: the normalised input,
 * after any residual was added; dx then also is the residual's gradient):
 * dx[M,N], dg[N] += sum dy * xhat, db[N] += sum dy. dx may alias dy when
 * acc is 0. */
void eng_layernorm_backward(eng_ctx *ctx, eng_tensor *dx, eng_tensor *dg, eng_tensor *db,
                            const eng_tensor *dy, const eng_tensor *x, const eng_tensor *g,
                            float eps, int acc);

/* Of y = act(x) elementwise: dx = dy * act'(x), x the input (for ReLU the
 * output serves too: both are > 0 at the same places). dx may alias dy. */
void eng_activate_backward(eng_ctx *ctx, eng_tensor *dx, const eng_tensor *dy, const eng_tensor *x,
                           eng_act act);

/* Of eng_attention with the same q, k, v and descriptor (key_bias allowed;
 * relative-position bias not supported: ENG_EUNSUP): dq [B, Tq, H*D] and
 * dk, dv [B, Tk, H*D], contiguous, written (never accumulated). The
 * softmax is recomputed from q and k rather than stored. */
void eng_attention_backward(eng_ctx *ctx, eng_tensor *dq, eng_tensor *dk, eng_tensor *dv,
                            const eng_tensor *dout, const eng_tensor *q, const eng_tensor *k,
                            const eng_tensor *v, const eng_attn *a);

/* Of eng_conv_transpose2x2 (x [H*W, Cin], w [Cin, Cout, 2, 2]):
 * dx [H*W, Cin], dw [Cin, Cout, 2, 2] +=, db [Cout] +=. */
void eng_conv_transpose2x2_backward(eng_ctx *ctx, eng_tensor *dx, eng_tensor *dw, eng_tensor *db,
                                    const eng_tensor *dy, const eng_tensor *x, int H, int W,
                                    const eng_tensor *w, int acc);

#endif
