/*
 * engine/cuda/backend.cu: the CUDA backend object: device selection, memory,
 * host<->device transfers, scratch, the op table and optional per-op timing.
 *
 * Transfers go through a fixed pinned host buffer and a device f32 buffer of
 * ENG_CU_STAGE floats each (allocated at create), in chunks of half of it
 * that alternate between the two halves: the host copies f32 into pinned
 * memory (on the engine's worker pool) while the previous chunk's DMA and
 * on-device conversion to the storage dtype run (the reverse for downloads).
 * An upload returns once its data is in pinned memory; work queued after it
 * on the stream sees it. Nothing here allocates per request.
 *
 * TASAM_CUDA_PROFILE=1 in the environment times every op with events (each
 * op then synchronises) and prints a table per op and shape at destroy,
 * each op's first call left out (it carries tuning, JIT and scratch
 * growth), and the GEMM plan counts (classes timed, fallbacks).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attention.cuh"

extern "C" {
#include "engine/parallel.h"
}

#define ENG_CU_STAGE ENG_CUDA_STAGE_FLOATS /* floats of staging: two 4 MiB halves */
#define ENG_CU_LT_WS ENG_CUDA_LT_WS_BYTES  /* cuBLASLt workspace bytes */
#define ENG_CU_TUNE  ENG_CUDA_TUNE_BYTES   /* GEMM tuning output bytes (gemm.cu) */

// ----------------------------------------------------------------------------
// errors

int eng_cuda_fail(cudaError_t e, const char *call, const char *file, int line)
{
    int code = ENG_EDEVICE;
    if (e == cudaErrorMemoryAllocation)
        code = ENG_ENOMEM;
    eng_error(code, "cuda: %s:%d: %s: %s (%s)", file, line, call, cudaGetErrorString(e),
              cudaGetErrorName(e));
    return code;
}

int eng_blas_fail(int status, const char *call, const char *file, int line)
{
    int code = status == CUBLAS_STATUS_ALLOC_FAILED ? ENG_ENOMEM : ENG_EDEVICE;
    eng_error(code, "cuda: %s:%d: %s: %s (cuBLAS status %d)", file, line, call,
              cublasGetStatusString((cublasStatus_t)status), status);
    return code;
}

// ----------------------------------------------------------------------------
// memory

static void *cu_alloc(eng_backend *be, size_t bytes)
{
    eng_cuda *cu = (eng_cuda *)be;
    if (cu->n_allocs == cu->cap_allocs) {
        int cap = cu->cap_allocs ? 2 * cu->cap_allocs : 64;
        eng_cuda_alloc *a =
            (eng_cuda_alloc *)realloc(cu->allocs, (size_t)cap * sizeof(eng_cuda_alloc));
        if (!a) {
            eng_error(ENG_ENOMEM, "cuda: out of host memory");
            return NULL;
        }
        cu->allocs = a;
        cu->cap_allocs = cap;
    }
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, bytes ? bytes : 1);
    if (e != cudaSuccess) {
        cudaGetLastError(); /* clear the sticky-free error state */
        size_t fr = 0, tot = 0;
        cudaMemGetInfo(&fr, &tot);
        eng_error(ENG_ENOMEM, "cuda: cannot allocate %zu MiB on %s (%zu MiB free of %zu): %s",
                  bytes >> 20, be->desc, fr >> 20, tot >> 20, cudaGetErrorString(e));
        return NULL;
    }
    cu->allocs[cu->n_allocs].p = p;
    cu->allocs[cu->n_allocs].bytes = bytes;
    cu->n_allocs++;
    cu->used += bytes;
    return p;
}

static void cu_free(eng_backend *be, void *p)
{
    eng_cuda *cu = (eng_cuda *)be;
    if (!p)
        return;
    for (int i = 0; i < cu->n_allocs; i++)
        if (cu->allocs[i].p == p) {
            cu->used -= cu->allocs[i].bytes;
            cu->allocs[i] = cu->allocs[--cu->n_allocs];
            break;
        }
    /* the pointer may still be read by queued work: wait for it */
    cudaStreamSynchronize(cu->stream);
    cudaFree(p);
}

void *eng_cuda_scratch(eng_cuda *cu, size_t bytes)
{
    if (bytes <= cu->scratch_bytes)
        return cu->scratch;
    if (cu->capturing) {
        /* freeing the old block would synchronise the capturing stream */
        cu->cap_failed = 1;
        eng_error(ENG_EDEVICE, "cuda: scratch must grow to %zu MiB inside a graph capture",
                  bytes >> 20);
        return NULL;
    }
    cu->scratch_gen++;
    bytes = (bytes + ((size_t)1 << 20) - 1) & ~(((size_t)1 << 20) - 1);
    if (cu->scratch) {
        cudaStreamSynchronize(cu->stream);
        cudaFree(cu->scratch);
        cu->scratch = NULL;
        cu->scratch_bytes = 0;
    }
    cudaError_t e = cudaMalloc(&cu->scratch, bytes);
    if (e != cudaSuccess) {
        cudaGetLastError();
        cu->scratch = NULL;
        size_t fr = 0, tot = 0;
        cudaMemGetInfo(&fr, &tot);
        eng_error(ENG_ENOMEM,
                  "cuda: cannot grow scratch to %zu MiB on %s (%zu MiB free of %zu): %s",
                  bytes >> 20, cu->base.desc, fr >> 20, tot >> 20, cudaGetErrorString(e));
        return NULL;
    }
    cu->scratch_bytes = bytes;
    return cu->scratch;
}

static void cu_memory(const eng_backend *be, size_t *used, size_t *total)
{
    const eng_cuda *cu = (const eng_cuda *)be;
    if (used)
        *used = cu->used + cu->scratch_bytes + cu->lt_ws_bytes + cu->tune_bytes +
                cu->stage_n * sizeof(float);
    if (total)
        *total = cu->total_mem;
}

// ----------------------------------------------------------------------------
// transfers

/* Host copies into / out of the pinned stage use the engine's worker pool:
 * one thread copies about 8 GB/s, under the PCIe rate. */
typedef struct {
    float *dst;
    const float *src;
} eng_cu_copy_job;

static void cu_copy_range(void *arg, int64_t i0, int64_t i1)
{
    const eng_cu_copy_job *j = (const eng_cu_copy_job *)arg;
    memcpy(j->dst + i0, j->src + i0, (size_t)(i1 - i0) * sizeof(float));
}

static void cu_host_copy(float *dst, const float *src, size_t n)
{
    eng_cu_copy_job j = {dst, src};
    eng_parallel_for((int64_t)n, (int64_t)1 << 18, cu_copy_range, &j);
}

/* Chunks of half the stage alternate between its two halves, so the host
 * copy of one chunk overlaps the DMA (and conversion) of the previous. */
static int cu_upload(eng_backend *be, void *dst, const float *src, size_t n)
{
    eng_cuda *cu = (eng_cuda *)be;
    size_t es = be->dtype == ENG_F32 ? 4 : 2, half = cu->stage_n / 2;
    int i = 0;
    for (size_t off = 0; off < n; off += half, i ^= 1) {
        size_t c = n - off < half ? n - off : half;
        float *hs = cu->h_stage + i * half, *ds = cu->d_stage + i * half;
        ENG_CU_CHECK(cudaEventSynchronize(cu->stage_ev[i])); /* the half is free again */
        cu_host_copy(hs, src + off, c);
        if (be->dtype == ENG_F32) {
            ENG_CU_CHECK(cudaMemcpyAsync((char *)dst + off * es, hs, c * sizeof(float),
                                         cudaMemcpyHostToDevice, cu->stream));
        } else {
            ENG_CU_CHECK(
                cudaMemcpyAsync(ds, hs, c * sizeof(float), cudaMemcpyHostToDevice, cu->stream));
            ENG_TRY(eng_cuda_convert_from_f32(cu, (char *)dst + off * es, ds, (int64_t)c));
        }
        ENG_CU_CHECK(cudaEventRecord(cu->stage_ev[i], cu->stream));
    }
    /* the caller may free `src` and reuse nothing of ours: only the pinned
     * halves are still in flight, and later transfers wait on their events */
    return 0;
}

static int cu_download(eng_backend *be, float *dst, const void *src, size_t n)
{
    eng_cuda *cu = (eng_cuda *)be;
    size_t es = be->dtype == ENG_F32 ? 4 : 2, half = cu->stage_n / 2;
    size_t prev_off = 0, prev_c = 0;
    int i = 0;
    for (size_t off = 0; off < n; off += half, i ^= 1) {
        size_t c = n - off < half ? n - off : half;
        float *hs = cu->h_stage + i * half, *ds = cu->d_stage + i * half;
        ENG_CU_CHECK(cudaEventSynchronize(cu->stage_ev[i]));
        if (be->dtype == ENG_F32) {
            ENG_CU_CHECK(cudaMemcpyAsync(hs, (const char *)src + off * es, c * sizeof(float),
                                         cudaMemcpyDeviceToHost, cu->stream));
        } else {
            ENG_TRY(eng_cuda_convert_to_f32(cu, ds, (const char *)src + off * es, (int64_t)c));
            ENG_CU_CHECK(
                cudaMemcpyAsync(hs, ds, c * sizeof(float), cudaMemcpyDeviceToHost, cu->stream));
        }
        ENG_CU_CHECK(cudaEventRecord(cu->stage_ev[i], cu->stream));
        if (prev_c) {
            ENG_CU_CHECK(cudaEventSynchronize(cu->stage_ev[i ^ 1]));
            cu_host_copy(dst + prev_off, cu->h_stage + (i ^ 1) * half, prev_c);
        }
        prev_off = off;
        prev_c = c;
    }
    if (prev_c) {
        ENG_CU_CHECK(cudaEventSynchronize(cu->stage_ev[i ^ 1]));
        cu_host_copy(dst + prev_off, cu->h_stage + (i ^ 1) * half, prev_c);
    }
    return 0;
}

static int cu_sync(eng_backend *be)
{
    eng_cuda *cu = (eng_cuda *)be;
    ENG_CU_CHECK(cudaStreamSynchronize(cu->stream));
    ENG_CU_CHECK(cudaGetLastError());
    return 0;
}

// ----------------------------------------------------------------------------
// per-op timing (TASAM_CUDA_PROFILE=1)

/* An op's time under its name (op and shape); an op's first call is kept
 * apart: it carries the one-time costs (GEMM tuning, JIT, scratch growth). */
static void prof_add(eng_cuda *cu, const char *name, double ms)
{
    for (int i = 0; i < cu->n_prof; i++)
        if (strcmp(cu->prof[i].name, name) == 0) {
            cu->prof[i].ms += ms;
            cu->prof[i].calls++;
            return;
        }
    eng_cuda_prof_entry *p = (eng_cuda_prof_entry *)realloc(
        cu->prof, (size_t)(cu->n_prof + 1) * sizeof(eng_cuda_prof_entry));
    if (!p)
        return;
    cu->prof = p;
    snprintf(p[cu->n_prof].name, sizeof p[cu->n_prof].name, "%s", name);
    p[cu->n_prof].ms = 0;
    p[cu->n_prof].calls = 0;
    p[cu->n_prof].first_ms = ms;
    cu->n_prof++;
}

static int prof_cmp(const void *a, const void *b)
{
    double x = ((const eng_cuda_prof_entry *)a)->ms, y = ((const eng_cuda_prof_entry *)b)->ms;
    return x < y ? 1 : (x > y ? -1 : 0);
}

static void prof_print(eng_cuda *cu)
{
    if (!cu->profile)
        return;
    fprintf(stderr,
            "cuda gemm (%s): %d plans, %d classes, %ld timed, %ld first met with tuning off, "
            "%ld without a cuBLASLt algorithm\n",
            cu->base.desc, cu->n_plans, cu->n_classes, cu->gemm_tuned, cu->gemm_untuned,
            cu->gemm_fallbacks);
    if (!cu->n_prof)
        return;
    qsort(cu->prof, (size_t)cu->n_prof, sizeof(eng_cuda_prof_entry), prof_cmp);
    double total = 0, first = 0;
    for (int i = 0; i < cu->n_prof; i++) {
        total += cu->prof[i].ms;
        first += cu->prof[i].first_ms;
    }
    fprintf(stderr,
            "cuda profile (%s): %.3f ms in ops after each op's first call (first calls: %.3f "
            "ms)\n",
            cu->base.desc, total, first);
    for (int i = 0; i < cu->n_prof; i++)
        fprintf(
            stderr, "  %10.3f ms %7ld calls %8.4f ms/call  %s\n", cu->prof[i].ms, cu->prof[i].calls,
            cu->prof[i].calls ? cu->prof[i].ms / (double)cu->prof[i].calls : 0.0, cu->prof[i].name);
}

#define PROF_BEGIN(cu)                                                                             \
    if ((cu)->profile)                                                                             \
        cudaEventRecord((cu)->ev0, (cu)->stream);
#define PROF_END(cu, rc, ...)                                                                      \
    if ((cu)->profile && !(rc)) {                                                                  \
        char nm_[64];                                                                              \
        float ms_ = 0;                                                                             \
        snprintf(nm_, sizeof nm_, __VA_ARGS__);                                                    \
        cudaEventRecord((cu)->ev1, (cu)->stream);                                                  \
        cudaEventSynchronize((cu)->ev1);                                                           \
        cudaEventElapsedTime(&ms_, (cu)->ev0, (cu)->ev1);                                          \
        prof_add((cu), nm_, ms_);                                                                  \
    }

static int op_linear(eng_backend *be, void *y, const void *x, int64_t ldx, const void *w,
                     const void *b, const void *res, int M, int K, int N, eng_act act)
{
    eng_cuda *cu = (eng_cuda *)be;
    PROF_BEGIN(cu);
    int rc = eng_cuda_linear(be, y, x, ldx, w, b, res, M, K, N, act);
    PROF_END(cu, rc, "linear %dx%dx%d%s%s", M, K, N,
             act == ENG_ACT_GELU ? " gelu" : (act == ENG_ACT_RELU ? " relu" : ""),
             res ? " +res" : "");
    return rc;
}

static int op_matmul_nn(eng_backend *be, void *y, const void *x, const void *w, const void *b,
                        int M, int K, int N, int group)
{
    eng_cuda *cu = (eng_cuda *)be;
    PROF_BEGIN(cu);
    int rc = eng_cuda_matmul_nn(be, y, x, w, b, M, K, N, group);
    PROF_END(cu, rc, "matmul_nn %dx%dx%d", M, K, N);
    return rc;
}

static int op_layernorm(eng_backend *be, void *y, const void *x, const void *res, const void *g,
                        const void *b, int M, int N, float eps)
{
    eng_cuda *cu = (eng_cuda *)be;
    PROF_BEGIN(cu);
    int rc = eng_cuda_layernorm(be, y, x, res, g, b, M, N, eps);
    PROF_END(cu, rc, "layernorm %dx%d", M, N);
    return rc;
}

static int op_activate(eng_backend *be, void *y, const void *x, int64_t n, eng_act act)
{
    eng_cuda *cu = (eng_cuda *)be;
    PROF_BEGIN(cu);
    int rc = eng_cuda_activate(be, y, x, n, act);
    PROF_END(cu, rc, "activate %lld", (long long)n);
    return rc;
}

static int op_add(eng_backend *be, void *y, const void *a, const void *b, int64_t n, int64_t bn)
{
    eng_cuda *cu = (eng_cuda *)be;
    PROF_BEGIN(cu);
    int rc = eng_cuda_add(be, y, a, b, n, bn);
    PROF_END(cu, rc, "add %lld/%lld", (long long)n, (long long)bn);
    return rc;
}

static int op_copy(eng_backend *be, void *y, const void *x, int64_t n)
{
    eng_cuda *cu = (eng_cuda *)be;
    PROF_BEGIN(cu);
    int rc = eng_cuda_copy(be, y, x, n);
    PROF_END(cu, rc, "copy %lld", (long long)n);
    return rc;
}

static int op_transpose(eng_backend *be, void *y, const void *x, int M, int N)
{
    eng_cuda *cu = (eng_cuda *)be;
    PROF_BEGIN(cu);
    int rc = eng_cuda_transpose(be, y, x, M, N);
    PROF_END(cu, rc, "transpose %dx%d", M, N);
    return rc;
}

static int op_attention(eng_backend *be, void *out, const void *q, const void *k, const void *v,
                        const eng_attn *a, const void *rel_h, const void *rel_w)
{
    eng_cuda *cu = (eng_cuda *)be;
    PROF_BEGIN(cu);
    int rc = eng_cuda_attention(be, out, q, k, v, a, rel_h, rel_w);
    PROF_END(cu, rc, "attention B%d H%d %dx%d D%d%s", a->B, a->H, a->Tq, a->Tk, a->D,
             rel_h ? " relpos" : "");
    return rc;
}

static int op_conv2d(eng_backend *be, void *y, const void *x, int x_chw, int Cin, int H, int W,
                     const void *w, const void *b, int Cout, int kh, int kw, int stride, int pad)
{
    eng_cuda *cu = (eng_cuda *)be;
    PROF_BEGIN(cu);
    int rc = eng_cuda_conv2d(be, y, x, x_chw, Cin, H, W, w, b, Cout, kh, kw, stride, pad);
    PROF_END(cu, rc, "conv2d %dx%dx%d k%d s%d -> %d", Cin, H, W, kh, stride, Cout);
    return rc;
}

static int op_conv_transpose2x2(eng_backend *be, void *y, const void *x, int H, int W, int Cin,
                                const void *w, const void *b, int Cout)
{
    eng_cuda *cu = (eng_cuda *)be;
    PROF_BEGIN(cu);
    int rc = eng_cuda_conv_transpose2x2(be, y, x, H, W, Cin, w, b, Cout);
    PROF_END(cu, rc, "conv_transpose2x2 %dx%dx%d -> %d", H, W, Cin, Cout);
    return rc;
}

static int op_window_partition(eng_backend *be, void *y, const void *x, int H, int W, int C, int ws)
{
    eng_cuda *cu = (eng_cuda *)be;
    PROF_BEGIN(cu);
    int rc = eng_cuda_window_partition(be, y, x, H, W, C, ws);
    PROF_END(cu, rc, "window_partition %dx%dx%d", H, W, C);
    return rc;
}

static int op_window_unpartition_add(eng_backend *be, void *y, const void *x, int H, int W, int C,
                                     int ws)
{
    eng_cuda *cu = (eng_cuda *)be;
    PROF_BEGIN(cu);
    int rc = eng_cuda_window_unpartition_add(be, y, x, H, W, C, ws);
    PROF_END(cu, rc, "window_unpartition_add %dx%dx%d", H, W, C);
    return rc;
}

static int op_conv_transpose2x2_norm_act(eng_backend *be, void *y, const void *x, int H, int W,
                                         int Cin, const void *w, const void *b, int Cout,
                                         const void *g, const void *beta, float eps, eng_act act)
{
    eng_cuda *cu = (eng_cuda *)be;
    PROF_BEGIN(cu);
    int rc =
        eng_cuda_conv_transpose2x2_norm_act(be, y, x, H, W, Cin, w, b, Cout, g, beta, eps, act);
    PROF_END(cu, rc, "conv_transpose2x2%s%s %dx%dx%d -> %d", g ? "+norm" : "",
             act == ENG_ACT_GELU ? "+gelu" : (act == ENG_ACT_RELU ? "+relu" : ""), H, W, Cin, Cout);
    return rc;
}

static void op_set_tuning(eng_backend *be, int on) { ((eng_cuda *)be)->tuning = on != 0; }

static int op_binarize(eng_backend *be, uint8_t *dst, const void *x, int64_t n, float lo, float hi,
                       uint64_t counts[2])
{
    return eng_cuda_binarize(be, dst, x, n, lo, hi, counts);
}

static int op_resize_bilinear(eng_backend *be, void *y, const void *x, int C, int H, int W,
                              int crop_h, int crop_w, int OH, int OW, int y0, int rows)
{
    eng_cuda *cu = (eng_cuda *)be;
    PROF_BEGIN(cu);
    int rc = eng_cuda_resize_bilinear(be, y, x, C, H, W, crop_h, crop_w, OH, OW, y0, rows);
    PROF_END(cu, rc, "resize %dx%d -> %dx%d", H, W, OH, OW);
    return rc;
}

// ----------------------------------------------------------------------------
// create / destroy

static void cu_destroy(eng_backend *be)
{
    eng_cuda *cu = (eng_cuda *)be;
    if (!cu)
        return;
    prof_print(cu);
    if (cu->stream)
        cudaStreamSynchronize(cu->stream);
    if (cu->graphs_on)
        fprintf(stderr,
                "cuda graphs (%s): %ld replays, %ld recorded, %ld updated, %ld not recordable\n",
                cu->base.desc, cu->graph_replays, cu->graph_captures, cu->graph_updates,
                cu->graph_failures);
    eng_cuda_graphs_free(cu);
    eng_cuda_gemm_plans_free(cu);
    for (int i = 0; i < cu->n_allocs; i++)
        cudaFree(cu->allocs[i].p);
    free(cu->allocs);
    free(cu->prof);
    if (cu->scratch)
        cudaFree(cu->scratch);
    if (cu->tune_buf)
        cudaFree(cu->tune_buf);
    for (int i = 0; i < 2; i++)
        if (cu->tune_ev[i])
            cudaEventDestroy(cu->tune_ev[i]);
    if (cu->lt_ws)
        cudaFree(cu->lt_ws);
    if (cu->d_stage)
        cudaFree(cu->d_stage);
    if (cu->h_stage)
        cudaFreeHost(cu->h_stage);
    if (cu->ev0)
        cudaEventDestroy(cu->ev0);
    if (cu->ev1)
        cudaEventDestroy(cu->ev1);
    for (int i = 0; i < 2; i++)
        if (cu->stage_ev[i])
            cudaEventDestroy(cu->stage_ev[i]);
    if (cu->lt)
        cublasLtDestroy(cu->lt);
    if (cu->blas)
        cublasDestroy(cu->blas);
    if (cu->stream)
        cudaStreamDestroy(cu->stream);
    free(cu);
}

static const eng_backend_ops eng__cuda_ops = {
    cu_alloc,
    cu_free,
    cu_upload,
    cu_download,
    cu_sync,
    cu_destroy,
    cu_memory,
    op_linear,
    op_matmul_nn,
    op_layernorm,
    op_activate,
    op_add,
    op_copy,
    op_transpose,
    op_attention,
    op_conv2d,
    op_conv_transpose2x2,
    op_window_partition,
    op_window_unpartition_add,
    op_resize_bilinear,
    op_binarize,
    /* no backward ops yet (training runs on the CPU backend): the op
     * wrappers fail them with ENG_EUNSUP naming the op */
    nullptr, /* fill */
    nullptr, /* linear_backward */
    nullptr, /* layernorm_backward */
    nullptr, /* activate_backward */
    nullptr, /* attention_backward */
    nullptr, /* conv_transpose2x2_backward */
    op_conv_transpose2x2_norm_act,
    op_set_tuning,
    eng_cuda_graphs_on,
    eng_cuda_graph_begin,
    eng_cuda_graph_end,
};

extern "C" int eng_backend_cuda_sm75_peak(eng_backend *be, double *tflops)
{
    if (!be || be->ops != &eng__cuda_ops)
        return eng_error(ENG_EUNSUP, "the sm_75 tensor-core peak needs a CUDA backend");
    return eng_cuda_sm75_mma_peak((eng_cuda *)be, tflops);
}

/* A kernel compiled into this binary, used to check the fat binary has code
 * for the device. */
__global__ void eng_cuda_probe_kernel(int *p)
{
    if (p)
        *p = 1;
}

static int cu_setup(eng_cuda *cu)
{
    ENG_CU_CHECK(cudaSetDevice(cu->device));
    ENG_CU_CHECK(cudaStreamCreateWithFlags(&cu->stream, cudaStreamNonBlocking));
    ENG_BLAS_CHECK(cublasLtCreate(&cu->lt));
    ENG_BLAS_CHECK(cublasCreate(&cu->blas));
    ENG_BLAS_CHECK(cublasSetStream(cu->blas, cu->stream));
    ENG_BLAS_CHECK(cublasSetMathMode(cu->blas, CUBLAS_DEFAULT_MATH));
    ENG_CU_CHECK(cudaEventCreate(&cu->ev0));
    ENG_CU_CHECK(cudaEventCreate(&cu->ev1));
    for (int i = 0; i < 2; i++)
        ENG_CU_CHECK(cudaEventCreateWithFlags(&cu->stage_ev[i], cudaEventDisableTiming));
    ENG_CU_CHECK(cudaMalloc(&cu->lt_ws, ENG_CU_LT_WS));
    cu->lt_ws_bytes = ENG_CU_LT_WS;
    ENG_BLAS_CHECK(cublasSetWorkspace(cu->blas, cu->lt_ws, cu->lt_ws_bytes));
    /* GEMM tuning: a fixed buffer and its events, so no shape ever
     * allocates on the request path */
    ENG_CU_CHECK(cudaMalloc(&cu->tune_buf, ENG_CU_TUNE));
    cu->tune_bytes = ENG_CU_TUNE;
    for (int i = 0; i < 2; i++)
        ENG_CU_CHECK(cudaEventCreate(&cu->tune_ev[i]));
    ENG_CU_CHECK(cudaMallocHost((void **)&cu->h_stage, ENG_CU_STAGE * sizeof(float)));
    ENG_CU_CHECK(cudaMalloc((void **)&cu->d_stage, ENG_CU_STAGE * sizeof(float)));
    cu->stage_n = ENG_CU_STAGE;
    return 0;
}

extern "C" int eng_backend_cuda_create(eng_backend **out, int device_index, eng_dtype dtype)
{
    *out = NULL;
    if (dtype != ENG_F32 && dtype != ENG_F16 && dtype != ENG_BF16)
        return eng_error(ENG_EINVAL, "cuda: storage dtype %s is not f32, f16 or bf16",
                         eng_dtype_name(dtype));
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        cudaGetLastError();
        int drv = 0;
        if (cudaDriverGetVersion(&drv) != cudaSuccess || drv == 0)
            return eng_error(ENG_EDEVICE, "cuda: no NVIDIA driver found (no GPU here?): %s",
                             cudaGetErrorString(e));
        if (e == cudaErrorInsufficientDriver)
            return eng_error(ENG_EDEVICE,
                             "cuda: the NVIDIA driver is too old for this build's CUDA runtime "
                             "(%d.%d; the driver supports %d.%d): update the driver or use the CPU",
                             CUDART_VERSION / 1000, CUDART_VERSION % 1000 / 10, drv / 1000,
                             drv % 1000 / 10);
        return eng_error(ENG_EDEVICE, "cuda: no usable GPU: %s (%s)", cudaGetErrorString(e),
                         cudaGetErrorName(e));
    }
    if (n <= 0)
        return eng_error(ENG_EDEVICE, "cuda: no GPU found");
    if (device_index < 0 || device_index >= n)
        return eng_error(ENG_EDEVICE, "cuda: device %d does not exist (%d GPU%s found)",
                         device_index, n, n == 1 ? "" : "s");
    cudaDeviceProp prop;
    e = cudaGetDeviceProperties(&prop, device_index);
    if (e != cudaSuccess)
        return eng_cuda_fail(e, "cudaGetDeviceProperties", __FILE__, __LINE__);
    int cc = prop.major * 10 + prop.minor;
    if (cc < 75)
        return eng_error(ENG_EDEVICE, "cuda: %s is sm_%d; this build needs sm_75 or newer",
                         prop.name, cc);
    if (dtype == ENG_BF16 && cc < 80)
        return eng_error(ENG_EUNSUP, "cuda: bf16 storage needs sm_80+ (%s is sm_%d); use f16",
                         prop.name, cc);
    /* The sm_75 (T4) kernel set, selectable on any GPU so that it can be
     * checked and timed where no T4 is at hand; off by default everywhere,
     * the T4 included, until it has been measured. It is the T4's
     * configuration: fp16 (or fp32) storage, no bf16. */
    eng_cu_kernels kern = ENG_CU_KERNELS_NATIVE;
    const char *ke = getenv("TASAM_CUDA_KERNELS");
    if (ke && *ke && strcmp(ke, "native") != 0) {
        if (strcmp(ke, "sm75") != 0)
            return eng_error(ENG_EINVAL, "cuda: TASAM_CUDA_KERNELS=%s: expected native or sm75",
                             ke);
        if (dtype == ENG_BF16)
            return eng_error(ENG_EUNSUP,
                             "cuda: the sm_75 kernels (TASAM_CUDA_KERNELS=sm75) run fp16 or fp32 "
                             "storage, not bf16");
        kern = ENG_CU_KERNELS_SM75;
    }
    cudaFuncAttributes fa;
    e = cudaFuncGetAttributes(&fa, eng_cuda_probe_kernel);
    if (e != cudaSuccess) {
        cudaGetLastError();
        return eng_error(ENG_EDEVICE, "cuda: this binary has no code for %s (sm_%d): %s", prop.name,
                         cc, cudaGetErrorString(e));
    }
    eng_cuda *cu = (eng_cuda *)calloc(1, sizeof *cu);
    if (!cu)
        return eng_error(ENG_ENOMEM, "out of memory");
    cu->base.ops = &eng__cuda_ops;
    cu->base.dev = ENG_DEV_CUDA;
    cu->base.dtype = dtype;
    cu->device = device_index;
    cu->cc = cc;
    cu->sm_count = prop.multiProcessorCount;
    cu->total_mem = prop.totalGlobalMem;
    const char *pe = getenv("TASAM_CUDA_PROFILE");
    cu->profile = pe && *pe && *pe != '0';
    cu->no_flash = getenv("TASAM_CUDA_NO_FLASH") != NULL;
    cu->no_tune = getenv("TASAM_CUDA_NO_TUNE") != NULL;
    const char *ge = getenv("TASAM_CUDA_GRAPHS");
    cu->graphs_on = ge && *ge && *ge != '0';
    cu->tuning = 1;
    cu->no_split = getenv("TASAM_CUDA_NO_SPLIT") != NULL;
    const char *em = getenv("TASAM_CUDA_EMULATE_SMEM");
    cu->emulate_smem = em && *em ? atoi(em) : 0;
    cu->kernels = kern;
    snprintf(cu->base.desc, sizeof cu->base.desc, "cuda:%d %.100s (sm_%d, %s%s)", device_index,
             prop.name, cc, dtype == ENG_BF16 ? "bf16" : (dtype == ENG_F16 ? "fp16" : "fp32"),
             kern == ENG_CU_KERNELS_SM75 ? ", sm_75 kernels" : "");
    int rc = cu_setup(cu);
    if (rc) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", eng_last_error());
        cu_destroy(&cu->base);
        return eng_error(rc, "%s", msg);
    }
    *out = &cu->base;
    return 0;
}
