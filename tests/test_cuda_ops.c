/*
 * tests/test_cuda_ops.c: backend agreement. Every op the CUDA backend
 * implements runs on the CPU backend (fp32, the reference) and on the CUDA
 * backend in each storage dtype (bf16 where the GPU has it, fp16, fp32)
 * over random inputs: SAM's real shapes (ViT-H qkv/MLP GEMMs, 14x14 window
 * and 64x64 global attention with the rel-pos bias, the decoder's small
 * attentions, the neck and patch-embed convolutions, the decoder's
 * transposed convolutions, the postprocess resize, binarize's thresholds
 * on signed zeros and neighbouring values) and odd sizes that miss
 * every vector and tile path. Outputs are poisoned with NaN before each GPU
 * run so an unwritten element fails. The error is normalised:
 *   err = ||gpu - cpu||_2 / ||cpu||_2
 * against a per-dtype tolerance; the worst element is printed.
 *
 * Skips (with the reason) where no CUDA device is usable, e.g. in CI.
 */
#include "harness.h"

#include "engine/error.h"
#include "engine/ops.h"
#include "tests/binarize_case.h"

/* The GPU sides: each storage dtype with the native kernels, and fp16 with
 * the sm_75 (T4) kernel set (TASAM_CUDA_KERNELS=sm75, compute_75 PTX
 * JIT-compiled on newer GPUs), under the T4's shared-memory occupancy
 * (TASAM_CUDA_EMULATE_SMEM=65536) so the padding path runs too. */
#define N_DT 4
static const eng_dtype dts[N_DT] = {ENG_BF16, ENG_F16, ENG_F32, ENG_F16};
static const char *dt_names[N_DT] = {"bf16", "fp16", "fp32", "sm75"};
static const char *dt_kernels[N_DT] = {NULL, NULL, NULL, "sm75"};
/* normalised L2 error allowed per storage dtype: inputs and outputs are
 * rounded to the storage type (bf16 has 8 significant bits, fp16 11) */
static const double dt_tol[N_DT] = {1.5e-2, 3e-3, 1e-4, 3e-3};

static eng_backend *cpu, *gpu[N_DT];
static char gpu_why[1024];

typedef struct side {
    eng_backend *be;
    eng_ctx ctx;
} side;

static side S_cpu, S_gpu[N_DT];

/* ---- random numbers ---- */

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static float frand(void) /* uniform [-1, 1) */
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((rng >> 40) * (1.0 / 8388608.0)) - 1.0f;
}
static float *rand_buf(size_t n, float scale)
{
    float *b = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        b[i] = frand() * scale;
    return b;
}

/* ---- tensors on a side ---- */

static eng_tensor up(side *s, int ndim, const int64_t *shape, const float *host)
{
    eng_tensor t = eng_new(&s->ctx, ndim, shape);
    if (host && t.data)
        eng_backend_upload(s->be, t.data, host, (size_t)eng_numel(&t));
    return t;
}
#define UP(s, host, ...)                                                                           \
    up((s), sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t), (int64_t[]){__VA_ARGS__}, (host))

/* A NaN-filled output tensor (poison: every element must be written). */
static eng_tensor out_t(side *s, int ndim, const int64_t *shape)
{
    eng_tensor t = eng_new(&s->ctx, ndim, shape);
    int64_t n = eng_numel(&t);
    float *nan = malloc((size_t)n * sizeof(float));
    for (int64_t i = 0; i < n; i++)
        nan[i] = NAN;
    if (t.data)
        eng_backend_upload(s->be, t.data, nan, (size_t)n);
    free(nan);
    return t;
}
#define OUT(s, ...)                                                                                \
    out_t((s), sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t), (int64_t[]){__VA_ARGS__})

static float *down(side *s, const eng_tensor *t)
{
    int64_t n = eng_numel(t);
    float *h = malloc((size_t)n * sizeof(float));
    if (eng_backend_sync(s->be) != 0 || eng_backend_download(s->be, h, t->data, (size_t)n) != 0)
        for (int64_t i = 0; i < n; i++)
            h[i] = NAN;
    return h;
}

/* Normalised error of got vs ref; prints a line; returns pass. */
static int agree(const char *what, int d, const float *got, const float *ref, size_t n)
{
    double num = 0, den = 0, worst = 0;
    size_t wi = 0;
    int nan = 0;
    for (size_t i = 0; i < n; i++) {
        double e = (double)got[i] - (double)ref[i];
        if (got[i] != got[i]) {
            nan = 1;
            wi = i;
            worst = INFINITY;
            continue;
        }
        num += e * e;
        den += (double)ref[i] * ref[i];
        if (fabs(e) > worst && !nan) {
            worst = fabs(e);
            wi = i;
        }
    }
    double err = nan ? INFINITY : sqrt(num) / (den > 0 ? sqrt(den) : 1.0);
    int ok = err <= dt_tol[d];
    printf("  %-4s %-46s err %.3g (tol %.0e) worst |d| %.3g at %zu (gpu %.5g cpu %.5g)%s\n",
           dt_names[d], what, err, dt_tol[d], worst, wi, got[wi], ref[wi], ok ? "" : "  FAIL");
    return ok;
}

/* Run `fn` (which builds its tensors on a side from shared host inputs and
 * returns a host copy of its output, *n elements) on the CPU and on each
 * GPU dtype, and compare. */
typedef float *(*case_fn)(side *s, const void *arg, size_t *n);

static int run_case(const char *what, case_fn fn, const void *arg)
{
    int ok = 1;
    size_t n_ref = 0;
    size_t mark = eng_ctx_mark(&S_cpu.ctx);
    float *ref = fn(&S_cpu, arg, &n_ref);
    eng_ctx_release(&S_cpu.ctx, mark);
    if (eng_ctx_status(&S_cpu.ctx)) {
        printf("  cpu %s: %s\n", what, eng_last_error());
        free(ref);
        return 0;
    }
    for (int d = 0; d < N_DT; d++) {
        if (!gpu[d])
            continue;
        size_t n = 0;
        size_t gm = eng_ctx_mark(&S_gpu[d].ctx);
        float *got = fn(&S_gpu[d], arg, &n);
        eng_ctx_release(&S_gpu[d].ctx, gm);
        int rc = eng_ctx_status(&S_gpu[d].ctx);
        if (!rc)
            rc = eng_backend_sync(S_gpu[d].be);
        if (rc) {
            printf("  %-4s %s: error %d: %s\n", dt_names[d], what, rc, eng_last_error());
            S_gpu[d].ctx.status = 0;
            ok = 0;
        } else {
            ok &= n == n_ref && agree(what, d, got, ref, n);
        }
        free(got);
    }
    free(ref);
    return ok;
}

#define NEED_GPU()                                                                                 \
    do {                                                                                           \
        if (!gpu[0] && !gpu[1] && !gpu[2] && !gpu[3])                                              \
            T_SKIP("no CUDA device: %s", gpu_why);                                                 \
    } while (0)

/* ---- linear ---- */

typedef struct {
    int M, K, N, ldx; /* ldx > K: x is a row view of a wider buffer */
    int bias, res;    /* res: 1 separate, 2 in place (y = res) */
    eng_act act;
    float wscale;
    const float *x, *w, *b, *r;
} lin_arg;

static float *lin_case(side *s, const void *argp, size_t *n)
{
    const lin_arg *a = argp;
    eng_tensor xb = UP(s, a->x, a->M, a->ldx);
    eng_tensor x = xb;
    x.shape[1] = a->K; /* a row view: stride stays ldx */
    eng_tensor w = UP(s, a->w, a->N, a->K);
    eng_tensor b = UP(s, a->b, a->N);
    eng_tensor r = UP(s, a->r, a->M, a->N);
    eng_tensor y = a->res == 2 ? r : OUT(s, a->M, a->N);
    eng_linear(&s->ctx, &y, &x, &w, a->bias ? &b : NULL, a->act, a->res ? &r : NULL);
    *n = (size_t)a->M * a->N;
    return down(s, &y);
}

static void lin(const char *what, int M, int K, int N, int ldx, int bias, int res, eng_act act)
{
    lin_arg a = {M, K, N, ldx, bias, res, act, 1.0f, NULL, NULL, NULL, NULL};
    float *x = rand_buf((size_t)M * ldx, 1.0f), *w = rand_buf((size_t)N * K, 1.0f / sqrtf(K));
    float *b = rand_buf((size_t)N, 0.5f), *r = rand_buf((size_t)M * N, 1.0f);
    a.x = x, a.w = w, a.b = b, a.r = r;
    char nm[128];
    snprintf(nm, sizeof nm, "linear %s", what);
    T_CHECK(run_case(nm, lin_case, &a), "%s", nm);
    free(x), free(w), free(b), free(r);
}

static void test_linear(void)
{
    NEED_GPU();
    lin("vit_h qkv 4096x1280x3840 +b", 4096, 1280, 3840, 1280, 1, 0, ENG_ACT_NONE);
    lin("vit_h lin1 4096x1280x5120 +b gelu", 4096, 1280, 5120, 1280, 1, 0, ENG_ACT_GELU);
    lin("vit_h lin2 4096x5120x1280 +b +res inplace", 4096, 5120, 1280, 5120, 1, 2, ENG_ACT_NONE);
    lin("window qkv 4900x1280x3840", 4900, 1280, 3840, 1280, 1, 0, ENG_ACT_NONE);
    lin("neck 4096x1280x256 no bias", 4096, 1280, 256, 1280, 0, 0, ENG_ACT_NONE);
    lin("dec mlp 7x256x2048 relu", 7, 256, 2048, 256, 1, 0, ENG_ACT_RELU);
    lin("dec mlp2 7x2048x256 +res", 7, 2048, 256, 2048, 1, 1, ENG_ACT_NONE);
    lin("masks 4x32x65536 (w = activation)", 4, 32, 65536, 32, 0, 0, ENG_ACT_NONE);
    lin("iou 1x256x4", 1, 256, 4, 256, 1, 0, ENG_ACT_NONE);
    lin("strided x 33x70x45 ldx 96", 33, 70, 45, 96, 1, 0, ENG_ACT_NONE);
    lin("odd 37x19x23 gelu +res", 37, 19, 23, 19, 1, 1, ENG_ACT_GELU);
    lin("odd 5x3x7 relu +res", 5, 3, 7, 3, 0, 1, ENG_ACT_RELU);
}

/* ---- matmul_nn ---- */

typedef struct {
    int M, K, N, group;
    const float *x, *w, *b;
} mm_arg;

static float *mm_case(side *s, const void *argp, size_t *n)
{
    const mm_arg *a = argp;
    eng_tensor x = UP(s, a->x, a->M, a->K);
    eng_tensor w = UP(s, a->w, a->K, a->N);
    eng_tensor b = UP(s, a->b, a->N / a->group);
    eng_tensor y = OUT(s, a->M, a->N);
    eng_matmul_nn(&s->ctx, &y, &x, &w, a->b ? &b : NULL, a->group);
    *n = (size_t)a->M * a->N;
    return down(s, &y);
}

static void test_matmul_nn(void)
{
    NEED_GPU();
    static const int sh[][4] = {
        {4096, 256, 256, 4}, {16384, 64, 128, 4}, {31, 17, 12, 3}, {64, 64, 64, 1}};
    for (size_t i = 0; i < sizeof sh / sizeof sh[0]; i++) {
        mm_arg a = {sh[i][0], sh[i][1], sh[i][2], sh[i][3], NULL, NULL, NULL};
        float *x = rand_buf((size_t)a.M * a.K, 1), *w = rand_buf((size_t)a.K * a.N, 0.2f);
        float *b = rand_buf((size_t)a.N, 1);
        a.x = x, a.w = w, a.b = b;
        char nm[96];
        snprintf(nm, sizeof nm, "matmul_nn %dx%dx%d group %d", a.M, a.K, a.N, a.group);
        T_CHECK(run_case(nm, mm_case, &a), "%s", nm);
        free(x), free(w), free(b);
    }
}

/* ---- layernorm ---- */

typedef struct {
    int M, N, res, inplace;
    const float *x, *r, *g, *b;
} ln_arg;

static float *ln_case(side *s, const void *argp, size_t *n)
{
    const ln_arg *a = argp;
    eng_tensor x = UP(s, a->x, a->M, a->N);
    eng_tensor r = UP(s, a->r, a->M, a->N);
    eng_tensor g = UP(s, a->g, a->N);
    eng_tensor b = UP(s, a->b, a->N);
    eng_tensor y = a->inplace ? x : OUT(s, a->M, a->N);
    eng_layernorm(&s->ctx, &y, &x, a->res ? &r : NULL, &g, &b, 1e-6f);
    *n = (size_t)a->M * a->N;
    return down(s, &y);
}

static void test_layernorm(void)
{
    NEED_GPU();
    static const int sh[][4] = {{4096, 1280, 0, 1}, {4096, 768, 1, 0}, {7, 256, 0, 0},
                                {16384, 64, 0, 1},  {100, 100, 1, 1},  {3, 2100, 0, 0},
                                {5, 4, 1, 0}};
    for (size_t i = 0; i < sizeof sh / sizeof sh[0]; i++) {
        ln_arg a = {sh[i][0], sh[i][1], sh[i][2], sh[i][3], NULL, NULL, NULL, NULL};
        float *x = rand_buf((size_t)a.M * a.N, 2), *r = rand_buf((size_t)a.M * a.N, 1);
        float *g = rand_buf((size_t)a.N, 1), *b = rand_buf((size_t)a.N, 1);
        for (int j = 0; j < a.M * a.N; j++)
            x[j] += 0.5f; /* a non-zero mean */
        a.x = x, a.r = r, a.g = g, a.b = b;
        char nm[96];
        snprintf(nm, sizeof nm, "layernorm %dx%d%s%s", a.M, a.N, a.res ? " +res" : "",
                 a.inplace ? " inplace" : "");
        T_CHECK(run_case(nm, ln_case, &a), "%s", nm);
        free(x), free(r), free(g), free(b);
    }
}

/* ---- elementwise ---- */

typedef struct {
    int op; /* 0 activate, 1 add, 2 copy, 3 transpose */
    int64_t n, bn;
    int M, N;
    eng_act act;
    const float *x, *y;
} ew_arg;

static float *ew_case(side *s, const void *argp, size_t *n)
{
    const ew_arg *a = argp;
    eng_tensor x = UP(s, a->x, a->n);
    eng_tensor out = OUT(s, a->n);
    switch (a->op) {
    case 0:
        eng_activate(&s->ctx, &out, &x, a->act);
        break;
    case 1: {
        eng_tensor b = UP(s, a->y, a->bn);
        eng_add(&s->ctx, &out, &x, &b);
        eng_add(&s->ctx, &x, &x, &b); /* in place too: out2 = x + b */
        eng_add(&s->ctx, &out, &out, &x);
        break;
    }
    case 2:
        eng_copy(&s->ctx, &out, &x);
        break;
    case 3: {
        eng_tensor xm = eng_reshape2(x, a->M, a->N);
        eng_tensor ym = eng_reshape2(out, a->N, a->M);
        eng_transpose(&s->ctx, &ym, &xm);
        break;
    }
    }
    *n = (size_t)a->n;
    return down(s, &out);
}

static void test_elementwise(void)
{
    NEED_GPU();
    static const int64_t sizes[] = {4096 * 1280, 1000003, 24, 7};
    for (size_t i = 0; i < 4; i++) {
        int64_t n = sizes[i];
        float *x = rand_buf((size_t)n, 3), *y = rand_buf((size_t)n, 1);
        char nm[96];
        for (int act = 1; act <= 2; act++) {
            ew_arg a = {0, n, n, 0, 0, (eng_act)act, x, y};
            snprintf(nm, sizeof nm, "activate %s n=%lld", act == 1 ? "gelu" : "relu", (long long)n);
            T_CHECK(run_case(nm, ew_case, &a), "%s", nm);
        }
        int64_t bns[3] = {n, n % 256 == 0 ? 256 : 1, n % 8 == 0 ? 8 : n};
        for (int j = 0; j < 3; j++) {
            ew_arg a = {1, n, bns[j], 0, 0, ENG_ACT_NONE, x, y};
            snprintf(nm, sizeof nm, "add n=%lld bn=%lld", (long long)n, (long long)bns[j]);
            T_CHECK(run_case(nm, ew_case, &a), "%s", nm);
        }
        ew_arg c = {2, n, n, 0, 0, ENG_ACT_NONE, x, y};
        snprintf(nm, sizeof nm, "copy n=%lld", (long long)n);
        T_CHECK(run_case(nm, ew_case, &c), "%s", nm);
        free(x), free(y);
    }
    static const int tr[][2] = {{4096, 256}, {256, 4096}, {37, 53}, {1, 9}, {4096, 64}};
    for (size_t i = 0; i < sizeof tr / sizeof tr[0]; i++) {
        int64_t n = (int64_t)tr[i][0] * tr[i][1];
        float *x = rand_buf((size_t)n, 1);
        ew_arg a = {3, n, n, tr[i][0], tr[i][1], ENG_ACT_NONE, x, NULL};
        char nm[96];
        snprintf(nm, sizeof nm, "transpose %dx%d", tr[i][0], tr[i][1]);
        T_CHECK(run_case(nm, ew_case, &a), "%s", nm);
        free(x);
    }
}

/* ---- attention ---- */

typedef struct {
    int B, H, Tq, Tk, D;
    int fused;  /* q, k, v are views into one [B, T, 3*H*D] buffer (Tq == Tk) */
    int relpos; /* grid side g: Tq == Tk == g*g */
    int mask;   /* key_bias with some -1e4 entries */
    const float *qkv, *q, *k, *v, *rh, *rw, *kb;
} at_arg;

static float *at_case(side *s, const void *argp, size_t *n)
{
    const at_arg *a = argp;
    int HD = a->H * a->D;
    eng_tensor q, k, v, qkv, rh, rw, kb;
    eng_attn at = {.B = a->B,
                   .H = a->H,
                   .Tq = a->Tq,
                   .Tk = a->Tk,
                   .D = a->D,
                   .scale = 1.0f / sqrtf((float)a->D)};
    if (a->fused) {
        qkv = UP(s, a->qkv, (int64_t)a->B * a->Tq, 3 * HD);
        q = k = v = qkv;
        size_t es = eng_dtype_size(qkv.dtype);
        if (qkv.data) {
            k.data = (uint8_t *)qkv.data + (size_t)HD * es;
            v.data = (uint8_t *)qkv.data + (size_t)2 * HD * es;
        }
        at.q_rs = at.kv_rs = 3 * HD;
    } else {
        q = UP(s, a->q, (int64_t)a->B * a->Tq, HD);
        k = UP(s, a->k, (int64_t)a->B * a->Tk, HD);
        v = UP(s, a->v, (int64_t)a->B * a->Tk, HD);
    }
    eng_relpos rp;
    if (a->relpos) {
        rh = UP(s, a->rh, 2 * a->relpos - 1, a->D);
        rw = UP(s, a->rw, 2 * a->relpos - 1, a->D);
        rp = (eng_relpos){&rh, &rw, a->relpos, a->relpos};
        at.relpos = &rp;
    }
    if (a->mask) {
        kb = UP(s, a->kb, a->B, a->Tk);
        at.key_bias = &kb;
    }
    eng_tensor out = OUT(s, (int64_t)a->B * a->Tq, HD);
    eng_attention(&s->ctx, &out, &q, &k, &v, &at);
    *n = (size_t)a->B * a->Tq * HD;
    return down(s, &out);
}

static void att(const char *what, int B, int H, int Tq, int Tk, int D, int fused, int relpos,
                int mask)
{
    at_arg a = {B, H, Tq, Tk, D, fused, relpos, mask, NULL, NULL, NULL, NULL, NULL, NULL, NULL};
    size_t HD = (size_t)H * D;
    float *qkv = fused ? rand_buf((size_t)B * Tq * 3 * HD, 1.5f) : NULL;
    float *q = fused ? NULL : rand_buf((size_t)B * Tq * HD, 1.5f);
    float *k = fused ? NULL : rand_buf((size_t)B * Tk * HD, 1.5f);
    float *v = fused ? NULL : rand_buf((size_t)B * Tk * HD, 1.0f);
    float *rh = relpos ? rand_buf((size_t)(2 * relpos - 1) * D, 0.3f) : NULL;
    float *rw = relpos ? rand_buf((size_t)(2 * relpos - 1) * D, 0.3f) : NULL;
    float *kb = NULL;
    if (mask) {
        kb = calloc((size_t)B * Tk, sizeof(float));
        for (int i = 0; i < B * Tk; i++)
            kb[i] = (i % 3 == 1) ? -1e4f : 0.0f;
    }
    a.qkv = qkv, a.q = q, a.k = k, a.v = v, a.rh = rh, a.rw = rw, a.kb = kb;
    char nm[128];
    snprintf(nm, sizeof nm, "attention %s", what);
    T_CHECK(run_case(nm, at_case, &a), "%s", nm);
    free(qkv), free(q), free(k), free(v), free(rh), free(rw), free(kb);
}

static void test_attention(void)
{
    NEED_GPU();
    /* encoder: fused qkv views, rel-pos bias */
    att("vit_h window 25x16x196 D80 relpos", 25, 16, 196, 196, 80, 1, 14, 0);
    att("vit_h global 1x2x4096 D80 relpos", 1, 2, 4096, 4096, 80, 1, 64, 0);
    att("vit_b window 25x12x196 D64 relpos", 25, 12, 196, 196, 64, 1, 14, 0);
    att("vit_b global 1x2x4096 D64 relpos", 1, 2, 4096, 4096, 64, 1, 64, 0);
    att("tiny window 25x2x196 D32 relpos", 25, 2, 196, 196, 32, 1, 14, 0);
    att("tiny global 1x2x4096 D32 relpos", 1, 2, 4096, 4096, 32, 1, 64, 0);
    /* 256 query blocks: no key-range split below 256 SMs (the cases above
     * split on GPUs with more SMs than their 128 blocks) */
    att("vit_h global 1x4x4096 D80 relpos", 1, 4, 4096, 4096, 80, 1, 64, 0);
    /* decoder: token->image, image->token, self */
    att("dec t2i 1x8 7x4096 D16", 1, 8, 7, 4096, 16, 0, 0, 0);
    att("dec i2t 1x8 4096x7 D16", 1, 8, 4096, 7, 16, 0, 0, 0);
    att("dec self 1x8 30x30 D32", 1, 8, 30, 30, 32, 0, 0, 0);
    /* a group of 64 prompts: shared layer-0 keys (one batch of 448 query
     * rows), per-prompt keys (a mask input each) */
    att("dec t2i shared 1x8 448x4096 D16", 1, 8, 448, 4096, 16, 0, 0, 0);
    att("dec t2i group 64x8 7x4096 D16", 64, 8, 7, 4096, 16, 0, 0, 0);
    /* masks, odd sizes, generic head dims */
    att("key_bias 2x2 10x300 D64", 2, 2, 10, 300, 64, 0, 0, 1);
    att("key_bias 2x2 70x200 D32", 2, 2, 70, 200, 32, 0, 0, 1);
    att("odd grid 3x3 relpos 2x3 9x9 D16", 2, 3, 9, 9, 16, 1, 3, 0);
    att("generic D24 relpos 5 2x2 25x25", 2, 2, 25, 25, 24, 1, 5, 0);
    att("generic D40 1x3 77x130 +mask", 1, 3, 77, 130, 40, 0, 0, 1);
    att("generic D7 1x1 3x5", 1, 1, 3, 5, 7, 0, 0, 0);
}

/* ---- convolutions ---- */

typedef struct {
    int chw, Cin, H, W, Cout, k, stride, pad, bias;
    const float *x, *w, *b;
} cv_arg;

static float *cv_case(side *s, const void *argp, size_t *n)
{
    const cv_arg *a = argp;
    int OH = (a->H + 2 * a->pad - a->k) / a->stride + 1;
    int OW = (a->W + 2 * a->pad - a->k) / a->stride + 1;
    eng_tensor x =
        a->chw ? UP(s, a->x, a->Cin, a->H, a->W) : UP(s, a->x, (int64_t)a->H * a->W, a->Cin);
    eng_tensor w = UP(s, a->w, a->Cout, a->Cin, a->k, a->k);
    eng_tensor b = UP(s, a->b, a->Cout);
    eng_tensor y = OUT(s, (int64_t)OH * OW, a->Cout);
    eng_conv2d(&s->ctx, &y, &x, a->chw, a->H, a->W, &w, a->bias ? &b : NULL, a->stride, a->pad);
    *n = (size_t)OH * OW * a->Cout;
    return down(s, &y);
}

static void test_conv2d(void)
{
    NEED_GPU();
    static const int sh[][9] = {
        /* chw Cin H W Cout k s p bias */
        {1, 3, 1024, 1024, 1280, 16, 16, 0, 1}, /* ViT-H patch embed */
        {1, 3, 1024, 1024, 64, 16, 16, 0, 1},   /* tiny patch embed */
        {0, 256, 64, 64, 256, 3, 1, 1, 0},      /* neck 3x3 */
        {0, 1280, 64, 64, 256, 1, 1, 0, 0},     /* neck 1x1 */
        {1, 1, 256, 256, 4, 2, 2, 0, 1},        /* mask downscaling 0 */
        {0, 4, 128, 128, 16, 2, 2, 0, 1},       /* mask downscaling 3 */
        {0, 3, 5, 7, 6, 3, 2, 1, 1},            /* odd */
        {1, 2, 9, 4, 5, 3, 1, 2, 0},            /* odd, CHW, wide pad */
    };
    for (size_t i = 0; i < sizeof sh / sizeof sh[0]; i++) {
        cv_arg a = {sh[i][0], sh[i][1], sh[i][2], sh[i][3], sh[i][4], sh[i][5],
                    sh[i][6], sh[i][7], sh[i][8], NULL,     NULL,     NULL};
        int K = a.Cin * a.k * a.k;
        float *x = rand_buf((size_t)a.Cin * a.H * a.W, 1);
        float *w = rand_buf((size_t)a.Cout * K, 1.0f / sqrtf(K)), *b = rand_buf(a.Cout, 1);
        a.x = x, a.w = w, a.b = b;
        char nm[96];
        snprintf(nm, sizeof nm, "conv2d %s %dx%dx%d k%d s%d p%d -> %d", a.chw ? "chw" : "hwc",
                 a.Cin, a.H, a.W, a.k, a.stride, a.pad, a.Cout);
        T_CHECK(run_case(nm, cv_case, &a), "%s", nm);
        free(x), free(w), free(b);
    }
}

typedef struct {
    int H, W, Cin, Cout, bias;
    const float *x, *w, *b;
} ct_arg;

static float *ct_case(side *s, const void *argp, size_t *n)
{
    const ct_arg *a = argp;
    eng_tensor x = UP(s, a->x, (int64_t)a->H * a->W, a->Cin);
    eng_tensor w = UP(s, a->w, a->Cin, a->Cout, 2, 2);
    eng_tensor b = UP(s, a->b, a->Cout);
    eng_tensor y = OUT(s, (int64_t)4 * a->H * a->W, a->Cout);
    eng_conv_transpose2x2(&s->ctx, &y, &x, a->H, a->W, &w, a->bias ? &b : NULL);
    *n = (size_t)4 * a->H * a->W * a->Cout;
    return down(s, &y);
}

static void test_conv_transpose(void)
{
    NEED_GPU();
    static const int sh[][5] = {{64, 64, 256, 64, 1}, {128, 128, 64, 32, 1}, {3, 5, 7, 3, 0}};
    for (size_t i = 0; i < sizeof sh / sizeof sh[0]; i++) {
        ct_arg a = {sh[i][0], sh[i][1], sh[i][2], sh[i][3], sh[i][4], NULL, NULL, NULL};
        float *x = rand_buf((size_t)a.H * a.W * a.Cin, 1);
        float *w = rand_buf((size_t)a.Cin * a.Cout * 4, 1.0f / sqrtf(a.Cin));
        float *b = rand_buf(a.Cout, 1);
        a.x = x, a.w = w, a.b = b;
        char nm[96];
        snprintf(nm, sizeof nm, "conv_transpose2x2 %dx%dx%d -> %d", a.H, a.W, a.Cin, a.Cout);
        T_CHECK(run_case(nm, ct_case, &a), "%s", nm);
        free(x), free(w), free(b);
    }
}

/* The decoder's upscaling step, act(LN(conv_transpose2x2(x) + b)): fused
 * in one pass on CUDA, the separate ops on the CPU (the reference); `split`
 * runs the separate ops on the GPU too, so both GPU paths are held to the
 * same reference. */
typedef struct {
    int H, W, Cin, Cout, norm, split;
    const float *x, *w, *b, *g, *beta;
} ctn_arg;

static float *ctn_case(side *s, const void *argp, size_t *n)
{
    const ctn_arg *a = argp;
    eng_tensor x = UP(s, a->x, (int64_t)a->H * a->W, a->Cin);
    eng_tensor w = UP(s, a->w, a->Cin, a->Cout, 2, 2);
    eng_tensor b = UP(s, a->b, a->Cout);
    eng_tensor g = UP(s, a->g, a->Cout);
    eng_tensor beta = UP(s, a->beta, a->Cout);
    eng_tensor y = OUT(s, (int64_t)4 * a->H * a->W, a->Cout);
    if (a->split) {
        eng_conv_transpose2x2(&s->ctx, &y, &x, a->H, a->W, &w, &b);
        if (a->norm)
            eng_layernorm(&s->ctx, &y, &y, NULL, &g, &beta, 1e-6f);
        eng_activate(&s->ctx, &y, &y, ENG_ACT_GELU);
    } else {
        eng_conv_transpose2x2_norm_act(&s->ctx, &y, &x, a->H, a->W, &w, &b, a->norm ? &g : NULL,
                                       a->norm ? &beta : NULL, 1e-6f, ENG_ACT_GELU);
    }
    *n = (size_t)4 * a->H * a->W * a->Cout;
    return down(s, &y);
}

static void test_conv_transpose_norm_act(void)
{
    NEED_GPU();
    static const int sh[][5] = {
        /* H W Cin Cout norm */
        {128, 64, 256, 64, 1}, /* decoder upscaling 1, two prompts stacked */
        {256, 128, 64, 32, 0}, /* decoder upscaling 2 */
        {9, 7, 16, 8, 1},      /* one value a lane */
        {5, 3, 24, 40, 1},     /* five */
        {6, 5, 8, 12, 1},      /* Cout % 8 != 0: the separate passes */
    };
    for (size_t i = 0; i < sizeof sh / sizeof sh[0]; i++)
        for (int split = 0; split < 2; split++) {
            ctn_arg a = {sh[i][0], sh[i][1], sh[i][2], sh[i][3], sh[i][4], split,
                         NULL,     NULL,     NULL,     NULL,     NULL};
            float *x = rand_buf((size_t)a.H * a.W * a.Cin, 1);
            float *w = rand_buf((size_t)a.Cin * a.Cout * 4, 1.0f / sqrtf(a.Cin));
            float *b = rand_buf(a.Cout, 1), *g = rand_buf(a.Cout, 1), *beta = rand_buf(a.Cout, 1);
            a.x = x, a.w = w, a.b = b, a.g = g, a.beta = beta;
            char nm[96];
            snprintf(nm, sizeof nm, "conv_transpose2x2%s+gelu %s %dx%dx%d -> %d",
                     a.norm ? "+norm" : "", split ? "separate" : "fused", a.H, a.W, a.Cin, a.Cout);
            T_CHECK(run_case(nm, ctn_case, &a), "%s", nm);
            free(x), free(w), free(b), free(g), free(beta);
        }
}

/* GEMM algorithm classes (gemm.cu): a shape that tunes its class, one that
 * reuses the class's algorithm, one met with tuning off (heuristic), and an
 * output larger than the tuning buffer (tuned on its first rows). */
static void test_gemm_classes(void)
{
    NEED_GPU();
    for (int d = 0; d < N_DT; d++)
        if (gpu[d])
            eng_backend_set_tuning(gpu[d], 1);
    lin("class 40x256x512 (tunes rows 64)", 40, 256, 512, 256, 1, 0, ENG_ACT_NONE);
    lin("class 37x256x512 (reuses rows 64)", 37, 256, 512, 256, 1, 0, ENG_ACT_NONE);
    lin("16384x256x1280 +res (output over the tuning buffer)", 16384, 256, 1280, 256, 1, 1,
        ENG_ACT_NONE);
    for (int d = 0; d < N_DT; d++)
        if (gpu[d])
            eng_backend_set_tuning(gpu[d], 0);
    lin("class 300x256x512 (tuning off)", 300, 256, 512, 256, 1, 0, ENG_ACT_GELU);
    lin("class 33x256x512 (tuning off, class known)", 33, 256, 512, 256, 1, 0, ENG_ACT_NONE);
    for (int d = 0; d < N_DT; d++)
        if (gpu[d])
            eng_backend_set_tuning(gpu[d], 1);
}

/* ---- windows ---- */

typedef struct {
    int H, W, C, ws;
    const float *x, *acc;
} wn_arg;

/* partition, then unpartition-add into a random image: exercises both */
static float *wn_case(side *s, const void *argp, size_t *n)
{
    const wn_arg *a = argp;
    int Hp = (a->H + a->ws - 1) / a->ws * a->ws, Wp = (a->W + a->ws - 1) / a->ws * a->ws;
    eng_tensor x = UP(s, a->x, (int64_t)a->H * a->W, a->C);
    eng_tensor win = OUT(s, (int64_t)Hp * Wp, a->C);
    eng_window_partition(&s->ctx, &win, &x, a->H, a->W, a->ws);
    float *wh = down(s, &win);
    eng_tensor y = UP(s, a->acc, (int64_t)a->H * a->W, a->C);
    eng_window_unpartition_add(&s->ctx, &y, &win, a->H, a->W, a->ws);
    float *yh = down(s, &y);
    size_t nw = (size_t)Hp * Wp * a->C, ny = (size_t)a->H * a->W * a->C;
    float *all = malloc((nw + ny) * sizeof(float));
    memcpy(all, wh, nw * sizeof(float));
    memcpy(all + nw, yh, ny * sizeof(float));
    free(wh), free(yh);
    *n = nw + ny;
    return all;
}

static void test_windows(void)
{
    NEED_GPU();
    static const int sh[][4] = {
        {64, 64, 1280, 14}, {64, 64, 64, 14}, {10, 13, 12, 4}, {5, 3, 3, 2}};
    for (size_t i = 0; i < sizeof sh / sizeof sh[0]; i++) {
        wn_arg a = {sh[i][0], sh[i][1], sh[i][2], sh[i][3], NULL, NULL};
        float *x = rand_buf((size_t)a.H * a.W * a.C, 1),
              *acc = rand_buf((size_t)a.H * a.W * a.C, 1);
        a.x = x, a.acc = acc;
        char nm[96];
        snprintf(nm, sizeof nm, "window partition/unpartition %dx%dx%d ws %d", a.H, a.W, a.C, a.ws);
        T_CHECK(run_case(nm, wn_case, &a), "%s", nm);
        free(x), free(acc);
    }
}

/* ---- resize ---- */

typedef struct {
    int C, H, W, crop_h, crop_w, OH, OW, y0, rows;
    const float *x;
} rs_arg;

static float *rs_case(side *s, const void *argp, size_t *n)
{
    const rs_arg *a = argp;
    eng_tensor x = UP(s, a->x, a->C, a->H, a->W);
    eng_tensor y = OUT(s, a->C, a->rows, a->OW);
    eng_resize_bilinear(&s->ctx, &y, &x, a->crop_h, a->crop_w, a->OH, a->y0);
    *n = (size_t)a->C * a->rows * a->OW;
    return down(s, &y);
}

static void test_resize(void)
{
    NEED_GPU();
    static const int sh[][9] = {{1, 256, 256, 256, 256, 1024, 1024, 0, 1024},
                                {1, 1024, 1024, 684, 1024, 534, 800, 0, 534},
                                {1, 1024, 1024, 684, 1024, 534, 800, 100, 37},
                                {3, 7, 5, 6, 4, 11, 13, 2, 9}};
    for (size_t i = 0; i < sizeof sh / sizeof sh[0]; i++) {
        rs_arg a = {sh[i][0], sh[i][1], sh[i][2], sh[i][3], sh[i][4],
                    sh[i][5], sh[i][6], sh[i][7], sh[i][8], NULL};
        float *x = rand_buf((size_t)a.C * a.H * a.W, 4);
        a.x = x;
        char nm[96];
        snprintf(nm, sizeof nm, "resize %dx%d crop %dx%d -> %dx%d rows %d+%d", a.H, a.W, a.crop_h,
                 a.crop_w, a.OH, a.OW, a.y0, a.rows);
        T_CHECK(run_case(nm, rs_case, &a), "%s", nm);
        free(x);
    }
}

/* ---- binarize: hand-computed, per storage dtype ---- */

static void test_binarize(void)
{
    char why[256];
    NEED_GPU();
    for (int d = 0; d < N_DT; d++) {
        if (!gpu[d])
            continue;
        /* the smallest value above 1 the storage holds (8 and 11 significant
         * bits for bf16 and fp16) */
        float a = dts[d] == ENG_BF16  ? 1.0f + 0x1p-7f
                  : dts[d] == ENG_F16 ? 1.0f + 0x1p-10f
                                      : nextafterf(1.0f, 2.0f);
        T_CHECK(t_binarize_case(gpu[d], a, why, sizeof why) == 0, "%s: %s", dt_names[d], why);
    }
}

/* ---- errors ---- */

static void test_errors(void)
{
    eng_backend *be = NULL;
    int rc = eng_backend_cuda_create(&be, 999, ENG_BF16);
    T_CHECK(rc != 0 && !be, "device 999 must not exist");
    T_CHECK(strlen(eng_last_error()) > 0, "a message");
    printf("  device 999: %s\n", eng_last_error());
    rc = eng_backend_cuda_create(&be, 0, ENG_I32);
    T_CHECK(rc != 0 && !be, "i32 storage refused");
    /* the sm_75 kernel set is the T4's configuration: no bf16; an unknown
     * kernel set is an error, not a silent default */
    setenv("TASAM_CUDA_KERNELS", "sm75", 1);
    rc = eng_backend_cuda_create(&be, 0, ENG_BF16);
    T_CHECK(rc != 0 && !be, "bf16 with the sm_75 kernels refused");
    setenv("TASAM_CUDA_KERNELS", "sm99", 1);
    rc = eng_backend_cuda_create(&be, 0, ENG_F16);
    T_CHECK(rc != 0 && !be, "unknown kernel set refused");
    printf("  TASAM_CUDA_KERNELS=sm99: %s\n", eng_last_error());
    unsetenv("TASAM_CUDA_KERNELS");
    NEED_GPU();
    /* an allocation larger than the device: ENG_ENOMEM-style failure, no crash */
    eng_backend *g = gpu[0] ? gpu[0] : (gpu[1] ? gpu[1] : gpu[2]);
    void *p = eng_backend_alloc(g, (size_t)1 << 50);
    T_CHECK(p == NULL, "a 1 PiB allocation must fail");
    printf("  1 PiB: %s\n", eng_last_error());
    T_CHECK(eng_backend_sync(g) == 0, "backend still usable after a failed allocation");
    eng_ctx c;
    T_CHECK(eng_ctx_init(&c, g, 1024) == 0, "small context");
    eng_tensor t = eng_new2(&c, 1024, 1024);
    T_CHECK(t.data == NULL && eng_ctx_status(&c) == ENG_ENOMEM, "workspace exhaustion");
    eng_ctx_free(&c);
}

static void setup(void)
{
    if (eng_backend_cpu_create(&cpu, 0) != 0)
        return;
    for (int d = 0; d < N_DT; d++) {
        if (dt_kernels[d]) {
            setenv("TASAM_CUDA_KERNELS", dt_kernels[d], 1);
            setenv("TASAM_CUDA_EMULATE_SMEM", "65536", 1);
        }
        int rc = eng_backend_cuda_create(&gpu[d], 0, dts[d]);
        unsetenv("TASAM_CUDA_KERNELS");
        unsetenv("TASAM_CUDA_EMULATE_SMEM");
        if (rc != 0) {
            snprintf(gpu_why, sizeof gpu_why, "%s", eng_last_error());
            gpu[d] = NULL;
            continue;
        }
        printf("  %s\n", eng_backend_describe(gpu[d]));
    }
    size_t ws = (size_t)768 << 20;
    if (eng_ctx_init(&S_cpu.ctx, cpu, ws) != 0)
        return;
    S_cpu.be = cpu;
    for (int d = 0; d < N_DT; d++)
        if (gpu[d]) {
            S_gpu[d].be = gpu[d];
            if (eng_ctx_init(&S_gpu[d].ctx, gpu[d], ws) != 0) {
                snprintf(gpu_why, sizeof gpu_why, "%s", eng_last_error());
                eng_backend_destroy(gpu[d]);
                gpu[d] = NULL;
            }
        }
}

int main(void)
{
    setup();
    T_RUN(test_linear);
    T_RUN(test_matmul_nn);
    T_RUN(test_layernorm);
    T_RUN(test_elementwise);
    T_RUN(test_attention);
    T_RUN(test_conv2d);
    T_RUN(test_conv_transpose);
    T_RUN(test_conv_transpose_norm_act);
    T_RUN(test_gemm_classes);
    T_RUN(test_windows);
    T_RUN(test_resize);
    T_RUN(test_binarize);
    T_RUN(test_errors);
    for (int d = 0; d < N_DT; d++) {
        if (gpu[d])
            eng_ctx_free(&S_gpu[d].ctx);
        eng_backend_destroy(gpu[d]);
    }
    eng_ctx_free(&S_cpu.ctx);
    eng_backend_destroy(cpu);
    return t_summary("test_cuda_ops");
}
