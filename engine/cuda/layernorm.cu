/*
 * engine/cuda/layernorm.cu: LayerNorm over the last dim of x [M, N], with an
 * optional residual summed first: y = LN(x + res) * g + b. One warp per row,
 * fp32 statistics, two passes over the row (mean, then the centred sum of
 * squares), as the CPU reference does. In place is allowed (y == x).
 *
 * Fast path: N % 8 == 0, N <= 2048 and 16-byte aligned rows: each lane keeps
 * its VPL chunks of 8 values in registers, so the row is read once and
 * written once. Otherwise a scalar path re-reads the row from global memory.
 */
#include "cuda_internal.cuh"

#define LN_WARPS 4 /* rows per block */

// ----------------------------------------------------------------------------
// CUDA kernels

template <typename T> struct alignas(8 * sizeof(T) >= 16 ? 16 : 8 * sizeof(T)) ln_vec8 {
    T v[8];
};

__device__ __forceinline__ float warp_sum(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

template <typename T, int VPL>
__global__ void __launch_bounds__(32 * LN_WARPS)
    layernorm_vec_kernel(T *y, const T *x, const T *res, const T *g, const T *b, int M, int N,
                         float eps)
{
    int row = blockIdx.x * LN_WARPS + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= M)
        return;
    int n8 = N / 8;
    const ln_vec8<T> *xr = (const ln_vec8<T> *)(x + (int64_t)row * N);
    const ln_vec8<T> *rr = res ? (const ln_vec8<T> *)(res + (int64_t)row * N) : NULL;
    float v[VPL][8];
    float s = 0.0f;
#pragma unroll
    for (int c = 0; c < VPL; c++) {
        int ci = lane + 32 * c;
        if (ci < n8) {
            ln_vec8<T> a = xr[ci];
#pragma unroll
            for (int j = 0; j < 8; j++)
                v[c][j] = eng_to_f(a.v[j]);
            if (rr) {
                ln_vec8<T> r = rr[ci];
#pragma unroll
                for (int j = 0; j < 8; j++)
                    v[c][j] += eng_to_f(r.v[j]);
            }
#pragma unroll
            for (int j = 0; j < 8; j++)
                s += v[c][j];
        }
    }
    float mean = warp_sum(s) / (float)N;
    float q = 0.0f;
#pragma unroll
    for (int c = 0; c < VPL; c++)
        if (lane + 32 * c < n8)
#pragma unroll
            for (int j = 0; j < 8; j++) {
                float d = v[c][j] - mean;
                q += d * d;
            }
    float rstd = rsqrtf(warp_sum(q) / (float)N + eps);
    const ln_vec8<T> *gv = (const ln_vec8<T> *)g, *bv = (const ln_vec8<T> *)b;
    ln_vec8<T> *yr = (ln_vec8<T> *)(y + (int64_t)row * N);
#pragma unroll
    for (int c = 0; c < VPL; c++) {
        int ci = lane + 32 * c;
        if (ci < n8) {
            ln_vec8<T> gg = gv[ci], bb = bv[ci], o;
#pragma unroll
            for (int j = 0; j < 8; j++)
                o.v[j] =
                    eng_from_f<T>((v[c][j] - mean) * rstd * eng_to_f(gg.v[j]) + eng_to_f(bb.v[j]));
            yr[ci] = o;
        }
    }
}

template <typename T>
__global__ void __launch_bounds__(32 * LN_WARPS)
    layernorm_kernel(T *y, const T *x, const T *res, const T *g, const T *b, int M, int N,
                     float eps)
{
    int row = blockIdx.x * LN_WARPS + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= M)
        return;
    const T *xr = x + (int64_t)row * N;
    const T *rr = res ? res + (int64_t)row * N : NULL;
    T *yr = y + (int64_t)row * N;
    float s = 0.0f;
    for (int j = lane; j < N; j += 32)
        s += eng_to_f(xr[j]) + (rr ? eng_to_f(rr[j]) : 0.0f);
    float mean = warp_sum(s) / (float)N;
    float q = 0.0f;
    for (int j = lane; j < N; j += 32) {
        float d = eng_to_f(xr[j]) + (rr ? eng_to_f(rr[j]) : 0.0f) - mean;
        q += d * d;
    }
    float rstd = rsqrtf(warp_sum(q) / (float)N + eps);
    /* every lane has read its elements before any lane writes (y may be x):
     * each lane writes only the elements it read itself */
    for (int j = lane; j < N; j += 32) {
        float d = eng_to_f(xr[j]) + (rr ? eng_to_f(rr[j]) : 0.0f) - mean;
        yr[j] = eng_from_f<T>(d * rstd * eng_to_f(g[j]) + eng_to_f(b[j]));
    }
}

// ----------------------------------------------------------------------------
// kernel launchers

template <typename T>
static void layernorm_launch(cudaStream_t st, T *y, const T *x, const T *res, const T *g,
                             const T *b, int M, int N, float eps)
{
    unsigned grid = (unsigned)((M + LN_WARPS - 1) / LN_WARPS);
    int aligned =
        (((uintptr_t)y | (uintptr_t)x | (uintptr_t)res | (uintptr_t)g | (uintptr_t)b) & 15) == 0;
    int vpl = (N / 8 + 31) / 32;
    if (N % 8 || !aligned || vpl > 8)
        vpl = 0;
    switch (vpl) {
#define LN_CASE(V)                                                                                 \
    case V:                                                                                        \
        layernorm_vec_kernel<T, V><<<grid, 32 * LN_WARPS, 0, st>>>(y, x, res, g, b, M, N, eps);    \
        break;
        LN_CASE(1)
        LN_CASE(2)
        LN_CASE(3)
        LN_CASE(4)
        LN_CASE(5)
        LN_CASE(6)
        LN_CASE(7)
        LN_CASE(8)
#undef LN_CASE
    default:
        layernorm_kernel<T><<<grid, 32 * LN_WARPS, 0, st>>>(y, x, res, g, b, M, N, eps);
    }
}

int eng_cuda_layernorm(eng_backend *be, void *y, const void *x, const void *res, const void *g,
                       const void *b, int M, int N, float eps)
{
    eng_cuda *cu = (eng_cuda *)be;
    if (M <= 0 || N <= 0)
        return 0;
    ENG_CU_DISPATCH(be->dtype, T, {
        layernorm_launch<T>(cu->stream, (T *)y, (const T *)x, (const T *)res, (const T *)g,
                            (const T *)b, M, N, eps);
    });
    ENG_CU_LAUNCH_CHECK();
    return 0;
}
