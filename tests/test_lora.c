/*
 * tests/test_lora.c: LoRA adapters on the mask decoder (engine side): a zero
 * adapter is plain SAM exactly, a random one changes the masks
 * deterministically, merged and unmerged application agree, a batch mixing
 * adapters equals separate calls, also on a resident embedding, the scale is
 * applied once, and adapted logits match the training fixture's PyTorch
 * reference. Uses the fixture `tiny` model and the golden embedding of
 * images/dog.jpg.
 */
#include "harness.h"

#include <jansson.h>

#include "adapters/adapter.h"
#include "engine/ckpt.h"
#include "engine/error.h"
#include "engine/ops.h"
#include "engine/sam.h"

static eng_backend *be;
static eng_sam *model;
static float *emb;
static const eng_sam_imginfo info = {800, 534, 1024, 684};
static const float pts[4] = {400, 293.7f, 200, 160.2f};
static const int labels[2] = {1, 0};

/* Host factors for every target: A ~ U(-a, a), B ~ U(-b, b) (b = 0: zero B). */
typedef struct {
    float *A[ENG_SAM_LORA_TARGETS], *B[ENG_SAM_LORA_TARGETS];
} factors;

static uint64_t rng_state;
static float urand(void)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((rng_state >> 40) / 16777216.0) * 2.0f - 1.0f;
}

static void make_factors(factors *f, int rank, float a, float b, uint64_t seed, int every_other)
{
    const eng_sam_lora_target *t = eng_sam_lora_targets();
    rng_state = seed;
    for (int i = 0; i < ENG_SAM_LORA_TARGETS; i++) {
        f->A[i] = f->B[i] = NULL;
        if (every_other && i % 2)
            continue;
        f->A[i] = malloc(sizeof(float) * rank * t[i].in);
        f->B[i] = malloc(sizeof(float) * rank * t[i].out);
        for (int k = 0; k < rank * t[i].in; k++)
            f->A[i][k] = a * urand();
        for (int k = 0; k < rank * t[i].out; k++)
            f->B[i][k] = b * urand();
    }
}

static void free_factors(factors *f)
{
    for (int i = 0; i < ENG_SAM_LORA_TARGETS; i++) {
        free(f->A[i]);
        free(f->B[i]);
    }
}

/* Decode the fixture's two-point prompt (multimask) under `lo`. */
static int decode(const eng_sam_lora *lo, float *iou, float *lo_res)
{
    eng_sam_prompt p = {.n_points = 2, .points = pts, .labels = labels, .lora = lo};
    return eng_sam_decode(model, emb, &info, &p, 1, 1, iou, lo_res);
}

#define LR (3 * ENG_SAM_LOWRES_FLOATS)

static void setup(void)
{
    if (!t_fixtures())
        return;
    eng_ckpt *g = NULL;
    eng_sam_options opt = {.embedding_slots = 1};
    if (eng_backend_cpu_create(&be, 0) ||
        eng_sam_load(&model, t_fixture("sam_tiny.safetensors"), be, &opt) ||
        eng_ckpt_open(&g, t_fixture("golden_tiny.safetensors"))) {
        fprintf(stderr, "setup: %s\n", eng_last_error());
        return;
    }
    const eng_ckpt_tensor *t = eng_ckpt_find(g, "image_embedding");
    if (t) {
        emb = malloc(ENG_SAM_EMB_FLOATS * sizeof(float));
        eng_ckpt_read_f32(g, t, emb);
    }
    eng_ckpt_close(g);
}

static void test_target_table(void)
{
    const eng_sam_lora_target *t = eng_sam_lora_targets();
    T_CHECK(!strcmp(t[0].name, "mask_decoder.transformer.layers.0.self_attn.q_proj"), "%s",
            t[0].name);
    T_CHECK(t[4].out == 128 && t[4].in == 256, "t2i q_proj shape");
    T_CHECK(t[7].out == 256 && t[7].in == 128, "t2i out_proj shape");
    T_CHECK(t[12].out == 2048 && t[13].in == 2048, "mlp shapes");
    T_CHECK(!strcmp(t[46].name, "mask_decoder.iou_prediction_head.layers.2") && t[46].out == 4,
            "last target %s", t[46].name);
}

static void test_zero_adapter_is_plain_sam(void)
{
    T_NEED_FIXTURES();
    T_REQUIRE(model && emb, "setup failed");
    factors f;
    make_factors(&f, 4, 0.5f, 0.0f, 1, 0);
    eng_sam_lora *un = NULL, *mg = NULL;
    T_REQUIRE(eng_sam_lora_create(model, 4, 2.0f, (const float *const *)f.A,
                                  (const float *const *)f.B, 0, &un) == 0,
              "%s", eng_last_error());
    T_REQUIRE(eng_sam_lora_create(model, 4, 2.0f, (const float *const *)f.A,
                                  (const float *const *)f.B, 1, &mg) == 0,
              "%s", eng_last_error());
    float iou0[3], iou1[3], iou2[3];
    float *l0 = malloc(LR * 4), *l1 = malloc(LR * 4), *l2 = malloc(LR * 4);
    T_CHECK(decode(NULL, iou0, l0) == 0, "%s", eng_last_error());
    T_CHECK(decode(un, iou1, l1) == 0, "%s", eng_last_error());
    T_CHECK(decode(mg, iou2, l2) == 0, "%s", eng_last_error());
    T_CHECK(memcmp(l0, l1, LR * 4) == 0 && memcmp(iou0, iou1, sizeof iou0) == 0,
            "unmerged zero adapter changed the output (max diff %g)",
            t_max_abs_diff(l0, l1, LR, NULL));
    T_CHECK(memcmp(l0, l2, LR * 4) == 0, "merged zero adapter changed the output (max diff %g)",
            t_max_abs_diff(l0, l2, LR, NULL));
    eng_sam_lora_destroy(model, un);
    eng_sam_lora_destroy(model, mg);
    free_factors(&f);
    free(l0);
    free(l1);
    free(l2);
}

static void test_random_adapter_changes_and_merge_agrees(void)
{
    T_NEED_FIXTURES();
    T_REQUIRE(model && emb, "setup failed");
    factors f;
    make_factors(&f, 8, 0.3f, 0.3f, 7, 0);
    eng_sam_lora *un = NULL, *mg = NULL;
    T_REQUIRE(eng_sam_lora_create(model, 8, 0.5f, (const float *const *)f.A,
                                  (const float *const *)f.B, 0, &un) == 0,
              "%s", eng_last_error());
    T_REQUIRE(eng_sam_lora_create(model, 8, 0.5f, (const float *const *)f.A,
                                  (const float *const *)f.B, 1, &mg) == 0,
              "%s", eng_last_error());
    T_CHECK(eng_sam_lora_bytes(mg) > eng_sam_lora_bytes(un), "merged holds the weights too");
    float iou0[3], iou1[3], iou1b[3], iou2[3];
    float *l0 = malloc(LR * 4), *l1 = malloc(LR * 4), *l1b = malloc(LR * 4), *l2 = malloc(LR * 4);
    decode(NULL, iou0, l0);
    decode(un, iou1, l1);
    decode(un, iou1b, l1b);
    decode(mg, iou2, l2);
    double change = t_max_abs_diff(l0, l1, LR, NULL);
    printf("  random adapter: max logit change %.3f, merged vs unmerged %.2g\n", change,
           t_max_abs_diff(l1, l2, LR, NULL));
    T_CHECK(change > 0.1, "adapter barely changed the logits (%g)", change);
    T_CHECK(memcmp(l1, l1b, LR * 4) == 0 && memcmp(iou1, iou1b, sizeof iou1) == 0,
            "not deterministic");
    T_CHECK(t_max_abs_diff(l1, l2, LR, NULL) <= 1e-3, "merged vs unmerged logits");
    T_CHECK(t_max_abs_diff(iou1, iou2, 3, NULL) <= 1e-4, "merged vs unmerged IoU");
    eng_sam_lora_destroy(model, un);
    eng_sam_lora_destroy(model, mg);
    free_factors(&f);
    free(l0);
    free(l1);
    free(l1b);
    free(l2);
}

static void test_mixed_batch_equals_separate_calls(void)
{
    T_NEED_FIXTURES();
    T_REQUIRE(model && emb, "setup failed");
    factors f1, f2;
    make_factors(&f1, 4, 0.3f, 0.3f, 11, 0);
    make_factors(&f2, 2, 0.3f, 0.3f, 12, 1); /* only every other layer */
    eng_sam_lora *a1 = NULL, *a2 = NULL;
    T_REQUIRE(eng_sam_lora_create(model, 4, 1.0f, (const float *const *)f1.A,
                                  (const float *const *)f1.B, 0, &a1) == 0,
              "%s", eng_last_error());
    T_REQUIRE(eng_sam_lora_create(model, 2, 1.0f, (const float *const *)f2.A,
                                  (const float *const *)f2.B, 1, &a2) == 0,
              "%s", eng_last_error());
    const eng_sam_lora *ls[3] = {a1, NULL, a2};
    eng_sam_prompt p[3];
    for (int i = 0; i < 3; i++)
        p[i] = (eng_sam_prompt){.n_points = 2, .points = pts, .labels = labels, .lora = ls[i]};
    float iou[9], *lb = malloc(3 * LR * 4), *ls1 = malloc(LR * 4), iou1[3];
    T_REQUIRE(eng_sam_decode(model, emb, &info, p, 3, 1, iou, lb) == 0, "%s", eng_last_error());
    for (int i = 0; i < 3; i++) {
        T_CHECK(decode(ls[i], iou1, ls1) == 0, "%s", eng_last_error());
        T_CHECK(memcmp(ls1, lb + (size_t)i * LR, LR * 4) == 0, "prompt %d differs in the batch", i);
        T_CHECK(memcmp(iou1, iou + 3 * i, sizeof iou1) == 0, "prompt %d IoU differs", i);
    }
    T_CHECK(memcmp(lb, lb + LR, LR * 4) != 0 && memcmp(lb + LR, lb + 2 * LR, LR * 4) != 0,
            "adapters had no effect");
    eng_sam_lora_destroy(model, a1);
    eng_sam_lora_destroy(model, a2);
    free_factors(&f1);
    free_factors(&f2);
    free(lb);
    free(ls1);
}

/* A resident embedding keeps its layer-0 side for adapter-free prompts only:
 * calls under an adapter compute their own, and adapter-free calls before
 * and after them still give plain SAM's answer, bit for bit. */
static void test_adapters_on_resident_embedding(void)
{
    T_NEED_FIXTURES();
    T_REQUIRE(model && emb, "setup failed");
    factors f;
    make_factors(&f, 4, 0.3f, 0.3f, 21, 0);
    eng_sam_lora *a = NULL;
    T_REQUIRE(eng_sam_lora_create(model, 4, 1.0f, (const float *const *)f.A,
                                  (const float *const *)f.B, 0, &a) == 0,
              "%s", eng_last_error());
    float *plain = malloc(LR * 4), *with = malloc(LR * 4), *got = malloc(4 * LR * 4);
    float ip[3], iw[3], ig[12];
    T_REQUIRE(decode(NULL, ip, plain) == 0 && decode(a, iw, with) == 0, "%s", eng_last_error());
    T_CHECK(memcmp(plain, with, LR * 4) != 0, "the adapter had no effect");
    const eng_sam_lora *order[4] = {a, NULL, a, NULL};
    for (int step = 0; step < 4; step++) {
        eng_sam_prompt p = {.n_points = 2, .points = pts, .labels = labels, .lora = order[step]};
        T_CHECK(eng_sam_decode_cached(model, "img", step ? NULL : emb, &info, &p, 1, 1, ig, got) ==
                    0,
                "step %d: %s", step, eng_last_error());
        const float *want = order[step] ? with : plain;
        T_CHECK(memcmp(got, want, LR * 4) == 0, "step %d (%s) differs", step,
                order[step] ? "adapter" : "plain");
        T_CHECK(memcmp(ig, order[step] ? iw : ip, sizeof ig / 4) == 0, "step %d IoU", step);
    }
    /* one call mixing them, from the kept side */
    eng_sam_prompt p4[4];
    for (int i = 0; i < 4; i++)
        p4[i] = (eng_sam_prompt){.n_points = 2, .points = pts, .labels = labels, .lora = order[i]};
    T_CHECK(eng_sam_decode_cached(model, "img", NULL, &info, p4, 4, 1, ig, got) == 0, "%s",
            eng_last_error());
    for (int i = 0; i < 4; i++)
        T_CHECK(memcmp(got + (size_t)i * LR, order[i] ? with : plain, LR * 4) == 0,
                "prompt %d of the mixed call differs", i);
    eng_sam_lora_destroy(model, a);
    free_factors(&f);
    free(plain), free(with), free(got);
}

/* create(scale = s, A, B) computes what create(scale = 1, A, s B) does, for
 * s != 1 (2.5 here), merged and unmerged: a scale applied twice, or not at
 * all, on either path breaks the identity. */
static void test_scale_is_applied_once(void)
{
    T_NEED_FIXTURES();
    T_REQUIRE(model && emb, "setup failed");
    const eng_sam_lora_target *tt = eng_sam_lora_targets();
    const float s = 2.5f;
    factors f, fs;
    make_factors(&f, 4, 0.3f, 0.3f, 31, 0);
    make_factors(&fs, 4, 0.3f, 0.3f, 31, 0);
    for (int t = 0; t < ENG_SAM_LORA_TARGETS; t++)
        for (int k = 0; k < 4 * tt[t].out; k++)
            fs.B[t][k] *= s;
    float *l0 = malloc(LR * 4), *l1 = malloc(LR * 4), *l2 = malloc(LR * 4);
    float iou0[3], iou1[3], iou2[3];
    T_REQUIRE(l0 && l1 && l2, "malloc");
    T_CHECK(decode(NULL, iou0, l0) == 0, "%s", eng_last_error());
    for (int merged = 0; merged <= 1; merged++) {
        eng_sam_lora *a = NULL, *b = NULL;
        T_REQUIRE(eng_sam_lora_create(model, 4, s, (const float *const *)f.A,
                                      (const float *const *)f.B, merged, &a) == 0 &&
                      eng_sam_lora_create(model, 4, 1.0f, (const float *const *)fs.A,
                                          (const float *const *)fs.B, merged, &b) == 0,
                  "%s", eng_last_error());
        T_CHECK(decode(a, iou1, l1) == 0 && decode(b, iou2, l2) == 0, "%s", eng_last_error());
        double d = t_max_abs_diff(l1, l2, LR, NULL), change = t_max_abs_diff(l0, l1, LR, NULL);
        printf("  %s: scale 2.5 vs 2.5 B: max diff %.2g (the adapter moves logits by %.2f)\n",
               merged ? "merged" : "unmerged", d, change);
        T_CHECK(change > 0.1, "%s: the adapter barely changed the logits (%g)",
                merged ? "merged" : "unmerged", change);
        T_CHECK(d <= 1e-4 && t_max_abs_diff(iou1, iou2, 3, NULL) <= 1e-5,
                "%s: scale s and s B disagree: logits %g", merged ? "merged" : "unmerged", d);
        eng_sam_lora_destroy(model, a);
        eng_sam_lora_destroy(model, b);
    }
    free_factors(&f);
    free_factors(&fs);
    free(l0), free(l1), free(l2);
}

/* Factors of every adapted layer of one training-fixture case, as f32. */
static int fixture_factors(eng_ckpt *g, const char *cs, float **A, float **B, int *n_adapted)
{
    const eng_sam_lora_target *tt = eng_sam_lora_targets();
    char name[192];
    *n_adapted = 0;
    for (int t = 0; t < ENG_SAM_LORA_TARGETS; t++) {
        A[t] = B[t] = NULL;
        snprintf(name, sizeof name, "%s.%s.lora_A", cs, tt[t].name);
        const eng_ckpt_tensor *a = eng_ckpt_find(g, name);
        snprintf(name, sizeof name, "%s.%s.lora_B", cs, tt[t].name);
        const eng_ckpt_tensor *b = eng_ckpt_find(g, name);
        if (!a && !b)
            continue;
        if (!a || !b || a->numel != 4 * tt[t].in || b->numel != 4 * tt[t].out)
            return -1;
        A[t] = malloc((size_t)a->numel * sizeof(float));
        B[t] = malloc((size_t)b->numel * sizeof(float));
        if (!A[t] || !B[t] || eng_ckpt_read_f32(g, a, A[t]) || eng_ckpt_read_f32(g, b, B[t]))
            return -1;
        (*n_adapted)++;
    }
    return 0;
}

/*
 * The adapted decoder against an independent reference: the training
 * fixture's low_res_logits and iou_predictions (PyTorch, float64, the
 * official decoder with y = x W^T + b + scale (x A^T) B^T, rank 4, alpha 8,
 * scale 2) for its five prompts, every layer or only the attention layers
 * adapted. Through the engine (eng_sam_lora_create with scale 2, merged and
 * unmerged) and through the adapter (ad_adapter_to_lora from alpha 8 and
 * rank 4), so a scale of (alpha/r)^2 or 1 in either place fails.
 */
static void test_fixture_adapted_logits(void)
{
    T_NEED_FIXTURES();
    T_REQUIRE(model, "setup failed");
    static const char *const cases[] = {"pos_point", "pos_points_box", "neg_point", "attn_only",
                                        "target_mask2"};
    json_t *js = json_load_file(t_fixture("golden_train_tiny.json"), 0, NULL);
    eng_ckpt *g = NULL;
    T_REQUIRE(js && eng_ckpt_open(&g, t_fixture("golden_train_tiny.safetensors")) == 0,
              "training fixture: %s", eng_last_error());
    T_CHECK(json_integer_value(json_object_get(js, "rank")) == 4 &&
                json_number_value(json_object_get(js, "alpha")) == 8.0,
            "the fixture is rank 4, alpha 8");
    float *temb = malloc(ENG_SAM_EMB_FLOATS * sizeof(float));
    float *want = malloc(LR * sizeof(float)), *got = malloc(LR * sizeof(float));
    T_REQUIRE(temb && want && got, "malloc");
    const eng_ckpt_tensor *te = eng_ckpt_find(g, "image_embedding");
    T_REQUIRE(te && te->numel == ENG_SAM_EMB_FLOATS && eng_ckpt_read_f32(g, te, temb) == 0,
              "image_embedding");
    json_t *jc = json_object_get(js, "cases");
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const char *cs = cases[c];
        json_t *pr = NULL, *v;
        size_t i;
        json_array_foreach(jc, i, v) if (!strcmp(json_string_value(json_object_get(v, "name")), cs))
            pr = json_object_get(v, "prompt");
        T_REQUIRE(pr, "%s: no prompt in the JSON", cs);
        float cpts[8];
        int clab[4], np = (int)json_array_size(json_object_get(pr, "points"));
        T_REQUIRE(np >= 1 && np <= 4, "%s: %d points", cs, np);
        eng_sam_prompt p = {.n_points = np, .points = cpts, .labels = clab};
        for (int k = 0; k < np; k++) {
            json_t *pt = json_array_get(json_object_get(pr, "points"), (size_t)k);
            cpts[2 * k] = (float)json_number_value(json_array_get(pt, 0));
            cpts[2 * k + 1] = (float)json_number_value(json_array_get(pt, 1));
            clab[k] = (int)json_integer_value(json_array_get(json_object_get(pr, "labels"), k));
        }
        if ((v = json_object_get(pr, "box"))) {
            p.has_box = 1;
            for (int k = 0; k < 4; k++)
                p.box[k] = (float)json_number_value(json_array_get(v, (size_t)k));
        }
        char name[96];
        double wiou[3];
        snprintf(name, sizeof name, "%s.low_res_logits", cs);
        const eng_ckpt_tensor *tl = eng_ckpt_find(g, name);
        snprintf(name, sizeof name, "%s.iou_predictions", cs);
        const eng_ckpt_tensor *ti = eng_ckpt_find(g, name);
        T_REQUIRE(tl && tl->numel == LR && eng_ckpt_read_f32(g, tl, want) == 0 && ti &&
                      ti->numel == 3,
                  "%s: reference logits", cs);
        memcpy(wiou, ti->data, sizeof wiou);

        float *A[ENG_SAM_LORA_TARGETS], *B[ENG_SAM_LORA_TARGETS], iou[3];
        int n_adapted = 0;
        T_CHECK(fixture_factors(g, cs, A, B, &n_adapted) == 0 &&
                    n_adapted == (strcmp(cs, "attn_only") ? ENG_SAM_LORA_TARGETS : 28),
                "%s: %d adapted layers", cs, n_adapted);
        /* plain SAM is far from the reference: the adapter matters here */
        p.lora = NULL;
        T_CHECK(eng_sam_decode(model, temb, &info, &p, 1, 1, iou, got) == 0, "%s",
                eng_last_error());
        double plain = t_max_abs_diff(got, want, LR, NULL);
        T_CHECK(plain > 0.05, "%s: the fixture's adapter changes the logits by only %g", cs, plain);
        ad_adapter ad = {.rank = 4, .alpha = 8.0f};
        memcpy(ad.A, A, sizeof A);
        memcpy(ad.B, B, sizeof B);
        T_CHECK(ad_adapter_scale(&ad) == 2.0f, "adapter scale %g, want alpha / rank = 2",
                (double)ad_adapter_scale(&ad));
        for (int way = 0; way < 3; way++) {
            eng_sam_lora *l = NULL;
            int rc = way < 2 ? eng_sam_lora_create(model, 4, 2.0f, (const float *const *)A,
                                                   (const float *const *)B, way, &l)
                             : ad_adapter_to_lora(&ad, model, 0, &l);
            T_CHECK(rc == 0, "%s: %s", cs, eng_last_error());
            p.lora = l;
            T_CHECK(l && eng_sam_decode(model, temb, &info, &p, 1, 1, iou, got) == 0, "%s: %s", cs,
                    eng_last_error());
            size_t worst = 0;
            double d = t_max_abs_diff(got, want, LR, &worst), di = 0;
            for (int k = 0; k < 3; k++)
                di = fmax(di, fabs(iou[k] - wiou[k]));
            const char *how = way == 0 ? "unmerged" : way == 1 ? "merged" : "ad_adapter_to_lora";
            printf("  %s, %s: logits max |diff| %.2g (plain SAM %.2g), IoU %.2g\n", cs, how, d,
                   plain, di);
            T_CHECK(d <= 2e-3, "%s, %s: logits max |diff| %g at %zu: %g vs %g", cs, how, d, worst,
                    got[worst], want[worst]);
            T_CHECK(di <= 1e-3, "%s, %s: IoU max |diff| %g", cs, how, di);
            eng_sam_lora_destroy(model, l);
        }
        for (int t = 0; t < ENG_SAM_LORA_TARGETS; t++) {
            free(A[t]);
            free(B[t]);
        }
    }
    free(temb), free(want), free(got);
    eng_ckpt_close(g);
    json_decref(js);
}

static void test_bad_adapters(void)
{
    T_NEED_FIXTURES();
    T_REQUIRE(model, "setup failed");
    factors f;
    make_factors(&f, 4, 1, 1, 3, 0);
    eng_sam_lora *l = NULL;
    T_CHECK(eng_sam_lora_create(model, 0, 1, (const float *const *)f.A, (const float *const *)f.B,
                                0, &l) == ENG_EINVAL &&
                !l,
            "rank 0");
    T_CHECK(eng_sam_lora_create(model, 99, 1, (const float *const *)f.A, (const float *const *)f.B,
                                0, &l) == ENG_EINVAL,
            "rank 99");
    float *keep = f.B[5];
    f.B[5] = NULL;
    T_CHECK(eng_sam_lora_create(model, 4, 1, (const float *const *)f.A, (const float *const *)f.B,
                                0, &l) == ENG_EINVAL,
            "A without B");
    f.B[5] = keep;
    f.A[3][2] = NAN;
    T_CHECK(eng_sam_lora_create(model, 4, 1, (const float *const *)f.A, (const float *const *)f.B,
                                1, &l) == ENG_EINVAL &&
                !l,
            "NaN factor");
    T_CHECK(strstr(eng_last_error(), "not finite") != NULL, "message: %s", eng_last_error());
    free_factors(&f);
}

int main(void)
{
    setup();
    T_RUN(test_target_table);
    T_RUN(test_zero_adapter_is_plain_sam);
    T_RUN(test_random_adapter_changes_and_merge_agrees);
    T_RUN(test_mixed_batch_equals_separate_calls);
    T_RUN(test_adapters_on_resident_embedding);
    T_RUN(test_scale_is_applied_once);
    T_RUN(test_fixture_adapted_logits);
    T_RUN(test_bad_adapters);
    free(emb);
    eng_sam_destroy(model);
    eng_backend_destroy(be);
    return t_summary("test_lora");
}
