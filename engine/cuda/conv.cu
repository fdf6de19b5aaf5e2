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
 *   conv_transpose2x2_norm_act: the same GEMM, then one pass that scatters,
 *     adds the bias, takes a LayerNorm over each output pixel's Cout
 *     channels (optional) and the activation: the mask decoder's upscaling
 *     (Cout 64 with a norm and GELU, then Cout 32 with GELU), which as
 *     separate ops reads and writes the [B*4P, 64] and [B*16P, 32] images
 *     three and two times.
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

/* One warp per input pixel r of t [H*W, Cout*4] (its Cout*4 values are
 * contiguous, index co*4 + a*2 + bb), NV = Cout / 8 values a lane: lane l
 * holds elements l + 32 i (i < NV), which all belong to output sub-pixel
 * s = l % 4 (row 2*iy + s/2, column 2*ix + s%2) at channel l/4 + 8 i. The
 * LayerNorm statistics of a sub-pixel are sums over the 8 lanes with the same
 * l % 4 (xor 4, 8, 16), two passes (mean, then centred squares) in fp32 as
 * the reference does. g, beta NULL: no norm. */
template <typename T, int NV>
__global__ void ct_norm_act_kernel(T *y, const T *t, const T *b, const T *g, const T *beta, int H,
                                   int W, float eps, int act)
{
    constexpr int Cout = 8 * NV;
    const int lane = threadIdx.x % 32, sub = lane & 3;
    const int64_t P = (int64_t)H * W, warps = (int64_t)gridDim.x * blockDim.x / 32;
    for (int64_t r = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) / 32; r < P; r += warps) {
        const T *tr = t + r * Cout * 4;
        float v[NV], s = 0.0f;
#pragma unroll
        for (int i = 0; i < NV; i++) {
            int co = (lane >> 2) + 8 * i;
            v[i] = eng_to_f(tr[lane + 32 * i]) + (b ? eng_to_f(b[co]) : 0.0f);
            s += v[i];
        }
        if (g) {
            s += __shfl_xor_sync(0xffffffffu, s, 4);
            s += __shfl_xor_sync(0xffffffffu, s, 8);
            s += __shfl_xor_sync(0xffffffffu, s, 16);
            float mean = s / (float)Cout, q = 0.0f;
#pragma unroll
            for (int i = 0; i < NV; i++) {
                float d = v[i] - mean;
                q += d * d;
            }
            q += __shfl_xor_sync(0xffffffffu, q, 4);
            q += __shfl_xor_sync(0xffffffffu, q, 8);
            q += __shfl_xor_sync(0xffffffffu, q, 16);
            float rstd = rsqrtf(q / (float)Cout + eps);
#pragma unroll
            for (int i = 0; i < NV; i++) {
                int co = (lane >> 2) + 8 * i;
                v[i] = (v[i] - mean) * rstd * eng_to_f(g[co]) + eng_to_f(beta[co]);
            }
        }
        int iy = (int)(r / W), ix = (int)(r % W);
        T *yo = y + ((int64_t)(2 * iy + (sub >> 1)) * (2 * W) + 2 * ix + (sub & 1)) * Cout;
#pragma unroll
        for (int i = 0; i < NV; i++)
            yo[(lane >> 2) + 8 * i] = eng_from_f<T>(eng_apply_act(v[i], act));
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

/* NV = Cout / 8 in 1..8; 8 warps (pixels) per block of 256 threads */
template <typename T>
static void ct_norm_act_launch(cudaStream_t st, int nv, T *y, const T *t, const T *b, const T *g,
                               const T *beta, int H, int W, float eps, eng_act act)
{
    unsigned grid = eng_cu_blocks((int64_t)H * W, 8);
    switch (nv) {
#define CT_CASE(NV)                                                                                \
    case NV:                                                                                       \
        ct_norm_act_kernel<T, NV><<<grid, 256, 0, st>>>(y, t, b, g, beta, H, W, eps, (int)act);    \
        break;
        CT_CASE(1)
        CT_CASE(2)
        CT_CASE(3)
        CT_CASE(4)
        CT_CASE(5)
        CT_CASE(6)
        CT_CASE(7)
        CT_CASE(8)
#undef CT_CASE
    }
}

int eng_cuda_conv_transpose2x2_norm_act(eng_backend *be, void *y, const void *x, int H, int W,
                                        int Cin, const void *w, const void *b, int Cout,
                                        const void *g, const void *beta, float eps, eng_act act)
{
    eng_cuda *cu = (eng_cuda *)be;
    int64_t P = (int64_t)H * W;
    if (P <= 0 || Cout <= 0)
        return 0;
    if (Cout % 8 || Cout > 64) {
        /* not the decoder's widths: the separate passes */
        ENG_TRY(eng_cuda_conv_transpose2x2(be, y, x, H, W, Cin, w, b, Cout));
        if (g)
            ENG_TRY(eng_cuda_layernorm(be, y, y, NULL, g, beta, (int)(4 * P), Cout, eps));
        return act == ENG_ACT_NONE ? 0 : eng_cuda_activate(be, y, y, 4 * P * Cout, act);
    }
    size_t es = be->dtype == ENG_F32 ? 4 : 2;
    void *t = eng_cuda_scratch(cu, (size_t)(P * Cout * 4) * es);
    if (!t)
        return ENG_ENOMEM;
    ENG_TRY(eng_cuda_matmul_nn(be, t, x, w, NULL, (int)P, Cin, Cout * 4, 1));
    ENG_CU_DISPATCH(be->dtype, T, {
        ct_norm_act_launch<T>(cu->stream, Cout / 8, (T *)y, (const T *)t, (const T *)b,
                              (const T *)g, (const T *)beta, H, W, eps, act);
    });
    ENG_CU_LAUNCH_CHECK();
    return 0;
}
