/*
 * engine/cuda/gemm.cu: linear layers and plain matrix products through
 * cuBLASLt, with the bias / GELU / ReLU epilogues fused and the residual
 * riding in C (beta = 1).
 *
 * Row-major to cuBLAS's column-major: a row-major [R, C] matrix with row
 * stride ld is a column-major [C, R] matrix with leading dimension ld, so
 *   linear:    y[M,N] = x[M,K] w[N,K]^T  is  D[N,M] = op_T(W[K,N]) X[K,M]
 *   matmul_nn: y[M,N] = x[M,K] w[K,N]    is  D[N,M] = W[N,K] X[K,M]
 * and the per-output-feature bias is cuBLASLt's per-row bias of D.
 *
 * Plans (descriptors, layouts and the heuristic's candidate algorithms) are
 * cached per shape, leading dimensions, epilogue and pointer alignment. The
 * algorithm is chosen once per *class*: the same problem but for the number
 * of rows of the row-major product (cuBLAS's n: tokens, or a decoder group's
 * B*T), rounded up to a power of two. The first plan of a class times the
 * heuristic's first 8 candidates (on at most the first n' columns that fit
 * the fixed tuning buffer, so the caller's C and D are never touched) and
 * keeps the fastest; later plans of the class take that algorithm when
 * cublasLtMatmulAlgoCheck accepts it for their shape, with no timing. A
 * model warms every class it will use while it loads (eng_sam_load), then
 * turns tuning off (eng_backend_set_tuning): a class first met on the
 * request path takes the heuristic's first choice and never synchronises,
 * and nothing is tuned while a CUDA graph is being captured.
 * TASAM_CUDA_NO_TUNE=1: always the heuristic's first. Where cuBLASLt offers
 * no algorithm (counted as a fallback), a cublasGemmEx call and the
 * epilogue kernel do the same work.
 *
 * Activation: cuBLASLt's GELU epilogue is the tanh approximation; it is used
 * for the half types (its difference from the erf GELU, under 1e-3, is far
 * below half-precision rounding); fp32 storage keeps the exact erf GELU via
 * the epilogue kernel.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_internal.cuh"

#define ENG_GEMM_CANDIDATES 8

/* The part of a plan's key shared by its class (all but n). */
typedef struct gemm_key {
    int transa, m, k, lda, ldb, ldd, has_c, epi, align[4];
} gemm_key;

struct eng_cuda_gemm_plan {
    gemm_key key;
    int n;
    /* value */
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t la, lb, ld;
    cublasLtMatmulAlgo_t algo;
    int ok; /* 0: no algorithm, use the fallback */
    /* up to ENG_GEMM_CANDIDATES of the heuristic's algorithms for this
     * shape; `algo` is one of them, or the class's when it checks */
    cublasLtMatmulAlgo_t cand[ENG_GEMM_CANDIDATES];
    int n_cand, chosen;
};

/* A class: a plan key with n rounded up to a power of two, and the
 * algorithm its first plan's timing chose. */
struct eng_cuda_gemm_class {
    gemm_key key;
    int nb;
    cublasLtMatmulAlgo_t algo;
};

// ----------------------------------------------------------------------------
// kernel launchers (cuBLAS)

static cudaDataType_t storage_type(eng_dtype dt)
{
    return dt == ENG_BF16 ? CUDA_R_16BF : (dt == ENG_F16 ? CUDA_R_16F : CUDA_R_32F);
}

static int ptr_align(const void *p)
{
    uintptr_t u = (uintptr_t)p;
    int a = 256;
    while (a > 1 && (u & (uintptr_t)(a - 1)))
        a >>= 1;
    return a;
}

void eng_cuda_gemm_plans_free(eng_cuda *cu)
{
    for (int i = 0; i < cu->n_plans; i++) {
        eng_cuda_gemm_plan *p = &cu->plans[i];
        if (p->desc)
            cublasLtMatmulDescDestroy(p->desc);
        if (p->la)
            cublasLtMatrixLayoutDestroy(p->la);
        if (p->lb)
            cublasLtMatrixLayoutDestroy(p->lb);
        if (p->ld)
            cublasLtMatrixLayoutDestroy(p->ld);
    }
    free(cu->plans);
    cu->plans = NULL;
    cu->n_plans = cu->cap_plans = 0;
    free(cu->classes);
    cu->classes = NULL;
    cu->n_classes = cu->cap_classes = 0;
}

static int plan_build(eng_cuda *cu, eng_cuda_gemm_plan *p)
{
    cudaDataType_t ty = storage_type(cu->base.dtype);
    cublasOperation_t ta = p->key.transa ? CUBLAS_OP_T : CUBLAS_OP_N, tb = CUBLAS_OP_N;
    cublasLtEpilogue_t epi = (cublasLtEpilogue_t)p->key.epi;
    ENG_BLAS_CHECK(cublasLtMatmulDescCreate(&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    ENG_BLAS_CHECK(
        cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    ENG_BLAS_CHECK(
        cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    ENG_BLAS_CHECK(
        cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi));
    /* A is [k, m] (transposed) or [m, k]; B [k, n]; C = D [m, n] */
    ENG_BLAS_CHECK(cublasLtMatrixLayoutCreate(&p->la, ty, p->key.transa ? p->key.k : p->key.m,
                                              p->key.transa ? p->key.m : p->key.k, p->key.lda));
    ENG_BLAS_CHECK(cublasLtMatrixLayoutCreate(&p->lb, ty, p->key.k, p->n, p->key.ldb));
    ENG_BLAS_CHECK(cublasLtMatrixLayoutCreate(&p->ld, ty, p->key.m, p->n, p->key.ldd));
    cublasLtMatmulPreference_t pref;
    ENG_BLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    uint64_t ws = cu->lt_ws_bytes;
    uint32_t al[4] = {(uint32_t)p->key.align[0], (uint32_t)p->key.align[1],
                      (uint32_t)p->key.align[2], (uint32_t)p->key.align[3]};
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                         sizeof ws);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al[0],
                                         sizeof al[0]);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al[1],
                                         sizeof al[1]);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al[2],
                                         sizeof al[2]);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al[3],
                                         sizeof al[3]);
    cublasLtMatmulHeuristicResult_t res[ENG_GEMM_CANDIDATES];
    int count = 0;
    cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(cu->lt, p->desc, p->la, p->lb, p->ld, p->ld,
                                                       pref, ENG_GEMM_CANDIDATES, res, &count);
    cublasLtMatmulPreferenceDestroy(pref);
    p->n_cand = 0;
    for (int i = 0; st == CUBLAS_STATUS_SUCCESS && i < count; i++)
        if (res[i].state == CUBLAS_STATUS_SUCCESS)
            p->cand[p->n_cand++] = res[i].algo;
    p->ok = p->n_cand > 0;
    if (p->ok)
        p->algo = p->cand[0];
    else
        cu->gemm_fallbacks++;
    return 0;
}

static int key_eq(const gemm_key *a, const gemm_key *b) { return memcmp(a, b, sizeof *a) == 0; }

/* The cached plan for a call, built on first use (NULL + error on failure). */
static eng_cuda_gemm_plan *plan_get(eng_cuda *cu, const gemm_key *key, int n)
{
    for (int i = 0; i < cu->n_plans; i++) {
        eng_cuda_gemm_plan *p = &cu->plans[i];
        if (p->n == n && key_eq(&p->key, key))
            return p;
    }
    if (cu->n_plans == cu->cap_plans) {
        int cap = cu->cap_plans ? 2 * cu->cap_plans : 32;
        eng_cuda_gemm_plan *np =
            (eng_cuda_gemm_plan *)realloc(cu->plans, (size_t)cap * sizeof(eng_cuda_gemm_plan));
        if (!np) {
            eng_error(ENG_ENOMEM, "cuda: out of host memory");
            return NULL;
        }
        cu->plans = np;
        cu->cap_plans = cap;
    }
    eng_cuda_gemm_plan *p = &cu->plans[cu->n_plans];
    memset(p, 0, sizeof *p);
    p->key = *key;
    p->n = n;
    if (plan_build(cu, p)) {
        if (p->desc)
            cublasLtMatmulDescDestroy(p->desc);
        if (p->la)
            cublasLtMatrixLayoutDestroy(p->la);
        if (p->lb)
            cublasLtMatrixLayoutDestroy(p->lb);
        if (p->ld)
            cublasLtMatrixLayoutDestroy(p->ld);
        return NULL;
    }
    cu->n_plans++;
    return p;
}

static int pow2_at_least(int n)
{
    int b = 1;
    while (b < n && b < (1 << 30))
        b <<= 1;
    return b;
}

/* The class of plan p, or NULL when it has none yet. */
static eng_cuda_gemm_class *class_find(eng_cuda *cu, const eng_cuda_gemm_plan *p)
{
    int nb = pow2_at_least(p->n);
    for (int i = 0; i < cu->n_classes; i++)
        if (cu->classes[i].nb == nb && key_eq(&cu->classes[i].key, &p->key))
            return &cu->classes[i];
    return NULL;
}

static void class_add(eng_cuda *cu, const eng_cuda_gemm_plan *p)
{
    if (cu->n_classes == cu->cap_classes) {
        int cap = cu->cap_classes ? 2 * cu->cap_classes : 32;
        eng_cuda_gemm_class *nc =
            (eng_cuda_gemm_class *)realloc(cu->classes, (size_t)cap * sizeof(eng_cuda_gemm_class));
        if (!nc)
            return; /* the plan keeps its algorithm; the class is just not remembered */
        cu->classes = nc;
        cu->cap_classes = cap;
    }
    eng_cuda_gemm_class *c = &cu->classes[cu->n_classes++];
    c->key = p->key;
    c->nb = pow2_at_least(p->n);
    c->algo = p->algo;
}

/* Time each candidate algorithm of plan p once, on its first n' columns
 * (as many as fit the fixed tuning buffer; beta = 0 into that buffer, so the
 * caller's C and D are untouched), and keep the fastest. Failures here only
 * leave the heuristic's first choice in place. */
static void plan_tune(eng_cuda *cu, eng_cuda_gemm_plan *p, const void *A, const void *B,
                      const void *bias)
{
    size_t es = cu->base.dtype == ENG_F32 ? 4 : 2;
    size_t col = (size_t)p->key.ldd * es;
    int n = p->n;
    if ((size_t)n * col > cu->tune_bytes)
        n = (int)(cu->tune_bytes / col);
    if (n < 1)
        return;
    cudaDataType_t ty = storage_type(cu->base.dtype);
    cublasLtMatrixLayout_t lb = p->lb, ld = p->ld;
    if (n < p->n && (cublasLtMatrixLayoutCreate(&lb, ty, p->key.k, n, p->key.ldb) ||
                     cublasLtMatrixLayoutCreate(&ld, ty, p->key.m, n, p->key.ldd))) {
        if (lb != p->lb)
            cublasLtMatrixLayoutDestroy(lb);
        return;
    }
    if (bias)
        cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias,
                                       sizeof bias);
    float alpha = 1.0f, beta = 0.0f, best = INFINITY;
    int best_i = 0;
    for (int i = 0; i < p->n_cand; i++) {
        float ms = 0.0f;
        int bad = 0;
        for (int rep = 0; rep < 3 && !bad; rep++) {
            if (rep == 1)
                cudaEventRecord(cu->tune_ev[0], cu->stream);
            bad = cublasLtMatmul(cu->lt, p->desc, &alpha, A, p->la, B, lb, &beta, cu->tune_buf, ld,
                                 cu->tune_buf, ld, &p->cand[i], cu->lt_ws, cu->lt_ws_bytes,
                                 cu->stream) != CUBLAS_STATUS_SUCCESS;
        }
        cudaEventRecord(cu->tune_ev[1], cu->stream);
        if (bad || cudaEventSynchronize(cu->tune_ev[1]) != cudaSuccess ||
            cudaEventElapsedTime(&ms, cu->tune_ev[0], cu->tune_ev[1]) != cudaSuccess) {
            cudaGetLastError();
            continue;
        }
        if (ms < best) {
            best = ms;
            best_i = i;
        }
    }
    if (lb != p->lb)
        cublasLtMatrixLayoutDestroy(lb);
    if (ld != p->ld)
        cublasLtMatrixLayoutDestroy(ld);
    p->algo = p->cand[best_i];
    cu->gemm_tuned++;
}

/* Settle plan p's algorithm before its first run: its class's when that
 * checks for this shape, else (tuning on, not capturing) the fastest
 * candidate, else the heuristic's first. */
static void plan_choose(eng_cuda *cu, eng_cuda_gemm_plan *p, const void *A, const void *B,
                        const void *bias)
{
    eng_cuda_gemm_class *c = class_find(cu, p);
    if (c) {
        cublasLtMatmulHeuristicResult_t r;
        memset(&r, 0, sizeof r);
        if (cublasLtMatmulAlgoCheck(cu->lt, p->desc, p->la, p->lb, p->ld, p->ld, &c->algo, &r) ==
                CUBLAS_STATUS_SUCCESS &&
            r.workspaceSize <= cu->lt_ws_bytes) {
            p->algo = c->algo;
            p->chosen = 1;
            return;
        }
    }
    if (cu->capturing)
        return; /* no timing inside a graph capture: cand[0] for now, chosen later */
    p->chosen = 1;
    if (cu->tuning && !cu->no_tune && p->n_cand > 1 && !c)
        plan_tune(cu, p, A, B, bias);
    else if (!cu->tuning)
        cu->gemm_untuned++;
    if (!c)
        class_add(cu, p);
}

/*
 * Column-major D[m, n] = epi(op(A)[m, k] B[k, n] + bias[m]) (+ C when c is
 * non-NULL; C has D's layout and may be D itself). `act` and `bias` describe
 * the epilogue; `fused_ok` = 0 forces the epilogue kernel (exact GELU).
 */
static int gemm(eng_cuda *cu, int transa, int m, int n, int k, const void *A, int lda,
                const void *B, int ldb, void *D, int ldd, const void *C, const void *bias,
                eng_act act, int fused_ok)
{
    if (m <= 0 || n <= 0)
        return 0;
    size_t es = cu->base.dtype == ENG_F32 ? 4 : 2;
    if (k <= 0) {
        /* an empty sum: D = C (or 0), then the epilogue */
        if (C && C != D)
            ENG_CU_CHECK(cudaMemcpy2DAsync(D, (size_t)ldd * es, C, (size_t)ldd * es, (size_t)m * es,
                                           (size_t)n, cudaMemcpyDeviceToDevice, cu->stream));
        else if (!C)
            ENG_CU_CHECK(
                cudaMemset2DAsync(D, (size_t)ldd * es, 0, (size_t)m * es, (size_t)n, cu->stream));
        return ldd == m ? eng_cuda_epilogue(cu, D, bias, 1, NULL, n, m, act)
                        : eng_error(ENG_EUNSUP, "cuda: empty GEMM with strided output");
    }
    int epi = CUBLASLT_EPILOGUE_DEFAULT;
    int fuse = fused_ok && (act == ENG_ACT_NONE || cu->base.dtype != ENG_F32);
    if (fuse) {
        if (act == ENG_ACT_GELU)
            epi = bias ? CUBLASLT_EPILOGUE_GELU_BIAS : CUBLASLT_EPILOGUE_GELU;
        else if (act == ENG_ACT_RELU)
            epi = bias ? CUBLASLT_EPILOGUE_RELU_BIAS : CUBLASLT_EPILOGUE_RELU;
        else if (bias)
            epi = CUBLASLT_EPILOGUE_BIAS;
    }
    gemm_key key;
    memset(&key, 0, sizeof key);
    key.transa = transa;
    key.m = m;
    key.k = k;
    key.lda = lda;
    key.ldb = ldb;
    key.ldd = ldd;
    key.has_c = C != NULL;
    key.epi = epi;
    key.align[0] = ptr_align(A);
    key.align[1] = ptr_align(B);
    key.align[2] = C ? ptr_align(C) : 256;
    key.align[3] = ptr_align(D);
    if (C && key.align[2] < key.align[3])
        key.align[3] = key.align[2];
    if (C)
        key.align[2] = key.align[3];
    if (epi != CUBLASLT_EPILOGUE_DEFAULT && bias && ptr_align(bias) < 16) {
        /* the fused bias wants an aligned vector: use the kernel */
        fuse = 0;
        key.epi = epi = CUBLASLT_EPILOGUE_DEFAULT;
    }
    eng_cuda_gemm_plan *p = plan_get(cu, &key, n);
    if (!p)
        return eng_last_error()[0] ? ENG_EDEVICE : ENG_ENOMEM;
    float alpha = 1.0f, beta = C ? 1.0f : 0.0f;
    int done = 0;
    if (p->ok && !p->chosen)
        plan_choose(cu, p, A, B, epi != CUBLASLT_EPILOGUE_DEFAULT ? bias : NULL);
    if (p->ok) {
        if (bias && epi != CUBLASLT_EPILOGUE_DEFAULT)
            ENG_BLAS_CHECK(cublasLtMatmulDescSetAttribute(
                p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
        ENG_BLAS_CHECK(cublasLtMatmul(cu->lt, p->desc, &alpha, A, p->la, B, p->lb, &beta, C ? C : D,
                                      p->ld, D, p->ld, &p->algo, cu->lt_ws, cu->lt_ws_bytes,
                                      cu->stream));
        done = 1;
    }
    if (!done) {
        /* cuBLAS: D = op(A) B (+ C copied into D first) */
        if (C && C != D)
            ENG_CU_CHECK(cudaMemcpy2DAsync(D, (size_t)ldd * es, C, (size_t)ldd * es, (size_t)m * es,
                                           (size_t)n, cudaMemcpyDeviceToDevice, cu->stream));
        cudaDataType_t ty = storage_type(cu->base.dtype);
        ENG_BLAS_CHECK(cublasGemmEx(cu->blas, transa ? CUBLAS_OP_T : CUBLAS_OP_N, CUBLAS_OP_N, m, n,
                                    k, &alpha, A, ty, lda, B, ty, ldb, &beta, D, ty, ldd,
                                    CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        epi = CUBLASLT_EPILOGUE_DEFAULT;
    }
    if (epi == CUBLASLT_EPILOGUE_DEFAULT && (bias || act != ENG_ACT_NONE)) {
        if (ldd != m)
            return eng_error(ENG_EUNSUP, "cuda: GEMM epilogue on a strided output");
        /* row-major y [n rows, m cols] */
        ENG_TRY(eng_cuda_epilogue(cu, D, bias, 1, NULL, n, m, act));
    }
    return 0;
}

int eng_cuda_linear(eng_backend *be, void *y, const void *x, int64_t ldx, const void *w,
                    const void *b, const void *res, int M, int K, int N, eng_act act)
{
    eng_cuda *cu = (eng_cuda *)be;
    if (res && act != ENG_ACT_NONE) {
        /* act then residual: C cannot carry it (cuBLASLt adds C before the
         * activation) */
        if (res == y)
            return eng_error(ENG_EINVAL, "cuda: linear with activation and residual in place");
        ENG_TRY(gemm(cu, 1, N, M, K, w, K, x, (int)ldx, y, N, NULL, b, act, 1));
        return eng_cuda_epilogue(cu, y, NULL, 1, res, M, N, ENG_ACT_NONE);
    }
    return gemm(cu, 1, N, M, K, w, K, x, (int)ldx, y, N, res, b, act, 1);
}

int eng_cuda_matmul_nn(eng_backend *be, void *y, const void *x, const void *w, const void *b, int M,
                       int K, int N, int group)
{
    eng_cuda *cu = (eng_cuda *)be;
    if (group == 1)
        return gemm(cu, 0, N, M, K, w, N, x, K, y, N, NULL, b, ENG_ACT_NONE, 1);
    ENG_TRY(gemm(cu, 0, N, M, K, w, N, x, K, y, N, NULL, NULL, ENG_ACT_NONE, 1));
    return b ? eng_cuda_epilogue(cu, y, b, group, NULL, M, N, ENG_ACT_NONE) : 0;
}
