/*
 * engine/cuda/binarize.cu: masks from logits without moving the logits.
 * y[i] = x[i] > 0 as bytes, and the two counts of SAM's stability score
 * (|x > hi|, |x > lo|), so a postprocessed mask crosses the bus as n bytes
 * instead of 4n; the counts are reduced per warp and added atomically.
 */
#include "cuda_internal.cuh"

// ----------------------------------------------------------------------------
// CUDA kernels

template <typename T>
__global__ void binarize_kernel(uint8_t *y, const T *x, int64_t n, float lo, float hi,
                                unsigned long long *counts)
{
    unsigned long long c_hi = 0, c_lo = 0;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        float v = eng_to_f(x[i]);
        y[i] = v > 0.0f;
        c_hi += v > hi;
        c_lo += v > lo;
    }
    /* every thread of the (full) warp reaches here: blockDim is a multiple of 32 */
    for (int o = 16; o > 0; o >>= 1) {
        c_hi += __shfl_down_sync(0xffffffffu, c_hi, o);
        c_lo += __shfl_down_sync(0xffffffffu, c_lo, o);
    }
    if ((threadIdx.x & 31) == 0 && (c_hi || c_lo)) {
        atomicAdd(&counts[0], c_hi);
        atomicAdd(&counts[1], c_lo);
    }
}

// ----------------------------------------------------------------------------
// kernel launchers

int eng_cuda_binarize(eng_backend *be, uint8_t *dst, const void *x, int64_t n, float lo, float hi,
                      uint64_t counts[2])
{
    eng_cuda *cu = (eng_cuda *)be;
    counts[0] = counts[1] = 0;
    if (n <= 0)
        return 0;
    /* scratch: the two counters, then the n mask bytes */
    uint8_t *s = (uint8_t *)eng_cuda_scratch(cu, 256 + (size_t)n);
    if (!s)
        return ENG_ENOMEM;
    unsigned long long *dc = (unsigned long long *)s, hc[2];
    uint8_t *dy = s + 256;
    ENG_CU_CHECK(cudaMemsetAsync(dc, 0, 2 * sizeof(unsigned long long), cu->stream));
    ENG_CU_DISPATCH(be->dtype, T, {
        binarize_kernel<T>
            <<<eng_cu_blocks(n, 256), 256, 0, cu->stream>>>(dy, (const T *)x, n, lo, hi, dc);
    });
    ENG_CU_LAUNCH_CHECK();
    ENG_CU_CHECK(cudaMemcpyAsync(dst, dy, (size_t)n, cudaMemcpyDeviceToHost, cu->stream));
    ENG_CU_CHECK(cudaMemcpyAsync(hc, dc, sizeof hc, cudaMemcpyDeviceToHost, cu->stream));
    ENG_CU_CHECK(cudaStreamSynchronize(cu->stream));
    counts[0] = hc[0];
    counts[1] = hc[1];
    return 0;
}
