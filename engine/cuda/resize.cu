/*
 * engine/cuda/resize.cu: bilinear resize with align_corners=False (PyTorch's
 * F.interpolate without antialias) of a CHW stack x [C, H, W], reading only
 * its top-left crop_h x crop_w, to a full OH x OW result of which rows
 * [y0, y0 + rows) are written to y [C, rows, OW]. The source index rule and
 * the float arithmetic are the CPU reference's, term for term.
 */
#include "cuda_internal.cuh"

// ----------------------------------------------------------------------------
// CUDA kernels

__device__ __forceinline__ void src_index(int in, int out, int o, int *i0, int *i1, float *l)
{
    float scale = (float)in / (float)out;
    float src = __fmul_rn(scale, (float)o + 0.5f) - 0.5f;
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

template <typename T>
__global__ void resize_bilinear_kernel(T *y, const T *x, int C, int H, int W, int crop_h,
                                       int crop_w, int OH, int OW, int y0, int rows)
{
    int64_t n = (int64_t)C * rows * OW;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        int ox = (int)(i % OW);
        int64_t r = i / OW;
        int oy = (int)(r % rows), c = (int)(r / rows);
        int ya, yb, xa, xb;
        float ly, lx;
        src_index(crop_h, OH, y0 + oy, &ya, &yb, &ly);
        src_index(crop_w, OW, ox, &xa, &xb, &lx);
        const T *row0 = x + ((int64_t)c * H + ya) * W;
        const T *row1 = x + ((int64_t)c * H + yb) * W;
        float top =
            __fadd_rn(__fmul_rn(1.0f - lx, eng_to_f(row0[xa])), __fmul_rn(lx, eng_to_f(row0[xb])));
        float bot =
            __fadd_rn(__fmul_rn(1.0f - lx, eng_to_f(row1[xa])), __fmul_rn(lx, eng_to_f(row1[xb])));
        y[i] = eng_from_f<T>(__fadd_rn(__fmul_rn(1.0f - ly, top), __fmul_rn(ly, bot)));
    }
}

// ----------------------------------------------------------------------------
// kernel launchers

int eng_cuda_resize_bilinear(eng_backend *be, void *y, const void *x, int C, int H, int W,
                             int crop_h, int crop_w, int OH, int OW, int y0, int rows)
{
    eng_cuda *cu = (eng_cuda *)be;
    int64_t n = (int64_t)C * rows * OW;
    if (n <= 0)
        return 0;
    ENG_CU_DISPATCH(be->dtype, T, {
        resize_bilinear_kernel<T><<<eng_cu_blocks(n, 256), 256, 0, cu->stream>>>(
            (T *)y, (const T *)x, C, H, W, crop_h, crop_w, OH, OW, y0, rows);
    });
    ENG_CU_LAUNCH_CHECK();
    return 0;
}
