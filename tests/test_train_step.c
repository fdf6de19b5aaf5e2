/*
 * tests/test_train_step.c: one training step's gradient, hypernetwork to
 * loss (train/step.h), on the fixture `tiny` model and the golden image
 * embedding. The pieces are checked on their own elsewhere (the decoder
 * against the PyTorch golden, the hypernetwork and the ops by finite
 * differences); here their composition:
 * - a freshly initialised hypernetwork (B = 0) is plain SAM: the same loss
 *   as the serving decoder without an adapter, and only the B heads get a
 *   gradient (every other is exactly 0);
 * - prompt weights scale the gradient, images and calls accumulate;
 * - the L2 term adds the hypernetwork's backward of 2 lambda (A, B);
 * - directional finite differences through everything, coarse (an fp32
 *   decoder's rounding limits them to about a percent);
 * - a refinement round feeds the previous logits back as the mask input.
 */
#include "harness.h"

#include "engine/ckpt.h"
#include "engine/error.h"
#include "engine/sam.h"
#include "hypernet/hypernet.h"
#include "hypernet/hypernet_train.h"
#include "train/step.h"

#define LR ENG_SAM_LOWRES_FLOATS

static eng_backend *be;
static eng_sam *model;
static float *emb;
static uint8_t *target;
static float task[16];
static const eng_sam_imginfo info = {800, 534, 1024, 684};
static const float pts[4] = {400, 293.7f, 240, 213.6f};
static const int labels[2] = {1, 0};

static uint64_t rng = 0x5851F42D4C957F2Dull;
static double urand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (double)(rng >> 11) * (1.0 / 9007199254740992.0) * 2 - 1;
}

static void setup(void)
{
    if (!t_fixtures())
        return;
    eng_ckpt *g = NULL;
    if (eng_backend_cpu_create(&be, 0) ||
        eng_sam_load(&model, t_fixture("sam_tiny.safetensors"), be, NULL) ||
        eng_ckpt_open(&g, t_fixture("golden_train_tiny.safetensors"))) {
        fprintf(stderr, "setup: %s\n", eng_last_error());
        return;
    }
    emb = malloc(ENG_SAM_EMB_FLOATS * sizeof *emb);
    target = malloc(LR);
    const eng_ckpt_tensor *t = eng_ckpt_find(g, "pos_point.target");
    if (eng_ckpt_load_f32(g, "image_embedding", 3, (int64_t[]){256, 64, 64}, emb) || !t ||
        t->numel != LR) {
        fprintf(stderr, "setup: %s\n", eng_last_error());
        free(emb);
        emb = NULL;
    } else {
        memcpy(target, t->data, LR);
    }
    eng_ckpt_close(g);
    for (int i = 0; i < 16; i++)
        task[i] = (float)urand();
}

#define NEED_SETUP()                                                                               \
    do {                                                                                           \
        T_NEED_FIXTURES();                                                                         \
        T_REQUIRE(model &&emb, "setup failed");                                                    \
    } while (0)

static hn_hypernet_config small(void)
{
    hn_hypernet_config c;
    hn_hypernet_config_default(&c);
    c.text_dim = 16;
    c.hidden = 32;
    c.rank = 2;
    c.alpha = 4;
    return c;
}

/* Parameters and a gradient of config c, and a step on the model. */
static int make_step(const hn_hypernet_config *c, hn_params **p, hn_params **g, tr_step **s)
{
    return hn_params_create(p, c) || hn_params_create(g, c) || tr_step_create(s, model, c);
}

static double sum_abs(const float *x, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += fabs(x[i]);
    return s;
}

static void test_zero_init(void)
{
    NEED_SETUP();
    hn_hypernet_config c = small();
    hn_params *p = NULL, *g = NULL;
    tr_step *s = NULL;
    T_REQUIRE(make_step(&c, &p, &g, &s) == 0, "%s", eng_last_error());
    hn_params_init(p, 1, 0);
    tr_prompt tp = {.prompt = {.n_points = 1, .points = pts, .labels = labels},
                    .target = target,
                    .multimask = 1};
    tr_image im = {emb, info, &tp, 1};
    tr_step_opts o;
    tr_step_opts_default(&o);
    tr_step_stats st;
    T_REQUIRE(tr_step_task(s, p, task, &im, 1, &o, g, &st, NULL, NULL) == 0, "%s",
              eng_last_error());
    /* plain SAM's loss */
    float iou[3], *lg = malloc(3 * LR * sizeof *lg);
    tr_loss_parts parts;
    T_REQUIRE(eng_sam_decode(model, emb, &info, &tp.prompt, 1, 1, iou, lg) == 0 &&
                  tr_loss_mask(lg, iou, target, 3, LR, &o.loss, 1, &parts, NULL, NULL) == 0,
              "%s", eng_last_error());
    T_CHECK(st.prompts == 1 && fabs(st.loss - parts.loss) <= 1e-5 * parts.loss,
            "loss %.8g, plain SAM's %.8g", st.loss, parts.loss);
    double heads_b = 0;
    for (int k = 0; k < HN_SHAPES; k++) {
        int O, In;
        hn_shape(k, &O, &In);
        size_t nw = (size_t)O * c.rank * c.hidden, nb = (size_t)O * c.rank;
        heads_b += sum_abs(g->wb[k], nw) + sum_abs(g->bb[k], nb);
        double a = sum_abs(g->wa[k], (size_t)c.rank * In * c.hidden) +
                   sum_abs(g->ba[k], (size_t)c.rank * In);
        T_CHECK(a == 0, "shape %d: the A head has a gradient (%g) while B = 0", k, a);
    }
    double trunk = (double)(g->wa[0] - g->mem); /* trunk and embeddings come first */
    T_CHECK(sum_abs(g->mem, (size_t)trunk) == 0, "the trunk has a gradient while B = 0");
    T_CHECK(heads_b > 0, "the B heads got no gradient");
    free(lg);
    tr_step_destroy(s);
    hn_params_destroy(p);
    hn_params_destroy(g);
}

static double rel_dist(const hn_params *a, const hn_params *b, double fa, double fb)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < a->n_floats; i++) {
        double d = fa * a->mem[i] - fb * b->mem[i];
        num += d * d;
        den += fb * fb * (double)b->mem[i] * b->mem[i];
    }
    return sqrt(num / den);
}

static void test_composition(void)
{
    NEED_SETUP();
    hn_hypernet_config c = small();
    hn_params *p = NULL, *g1 = NULL, *g2 = NULL, *g3 = NULL, *gl = NULL;
    tr_step *s = NULL;
    T_REQUIRE(hn_params_create(&p, &c) == 0 && hn_params_create(&g1, &c) == 0 &&
                  hn_params_create(&g2, &c) == 0 && hn_params_create(&g3, &c) == 0 &&
                  hn_params_create(&gl, &c) == 0 && tr_step_create(&s, model, &c) == 0,
              "%s", eng_last_error());
    hn_params_init(p, 3, 1);
    float *out = malloc(2 * 3 * LR * sizeof *out), ious[6];
    tr_prompt tp[2] = {{.prompt = {.n_points = 1, .points = pts, .labels = labels},
                        .target = target,
                        .multimask = 1},
                       {.prompt = {.n_points = 2, .points = pts, .labels = labels},
                        .target = target,
                        .multimask = 0}};
    tr_image both = {emb, info, tp, 2}, one[2] = {{emb, info, tp, 1}, {emb, info, tp + 1, 1}};
    tr_step_opts o;
    tr_step_opts_default(&o);
    tr_step_stats st, st2;
    /* one call with two prompts == two images of one prompt each == two calls */
    T_REQUIRE(tr_step_task(s, p, task, &both, 1, &o, g1, &st, out, ious) == 0 &&
                  tr_step_task(s, p, task, one, 2, &o, g2, &st2, NULL, NULL) == 0 &&
                  tr_step_task(s, p, task, &one[0], 1, &o, g3, NULL, NULL, NULL) == 0 &&
                  tr_step_task(s, p, task, &one[1], 1, &o, g3, NULL, NULL, NULL) == 0,
              "%s", eng_last_error());
    T_CHECK(st.prompts == 2 && fabs(st.loss - st2.loss) < 1e-9 * st.loss, "stats differ");
    T_CHECK(rel_dist(g2, g1, 1, 1) < 1e-6, "two images vs one: %.3g", rel_dist(g2, g1, 1, 1));
    T_CHECK(rel_dist(g3, g1, 1, 1) < 1e-5, "two calls vs one: %.3g", rel_dist(g3, g1, 1, 1));
    /* prompt_weight scales the gradient */
    memset(g2->mem, 0, g2->n_floats * sizeof(float));
    o.prompt_weight = 0.25f;
    T_REQUIRE(tr_step_task(s, p, task, &both, 1, &o, g2, NULL, NULL, NULL) == 0, "%s",
              eng_last_error());
    T_CHECK(rel_dist(g2, g1, 4, 1) < 1e-5, "prompt_weight 0.25: %.3g", rel_dist(g2, g1, 4, 1));
    /* L2: the difference is the hypernetwork's backward of 2 lambda w (A, B) */
    o.prompt_weight = 1;
    o.l2 = 0.3f;
    o.task_weight = 0.5f;
    memset(g2->mem, 0, g2->n_floats * sizeof(float));
    T_REQUIRE(tr_step_task(s, p, task, &both, 1, &o, g2, &st2, NULL, NULL) == 0, "%s",
              eng_last_error());
    hn_train *ht = NULL;
    float *A[ENG_SAM_LORA_TARGETS] = {0}, *B[ENG_SAM_LORA_TARGETS] = {0};
    double pen = 0;
    T_REQUIRE(hn_train_create(&ht, &c) == 0, "%s", eng_last_error());
    for (int t = 0; t < ENG_SAM_LORA_TARGETS; t++) {
        size_t an, bn;
        hn_factor_size(&c, t, &an, &bn);
        A[t] = malloc(an * sizeof(float));
        B[t] = malloc(bn * sizeof(float));
    }
    T_REQUIRE(hn_train_forward(ht, p, task, A, B) == 0, "%s", eng_last_error());
    for (int t = 0; t < ENG_SAM_LORA_TARGETS; t++) {
        size_t an, bn;
        hn_factor_size(&c, t, &an, &bn);
        for (size_t i = 0; i < an; i++) {
            pen += (double)A[t][i] * A[t][i];
            A[t][i] *= 2 * 0.3f * 0.5f;
        }
        for (size_t i = 0; i < bn; i++) {
            pen += (double)B[t][i] * B[t][i];
            B[t][i] *= 2 * 0.3f * 0.5f;
        }
    }
    T_REQUIRE(hn_train_backward(ht, p, (const float *const *)A, (const float *const *)B, gl) == 0,
              "%s", eng_last_error());
    for (size_t i = 0; i < gl->n_floats; i++)
        gl->mem[i] += g1->mem[i];
    T_CHECK(rel_dist(g2, gl, 1, 1) < 1e-5, "L2 gradient: %.3g", rel_dist(g2, gl, 1, 1));
    T_CHECK(fabs(st2.l2 - 0.3 * pen) < 1e-5 * st2.l2, "L2 penalty %g, want %g", st2.l2, 0.3 * pen);
    /* a refinement round: the first prompt's best logits as its mask input */
    tr_prompt r2 = tp[0];
    r2.prompt.mask_input = out;
    tr_image im2 = {emb, info, &r2, 1};
    T_CHECK(tr_step_task(s, p, task, &im2, 1, &o, g3, &st, NULL, NULL) == 0 && st.prompts == 1 &&
                isfinite(st.loss),
            "refinement round: %s", eng_last_error());
    for (int t = 0; t < ENG_SAM_LORA_TARGETS; t++)
        free(A[t]), free(B[t]);
    free(out);
    hn_train_destroy(ht);
    tr_step_destroy(s);
    hn_params_destroy(p), hn_params_destroy(g1), hn_params_destroy(g2);
    hn_params_destroy(g3), hn_params_destroy(gl);
}

/* d loss / d params along a random direction, against central differences
 * of the step's own loss. */
static void test_directional(void)
{
    NEED_SETUP();
    hn_hypernet_config c = small();
    hn_params *p = NULL, *g = NULL, *q = NULL;
    tr_step *s = NULL;
    T_REQUIRE(hn_params_create(&p, &c) == 0 && hn_params_create(&g, &c) == 0 &&
                  hn_params_create(&q, &c) == 0 && tr_step_create(&s, model, &c) == 0,
              "%s", eng_last_error());
    hn_params_init(p, 5, 1);
    tr_prompt tp = {.prompt = {.n_points = 1, .points = pts + 2, .labels = labels},
                    .target = target,
                    .multimask = 1};
    tr_image im = {emb, info, &tp, 1};
    tr_step_opts o;
    tr_step_opts_default(&o);
    o.loss.iou = 0; /* the thresholded IoU is a step function */
    tr_step_stats st;
    T_REQUIRE(tr_step_task(s, p, task, &im, 1, &o, g, &st, NULL, NULL) == 0, "%s",
              eng_last_error());
    float *v = malloc(p->n_floats * sizeof *v);
    double gv = 0;
    for (size_t i = 0; i < p->n_floats; i++) {
        v[i] = (float)(urand() * (fabs(p->mem[i]) + 1e-3));
        gv += (double)g->mem[i] * v[i];
    }
    const double h = 1.25e-3;
    double L[2];
    for (int k = 0; k < 2; k++) {
        for (size_t i = 0; i < p->n_floats; i++)
            q->mem[i] = (float)(p->mem[i] + (k ? -h : h) * v[i]);
        memset(g->mem, 0, g->n_floats * sizeof(float));
        T_REQUIRE(tr_step_task(s, q, task, &im, 1, &o, g, &st, NULL, NULL) == 0, "%s",
                  eng_last_error());
        L[k] = st.loss;
    }
    double fd = (L[0] - L[1]) / (2 * h);
    printf("  directional derivative: backward %.6f, finite differences %.6f\n", gv, fd);
    T_CHECK(fabs(fd - gv) <= 0.02 * fabs(gv), "backward %.6g vs finite differences %.6g", gv, fd);
    free(v);
    tr_step_destroy(s);
    hn_params_destroy(p), hn_params_destroy(g), hn_params_destroy(q);
}

static void test_errors(void)
{
    NEED_SETUP();
    hn_hypernet_config c = small();
    hn_params *p = NULL, *g = NULL;
    tr_step *s = NULL;
    T_REQUIRE(make_step(&c, &p, &g, &s) == 0, "%s", eng_last_error());
    tr_prompt tp = {
        .prompt = {.n_points = 1, .points = pts, .labels = labels}, .target = NULL, .multimask = 1};
    tr_image im = {emb, info, &tp, 1};
    tr_step_opts o;
    tr_step_opts_default(&o);
    T_CHECK(tr_step_task(s, p, task, &im, 1, &o, g, NULL, NULL, NULL) == ENG_EINVAL,
            "a prompt without a target accepted");
    tp.target = target;
    int bad_label = 3;
    tp.prompt.labels = &bad_label;
    T_CHECK(tr_step_task(s, p, task, &im, 1, &o, g, NULL, NULL, NULL) == ENG_EINVAL &&
                strstr(eng_last_error(), "prompt 0"),
            "bad label: %s", eng_last_error());
    o.l2 = -1;
    T_CHECK(tr_step_task(s, p, task, &im, 1, &o, g, NULL, NULL, NULL) == ENG_EINVAL,
            "negative l2 accepted");
    tr_step_destroy(s);
    hn_params_destroy(p), hn_params_destroy(g);
}

int main(void)
{
    setup();
    T_RUN(test_zero_init);
    T_RUN(test_composition);
    T_RUN(test_directional);
    T_RUN(test_errors);
    eng_sam_destroy(model);
    eng_backend_destroy(be);
    free(emb);
    free(target);
    return t_summary("test_train_step");
}
