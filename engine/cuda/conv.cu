/*
 * engine/cuda/conv.cu: convolution as im2col + GEMM, and the 2x2 stride-2
 * transposed convolution as GEMM + scatter.
 *
 *   conv2d: x is HWC [H*W, Cin] or CHW [Cin, H, W]; w [Cout, Cin, kh, kw];
 *     col [OH*OW, K] with K = Cin*kh*kw in weight order (c, ky, kx), zeros
 *     where the kernel hangs over the zero-padded border; y [OH*OW, Cout] =
 *     col . w^T + b through the linear path (bias fused). A 1x1 stride-1
 *     unpadded HWC convolution is a linear on x directly.
 *   conv_transpose2x2: t [H*W, Cout*4] = x [H*W, Cin] . w [Cin, Cout*4];
 *     y[(2i+a)*(2W) + 2j+bb, co] = t[i*W+j, co*4 + a*2 + bb] + b[co].
 * col and t live in the backend's scratch.
 */
#include "cuda_internal.cuh"

// ----------------------------------------------------------------------------
// CUDA kernels

template <typename T>
__global__ void im2col_kernel(T *col, const T *x, int x_chw, int Cin, int H, int W, int kh, int kw,
                              int stride, int pad, int OW, int64_t n)
{
    int64_t K = (int64_t)Cin * kh * kw;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        int64_t r = i / K;
        int k = (int)(i % K);
        int kx = k % kw, ky = (k / kw) % kh, c = k / (kw * kh);
        int oy = (int)(r / OW), ox = (int)(r % OW);
        int iy = oy * stride - pad + ky, ix = ox * stride - pad + kx;
        T v = eng_from_f<T>(0.0f);
        if (iy >= 0 && iy < H && ix >= 0 && ix < W)
            v = x_chw ? x[((int64_t)c * H + iy) * W + ix] : x[((int64_t)iy * W + ix) * Cin + c];
        col[i] = v;
    }
}

template <typename T>
__global__ void ct_scatter_kernel(T *y, const T *t, const T *b, int H, int W, int Cout)
{
    int64_t n = (int64_t)4 * H * W * Cout;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        int co = (int)(i % Cout);
        int64_t p = i / Cout; /* output pixel */
        int oy = (int)(p / (2 * W)), ox = (int)(p % (2 * W));
        int a = oy & 1, bb = ox & 1;
        int64_t r = (int64_t)(oy >> 1) * W + (ox >> 1);
        float v = eng_to_f(t[r * Cout * 4 + co * 4 + a * 2 + bb]);
        if (b)
            v += eng_to_f(b[co]);
        y[i] = eng_from_f<T>(v);
    }
}

// ----------------------------------------------------------------------------
// kernel launchers

int eng_cuda_conv2d(eng_backend *be, void *y, const void *x, int x_chw, int Cin, int H, int W,
                    const void *w, const void *b, int Cout, int kh, int kw, int stride, int pad)
{
    eng_cuda *cu = (eng_cuda *)be;
    int OH = (H + 2 * pad - kh) / stride + 1, OW = (W + 2 * pad - kw) / stride + 1;
    int64_t K = (int64_t)Cin * kh * kw, P = (int64_t)OH * OW;
    if (P <= 0 || Cout <= 0)
        return 0;
    if (kh == 1 && kw == 1 && stride == 1 && pad == 0 && !x_chw)
        return eng_cuda_linear(be, y, x, Cin, w, b, NULL, (int)P, Cin, Cout, ENG_ACT_NONE);
    size_t es = be->dtype == ENG_F32 ? 4 : 2;
    void *col = eng_cuda_scratch(cu, (size_t)(P * K) * es);
    if (!col)
        return ENG_ENOMEM;
    int64_t n = P * K;
    ENG_CU_DISPATCH(be->dtype, T, {
        im2col_kernel<T><<<eng_cu_blocks(n, 256), 256, 0, cu->stream>>>(
            (T *)col, (const T *)x, x_chw, Cin, H, W, kh, kw, stride, pad, OW, n);
    });
    ENG_CU_LAUNCH_CHECK();
    return eng_cuda_linear(be, y, col, K, w, b, NULL, (int)P, (int)K, Cout, ENG_ACT_NONE);
}

int eng_cuda_conv_transpose2x2(eng_backend *be, void *y, const void *x, int H, int W, int Cin,
                               const void *w, const void *b, int Cout)
{
    eng_cuda *cu = (eng_cuda *)be;
    int64_t P = (int64_t)H * W;
    if (P <= 0 || Cout <= 0)
        return 0;
    size_t es = be->dtype == ENG_F32 ? 4 : 2;
    void *t = eng_cuda_scratch(cu, (size_t)(P * Cout * 4) * es);
    if (!t)
        return ENG_ENOMEM;
    ENG_TRY(eng_cuda_matmul_nn(be, t, x, w, NULL, (int)P, Cin, Cout * 4, 1));
    int64_t n = 4 * P * Cout;
    ENG_CU_DISPATCH(be->dtype, T, {
        ct_scatter_kernel<T><<<eng_cu_blocks(n, 256), 256, 0, cu->stream>>>(
            (T *)y, (const T *)t, (const T *)b, H, W, Cout);
    });
    ENG_CU_LAUNCH_CHECK();
    return 0;
}
