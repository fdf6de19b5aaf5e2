/*
 * engine/cuda/cuda_internal.cuh: what the CUDA backend's files share (private
 * to engine/cuda/). The backend object, the check macros, the storage-type
 * helpers and the launchers each op file provides.
 *
 * Storage: every tensor the backend holds is in its storage dtype `T`
 * (float, __half or __nv_bfloat16, chosen at create); kernels read T,
 * compute in fp32 and write T. Launchers take raw device pointers and the
 * backend's dtype and dispatch on it at run time.
 *
 * Rules that hold across the files:
 *  - Every kernel runs on the backend's one stream `cu->stream`.
 *  - Every CUDA / cuBLAS call goes through ENG_CU_CHECK / ENG_BLAS_CHECK,
 *    and every launch is followed by ENG_CU_LAUNCH_CHECK: a failure records
 *    "file:line: call: reason" with eng_error() and returns an ENG_E* code.
 *  - Nothing allocates device memory per request: scratch (im2col columns,
 *    the generic attention's score matrix, conv-transpose products) comes
 *    from eng_cuda_scratch(), which grows only when a larger size is first
 *    asked for.
 */
#ifndef TASAM_ENGINE_CUDA_INTERNAL_CUH
#define TASAM_ENGINE_CUDA_INTERNAL_CUH

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

extern "C" {
#include "engine/backend.h"
#include "engine/error.h"
}

/* ---- the backend object ---- */

typedef struct eng_cuda_gemm_plan eng_cuda_gemm_plan;   /* gemm.cu: cached cuBLASLt plans */
typedef struct eng_cuda_gemm_class eng_cuda_gemm_class; /* gemm.cu: an algorithm per class */

typedef struct eng_cuda_alloc {
    void *p;
    size_t bytes;
} eng_cuda_alloc;

typedef struct eng_cuda_prof_entry {
    char name[64];
    double ms;       /* calls after the first */
    long calls;      /* after the first */
    double first_ms; /* the first call: one-time costs (tuning, JIT, scratch) land there */
} eng_cuda_prof_entry;

/* Which of our own kernels run (TASAM_CUDA_KERNELS): the native ones for the
 * device, or the sm_75 (T4) set built from compute_75 PTX, on any GPU. */
typedef enum eng_cu_kernels { ENG_CU_KERNELS_NATIVE = 0, ENG_CU_KERNELS_SM75 = 1 } eng_cu_kernels;

#define ENG_CU_GRAPHS 64 /* executable graphs kept (graph.cu) */

/* One recorded stretch of work (graph.cu). */
typedef struct eng_cuda_graph {
    uint64_t skey; /* hash of the caller's shape bytes */
    uint64_t pkey; /* hash of the buffers it was recorded with */
    uint64_t tick; /* last use */
    unsigned gen;  /* scratch generation it was recorded under */
    cudaGraphExec_t exec;
} eng_cuda_graph;

typedef struct eng_cuda {
    eng_backend base;
    int device; /* CUDA ordinal */
    int cc;     /* compute capability, 10 * major + minor */
    int sm_count;
    size_t total_mem;    /* device total */
    cudaStream_t stream; /* every op runs here */
    cublasLtHandle_t lt;
    cublasHandle_t blas; /* fallback GEMMs and the generic attention's batched GEMMs */
    void *lt_ws;         /* cuBLASLt workspace */
    size_t lt_ws_bytes;
    void *scratch; /* grown on first use, see eng_cuda_scratch */
    size_t scratch_bytes;
    unsigned scratch_gen; /* bumped when scratch moves: graphs recorded before are stale */
    float *h_stage;       /* pinned host staging for upload/download, stage_n floats */
    float *d_stage;       /* device f32 staging, stage_n floats */
    size_t stage_n;
    cudaEvent_t stage_ev[2]; /* last transfer through each half of the stage */
    eng_cuda_alloc *allocs;  /* live alloc() results, for free() accounting */
    int n_allocs, cap_allocs;
    size_t used;               /* bytes handed out by alloc() */
    eng_cuda_gemm_plan *plans; /* gemm.cu's plan cache (owned) */
    int n_plans, cap_plans;
    eng_cuda_gemm_class *classes; /* gemm.cu's tuned algorithm per class (owned) */
    int n_classes, cap_classes;
    void *tune_buf; /* GEMM autotuning output, ENG_CU_TUNE bytes, allocated at create */
    size_t tune_bytes;
    cudaEvent_t tune_ev[2];
    int tuning;          /* 1: a GEMM class first met is timed (eng_backend_set_tuning) */
    int no_tune;         /* TASAM_CUDA_NO_TUNE: never time, take the heuristic's first */
    long gemm_tuned;     /* classes timed */
    long gemm_untuned;   /* classes first met with tuning off (the request path) */
    long gemm_fallbacks; /* plans cuBLASLt had no algorithm for (cublasGemmEx + epilogue) */
    int capturing;       /* a CUDA graph capture is open on `stream` (graph.cu) */
    int cap_failed;      /* something in the open capture could not be recorded */
    uint64_t cap_skey, cap_pkey;
    int graphs_on; /* TASAM_CUDA_GRAPHS=1 */
    eng_cuda_graph graphs[ENG_CU_GRAPHS];
    int n_graphs;
    uint64_t graph_tick;
    long graph_replays, graph_captures, graph_updates, graph_failures;
    eng_cu_kernels kernels; /* TASAM_CUDA_KERNELS=native|sm75 */
    int no_flash;           /* TASAM_CUDA_NO_FLASH: the generic attention everywhere */
    int no_split;           /* TASAM_CUDA_NO_SPLIT: no key-range split in flash attention */
    int emulate_smem;       /* TASAM_CUDA_EMULATE_SMEM: sm_75 kernels see this many shared
                               bytes per SM (occupancy emulation; 0: off) */
    struct {
        const void *fn;
        int smem, pad;
    } occ[32]; /* attention_sm75.cu: occupancy padding per kernel and size */
    int n_occ;
    int profile; /* TASAM_CUDA_PROFILE=1: time each op (synchronising) */
    cudaEvent_t ev0, ev1;
    eng_cuda_prof_entry *prof;
    int n_prof;
} eng_cuda;

/* ---- error checks ---- */

int eng_cuda_fail(cudaError_t e, const char *call, const char *file, int line);
int eng_blas_fail(int status, const char *call, const char *file, int line);

#define ENG_CU_CHECK(call)                                                                         \
    do {                                                                                           \
        cudaError_t e_ = (call);                                                                   \
        if (e_ != cudaSuccess)                                                                     \
            return eng_cuda_fail(e_, #call, __FILE__, __LINE__);                                   \
    } while (0)

#define ENG_CU_LAUNCH_CHECK() ENG_CU_CHECK(cudaGetLastError())

#define ENG_BLAS_CHECK(call)                                                                       \
    do {                                                                                           \
        int s_ = (int)(call);                                                                      \
        if (s_ != 0)                                                                               \
            return eng_blas_fail(s_, #call, __FILE__, __LINE__);                                   \
    } while (0)

/* Run a call returning an ENG_E* code; return it on failure. */
#define ENG_TRY(call)                                                                              \
    do {                                                                                           \
        int r_ = (call);                                                                           \
        if (r_)                                                                                    \
            return r_;                                                                             \
    } while (0)

/* Scratch of at least `bytes` (256-byte aligned), NULL + error on failure.
 * Invalidates pointers from earlier calls when it grows (and graphs recorded
 * before: scratch_gen); it cannot grow inside a graph capture (the capture
 * fails, see graph.cu). */
void *eng_cuda_scratch(eng_cuda *cu, size_t bytes);

/* ---- storage types ---- */

__device__ __forceinline__ float eng_to_f(float x) { return x; }
__device__ __forceinline__ float eng_to_f(__half x) { return __half2float(x); }
__device__ __forceinline__ float eng_to_f(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T eng_from_f(float x);
template <> __device__ __forceinline__ float eng_from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __half eng_from_f<__half>(float x)
{
    return __float2half_rn(x);
}
template <> __device__ __forceinline__ __nv_bfloat16 eng_from_f<__nv_bfloat16>(float x)
{
    return __float2bfloat16_rn(x);
}

__device__ __forceinline__ float eng_gelu(float x)
{
    return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
}

__device__ __forceinline__ float eng_apply_act(float x, int act)
{
    if (act == ENG_ACT_GELU)
        return eng_gelu(x);
    if (act == ENG_ACT_RELU)
        return x > 0.0f ? x : 0.0f;
    return x;
}

/* Run `body` with `T` bound to the storage type of `dt`. */
#define ENG_CU_DISPATCH(dt, T, ...)                                                                \
    do {                                                                                           \
        switch (dt) {                                                                              \
        case ENG_F32: {                                                                            \
            typedef float T;                                                                       \
            __VA_ARGS__;                                                                           \
        } break;                                                                                   \
        case ENG_F16: {                                                                            \
            typedef __half T;                                                                      \
            __VA_ARGS__;                                                                           \
        } break;                                                                                   \
        case ENG_BF16: {                                                                           \
            typedef __nv_bfloat16 T;                                                               \
            __VA_ARGS__;                                                                           \
        } break;                                                                                   \
        default:                                                                                   \
            return eng_error(ENG_EUNSUP, "cuda: storage dtype %d", (int)(dt));                     \
        }                                                                                          \
    } while (0)

static inline unsigned eng_cu_blocks(int64_t n, int threads)
{
    int64_t b = (n + threads - 1) / threads;
    return (unsigned)(b < 1 ? 1 : (b > 1048576 ? 1048576 : b));
}

/* ---- launchers (one file per op family) ---- */

/* elementwise.cu */
int eng_cuda_convert_from_f32(eng_cuda *cu, void *dst, const float *src, int64_t n);
int eng_cuda_convert_to_f32(eng_cuda *cu, float *dst, const void *src, int64_t n);
int eng_cuda_activate(eng_backend *be, void *y, const void *x, int64_t n, eng_act act);
int eng_cuda_add(eng_backend *be, void *y, const void *a, const void *b, int64_t n, int64_t bn);
int eng_cuda_copy(eng_backend *be, void *y, const void *x, int64_t n);
int eng_cuda_transpose(eng_backend *be, void *y, const void *x, int M, int N);
/* y[M,N] = act(y + b[n / group]) (+ res): the fallback GEMM epilogue. */
int eng_cuda_epilogue(eng_cuda *cu, void *y, const void *b, int group, const void *res, int M,
                      int N, eng_act act);

/* gemm.cu */
int eng_cuda_linear(eng_backend *be, void *y, const void *x, int64_t ldx, const void *w,
                    const void *b, const void *res, int M, int K, int N, eng_act act);
int eng_cuda_matmul_nn(eng_backend *be, void *y, const void *x, const void *w, const void *b, int M,
                       int K, int N, int group);
void eng_cuda_gemm_plans_free(eng_cuda *cu);

/* graph.cu: eng_backend_graph_begin / _end (ops.h) */
int eng_cuda_graph_begin(eng_backend *be, const void *shape, size_t shape_len, const void *bufs,
                         size_t bufs_len);
int eng_cuda_graph_end(eng_backend *be, int keep);
int eng_cuda_graphs_on(const eng_backend *be);
void eng_cuda_graphs_free(eng_cuda *cu);

/* layernorm.cu */
int eng_cuda_layernorm(eng_backend *be, void *y, const void *x, const void *res, const void *g,
                       const void *b, int M, int N, float eps);

/* attention.cu */
int eng_cuda_attention(eng_backend *be, void *out, const void *q, const void *k, const void *v,
                       const eng_attn *a, const void *rel_h, const void *rel_w);

/* conv.cu */
int eng_cuda_conv2d(eng_backend *be, void *y, const void *x, int x_chw, int Cin, int H, int W,
                    const void *w, const void *b, int Cout, int kh, int kw, int stride, int pad);
int eng_cuda_conv_transpose2x2(eng_backend *be, void *y, const void *x, int H, int W, int Cin,
                               const void *w, const void *b, int Cout);
int eng_cuda_conv_transpose2x2_norm_act(eng_backend *be, void *y, const void *x, int H, int W,
                                        int Cin, const void *w, const void *b, int Cout,
                                        const void *g, const void *beta, float eps, eng_act act);

/* windows.cu */
int eng_cuda_window_partition(eng_backend *be, void *y, const void *x, int H, int W, int C, int ws);
int eng_cuda_window_unpartition_add(eng_backend *be, void *y, const void *x, int H, int W, int C,
                                    int ws);

/* resize.cu */
int eng_cuda_resize_bilinear(eng_backend *be, void *y, const void *x, int C, int H, int W,
                             int crop_h, int crop_w, int OH, int OW, int y0, int rows);
/* binarize.cu: masks and stability counts straight to host memory (backend.h). */
int eng_cuda_binarize(eng_backend *be, uint8_t *dst, const void *x, int64_t n, float lo, float hi,
                      uint64_t counts[2]);

#endif
