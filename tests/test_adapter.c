/*
 * tests/test_adapter.c: task adapters (adapters/adapter.h) end to end:
 * task normalisation and its errors, ids, generation with a zero and a
 * random hypernetwork decoded on the fixture `tiny` SAM (zero = plain SAM
 * bit for bit, random = changed and deterministic, merged = unmerged, a
 * batch mixing three adapters = three calls), the file and memory forms,
 * hostile adapter bytes, text_tiny as the encoder, and the `tasam` CLI.
 */
#include "harness.h"

#include <sys/wait.h>
#include <unistd.h>

#include "adapters/adapter.h"
#include "engine/ckpt.h"
#include "engine/error.h"
#include "engine/ops.h"
#include "engine/sam.h"
#include "hypernet/hypernet.h"
#include "hypernet/text.h"

#define NT ENG_SAM_LORA_TARGETS
#define LR (3 * ENG_SAM_LOWRES_FLOATS)

static eng_backend *be;
static eng_sam *model;
static float *emb;
static hn_text *hashed;            /* hashed-384 */
static hn_hypernet *hzero, *hrand; /* zero-B and random, both hashed-384 */
static char dir[256];
static char build_dir[512] = "build";
static const eng_sam_imginfo info = {800, 534, 1024, 684};
static const float pts[4] = {400, 293.7f, 200, 160.2f};
static const int labels[2] = {1, 0};

static const char *tmp(const char *name)
{
    static char buf[4][512];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name);
    return buf[k];
}

static void setup(void)
{
    if (eng_backend_cpu_create(&be, 0) || hn_text_create_hashed(&hashed, 384)) {
        fprintf(stderr, "setup: %s\n", eng_last_error());
        return;
    }
    hn_hypernet_config c;
    hn_hypernet_config_default(&c);
    snprintf(c.text_model, sizeof c.text_model, "hashed-384");
    if (hn_hypernet_init(tmp("zero.safetensors"), &c, 1, 0) ||
        hn_hypernet_load(&hzero, tmp("zero.safetensors"), be) ||
        hn_hypernet_init(tmp("rand.safetensors"), &c, 2, 1) ||
        hn_hypernet_load(&hrand, tmp("rand.safetensors"), be)) {
        fprintf(stderr, "setup: %s\n", eng_last_error());
        return;
    }
    if (!t_fixtures())
        return;
    eng_ckpt *g = NULL;
    if (eng_sam_load(&model, t_fixture("sam_tiny.safetensors"), be, NULL) ||
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

static int decode(const eng_sam_lora *lo, float *iou, float *lo_res)
{
    eng_sam_prompt p = {.n_points = 2, .points = pts, .labels = labels, .lora = lo};
    return eng_sam_decode(model, emb, &info, &p, 1, 1, iou, lo_res);
}

static ad_adapter *gen(hn_hypernet *h, const char *task)
{
    ad_adapter *a = NULL;
    if (ad_adapter_generate(hashed, h, task, strlen(task), &a))
        fprintf(stderr, "  generate '%s': %s\n", task, eng_last_error());
    return a;
}

static int same_factors(const ad_adapter *a, const ad_adapter *b)
{
    if (a->rank != b->rank || a->n_floats != b->n_floats || memcmp(a->present, b->present, NT))
        return 0;
    return memcmp(a->mem, b->mem, a->n_floats * sizeof(float)) == 0;
}

/* ---- normalisation ---- */

static int norm_ok(const char *in, size_t len, const char *want)
{
    char out[AD_TASK_MAX + 1];
    int rc = ad_normalize_task(in, len, out, sizeof out);
    if (rc || strcmp(out, want)) {
        fprintf(stderr, "  normalise '%s': rc %d '%s' (%s)\n", in, rc, out, eng_last_error());
        return 0;
    }
    return 1;
}

static int norm_err(const char *in, size_t len, const char *msg)
{
    char out[AD_TASK_MAX + 1];
    int rc = ad_normalize_task(in, len, out, sizeof out);
    if (rc != ENG_EINVAL || !strstr(eng_last_error(), msg)) {
        fprintf(stderr, "  normalise (%zu bytes): rc %d, message '%s', expected '%s'\n", len, rc,
                eng_last_error(), msg);
        return 0;
    }
    return 1;
}

#define S(x) x, sizeof(x) - 1

static void test_normalize(void)
{
    T_CHECK(norm_ok(S("  Segment  ALL apples "), "segment all apples"), "basic");
    T_CHECK(norm_ok(S("segment all apples"), "segment all apples"), "already normal");
    T_CHECK(norm_ok(S("\tFind\n\r every\v\fSUITCASE\n"), "find every suitcase"), "ASCII spaces");
    T_CHECK(norm_ok(S("a\xc2\xa0\xe3\x80\x80"
                      "b\xe2\x80\x83\xc2\x85"
                      "c"),
                    "a b c"),
            "Unicode spaces (NBSP, ideographic, em space, NEL)");
    T_CHECK(norm_ok(S("\xc3\x89l\xc3\xa9phant CAF\xc3\x89"), "\xc3\x89l\xc3\xa9phant caf\xc3\x89"),
            "non-ASCII kept as is");
    T_CHECK(norm_ok(S("\xe4\xb8\xad\xe6\x96\x87 \xf0\x9f\x8d\x8e"),
                    "\xe4\xb8\xad\xe6\x96\x87 \xf0\x9f\x8d\x8e"),
            "CJK and emoji");
    T_CHECK(norm_err(S(""), "empty"), "empty");
    T_CHECK(norm_err(S(" \t\n  "), "only whitespace"), "whitespace only");
    char *big = malloc(100 * 1024);
    memset(big, 'a', 100 * 1024);
    T_CHECK(norm_err(big, 100 * 1024, "at most 1000"), "100 KB");
    {
        char out[AD_TASK_MAX + 1];
        T_CHECK(ad_normalize_task(big, AD_TASK_MAX, out, sizeof out) == 0 &&
                    strlen(out) == AD_TASK_MAX,
                "exactly the limit");
        T_CHECK(ad_normalize_task(big, AD_TASK_MAX + 1, out, sizeof out) == ENG_EINVAL, "one over");
        T_CHECK(ad_normalize_task(big, 10, out, 5) == ENG_EINVAL, "small output buffer");
    }
    free(big);
    T_CHECK(norm_err(S("apple\xff"), "not valid UTF-8 (at byte 5)"), "0xff");
    T_CHECK(norm_err(S("\xc0\xaf"), "not valid UTF-8"), "overlong");
    T_CHECK(norm_err(S("\xed\xa0\x80"), "not valid UTF-8"), "surrogate");
    T_CHECK(norm_err(S("ab\xe2\x82"), "not valid UTF-8 (at byte 2)"), "truncated");
    T_CHECK(norm_err(S("\xf4\x90\x80\x80"), "not valid UTF-8"), "beyond U+10FFFF");
    T_CHECK(norm_err(S("seg\0ment"), "NUL byte (at byte 3)"), "NUL");
    T_CHECK(norm_err(S("bell\a"), "control character U+0007"), "C0 control");
    T_CHECK(norm_err(S("x\x7f"), "U+007F"), "DEL");
    T_CHECK(norm_err(S("x\xc2\x80"), "U+0080"), "C1 control");
}

static void test_ids(void)
{
    T_REQUIRE(hzero && hrand, "setup failed");
    char a[AD_ID_LEN + 1], b[AD_ID_LEN + 1], c[AD_ID_LEN + 1];
    T_REQUIRE(ad_task_id(S("  Segment  ALL apples "), hn_hypernet_id(hzero), a) == 0, "%s",
              eng_last_error());
    T_REQUIRE(ad_task_id(S("segment all apples"), hn_hypernet_id(hzero), b) == 0, "%s",
              eng_last_error());
    T_REQUIRE(ad_task_id(S("segment all apples"), hn_hypernet_id(hrand), c) == 0, "%s",
              eng_last_error());
    T_CHECK(strlen(a) == AD_ID_LEN && !strcmp(a, b), "normalised variants differ: %s %s", a, b);
    T_CHECK(strcmp(a, c), "another hypernetwork, same id");
    T_CHECK(ad_task_id(S("segment all pears"), hn_hypernet_id(hzero), c) == 0 && strcmp(a, c),
            "another task, same id");
    T_CHECK(ad_task_id(S(""), hn_hypernet_id(hzero), c) == ENG_EINVAL, "empty task");
    T_CHECK(ad_task_id(S("x"), "XYZ", c) == ENG_EINVAL, "bad hypernet id");
    ad_adapter *g1 = gen(hzero, "  Segment  ALL apples "), *g2 = gen(hzero, "segment all apples");
    T_REQUIRE(g1 && g2, "generate");
    T_CHECK(!strcmp(ad_adapter_id(g1), a) && !strcmp(ad_adapter_id(g2), a), "generated id");
    T_CHECK(same_factors(g1, g2), "same normalised task, different factors");
    T_CHECK(!strcmp(g1->task, "  Segment  ALL apples ") &&
                !strcmp(g1->task_normalized, "segment all apples"),
            "task fields");
    T_CHECK(!strcmp(g1->hypernet_id, hn_hypernet_id(hzero)) && !strcmp(g1->hypernet_version, "0") &&
                !strcmp(g1->text_model, "hashed-384") && g1->rank == 4 && g1->alpha == 8 &&
                g1->n_targets == NT && g1->created > 0,
            "metadata");
    ad_adapter *bad = NULL;
    T_CHECK(ad_adapter_generate(hashed, hzero, S("a\0b"), &bad) == ENG_EINVAL && !bad, "NUL");
    T_CHECK(ad_adapter_generate(hashed, hzero, S("\xff"), &bad) == ENG_EINVAL && !bad, "UTF-8");
    hn_text *t64 = NULL;
    hn_text_create_hashed(&t64, 64);
    T_CHECK(ad_adapter_generate(t64, hzero, S("apples"), &bad) == ENG_EINVAL && !bad,
            "text encoder of another width");
    hn_text_destroy(t64);
    ad_adapter_destroy(g1);
    ad_adapter_destroy(g2);
}

/* ---- decoding with generated adapters ---- */

static void test_zero_hypernet_is_plain_sam(void)
{
    T_NEED_FIXTURES();
    T_REQUIRE(model && emb && hzero, "setup failed");
    ad_adapter *a = gen(hzero, "segment all round orange fruits");
    T_REQUIRE(a, "generate");
    int bzero = 1;
    for (int t = 0; t < NT; t++)
        for (int i = 0; i < a->rank * eng_sam_lora_targets()[t].out; i++)
            bzero &= a->B[t][i] == 0.0f;
    T_CHECK(bzero, "B not exactly zero");
    eng_sam_lora *un = NULL, *mg = NULL;
    T_REQUIRE(ad_adapter_to_lora(a, model, 0, &un) == 0, "%s", eng_last_error());
    T_REQUIRE(ad_adapter_to_lora(a, model, 1, &mg) == 0, "%s", eng_last_error());
    float iou0[3], iou1[3], iou2[3];
    float *l0 = malloc(LR * 4), *l1 = malloc(LR * 4), *l2 = malloc(LR * 4);
    T_CHECK(decode(NULL, iou0, l0) == 0, "%s", eng_last_error());
    T_CHECK(decode(un, iou1, l1) == 0, "%s", eng_last_error());
    T_CHECK(decode(mg, iou2, l2) == 0, "%s", eng_last_error());
    T_CHECK(!memcmp(l0, l1, LR * 4) && !memcmp(iou0, iou1, sizeof iou0), "unmerged: max diff %g",
            t_max_abs_diff(l0, l1, LR, NULL));
    T_CHECK(!memcmp(l0, l2, LR * 4) && !memcmp(iou0, iou2, sizeof iou0), "merged: max diff %g",
            t_max_abs_diff(l0, l2, LR, NULL));
    eng_sam_lora_destroy(model, un);
    eng_sam_lora_destroy(model, mg);
    ad_adapter_destroy(a);
    free(l0);
    free(l1);
    free(l2);
}

static void test_random_hypernet_changes_deterministically(void)
{
    T_NEED_FIXTURES();
    T_REQUIRE(model && emb && hrand, "setup failed");
    ad_adapter *a = gen(hrand, "segment all apples"), *a2 = gen(hrand, "segment all apples");
    ad_adapter *b = gen(hrand, "highlight every suitcase");
    T_REQUIRE(a && a2 && b, "generate");
    T_CHECK(same_factors(a, a2), "same task twice, different factors");
    eng_sam_lora *la = NULL, *la2 = NULL, *lb = NULL, *lm = NULL;
    T_REQUIRE(
        ad_adapter_to_lora(a, model, 0, &la) == 0 && ad_adapter_to_lora(a2, model, 0, &la2) == 0 &&
            ad_adapter_to_lora(b, model, 0, &lb) == 0 && ad_adapter_to_lora(a, model, 1, &lm) == 0,
        "%s", eng_last_error());
    float i0[3], ia[3], ia2[3], ib[3], im[3];
    float *l0 = malloc(LR * 4), *la_ = malloc(LR * 4), *la2_ = malloc(LR * 4),
          *lb_ = malloc(LR * 4), *lm_ = malloc(LR * 4);
    decode(NULL, i0, l0);
    decode(la, ia, la_);
    decode(la2, ia2, la2_);
    decode(lb, ib, lb_);
    decode(lm, im, lm_);
    double change = t_max_abs_diff(l0, la_, LR, NULL), between = t_max_abs_diff(la_, lb_, LR, NULL);
    double merged = t_max_abs_diff(la_, lm_, LR, NULL);
    printf("  random hypernet: max logit change %.3f, between two tasks %.3f, merged vs unmerged "
           "%.2g\n",
           change, between, merged);
    T_CHECK(change > 0.1, "adapter barely changed the logits (%g)", change);
    T_CHECK(between > 0.01, "two tasks gave the same logits (%g)", between);
    T_CHECK(!memcmp(la_, la2_, LR * 4) && !memcmp(ia, ia2, sizeof ia), "not deterministic");
    T_CHECK(merged <= 1e-3 && t_max_abs_diff(ia, im, 3, NULL) <= 1e-4, "merged vs unmerged %g",
            merged);
    eng_sam_lora_destroy(model, la);
    eng_sam_lora_destroy(model, la2);
    eng_sam_lora_destroy(model, lb);
    eng_sam_lora_destroy(model, lm);
    ad_adapter_destroy(a);
    ad_adapter_destroy(a2);
    ad_adapter_destroy(b);
    free(l0);
    free(la_);
    free(la2_);
    free(lb_);
    free(lm_);
}

static void test_mixed_batch_of_three(void)
{
    T_NEED_FIXTURES();
    T_REQUIRE(model && emb && hrand, "setup failed");
    const char *tasks[3] = {"segment all apples", "find the dog", "every red object"};
    ad_adapter *a[3];
    eng_sam_lora *l[3] = {NULL, NULL, NULL};
    eng_sam_prompt p[3];
    for (int i = 0; i < 3; i++) {
        a[i] = gen(hrand, tasks[i]);
        T_REQUIRE(a[i], "generate");
        /* one merged among them: a batch mixes both kinds */
        T_REQUIRE(ad_adapter_to_lora(a[i], model, i == 1, &l[i]) == 0, "%s", eng_last_error());
        p[i] = (eng_sam_prompt){.n_points = 2, .points = pts, .labels = labels, .lora = l[i]};
    }
    float iou[9], iou1[3], *lb = malloc(3 * LR * 4), *ls = malloc(LR * 4);
    T_REQUIRE(eng_sam_decode(model, emb, &info, p, 3, 1, iou, lb) == 0, "%s", eng_last_error());
    for (int i = 0; i < 3; i++) {
        T_CHECK(decode(l[i], iou1, ls) == 0, "%s", eng_last_error());
        T_CHECK(!memcmp(ls, lb + (size_t)i * LR, LR * 4), "prompt %d differs in the batch", i);
        T_CHECK(!memcmp(iou1, iou + 3 * i, sizeof iou1), "prompt %d IoU differs", i);
    }
    T_CHECK(memcmp(lb, lb + LR, LR * 4) && memcmp(lb + LR, lb + 2 * LR, LR * 4),
            "tasks had the same effect");
    for (int i = 0; i < 3; i++) {
        eng_sam_lora_destroy(model, l[i]);
        ad_adapter_destroy(a[i]);
    }
    free(lb);
    free(ls);
}

static void test_text_tiny_encoder(void)
{
    T_NEED_FIXTURES();
    T_REQUIRE(be, "setup failed");
    hn_hypernet_config c;
    hn_hypernet_config_default(&c);
    c.text_dim = 64;
    snprintf(c.text_model, sizeof c.text_model, "text_tiny");
    hn_hypernet *h = NULL;
    hn_text *t = NULL;
    T_REQUIRE(hn_hypernet_init(tmp("tiny.safetensors"), &c, 5, 1) == 0 &&
                  hn_hypernet_load(&h, tmp("tiny.safetensors"), be) == 0,
              "%s", eng_last_error());
    char d[4096];
    memcpy(d, t_fixture("text_tiny"), sizeof d);
    T_REQUIRE(hn_hypernet_open_text(h, d, be, &t) == 0, "%s", eng_last_error());
    ad_adapter *a = NULL, *b = NULL;
    T_CHECK(ad_adapter_generate(t, h, S("Segment the DOG"), &a) == 0, "%s", eng_last_error());
    T_CHECK(ad_adapter_generate(t, h, S("segment   the dog"), &b) == 0, "%s", eng_last_error());
    T_CHECK(a && b && same_factors(a, b) && !strcmp(a->id, b->id) &&
                !strcmp(a->text_model, "text_tiny"),
            "BERT-embedded adapters");
    ad_adapter_destroy(a);
    ad_adapter_destroy(b);
    b = NULL;
    T_CHECK(ad_adapter_generate(hashed, h, S("x"), &b) == ENG_EINVAL && !b,
            "hashed encoder for a text_tiny hypernetwork");
    hn_text_destroy(t);
    hn_hypernet_destroy(h);
}

/* ---- file and memory forms ---- */

static int same_meta(const ad_adapter *a, const ad_adapter *b)
{
    return !strcmp(a->id, b->id) && !strcmp(a->task, b->task) &&
           !strcmp(a->task_normalized, b->task_normalized) &&
           !strcmp(a->hypernet_id, b->hypernet_id) &&
           !strcmp(a->hypernet_version, b->hypernet_version) &&
           !strcmp(a->text_model, b->text_model) && a->created == b->created &&
           a->rank == b->rank && a->alpha == b->alpha && a->n_targets == b->n_targets;
}

static void test_save_load_serialize(void)
{
    T_REQUIRE(hrand, "setup failed");
    ad_adapter *a = gen(hrand, "  Trouve   la POMME \xc3\xa9"
                               "clatante ");
    T_REQUIRE(a, "generate");
    const char *path = tmp("a.safetensors");
    T_REQUIRE(ad_adapter_save(a, path) == 0, "%s", eng_last_error());
    ad_adapter *b = NULL, *c = NULL;
    T_REQUIRE(ad_adapter_load(&b, path) == 0, "%s", eng_last_error());
    T_CHECK(same_factors(a, b) && same_meta(a, b), "save/load differs");
    uint8_t *buf = NULL;
    size_t len = 0;
    T_REQUIRE(ad_adapter_serialize(a, &buf, &len) == 0, "%s", eng_last_error());
    T_REQUIRE(ad_adapter_parse(&c, buf, len, "mem") == 0, "%s", eng_last_error());
    T_CHECK(same_factors(a, c) && same_meta(a, c), "serialize/parse differs");
    size_t flen;
    uint8_t *file = t_read_file(path, &flen);
    T_CHECK(file && flen == len && !memcmp(file, buf, len), "file and buffer differ");
    printf("  rank 4, 47 targets: %zu bytes serialised\n", len);
    /* metadata readable by any safetensors reader */
    eng_ckpt *ck = NULL;
    T_REQUIRE(eng_ckpt_open(&ck, path) == 0, "%s", eng_last_error());
    T_CHECK(!strcmp(eng_ckpt_meta(ck, "format"), "tasam-adapter") &&
                !strcmp(eng_ckpt_meta(ck, "targets"), "all") &&
                !strcmp(eng_ckpt_meta(ck, "task_normalized"), a->task_normalized) &&
                eng_ckpt_find(ck, "mask_decoder.iou_prediction_head.layers.2.lora_B") &&
                eng_ckpt_find(ck, "mask_decoder.iou_prediction_head.layers.2.lora_B")->shape[0] ==
                    4,
            "file layout");
    eng_ckpt_close(ck);
    free(file);
    free(buf);
    ad_adapter_destroy(a);
    ad_adapter_destroy(b);
    ad_adapter_destroy(c);
}

/* A hand-built adapter file for the hostile cases: rank `rank`, the IoU
 * head's three targets; `fault` picks what is wrong with it. */
enum {
    F_NONE,
    F_SHAPE,
    F_NO_B,
    F_NAN,
    F_UNKNOWN,
    F_TARGETS,
    F_ID,
    F_TASKNORM,
    F_FORMAT,
    F_ALPHA,
    F_INT_DTYPE,
    F_TASK_NUL,
    F_COUNT
};

static uint8_t *hostile(int fault, const char *rank, size_t *len)
{
    static float data[2 * 16 * 256];
    for (int i = 0; i < 2 * 16 * 256; i++)
        data[i] = 0.01f * (float)(i % 17);
    const eng_sam_lora_target *tt = eng_sam_lora_targets();
    int r = atoi(rank);
    if (r < 1 || r > 16)
        r = 4;
    eng_st_entry e[8];
    char names[8][128];
    int n = 0;
    for (int t = 44; t < 47; t++)
        for (int k = 0; k < 2; k++) {
            snprintf(names[n], sizeof names[n], "%s.lora_%c", tt[t].name, k ? 'B' : 'A');
            e[n] =
                (eng_st_entry){names[n], ENG_F32, 2, {k ? tt[t].out : r, k ? r : tt[t].in}, data};
            n++;
        }
    if (fault == F_SHAPE)
        e[2].shape[1] = 255;
    if (fault == F_NO_B)
        n--;
    if (fault == F_NAN) {
        static float nanv[4 * 256];
        for (int i = 0; i < 4 * 256; i++)
            nanv[i] = i == 77 ? NAN : 0.0f;
        e[0].data = nanv;
    }
    if (fault == F_UNKNOWN)
        e[n++] = (eng_st_entry){
            "mask_decoder.iou_prediction_head.layers.9.lora_A", ENG_F32, 2, {r, 256}, data};
    if (fault == F_INT_DTYPE)
        e[1].dtype = ENG_I32;
    const char *hid = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    char id[AD_ID_LEN + 1];
    ad_task_id(S("find apples"), hid, id);
    const char *meta[] = {"format",
                          fault == F_FORMAT ? "tasam-hypernet" : "tasam-adapter",
                          "format_version",
                          "1",
                          "id",
                          fault == F_ID ? hid : id,
                          "task",
                          fault == F_TASK_NUL ? "" : "Find  apples",
                          "task_normalized",
                          fault == F_TASKNORM ? "find  apples" : "find apples",
                          "hypernet_id",
                          hid,
                          "hypernet_version",
                          "7",
                          "rank",
                          rank,
                          "alpha",
                          fault == F_ALPHA ? "nan" : "8",
                          "targets",
                          fault == F_TARGETS ? "all" : "iou",
                          "created",
                          "1700000000",
                          "text_model",
                          "hashed-384"};
    uint8_t *buf = NULL;
    if (eng_safetensors_serialize(e, (size_t)n, meta, 12, &buf, len))
        return NULL;
    return buf;
}

static void test_hostile_adapters(void)
{
    size_t len;
    ad_adapter *a = NULL;
    uint8_t *ok = hostile(F_NONE, "4", &len);
    T_REQUIRE(ok, "%s", eng_last_error());
    T_CHECK(ad_adapter_parse(&a, ok, len, "ok") == 0 && a && a->n_targets == 3 &&
                !strcmp(a->task_normalized, "find apples"),
            "valid hand-built file: %s", eng_last_error());
    if (t_fixtures() && model && a) {
        eng_sam_lora *l = NULL;
        T_CHECK(ad_adapter_to_lora(a, model, 0, &l) == 0, "%s", eng_last_error());
        eng_sam_lora_destroy(model, l);
    }
    ad_adapter_destroy(a);
    a = NULL;
    /* truncations at many points */
    int clean = 1;
    for (size_t cut = 0; cut < len; cut += 1 + cut / 5) {
        int rc = ad_adapter_parse(&a, ok, cut, "cut");
        clean &= rc < 0 && !a;
    }
    T_CHECK(clean, "a truncated adapter was accepted");
    /* random byte flips never crash; a flip in the data may parse */
    uint8_t *fl = malloc(len);
    for (int k = 0; k < 300; k++) {
        memcpy(fl, ok, len);
        fl[(size_t)(k * 7919) % len] ^= (uint8_t)(1 + k % 255);
        if (ad_adapter_parse(&a, fl, len, "flip") == 0)
            ad_adapter_destroy(a);
        a = NULL;
    }
    free(fl);
    free(ok);
    struct {
        int fault;
        const char *rank, *what, *msg;
    } cases[] = {
        {F_SHAPE, "4", "wrong shape", "wrong shape"},
        {F_NO_B, "4", "missing B", "layers.2.lora_B' missing"},
        {F_NAN, "4", "NaN", "not finite"},
        {F_UNKNOWN, "4", "unknown target", "unknown tensor"},
        {F_TARGETS, "4", "targets list says all", "missing"},
        {F_ID, "4", "id mismatch", "id does not match"},
        {F_TASKNORM, "4", "task_normalized mismatch", "not the normalised task"},
        {F_FORMAT, "4", "format", "not a tasam adapter"},
        {F_ALPHA, "4", "alpha NaN", "alpha"},
        {F_INT_DTYPE, "4", "integer tensor", ""},
        {F_TASK_NUL, "4", "empty task", "task"},
        {F_NONE, "0", "rank 0", "rank"},
        {F_NONE, "99", "rank 99", "rank"},
        /* consistent files, but ranks no hypernetwork makes (hypernet init: 2..8) */
        {F_NONE, "1", "rank 1", "rank"},
        {F_NONE, "9", "rank 9", "rank"},
        {F_NONE, "4x", "rank 4x", "rank"},
        {F_NONE, "2", "rank 2 metadata, rank 4 tensors", ""},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        uint8_t *b = hostile(cases[k].fault, cases[k].rank, &len);
        if (!b) {
            T_CHECK(0, "%s: could not build: %s", cases[k].what, eng_last_error());
            continue;
        }
        /* "rank 2 metadata": rebuild with rank-4 tensors by editing the header */
        if (!strcmp(cases[k].rank, "2")) {
            free(b);
            b = hostile(F_NONE, "4", &len);
            char *p = memmem(b, len, "\"rank\":\"4\"", 10);
            if (p)
                p[8] = '2';
        }
        a = NULL;
        int rc = ad_adapter_parse(&a, b, len, "hostile");
        T_CHECK(rc < 0 && !a, "%s accepted", cases[k].what);
        T_CHECK(strstr(eng_last_error(), cases[k].msg) != NULL, "%s: message '%s'", cases[k].what,
                eng_last_error());
        printf("  %-32s -> %s\n", cases[k].what, eng_last_error());
        ad_adapter_destroy(a);
        free(b);
    }
    T_CHECK(ad_adapter_parse(&a, "", 0, "empty") < 0 && !a, "empty buffer");
    T_CHECK(ad_adapter_parse(&a, "garbage!garbage!", 16, "junk") < 0 && !a, "junk");
    uint8_t *huge = calloc(1, AD_MAX_FILE_BYTES + 1);
    T_CHECK(ad_adapter_parse(&a, huge, AD_MAX_FILE_BYTES + 1, "huge") == ENG_ELIMIT && !a,
            "over the size cap");
    free(huge);
    T_CHECK(ad_adapter_load(&a, tmp("nope")) == ENG_EIO && !a, "missing file");
    /* a hypernetwork file is not an adapter */
    T_CHECK(ad_adapter_load(&a, tmp("zero.safetensors")) < 0 && !a, "hypernet as adapter");
}

/* ---- the CLI ---- */

static int run(const char *cmd, char *out, size_t cap)
{
    FILE *p = popen(cmd, "r");
    if (!p)
        return -1;
    size_t n = fread(out, 1, cap - 1, p);
    out[n] = '\0';
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void test_cli(void)
{
    T_NEED_FIXTURES();
    char tasam[600], cmd[4096], out[8192];
    snprintf(tasam, sizeof tasam, "%s/tasam", build_dir);
    if (access(tasam, X_OK) != 0)
        T_SKIP("%s not built", tasam);
    const char *fx = t_fixtures();
    snprintf(cmd, sizeof cmd,
             "%s hypernet init --out %s --random --seed 4 --text-model hashed "
             "--text-dim 64 --rank 2 --targets all,-mlp 2>&1",
             tasam, tmp("cli_h.safetensors"));
    T_CHECK(run(cmd, out, sizeof out) == 0 && strstr(out, "targets: 43"), "hypernet init: %s", out);
    snprintf(cmd, sizeof cmd,
             "%s adapter --hypernet %s --task '  Segment  ALL apples ' --out %s "
             "2>/dev/null",
             tasam, tmp("cli_h.safetensors"), tmp("cli_a.safetensors"));
    T_CHECK(run(cmd, out, sizeof out) == 0 && !strncmp(out, "adapter ", 8), "adapter: %s", out);
    char id[AD_ID_LEN + 1] = "";
    sscanf(out, "adapter %64s", id);
    ad_adapter *a = NULL;
    T_CHECK(ad_adapter_load(&a, tmp("cli_a.safetensors")) == 0 && a && !strcmp(a->id, id) &&
                a->rank == 2 && a->n_targets == 43,
            "CLI adapter file: %s", eng_last_error());
    ad_adapter_destroy(a);
    snprintf(cmd, sizeof cmd,
             "%s segment --checkpoint %s/sam_tiny.safetensors --image "
             "%s/images/dog.jpg --point 400,293.7,1 --device cpu --hypernet %s --task "
             "'segment all apples' --json %s 2>/dev/null",
             tasam, fx, fx, tmp("cli_h.safetensors"), tmp("cli_seg.json"));
    T_CHECK(run(cmd, out, sizeof out) == 0 && strstr(out, id), "segment --task: %s", out);
    size_t jl;
    char *json = (char *)t_read_file(tmp("cli_seg.json"), &jl);
    T_CHECK(json && memmem(json, jl, id, strlen(id)), "adapter id in the JSON");
    free(json);
    snprintf(cmd, sizeof cmd,
             "%s segment --checkpoint %s/sam_tiny.safetensors --image "
             "%s/images/dog.jpg --device cpu --adapter %s --merged 2>/dev/null",
             tasam, fx, fx, tmp("cli_a.safetensors"));
    T_CHECK(run(cmd, out, sizeof out) == 0 && strstr(out, id), "segment --adapter: %s", out);
    /* usage and input errors */
    snprintf(cmd, sizeof cmd, "%s adapter --hypernet %s --task '' --out %s 2>&1", tasam,
             tmp("cli_h.safetensors"), tmp("x.safetensors"));
    T_CHECK(run(cmd, out, sizeof out) == 2 && strstr(out, "empty"), "empty task: %s", out);
    snprintf(cmd, sizeof cmd, "%s hypernet init --out %s --rank 9 2>&1", tasam, tmp("x"));
    T_CHECK(run(cmd, out, sizeof out) == 2, "rank 9: %s", out);
    snprintf(cmd, sizeof cmd, "%s segment --image x.jpg --task apples 2>&1", tasam);
    T_CHECK(run(cmd, out, sizeof out) == 2, "task without hypernet: %s", out);
    snprintf(cmd, sizeof cmd,
             "%s embed-text --text-model %s/text_tiny --dump %s 'a cat' 'the dog' "
             "2>&1",
             tasam, fx, tmp("e.safetensors"));
    T_CHECK(run(cmd, out, sizeof out) == 0 && strstr(out, "tokens"), "embed-text: %s", out);
    eng_ckpt *ck = NULL;
    T_CHECK(eng_ckpt_open(&ck, tmp("e.safetensors")) == 0 && eng_ckpt_find(ck, "input_ids") &&
                eng_ckpt_find(ck, "attention_mask") &&
                eng_ckpt_find(ck, "embeddings")->shape[1] == 64,
            "embed-text dump");
    eng_ckpt_close(ck);
    snprintf(cmd, sizeof cmd, "%s embed-text 2>&1", tasam);
    T_CHECK(run(cmd, out, sizeof out) == 2, "embed-text without text");
}

int main(int argc, char **argv)
{
    (void)argc;
    /* build/tests/test_adapter -> build ; build/asan/tests/test_adapter -> build/asan */
    if (argv[0] && strstr(argv[0], "/tests/")) {
        snprintf(build_dir, sizeof build_dir, "%s", argv[0]);
        *strstr(build_dir, "/tests/") = '\0';
    }
    snprintf(dir, sizeof dir, "/tmp/tasam_test_adapter.%d", (int)getpid());
    mkdir(dir, 0700);
    setup();
    T_RUN(test_normalize);
    T_RUN(test_ids);
    T_RUN(test_zero_hypernet_is_plain_sam);
    T_RUN(test_random_hypernet_changes_deterministically);
    T_RUN(test_mixed_batch_of_three);
    T_RUN(test_text_tiny_encoder);
    T_RUN(test_save_load_serialize);
    T_RUN(test_hostile_adapters);
    T_RUN(test_cli);
    hn_hypernet_destroy(hzero);
    hn_hypernet_destroy(hrand);
    hn_text_destroy(hashed);
    free(emb);
    eng_sam_destroy(model);
    eng_backend_destroy(be);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
    return t_summary("test_adapter");
}
