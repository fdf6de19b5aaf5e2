/*
 * engine/cuda/attention_sm75.cu: flash attention for sm_75 (Turing, the T4):
 * the algorithm of attention.cu's sm_80 kernel on the instructions sm_75
 * has. Built from compute_75 PTX only (see the Makefile), so on a newer GPU
 * the driver JIT-compiles this same code: TASAM_CUDA_KERNELS=sm75 selects it
 * on any GPU, which is how its agreement tests and timings run where no T4
 * is at hand (they measure correctness and relative efficiency, not T4
 * speed). It is not the default anywhere until it has been measured; the
 * generic attention stays the sm_75 default (attention.cu).
 *
 * Shapes and semantics: attention.cu's header comment (eng_attn). fp16
 * storage only (sm_75 has no bf16 tensor cores); head dims 16, 32 (the
 * decoder), 64 and 80 (ViT-B/L and ViT-H); fp32 accumulators and fp32
 * softmax statistics.
 *
 * What differs from the sm_80 kernel, and why:
 *  - mma.sync m16n8k8: each m16n8k16 step of the sm_80 kernel is two k8
 *    halves over the same ldmatrix fragments (mma16816_k8).
 *  - no cp.async: one shared-memory stage, and the next K/V tile is loaded
 *    into registers (ld.global.nc, 16 bytes) while the current one is
 *    computed, then stored to shared memory after the barrier.
 *  - T4 has 64 KiB of shared memory per SM: to keep two blocks per SM the
 *    64x64 global attention does not keep the two [16][127] QR tables per
 *    warp (66 KiB a block at head dim 80). Its key tiles are whole grid rows
 *    (ROWT), so every query of a warp (16 consecutive columns of one grid
 *    row) has the same rel_h row per tile: that term is a dot product of
 *    the query with one rel_h row, computed per tile from the Q fragments
 *    (D/4 FMAs a thread and two shuffles); the rel_w term is the same in
 *    every tile and stays in registers, filled in the prologue from an
 *    80-column slice of QRw built over the K/V stage's memory.
 *  - 14x14 windows (196 keys) use 32-key tiles (7 tiles, 12.5% padding
 *    instead of 23% with 64) and keep the sm_80 kernel's QR tables:
 *    28 KiB a block at head dim 80.
 *  - the QR tables' B fragments are read straight from the rel-pos tables
 *    in global memory (32-bit loads; they are 20 KiB and stay in L1/L2)
 *    instead of being staged in shared memory.
 *
 * Occupancy emulation: TASAM_CUDA_EMULATE_SMEM=BYTES (e.g. 65536, the T4's
 * shared memory per SM) pads each block's dynamic shared memory so that no
 * more blocks per SM run than would fit in BYTES, so timings on a larger
 * GPU see the T4's occupancy (registers per SM are 64 Ki on both).
 */
#include <stdlib.h>

#include "attention.cuh"

typedef __half T75; /* the one storage type of this path */

// ----------------------------------------------------------------------------
// CUDA kernels

namespace
{

/* c[16x8] += a[16x8] b[8x8] (f16 inputs, fp32 accumulators), sm_75+ */
__device__ __forceinline__ void mma1688(float c[4], unsigned a0, unsigned a1, unsigned b0)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 750
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a0), "r"(a1), "r"(b0));
#endif
}

/* The sm_80 kernel's m16n8k16 on m16n8k8: a[0], a[1] are the A fragment's
 * rows g and g + 8 over k 0..7 and a[2], a[3] over k 8..15; b0 covers k 0..7
 * and b1 k 8..15 (the m16n8k16 fragment layouts, PTX ISA). */
__device__ __forceinline__ void mma16816_k8(float c[4], const unsigned a[4], unsigned b0,
                                            unsigned b1)
{
    mma1688(c, a[0], a[1], b0);
    mma1688(c, a[2], a[3], b1);
}

/* The per-tile steps' tensor-core step (attention.cuh). */
struct mma_sm75 {
    static __device__ __forceinline__ void run(float c[4], const unsigned a[4], unsigned b0,
                                               unsigned b1)
    {
        mma16816_k8(c, a, b0, b1);
    }
};

__device__ __forceinline__ unsigned ld_h2(const T75 *p) { return __ldg((const unsigned *)p); }

__device__ __forceinline__ float dot_h2(unsigned a, unsigned b)
{
    float2 x = __half22float2(*(const __half2 *)&a), y = __half22float2(*(const __half2 *)&b);
    return x.x * y.x + x.y * y.y;
}

/* A K/V tile of BC rows x D halves, staged through registers: chunks of 8
 * halves (16 bytes), N per thread per matrix. */
template <int D, int BC> struct kv_regs {
    static constexpr int CH = D / 8; /* chunks per row */
    static constexpr int N = (BC * CH + FA_WARPS * 32 - 1) / (FA_WARPS * 32);
    uint4 k[N], v[N];

    /* rows [row0, row0 + BC) of K and V (token stride rs); rows >= Tk zero */
    __device__ __forceinline__ void load(const T75 *kg, const T75 *vg, int64_t rs, int row0, int Tk,
                                         int tid)
    {
#pragma unroll
        for (int i = 0; i < N; i++) {
            int c = tid + i * FA_WARPS * 32, r = c / CH, ch = c % CH;
            k[i] = v[i] = make_uint4(0, 0, 0, 0);
            if (c < BC * CH && row0 + r < Tk) {
                int64_t off = (int64_t)(row0 + r) * rs + ch * 8;
                k[i] = __ldg((const uint4 *)(kg + off));
                v[i] = __ldg((const uint4 *)(vg + off));
            }
        }
    }

    /* into sK, sV [BC][D + 8] */
    __device__ __forceinline__ void store(T75 *sK, T75 *sV, int tid) const
    {
#pragma unroll
        for (int i = 0; i < N; i++) {
            int c = tid + i * FA_WARPS * 32, r = c / CH, ch = c % CH;
            if (c < BC * CH) {
                *(uint4 *)(sK + r * (D + 8) + ch * 8) = k[i];
                *(uint4 *)(sV + r * (D + 8) + ch * 8) = v[i];
            }
        }
    }
};

/* qr[r][j] = q_r . rel[row0 + j] for the warp's 16 rows and j < ncols
 * (ncols % 8 == 0); rel rows >= valid count as zeros. B fragments come from
 * global memory: b0 of an n-tile is rel[row0 + n0 + g][k0 + 2t .. + 1]. */
template <int D>
__device__ __forceinline__ void qr_table(float *qr, int ld, const unsigned (&qf)[D / 16][4],
                                         const T75 *rel, int row0, int valid, int ncols, int lane)
{
    const int g = lane / 4, t = lane % 4;
    for (int n0 = 0; n0 < ncols; n0 += 8) {
        float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        int m = row0 + n0 + g;
        const T75 *rr = rel + (int64_t)m * D;
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++) {
            unsigned blo = 0, bhi = 0;
            if (m < valid) {
                blo = ld_h2(rr + kk * 16 + 2 * t);
                bhi = ld_h2(rr + kk * 16 + 8 + 2 * t);
            }
            mma16816_k8(acc, qf[kk], blo, bhi);
        }
        qr[g * ld + n0 + 2 * t] = acc[0];
        qr[g * ld + n0 + 2 * t + 1] = acc[1];
        qr[(g + 8) * ld + n0 + 2 * t] = acc[2];
        qr[(g + 8) * ld + n0 + 2 * t + 1] = acc[3];
    }
}

#define RW_COLS 80 /* ROWT: QRw columns a warp needs (16 query columns + 63 key columns) */
#define RW_LD   84

/* Shared bytes of one block before padding (the launcher's and the
 * kernel's layout agree through this). Region 0 holds the Q tile, then
 * (ROWT) the QRw slices, then the K/V stage; region 1 the persistent QR
 * tables (rel-pos, not ROWT). */
template <int D, int BC, bool ROWT> __host__ __device__ constexpr int smem_region0()
{
    int q = FA_BR * (D + 8) * 2, kv = 2 * BC * (D + 8) * 2,
        rw = ROWT ? FA_WARPS * 16 * RW_LD * 4 : 0;
    return (q > kv ? q : kv) > rw ? (q > kv ? q : kv) : rw;
}

template <int D, int BC, bool ROWT>
__global__ void __launch_bounds__(FA_WARPS * 32, 2) flash_attn_sm75_kernel(const fa_params p)
{
    constexpr int LDS = D + 8, NT = BC / 8;
    extern __shared__ __align__(16) unsigned char fa_smem[];
    T75 *sQ = (T75 *)fa_smem;                                      /* [FA_BR][LDS], prologue */
    T75 *sK = (T75 *)fa_smem, *sV = sK + BC * LDS;                 /* [BC][LDS] each, main loop */
    float *sRW = (float *)fa_smem;                                 /* ROWT: [FA_WARPS][16][RW_LD] */
    float *sQR = (float *)(fa_smem + smem_region0<D, BC, ROWT>()); /* [FA_WARPS][16][qr_ld] */

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int g = lane / 4, t = lane % 4;
    const int b = blockIdx.z, h = blockIdx.y, split = blockIdx.x % p.splits;
    const int q0 = blockIdx.x / p.splits * FA_BR, qw = q0 + warp * 16;
    const fa_ptrs<T75> op = fa_block_ptrs<T75, D>(p, b, h);
    const T75 *qg = op.q, *kg = op.k, *vg = op.v, *kb = op.kb;
    const bool relpos = p.rel_h != NULL;

    /* Q tile -> registers (A fragments, 16 rows x D per warp) */
    for (int c = tid; c < FA_BR * (D / 8); c += FA_WARPS * 32) {
        int r = c / (D / 8), ch = c % (D / 8);
        uint4 x = make_uint4(0, 0, 0, 0);
        if (q0 + r < p.Tq)
            x = __ldg((const uint4 *)(qg + (int64_t)(q0 + r) * p.q_rs + ch * 8));
        *(uint4 *)(sQ + r * LDS + ch * 8) = x;
    }
    __syncthreads();
    unsigned qf[D / 16][4];
    fa_q_frags<T75, D>(qf, sQ, warp, lane);
    __syncthreads(); /* sQ is dead: region 0 is free */

    /* rel-pos: the QR tables (windows), or the ROWT registers */
    float *qrh = sQR + warp * 16 * p.qr_ld, *qrw = qrh + p.nrh;
    int cy[2] = {0, 0}, cx[2] = {0, 0}; /* QR column bases: qy + gh - 1, qx + gw - 1 */
    float bw[ROWT ? NT : 1][4];
    const T75 *rel_h = (const T75 *)p.rel_h;
    int qy = 0;
    if constexpr (ROWT) {
        /* the warp's 16 queries are columns x0 .. x0 + 15 of grid row qy; the
         * rel_w term of query column x0 + i and key column c is
         * q . rel_w[x0 + i + gw - 1 - c]: slice j = i + gw - 1 - c (< 79) of
         * QRw starting at rel_w row x0 */
        const int x0 = qw % p.gw;
        qy = qw / p.gw;
        float *rw = sRW + warp * 16 * RW_LD;
        qr_table<D>(rw, RW_LD, qf, (const T75 *)p.rel_w, x0, 2 * p.gw - 1, RW_COLS, lane);
        __syncwarp();
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int r = e >> 1, c = nt * 8 + 2 * t + (e & 1);
                bw[nt][e] = rw[(g + 8 * r) * RW_LD + g + 8 * r + p.gw - 1 - c] * FA_LOG2E;
            }
    } else if (relpos) {
        qr_table<D>(qrh, p.qr_ld, qf, rel_h, 0, 2 * p.gh - 1, p.nrh, lane);
        qr_table<D>(qrw, p.qr_ld, qf, (const T75 *)p.rel_w, 0, 2 * p.gw - 1, p.nrw, lane);
        fa_grid_bases(p, qw, g, cy, cx);
    }
    const bool active = qw < p.Tq;
    const float sl = p.scale * FA_LOG2E;
    const float inv_gw = relpos ? 1.0f / (float)p.gw : 0.0f;

    float o[D / 8][4], m_run[2], l_run[2];
    fa_acc_init(o, m_run, l_run);

    /* this block's key tiles: [it0, it1) of ceil(Tk / BC) */
    int it0, it1;
    fa_tile_range(p, split, BC, &it0, &it1);
    kv_regs<D, BC> nx;
    if (it0 < it1)
        nx.load(kg, vg, p.kv_rs, it0 * BC, p.Tk, tid);

    for (int it = it0; it < it1; it++) {
        const int k0 = it * BC;
        __syncthreads(); /* every warp is done with the stage (and with region 0's prologue use) */
        nx.store(sK, sV, tid);
        __syncthreads();
        if (it + 1 < it1) /* in flight while this tile is computed */
            nx.load(kg, vg, p.kv_rs, k0 + BC, p.Tk, tid);
        if (!active)
            continue;
        const int kvalid = p.Tk - k0 < BC ? p.Tk - k0 : BC;

        /* S = Q K^T: NT n-tiles of 8 keys */
        float s[NT][4];
        fa_qk<mma_sm75, T75, NT, D>(s, qf, sK, kvalid, lane);

        /* scale, bias (log2 domain), mask, online softmax */
        if constexpr (ROWT) {
            /* rel_h term of key row it: q_r . rel_h[qy - it + gh - 1], each
             * thread over its D/4 columns of rows g and g + 8, summed over
             * the quad */
            const T75 *rr = rel_h + (int64_t)(qy - it + p.gh - 1) * D;
            float h0 = 0.0f, h1 = 0.0f;
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++) {
                unsigned lo = ld_h2(rr + kk * 16 + 2 * t), hi = ld_h2(rr + kk * 16 + 8 + 2 * t);
                h0 += dot_h2(qf[kk][0], lo) + dot_h2(qf[kk][2], hi);
                h1 += dot_h2(qf[kk][1], lo) + dot_h2(qf[kk][3], hi);
            }
            h0 += __shfl_xor_sync(0xffffffffu, h0, 1);
            h0 += __shfl_xor_sync(0xffffffffu, h0, 2);
            h1 += __shfl_xor_sync(0xffffffffu, h1, 1);
            h1 += __shfl_xor_sync(0xffffffffu, h1, 2);
            fa_bias_rowtile<NT>(s, sl, bw, h0 * FA_LOG2E, h1 * FA_LOG2E);
        } else if (relpos) {
            fa_bias_table<NT>(s, sl, qrh, qrw, p.qr_ld, cy, cx, g, k0, p.Tk, p.gw, inv_gw, t);
        } else {
            fa_scale<NT>(s, sl);
        }
        fa_softmax_tile<T75, NT, D / 8>(s, kvalid, kb, k0, t, m_run, l_run, o);

        /* O += P V: NT/2 k-steps of 16 keys */
        fa_pv<mma_sm75, T75, NT, D>(o, s, sV, kvalid, lane);
    }
    if (!active)
        return;
    fa_store<T75, D>(p, o, m_run, l_run, b, h, split, qw, g, t);
}

/* The tensor-core rate of this path's instruction: 8 independent m16n8k8
 * chains a warp, from registers, no memory traffic (the denominator of the
 * attention kernel's efficiency in the T4 estimate). */
__global__ void __launch_bounds__(FA_WARPS * 32) mma_peak_kernel(float *out, int iters)
{
    const unsigned one2 = 0x3c003c00u; /* two fp16 ones */
    float c[8][4];
#pragma unroll
    for (int j = 0; j < 8; j++)
        c[j][0] = c[j][1] = c[j][2] = c[j][3] = 0.0f;
    for (int i = 0; i < iters; i++)
#pragma unroll
        for (int j = 0; j < 8; j++)
            mma1688(c[j], one2, one2, one2);
    float s = 0.0f;
#pragma unroll
    for (int j = 0; j < 8; j++)
        s += c[j][0] + c[j][1] + c[j][2] + c[j][3];
    if (s == 0.0f) /* never (every product is 1): keeps the chains live */
        out[blockIdx.x] = s;
}

} // namespace

// ----------------------------------------------------------------------------
// kernel launchers

/* The padding that keeps the blocks per SM of kernel fn (smem bytes a
 * block) at what fits in `emu` bytes of shared memory per SM (at most 16
 * blocks, sm_75's limit), found with the occupancy calculator once per
 * (kernel, size) and cached on the backend. */
static int sm75_occupancy_pad(eng_cuda *cu, const void *fn, int smem, int emu)
{
    for (int i = 0; i < cu->n_occ; i++)
        if (cu->occ[i].fn == fn && cu->occ[i].smem == smem)
            return cu->occ[i].pad;
    int want = emu / (smem > 0 ? smem : 1), have = 0, optin = 0, pad = 0;
    if (want > 16)
        want = 16;
    if (want < 1)
        want = 1;
    cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, cu->device);
    for (; smem + pad <= optin; pad += 1024) {
        cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, smem + pad);
        if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&have, fn, FA_WARPS * 32,
                                                          (size_t)(smem + pad)) != cudaSuccess)
            break;
        if (have <= want)
            break;
    }
    cudaGetLastError();
    if (smem + pad > optin)
        pad = 0;
    if (cu->n_occ < (int)(sizeof cu->occ / sizeof cu->occ[0])) {
        cu->occ[cu->n_occ].fn = fn;
        cu->occ[cu->n_occ].smem = smem;
        cu->occ[cu->n_occ].pad = pad;
        cu->n_occ++;
    }
    return pad;
}

template <int D, int BC, bool ROWT> static int sm75_launch(eng_cuda *cu, const fa_params *p)
{
    int smem = smem_region0<D, BC, ROWT>();
    if (p->rel_h && !ROWT)
        smem += FA_WARPS * 16 * p->qr_ld * (int)sizeof(float);
    const void *fn = (const void *)flash_attn_sm75_kernel<D, BC, ROWT>;
    int pad = cu->emulate_smem > 0 ? sm75_occupancy_pad(cu, fn, smem, cu->emulate_smem) : 0;
    if (smem + pad > 48 * 1024)
        ENG_CU_CHECK(cudaFuncSetAttribute(flash_attn_sm75_kernel<D, BC, ROWT>,
                                          cudaFuncAttributeMaxDynamicSharedMemorySize, smem + pad));
    dim3 grid((unsigned)((p->Tq + FA_BR - 1) / FA_BR * p->splits), (unsigned)p->H, (unsigned)p->B);
    flash_attn_sm75_kernel<D, BC, ROWT>
        <<<grid, FA_WARPS * 32, (size_t)(smem + pad), cu->stream>>>(*p);
    ENG_CU_LAUNCH_CHECK();
    return 0;
}

/* Tile width: whole grid rows for the 64x64 global attention (ROWT), 32
 * keys for windows and short key ranges, else 64. */
template <int D> static int sm75_dispatch(eng_cuda *cu, const fa_params *p)
{
    if (p->rel_h && p->gw == 64)
        return sm75_launch<D, 64, true>(cu, p);
    if (p->rel_h || p->Tk <= 256)
        return sm75_launch<D, 32, false>(cu, p);
    return sm75_launch<D, 64, false>(cu, p);
}

int eng_cuda_flash_sm75(eng_cuda *cu, const fa_params *p, int D)
{
    switch (D) {
    case 16:
        return sm75_dispatch<16>(cu, p);
    case 32:
        return sm75_dispatch<32>(cu, p);
    case 64:
        return sm75_dispatch<64>(cu, p);
    case 80:
        return sm75_dispatch<80>(cu, p);
    default:
        return eng_error(ENG_EUNSUP, "cuda: sm_75 flash attention head dim %d", D);
    }
}

int eng_cuda_sm75_mma_peak(eng_cuda *cu, double *tflops)
{
    const int iters = 1 << 14, blocks = cu->sm_count * 8;
    cudaEvent_t e0 = NULL, e1 = NULL;
    float ms = 0.0f;
    int rc = 0;
    if (cudaEventCreate(&e0) != cudaSuccess || cudaEventCreate(&e1) != cudaSuccess)
        rc = eng_cuda_fail(cudaGetLastError(), "cudaEventCreate", __FILE__, __LINE__);
    for (int rep = 0; !rc && rep < 2; rep++) { /* the first run JIT-compiles and warms */
        cudaEventRecord(e0, cu->stream);
        mma_peak_kernel<<<blocks, FA_WARPS * 32, 0, cu->stream>>>(NULL, iters);
        cudaEventRecord(e1, cu->stream);
        cudaError_t e = cudaEventSynchronize(e1);
        if (e == cudaSuccess)
            e = cudaGetLastError();
        if (e != cudaSuccess)
            rc = eng_cuda_fail(e, "mma_peak_kernel", __FILE__, __LINE__);
        else
            cudaEventElapsedTime(&ms, e0, e1);
    }
    if (e0)
        cudaEventDestroy(e0);
    if (e1)
        cudaEventDestroy(e1);
    if (!rc)
        *tflops = 2.0 * 16 * 8 * 8 * 8 * (double)iters * FA_WARPS * blocks / (ms * 1e-3) / 1e12;
    return rc;
}
