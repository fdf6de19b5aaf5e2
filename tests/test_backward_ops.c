/*
 * tests/test_backward_ops.c: every backward op of the CPU backend against
 * finite differences. Each op's forward is restated here in double
 * precision; the reference gradient of L = sum(R * y) (R random) with
 * respect to every input and parameter comes from central differences of
 * that double forward, and the backend's fp32 gradient must agree within a
 * relative L2 error of 1e-4 (fp32 rounding is about 1e-6 here). The double
 * forward is itself checked against the backend's fp32 forward, so the
 * gradients are those of the function the engine computes. Shapes are
 * random, odd-sized, and large enough to cross the backends' block and
 * thread splits. Also: accumulation (acc = 1 and the += of parameter
 * gradients), in-place use, and ENG_EUNSUP from a backend without backward
 * ops.
 */
#include "harness.h"

#include "engine/backend.h"
#include "engine/error.h"
#include "engine/ops.h"

static eng_backend *be;
static eng_ctx ctx;

static uint64_t rng = 0x2545F4914F6CDD1Dull;
static double urand(double lo, double hi)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return lo + (hi - lo) * ((double)(rng >> 11) * (1.0 / 9007199254740992.0));
}
static int irand(int lo, int hi) { return lo + (int)urand(0, hi - lo + 1 - 1e-9); }

static double *drand_vec(size_t n, double lo, double hi)
{
    double *v = malloc(n * sizeof *v);
    for (size_t i = 0; i < n; i++)
        v[i] = urand(lo, hi);
    return v;
}
static float *to_f32(const double *d, size_t n)
{
    float *f = malloc((n ? n : 1) * sizeof *f);
    for (size_t i = 0; i < n; i++)
        f[i] = (float)d[i];
    return f;
}
static eng_tensor view2(void *p, int64_t a, int64_t b)
{
    return eng_view(p, ENG_F32, ENG_DEV_CPU, 2, (int64_t[]){a, b});
}

/* The double forward under test: writes y (its size is known to the caller). */
typedef void (*fwd_fn)(void *arg, double *y);

/* Relative L2 error of the fp32 gradient g against central differences of
 * L = sum(R y) in the parameter p (n values, perturbed in place). At most
 * `max_n` entries are checked, chosen at random when n is larger. */
static double fd_rel_err(fwd_fn f, void *arg, double *p, size_t n, const float *g, const double *R,
                         size_t ny, size_t max_n, size_t *worst)
{
    double *y = malloc(ny * sizeof *y);
    double num = 0, den = 0, wmax = -1;
    size_t count = n < max_n ? n : max_n;
    for (size_t c = 0; c < count; c++) {
        size_t i = n <= max_n ? c : (size_t)urand(0, (double)n - 1e-9);
        double save = p[i], h = 1e-5 * (fabs(save) > 1 ? fabs(save) : 1);
        double lp = 0, lm = 0;
        p[i] = save + h;
        f(arg, y);
        for (size_t j = 0; j < ny; j++)
            lp += R[j] * y[j];
        p[i] = save - h;
        f(arg, y);
        for (size_t j = 0; j < ny; j++)
            lm += R[j] * y[j];
        p[i] = save;
        double ref = (lp - lm) / (2 * h), d = g[i] - ref;
        num += d * d;
        den += ref * ref;
        if (fabs(d) > wmax) {
            wmax = fabs(d);
            *worst = i;
        }
    }
    free(y);
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

#define FD_TOL 1e-4

#define CHECK_GRAD(name, f, arg, p, n, g, R, ny, max_n)                                            \
    do {                                                                                           \
        size_t w_ = 0;                                                                             \
        double e_ = fd_rel_err(f, arg, p, n, g, R, ny, max_n, &w_);                                \
        T_CHECK(e_ <= FD_TOL,                                                                      \
                "%s: relative L2 error %.3g against finite differences (worst "                    \
                "element %zu: %g)",                                                                \
                name, e_, w_, (double)(g)[w_]);                                                    \
    } while (0)

/* Max |fp32 - double| relative to the largest |double|. */
static double fwd_err(const float *y32, const double *y, size_t n)
{
    double m = 0, s = 1e-30;
    for (size_t i = 0; i < n; i++) {
        m = fmax(m, fabs(y32[i] - y[i]));
        s = fmax(s, fabs(y[i]));
    }
    return m / s;
}

/* ------------------------------------------------------------------ */
/* linear                                                               */

typedef struct {
    int M, K, N, ldx;
    double *x, *w, *b;
} lin_case;

static void lin_fwd(void *p, double *y)
{
    const lin_case *c = p;
    for (int m = 0; m < c->M; m++)
        for (int n = 0; n < c->N; n++) {
            double s = c->b[n];
            for (int k = 0; k < c->K; k++)
                s += c->x[(size_t)m * c->ldx + k] * c->w[(size_t)n * c->K + k];
            y[(size_t)m * c->N + n] = s;
        }
}

static void linear_case(int M, int K, int N, int ldx, size_t max_n)
{
    lin_case c = {M,
                  K,
                  N,
                  ldx,
                  drand_vec((size_t)M * ldx, -1, 1),
                  drand_vec((size_t)N * K, -1, 1),
                  drand_vec((size_t)N, -1, 1)};
    size_t ny = (size_t)M * N;
    double *R = drand_vec(ny, -1, 1), *y = malloc(ny * sizeof *y);
    float *x32 = to_f32(c.x, (size_t)M * ldx), *w32 = to_f32(c.w, (size_t)N * K);
    float *b32 = to_f32(c.b, N), *R32 = to_f32(R, ny), *y32 = malloc(ny * sizeof *y32);
    float *dx = calloc((size_t)M * K, sizeof *dx), *dw = calloc((size_t)N * K, sizeof *dw);
    float *db = calloc(N, sizeof *db);
    eng_tensor tx = view2(x32, M, K), tw = view2(w32, N, K), tb = view2(b32, 1, N);
    tx.stride[0] = ldx;
    eng_tensor ty = view2(y32, M, N), tR = view2(R32, M, N);
    eng_tensor tdx = view2(dx, M, K), tdw = view2(dw, N, K), tdb = view2(db, 1, N);
    eng_linear(&ctx, &ty, &tx, &tw, &tb, ENG_ACT_NONE, NULL);
    eng_linear_backward(&ctx, &tdx, &tdw, &tdb, &tR, &tx, &tw, 0);
    T_REQUIRE(eng_ctx_status(&ctx) == 0, "ops failed: %s", eng_last_error());
    lin_fwd(&c, y);
    T_CHECK(fwd_err(y32, y, ny) < 1e-5, "forward differs from the reference by %g",
            fwd_err(y32, y, ny));
    /* dx is laid out [M, K]; the reference perturbs the strided x */
    float *dxs = calloc((size_t)M * ldx, sizeof *dxs);
    for (int m = 0; m < M; m++)
        memcpy(dxs + (size_t)m * ldx, dx + (size_t)m * K, (size_t)K * sizeof *dx);
    CHECK_GRAD("linear dx", lin_fwd, &c, c.x, (size_t)M * ldx, dxs, R, ny, max_n);
    CHECK_GRAD("linear dw", lin_fwd, &c, c.w, (size_t)N * K, dw, R, ny, max_n);
    CHECK_GRAD("linear db", lin_fwd, &c, c.b, (size_t)N, db, R, ny, max_n);

    /* acc: dx += again, dw and db accumulate: every gradient doubles */
    eng_linear_backward(&ctx, &tdx, &tdw, &tdb, &tR, &tx, &tw, 1);
    /* dx alone (no x given) gives the same dx */
    float *dx2 = calloc((size_t)M * K, sizeof *dx2);
    eng_tensor tdx2 = view2(dx2, M, K);
    eng_linear_backward(&ctx, &tdx2, NULL, NULL, &tR, NULL, &tw, 0);
    T_REQUIRE(eng_ctx_status(&ctx) == 0, "ops failed: %s", eng_last_error());
    double e = 0;
    for (size_t i = 0; i < (size_t)M * K; i++)
        e = fmax(e, fabs(dx[i] - 2 * dx2[i]) / (1 + fabs(dx2[i])));
    T_CHECK(e < 1e-5, "accumulated dx differs from twice one pass by %g", e);
    /* dw accumulated twice equals twice the first pass (checked against a fresh one) */
    float *dw1 = calloc((size_t)N * K, sizeof *dw1);
    eng_tensor tdw1 = view2(dw1, N, K);
    eng_linear_backward(&ctx, NULL, &tdw1, NULL, &tR, &tx, &tw, 0);
    e = 0;
    for (size_t i = 0; i < (size_t)N * K; i++)
        e = fmax(e, fabs(dw[i] - 2 * dw1[i]) / (1 + fabs(dw1[i])));
    T_CHECK(e < 1e-5, "dw did not accumulate: differs from twice one pass by %g", e);
    free(c.x), free(c.w), free(c.b), free(R), free(y), free(x32), free(w32), free(b32), free(R32);
    free(y32), free(dx), free(dw), free(db), free(dxs), free(dx2), free(dw1);
}

static void test_linear_backward(void)
{
    linear_case(7, 13, 9, 13, 2000);
    linear_case(5, 11, 6, 17, 2000); /* x a strided row view */
    linear_case(300, 40, 70, 40, 60);
    linear_case(3, 32, 2000, 32, 60); /* few rows, many outputs (the masks' product) */
    for (int i = 0; i < 3; i++)       /* random shapes, x rows at a stride of 70..75 */
        linear_case(irand(1, 90), irand(1, 70), irand(1, 90), irand(70, 75), 60);
}

/* ------------------------------------------------------------------ */
/* layernorm                                                            */

typedef struct {
    int M, N;
    double eps;
    double *x, *g, *b;
} ln_case;

static void ln_fwd(void *p, double *y)
{
    const ln_case *c = p;
    for (int m = 0; m < c->M; m++) {
        const double *x = c->x + (size_t)m * c->N;
        double mean = 0, var = 0;
        for (int j = 0; j < c->N; j++)
            mean += x[j];
        mean /= c->N;
        for (int j = 0; j < c->N; j++)
            var += (x[j] - mean) * (x[j] - mean);
        var /= c->N;
        for (int j = 0; j < c->N; j++)
            y[(size_t)m * c->N + j] = (x[j] - mean) / sqrt(var + c->eps) * c->g[j] + c->b[j];
    }
}

static void layernorm_case(int M, int N, double eps, double offset, double spread)
{
    ln_case c = {M,
                 N,
                 eps,
                 drand_vec((size_t)M * N, offset - spread, offset + spread),
                 drand_vec(N, 0.5, 1.5),
                 drand_vec(N, -1, 1)};
    size_t n = (size_t)M * N;
    double *R = drand_vec(n, -1, 1), *y = malloc(n * sizeof *y);
    float *x32 = to_f32(c.x, n), *g32 = to_f32(c.g, N), *b32 = to_f32(c.b, N), *R32 = to_f32(R, n);
    float *y32 = malloc(n * sizeof *y32), *dx = malloc(n * sizeof *dx);
    float *dg = calloc(N, sizeof *dg), *db = calloc(N, sizeof *db);
    eng_tensor tx = view2(x32, M, N), tg = view2(g32, 1, N), tb = view2(b32, 1, N);
    eng_tensor ty = view2(y32, M, N), tR = view2(R32, M, N), tdx = view2(dx, M, N);
    eng_tensor tdg = view2(dg, 1, N), tdb = view2(db, 1, N);
    eng_layernorm(&ctx, &ty, &tx, NULL, &tg, &tb, (float)eps);
    eng_layernorm_backward(&ctx, &tdx, &tdg, &tdb, &tR, &tx, &tg, (float)eps, 0);
    T_REQUIRE(eng_ctx_status(&ctx) == 0, "ops failed: %s", eng_last_error());
    ln_fwd(&c, y);
    T_CHECK(fwd_err(y32, y, n) < 1e-5, "forward differs from the reference by %g",
            fwd_err(y32, y, n));
    CHECK_GRAD("layernorm dx", ln_fwd, &c, c.x, n, dx, R, n, 400);
    CHECK_GRAD("layernorm dg", ln_fwd, &c, c.g, (size_t)N, dg, R, n, 400);
    CHECK_GRAD("layernorm db", ln_fwd, &c, c.b, (size_t)N, db, R, n, 400);

    /* in place (dx aliases dy) gives the same; acc adds */
    float *inpl = malloc(n * sizeof *inpl);
    memcpy(inpl, R32, n * sizeof *inpl);
    eng_tensor tin = view2(inpl, M, N);
    eng_layernorm_backward(&ctx, &tin, NULL, NULL, &tin, &tx, &tg, (float)eps, 0);
    eng_layernorm_backward(&ctx, &tdx, NULL, NULL, &tR, &tx, &tg, (float)eps, 1);
    T_REQUIRE(eng_ctx_status(&ctx) == 0, "ops failed: %s", eng_last_error());
    double e = 0;
    for (size_t i = 0; i < n; i++)
        e = fmax(e, fabs(inpl[i] - 0.5f * dx[i]) / (1 + fabs(inpl[i])));
    T_CHECK(e < 1e-5, "in-place or accumulated dx differs by %g", e);
    free(c.x), free(c.g), free(c.b), free(R), free(y), free(x32), free(g32), free(b32), free(R32);
    free(y32), free(dx), free(dg), free(db), free(inpl);
}

static void test_layernorm_backward(void)
{
    layernorm_case(6, 37, 1e-5, 0, 2);
    layernorm_case(40, 256, 1e-5, 3, 2); /* decoder width, offset rows */
    layernorm_case(70, 64, 1e-6, -1, 0.5);
    layernorm_case(3, 4, 1e-6, 0, 1);
}

/* ------------------------------------------------------------------ */
/* activations                                                          */

typedef struct {
    size_t n;
    eng_act act;
    double *x;
} act_case;

static void act_fwd(void *p, double *y)
{
    const act_case *c = p;
    for (size_t i = 0; i < c->n; i++) {
        double v = c->x[i];
        y[i] = c->act == ENG_ACT_GELU ? 0.5 * v * (1 + erf(v / sqrt(2.0))) : (v > 0 ? v : 0);
    }
}

static void act_case_run(eng_act act, size_t n, size_t max_n)
{
    act_case c = {n, act, drand_vec(n, -5, 5)};
    for (size_t i = 0; act == ENG_ACT_RELU && i < n; i++)
        if (fabs(c.x[i]) < 1e-3) /* the kink: no derivative there */
            c.x[i] = 0.5;
    double *R = drand_vec(n, -1, 1), *y = malloc(n * sizeof *y);
    float *x32 = to_f32(c.x, n), *R32 = to_f32(R, n), *y32 = malloc(n * sizeof *y32);
    float *dx = malloc(n * sizeof *dx);
    eng_tensor tx = view2(x32, 1, n), ty = view2(y32, 1, n), tR = view2(R32, 1, n);
    eng_tensor tdx = view2(dx, 1, n);
    eng_activate(&ctx, &ty, &tx, act);
    eng_activate_backward(&ctx, &tdx, &tR, &tx, act);
    T_REQUIRE(eng_ctx_status(&ctx) == 0, "ops failed: %s", eng_last_error());
    act_fwd(&c, y);
    T_CHECK(fwd_err(y32, y, n) < 1e-5, "forward differs from the reference by %g",
            fwd_err(y32, y, n));
    CHECK_GRAD(act == ENG_ACT_GELU ? "gelu dx" : "relu dx", act_fwd, &c, c.x, n, dx, R, n, max_n);
    /* the ReLU's output serves as its input; in place gives the same */
    eng_activate_backward(&ctx, &tR, &tR, act == ENG_ACT_RELU ? &ty : &tx, act);
    double e = 0;
    for (size_t i = 0; i < n; i++)
        e = fmax(e, fabs(R32[i] - dx[i]));
    T_CHECK(e == 0, "in-place backward differs by %g", e);
    free(c.x), free(R), free(y), free(x32), free(R32), free(y32), free(dx);
}

static void test_activation_backward(void)
{
    act_case_run(ENG_ACT_GELU, 3000, 3000);
    act_case_run(ENG_ACT_RELU, 3000, 3000);
    act_case_run(ENG_ACT_GELU, 70000, 200); /* crosses the parallel split */
}

/* ------------------------------------------------------------------ */
/* attention                                                            */

typedef struct {
    int B, H, Tq, Tk, D, q_rs, kv_rs;
    double scale;
    double *q, *k, *v, *kbias; /* q [B*Tq, q_rs], k and v [B*Tk, kv_rs], kbias [B*Tk] or NULL */
} att_case;

static void att_fwd(void *p, double *out)
{
    const att_case *c = p;
    int HD = c->H * c->D;
    double *s = malloc((size_t)c->Tk * sizeof *s);
    for (int b = 0; b < c->B; b++)
        for (int h = 0; h < c->H; h++)
            for (int i = 0; i < c->Tq; i++) {
                const double *q = c->q + ((size_t)b * c->Tq + i) * c->q_rs + h * c->D;
                double mx = -INFINITY, sum = 0;
                for (int j = 0; j < c->Tk; j++) {
                    const double *k = c->k + ((size_t)b * c->Tk + j) * c->kv_rs + h * c->D;
                    double d = 0;
                    for (int e = 0; e < c->D; e++)
                        d += q[e] * k[e];
                    s[j] = d * c->scale + (c->kbias ? c->kbias[(size_t)b * c->Tk + j] : 0);
                    mx = fmax(mx, s[j]);
                }
                for (int j = 0; j < c->Tk; j++)
                    sum += (s[j] = exp(s[j] - mx));
                double *o = out + ((size_t)b * c->Tq + i) * HD + h * c->D;
                for (int e = 0; e < c->D; e++) {
                    double acc = 0;
                    for (int j = 0; j < c->Tk; j++)
                        acc += s[j] / sum * c->v[((size_t)b * c->Tk + j) * c->kv_rs + h * c->D + e];
                    o[e] = acc;
                }
            }
    free(s);
}

/* Gradient laid out [rows, H*D] spread into the strided layout [rows, rs]. */
static float *spread(const float *g, int rows, int HD, int rs)
{
    float *o = calloc((size_t)rows * rs, sizeof *o);
    for (int r = 0; r < rows; r++)
        memcpy(o + (size_t)r * rs, g + (size_t)r * HD, (size_t)HD * sizeof *g);
    return o;
}

static void attention_case(int B, int H, int Tq, int Tk, int D, int fused, int with_bias,
                           size_t max_n)
{
    int HD = H * D, q_rs = fused ? 3 * HD : HD, kv_rs = fused ? 3 * HD : HD;
    att_case c = {B, H, Tq, Tk, D, q_rs, kv_rs, 1.0 / sqrt(D), NULL, NULL, NULL, NULL};
    c.q = drand_vec((size_t)B * Tq * q_rs, -1.5, 1.5);
    c.k = drand_vec((size_t)B * Tk * kv_rs, -1.5, 1.5);
    c.v = drand_vec((size_t)B * Tk * kv_rs, -1, 1);
    if (with_bias) {
        c.kbias = drand_vec((size_t)B * Tk, -2, 0);
        c.kbias[0] = -1e4; /* a masked key */
    }
    size_t no = (size_t)B * Tq * HD, nk = (size_t)B * Tk * HD;
    double *R = drand_vec(no, -1, 1), *y = malloc(no * sizeof *y);
    float *q32 = to_f32(c.q, (size_t)B * Tq * q_rs), *k32 = to_f32(c.k, (size_t)B * Tk * kv_rs);
    float *v32 = to_f32(c.v, (size_t)B * Tk * kv_rs), *R32 = to_f32(R, no);
    float *kb32 = with_bias ? to_f32(c.kbias, (size_t)B * Tk) : NULL;
    float *y32 = malloc(no * sizeof *y32), *dq = malloc(no * sizeof *dq);
    float *dk = malloc(nk * sizeof *dk), *dv = malloc(nk * sizeof *dv);
    eng_tensor tq = view2(q32, (int64_t)B * Tq, q_rs), tk = view2(k32, (int64_t)B * Tk, kv_rs);
    eng_tensor tv = view2(v32, (int64_t)B * Tk, kv_rs), tkb = view2(kb32, B, Tk);
    eng_tensor ty = view2(y32, (int64_t)B * Tq, HD), tR = view2(R32, (int64_t)B * Tq, HD);
    eng_tensor tdq = view2(dq, (int64_t)B * Tq, HD), tdk = view2(dk, (int64_t)B * Tk, HD);
    eng_tensor tdv = view2(dv, (int64_t)B * Tk, HD);
    eng_attn a = {.B = B,
                  .H = H,
                  .Tq = Tq,
                  .Tk = Tk,
                  .D = D,
                  .q_rs = q_rs,
                  .kv_rs = kv_rs,
                  .scale = (float)c.scale,
                  .key_bias = with_bias ? &tkb : NULL};
    eng_attention(&ctx, &ty, &tq, &tk, &tv, &a);
    eng_attention_backward(&ctx, &tdq, &tdk, &tdv, &tR, &tq, &tk, &tv, &a);
    T_REQUIRE(eng_ctx_status(&ctx) == 0, "ops failed: %s", eng_last_error());
    att_fwd(&c, y);
    T_CHECK(fwd_err(y32, y, no) < 1e-5, "forward differs from the reference by %g",
            fwd_err(y32, y, no));
    float *gq = spread(dq, B * Tq, HD, q_rs), *gk = spread(dk, B * Tk, HD, kv_rs),
          *gv = spread(dv, B * Tk, HD, kv_rs);
    /* (columns outside the heads' slices of a fused buffer have gradient 0,
     * and the sampled reference agrees) */
    CHECK_GRAD("attention dq", att_fwd, &c, c.q, (size_t)B * Tq * q_rs, gq, R, no, max_n);
    CHECK_GRAD("attention dk", att_fwd, &c, c.k, (size_t)B * Tk * kv_rs, gk, R, no, max_n);
    CHECK_GRAD("attention dv", att_fwd, &c, c.v, (size_t)B * Tk * kv_rs, gv, R, no, max_n);
    free(c.q), free(c.k), free(c.v), free(c.kbias), free(R), free(y), free(q32), free(k32);
    free(v32), free(R32), free(kb32), free(y32), free(dq), free(dk), free(dv), free(gq), free(gk);
    free(gv);
}

static void test_attention_backward(void)
{
    attention_case(2, 3, 11, 9, 5, 0, 1, 2000);
    attention_case(1, 2, 7, 300, 8, 1, 0, 150);  /* tokens to image: few queries, many keys */
    attention_case(1, 2, 300, 7, 8, 0, 0, 150);  /* image to tokens: one large query block */
    attention_case(1, 2, 150, 600, 4, 0, 1, 40); /* several query blocks per head */
}

/* ------------------------------------------------------------------ */
/* 2x2 transposed convolution                                           */

typedef struct {
    int H, W, Cin, Cout;
    double *x, *w, *b; /* x [H*W, Cin], w [Cin, Cout, 2, 2], b [Cout] */
} ct_case;

static void ct_fwd(void *p, double *y)
{
    const ct_case *c = p;
    for (int i = 0; i < c->H; i++)
        for (int j = 0; j < c->W; j++)
            for (int a = 0; a < 2; a++)
                for (int bb = 0; bb < 2; bb++)
                    for (int co = 0; co < c->Cout; co++) {
                        double s = c->b[co];
                        for (int ci = 0; ci < c->Cin; ci++)
                            s += c->x[((size_t)i * c->W + j) * c->Cin + ci] *
                                 c->w[((size_t)ci * c->Cout + co) * 4 + a * 2 + bb];
                        y[((size_t)(2 * i + a) * (2 * c->W) + 2 * j + bb) * c->Cout + co] = s;
                    }
}

static void ct_case_run(int H, int W, int Cin, int Cout)
{
    ct_case c = {H,
                 W,
                 Cin,
                 Cout,
                 drand_vec((size_t)H * W * Cin, -1, 1),
                 drand_vec((size_t)Cin * Cout * 4, -1, 1),
                 drand_vec(Cout, -1, 1)};
    size_t ny = (size_t)4 * H * W * Cout, nx = (size_t)H * W * Cin, nw = (size_t)Cin * Cout * 4;
    double *R = drand_vec(ny, -1, 1), *y = malloc(ny * sizeof *y);
    float *x32 = to_f32(c.x, nx), *w32 = to_f32(c.w, nw), *b32 = to_f32(c.b, Cout);
    float *R32 = to_f32(R, ny), *y32 = malloc(ny * sizeof *y32), *dx = malloc(nx * sizeof *dx);
    float *dw = calloc(nw, sizeof *dw), *db = calloc(Cout, sizeof *db);
    eng_tensor tx = view2(x32, (int64_t)H * W, Cin), tb = view2(b32, 1, Cout);
    eng_tensor tw = eng_view(w32, ENG_F32, ENG_DEV_CPU, 4, (int64_t[]){Cin, Cout, 2, 2});
    eng_tensor tdw = eng_view(dw, ENG_F32, ENG_DEV_CPU, 4, (int64_t[]){Cin, Cout, 2, 2});
    eng_tensor ty = view2(y32, (int64_t)4 * H * W, Cout), tR = view2(R32, (int64_t)4 * H * W, Cout);
    eng_tensor tdx = view2(dx, (int64_t)H * W, Cin), tdb = view2(db, 1, Cout);
    eng_conv_transpose2x2(&ctx, &ty, &tx, H, W, &tw, &tb);
    eng_conv_transpose2x2_backward(&ctx, &tdx, &tdw, &tdb, &tR, &tx, H, W, &tw, 0);
    T_REQUIRE(eng_ctx_status(&ctx) == 0, "ops failed: %s", eng_last_error());
    ct_fwd(&c, y);
    T_CHECK(fwd_err(y32, y, ny) < 1e-5, "forward differs from the reference by %g",
            fwd_err(y32, y, ny));
    CHECK_GRAD("conv_transpose2x2 dx", ct_fwd, &c, c.x, nx, dx, R, ny, 400);
    CHECK_GRAD("conv_transpose2x2 dw", ct_fwd, &c, c.w, nw, dw, R, ny, 400);
    CHECK_GRAD("conv_transpose2x2 db", ct_fwd, &c, c.b, (size_t)Cout, db, R, ny, 400);
    /* acc adds to dx */
    float *dx1 = malloc(nx * sizeof *dx1);
    memcpy(dx1, dx, nx * sizeof *dx1);
    eng_conv_transpose2x2_backward(&ctx, &tdx, NULL, NULL, &tR, NULL, H, W, &tw, 1);
    double e = 0;
    for (size_t i = 0; i < nx; i++)
        e = fmax(e, fabs(dx[i] - 2 * dx1[i]) / (1 + fabs(dx1[i])));
    T_CHECK(e < 1e-5, "accumulated dx differs from twice one pass by %g", e);
    free(c.x), free(c.w), free(c.b), free(R), free(y), free(x32), free(w32), free(b32), free(R32);
    free(y32), free(dx), free(dw), free(db), free(dx1);
}

static void test_conv_transpose_backward(void)
{
    ct_case_run(3, 5, 6, 4);
    ct_case_run(16, 12, 20, 8); /* crosses the parallel split */
    ct_case_run(1, 1, 1, 1);
}

/* ------------------------------------------------------------------ */

static void test_fill(void)
{
    float buf[37];
    eng_tensor t = view2(buf, 1, 37);
    eng_fill(&ctx, &t, 2.5f);
    int ok = 1;
    for (int i = 0; i < 37; i++)
        ok &= buf[i] == 2.5f;
    eng_fill(&ctx, &t, 0.0f);
    for (int i = 0; i < 37; i++)
        ok &= buf[i] == 0.0f;
    T_CHECK(ok && eng_ctx_status(&ctx) == 0, "fill wrote the wrong values");
}

/* A backend whose table lacks the backward entries (as the CUDA backend
 * today): every backward op fails with ENG_EUNSUP naming the op, and the
 * sticky error stops the ops after it. */
static void test_unsupported(void)
{
    T_CHECK(eng_backend_has_backward(be), "the CPU backend reports no backward ops");
    eng_backend_ops ops = *be->ops;
    ops.linear_backward = NULL;
    ops.fill = NULL;
    eng_backend fake = *be;
    fake.ops = &ops;
    snprintf(fake.desc, sizeof fake.desc, "test backend");
    T_CHECK(!eng_backend_has_backward(&fake), "a backend without backward ops reports them");
    /* a context without a workspace: the fake is not a whole CPU backend
     * (its allocator would read past it), and these ops allocate nothing */
    eng_ctx c2;
    memset(&c2, 0, sizeof c2);
    c2.be = &fake;
    float x[4] = {1, 2, 3, 4}, d[4];
    eng_tensor tx = view2(x, 2, 2), td = view2(d, 2, 2);
    eng_linear_backward(&c2, &td, NULL, NULL, &tx, NULL, &tx, 0);
    T_CHECK(eng_ctx_status(&c2) == ENG_EUNSUP, "status %d, expected ENG_EUNSUP",
            eng_ctx_status(&c2));
    T_CHECK(strstr(eng_last_error(), "linear_backward") && strstr(eng_last_error(), "test backend"),
            "message does not name the op and backend: %s", eng_last_error());
}

int main(void)
{
    if (eng_backend_cpu_create(&be, 0) || eng_ctx_init(&ctx, be, 256)) {
        fprintf(stderr, "setup: %s\n", eng_last_error());
        return 1;
    }
    T_RUN(test_linear_backward);
    T_RUN(test_layernorm_backward);
    T_RUN(test_activation_backward);
    T_RUN(test_attention_backward);
    T_RUN(test_conv_transpose_backward);
    T_RUN(test_fill);
    T_RUN(test_unsupported);
    eng_ctx_free(&ctx);
    eng_backend_destroy(be);
    return t_summary("test_backward_ops");
}
