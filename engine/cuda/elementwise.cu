/*
 * engine/cuda/elementwise.cu: dtype conversion, activation, add (with row
 * broadcast), copy, 2-D transpose, and the bias/activation/residual epilogue
 * used when a GEMM runs without a fused cuBLASLt epilogue.
 *
 * Sizes: n elements; a [M, N] matrix is row-major. Vector paths move 8
 * storage elements (16 bytes for half types) per thread when the counts and
 * pointers allow it, else a scalar grid-stride loop runs.
 */
#include "cuda_internal.cuh"

// ----------------------------------------------------------------------------
// CUDA kernels

template <typename T> __global__ void convert_from_f32_kernel(T *dst, const float *src, int64_t n)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        dst[i] = eng_from_f<T>(src[i]);
}

template <typename T> __global__ void convert_to_f32_kernel(float *dst, const T *src, int64_t n)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        dst[i] = eng_to_f(src[i]);
}

/* 8 elements of T as one aligned chunk. */
template <typename T> struct alignas(8 * sizeof(T) >= 16 ? 16 : 8 * sizeof(T)) vec8 {
    T v[8];
};

template <typename T> __global__ void activate_kernel(T *y, const T *x, int64_t n, int act)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        y[i] = eng_from_f<T>(eng_apply_act(eng_to_f(x[i]), act));
}

/* n8 chunks of 8. */
template <typename T>
__global__ void activate_vec_kernel(vec8<T> *y, const vec8<T> *x, int64_t n8, int act)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n8;
         i += (int64_t)gridDim.x * blockDim.x) {
        vec8<T> a = x[i];
#pragma unroll
        for (int j = 0; j < 8; j++)
            a.v[j] = eng_from_f<T>(eng_apply_act(eng_to_f(a.v[j]), act));
        y[i] = a;
    }
}

/* y[i] = a[i] + b[i % bn] */
template <typename T>
__global__ void add_kernel(T *y, const T *a, const T *b, int64_t n, int64_t bn)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        y[i] = eng_from_f<T>(eng_to_f(a[i]) + eng_to_f(b[bn == n ? i : i % bn]));
}

/* Chunks of 8; bn8 = bn / 8 chunks of b (bn % 8 == 0). */
template <typename T>
__global__ void add_vec_kernel(vec8<T> *y, const vec8<T> *a, const vec8<T> *b, int64_t n8,
                               int64_t bn8)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n8;
         i += (int64_t)gridDim.x * blockDim.x) {
        vec8<T> u = a[i], w = b[bn8 == n8 ? i : i % bn8];
#pragma unroll
        for (int j = 0; j < 8; j++)
            u.v[j] = eng_from_f<T>(eng_to_f(u.v[j]) + eng_to_f(w.v[j]));
        y[i] = u;
    }
}

/* y [N, M] = x [M, N]^T through a 32 x 33 shared tile; block 32 x 8. */
template <typename T> __global__ void transpose_kernel(T *y, const T *x, int M, int N)
{
    __shared__ T tile[32][33];
    int bx = blockIdx.x * 32, by = blockIdx.y * 32; /* x's column / row origin */
    for (int r = threadIdx.y; r < 32; r += 8) {
        int i = by + r, j = bx + threadIdx.x;
        if (i < M && j < N)
            tile[r][threadIdx.x] = x[(int64_t)i * N + j];
    }
    __syncthreads();
    for (int r = threadIdx.y; r < 32; r += 8) {
        int j = bx + r, i = by + threadIdx.x; /* y row j, column i */
        if (i < M && j < N)
            y[(int64_t)j * M + i] = tile[threadIdx.x][r];
    }
}

/* y[M,N] = act(y + b[n / group]) + res */
template <typename T>
__global__ void epilogue_kernel(T *y, const T *b, int group, const T *res, int64_t M, int N,
                                int act)
{
    int64_t n = M * N;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        int col = (int)(i % N);
        float v = eng_to_f(y[i]);
        if (b)
            v += eng_to_f(b[col / group]);
        v = eng_apply_act(v, act);
        if (res)
            v += eng_to_f(res[i]);
        y[i] = eng_from_f<T>(v);
    }
}

// ----------------------------------------------------------------------------
// kernel launchers

static inline int aligned16(const void *p) { return ((uintptr_t)p & 15) == 0; }

int eng_cuda_convert_from_f32(eng_cuda *cu, void *dst, const float *src, int64_t n)
{
    if (n <= 0)
        return 0;
    ENG_CU_DISPATCH(cu->base.dtype, T, {
        convert_from_f32_kernel<T><<<eng_cu_blocks(n, 256), 256, 0, cu->stream>>>((T *)dst, src, n);
    });
    ENG_CU_LAUNCH_CHECK();
    return 0;
}

int eng_cuda_convert_to_f32(eng_cuda *cu, float *dst, const void *src, int64_t n)
{
    if (n <= 0)
        return 0;
    ENG_CU_DISPATCH(cu->base.dtype, T, {
        convert_to_f32_kernel<T>
            <<<eng_cu_blocks(n, 256), 256, 0, cu->stream>>>(dst, (const T *)src, n);
    });
    ENG_CU_LAUNCH_CHECK();
    return 0;
}

int eng_cuda_activate(eng_backend *be, void *y, const void *x, int64_t n, eng_act act)
{
    eng_cuda *cu = (eng_cuda *)be;
    if (n <= 0)
        return 0;
    if (act == ENG_ACT_NONE)
        return eng_cuda_copy(be, y, x, n);
    ENG_CU_DISPATCH(be->dtype, T, {
        if (n % 8 == 0 && aligned16(y) && aligned16(x))
            activate_vec_kernel<T><<<eng_cu_blocks(n / 8, 256), 256, 0, cu->stream>>>(
                (vec8<T> *)y, (const vec8<T> *)x, n / 8, (int)act);
        else
            activate_kernel<T>
                <<<eng_cu_blocks(n, 256), 256, 0, cu->stream>>>((T *)y, (const T *)x, n, (int)act);
    });
    ENG_CU_LAUNCH_CHECK();
    return 0;
}

int eng_cuda_add(eng_backend *be, void *y, const void *a, const void *b, int64_t n, int64_t bn)
{
    eng_cuda *cu = (eng_cuda *)be;
    if (n <= 0)
        return 0;
    ENG_CU_DISPATCH(be->dtype, T, {
        if (n % 8 == 0 && bn % 8 == 0 && aligned16(y) && aligned16(a) && aligned16(b))
            add_vec_kernel<T><<<eng_cu_blocks(n / 8, 256), 256, 0, cu->stream>>>(
                (vec8<T> *)y, (const vec8<T> *)a, (const vec8<T> *)b, n / 8, bn / 8);
        else
            add_kernel<T><<<eng_cu_blocks(n, 256), 256, 0, cu->stream>>>((T *)y, (const T *)a,
                                                                         (const T *)b, n, bn);
    });
    ENG_CU_LAUNCH_CHECK();
    return 0;
}

int eng_cuda_copy(eng_backend *be, void *y, const void *x, int64_t n)
{
    eng_cuda *cu = (eng_cuda *)be;
    if (n <= 0 || y == x)
        return 0;
    size_t es = be->dtype == ENG_F32 ? 4 : 2;
    ENG_CU_CHECK(cudaMemcpyAsync(y, x, (size_t)n * es, cudaMemcpyDeviceToDevice, cu->stream));
    return 0;
}

int eng_cuda_transpose(eng_backend *be, void *y, const void *x, int M, int N)
{
    eng_cuda *cu = (eng_cuda *)be;
    if (M <= 0 || N <= 0)
        return 0;
    dim3 grid((N + 31) / 32, (M + 31) / 32), block(32, 8);
    if (grid.y > 65535)
        return eng_error(ENG_EUNSUP, "cuda: transpose of %d rows", M);
    ENG_CU_DISPATCH(be->dtype, T, {
        transpose_kernel<T><<<grid, block, 0, cu->stream>>>((T *)y, (const T *)x, M, N);
    });
    ENG_CU_LAUNCH_CHECK();
    return 0;
}

int eng_cuda_epilogue(eng_cuda *cu, void *y, const void *b, int group, const void *res, int M,
                      int N, eng_act act)
{
    int64_t n = (int64_t)M * N;
    if (n <= 0 || (!b && !res && act == ENG_ACT_NONE))
        return 0;
    ENG_CU_DISPATCH(cu->base.dtype, T, {
        epilogue_kernel<T><<<eng_cu_blocks(n, 256), 256, 0, cu->stream>>>(
            (T *)y, (const T *)b, group, (const T *)res, M, N, (int)act);
    });
    ENG_CU_LAUNCH_CHECK();
    return 0;
}
