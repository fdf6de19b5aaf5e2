/*
 * tests/test_hypernet_train.c: the hypernetwork's backward
 * (hypernet/hypernet_train.h) against finite differences in double
 * precision. The forward is restated here in double; for a random linear
 * loss L = sum_t <A_t, RA_t> + <B_t, RB_t>, central differences of that
 * forward give the reference gradient of every parameter tensor (trunk,
 * LayerNorm, embeddings, every head), and the f32 backward must agree
 * within a relative L2 error of 1e-4 per tensor. Also: the training
 * forward equals the double forward and the inference path
 * (hn_hypernet_generate), gradients accumulate, embedding rows of unused
 * types and targets get none, and misuse is an error.
 */
#include "harness.h"

#include "engine/error.h"
#include "engine/ops.h"
#include "hypernet/hypernet.h"
#include "hypernet/hypernet_train.h"

#define NT ENG_SAM_LORA_TARGETS

static uint64_t rng = 0x243F6A8885A308D3ull;
static double urand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (double)(rng >> 11) * (1.0 / 9007199254740992.0) * 2 - 1;
}

/* A small configuration with one target of every shape, and two that
 * share a shape and a type. */
static const int picks[] = {0, 1, 5, 7, 12, 13, 28, 34, 46};
#define NPICK ((int)(sizeof picks / sizeof picks[0]))

static hn_hypernet_config small_config(void)
{
    hn_hypernet_config c;
    hn_hypernet_config_default(&c);
    c.text_dim = 12;
    c.hidden = 16;
    c.rank = 2;
    c.alpha = 4;
    memset(c.present, 0, sizeof c.present);
    for (int i = 0; i < NPICK; i++)
        c.present[picks[i]] = 1;
    return c;
}

/* The double forward: parameters pd (the layout of p->mem), task e [d];
 * writes the factors of every present target into A[t], B[t] (double) and
 * returns L = sum <A, RA> + <B, RB> when RA is given. */
typedef struct {
    const hn_params *p; /* layout and configuration */
    double *pd;         /* parameter values in double */
    const double *e;    /* [d] */
    float **RA, **RB;   /* loss weights per target (NULL: no loss) */
    double *A[NT], *B[NT];
} ref_net;

static const double *at(const ref_net *r, const float *field)
{
    return r->pd + (field - r->p->mem);
}

static double gelu(double x) { return 0.5 * x * (1 + erf(x / sqrt(2.0))); }

static double ref_forward(ref_net *r)
{
    const hn_hypernet_config *c = &r->p->cfg;
    const int H = c->hidden, D = c->text_dim, R = c->rank;
    double g[64], z[64], x[64], h[64];
    const double *w_in = at(r, r->p->w_in), *b_in = at(r, r->p->b_in);
    double mean = 0, var = 0;
    for (int j = 0; j < H; j++) {
        double a = b_in[j];
        for (int k = 0; k < D; k++)
            a += w_in[j * D + k] * r->e[k];
        g[j] = gelu(a);
        mean += g[j];
    }
    mean /= H;
    for (int j = 0; j < H; j++)
        var += (g[j] - mean) * (g[j] - mean);
    var /= H;
    const double *lg = at(r, r->p->ln_g), *lb = at(r, r->p->ln_b);
    for (int j = 0; j < H; j++)
        z[j] = (g[j] - mean) / sqrt(var + 1e-5) * lg[j] + lb[j];
    double L = 0;
    for (int t = 0; t < NT; t++) {
        if (!c->present[t])
            continue;
        const double *ty = at(r, r->p->e_type) + (size_t)hn_target_type(t) * H;
        const double *ly = at(r, r->p->e_layer) + (size_t)t * H;
        const double *wm = at(r, r->p->w_mix), *bm = at(r, r->p->b_mix);
        for (int j = 0; j < H; j++)
            x[j] = z[j] + ty[j] + ly[j];
        for (int j = 0; j < H; j++) {
            double m = bm[j];
            for (int k = 0; k < H; k++)
                m += wm[j * H + k] * x[k];
            h[j] = gelu(m);
        }
        int s = hn_target_shape(t), O, I;
        hn_shape(s, &O, &I);
        for (int k = 0; k < 2; k++) {
            int w = k ? O * R : R * I;
            const double *W = at(r, k ? r->p->wb[s] : r->p->wa[s]);
            const double *b = at(r, k ? r->p->bb[s] : r->p->ba[s]);
            double *out = k ? r->B[t] : r->A[t];
            const float *Rw = r->RA ? (k ? r->RB[t] : r->RA[t]) : NULL;
            for (int i = 0; i < w; i++) {
                double v = b[i];
                for (int j = 0; j < H; j++)
                    v += W[(size_t)i * H + j] * h[j];
                out[i] = v;
                if (Rw)
                    L += v * Rw[i];
            }
        }
    }
    return L;
}

typedef struct {
    hn_params *p, *grad;
    hn_train *t;
    ref_net r;
    float *A[NT], *B[NT], *RA[NT], *RB[NT];
    float e32[64];
    double e[64];
} fixture;

static int fixture_make(fixture *f)
{
    memset(f, 0, sizeof *f);
    hn_hypernet_config c = small_config();
    if (hn_params_create(&f->p, &c) || hn_params_create(&f->grad, &c) || hn_train_create(&f->t, &c))
        return -1;
    hn_params_init(f->p, 7, 1);
    /* every parameter moved off its initial structure (zero biases, unit gains) */
    for (size_t i = 0; i < f->p->n_floats; i++)
        f->p->mem[i] += (float)(0.05 * urand());
    for (int i = 0; i < c.text_dim; i++)
        f->e[i] = f->e32[i] = (float)urand();
    f->r.p = f->p;
    f->r.pd = malloc(f->p->n_floats * sizeof(double));
    for (size_t i = 0; i < f->p->n_floats; i++)
        f->r.pd[i] = f->p->mem[i];
    f->r.e = f->e;
    for (int t = 0; t < NT; t++) {
        size_t an, bn;
        if (!hn_factor_size(&c, t, &an, &bn))
            continue;
        f->A[t] = calloc(an, sizeof(float));
        f->B[t] = calloc(bn, sizeof(float));
        f->RA[t] = malloc(an * sizeof(float));
        f->RB[t] = malloc(bn * sizeof(float));
        f->r.A[t] = calloc(an, sizeof(double));
        f->r.B[t] = calloc(bn, sizeof(double));
        for (size_t i = 0; i < an; i++)
            f->RA[t][i] = (float)urand();
        for (size_t i = 0; i < bn; i++)
            f->RB[t][i] = (float)urand();
    }
    return 0;
}

static void fixture_free(fixture *f)
{
    for (int t = 0; t < NT; t++) {
        free(f->A[t]), free(f->B[t]), free(f->RA[t]), free(f->RB[t]);
        free(f->r.A[t]), free(f->r.B[t]);
    }
    free(f->r.pd);
    hn_train_destroy(f->t);
    hn_params_destroy(f->p);
    hn_params_destroy(f->grad);
}

/* The forward agrees with the double reference and with the inference path. */
static void test_forward(void)
{
    fixture f;
    T_REQUIRE(fixture_make(&f) == 0, "setup: %s", eng_last_error());
    T_REQUIRE(hn_train_forward(f.t, f.p, f.e32, f.A, f.B) == 0, "%s", eng_last_error());
    ref_forward(&f.r);
    eng_backend *be = NULL;
    hn_hypernet *h = NULL;
    T_REQUIRE(eng_backend_cpu_create(&be, 0) == 0 && hn_hypernet_create(&h, f.p, "1", be) == 0,
              "%s", eng_last_error());
    float *GA[NT] = {0}, *GB[NT] = {0};
    for (int t = 0; t < NT; t++) {
        size_t an, bn;
        if (!hn_factor_size(&f.p->cfg, t, &an, &bn))
            continue;
        GA[t] = malloc(an * sizeof(float));
        GB[t] = malloc(bn * sizeof(float));
    }
    T_REQUIRE(hn_hypernet_generate(h, f.e32, GA, GB) == 0, "%s", eng_last_error());
    double e_ref = 0, e_inf = 0, mx = 0;
    for (int t = 0; t < NT; t++) {
        size_t an, bn;
        if (!hn_factor_size(&f.p->cfg, t, &an, &bn))
            continue;
        for (int k = 0; k < 2; k++)
            for (size_t i = 0; i < (k ? bn : an); i++) {
                double v = k ? f.B[t][i] : f.A[t][i], rv = k ? f.r.B[t][i] : f.r.A[t][i];
                double g = k ? GB[t][i] : GA[t][i];
                e_ref = fmax(e_ref, fabs(v - rv));
                e_inf = fmax(e_inf, fabs(v - g));
                mx = fmax(mx, fabs(rv));
            }
    }
    T_CHECK(e_ref <= 1e-5 * mx, "training forward vs double reference: max |diff| %g (max %g)",
            e_ref, mx);
    T_CHECK(e_inf <= 1e-5 * mx, "training forward vs hn_hypernet_generate: max |diff| %g", e_inf);
    for (int t = 0; t < NT; t++)
        free(GA[t]), free(GB[t]);
    hn_hypernet_destroy(h);
    eng_backend_destroy(be);
    fixture_free(&f);
}

/* One parameter tensor's f32 gradient against central differences of the
 * double forward, on up to max_n entries (all of a small tensor). */
static void check_tensor(fixture *f, const char *name, const float *field, const float *gfield,
                         size_t n, size_t max_n)
{
    double *pd = f->r.pd + (field - f->p->mem);
    const float *g = gfield;
    f->r.RA = f->RA;
    f->r.RB = f->RB;
    double num = 0, den = 0, worst = 0;
    size_t wi = 0, count = n < max_n ? n : max_n;
    for (size_t c = 0; c < count; c++) {
        size_t i = n <= max_n ? c : (size_t)((urand() + 1) / 2 * (double)(n - 1));
        double save = pd[i], h = 1e-5;
        pd[i] = save + h;
        double lp = ref_forward(&f->r);
        pd[i] = save - h;
        double lm = ref_forward(&f->r);
        pd[i] = save;
        double ref = (lp - lm) / (2 * h), d = g[i] - ref;
        num += d * d;
        den += ref * ref;
        if (fabs(d) > worst) {
            worst = fabs(d);
            wi = i;
        }
    }
    double e = den > 0 ? sqrt(num / den) : sqrt(num);
    T_CHECK(e <= 1e-4 && den > 0,
            "%s: relative L2 error %.3g against finite differences (worst element %zu: %g)", name,
            e, wi, (double)g[wi]);
}

static void test_backward(void)
{
    fixture f;
    T_REQUIRE(fixture_make(&f) == 0, "setup: %s", eng_last_error());
    T_REQUIRE(hn_train_forward(f.t, f.p, f.e32, f.A, f.B) == 0 &&
                  hn_train_backward(f.t, f.p, (const float *const *)f.RA,
                                    (const float *const *)f.RB, f.grad) == 0,
              "%s", eng_last_error());
    const hn_params *p = f.p, *g = f.grad;
    const size_t H = (size_t)p->cfg.hidden, D = (size_t)p->cfg.text_dim, R = (size_t)p->cfg.rank;
    check_tensor(&f, "trunk.in.weight", p->w_in, g->w_in, H * D, 60);
    check_tensor(&f, "trunk.in.bias", p->b_in, g->b_in, H, 60);
    check_tensor(&f, "trunk.norm.weight", p->ln_g, g->ln_g, H, 60);
    check_tensor(&f, "trunk.norm.bias", p->ln_b, g->ln_b, H, 60);
    check_tensor(&f, "trunk.mix.weight", p->w_mix, g->w_mix, H * H, 60);
    check_tensor(&f, "trunk.mix.bias", p->b_mix, g->b_mix, H, 60);
    /* embeddings: every row a target uses, in full; the others get nothing */
    int used_type[HN_TYPES] = {0};
    for (int i = 0; i < NPICK; i++) {
        char nm[64];
        used_type[hn_target_type(picks[i])] = 1;
        snprintf(nm, sizeof nm, "embed.layer[%d]", picks[i]);
        check_tensor(&f, nm, p->e_layer + picks[i] * H, g->e_layer + picks[i] * H, H, H);
    }
    for (int ty = 0; ty < HN_TYPES; ty++) {
        char nm[64];
        snprintf(nm, sizeof nm, "embed.type[%d]", ty);
        if (used_type[ty])
            check_tensor(&f, nm, p->e_type + ty * H, g->e_type + ty * H, H, H);
        for (size_t j = 0; !used_type[ty] && j < H; j++)
            T_CHECK(g->e_type[ty * H + j] == 0, "unused type %d has a gradient", ty);
    }
    for (int t = 0; t < NT; t++)
        for (size_t j = 0; !p->cfg.present[t] && j < H; j++)
            T_CHECK(g->e_layer[t * H + j] == 0, "absent target %d has a gradient", t);
    for (int s = 0; s < HN_SHAPES; s++) {
        int O, I;
        hn_shape(s, &O, &I);
        T_REQUIRE(p->wa[s], "shape %d has no head (the configuration should cover every shape)", s);
        char nm[64];
        snprintf(nm, sizeof nm, "head.%dx%d.A.weight", O, I);
        check_tensor(&f, nm, p->wa[s], g->wa[s], R * I * H, 60);
        snprintf(nm, sizeof nm, "head.%dx%d.A.bias", O, I);
        check_tensor(&f, nm, p->ba[s], g->ba[s], R * I, 60);
        snprintf(nm, sizeof nm, "head.%dx%d.B.weight", O, I);
        check_tensor(&f, nm, p->wb[s], g->wb[s], O * R * H, 60);
        snprintf(nm, sizeof nm, "head.%dx%d.B.bias", O, I);
        check_tensor(&f, nm, p->bb[s], g->bb[s], O * R, 60);
    }
    /* a second backward adds the same again */
    float *once = malloc(g->n_floats * sizeof *once);
    memcpy(once, g->mem, g->n_floats * sizeof *once);
    T_REQUIRE(hn_train_backward(f.t, f.p, (const float *const *)f.RA, (const float *const *)f.RB,
                                f.grad) == 0,
              "%s", eng_last_error());
    double e = 0;
    for (size_t i = 0; i < g->n_floats; i++)
        e = fmax(e, fabs(g->mem[i] - 2 * once[i]) / (1 + fabs(once[i])));
    T_CHECK(e <= 1e-6, "a second backward did not add the same gradient (%g)", e);
    free(once);
    fixture_free(&f);
}

static void test_errors(void)
{
    fixture f;
    T_REQUIRE(fixture_make(&f) == 0, "setup: %s", eng_last_error());
    T_CHECK(hn_train_backward(f.t, f.p, NULL, NULL, f.grad) == ENG_EINVAL,
            "backward without a forward");
    hn_hypernet_config c = small_config();
    c.hidden = 24;
    hn_params *other = NULL;
    T_REQUIRE(hn_params_create(&other, &c) == 0, "%s", eng_last_error());
    T_CHECK(hn_train_forward(f.t, other, f.e32, f.A, f.B) == ENG_EINVAL,
            "parameters of another configuration accepted");
    f.e32[3] = NAN;
    T_CHECK(hn_train_forward(f.t, f.p, f.e32, f.A, f.B) == ENG_EINVAL, "NaN embedding accepted");
    f.e32[3] = 0;
    T_REQUIRE(hn_train_forward(f.t, f.p, f.e32, f.A, f.B) == 0, "%s", eng_last_error());
    T_CHECK(hn_train_backward(f.t, f.p, NULL, NULL, other) == ENG_EINVAL,
            "gradient of another configuration accepted");
    f.RA[picks[2]][1] = INFINITY;
    T_CHECK(hn_train_backward(f.t, f.p, (const float *const *)f.RA, NULL, f.grad) == ENG_EINVAL,
            "infinite gradient accepted");
    /* NULL gradients are zero: nothing changes */
    T_CHECK(hn_train_backward(f.t, f.p, NULL, NULL, f.grad) == 0, "%s", eng_last_error());
    double s = 0;
    for (size_t i = 0; i < f.grad->n_floats; i++)
        s += fabs(f.grad->mem[i]);
    T_CHECK(s == 0, "a zero gradient changed the parameters' gradient (%g)", s);
    hn_params_destroy(other);
    fixture_free(&f);
}

int main(void)
{
    T_RUN(test_forward);
    T_RUN(test_backward);
    T_RUN(test_errors);
    return t_summary("test_hypernet_train");
}
