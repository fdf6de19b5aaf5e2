/*
 * engine/cuda/attention.cuh: what the two flash-attention kernels share
 * (private to engine/cuda/): the launch parameters, the fragment helpers,
 * and the per-tile steps that do not depend on the tensor-core instruction:
 * scale + rel-pos bias, the online softmax, and the final store.
 *
 *   attention.cu        the sm_80+ kernel (mma.sync m16n8k16, cp.async), the
 *                       generic path, the split combine and the dispatch
 *   attention_sm75.cu   the sm_75 kernel (mma.sync m16n8k8, plain loads),
 *                       built from compute_75 PTX only
 *
 * Fragment layout (both kernels, per warp of 32 lanes, g = lane / 4,
 * t = lane % 4): a warp owns 16 query rows; a score tile s[nt][e] holds, for
 * n-tile nt of 8 keys, rows g (e = 0, 1) and g + 8 (e = 2, 3) at key columns
 * nt * 8 + 2t + (e & 1); the output accumulator o[D/8][4] likewise over
 * head-dim columns. Scores are kept in the log2 domain (scaled by log2 e) so
 * the softmax uses exp2.
 */
#ifndef TASAM_ENGINE_CUDA_ATTENTION_CUH
#define TASAM_ENGINE_CUDA_ATTENTION_CUH

#include <math.h>

#include "cuda_internal.cuh"

#define FA_BR    64 /* query rows per block (4 warps x 16) */
#define FA_BC    64 /* keys per tile of the sm_80 kernel (the sm_75 one also uses 32) */
#define FA_WARPS 4
#define FA_LOG2E 1.4426950408889634f

typedef struct fa_params {
    void *out;
    const void *q, *k, *v;
    const void *rel_h, *rel_w; /* NULL: no rel-pos bias */
    const void *key_bias;      /* [B, Tk] or NULL */
    int64_t q_rs, kv_rs;
    int B, H, Tq, Tk;
    float scale;
    int gh, gw;     /* rel-pos grid */
    int nrh, nrw;   /* 2g-1 rounded up to 16 */
    int qr_ld;      /* floats per row of a warp's QR table */
    int splits;     /* key-range splits per query block (1: no split) */
    float *part_o;  /* splits > 1: unnormalised O [splits][B][H][Tq][D] */
    float *part_ml; /* splits > 1: running max (log2 domain) and sum [splits][B][H][Tq][2] */
    int smem_pad;   /* extra dynamic shared bytes per block (occupancy emulation, sm_75 path) */
} fa_params;

/* ---- launchers across the two translation units ---- */

/* attention_sm75.cu: run the sm_75 kernel for head dim D (16, 32, 64 or
 * 80; fp16 storage). p is complete (splits and partial buffers included);
 * the caller merges splits with eng_cuda_flash_combine. */
int eng_cuda_flash_sm75(eng_cuda *cu, const fa_params *p, int D);
/* attention_sm75.cu: TFLOP/s of mma.sync m16n8k8 (f16, fp32 accumulators)
 * from registers at full occupancy, compute_75 code (ops.h,
 * eng_backend_cuda_sm75_peak). */
int eng_cuda_sm75_mma_peak(eng_cuda *cu, double *tflops);
/* attention.cu: merge the key-range splits of p into p->out. */
int eng_cuda_flash_combine(eng_cuda *cu, const fa_params *p, int D);

// ----------------------------------------------------------------------------
// fragment helpers (sm_75+)

__device__ __forceinline__ void ldmatrix_x4(unsigned r[4], const void *smem)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 750
    unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
#endif
}

__device__ __forceinline__ void ldmatrix_x4_trans(unsigned r[4], const void *smem)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 750
    unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
#endif
}

template <typename T> __device__ __forceinline__ unsigned pack2(float lo, float hi);
template <> __device__ __forceinline__ unsigned pack2<__nv_bfloat16>(float lo, float hi)
{
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *(unsigned *)&v;
}
template <> __device__ __forceinline__ unsigned pack2<__half>(float lo, float hi)
{
    __half2 v = __floats2half2_rn(lo, hi);
    return *(unsigned *)&v;
}

// ----------------------------------------------------------------------------
// the block's setup

/* This block's operands of (b, h): q, k, v at head h's columns, the key
 * bias row (NULL: none). */
template <typename T> struct fa_ptrs {
    const T *q, *k, *v, *kb;
};

template <typename T, int D>
__device__ __forceinline__ fa_ptrs<T> fa_block_ptrs(const fa_params &p, int b, int h)
{
    fa_ptrs<T> r;
    r.q = (const T *)p.q + (int64_t)b * p.Tq * p.q_rs + (int64_t)h * D;
    r.k = (const T *)p.k + (int64_t)b * p.Tk * p.kv_rs + (int64_t)h * D;
    r.v = (const T *)p.v + (int64_t)b * p.Tk * p.kv_rs + (int64_t)h * D;
    r.kb = p.key_bias ? (const T *)p.key_bias + (int64_t)b * p.Tk : NULL;
    return r;
}

/* The warp's A fragments of Q (16 rows from qw - q0 of the tile sQ
 * [FA_BR][D + 8], all D columns), m16n8k16 layout. */
template <typename T, int D>
__device__ __forceinline__ void fa_q_frags(unsigned (&qf)[D / 16][4], const T *sQ, int warp,
                                           int lane)
{
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++)
        ldmatrix_x4(qf[kk], sQ + (warp * 16 + (lane % 8) + 8 * ((lane / 8) % 2)) * (D + 8) +
                                kk * 16 + 8 * (lane / 16));
}

/* QR table column bases of this thread's rows qw + g and qw + g + 8:
 * qy + gh - 1 and qx + gw - 1 (a padding row takes row 0's). */
__device__ __forceinline__ void fa_grid_bases(const fa_params &p, int qw, int g, int (&cy)[2],
                                              int (&cx)[2])
{
#pragma unroll
    for (int e = 0; e < 2; e++) {
        int qi = qw + g + 8 * e;
        if (qi < p.Tq) {
            cy[e] = qi / p.gw + p.gh - 1;
            cx[e] = qi % p.gw + p.gw - 1;
        } else {
            cy[e] = p.gh - 1;
            cx[e] = p.gw - 1;
        }
    }
}

/* The online softmax's start: O = 0, running max -inf, running sum 0. */
template <int ND>
__device__ __forceinline__ void fa_acc_init(float (&o)[ND][4], float (&m_run)[2], float (&l_run)[2])
{
#pragma unroll
    for (int i = 0; i < ND; i++)
        o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
    m_run[0] = m_run[1] = -INFINITY;
    l_run[0] = l_run[1] = 0.0f;
}

/* The key tiles of BC keys this block's split covers: [*it0, *it1). */
__device__ __forceinline__ void fa_tile_range(const fa_params &p, int split, int BC, int *it0,
                                              int *it1)
{
    const int ntiles = (p.Tk + BC - 1) / BC;
    const int per = (ntiles + p.splits - 1) / p.splits;
    *it0 = split * per;
    *it1 = min(ntiles, *it0 + per);
}

// ----------------------------------------------------------------------------
// per-tile steps (NT n-tiles of 8 keys; ND = D / 8 output n-tiles). MMA is
// the tensor-core step, MMA::run(c, a, b0, b1): c[16x8] += a[16x16] b[16x8]
// in the m16n8k16 fragment layouts, on whatever instruction the kernel has.

/* s = Q K^T for the tile's keys in sK [NT*8][D + 8]: n-tile pairs past
 * kvalid are skipped (left 0, masked later). */
template <typename MMA, typename T, int NT, int D>
__device__ __forceinline__ void fa_qk(float (&s)[NT][4], const unsigned (&qf)[D / 16][4],
                                      const T *sK, int kvalid, int lane)
{
#pragma unroll
    for (int i = 0; i < NT; i++)
        s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.0f;
#pragma unroll
    for (int np = 0; np < NT / 2; np++) {
        if (np * 16 < kvalid) {
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++) {
                unsigned bb[4];
                ldmatrix_x4(bb, sK + (np * 16 + (lane % 8) + 8 * (lane / 16)) * (D + 8) + kk * 16 +
                                    8 * ((lane / 8) % 2));
                MMA::run(s[2 * np], qf[kk], bb[0], bb[1]);
                MMA::run(s[2 * np + 1], qf[kk], bb[2], bb[3]);
            }
        }
    }
}

/* o += P V for the tile: P from the softmaxed s (rounded to T), V in sV
 * [NT*8][D + 8], k-steps of 16 keys past kvalid skipped. */
template <typename MMA, typename T, int NT, int D>
__device__ __forceinline__ void fa_pv(float (&o)[D / 8][4], const float (&s)[NT][4], const T *sV,
                                      int kvalid, int lane)
{
#pragma unroll
    for (int kk = 0; kk < NT / 2; kk++) {
        if (kk * 16 < kvalid) {
            unsigned pa[4];
            pa[0] = pack2<T>(s[2 * kk][0], s[2 * kk][1]);
            pa[1] = pack2<T>(s[2 * kk][2], s[2 * kk][3]);
            pa[2] = pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]);
            pa[3] = pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
            for (int dp = 0; dp < D / 16; dp++) {
                unsigned bb[4];
                ldmatrix_x4_trans(bb, sV + (kk * 16 + (lane % 8) + 8 * ((lane / 8) % 2)) * (D + 8) +
                                          dp * 16 + 8 * (lane / 16));
                MMA::run(o[2 * dp], pa, bb[0], bb[1]);
                MMA::run(o[2 * dp + 1], pa, bb[2], bb[3]);
            }
        }
    }
}

/* Key tiles that are whole rows of the key grid (ROWT): s = s * sl + bw + bh,
 * bw the rel_w term per column (log2 domain, the same in every tile), bh0 and
 * bh1 the rel_h term of rows g and g + 8 for this tile's key row. */
template <int NT>
__device__ __forceinline__ void fa_bias_rowtile(float (&s)[NT][4], float sl,
                                                const float (&bw)[NT][4], float bh0, float bh1)
{
#pragma unroll
    for (int nt = 0; nt < NT; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++)
            s[nt][e] = fmaf(s[nt][e], sl, bw[nt][e] + (e < 2 ? bh0 : bh1));
}

/* Any tile of a rel-pos grid: the bias of column j (key (ky, kx) of a gw-wide
 * grid) for row g + 8r is qrh[(g + 8r) ld + cy[r] - ky] + qrw[(g + 8r) ld +
 * cx[r] - kx] (the warp's QR tables, ld floats a row; cy, cx from
 * fa_grid_bases). Columns >= Tk are left for the mask. */
template <int NT>
__device__ __forceinline__ void fa_bias_table(float (&s)[NT][4], float sl, const float *qrh,
                                              const float *qrw, int ld, const int (&cy)[2],
                                              const int (&cx)[2], int g, int k0, int Tk, int gw,
                                              float inv_gw, int t)
{
    const float *h0 = qrh + g * ld + cy[0], *h1 = qrh + (g + 8) * ld + cy[1];
    const float *w0 = qrw + g * ld + cx[0], *w1 = qrw + (g + 8) * ld + cx[1];
#pragma unroll
    for (int nt = 0; nt < NT; nt++)
#pragma unroll
        for (int e2 = 0; e2 < 2; e2++) {
            /* one column, both rows */
            int j = k0 + nt * 8 + 2 * t + e2;
            int ky = (int)(((float)j + 0.5f) * inv_gw), kx = j - ky * gw;
            if (j < Tk) {
                s[nt][e2] = fmaf(s[nt][e2], sl, (h0[-ky] + w0[-kx]) * FA_LOG2E);
                s[nt][2 + e2] = fmaf(s[nt][2 + e2], sl, (h1[-ky] + w1[-kx]) * FA_LOG2E);
            }
        }
}

template <int NT> __device__ __forceinline__ void fa_scale(float (&s)[NT][4], float sl)
{
#pragma unroll
    for (int nt = 0; nt < NT; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++)
            s[nt][e] *= sl;
}

/* Mask columns >= kvalid, add the key bias kb[k0 + c] (may be NULL), then
 * the online softmax step: new running max, the rescale of l_run and o,
 * and s replaced by exp2(s - max) (P of this tile, unnormalised). */
template <typename T, int NT, int ND>
__device__ __forceinline__ void fa_softmax_tile(float (&s)[NT][4], int kvalid, const T *kb, int k0,
                                                int t, float (&m_run)[2], float (&l_run)[2],
                                                float (&o)[ND][4])
{
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
#pragma unroll
        for (int e = 0; e < 4; e++) {
            int c = nt * 8 + 2 * t + (e & 1), r = e >> 1;
            float x = s[nt][e];
            if (c >= kvalid)
                x = -INFINITY;
            else if (kb)
                x += eng_to_f(kb[k0 + c]) * FA_LOG2E;
            s[nt][e] = x;
            mx[r] = fmaxf(mx[r], x);
        }
    }
    float corr[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
        float m_new = fmaxf(m_run[r], mx[r]);
        float m_use = m_new == -INFINITY ? 0.0f : m_new;
        corr[r] = exp2f(m_run[r] - m_use);
        m_run[r] = m_new;
        mx[r] = m_use;
    }
    float rs[2] = {0.0f, 0.0f};
#pragma unroll
    for (int nt = 0; nt < NT; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            float pv = exp2f(s[nt][e] - mx[e >> 1]);
            s[nt][e] = pv;
            rs[e >> 1] += pv;
        }
#pragma unroll
    for (int r = 0; r < 2; r++)
        l_run[r] = l_run[r] * corr[r] + rs[r];
#pragma unroll
    for (int i = 0; i < ND; i++) {
        o[i][0] *= corr[0];
        o[i][1] *= corr[0];
        o[i][2] *= corr[1];
        o[i][3] *= corr[1];
    }
}

/* The warp's result for query rows qw + g and qw + 8 + g of (b, h): with
 * splits, the unnormalised O, the running max and sum into the partial
 * buffers (flash_combine_kernel merges them); else out = O / l. */
template <typename T, int D>
__device__ __forceinline__ void fa_store(const fa_params &p, const float (&o)[D / 8][4],
                                         const float (&m_run)[2], const float (&l_run)[2], int b,
                                         int h, int split, int qw, int g, int t)
{
    if (p.splits > 1) {
#pragma unroll
        for (int r = 0; r < 2; r++) {
            float l = l_run[r];
            l += __shfl_xor_sync(0xffffffffu, l, 1);
            l += __shfl_xor_sync(0xffffffffu, l, 2);
            int qi = qw + g + 8 * r;
            if (qi < p.Tq) {
                int64_t row = (((int64_t)split * p.B + b) * p.H + h) * p.Tq + qi;
                float *po = p.part_o + row * D;
#pragma unroll
                for (int i = 0; i < D / 8; i++) {
                    po[i * 8 + 2 * t] = o[i][2 * r];
                    po[i * 8 + 2 * t + 1] = o[i][2 * r + 1];
                }
                if (t == 0) {
                    p.part_ml[row * 2] = m_run[r];
                    p.part_ml[row * 2 + 1] = l;
                }
            }
        }
        return;
    }
    T *og = (T *)p.out + (int64_t)b * p.Tq * p.H * D + (int64_t)h * D;
#pragma unroll
    for (int r = 0; r < 2; r++) {
        float l = l_run[r];
        l += __shfl_xor_sync(0xffffffffu, l, 1);
        l += __shfl_xor_sync(0xffffffffu, l, 2);
        float inv = l > 0.0f ? 1.0f / l : 0.0f;
        int qi = qw + g + 8 * r;
        if (qi < p.Tq) {
            T *orow = og + (int64_t)qi * p.H * D;
#pragma unroll
            for (int i = 0; i < D / 8; i++)
                *(unsigned *)(orow + i * 8 + 2 * t) =
                    pack2<T>(o[i][2 * r] * inv, o[i][2 * r + 1] * inv);
        }
    }
}

#endif
