/*
 * tests/test_train_eval.c: the pieces `tasam-train run` and `eval` stand
 * on, on the fixture `tiny` model and a small synthetic set:
 * - the embedding cache: what it stores is the encoder's output to f16
 *   precision, a second open finds everything, a damaged entry is refused
 *   at read and a torn one recomputed, another model's entries are misses;
 * - task texts are embedded as the server embeds a request's task
 *   (normalised), and the shuffled control gives every category another's;
 * - evaluation: with the IoU threshold at 1 no mask is kept, so the mIoU is
 *   exactly the share of pairs whose task has no object in the image
 *   (counted here from the annotations), per group too; the same seed gives
 *   the same numbers; plain SAM's adapters (a zero hypernetwork) equal
 *   no adapter at all.
 */
#include "harness.h"
#include "tdata.h"

#include "adapters/adapter.h"
#include "engine/error.h"
#include "engine/sam.h"
#include "hypernet/hypernet.h"
#include "hypernet/text.h"
#include "train/embed.h"
#include "train/evaluate.h"
#include "train/tasks.h"

static eng_backend *be;
static eng_sam *model;
static tr_coco *val;
static tr_embed *emb;
static char cache[512];

static void setup(void)
{
    if (!t_fixtures())
        return;
    if (td_synth("set", 7, 1, 4, 160, 120) || tr_coco_open_dir(&val, td_path("set/val"), 0) ||
        eng_backend_cpu_create(&be, 1) ||
        eng_sam_load(&model, t_fixture("sam_tiny.safetensors"), be,
                     &(eng_sam_options){.max_decode_batch = 4})) {
        fprintf(stderr, "setup: %s\n", eng_last_error());
        eng_sam_destroy(model);
        model = NULL;
        return;
    }
    snprintf(cache, sizeof cache, "%s", td_path("cache"));
}

#define NEED_SETUP()                                                                               \
    do {                                                                                           \
        T_NEED_FIXTURES();                                                                         \
        T_REQUIRE(model &&val, "setup failed");                                                    \
    } while (0)

static void test_embed_cache(void)
{
    NEED_SETUP();
    int missing = -1;
    T_REQUIRE(tr_embed_open(&emb, val, cache, eng_sam_model_id(model), &missing) == 0, "%s",
              eng_last_error());
    T_CHECK(missing == val->n_images, "%d missing of %d", missing, val->n_images);
    float *a = malloc(ENG_SAM_EMB_FLOATS * sizeof *a), *b = malloc(ENG_SAM_EMB_FLOATS * sizeof *b);
    float *in = malloc((size_t)3 * 1024 * 1024 * sizeof *in);
    T_REQUIRE(tr_embed_get(emb, 0, a, NULL) == ENG_ENOTFOUND, "an uncomputed entry was read");
    T_REQUIRE(tr_embed_fill(emb, model, 1, NULL, NULL, NULL) == 0, "%s", eng_last_error());
    T_CHECK(tr_embed_missing(emb) == 0, "%d still missing", tr_embed_missing(emb));
    /* the stored embedding is the encoder's, to f16 precision */
    eng_image img = {0};
    eng_sam_imginfo info, got;
    T_REQUIRE(tr_coco_load_image(val, 1, &img) == 0 && eng_sam_preprocess(&img, in, &info) == 0 &&
                  eng_sam_encode(model, in, 1, a) == 0 && tr_embed_get(emb, 1, b, &got) == 0,
              "%s", eng_last_error());
    eng_image_free(&img);
    double worst = 0;
    for (size_t i = 0; i < ENG_SAM_EMB_FLOATS; i++) {
        double d = fabs(a[i] - b[i]) / (fabs(a[i]) + 1e-4);
        worst = d > worst ? d : worst;
    }
    T_CHECK(worst <= 1.0 / 1024, "cached embedding off by %.3g relative (f16 keeps 2^-11)", worst);
    T_CHECK(memcmp(&got, &info, sizeof got) == 0, "sizes %dx%d -> %dx%d, want %dx%d -> %dx%d",
            got.orig_w, got.orig_h, got.input_w, got.input_h, info.orig_w, info.orig_h,
            info.input_w, info.input_h);
    /* a second open finds every entry; another model finds none */
    tr_embed *e2 = NULL;
    T_REQUIRE(tr_embed_open(&e2, val, cache, eng_sam_model_id(model), &missing) == 0, "%s",
              eng_last_error());
    T_CHECK(missing == 0, "second open: %d missing", missing);
    tr_embed_destroy(e2);
    T_REQUIRE(tr_embed_open(&e2, val, cache, "vit_x-0123456789abcdef", &missing) == 0, "%s",
              eng_last_error());
    T_CHECK(missing == val->n_images, "another model: %d missing", missing);
    T_CHECK(tr_embed_fill(e2, model, 1, NULL, NULL, NULL) == ENG_EINVAL,
            "filled another model's cache");
    tr_embed_destroy(e2);
    /* a flipped byte in the data: refused at read, naming the file */
    const char *p2 = tr_embed_path(emb, 2);
    size_t len = 0;
    uint8_t *f = t_read_file(p2, &len);
    T_REQUIRE(f && len > 4096, "cannot read %s", p2);
    f[len - 100] ^= 0x40;
    FILE *w = fopen(p2, "wb");
    T_REQUIRE(w && fwrite(f, 1, len, w) == len && fclose(w) == 0, "cannot rewrite %s", p2);
    T_CHECK(tr_embed_get(emb, 2, b, NULL) == ENG_EFORMAT && strstr(eng_last_error(), p2) &&
                strstr(eng_last_error(), "damaged"),
            "a damaged entry: %s", eng_last_error());
    /* a torn one (truncated): a miss at open, recomputed */
    w = fopen(p2, "wb");
    T_REQUIRE(w && fwrite(f, 1, len / 2, w) == len / 2 && fclose(w) == 0, "cannot rewrite %s", p2);
    free(f);
    T_REQUIRE(tr_embed_open(&e2, val, cache, eng_sam_model_id(model), &missing) == 0, "%s",
              eng_last_error());
    T_CHECK(missing == 1, "a torn entry: %d missing", missing);
    T_CHECK(tr_embed_fill(e2, model, 1, NULL, NULL, NULL) == 0 && tr_embed_get(e2, 2, b, NULL) == 0,
            "recomputing it: %s", eng_last_error());
    tr_embed_destroy(e2);
    free(a);
    free(b);
    free(in);
}

static void test_tasks(void)
{
    NEED_SETUP();
    hn_text *tx = NULL;
    tr_tasks *t = NULL;
    T_REQUIRE(hn_text_create_hashed(&tx, 64) == 0 && tr_tasks_embed(&t, val, tx) == 0, "%s",
              eng_last_error());
    T_CHECK(t->n_categories == val->n_categories && t->dim == 64, "shape");
    /* the server's embedding of a phrasing, shouted and spaced out */
    const tr_coco_category *k = &val->categories[3];
    char loud[256], norm[AD_TASK_MAX + 1];
    snprintf(loud, sizeof loud, "  %s  ", k->tasks[1]);
    for (char *c = loud; *c; c++)
        *c = (char)(*c >= 'a' && *c <= 'z' ? *c - 32 : *c);
    float e[64];
    T_REQUIRE(ad_normalize_task(loud, strlen(loud), norm, sizeof norm) == 0, "%s",
              eng_last_error());
    const char *tx1[1] = {norm};
    size_t l1[1] = {strlen(norm)};
    T_REQUIRE(hn_text_embed(tx, tx1, l1, 1, e) == 0, "%s", eng_last_error());
    T_CHECK(memcmp(e, tr_tasks_get(t, 3, 1), sizeof e) == 0,
            "'%s' embedded otherwise than the server embeds it", k->tasks[1]);
    /* the control: nobody keeps its own texts, and each is someone else's */
    T_REQUIRE(tr_tasks_shuffle(t, 5) == 0, "%s", eng_last_error());
    int *seen = calloc((size_t)t->n_categories, sizeof *seen);
    for (int c = 0; c < t->n_categories; c++) {
        T_CHECK(t->source[c] != c, "category %d keeps its texts", c);
        seen[t->source[c]]++;
        const int s = t->source[c];
        T_CHECK(tr_tasks_get(t, c, 0) == t->emb + (size_t)t->first[s] * t->dim,
                "category %d's first phrasing is not its source's", c);
    }
    for (int c = 0; c < t->n_categories; c++)
        T_CHECK(seen[c] == 1, "category %d given %d times", c, seen[c]);
    free(seen);
    tr_tasks_destroy(t);
    hn_text_destroy(tx);
}

static void test_eval(void)
{
    NEED_SETUP();
    T_REQUIRE(emb, "the cache test did not run");
    hn_hypernet_config cfg;
    hn_hypernet_config_default(&cfg);
    cfg.text_dim = 64;
    cfg.hidden = 32;
    snprintf(cfg.text_model, sizeof cfg.text_model, "hashed-64");
    hn_params *p = NULL;
    hn_text *tx = NULL;
    tr_tasks *t = NULL;
    T_REQUIRE(hn_params_create(&p, &cfg) == 0 && hn_text_create_hashed(&tx, 64) == 0 &&
                  tr_tasks_embed(&t, val, tx) == 0,
              "%s", eng_last_error());
    hn_params_init(p, 1, 0);
    tr_eval_config c;
    tr_eval_config_default(&c);
    c.ap = 0;
    c.prompts = 2;
    c.max_present = 2;
    c.iou_thresh = 1.0f;
    tr_eval_result r, r2;
    T_REQUIRE(tr_eval_run(&r, model, emb, val, t, p, &c, NULL, NULL, NULL) == 0, "%s",
              eng_last_error());
    /* nothing kept: a pair scores 1 exactly when the task has no object in
     * the image, so the mIoU is that share; count it from the annotations */
    int pairs = 0, empty = 0, gp[TR_EVAL_GROUPS] = {0}, ge[TR_EVAL_GROUPS] = {0};
    T_REQUIRE(r.n_tasks > 0, "no task evaluated");
    for (int i = 0; i < r.n_tasks; i++) {
        const tr_eval_task *k = &r.tasks[i];
        T_CHECK(k->iou_sum == floor(k->iou_sum), "task %d: IoU sum %g is not a count", i,
                k->iou_sum);
        pairs += k->pairs;
        empty += (int)k->iou_sum;
        gp[k->group] += k->pairs;
        ge[k->group] += (int)k->iou_sum;
        if (k->group == TR_EVAL_NO_OBJECTS)
            T_CHECK(k->iou_sum == k->pairs, "a no-object task scored %g of %d", k->iou_sum,
                    k->pairs);
        /* a present category must have scored 0 on some image: each of its
         * pairs either had an instance (0) or not (1); recount */
        int inst_pairs = 0;
        for (int im = 0; im < val->n_images; im++) {
            int n_inst = 0;
            uint8_t *mask = malloc((size_t)val->images[im].width * val->images[im].height);
            tr_coco_category_mask(val, im, k->category, mask, &n_inst);
            free(mask);
            inst_pairs += n_inst > 0;
        }
        T_CHECK(k->pairs - (int)k->iou_sum <= inst_pairs,
                "task %d: %d pairs scored 0 but the category is in %d images", i,
                k->pairs - (int)k->iou_sum, inst_pairs);
    }
    T_CHECK(r.pairs == pairs && fabs(r.miou - (double)empty / pairs) < 1e-12,
            "mIoU %.6f over %d pairs, want %d/%d", r.miou, r.pairs, empty, pairs);
    for (int g = 0; g < TR_EVAL_GROUPS; g++)
        T_CHECK(r.group_pairs[g] == gp[g] &&
                    (gp[g] ? fabs(r.group_miou[g] - (double)ge[g] / gp[g]) < 1e-12
                           : r.group_miou[g] == -1),
                "group %s", tr_eval_group_name(g));
    T_CHECK(gp[TR_EVAL_SEEN] > 0 && gp[TR_EVAL_HELDOUT_PHRASING] > 0 &&
                gp[TR_EVAL_NO_OBJECTS] == val->n_images,
            "groups: seen %d, held-out phrasings %d, no objects %d", gp[TR_EVAL_SEEN],
            gp[TR_EVAL_HELDOUT_PHRASING], gp[TR_EVAL_NO_OBJECTS]);
    /* the held-out phrasing of a pair sees the same clicks as the seen one:
     * with plain SAM (B = 0) their IoUs agree */
    c.iou_thresh = 0.3f;
    T_REQUIRE(tr_eval_run(&r2, model, emb, val, t, p, &c, NULL, NULL, NULL) == 0, "%s",
              eng_last_error());
    T_CHECK(r2.group_pairs[TR_EVAL_SEEN] == r2.group_pairs[TR_EVAL_HELDOUT_PHRASING] &&
                fabs(r2.group_miou[TR_EVAL_SEEN] - r2.group_miou[TR_EVAL_HELDOUT_PHRASING]) < 1e-12,
            "plain SAM: seen %.6f (%d pairs), held-out phrasings %.6f (%d)",
            r2.group_miou[TR_EVAL_SEEN], r2.group_pairs[TR_EVAL_SEEN],
            r2.group_miou[TR_EVAL_HELDOUT_PHRASING], r2.group_pairs[TR_EVAL_HELDOUT_PHRASING]);
    T_CHECK(r2.miou > 0 && r2.miou < 1, "mIoU %.4f", r2.miou);
    /* the same seed, the same numbers */
    tr_eval_result r3;
    T_REQUIRE(tr_eval_run(&r3, model, emb, val, t, p, &c, NULL, NULL, NULL) == 0, "%s",
              eng_last_error());
    T_CHECK(r3.miou == r2.miou && r3.pairs == r2.pairs, "rerun: %.9f vs %.9f", r3.miou, r2.miou);
    json_t *j = tr_eval_json(&r2, val, 1);
    T_CHECK(json_is_real(json_object_get(j, "miou")) &&
                json_array_size(json_object_get(j, "per_task")) == (size_t)r2.n_tasks &&
                json_is_null(json_object_get(j, "ap")),
            "JSON shape");
    json_decref(j);
    tr_eval_result_free(&r);
    tr_eval_result_free(&r2);
    tr_eval_result_free(&r3);
    tr_tasks_destroy(t);
    hn_text_destroy(tx);
    hn_params_destroy(p);
}

int main(void)
{
    if (td_init("train-eval"))
        return 1;
    setup();
    T_RUN(test_embed_cache);
    T_RUN(test_tasks);
    T_RUN(test_eval);
    tr_embed_destroy(emb);
    eng_sam_destroy(model);
    eng_backend_destroy(be);
    tr_coco_destroy(val);
    td_cleanup();
    return t_summary("test_train_eval");
}
