/*
 * engine/cuda/attention.cu: multi-head attention with SAM's decomposed
 * relative-position bias and an optional additive key mask.
 *
 * Shapes (eng_attn): q [B, Tq, H*D] with token stride q_rs, k and v
 * [B, Tk, H*D] with token stride kv_rs (views into a fused qkv buffer are
 * fine), out [B, Tq, H*D] contiguous.
 *   s(i, j) = scale * q_i . k_j + bias(i, j) + key_bias[b, j]
 *   bias(i, j) = q_i . rel_h[qy(i) - ky(j) + gh - 1] + q_i . rel_w[qx(i) - kx(j) + gw - 1]
 * (unscaled q; query and key grids are gh x gw, i = qy * gw + qx), then a
 * softmax over j and out_i = sum_j p(i, j) v_j. cpu.c's eng__softmax_rows is
 * the reference.
 *
 * Three paths:
 *  - flash (sm_80+, f16/bf16, D in {16, 32, 64, 80, 96, 128}, 16-byte
 *    aligned rows, grid side <= 64): one block of 4 warps per 64 queries of
 *    one (b, h); each warp owns 16 query rows. K/V tiles of 64 keys stream
 *    through shared memory (cp.async, two stages); S = Q K^T and O += P V run
 *    on tensor cores (mma.sync m16n8k16, fp32 accumulators) with an online
 *    softmax in registers: no Tq x Tk matrix exists anywhere. The rel-pos
 *    bias is folded in from two small tables per warp computed in the
 *    prologue, also on tensor cores: QRh[r][m] = q_r . rel_h[m] for every
 *    m < 2*gh-1 (and QRw likewise), so bias(i, j) is two shared-memory reads.
 *    When there are fewer query blocks than SMs (the decoder's 7 tokens over
 *    4096 image keys), the key range is split over several blocks whose
 *    partial (max, sum, unnormalised O) a small kernel merges.
 *  - flash for sm_75 (attention_sm75.cu: the same algorithm on m16n8k8 and
 *    plain loads, fp16, D in {16, 32, 64, 80}), only when
 *    TASAM_CUDA_KERNELS=sm75 selects the sm_75 kernel set, on any GPU; the
 *    split planning and the merge of splits here serve both kernels.
 *  - generic (everything else: fp32 storage, sm_75 by default until the
 *    sm_75 kernel is measured, other head dims): per
 *    head, S = scale Q K^T by a strided-batched cuBLAS GEMM into fp32 scratch,
 *    a row kernel adding the bias and mask and taking the softmax, and
 *    O = P V by a second batched GEMM.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attention.cuh"

// ----------------------------------------------------------------------------
// CUDA kernels

__device__ __forceinline__ void cp_async16(void *smem, const void *gmem, int src_bytes)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem),
                 "r"(src_bytes));
#endif
}

__device__ __forceinline__ void cp_async_commit()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}

__device__ __forceinline__ void cp_async_wait_all()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group 0;\n" ::);
#endif
}

/* c[16x8] += a[16x16] b[16x8], fp32 accumulators */
template <typename T>
__device__ __forceinline__ void mma16816(float c[4], const unsigned a[4], unsigned b0, unsigned b1);
template <>
__device__ __forceinline__ void mma16816<__nv_bfloat16>(float c[4], const unsigned a[4],
                                                        unsigned b0, unsigned b1)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, "
                 "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}
template <>
__device__ __forceinline__ void mma16816<__half>(float c[4], const unsigned a[4], unsigned b0,
                                                 unsigned b1)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, "
                 "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

/* The per-tile steps' tensor-core step (attention.cuh) on m16n8k16. */
template <typename T> struct fa_mma {
    static __device__ __forceinline__ void run(float c[4], const unsigned a[4], unsigned b0,
                                               unsigned b1)
    {
        mma16816<T>(c, a, b0, b1);
    }
};

/* rows [row0, row0 + nrows) of a [*, D] matrix (row stride rs elements,
 * column offset col0) into smem [nrows][LDS]; rows >= valid are zeros. */
template <typename T, int D>
__device__ __forceinline__ void fa_load_rows(T *s, const T *g, int64_t rs, int row0, int nrows,
                                             int valid, int tid)
{
    constexpr int LDS = D + 8, CH = D / 8;
    for (int c = tid; c < nrows * CH; c += FA_WARPS * 32) {
        int r = c / CH, ch = c % CH;
        int gr = row0 + r;
        const T *src = gr < valid ? g + (int64_t)gr * rs + ch * 8 : g;
        cp_async16(s + r * LDS + ch * 8, src, gr < valid ? 16 : 0);
    }
}

/* QR[r][m] = q_r . rel[m] for the warp's 16 rows and m < nr (nr % 16 == 0),
 * rel rows staged in srel [nr][LDS]. */
template <typename T, int D>
__device__ __forceinline__ void fa_relpos_table(float *qr, int qr_ld, const unsigned qf[][4],
                                                const T *srel, int nr, int lane)
{
    constexpr int LDS = D + 8;
    int g = lane / 4, t = lane % 4;
    for (int n0 = 0; n0 < nr; n0 += 16) {
        float acc[2][4] = {{0, 0, 0, 0}, {0, 0, 0, 0}};
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++) {
            unsigned b[4];
            ldmatrix_x4(b, srel + (n0 + (lane % 8) + 8 * (lane / 16)) * LDS + kk * 16 +
                               8 * ((lane / 8) % 2));
            mma16816<T>(acc[0], qf[kk], b[0], b[1]);
            mma16816<T>(acc[1], qf[kk], b[2], b[3]);
        }
#pragma unroll
        for (int h = 0; h < 2; h++) {
            int col = n0 + 8 * h + 2 * t;
            qr[g * qr_ld + col] = acc[h][0];
            qr[g * qr_ld + col + 1] = acc[h][1];
            qr[(g + 8) * qr_ld + col] = acc[h][2];
            qr[(g + 8) * qr_ld + col + 1] = acc[h][3];
        }
    }
}

/* ROWT: the key tiles are whole rows of the rel-pos grid (see `bw`
 * below); the other instances drop its 32 registers and fit 3 blocks/SM. */
template <typename T, int D, bool ROWT>
__global__ void __launch_bounds__(FA_WARPS * 32, (ROWT || D > 80) ? 2 : 3)
    flash_attn_kernel(const fa_params p)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
    __trap();
#else
    constexpr int LDS = D + 8;
    extern __shared__ __align__(16) unsigned char fa_smem[];
    T *sK = (T *)fa_smem;                         /* [2][FA_BC][LDS] */
    T *sV = sK + 2 * FA_BC * LDS;                 /* [2][FA_BC][LDS] */
    float *sQR = (float *)(sV + 2 * FA_BC * LDS); /* [FA_WARPS][16][qr_ld] */
    T *sQ = (T *)sQR;                             /* [FA_BR][LDS], before the tables exist */

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int g = lane / 4, t = lane % 4;
    const int b = blockIdx.z, h = blockIdx.y, split = blockIdx.x % p.splits;
    const int q0 = blockIdx.x / p.splits * FA_BR;
    const fa_ptrs<T> op = fa_block_ptrs<T, D>(p, b, h);
    const T *qg = op.q, *kg = op.k, *vg = op.v, *kb = op.kb;
    const bool relpos = p.rel_h != NULL;

    /* Q tile -> registers (A fragments, 16 rows x D per warp) */
    fa_load_rows<T, D>(sQ, qg, p.q_rs, q0, FA_BR, p.Tq, tid);
    cp_async_commit();
    if (relpos) {
        /* both tables' rows at once: rel_h into the K stages, rel_w into V's */
        fa_load_rows<T, D>(sK, (const T *)p.rel_h, D, 0, p.nrh, 2 * p.gh - 1, tid);
        fa_load_rows<T, D>(sV, (const T *)p.rel_w, D, 0, p.nrw, 2 * p.gw - 1, tid);
    }
    cp_async_commit();
    cp_async_wait_all();
    __syncthreads();
    unsigned qf[D / 16][4];
    fa_q_frags<T, D>(qf, sQ, warp, lane);
    __syncthreads(); /* sQ is dead: the tables may overwrite it */

    float *qrh = sQR + warp * 16 * p.qr_ld, *qrw = qrh + p.nrh;
    if (relpos) {
        fa_relpos_table<T, D>(qrh, p.qr_ld, qf, sK, p.nrh, lane);
        fa_relpos_table<T, D>(qrw, p.qr_ld, qf, sV, p.nrw, lane);
        __syncthreads(); /* the stages are free for K/V; the tables are complete */
    }

    /* this thread's two query rows: r = g and g + 8 of the warp */
    int cy[2] = {0, 0}, cx[2] = {0, 0}; /* QR column bases: qy + gh - 1, qx + gw - 1 */
    if (relpos)
        fa_grid_bases(p, q0 + warp * 16, g, cy, cx);
    const bool active = q0 + warp * 16 < p.Tq;
    /* Key tiles that are whole rows of the key grid (gw == FA_BC: SAM's
     * 64x64 global attention): ky is the tile index and kx the column, so
     * the rel_w term is the same in every tile and stays in registers, and
     * the rel_h term is one value per row per tile. */
    float bw[ROWT ? 8 : 1][4];
    if (ROWT) {
#pragma unroll
        for (int nt = 0; nt < (ROWT ? 8 : 1); nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int r = e >> 1, c = nt * 8 + 2 * t + (e & 1);
                bw[nt][e] = qrw[(g + 8 * r) * p.qr_ld + cx[r] - c] * FA_LOG2E;
            }
    }
    const float sl = p.scale * FA_LOG2E;
    const float inv_gw = relpos ? 1.0f / (float)p.gw : 0.0f;

    float o[D / 8][4], m_run[2], l_run[2];
    fa_acc_init(o, m_run, l_run);

    /* this block's key tiles: [it0, it1) of ceil(Tk / FA_BC) */
    int it0, it1;
    fa_tile_range(p, split, FA_BC, &it0, &it1);
    if (it0 < it1) {
        fa_load_rows<T, D>(sK, kg, p.kv_rs, it0 * FA_BC, FA_BC, p.Tk, tid);
        fa_load_rows<T, D>(sV, vg, p.kv_rs, it0 * FA_BC, FA_BC, p.Tk, tid);
    }
    cp_async_commit();

    for (int it = it0; it < it1; it++) {
        const int k0 = it * FA_BC, st = (it - it0) & 1;
        cp_async_wait_all();
        __syncthreads();
        if (it + 1 < it1) {
            fa_load_rows<T, D>(sK + (st ^ 1) * FA_BC * LDS, kg, p.kv_rs, k0 + FA_BC, FA_BC, p.Tk,
                               tid);
            fa_load_rows<T, D>(sV + (st ^ 1) * FA_BC * LDS, vg, p.kv_rs, k0 + FA_BC, FA_BC, p.Tk,
                               tid);
        }
        cp_async_commit();
        if (!active)
            continue;
        const T *cK = sK + st * FA_BC * LDS, *cV = sV + st * FA_BC * LDS;
        const int kvalid = p.Tk - k0 < FA_BC ? p.Tk - k0 : FA_BC;

        /* S = Q K^T: 8 n-tiles of 8 keys */
        float s[8][4];
        fa_qk<fa_mma<T>, T, 8, D>(s, qf, cK, kvalid, lane);

        /* scale, bias (log2 domain), mask, online softmax */
        if constexpr (ROWT) {
            float bh0 = qrh[g * p.qr_ld + cy[0] - it] * FA_LOG2E;
            float bh1 = qrh[(g + 8) * p.qr_ld + cy[1] - it] * FA_LOG2E;
            fa_bias_rowtile<8>(s, sl, bw, bh0, bh1);
        } else if (relpos) {
            fa_bias_table<8>(s, sl, qrh, qrw, p.qr_ld, cy, cx, g, k0, p.Tk, p.gw, inv_gw, t);
        } else {
            fa_scale<8>(s, sl);
        }
        fa_softmax_tile<T, 8, D / 8>(s, kvalid, kb, k0, t, m_run, l_run, o);

        /* O += P V: 4 k-steps of 16 keys */
        fa_pv<fa_mma<T>, T, 8, D>(o, s, cV, kvalid, lane);
    }
    cp_async_wait_all();
    if (!active)
        return;

    fa_store<T, D>(p, o, m_run, l_run, b, h, split, q0 + warp * 16, g, t);
#endif
}

/* Merge key-range splits: one thread per (b, h, query, d).
 *   M = max_s m_s, L = sum_s l_s 2^(m_s - M), out = sum_s o_s 2^(m_s - M) / L */
template <typename T>
__global__ void flash_combine_kernel(T *out, const float *part_o, const float *part_ml, int splits,
                                     int B, int H, int Tq, int D)
{
    int64_t n = (int64_t)B * H * Tq * D, rows = (int64_t)B * H * Tq;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        int d = (int)(i % D);
        int64_t row = i / D; /* (b, h, q) */
        float M = -INFINITY;
        for (int s = 0; s < splits; s++)
            M = fmaxf(M, part_ml[(s * rows + row) * 2]);
        float L = 0.0f, acc = 0.0f;
        for (int s = 0; s < splits; s++) {
            float m = part_ml[(s * rows + row) * 2];
            if (m == -INFINITY)
                continue;
            float w = exp2f(m - M);
            L += part_ml[(s * rows + row) * 2 + 1] * w;
            acc += part_o[(s * rows + row) * D + d] * w;
        }
        int q = (int)(row % Tq);
        int64_t bh = row / Tq;
        int h = (int)(bh % H), b = (int)(bh / H);
        out[(((int64_t)b * Tq + q) * H + h) * D + d] = eng_from_f<T>(L > 0.0f ? acc / L : 0.0f);
    }
}

/* Generic path, one block per (query row i, batch b) of one head: S row
 * (fp32, already scaled) + rel-pos bias + key mask -> softmax -> P row in
 * storage type. Shared: q row (D floats), rh (gh), rw (gw), reduction. */
template <typename T>
__global__ void softmax_rows_kernel(T *P, const float *S, const T *q, int64_t q_rs, const T *rel_h,
                                    const T *rel_w, const T *key_bias, int Tq, int Tk, int D,
                                    int gh, int gw)
{
    extern __shared__ float sm[];
    float *qs = sm, *rh = sm + D, *rw = rh + gh, *red = rw + gw; /* red: 32 floats */
    int i = blockIdx.x, b = blockIdx.y;
    const float *srow = S + ((int64_t)b * Tq + i) * Tk;
    T *prow = P + ((int64_t)b * Tq + i) * Tk;
    const T *kb = key_bias ? key_bias + (int64_t)b * Tk : NULL;
    if (rel_h) {
        const T *qi = q + ((int64_t)b * Tq + i) * q_rs;
        for (int d = threadIdx.x; d < D; d += blockDim.x)
            qs[d] = eng_to_f(qi[d]);
        __syncthreads();
        int qy = i / gw, qx = i % gw;
        for (int e = threadIdx.x; e < gh + gw; e += blockDim.x) {
            const T *r = e < gh ? rel_h + (int64_t)(qy - e + gh - 1) * D
                                : rel_w + (int64_t)(qx - (e - gh) + gw - 1) * D;
            float acc = 0.0f;
            for (int d = 0; d < D; d++)
                acc += qs[d] * eng_to_f(r[d]);
            rh[e] = acc; /* rw follows rh contiguously */
        }
        __syncthreads();
    }
    float mx = -INFINITY;
    for (int j = threadIdx.x; j < Tk; j += blockDim.x) {
        float x = srow[j];
        if (rel_h)
            x += rh[j / gw] + rw[j % gw];
        if (kb)
            x += eng_to_f(kb[j]);
        mx = fmaxf(mx, x);
    }
    for (int o = 16; o > 0; o >>= 1)
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    if (threadIdx.x % 32 == 0)
        red[threadIdx.x / 32] = mx;
    __syncthreads();
    mx = -INFINITY;
    for (int w = 0; w < (int)blockDim.x / 32; w++)
        mx = fmaxf(mx, red[w]);
    __syncthreads();
    float sum = 0.0f;
    for (int j = threadIdx.x; j < Tk; j += blockDim.x) {
        float x = srow[j];
        if (rel_h)
            x += rh[j / gw] + rw[j % gw];
        if (kb)
            x += eng_to_f(kb[j]);
        sum += expf(x - mx);
    }
    for (int o = 16; o > 0; o >>= 1)
        sum += __shfl_xor_sync(0xffffffffu, sum, o);
    if (threadIdx.x % 32 == 0)
        red[threadIdx.x / 32] = sum;
    __syncthreads();
    sum = 0.0f;
    for (int w = 0; w < (int)blockDim.x / 32; w++)
        sum += red[w];
    float inv = 1.0f / sum;
    for (int j = threadIdx.x; j < Tk; j += blockDim.x) {
        float x = srow[j];
        if (rel_h)
            x += rh[j / gw] + rw[j % gw];
        if (kb)
            x += eng_to_f(kb[j]);
        prow[j] = eng_from_f<T>(expf(x - mx) * inv);
    }
}

// ----------------------------------------------------------------------------
// kernel launchers

template <typename T, int D> static int flash_launch(eng_cuda *cu, const fa_params *p)
{
    constexpr int LDS = D + 8;
    size_t kv = (size_t)4 * FA_BC * LDS * sizeof(T);
    size_t qbytes = (size_t)FA_BR * LDS * sizeof(T);
    size_t qr = p->rel_h ? (size_t)FA_WARPS * 16 * p->qr_ld * sizeof(float) : 0;
    size_t smem = kv + (qr > qbytes ? qr : qbytes);
    dim3 grid((unsigned)((p->Tq + FA_BR - 1) / FA_BR * p->splits), (unsigned)p->H, (unsigned)p->B);
    /* above the default 48 KiB a kernel must be allowed more; only then, so
     * that a launch inside a graph capture makes no other runtime call */
    if (p->rel_h && p->gw == FA_BC) {
        if (smem > 48 * 1024)
            ENG_CU_CHECK(cudaFuncSetAttribute(flash_attn_kernel<T, D, true>,
                                              cudaFuncAttributeMaxDynamicSharedMemorySize,
                                              (int)smem));
        flash_attn_kernel<T, D, true><<<grid, FA_WARPS * 32, smem, cu->stream>>>(*p);
    } else {
        if (smem > 48 * 1024)
            ENG_CU_CHECK(cudaFuncSetAttribute(flash_attn_kernel<T, D, false>,
                                              cudaFuncAttributeMaxDynamicSharedMemorySize,
                                              (int)smem));
        flash_attn_kernel<T, D, false><<<grid, FA_WARPS * 32, smem, cu->stream>>>(*p);
    }
    ENG_CU_LAUNCH_CHECK();
    return 0;
}

template <typename T> static int flash_dispatch_d(eng_cuda *cu, const fa_params *p, int D)
{
    switch (D) {
    case 16:
        return flash_launch<T, 16>(cu, p);
    case 32:
        return flash_launch<T, 32>(cu, p);
    case 64:
        return flash_launch<T, 64>(cu, p);
    case 80:
        return flash_launch<T, 80>(cu, p);
    case 96:
        return flash_launch<T, 96>(cu, p);
    case 128:
        return flash_launch<T, 128>(cu, p);
    default:
        return eng_error(ENG_EUNSUP, "cuda: flash attention head dim %d", D);
    }
}

int eng_cuda_flash_combine(eng_cuda *cu, const fa_params *p, int D)
{
    int64_t n = (int64_t)p->B * p->H * p->Tq * D;
    if (p->splits <= 1 || n <= 0)
        return 0;
    ENG_CU_DISPATCH(cu->base.dtype, T, {
        flash_combine_kernel<T><<<eng_cu_blocks(n, 256), 256, 0, cu->stream>>>(
            (T *)p->out, p->part_o, p->part_ml, p->splits, p->B, p->H, p->Tq, D);
    });
    ENG_CU_LAUNCH_CHECK();
    return 0;
}

/* Whether a flash kernel handles this call: the sm_80 one (native kernels,
 * sm_80+, f16/bf16) or the sm_75 one (TASAM_CUDA_KERNELS=sm75, f16 on any
 * sm_75+ GPU). */
static int flash_ok(const eng_cuda *cu, const eng_attn *a, const void *q, const void *k,
                    const void *v, const void *out, const void *rel_h, const void *rel_w)
{
    int sm75 = cu->kernels == ENG_CU_KERNELS_SM75;
    if (cu->no_flash || cu->base.dtype == ENG_F32 ||
        (sm75 ? cu->base.dtype != ENG_F16 : cu->cc < 80))
        return 0;
    if (sm75 ? (a->D != 16 && a->D != 32 && a->D != 64 && a->D != 80)
             : (a->D != 16 && a->D != 32 && a->D != 64 && a->D != 80 && a->D != 96 && a->D != 128))
        return 0;
    if ((a->q_rs | a->kv_rs) % 8 ||
        (((uintptr_t)q | (uintptr_t)k | (uintptr_t)v | (uintptr_t)out) & 15))
        return 0;
    if (rel_h &&
        ((((uintptr_t)rel_h | (uintptr_t)rel_w) & 15) || a->relpos->h > 64 || a->relpos->w > 64))
        return 0;
    if (a->H > 65535 || a->B > 65535)
        return 0;
    return 1;
}

static int generic_attention(eng_cuda *cu, void *out, const void *q, const void *k, const void *v,
                             const eng_attn *a, const void *rel_h, const void *rel_w)
{
    eng_dtype dt = cu->base.dtype;
    size_t es = dt == ENG_F32 ? 4 : 2;
    int64_t per = (int64_t)a->B * a->Tq * a->Tk;
    size_t s_bytes = ((size_t)per * 4 + 255) & ~(size_t)255;
    uint8_t *scratch = (uint8_t *)eng_cuda_scratch(cu, s_bytes + (size_t)per * es);
    if (!scratch)
        return ENG_ENOMEM;
    float *S = (float *)scratch;
    void *P = scratch + s_bytes;
    cudaDataType_t ty = dt == ENG_BF16 ? CUDA_R_16BF : (dt == ENG_F16 ? CUDA_R_16F : CUDA_R_32F);
    int gh = rel_h ? a->relpos->h : 1, gw = rel_h ? a->relpos->w : 1;
    int64_t HD = (int64_t)a->H * a->D;
    size_t smem = (size_t)(a->D + gh + gw + 32) * sizeof(float);
    if (smem > 48 * 1024)
        return eng_error(ENG_EUNSUP, "cuda: attention head dim %d / grid %dx%d too large", a->D, gh,
                         gw);
    if (a->B > 65535)
        return eng_error(ENG_EUNSUP, "cuda: attention batch %d too large", a->B);
    float one = 1.0f, zero = 0.0f;
    for (int h = 0; h < a->H; h++) {
        const uint8_t *qh = (const uint8_t *)q + (size_t)h * a->D * es;
        const uint8_t *kh = (const uint8_t *)k + (size_t)h * a->D * es;
        const uint8_t *vh = (const uint8_t *)v + (size_t)h * a->D * es;
        uint8_t *oh = (uint8_t *)out + (size_t)h * a->D * es;
        /* S^T [Tk, Tq] (col-major) = K [Tk, D] Q^T, per b */
        ENG_BLAS_CHECK(cublasGemmStridedBatchedEx(
            cu->blas, CUBLAS_OP_T, CUBLAS_OP_N, a->Tk, a->Tq, a->D, &a->scale, kh, ty,
            (int)a->kv_rs, (long long)a->Tk * a->kv_rs, qh, ty, (int)a->q_rs,
            (long long)a->Tq * a->q_rs, &zero, S, CUDA_R_32F, a->Tk, (long long)a->Tq * a->Tk, a->B,
            CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        dim3 grid((unsigned)a->Tq, (unsigned)a->B);
        ENG_CU_DISPATCH(dt, T, {
            softmax_rows_kernel<T><<<grid, 128, smem, cu->stream>>>(
                (T *)P, S, (const T *)qh, a->q_rs, (const T *)rel_h, (const T *)rel_w,
                a->key_bias ? (const T *)a->key_bias->data : NULL, a->Tq, a->Tk, a->D, gh, gw);
        });
        ENG_CU_LAUNCH_CHECK();
        /* O^T [D, Tq] = V^T [D, Tk] P^T [Tk, Tq] */
        ENG_BLAS_CHECK(cublasGemmStridedBatchedEx(
            cu->blas, CUBLAS_OP_N, CUBLAS_OP_N, a->D, a->Tq, a->Tk, &one, vh, ty, (int)a->kv_rs,
            (long long)a->Tk * a->kv_rs, P, ty, a->Tk, (long long)a->Tq * a->Tk, &zero, oh, ty,
            (int)HD, (long long)a->Tq * HD, a->B, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    }
    return 0;
}

int eng_cuda_attention(eng_backend *be, void *out, const void *q, const void *k, const void *v,
                       const eng_attn *a, const void *rel_h, const void *rel_w)
{
    eng_cuda *cu = (eng_cuda *)be;
    if (a->B <= 0 || a->H <= 0 || a->Tq <= 0)
        return 0;
    if (a->Tk <= 0)
        return eng_error(ENG_EINVAL, "cuda: attention over zero keys");
    if (!flash_ok(cu, a, q, k, v, out, rel_h, rel_w))
        return generic_attention(cu, out, q, k, v, a, rel_h, rel_w);
    fa_params p;
    memset(&p, 0, sizeof p);
    p.out = out;
    p.q = q;
    p.k = k;
    p.v = v;
    p.rel_h = rel_h;
    p.rel_w = rel_w;
    p.key_bias = a->key_bias ? a->key_bias->data : NULL;
    p.q_rs = a->q_rs;
    p.kv_rs = a->kv_rs;
    p.B = a->B;
    p.H = a->H;
    p.Tq = a->Tq;
    p.Tk = a->Tk;
    p.scale = a->scale;
    if (rel_h) {
        p.gh = a->relpos->h;
        p.gw = a->relpos->w;
        p.nrh = (2 * p.gh - 1 + 15) / 16 * 16;
        p.nrw = (2 * p.gw - 1 + 15) / 16 * 16;
        /* a row stride of 4 (mod 32) floats spreads the 8 rows a quad group
         * reads over distinct banks */
        p.qr_ld = (p.nrh + p.nrw + 31) / 32 * 32 + 4;
    }
    /* Few query blocks over many keys (the decoder's token-to-image
     * attention: 8 blocks over 4096 keys) leave the GPU idle: split the key
     * range so about two blocks per SM run, and merge the partial softmaxes. */
    p.splits = 1;
    int64_t blocks = (int64_t)(a->Tq + FA_BR - 1) / FA_BR * a->H * a->B;
    int ntiles = (a->Tk + FA_BC - 1) / FA_BC;
    if (blocks < cu->sm_count && ntiles >= 4 && !cu->no_split) {
        int s = (int)((2 * cu->sm_count + blocks - 1) / blocks);
        if (s > ntiles / 2)
            s = ntiles / 2;
        if (s > 64)
            s = 64;
        if (s > 1) {
            int64_t rows = (int64_t)a->B * a->H * a->Tq;
            size_t ob = ((size_t)s * rows * a->D * sizeof(float) + 255) & ~(size_t)255;
            uint8_t *scr =
                (uint8_t *)eng_cuda_scratch(cu, ob + (size_t)s * rows * 2 * sizeof(float));
            if (!scr)
                return ENG_ENOMEM;
            p.splits = s;
            p.part_o = (float *)scr;
            p.part_ml = (float *)(scr + ob);
        }
    }
    if (cu->kernels == ENG_CU_KERNELS_SM75)
        ENG_TRY(eng_cuda_flash_sm75(cu, &p, a->D));
    else if (be->dtype == ENG_BF16)
        ENG_TRY(flash_dispatch_d<__nv_bfloat16>(cu, &p, a->D));
    else
        ENG_TRY(flash_dispatch_d<__half>(cu, &p, a->D));
    return eng_cuda_flash_combine(cu, &p, a->D);
}
