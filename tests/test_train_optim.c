/*
 * tests/test_train_optim.c: the optimiser (train/optim.h) against steps
 * worked out by hand and against torch.optim.AdamW's update written out
 * here in double: the warmup + cosine schedule at its corners, global-norm
 * clipping (torch's clip_grad_norm_), AdamW's first two steps by hand,
 * thirty steps with a schedule, clipping and decay-exempt parameters
 * against the restated formulas, bit-identical reruns, refusal of a
 * non-finite gradient, and configuration errors.
 */
#include "harness.h"

#include "engine/error.h"
#include "train/optim.h"

static tr_optim_config cfg(float lr, float wd, float clip, long warmup, long total, float minr)
{
    tr_optim_config c;
    tr_optim_config_default(&c);
    c.lr = lr;
    c.weight_decay = wd;
    c.clip = clip;
    c.warmup = warmup;
    c.total = total;
    c.min_lr_ratio = minr;
    return c;
}

static void test_schedule(void)
{
    tr_optim_config c = cfg(1e-3f, 0, 0, 10, 110, 0.1f);
    const double lr = (double)1e-3f, lo = lr * (double)0.1f;
    struct {
        long s;
        double want;
    } k[] = {
        {0, lr / 10},                                     /* first warmup step */
        {4, lr * 5 / 10},                                 /* linear */
        {9, lr},                                          /* end of warmup */
        {10, lr},                                         /* cosine starts at the peak */
        {60, lo + (lr - lo) * 0.5},                       /* half way: cos(pi/2) = 0 */
        {35, lo + (lr - lo) * 0.5 * (1 + cos(M_PI / 4))}, /* a quarter */
        {110, lo},                                        /* the end */
        {5000, lo},                                       /* past the end */
    };
    for (size_t i = 0; i < sizeof k / sizeof k[0]; i++)
        T_CHECK(fabs(tr_lr_at(&c, k[i].s) - k[i].want) <= 1e-12,
                "lr at step %ld: %.12g, want %.12g", k[i].s, tr_lr_at(&c, k[i].s), k[i].want);
    tr_optim_config flat = cfg(2e-3f, 0, 0, 0, 1, 1.0f);
    T_CHECK(tr_lr_at(&flat, 0) == (double)2e-3f && tr_lr_at(&flat, 99) == (double)2e-3f,
            "min_lr_ratio 1 is a constant rate");
}

static void test_clip(void)
{
    float g[2] = {3, 4};
    double n = tr_clip_grad_norm(g, 2, 1.0f);
    T_CHECK(n == 5.0, "norm %g, want 5", n);
    T_CHECK(fabs(g[0] - 0.6 / (1 + 2e-7)) < 1e-7 && fabs(g[1] - 0.8 / (1 + 2e-7)) < 1e-7,
            "clipped to (%g, %g), want (0.6, 0.8) / (1 + 1e-6 / 5)", g[0], g[1]);
    float h[3] = {1, 2, 2};
    n = tr_clip_grad_norm(h, 3, 10.0f);
    T_CHECK(n == 3.0 && h[0] == 1 && h[1] == 2 && h[2] == 2, "norm under the limit changed g");
    n = tr_clip_grad_norm(h, 3, 0.0f);
    T_CHECK(n == 3.0 && h[2] == 2, "clip 0 changed g");
    float bad[2] = {NAN, 1};
    n = tr_clip_grad_norm(bad, 2, 1.0f);
    T_CHECK(!isfinite(n) && bad[1] == 1, "a NaN gradient was scaled");
}

/* Two steps worked by hand: p = 1 (decayed) and q = 1 (exempt), gradients
 * 0.5 then -0.25, lr 1e-3, weight decay 0.01, default betas and eps.
 *   step 1: m = 0.05, v = 0.00025, m^ = 0.5, v^ = 0.25: update
 *           1e-3 * 0.5 / (0.5 + 1e-8) = 0.00099999998;
 *           p = 1 * (1 - 1e-5) - 0.00099999998 = 0.99899000002, q = 0.99900000002
 *   step 2: m = 0.02, v = 0.00031225, bias corrections 0.19 and 0.001999:
 *           update (1e-3 / 0.19) * 0.02 / (sqrt(0.00031225 / 0.001999) + 1e-8)
 *           = 0.000266337033; p = 0.998713673087, q = 0.998733662987 */
static void test_adamw_by_hand(void)
{
    tr_optim_config c = cfg(1e-3f, 0.01f, 0, 0, 1, 1.0f);
    tr_adamw *o = NULL;
    T_REQUIRE(tr_adamw_create(&o, 2, &c) == 0 && tr_adamw_no_decay(o, 1, 1) == 0, "%s",
              eng_last_error());
    float p[2] = {1, 1}, g[2] = {0.5f, 0.5f};
    tr_step_info info;
    T_REQUIRE(tr_adamw_step(o, p, g, &info) == 0, "%s", eng_last_error());
    T_CHECK(fabs(p[0] - 0.99899000002) < 2e-7 && fabs(p[1] - 0.99900000002) < 2e-7,
            "after step 1: %.9f %.9f", p[0], p[1]);
    T_CHECK(info.step == 0 && fabs(info.lr - (double)1e-3f) < 1e-12 && info.clipped == 0,
            "step info");
    g[0] = g[1] = -0.25f;
    T_REQUIRE(tr_adamw_step(o, p, g, &info) == 0, "%s", eng_last_error());
    T_CHECK(fabs(p[0] - 0.998713673087) < 2e-7 && fabs(p[1] - 0.998733662987) < 2e-7,
            "after step 2: %.9f %.9f", p[0], p[1]);
    T_CHECK(tr_adamw_steps(o) == 2, "steps %ld", tr_adamw_steps(o));
    tr_adamw_destroy(o);
}

/* torch.optim.AdamW's update and clip_grad_norm_, restated in double. */
typedef struct {
    double p, m, v;
} ref_param;

static void ref_step(ref_param *rp, double *g, size_t n, const tr_optim_config *c, long s,
                     const int *decay)
{
    double norm = 0;
    for (size_t i = 0; i < n; i++)
        norm += g[i] * g[i];
    norm = sqrt(norm);
    if (c->clip > 0 && norm > c->clip)
        for (size_t i = 0; i < n; i++)
            g[i] *= c->clip / (norm + 1e-6);
    double lr = tr_lr_at(c, s), t = (double)s + 1;
    for (size_t i = 0; i < n; i++) {
        if (decay[i])
            rp[i].p *= 1 - lr * c->weight_decay;
        rp[i].m = c->beta1 * rp[i].m + (1 - c->beta1) * g[i];
        rp[i].v = c->beta2 * rp[i].v + (1 - c->beta2) * g[i] * g[i];
        double mh = rp[i].m / (1 - pow(c->beta1, t)), vh = rp[i].v / (1 - pow(c->beta2, t));
        rp[i].p -= lr * mh / (sqrt(vh) + c->eps);
    }
}

static uint64_t rng = 88172645463325252ull;
static double urand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (double)(rng >> 11) * (1.0 / 9007199254740992.0) * 2 - 1;
}

static void run_steps(float *p, const tr_optim_config *c, const float *gs, int steps, size_t n)
{
    tr_adamw *o = NULL;
    if (tr_adamw_create(&o, n, c) || tr_adamw_no_decay(o, 0, 8))
        return;
    float *g = malloc(n * sizeof *g);
    for (int s = 0; s < steps; s++) {
        memcpy(g, gs + (size_t)s * n, n * sizeof *g);
        tr_adamw_step(o, p, g, NULL);
    }
    free(g);
    tr_adamw_destroy(o);
}

static void test_adamw_against_formulas(void)
{
    enum { N = 64, S = 30 };
    tr_optim_config c = cfg(3e-3f, 0.05f, 2.0f, 5, 25, 0.1f);
    float p[N], p2[N], gs[S * N];
    ref_param rp[N];
    int decay[N];
    double g[N];
    for (int i = 0; i < N; i++) {
        p[i] = p2[i] = (float)urand();
        rp[i] = (ref_param){p[i], 0, 0};
        decay[i] = i >= 8;
    }
    for (int i = 0; i < S * N; i++) /* some steps over the clip norm, some under */
        gs[i] = (float)(urand() * (i / N % 3 == 0 ? 2.0 : 0.1));
    run_steps(p, &c, gs, S, N);
    for (int s = 0; s < S; s++) {
        for (int i = 0; i < N; i++)
            g[i] = gs[s * N + i];
        ref_step(rp, g, N, &c, s, decay);
    }
    double worst = 0;
    for (int i = 0; i < N; i++)
        worst = fmax(worst, fabs(p[i] - rp[i].p));
    T_CHECK(worst <= 1e-6, "after %d steps the parameters differ from the formulas by %g", S,
            worst);
    run_steps(p2, &c, gs, S, N);
    T_CHECK(!memcmp(p, p2, sizeof p), "a rerun did not give the same bits");
}

static void test_refusals(void)
{
    tr_optim_config c = cfg(1e-3f, 0, 1, 0, 1, 0);
    tr_adamw *o = NULL;
    T_REQUIRE(tr_adamw_create(&o, 3, &c) == 0, "%s", eng_last_error());
    float p[3] = {1, 2, 3}, g[3] = {0.1f, INFINITY, 0};
    T_CHECK(tr_adamw_step(o, p, g, NULL) == ENG_EINVAL, "infinite gradient accepted");
    T_CHECK(p[0] == 1 && p[1] == 2 && p[2] == 3 && tr_adamw_steps(o) == 0,
            "a refused step changed the state");
    T_CHECK(tr_adamw_no_decay(o, 2, 5) == ENG_EINVAL, "no-decay range past the end accepted");
    tr_adamw_destroy(o);
    tr_optim_config bad[6];
    for (int i = 0; i < 6; i++)
        bad[i] = c;
    bad[0].lr = 0;
    bad[1].beta1 = 1;
    bad[2].eps = 0;
    bad[3].warmup = 5; /* more than total */
    bad[4].clip = -1;
    bad[5].min_lr_ratio = NAN;
    for (int i = 0; i < 6; i++) {
        o = NULL;
        T_CHECK(tr_adamw_create(&o, 3, &bad[i]) == ENG_EINVAL && !o, "bad config %d accepted", i);
    }
}

int main(void)
{
    T_RUN(test_schedule);
    T_RUN(test_clip);
    T_RUN(test_adamw_by_hand);
    T_RUN(test_adamw_against_formulas);
    T_RUN(test_refusals);
    return t_summary("test_train_optim");
}
