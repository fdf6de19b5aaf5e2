/*
 * tests/test_sam_train.c: the mask decoder's training path (engine/sam_train.h)
 * and the loss (train/loss.h) on the fixture `tiny` model.
 *
 * - The training golden (golden_train_tiny.*, PyTorch autograd in float64):
 *   every case's logits, IoU predictions, loss and its parts, the best
 *   mask, and d loss / d A, d B of every adapted layer, within the
 *   fixture's tolerances.
 * - The training forward computes what the serving decoder computes
 *   (points, box, mask input, single and multimask, with an adapter).
 * - A prompt with a mask input (the golden has none) against the golden's
 *   path on a shifted embedding, and by directional finite differences;
 *   two prompts accumulate into one gradient.
 * - Misuse and bad input are errors, not crashes.
 */
#include "harness.h"

#include "engine/ckpt.h"
#include "engine/error.h"
#include "engine/ops.h"
#include "engine/sam.h"
#include "engine/sam_train.h"
#include "train/gradcheck.h"
#include "train/loss.h"

#define NT ENG_SAM_LORA_TARGETS
#define LR ENG_SAM_LOWRES_FLOATS

static eng_backend *be;
static eng_sam *model;
static eng_ckpt *golden;
static tr_gc_cases *cases;
static float *emb;
static eng_sam_imginfo info;

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static float urand(void)
{
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((rng >> 40) / 16777216.0) * 2.0f - 1.0f;
}

static void setup(void)
{
    if (!t_fixtures())
        return;
    char path[4096];
    snprintf(path, sizeof path, "%s", t_fixture("golden_train_tiny.json"));
    eng_sam_options opt = {.max_points = 4};
    if (eng_backend_cpu_create(&be, 0) ||
        eng_sam_load(&model, t_fixture("sam_tiny.safetensors"), be, &opt) ||
        eng_ckpt_open(&golden, t_fixture("golden_train_tiny.safetensors")) ||
        tr_gc_cases_load(path, &cases)) {
        fprintf(stderr, "setup: %s\n", eng_last_error());
        return;
    }
    emb = malloc(ENG_SAM_EMB_FLOATS * sizeof *emb);
    if (eng_ckpt_load_f32(golden, "image_embedding", 3, (int64_t[]){256, 64, 64}, emb)) {
        fprintf(stderr, "setup: %s\n", eng_last_error());
        free(emb);
        emb = NULL;
    }
    info = (eng_sam_imginfo){cases->img_w, cases->img_h, 1024, 684};
}

#define NEED_SETUP()                                                                               \
    do {                                                                                           \
        T_NEED_FIXTURES();                                                                         \
        T_REQUIRE(model &&golden &&cases &&emb, "setup failed");                                   \
    } while (0)

/* A reference tensor of the golden as f32 (n values), NULL when absent. */
static float *ref(const char *fmt, const char *a, const char *b, size_t n)
{
    char nm[256];
    snprintf(nm, sizeof nm, fmt, a, b);
    const eng_ckpt_tensor *t = eng_ckpt_find(golden, nm);
    if (!t || (size_t)t->numel != n)
        return NULL;
    float *f = malloc(n * sizeof *f);
    if (eng_ckpt_read_f32(golden, t, f)) {
        free(f);
        return NULL;
    }
    return f;
}

static void test_golden(void)
{
    NEED_SETUP();
    const eng_sam_lora_target *tg = eng_sam_lora_targets();
    eng_sam_train *t = NULL;
    T_REQUIRE(eng_sam_train_create(&t, model, cases->rank) == 0, "create: %s", eng_last_error());
    T_REQUIRE(cases->n == 5, "%d cases in the fixture, expected 5", cases->n);
    for (int ci = 0; ci < cases->n; ci++) {
        const char *cn = cases->cases[ci].name;
        tr_gc_result r;
        int rc = tr_gc_run(t, golden, cases, ci, &r);
        T_CHECK(rc == 0, "case %s: %s", cn, eng_last_error());
        if (rc)
            continue;
        float *loss = ref("%s.loss%s", cn, "", 1), *iou = ref("%s.iou_predictions%s", cn, "", 3);
        float *lg = ref("%s.low_res_logits%s", cn, "", 3 * LR);
        float *parts[4] = {ref("%s.focal%s", cn, "", 3), ref("%s.dice%s", cn, "", 3),
                           ref("%s.iou_mse%s", cn, "", 3), ref("%s.actual_iou%s", cn, "", 3)};
        T_REQUIRE(loss && iou && lg && parts[0] && parts[1] && parts[2] && parts[3],
                  "case %s: reference tensors missing", cn);
        double lrel = fabs(r.parts.loss - loss[0]) / fabs(loss[0]);
        T_CHECK(lrel <= 1e-4, "case %s: loss %.9g, reference %.9g (relative %.2g)", cn,
                r.parts.loss, (double)loss[0], lrel);
        T_CHECK(fabs(r.parts.loss - cases->cases[ci].ref_loss) / fabs(loss[0]) <= 1e-4,
                "case %s: loss %.9g, JSON %.9g", cn, r.parts.loss, cases->cases[ci].ref_loss);
        T_CHECK(r.parts.best == cases->cases[ci].ref_best, "case %s: best mask %d, reference %d",
                cn, r.parts.best, cases->cases[ci].ref_best);
        size_t w;
        double d = t_max_abs_diff(r.logits, lg, 3 * LR, &w);
        T_CHECK(d <= 2e-3, "case %s: logits max |diff| %g at %zu", cn, d, w);
        d = t_max_abs_diff(r.iou, iou, 3, &w);
        T_CHECK(d <= 1e-3, "case %s: IoU predictions max |diff| %g", cn, d);
        for (int m = 0; m < 3; m++) {
            double got[4] = {r.parts.focal[m], r.parts.dice[m], r.parts.iou_mse[m],
                             r.parts.actual_iou[m]};
            for (int k = 0; k < 4; k++)
                T_CHECK(fabs(got[k] - parts[k][m]) <= 1e-4 * fmax(1e-2, fabs(parts[k][m])),
                        "case %s: part %d of mask %d: %.9g, reference %.9g", cn, k, m, got[k],
                        (double)parts[k][m]);
        }
        int n_ad = 0;
        double worst = 0;
        const char *worst_name = "";
        for (int i = 0; i < NT; i++) {
            size_t na = (size_t)cases->rank * tg[i].in, nb = (size_t)cases->rank * tg[i].out;
            float *ga = ref("%s.%s.grad_A", cn, tg[i].name, na);
            float *gb = ref("%s.%s.grad_B", cn, tg[i].name, nb);
            T_CHECK(!ga == !r.adapted[i], "case %s: layer %s adapted %d, reference has %s", cn,
                    tg[i].name, r.adapted[i], ga ? "gradients" : "none");
            if (ga && gb && r.adapted[i]) {
                n_ad++;
                double ea = tr_rel_l2(r.grad_A[i], ga, na), eb = tr_rel_l2(r.grad_B[i], gb, nb);
                T_CHECK(ea <= 1e-3 && eb <= 1e-3,
                        "case %s: %s: gradient relative L2 error A %.3g, B %.3g", cn, tg[i].name,
                        ea, eb);
                if (fmax(ea, eb) > worst) {
                    worst = fmax(ea, eb);
                    worst_name = tg[i].name;
                }
            }
            free(ga);
            free(gb);
        }
        printf("  %-15s loss %.7f (ref %.7f) best %d, %d layers, worst gradient %.2e (%s)\n", cn,
               r.parts.loss, (double)loss[0], r.parts.best, n_ad, worst, worst_name);
        T_CHECK(n_ad >= 28, "case %s: only %d adapted layers compared", cn, n_ad);
        free(loss), free(iou), free(lg);
        for (int k = 0; k < 4; k++)
            free(parts[k]);
        tr_gc_result_free(&r);
    }
    eng_sam_train_destroy(t);
}

/* Random factors for every target (A ~ U(+-a), B ~ U(+-b)), host. */
typedef struct {
    float *A[NT], *B[NT];
} factors;

static void factors_make(factors *f, int rank, float a, float b)
{
    const eng_sam_lora_target *tg = eng_sam_lora_targets();
    for (int i = 0; i < NT; i++) {
        f->A[i] = malloc(sizeof(float) * rank * tg[i].in);
        f->B[i] = malloc(sizeof(float) * rank * tg[i].out);
        for (int k = 0; k < rank * tg[i].in; k++)
            f->A[i][k] = a * urand();
        for (int k = 0; k < rank * tg[i].out; k++)
            f->B[i][k] = b * urand();
    }
}

static void factors_free(factors *f)
{
    for (int i = 0; i < NT; i++) {
        free(f->A[i]);
        free(f->B[i]);
    }
}

/* The training forward equals the serving decoder under the same adapter:
 * points, a box, a mask input, no prompt, single and multimask. */
static void test_matches_serving(void)
{
    NEED_SETUP();
    const int rank = 4;
    const float scale = 2.0f;
    factors f;
    factors_make(&f, rank, 0.1f, 0.05f);
    eng_sam_lora *lo = NULL;
    eng_sam_train *t = NULL;
    T_REQUIRE(eng_sam_lora_create(model, rank, scale, (const float *const *)f.A,
                                  (const float *const *)f.B, 0, &lo) == 0,
              "%s", eng_last_error());
    T_REQUIRE(eng_sam_train_create(&t, model, rank) == 0, "%s", eng_last_error());
    T_REQUIRE(eng_sam_train_set_lora(t, scale, (const float *const *)f.A,
                                     (const float *const *)f.B) == 0 &&
                  eng_sam_train_set_image(t, emb, &info) == 0,
              "%s", eng_last_error());
    float *mask_in = malloc(LR * sizeof *mask_in), *a = malloc(3 * LR * sizeof *a);
    float *b = malloc(3 * LR * sizeof *b);
    const float pts[6] = {400, 293.7f, 200, 160.2f, 600, 100};
    const int labels[3] = {1, 0, 1};
    for (int k = 0; k < 6; k++) {
        eng_sam_prompt p = {.lora = lo};
        int mm = k % 2 == 0;
        if (k == 0 || k == 3 || k == 4) {
            p.n_points = k == 4 ? 3 : 2;
            p.points = pts;
            p.labels = labels;
        }
        if (k == 1 || k == 3) {
            p.has_box = 1;
            float box[4] = {160, 80.1f, 560, 480.6f};
            memcpy(p.box, box, sizeof box);
        }
        if (k >= 3)
            p.mask_input = mask_in;
        float ia[3], ib[3];
        int C = mm ? 3 : 1;
        T_REQUIRE(eng_sam_decode(model, emb, &info, &p, 1, mm, ia, a) == 0, "decode: %s",
                  eng_last_error());
        T_REQUIRE(eng_sam_train_forward(t, &p, mm, ib, b) == 0, "train forward: %s",
                  eng_last_error());
        size_t w;
        double d = t_max_abs_diff(a, b, (size_t)C * LR, &w);
        T_CHECK(d <= 1e-4, "prompt %d: logits differ from the serving decoder by %g at %zu", k, d,
                w);
        d = t_max_abs_diff(ia, ib, (size_t)C, &w);
        T_CHECK(d <= 1e-5, "prompt %d: IoU differs from the serving decoder by %g", k, d);
        if (k == 0)
            memcpy(mask_in, a + LR, LR * sizeof *a); /* a refinement round's input */
    }
    free(mask_in), free(a), free(b);
    eng_sam_train_destroy(t);
    eng_sam_lora_destroy(model, lo);
    factors_free(&f);
}

/* The focal + dice loss of one prompt against `target` (the IoU term off:
 * the thresholded IoU is a step function, no use to finite differences);
 * its gradient into dl [3, LR] and di [3] when given. */
static double fd_loss(eng_sam_train *t, const eng_sam_prompt *p, const uint8_t *target,
                      float *logits, float *dl, float *di)
{
    float iou[3];
    if (eng_sam_train_forward(t, p, 1, iou, logits))
        return NAN;
    tr_loss_weights w;
    tr_loss_weights_default(&w);
    w.iou = 0;
    tr_loss_parts parts;
    if (tr_loss_mask(logits, iou, target, 3, LR, &w, 1.0f, &parts, dl, di))
        return NAN;
    return parts.loss;
}

/* Sum over every factor of a . b (factors of `rank`), in double. */
static double fdot(const factors *a, const factors *b, int rank)
{
    const eng_sam_lora_target *tg = eng_sam_lora_targets();
    double s = 0;
    for (int i = 0; i < NT; i++) {
        for (int k = 0; k < rank * tg[i].in; k++)
            s += (double)a->A[i][k] * b->A[i][k];
        for (int k = 0; k < rank * tg[i].out; k++)
            s += (double)a->B[i][k] * b->B[i][k];
    }
    return s;
}

/* Relative L2 distance of two gradients over every factor. */
static double fdist(const factors *a, const factors *b, int rank)
{
    const eng_sam_lora_target *tg = eng_sam_lora_targets();
    double num = 0, den = 0;
    for (int i = 0; i < NT; i++)
        for (int k = 0; k < 2; k++) {
            size_t n = (size_t)rank * (k ? tg[i].out : tg[i].in);
            const float *x = k ? a->B[i] : a->A[i], *y = k ? b->B[i] : b->A[i];
            for (size_t j = 0; j < n; j++) {
                num += ((double)x[j] - y[j]) * ((double)x[j] - y[j]);
                den += (double)y[j] * y[j];
            }
        }
    return sqrt(num / den);
}

/* A prompt with a mask input (a refinement round; the golden has none):
 * - it is exactly a prompt without one on the embedding shifted by the
 *   difference of the two dense prompts, whose path the golden checks:
 *   same logits, same gradients for the same loss gradient;
 * - two prompts' gradients accumulate to the sum of theirs;
 * - directional finite differences along a random direction through every
 *   factor agree (coarsely: an fp32 forward's rounding limits them to about
 *   a percent). */
static void test_mask_input(void)
{
    NEED_SETUP();
    const int rank = 2;
    const float scale = 1.5f, va = 0.05f, vb = 0.02f;
    factors f, v, g1, g2, gs, gm, fp;
    factors_make(&f, rank, va, vb);
    factors_make(&v, rank, va, vb);
    factors_make(&g1, rank, 0, 0);
    factors_make(&g2, rank, 0, 0);
    factors_make(&gs, rank, 0, 0);
    factors_make(&gm, rank, 0, 0);
    factors_make(&fp, rank, 0, 0);
    float *dl = malloc(3 * LR * sizeof *dl), *lg = malloc(3 * LR * sizeof *lg);
    float *lg2 = malloc(3 * LR * sizeof *lg2), *mask_in = malloc(LR * sizeof *mask_in);
    float *dn = malloc(ENG_SAM_EMB_FLOATS * sizeof *dn), *dm = malloc(ENG_SAM_EMB_FLOATS * 4);
    uint8_t *target = malloc(LR);
    float di[3];
    for (int y = 0; y < 256; y++)
        for (int x = 0; x < 256; x++) {
            target[y * 256 + x] = (x - 80) * (x - 80) + (y - 70) * (y - 70) < 40 * 40;
            mask_in[y * 256 + x] = target[y * 256 + x] ? 3.0f + urand() : -2.0f + urand();
        }
    eng_sam_train *t = NULL;
    T_REQUIRE(eng_sam_train_create(&t, model, rank) == 0, "%s", eng_last_error());
    const float pts[4] = {300, 250, 500, 120};
    const int labels[2] = {1, 0};
    eng_sam_prompt p1 = {.n_points = 2, .points = pts, .labels = labels, .mask_input = mask_in};
    eng_sam_prompt p2 = {.n_points = 1, .points = pts + 2, .labels = labels};
    T_REQUIRE(eng_sam_train_set_lora(t, scale, (const float *const *)f.A,
                                     (const float *const *)f.B) == 0 &&
                  eng_sam_train_set_image(t, emb, &info) == 0,
              "%s", eng_last_error());

    /* p1 alone, p2 alone, both into one accumulator */
    const eng_sam_prompt *ps[2] = {&p1, &p2};
    factors *g[2] = {&g1, &g2};
    for (int k = 0; k < 2; k++)
        T_REQUIRE(eng_sam_train_zero_grad(t) == 0 &&
                      !isnan(fd_loss(t, ps[k], target, lg, dl, di)) &&
                      eng_sam_train_backward(t, dl, di) == 0 &&
                      eng_sam_train_grads(t, g[k]->A, g[k]->B) == 0,
                  "%s", eng_last_error());
    T_REQUIRE(eng_sam_train_zero_grad(t) == 0, "%s", eng_last_error());
    for (int k = 0; k < 2; k++)
        T_REQUIRE(!isnan(fd_loss(t, ps[k], target, lg, dl, di)) &&
                      eng_sam_train_backward(t, dl, di) == 0,
                  "%s", eng_last_error());
    T_REQUIRE(eng_sam_train_grads(t, gs.A, gs.B) == 0, "%s", eng_last_error());
    const eng_sam_lora_target *tg = eng_sam_lora_targets();
    for (int i = 0; i < NT; i++) {
        for (int k = 0; k < rank * tg[i].in; k++)
            g2.A[i][k] += g1.A[i][k];
        for (int k = 0; k < rank * tg[i].out; k++)
            g2.B[i][k] += g1.B[i][k];
    }
    double e = fdist(&gs, &g2, rank);
    T_CHECK(e <= 1e-5, "two prompts' gradient differs from the sum of theirs by %.3g", e);

    /* the same prompt without its mask input on the shifted embedding */
    T_REQUIRE(eng_sam_dense_prompt(model, mask_in, dm) == 0 &&
                  eng_sam_dense_prompt(model, NULL, dn) == 0,
              "%s", eng_last_error());
    for (size_t i = 0; i < ENG_SAM_EMB_FLOATS; i++)
        dm[i] = emb[i] + dm[i] - dn[i];
    eng_sam_prompt p1s = p1;
    p1s.mask_input = NULL;
    T_REQUIRE(eng_sam_train_zero_grad(t) == 0 && !isnan(fd_loss(t, &p1, target, lg, dl, di)) &&
                  eng_sam_train_set_image(t, dm, &info) == 0 &&
                  !isnan(fd_loss(t, &p1s, target, lg2, NULL, NULL)) &&
                  eng_sam_train_backward(t, dl, di) == 0 && eng_sam_train_grads(t, gm.A, gm.B) == 0,
              "%s", eng_last_error());
    size_t w;
    double d = t_max_abs_diff(lg, lg2, 3 * LR, &w);
    T_CHECK(d <= 1e-4, "logits with a mask input differ from the shifted embedding's by %g", d);
    e = fdist(&gm, &g1, rank);
    printf("  mask input vs shifted embedding: logits %.2g, gradient %.2g\n", d, e);
    T_CHECK(e <= 1e-4, "gradient with a mask input differs from the shifted embedding's by %.3g",
            e);

    /* finite differences along v through p1 */
    T_REQUIRE(eng_sam_train_set_image(t, emb, &info) == 0, "%s", eng_last_error());
    const double h = 0.0125;
    double L[2];
    for (int sgn = 0; sgn < 2; sgn++) {
        for (int i = 0; i < NT; i++) {
            for (int k = 0; k < rank * tg[i].in; k++)
                fp.A[i][k] = (float)(f.A[i][k] + (sgn ? -h : h) * v.A[i][k]);
            for (int k = 0; k < rank * tg[i].out; k++)
                fp.B[i][k] = (float)(f.B[i][k] + (sgn ? -h : h) * v.B[i][k]);
        }
        T_REQUIRE(eng_sam_train_set_lora(t, scale, (const float *const *)fp.A,
                                         (const float *const *)fp.B) == 0,
                  "%s", eng_last_error());
        L[sgn] = fd_loss(t, &p1, target, lg, NULL, NULL);
    }
    double fd = (L[0] - L[1]) / (2 * h), gv = fdot(&g1, &v, rank);
    printf("  directional derivative: backward %.6f, finite differences %.6f\n", gv, fd);
    T_CHECK(fabs(fd - gv) <= 0.02 * fabs(gv), "backward %.6g vs finite differences %.6g", gv, fd);

    factors_free(&f), factors_free(&v), factors_free(&g1), factors_free(&g2);
    factors_free(&gs), factors_free(&gm), factors_free(&fp);
    free(dl), free(lg), free(lg2), free(mask_in), free(dn), free(dm), free(target);
    eng_sam_train_destroy(t);
}

/* Misuse and bad input: an error with a message, never a crash. */
static void test_errors(void)
{
    NEED_SETUP();
    eng_sam_train *t = NULL;
    T_CHECK(eng_sam_train_create(&t, model, 0) == ENG_EINVAL && !t, "rank 0 accepted");
    T_CHECK(eng_sam_train_create(&t, model, 99) == ENG_EINVAL && !t, "rank 99 accepted");
    T_REQUIRE(eng_sam_train_create(&t, model, 2) == 0, "%s", eng_last_error());
    float pts[2] = {10, 10}, iou[3], *lg = malloc(3 * LR * sizeof *lg);
    int lab = 1;
    eng_sam_prompt p = {.n_points = 1, .points = pts, .labels = &lab};
    T_CHECK(eng_sam_train_forward(t, &p, 1, iou, lg) == ENG_EINVAL, "forward without an image");
    T_CHECK(eng_sam_train_backward(t, lg, iou) == ENG_EINVAL, "backward without a forward");
    eng_sam_imginfo bad = {0, 10, 1024, 10};
    T_CHECK(eng_sam_train_set_image(t, emb, &bad) == ENG_EINVAL, "zero-width image accepted");
    T_REQUIRE(eng_sam_train_set_image(t, emb, &info) == 0, "%s", eng_last_error());
    /* a plain forward (no adapter) works and a backward gives nothing to adapt */
    T_CHECK(eng_sam_train_forward(t, &p, 1, iou, lg) == 0, "%s", eng_last_error());
    for (size_t i = 0; i < 3 * LR; i++)
        lg[i] = 0;
    T_CHECK(eng_sam_train_backward(t, lg, NULL) == 0, "%s", eng_last_error());
    T_CHECK(eng_sam_train_backward(t, lg, NULL) == ENG_EINVAL, "a second backward");
    int lab2 = 2;
    eng_sam_prompt q = {.n_points = 1, .points = pts, .labels = &lab2};
    T_CHECK(eng_sam_train_forward(t, &q, 1, iou, lg) == ENG_EINVAL, "label 2 accepted");
    float nanpt[2] = {NAN, 1};
    q.labels = &lab;
    q.points = nanpt;
    T_CHECK(eng_sam_train_forward(t, &q, 1, iou, lg) == ENG_EINVAL, "NaN point accepted");
    q.n_points = 99;
    T_CHECK(eng_sam_train_forward(t, &q, 1, iou, lg) == ENG_EINVAL, "99 points accepted");
    const eng_sam_lora_target *tg = eng_sam_lora_targets();
    float *A[NT] = {0}, *B[NT] = {0};
    A[3] = calloc((size_t)2 * tg[3].in, sizeof(float));
    T_CHECK(eng_sam_train_set_lora(t, 1, (const float *const *)A, (const float *const *)B) ==
                    ENG_EINVAL &&
                strstr(eng_last_error(), tg[3].name),
            "A without B: %s", eng_last_error());
    B[3] = calloc((size_t)2 * tg[3].out, sizeof(float));
    B[3][5] = INFINITY;
    T_CHECK(eng_sam_train_set_lora(t, 1, (const float *const *)A, (const float *const *)B) ==
                ENG_EINVAL,
            "infinite B accepted");
    B[3][5] = 0;
    T_CHECK(eng_sam_train_set_lora(t, NAN, (const float *const *)A, (const float *const *)B) ==
                ENG_EINVAL,
            "NaN scale accepted");
    T_CHECK(eng_sam_train_set_lora(t, 1, (const float *const *)A, (const float *const *)B) == 0,
            "%s", eng_last_error());
    /* a zero B and a forward: the gradient of B is non-zero, of A zero */
    T_CHECK(eng_sam_train_forward(t, &p, 1, iou, lg) == 0, "%s", eng_last_error());
    for (size_t i = 0; i < 3 * LR; i++)
        lg[i] = 1e-3f;
    lg[7] = NAN;
    T_CHECK(eng_sam_train_backward(t, lg, NULL) == ENG_EINVAL, "NaN gradient accepted");
    free(lg), free(A[3]), free(B[3]);
    eng_sam_train_destroy(t);
}

int main(void)
{
    setup();
    T_RUN(test_golden);
    T_RUN(test_matches_serving);
    T_RUN(test_mask_input);
    T_RUN(test_errors);
    eng_sam_destroy(model);
    eng_backend_destroy(be);
    eng_ckpt_close(golden);
    tr_gc_cases_free(cases);
    free(emb);
    return t_summary("test_sam_train");
}
