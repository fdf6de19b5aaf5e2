/*
 * engine/cuda/windows.cu: SAM's window partition / unpartition of a HWC
 * image x [H*W, C] into windows y [nWin, ws*ws, C] (row-major window order,
 * zero padding bottom/right to a multiple of ws), and the inverse, added
 * into the image (dropping the padding).
 *
 * One thread per (token, chunk of V channels); V = 8 when C % 8 == 0 and
 * the pointers are 16-byte aligned, else 1.
 */
#include "cuda_internal.cuh"

// ----------------------------------------------------------------------------
// CUDA kernels

template <typename T, int V> struct alignas(V * sizeof(T) >= 16 ? 16 : V * sizeof(T)) win_vec {
    T v[V];
};

/* y [nwy*nwx*ws*ws, C] <- x [H*W, C] */
template <typename T, int V>
__global__ void window_partition_kernel(T *y, const T *x, int H, int W, int C, int ws, int nwx,
                                        int64_t n)
{
    int cv = C / V;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        int c = (int)(i % cv);
        int64_t t = i / cv; /* window token index */
        int in_win = (int)(t % (ws * ws));
        int win = (int)(t / (ws * ws));
        int gy = (win / nwx) * ws + in_win / ws, gx = (win % nwx) * ws + in_win % ws;
        win_vec<T, V> o;
        if (gy < H && gx < W) {
            o = ((const win_vec<T, V> *)(x + ((int64_t)gy * W + gx) * C))[c];
        } else {
#pragma unroll
            for (int j = 0; j < V; j++)
                o.v[j] = eng_from_f<T>(0.0f);
        }
        ((win_vec<T, V> *)(y + t * C))[c] = o;
    }
}

/* y [H*W, C] += unpartition(x [nwy*nwx*ws*ws, C]) */
template <typename T, int V>
__global__ void window_unpartition_add_kernel(T *y, const T *x, int H, int W, int C, int ws,
                                              int nwx, int64_t n)
{
    int cv = C / V;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        int c = (int)(i % cv);
        int64_t p = i / cv; /* image pixel */
        int gy = (int)(p / W), gx = (int)(p % W);
        int64_t t = ((int64_t)((gy / ws) * nwx + gx / ws) * ws + gy % ws) * ws + gx % ws;
        win_vec<T, V> a = ((win_vec<T, V> *)(y + p * C))[c];
        win_vec<T, V> s = ((const win_vec<T, V> *)(x + t * C))[c];
#pragma unroll
        for (int j = 0; j < V; j++)
            a.v[j] = eng_from_f<T>(eng_to_f(a.v[j]) + eng_to_f(s.v[j]));
        ((win_vec<T, V> *)(y + p * C))[c] = a;
    }
}

// ----------------------------------------------------------------------------
// kernel launchers

static int vec_ok(const void *a, const void *b, int C)
{
    return C % 8 == 0 && (((uintptr_t)a | (uintptr_t)b) & 15) == 0;
}

int eng_cuda_window_partition(eng_backend *be, void *y, const void *x, int H, int W, int C, int ws)
{
    eng_cuda *cu = (eng_cuda *)be;
    int nwx = (W + ws - 1) / ws, nwy = (H + ws - 1) / ws;
    int64_t tokens = (int64_t)nwx * nwy * ws * ws;
    ENG_CU_DISPATCH(be->dtype, T, {
        if (vec_ok(y, x, C)) {
            int64_t n = tokens * (C / 8);
            window_partition_kernel<T, 8><<<eng_cu_blocks(n, 256), 256, 0, cu->stream>>>(
                (T *)y, (const T *)x, H, W, C, ws, nwx, n);
        } else {
            int64_t n = tokens * C;
            window_partition_kernel<T, 1><<<eng_cu_blocks(n, 256), 256, 0, cu->stream>>>(
                (T *)y, (const T *)x, H, W, C, ws, nwx, n);
        }
    });
    ENG_CU_LAUNCH_CHECK();
    return 0;
}

int eng_cuda_window_unpartition_add(eng_backend *be, void *y, const void *x, int H, int W, int C,
                                    int ws)
{
    eng_cuda *cu = (eng_cuda *)be;
    int nwx = (W + ws - 1) / ws;
    int64_t pixels = (int64_t)H * W;
    ENG_CU_DISPATCH(be->dtype, T, {
        if (vec_ok(y, x, C)) {
            int64_t n = pixels * (C / 8);
            window_unpartition_add_kernel<T, 8><<<eng_cu_blocks(n, 256), 256, 0, cu->stream>>>(
                (T *)y, (const T *)x, H, W, C, ws, nwx, n);
        } else {
            int64_t n = pixels * C;
            window_unpartition_add_kernel<T, 1><<<eng_cu_blocks(n, 256), 256, 0, cu->stream>>>(
                (T *)y, (const T *)x, H, W, C, ws, nwx, n);
        }
    });
    ENG_CU_LAUNCH_CHECK();
    return 0;
}
