/*
 * bench/bench_gpu.c: SAM on the CUDA backend. A benchmark, never a test: it
 * asserts nothing about speed. Per model:
 *   - encoder ms per image at batch 1 (and batch B), TFLOP/s against the
 *     analytic count (eng_sam_encoder_flops: ViT-H 5.975 TFLOP an image);
 *   - decoder ms per call for 1, 16 and 64 prompts, the embedding resident
 *     (as tasamd serves a cached image) and uploaded, and the serving path
 *     (decoder + postprocess to masks in one call);
 *   - GPU memory: the backend's bytes, and the device's in use before and
 *     after the load (before: the CUDA context), and after encoding each
 *     batch of --memory-batches;
 * and, on request:
 *   --attention  the attention kernels at the model's shapes (global 64x64
 *                and 14x14 windows with the rel-pos bias, the decoder's
 *                token-to-image and image-to-token) and its two big GEMMs,
 *                in TFLOP/s, and attention / GEMM;
 *   --peaks      the sm_75 kernels' tensor-core instruction rate (mma.sync
 *                m16n8k8 from registers), device copy bandwidth, an
 *                8192^3 GEMM: the ceilings of the T4 estimate
 *                (bench/t4_estimate.py);
 *   --profile-run encoder|decoder   that stage alone (1 + reps calls) for a
 *                TASAM_CUDA_PROFILE table (bench/t4_estimate.py reads it);
 *   --save F / --compare F   the embedding and the decoder's low-res logits
 *                of a fixed random image and 16 prompts, written to F /
 *                compared with F (relative L2, mask IoU): the agreement of
 *                one path (e.g. the sm_75 kernels) with another (fp32).
 * Times are wall-clock medians around the public calls (the host->device
 * copy of the f32 input and the embedding's copy back included);
 * TASAM_CUDA_PROFILE=1 prints the device time per op at exit. Every figure
 * is also printed as one line "FIG <label> <metric> <value>" for scripts
 * (bench/gpu_check.sh); the label is arch/storage/kernels[/graphs].
 *
 * The environment picks the path, as for tasamd: TASAM_CUDA_KERNELS=sm75
 * (the T4's kernels, fp16), TASAM_CUDA_GRAPHS=1 (decoder graphs),
 * TASAM_CUDA_EMULATE_SMEM=65536 (a T4's occupancy for the sm_75 kernels).
 *
 *   build/bench/bench_gpu [--checkpoint FILE]... [--arch vit_b,vit_h]
 *       [--dtype bf16|fp16|fp32] [--reps N] [--batch B] [--weights-dir DIR]
 *       [--decoder-only] [--attention] [--peaks] [--save F] [--compare F]
 *       [--memory-batches 1,2,4,8] [--profile-run encoder|decoder]
 *
 * With no --checkpoint: the fixture `tiny` model (when $TASAM_FIXTURES or
 * ../shared/fixtures has it), then random weights of each --arch, written by
 * mkweights (beside this binary) into --weights-dir (default: this binary's
 * folder) when missing.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "engine/error.h"
#include "engine/ops.h"
#include "engine/sam.h"

#include "bench_util.h"

#ifdef ENG_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

typedef struct bench_opt {
    eng_dtype dt;
    int reps, batch, decoder_only, attention, peaks;
    const char *save, *compare, *mem_batches;
    const char *profile_run; /* "encoder" or "decoder": that alone, for TASAM_CUDA_PROFILE */
} bench_opt;

static uint64_t rng = 88172645463325252ull;
static float frand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((rng >> 40) * (1.0 / 8388608.0)) - 1.0f;
}

static size_t device_used(void)
{
#ifdef ENG_HAVE_CUDA
    size_t fr = 0, tot = 0;
    if (cudaMemGetInfo(&fr, &tot) == cudaSuccess)
        return tot - fr;
#endif
    return 0;
}

static const char *dt_name(eng_dtype dt)
{
    return dt == ENG_BF16 ? "bf16" : (dt == ENG_F16 ? "fp16" : "fp32");
}

static char g_label[96]; /* arch/storage/kernels[/graphs] of the model being timed */

static void fig(const char *metric, double v) { printf("FIG %s %s %.4g\n", g_label, metric, v); }

/* ---- encoder ---- */

static int bench_encoder(eng_sam *m, const bench_opt *o, float *in, float *emb, double *t)
{
    const eng_sam_config *cfg = eng_sam_get_config(m);
    int rc = 0, reps = o->reps;
    for (int i = 0; i < 3 && !rc; i++)
        rc = eng_sam_encode(m, in, 1, emb);
    for (int i = 0; i < reps && !rc; i++) {
        double s = bench_now_ms();
        rc = eng_sam_encode(m, in, 1, emb);
        t[i] = bench_now_ms() - s;
    }
    if (rc) {
        printf("  encode: %s\n", eng_last_error());
        return rc;
    }
    double flops = eng_sam_encoder_flops(cfg);
    double e1 = bench_median(t, reps);
    printf("  encoder batch 1: median %.3f ms (min %.3f, %d reps), %.1f TFLOP/s (%.3f TFLOP "
           "per image)\n",
           e1, t[0], reps, flops / (e1 * 1e-3) / 1e12, flops / 1e12);
    fig("encoder_b1_ms", e1);
    fig("encoder_b1_tflops", flops / (e1 * 1e-3) / 1e12);
    if (o->batch > 1) {
        rc = eng_sam_encode(m, in, o->batch, emb);
        int r8 = reps / 2 > 2 ? reps / 2 : 3;
        for (int i = 0; i < r8 && !rc; i++) {
            double s = bench_now_ms();
            rc = eng_sam_encode(m, in, o->batch, emb);
            t[i] = bench_now_ms() - s;
        }
        if (rc) {
            printf("  encode batch %d: %s\n", o->batch, eng_last_error());
            return rc;
        }
        double eb = bench_median(t, r8) / o->batch;
        printf("  encoder batch %d: median %.3f ms per image, %.1f TFLOP/s\n", o->batch, eb,
               flops / (eb * 1e-3) / 1e12);
        char k[48];
        snprintf(k, sizeof k, "encoder_b%d_ms_per_image", o->batch);
        fig(k, eb);
    }
    return 0;
}

/* ---- decoder ---- */

/* prompts[i]: one positive point each (+ SAM's padding point: 7 tokens) */
static void make_prompts(eng_sam_prompt *pr, float *pts, int *lab, int n)
{
    for (int i = 0; i < n; i++) {
        pts[2 * i] = 100.0f + 13.0f * i;
        pts[2 * i + 1] = 900.0f - 11.0f * i;
        lab[i] = 1;
        memset(&pr[i], 0, sizeof pr[i]);
        pr[i].n_points = 1;
        pr[i].points = pts + 2 * i;
        pr[i].labels = lab + i;
    }
}

static int bench_decoder(eng_sam *m, const bench_opt *o, const float *emb, double *t)
{
    const eng_sam_imginfo info = {1024, 1024, 1024, 1024};
    static const int counts[3] = {1, 16, 64};
    eng_sam_prompt *pr = calloc(64, sizeof *pr);
    float *pts = malloc(64 * 2 * sizeof(float));
    int *lab = malloc(64 * sizeof(int));
    float *iou = malloc(64 * 3 * sizeof(float));
    float *lo = malloc((size_t)64 * 3 * ENG_SAM_LOWRES_FLOATS * sizeof(float));
    int rc = pr && pts && lab && iou && lo ? 0 : eng_error(ENG_ENOMEM, "out of memory");
    if (!rc)
        make_prompts(pr, pts, lab, 64);
    /* as tasamd serves a cached image: the embedding resident on the GPU
     * (eng_sam_decode_cached); and, for comparison, uploaded on every call */
    for (int resident = 1; resident >= 0 && !rc; resident--)
        for (int c = 0; c < 3 && !rc; c++) {
            int n = counts[c];
            const char *key = resident ? "bench" : NULL;
            for (int i = 0; i < 2 && !rc; i++)
                rc = eng_sam_decode_cached(m, key, emb, &info, pr, n, 1, iou, lo);
            for (int i = 0; i < o->reps && !rc; i++) {
                double s = bench_now_ms();
                rc = eng_sam_decode_cached(m, key, emb, &info, pr, n, 1, iou, lo);
                t[i] = bench_now_ms() - s;
            }
            if (rc) {
                printf("  decode: %s\n", eng_last_error());
                break;
            }
            double d = bench_median(t, o->reps);
            printf("  decoder %2d prompt%s (embedding %s): median %.3f ms per call (%.3f ms per "
                   "prompt), %.1f GFLOP/s\n",
                   n, n == 1 ? " " : "s", resident ? "resident" : "uploaded", d, d / n,
                   eng_sam_decoder_flops(7) * n / (d * 1e-3) / 1e9);
            char k[48];
            snprintf(k, sizeof k, "decoder_%d_%s_ms", n, resident ? "resident" : "uploaded");
            fig(k, d);
        }
    /* the serving path: decoder + postprocess to a 1024x768 image's masks
     * in one call, the embedding resident (as tasamd serves a cached image) */
    for (int c = 0; c < 3 && !rc; c++)
        if ((rc = bench_segment(m, emb, pr, counts[c], 1024, 768, o->reps)))
            printf("  segment: %s\n", eng_last_error());
    free(pr), free(pts), free(lab), free(iou), free(lo);
    return rc;
}

/* ---- kernels at the model's shapes ---- */

/* Median ms of `reps` queued calls of one attention (or GEMM) on ctx. */
typedef struct kern_call {
    int attn; /* 1: eng_attention, 0: eng_linear */
    eng_tensor *y, *x, *w, *b, *q, *k, *v;
    eng_attn a;
    eng_act act;
} kern_call;

static double time_kernel(eng_ctx *ctx, const kern_call *kc, int reps)
{
    double t[32];
    if (reps > 32)
        reps = 32;
    for (int r = -2; r < reps; r++) {
        double s = bench_now_ms();
        for (int i = 0; i < 10; i++) {
            if (kc->attn)
                eng_attention(ctx, kc->y, kc->q, kc->k, kc->v, &kc->a);
            else
                eng_linear(ctx, kc->y, kc->x, kc->w, kc->b, kc->act, NULL);
        }
        if (eng_ctx_status(ctx) || eng_backend_sync(ctx->be))
            return -1;
        if (r >= 0)
            t[r] = (bench_now_ms() - s) / 10;
    }
    return bench_median(t, reps);
}

static eng_tensor rand_tensor(eng_ctx *ctx, int64_t r, int64_t c, float scale)
{
    eng_tensor t = eng_new2(ctx, r, c);
    float *h = malloc((size_t)(r * c) * sizeof(float));
    if (h && t.data) {
        for (int64_t i = 0; i < r * c; i++)
            h[i] = frand() * scale;
        eng_backend_upload(ctx->be, t.data, h, (size_t)(r * c));
    }
    free(h);
    return t;
}

/* Attention at grid side g (windows of g x g tokens, nwin of them; g = 64:
 * the global blocks) with SAM's rel-pos bias over a fused qkv buffer, as the
 * encoder runs it; TFLOP/s counts QK^T, PV and the rel-pos tables. */
static double bench_attn_relpos(eng_ctx *ctx, const eng_sam_config *cfg, int g, int nwin, int reps,
                                double *tflops)
{
    size_t mark = eng_ctx_mark(ctx);
    int C = cfg->embed_dim, D = cfg->head_dim, T = g * g;
    eng_tensor qkv = rand_tensor(ctx, (int64_t)nwin * T, 3 * C, 1.0f);
    eng_tensor rh = rand_tensor(ctx, 2 * g - 1, D, 0.2f), rw = rand_tensor(ctx, 2 * g - 1, D, 0.2f);
    eng_tensor out = eng_new2(ctx, (int64_t)nwin * T, C);
    eng_tensor q = qkv, k = qkv, v = qkv;
    size_t es = eng_dtype_size(qkv.dtype);
    if (qkv.data) {
        k.data = (uint8_t *)qkv.data + (size_t)C * es;
        v.data = (uint8_t *)qkv.data + (size_t)2 * C * es;
    }
    eng_relpos rp = {&rh, &rw, g, g};
    kern_call kc = {.attn = 1, .y = &out, .q = &q, .k = &k, .v = &v};
    kc.a = (eng_attn){.B = nwin,
                      .H = cfg->heads,
                      .Tq = T,
                      .Tk = T,
                      .D = D,
                      .q_rs = 3 * C,
                      .kv_rs = 3 * C,
                      .scale = 1.0f / sqrtf((float)D),
                      .relpos = &rp};
    double ms = time_kernel(ctx, &kc, reps);
    double f =
        (double)nwin * cfg->heads * ((double)T * T * D * 4 + (double)T * (2 * g - 1) * D * 4);
    *tflops = ms > 0 ? f / (ms * 1e-3) / 1e12 : 0;
    eng_ctx_release(ctx, mark);
    return ms;
}

/* The decoder's attention (8 heads, no bias): B batches of Tq queries over
 * Tk keys, head dim D. */
static double bench_attn_dec(eng_ctx *ctx, int B, int Tq, int Tk, int D, int reps, double *tflops)
{
    size_t mark = eng_ctx_mark(ctx);
    eng_tensor q = rand_tensor(ctx, (int64_t)B * Tq, 8 * D, 1.0f);
    eng_tensor k = rand_tensor(ctx, (int64_t)B * Tk, 8 * D, 1.0f);
    eng_tensor v = rand_tensor(ctx, (int64_t)B * Tk, 8 * D, 1.0f);
    eng_tensor out = eng_new2(ctx, (int64_t)B * Tq, 8 * D);
    kern_call kc = {.attn = 1, .y = &out, .q = &q, .k = &k, .v = &v};
    kc.a = (eng_attn){.B = B, .H = 8, .Tq = Tq, .Tk = Tk, .D = D, .scale = 1.0f / sqrtf((float)D)};
    double ms = time_kernel(ctx, &kc, reps);
    *tflops = ms > 0 ? 4.0 * B * 8 * Tq * Tk * D / (ms * 1e-3) / 1e12 : 0;
    eng_ctx_release(ctx, mark);
    return ms;
}

static double bench_gemm(eng_ctx *ctx, int M, int K, int N, eng_act act, int reps, double *tflops)
{
    size_t mark = eng_ctx_mark(ctx);
    eng_tensor x = rand_tensor(ctx, M, K, 1.0f), w = rand_tensor(ctx, N, K, 1.0f / sqrtf(K));
    eng_tensor b = rand_tensor(ctx, 1, N, 0.1f), y = eng_new2(ctx, M, N);
    kern_call kc = {.attn = 0, .y = &y, .x = &x, .w = &w, .b = &b, .act = act};
    double ms = time_kernel(ctx, &kc, reps);
    *tflops = ms > 0 ? 2.0 * M * K * N / (ms * 1e-3) / 1e12 : 0;
    eng_ctx_release(ctx, mark);
    return ms;
}

static int bench_kernels(eng_sam *m, const bench_opt *o)
{
    const eng_sam_config *cfg = eng_sam_get_config(m);
    eng_ctx ctx, dctx;
    int C = cfg->embed_dim, rc;
    if ((rc = eng_ctx_init(&ctx, eng_sam_backend(m), (size_t)640 << 20))) {
        printf("  kernels: %s\n", eng_last_error());
        return rc;
    }
    double tf, ms;
    ms = bench_attn_relpos(&ctx, cfg, 64, 1, o->reps, &tf);
    printf("  attention global 64x64, %d heads, D%d, rel-pos: %.3f ms, %.1f TFLOP/s\n", cfg->heads,
           cfg->head_dim, ms, tf);
    fig("attn_global_ms", ms), fig("attn_global_tflops", tf);
    double tg = tf;
    int nw = ((64 + cfg->window - 1) / cfg->window) * ((64 + cfg->window - 1) / cfg->window);
    ms = bench_attn_relpos(&ctx, cfg, cfg->window, nw, o->reps, &tf);
    printf("  attention %d windows of %dx%d, rel-pos: %.3f ms, %.1f TFLOP/s\n", nw, cfg->window,
           cfg->window, ms, tf);
    fig("attn_window_ms", ms), fig("attn_window_tflops", tf);
    double tw = tf;
    ms = bench_gemm(&ctx, 4096, C, 3 * C, ENG_ACT_NONE, o->reps, &tf);
    printf("  GEMM qkv 4096x%dx%d: %.3f ms, %.1f TFLOP/s\n", C, 3 * C, ms, tf);
    fig("gemm_qkv_tflops", tf);
    double tq = tf;
    ms = bench_gemm(&ctx, 4096, C, 4 * C, ENG_ACT_GELU, o->reps, &tf);
    printf("  GEMM mlp1 4096x%dx%d +gelu: %.3f ms, %.1f TFLOP/s\n", C, 4 * C, ms, tf);
    fig("gemm_mlp1_tflops", tf);
    double gemm = 0.5 * (tq + tf);
    if (gemm > 0) {
        printf("  attention / GEMM throughput: global %.0f%%, windows %.0f%%\n", 100 * tg / gemm,
               100 * tw / gemm);
        fig("attn_global_vs_gemm_pct", 100 * tg / gemm);
        fig("attn_window_vs_gemm_pct", 100 * tw / gemm);
    }
    eng_ctx_free(&ctx);
    if ((rc = eng_ctx_init(&dctx, eng_sam_decoder_backend(m), (size_t)640 << 20))) {
        printf("  kernels: %s\n", eng_last_error());
        return rc;
    }
    /* token-to-image for 64 prompts on the shared layer-0 keys (64 x 7 query
     * rows over 4096 keys, the key-split path), and image-to-token */
    ms = bench_attn_dec(&dctx, 1, 448, 4096, 16, o->reps, &tf);
    printf("  decoder token-to-image 448x4096 D16: %.3f ms, %.2f TFLOP/s\n", ms, tf);
    fig("attn_dec_t2i_ms", ms);
    ms = bench_attn_dec(&dctx, 64, 4096, 7, 16, o->reps, &tf);
    printf("  decoder image-to-token 64 x 4096x7 D16: %.3f ms, %.2f TFLOP/s\n", ms, tf);
    fig("attn_dec_i2t_ms", ms);
    eng_ctx_free(&dctx);
    return 0;
}

/* ---- ceilings ---- */

static int bench_peaks(eng_backend *be, int reps)
{
    double tf = 0;
    int rc = eng_backend_cuda_sm75_peak(be, &tf);
    if (rc) {
        printf("  sm_75 tensor-core peak: %s\n", eng_last_error());
        return rc;
    }
    printf("  mma.sync m16n8k8 f16 (the sm_75 kernels' instruction, compute_75 code): %.1f "
           "TFLOP/s\n",
           tf);
    fig("peak_mma_m16n8k8_tflops", tf);
    eng_ctx ctx;
    if ((rc = eng_ctx_init(&ctx, be, (size_t)2200 << 20))) {
        printf("  peaks: %s\n", eng_last_error());
        return rc;
    }
    /* device-to-device copy of 1 GiB (bytes read + written) */
    int64_t n = ((int64_t)1 << 30) / (int64_t)eng_dtype_size(eng_backend_dtype(be));
    eng_tensor a = eng_new1(&ctx, n), b = eng_new1(&ctx, n);
    double t[16];
    for (int r = -1; r < 8 && !eng_ctx_status(&ctx); r++) {
        double s = bench_now_ms();
        for (int i = 0; i < 4; i++)
            eng_copy(&ctx, i % 2 ? &a : &b, i % 2 ? &b : &a);
        if (eng_backend_sync(be))
            break;
        if (r >= 0)
            t[r] = (bench_now_ms() - s) / 4;
    }
    if (!eng_ctx_status(&ctx)) {
        double gbs = 2.0 * (double)(1 << 30) / (bench_median(t, 8) * 1e-3) / 1e9;
        printf("  device copy 1 GiB: %.0f GB/s (read + written)\n", gbs);
        fig("peak_copy_gbs", gbs);
    }
    eng_ctx_release(&ctx, 0);
    double ms = bench_gemm(&ctx, 8192, 8192, 8192, ENG_ACT_NONE, reps, &tf);
    printf("  GEMM 8192^3 (cuBLASLt, %s): %.3f ms, %.1f TFLOP/s\n", dt_name(eng_backend_dtype(be)),
           ms, tf);
    fig("peak_gemm_8192_tflops", tf);
    eng_ctx_free(&ctx);
    return 0;
}

/* ---- agreement ---- */

/* Embedding [256*64*64] and low-res logits [16, 3, 256*256] of a fixed
 * random image (seed 7) and 16 one-point prompts. */
static int agree_outputs(eng_sam *m, float *emb, float *lo, float *iou)
{
    size_t img = (size_t)3 * ENG_SAM_IMG * ENG_SAM_IMG;
    float *in = malloc(img * sizeof(float));
    eng_sam_prompt pr[16];
    float pts[32];
    int lab[16];
    if (!in)
        return eng_error(ENG_ENOMEM, "out of memory");
    uint64_t keep = rng;
    rng = 7;
    for (size_t i = 0; i < img; i++)
        in[i] = 2.0f * frand();
    rng = keep;
    make_prompts(pr, pts, lab, 16);
    const eng_sam_imginfo info = {1024, 1024, 1024, 1024};
    int rc = eng_sam_encode(m, in, 1, emb);
    if (!rc)
        rc = eng_sam_decode(m, emb, &info, pr, 16, 1, iou, lo);
    free(in);
    return rc;
}

static double rel_l2(const float *a, const float *r, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - r[i];
        num += d * d;
        den += (double)r[i] * r[i];
    }
    return num != num ? INFINITY : sqrt(num) / (den > 0 ? sqrt(den) : 1);
}

static int bench_agree(eng_sam *m, const bench_opt *o)
{
    size_t ne = ENG_SAM_EMB_FLOATS, nl = (size_t)16 * 3 * ENG_SAM_LOWRES_FLOATS, ni = 16 * 3;
    size_t nall = ne + nl + ni;
    float *mine = malloc(nall * sizeof(float)), *ref = malloc(nall * sizeof(float));
    int rc = mine && ref ? agree_outputs(m, mine, mine + ne, mine + ne + nl)
                         : eng_error(ENG_ENOMEM, "out of memory");
    if (!rc && o->save) {
        FILE *f = fopen(o->save, "wb");
        rc = f && fwrite(mine, sizeof(float), nall, f) == nall ? 0
                                                               : eng_error(ENG_EIO, "%s", o->save);
        if (f && fclose(f))
            rc = eng_error(ENG_EIO, "%s", o->save);
        if (!rc)
            printf("  outputs of the agreement input written to %s\n", o->save);
    }
    if (!rc && o->compare) {
        FILE *f = fopen(o->compare, "rb");
        rc = f && fread(ref, sizeof(float), nall, f) == nall
                 ? 0
                 : eng_error(ENG_EIO, "%s: cannot read %zu floats", o->compare, nall);
        if (f)
            fclose(f);
        if (!rc) {
            double de = rel_l2(mine, ref, ne), dl = rel_l2(mine + ne, ref + ne, nl), iou_sum = 0;
            double di = 0;
            for (size_t k = 0; k < 48; k++) {
                const float *a = mine + ne + k * ENG_SAM_LOWRES_FLOATS;
                const float *b = ref + ne + k * ENG_SAM_LOWRES_FLOATS;
                size_t in = 0, un = 0;
                for (size_t i = 0; i < ENG_SAM_LOWRES_FLOATS; i++) {
                    in += a[i] > 0 && b[i] > 0;
                    un += a[i] > 0 || b[i] > 0;
                }
                iou_sum += un ? (double)in / un : 1.0;
                double d = fabs((double)mine[ne + nl + k] - ref[ne + nl + k]);
                di = d > di ? d : di;
            }
            printf("  against %s: embedding rel L2 %.3g, logits rel L2 %.3g, mean low-res mask "
                   "IoU %.5f, IoU predictions max|diff| %.3g\n",
                   o->compare, de, dl, iou_sum / 48, di);
            fig("agree_embedding_rel_l2", de);
            fig("agree_logits_rel_l2", dl);
            fig("agree_mask_iou", iou_sum / 48);
        }
    }
    if (rc)
        printf("  agreement: %s\n", eng_last_error());
    free(mine), free(ref);
    return rc;
}

/* ---- a profile run ---- */

/* One stage alone, 1 + reps calls, so that a TASAM_CUDA_PROFILE table (each
 * op's first call left out) holds that stage only: the ViT-H encoder on a
 * random image, or the decoder for 64 one-point prompts on a random
 * resident embedding. Run with TASAM_NO_WARMUP=1, or the load's warm-up is
 * in the table too. bench/t4_estimate.py reads the table. */
static int bench_profile_run(eng_sam *m, const bench_opt *o, const float *in, float *emb)
{
    int rc = 0, calls = 1 + o->reps;
    if (!strcmp(o->profile_run, "encoder")) {
        for (int i = 0; i < calls && !rc; i++)
            rc = eng_sam_encode(m, in, 1, emb);
    } else {
        const eng_sam_imginfo info = {1024, 1024, 1024, 1024};
        eng_sam_prompt pr[64];
        float pts[128], *iou = malloc(64 * 3 * sizeof(float));
        int lab[64];
        make_prompts(pr, pts, lab, 64);
        for (size_t i = 0; i < ENG_SAM_EMB_FLOATS; i++)
            emb[i] = frand();
        rc = iou ? 0 : eng_error(ENG_ENOMEM, "out of memory");
        for (int i = 0; i < calls && !rc; i++)
            rc = eng_sam_decode_cached(m, "bench", emb, &info, pr, 64, 1, iou, NULL);
        free(iou);
    }
    if (rc)
        printf("  profile run: %s\n", eng_last_error());
    else
        printf("  profile run: %s, %d calls\n", o->profile_run, calls);
    fig(!strcmp(o->profile_run, "encoder") ? "profile_encoder_calls" : "profile_decoder64_calls",
        calls);
    return rc;
}

/* ---- one model ---- */

static int bench_model(const char *label, const char *path, const bench_opt *o)
{
    eng_backend *be = NULL, *dbe = NULL;
    size_t dev_ctx = device_used();
    if (eng_backend_cuda_create(&be, 0, o->dt) != 0) {
        printf("%s: no CUDA backend: %s\n", label, eng_last_error());
        return 1;
    }
    /* bf16 is served with the decoder in fp16 (eng_sam_open_backends) */
    if (o->dt == ENG_BF16 && eng_backend_cuda_create(&dbe, 0, ENG_F16) != 0) {
        printf("%s: no fp16 decoder backend: %s\n", label, eng_last_error());
        eng_backend_destroy(be);
        return 1;
    }
    size_t dev0 = device_used();
    int maxb = o->batch;
    char list[64];
    snprintf(list, sizeof list, "%s", o->mem_batches ? o->mem_batches : "");
    for (char *s = NULL, *b = strtok_r(list, ",", &s); b; b = strtok_r(NULL, ",", &s))
        maxb = atoi(b) > maxb ? atoi(b) : maxb;
    eng_sam *m = NULL;
    eng_sam_options opt = {
        .max_points = 16, .max_batch = maxb, .decoder_backend = dbe, .embedding_slots = 1};
    double t0 = bench_now_ms();
    if (eng_sam_load(&m, path, be, &opt) != 0) {
        printf("%s: load %s: %s\n", label, path, eng_last_error());
        eng_backend_destroy(dbe);
        eng_backend_destroy(be);
        return 1;
    }
    double load_ms = bench_now_ms() - t0;
    const eng_sam_config *cfg = eng_sam_get_config(m);
    const char *kern = getenv("TASAM_CUDA_KERNELS"), *gr = getenv("TASAM_CUDA_GRAPHS");
    snprintf(g_label, sizeof g_label, "%s/%s/%s%s", cfg->name, dt_name(o->dt),
             kern && *kern ? kern : "native", gr && *gr && *gr != '0' ? "/graphs" : "");
    printf("== %s (%s: C=%d depth=%d heads=%d hd=%d) on %s; load %.0f ms (with the warm-up), "
           "workspace %.1f MiB\n",
           label, cfg->name, cfg->embed_dim, cfg->depth, cfg->heads, cfg->head_dim,
           eng_backend_describe(be), load_ms, eng_sam_workspace_bytes(m) / 1048576.0);
    fig("load_ms", load_ms);

    size_t img = (size_t)3 * ENG_SAM_IMG * ENG_SAM_IMG;
    float *in = malloc(img * maxb * sizeof(float));
    float *emb = malloc((size_t)ENG_SAM_EMB_FLOATS * maxb * sizeof(float));
    double *t = malloc((size_t)(o->reps > 0 ? o->reps : 1) * sizeof(double));
    int rc = in && emb && t ? 0 : 1;
    for (size_t i = 0; !rc && i < img * maxb; i++)
        in[i] = 2.0f * frand();
    if (!rc && o->profile_run) {
        rc = bench_profile_run(m, o, in, emb);
        goto done;
    }
    if (!rc && !o->decoder_only)
        rc = bench_encoder(m, o, in, emb, t);
    else if (!rc)
        rc = eng_sam_encode(m, in, 1, emb);
    if (!rc)
        rc = bench_decoder(m, o, emb, t);
    if (!rc && o->attention)
        rc = bench_kernels(m, o);
    if (!rc && (o->save || o->compare))
        rc = bench_agree(m, o);
    snprintf(list, sizeof list, "%s", o->mem_batches ? o->mem_batches : "");
    for (char *s = NULL, *b = strtok_r(list, ",", &s); b && !rc; b = strtok_r(NULL, ",", &s)) {
        int nb = atoi(b) > 0 ? atoi(b) : 1;
        rc = eng_sam_encode(m, in, nb, emb);
        printf("  after encoding a batch of %d: device in use %.1f MiB\n", nb,
               device_used() / 1048576.0);
        char k[48];
        snprintf(k, sizeof k, "memory_b%d_mib", nb);
        fig(k, device_used() / 1048576.0);
    }
done:;
    size_t used = 0, total = 0, dused = 0;
    eng_backend_memory(be, &used, &total);
    if (dbe)
        eng_backend_memory(dbe, &dused, NULL);
    size_t dev1 = device_used();
    printf("  GPU memory: backends %.1f MiB (weights + workspace + scratch + staging); device in "
           "use %.1f MiB of %.1f MiB (%.1f MiB before load; %.1f MiB before the first backend, "
           "the CUDA context then)\n",
           (used + dused) / 1048576.0, dev1 / 1048576.0, total / 1048576.0, dev0 / 1048576.0,
           dev_ctx / 1048576.0);
    printf("  the CUDA context and the libraries' code: %.1f MiB (device in use less the "
           "backends)\n",
           ((double)dev1 - (double)(used + dused)) / 1048576.0);
    fig("memory_context_mib", ((double)dev1 - (double)(used + dused)) / 1048576.0);
    fig("memory_backends_mib", (used + dused) / 1048576.0);
    fig("memory_device_mib", dev1 / 1048576.0);
    fig("memory_before_load_mib", dev0 / 1048576.0);
    free(in), free(emb), free(t);
    eng_sam_destroy(m);
    if (!rc && o->peaks)
        rc = bench_peaks(be, o->reps);
    eng_backend_destroy(dbe);
    eng_backend_destroy(be);
    return rc ? 1 : 0;
}

/* FILE for a random-weight architecture, generated with mkweights if missing. */
static int random_weights(const char *self, const char *dir, const char *arch, char *path,
                          size_t cap)
{
    char bindir[1024];
    snprintf(bindir, sizeof bindir, "%s", self);
    char *slash = strrchr(bindir, '/');
    if (slash)
        *slash = '\0';
    else
        snprintf(bindir, sizeof bindir, ".");
    snprintf(path, cap, "%s/sam_%s_random.safetensors", dir ? dir : bindir, arch);
    struct stat st;
    if (stat(path, &st) == 0)
        return 0;
    char cmd[3200];
    snprintf(cmd, sizeof cmd, "'%s/mkweights' --arch %s --out '%s'", bindir, arch, path);
    printf("generating %s weights: %s\n", arch, cmd);
    fflush(stdout);
    return system(cmd) == 0 ? 0 : -1;
}

int main(int argc, char **argv)
{
    const char *ckpts[16];
    int n_ck = 0;
    const char *archs = "vit_b,vit_h", *wdir = NULL;
    bench_opt o = {ENG_BF16, 20, 1, 0, 0, 0, NULL, NULL, NULL, NULL};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--decoder-only")) {
            o.decoder_only = 1;
            continue;
        }
        if (!strcmp(a, "--attention")) {
            o.attention = 1;
            continue;
        }
        if (!strcmp(a, "--peaks")) {
            o.peaks = 1;
            continue;
        }
        if (i + 1 >= argc)
            goto usage;
        const char *v = argv[++i];
        if (!strcmp(a, "--checkpoint") && n_ck < 16)
            ckpts[n_ck++] = v;
        else if (!strcmp(a, "--arch"))
            archs = v;
        else if (!strcmp(a, "--reps"))
            o.reps = atoi(v);
        else if (!strcmp(a, "--batch"))
            o.batch = atoi(v);
        else if (!strcmp(a, "--weights-dir"))
            wdir = v;
        else if (!strcmp(a, "--save"))
            o.save = v;
        else if (!strcmp(a, "--compare"))
            o.compare = v;
        else if (!strcmp(a, "--memory-batches"))
            o.mem_batches = v;
        else if (!strcmp(a, "--profile-run") && (!strcmp(v, "encoder") || !strcmp(v, "decoder")))
            o.profile_run = v;
        else if (!strcmp(a, "--dtype"))
            o.dt = !strcmp(v, "fp32") ? ENG_F32 : (!strcmp(v, "fp16") ? ENG_F16 : ENG_BF16);
        else
            goto usage;
    }
    if (o.reps < 1)
        o.reps = 1;
    if (o.batch < 1)
        o.batch = 1;
    eng_backend *probe = NULL;
    if (eng_backend_cuda_create(&probe, 0, o.dt) != 0) {
        printf("bench_gpu: no GPU run: %s\n", eng_last_error());
        return 0;
    }
    eng_backend_destroy(probe);
    int fails = 0;
    if (n_ck) {
        for (int i = 0; i < n_ck; i++)
            fails += bench_model(ckpts[i], ckpts[i], &o);
        return fails ? 1 : 0;
    }
    const char *fx = getenv("TASAM_FIXTURES");
    char path[1200];
    snprintf(path, sizeof path, "%s/sam_tiny.safetensors", fx && *fx ? fx : "../shared/fixtures");
    struct stat st;
    if (stat(path, &st) == 0)
        fails += bench_model("tiny (fixture)", path, &o);
    char list[256];
    snprintf(list, sizeof list, "%s", archs);
    for (char *save = NULL, *a = strtok_r(list, ",", &save); a; a = strtok_r(NULL, ",", &save)) {
        if (random_weights(argv[0], wdir, a, path, sizeof path) != 0) {
            printf("%s: could not generate random weights\n", a);
            fails++;
            continue;
        }
        char label[64];
        snprintf(label, sizeof label, "%s (random weights)", a);
        fails += bench_model(label, path, &o);
    }
    return fails ? 1 : 0;
usage:
    fprintf(stderr, "usage: bench_gpu [--checkpoint FILE]... [--arch vit_b,vit_h] "
                    "[--dtype bf16|fp16|fp32] [--reps N] [--batch B] [--weights-dir DIR] "
                    "[--decoder-only] [--attention] [--peaks] [--save F] [--compare F] "
                    "[--memory-batches 1,2,4,8] [--profile-run encoder|decoder]\n");
    return 2;
}
