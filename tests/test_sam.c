/*
 * tests/test_sam.c: the SAM forward on the CPU backend against the official
 * reference's outputs in ../shared/fixtures (config `tiny`, images/dog.jpg).
 * Tolerances are the fixture README's: encoder outputs and logits max |diff|
 * <= 2e-3, IoU <= 1e-3, binary masks agree on >= 99.9% of pixels.
 */
#include "harness.h"
#include "sam_case.h"

#include "engine/ckpt.h"
#include "engine/error.h"
#include "engine/image.h"
#include "engine/ops.h"
#include "engine/sam.h"

#define TOL_ACT    2e-3
#define TOL_IOU    1e-3
#define MASK_AGREE 0.999

static eng_backend *be;
static eng_sam *model;
static eng_ckpt *golden;
static float *embedding; /* our encoder's output for dog.jpg [256,64,64] */

static const eng_ckpt_tensor *gold(const char *name)
{
    const eng_ckpt_tensor *t = golden ? eng_ckpt_find(golden, name) : NULL;
    if (!t)
        fprintf(stderr, "  golden tensor %s missing\n", name);
    return t;
}

/* Compare n floats with a golden tensor; prints the worst element. */
static int close_to(const char *what, const float *ours, const char *gname, double tol)
{
    const eng_ckpt_tensor *g = gold(gname);
    if (!g)
        return 0;
    float *ref = malloc((size_t)g->numel * sizeof(float));
    eng_ckpt_read_f32(golden, g, ref);
    size_t worst;
    double d = t_max_abs_diff(ours, ref, (size_t)g->numel, &worst);
    printf("  %-28s max|diff| %.3g at %zu (ours %.6f ref %.6f)\n", what, d, worst, ours[worst],
           ref[worst]);
    free(ref);
    return d <= tol;
}

static void setup(void)
{
    const char *ck = t_fixture("sam_tiny.safetensors");
    if (!ck)
        return;
    if (eng_backend_cpu_create(&be, 0) != 0)
        return;
    eng_sam_options opt = {.max_points = 8, .max_batch = 1};
    if (eng_sam_load(&model, ck, be, &opt) != 0) {
        fprintf(stderr, "load: %s\n", eng_last_error());
        return;
    }
    if (eng_ckpt_open(&golden, t_fixture("golden_tiny.safetensors")) != 0)
        fprintf(stderr, "golden: %s\n", eng_last_error());
}

static void test_config_inferred(void)
{
    T_NEED_FIXTURES();
    T_REQUIRE(model, "model did not load: %s", eng_last_error());
    const eng_sam_config *c = eng_sam_get_config(model);
    T_CHECK(c->embed_dim == 64 && c->depth == 2 && c->heads == 2 && c->head_dim == 32,
            "config %d/%d/%d/%d", c->embed_dim, c->depth, c->heads, c->head_dim);
    T_CHECK(!c->global[0] && c->global[1], "global blocks");
    T_CHECK(strncmp(eng_sam_model_id(model), "custom-", 7) == 0, "model id %s",
            eng_sam_model_id(model));
}

static void test_encoder_golden(void)
{
    T_NEED_FIXTURES();
    T_REQUIRE(model && golden, "setup failed");
    eng_ckpt *in = NULL;
    T_REQUIRE(eng_ckpt_open(&in, t_fixture("golden_tiny_input.safetensors")) == 0, "%s",
              eng_last_error());
    const eng_ckpt_tensor *it = eng_ckpt_find(in, "input_tensor");
    T_REQUIRE(it && it->numel == 3 * 1024 * 1024, "input_tensor");
    float *input = malloc(3 * 1024 * 1024 * sizeof(float));
    eng_ckpt_read_f32(in, it, input);
    size_t PC = 64 * 64 * 64;
    float *patch = malloc(PC * 4), *b0 = malloc(PC * 4), *b1 = malloc(PC * 4);
    float *blocks[2] = {b0, b1};
    embedding = malloc(ENG_SAM_EMB_FLOATS * sizeof(float));
    int rc = eng_sam_encode_debug(model, input, patch, blocks, 2, embedding);
    T_CHECK(rc == 0, "encode: %s", eng_last_error());
    T_CHECK(close_to("patch_embed", patch, "enc.patch_embed", TOL_ACT), "patch embed");
    T_CHECK(close_to("block0", b0, "enc.block0", TOL_ACT), "block 0 (windowed)");
    T_CHECK(close_to("block1", b1, "enc.block1", TOL_ACT), "block 1 (global)");
    T_CHECK(close_to("image_embedding", embedding, "image_embedding", TOL_ACT), "embedding");
    float *pe = malloc(ENG_SAM_EMB_FLOATS * sizeof(float));
    T_CHECK(eng_sam_dense_pe(model, pe) == 0, "dense pe");
    T_CHECK(close_to("dense_pe", pe, "dense_pe", 1e-4), "dense pe");
    free(pe);
    free(patch);
    free(b0);
    free(b1);
    free(input);
    eng_ckpt_close(in);
}

/* Read a golden float tensor into a fresh buffer (NULL if absent). */
static float *gold_f32(const char *name, int64_t *numel)
{
    return gold(name) ? sam_gold_f32(golden, name, numel) : NULL;
}

/* Run one fixture case through decode + postprocess, from the golden
 * embedding (so decoder error is measured alone) and check logits, IoU and
 * masks. */
static int run_case(const char *cname, int multimask, int n_prompts)
{
    char key[128];
    const eng_sam_imginfo info = {800, 534, 1024, 684};
    float *emb = gold_f32("image_embedding", NULL);
    sam_case sc;
    if (!golden || sam_case_load(golden, cname, n_prompts, &sc) != 0) {
        fprintf(stderr, "  case %s: cannot read its prompts\n", cname);
        free(emb);
        return 0;
    }
    eng_sam_prompt *pr = sc.prompts;
    int C = multimask ? 3 : 1, ok = 1;
    size_t nm = (size_t)n_prompts * C;
    float *iou = malloc(nm * sizeof(float));
    float *lo = malloc(nm * ENG_SAM_LOWRES_FLOATS * sizeof(float));
    uint8_t *masks = malloc(nm * 800 * 534);
    float *stab = malloc(nm * sizeof(float));
    int rc = eng_sam_decode(model, emb, &info, pr, n_prompts, multimask, iou, lo);
    if (rc) {
        fprintf(stderr, "  decode %s: %s\n", cname, eng_last_error());
        ok = 0;
        goto out;
    }
    snprintf(key, sizeof key, "%s.iou_predictions", cname);
    ok &= close_to(key, iou, key, TOL_IOU);
    snprintf(key, sizeof key, "%s.low_res_logits", cname);
    ok &= close_to(key, lo, key, TOL_ACT);
    rc = eng_sam_postprocess(model, lo, (int)nm, &info, masks, stab);
    if (rc) {
        fprintf(stderr, "  postprocess %s: %s\n", cname, eng_last_error());
        ok = 0;
        goto out;
    }
    snprintf(key, sizeof key, "%s.masks", cname);
    const eng_ckpt_tensor *gm = gold(key);
    if (!gm || (size_t)gm->numel != nm * 800 * 534) {
        ok = 0;
        goto out;
    }
    size_t agree = 0, total = nm * 800 * 534;
    const uint8_t *ref = gm->data;
    for (size_t i = 0; i < total; i++)
        agree += (masks[i] != 0) == (ref[i] != 0);
    printf("  %-28s agree %.5f%%\n", key, 100.0 * agree / total);
    ok &= (double)agree / total >= MASK_AGREE;
    for (size_t i = 0; i < nm; i++)
        ok &= stab[i] >= 0 && stab[i] <= 1;
out:
    free(emb);
    sam_case_free(&sc);
    free(iou);
    free(lo);
    free(masks);
    free(stab);
    return ok;
}

#define CASE_TEST(fn, name, multi, n)                                                              \
    static void fn(void)                                                                           \
    {                                                                                              \
        T_NEED_FIXTURES();                                                                         \
        T_REQUIRE(model &&golden, "setup failed");                                                 \
        T_CHECK(run_case(name, multi, n), "case %s", name);                                        \
    }

CASE_TEST(test_case_point1, "point1", 1, 1)
CASE_TEST(test_case_point1_single, "point1_single", 0, 1)
CASE_TEST(test_case_points3, "points3", 1, 1)
CASE_TEST(test_case_box, "box", 0, 1)
CASE_TEST(test_case_box_point, "box_point", 1, 1)
CASE_TEST(test_case_no_prompt, "no_prompt", 1, 1)
CASE_TEST(test_case_mask_refine, "mask_refine", 0, 1)
CASE_TEST(test_case_boxes4, "boxes4", 1, 4)

/* End to end: decode dog.jpg, preprocess, encode with our encoder, compare the
 * embedding with the golden (covers decode + resize + normalise + encoder). */
static void test_end_to_end_image(void)
{
    T_NEED_FIXTURES();
    T_REQUIRE(model && golden, "setup failed");
    eng_image img = {0};
    T_REQUIRE(eng_image_load(t_fixture("images/dog.jpg"), ENG_IMAGE_DEFAULT_MAX_PIXELS, &img) == 0,
              "%s", eng_last_error());
    float *input = malloc(3 * 1024 * 1024 * sizeof(float));
    float *emb = malloc(ENG_SAM_EMB_FLOATS * sizeof(float));
    eng_sam_imginfo info;
    T_CHECK(eng_sam_preprocess(&img, input, &info) == 0, "%s", eng_last_error());
    T_CHECK(info.input_w == 1024 && info.input_h == 684, "input %dx%d", info.input_w, info.input_h);
    T_CHECK(eng_sam_encode(model, input, 1, emb) == 0, "%s", eng_last_error());
    T_CHECK(close_to("e2e image_embedding", emb, "image_embedding", TOL_ACT), "embedding");
    free(input);
    free(emb);
    eng_image_free(&img);
}

/* Decoder groups (sam_case_groups): a model decoding up to 3 prompts per
 * pass gives what prompt-by-prompt decoding gives, with and without mask
 * inputs and with layer 0's image side shared within and across groups. */
static void test_batched_decode(void)
{
    T_NEED_FIXTURES();
    T_REQUIRE(model && golden, "setup failed");
    float *emb = gold_f32("image_embedding", NULL);
    float *mi = gold_f32("mask_refine.mask_input", NULL);
    double d[2][2], distinct;
    T_CHECK(sam_case_groups(be, t_fixture("sam_tiny.safetensors"), emb, mi, d, &distinct) == 0,
            "%s", eng_last_error());
    for (int r = 0; r < 2; r++) {
        printf("  groups of 3 vs one by one (%s): logits %.3g, IoU %.3g\n",
               r == 0 ? "2 with a mask input" : "no mask input", d[r][0], d[r][1]);
        T_CHECK(d[r][0] <= 1e-4 && d[r][1] <= 1e-5, "batched decode differs: %g / %g", d[r][0],
                d[r][1]);
    }
    T_CHECK(distinct > 1e-2, "prompts gave the same logits (%g)", distinct);
    free(emb);
    free(mi);
}

/* eng_sam_segment_cached (decode and postprocess in one call, the low-res
 * logits kept on the device) gives exactly what eng_sam_decode_cached then
 * eng_sam_postprocess give: masks, stability scores and IoU, over groups of
 * 3 + 2 prompts, with one mask and with three. */
static void test_segment_in_one_call(void)
{
    T_NEED_FIXTURES();
    T_REQUIRE(golden, "setup failed");
    eng_sam *ms = NULL;
    eng_sam_options opt = {.max_points = 8, .max_decode_batch = 3, .embedding_slots = 1};
    T_REQUIRE(eng_sam_load(&ms, t_fixture("sam_tiny.safetensors"), be, &opt) == 0, "%s",
              eng_last_error());
    const eng_sam_imginfo info = {800, 534, 1024, 684};
    float *emb = gold_f32("image_embedding", NULL);
    float pts[5][2] = {{400, 293.7f}, {100, 100}, {50, 500}, {300, 300}, {790, 10}};
    int lab = 1;
    eng_sam_prompt p[5];
    for (int i = 0; i < 5; i++)
        p[i] = (eng_sam_prompt){.n_points = 1, .points = pts[i], .labels = &lab};
    size_t px = 800 * 534;
    float *lo = malloc(15 * ENG_SAM_LOWRES_FLOATS * sizeof(float));
    uint8_t *m1 = malloc(15 * px), *m2 = malloc(15 * px);
    float i1[15], i2[15], s1[15], s2[15];
    for (int multi = 0; multi < 2; multi++) {
        int nm = multi ? 15 : 5;
        T_CHECK(eng_sam_decode_cached(ms, "img", emb, &info, p, 5, multi, i1, lo) == 0 &&
                    eng_sam_postprocess(ms, lo, nm, &info, m1, s1) == 0,
                "two calls: %s", eng_last_error());
        eng_sam_timing tm = {-1, -1};
        memset(m2, 7, (size_t)nm * px);
        T_CHECK(eng_sam_segment_cached(ms, "img", NULL, &info, p, 5, multi, i2, m2, s2, &tm) == 0,
                "one call: %s", eng_last_error());
        T_CHECK(memcmp(m1, m2, (size_t)nm * px) == 0, "masks differ (multimask %d)", multi);
        T_CHECK(memcmp(s1, s2, (size_t)nm * sizeof(float)) == 0, "stability differs");
        T_CHECK(memcmp(i1, i2, (size_t)nm * sizeof(float)) == 0, "IoU differs");
        T_CHECK(tm.decode_ms > 0 && tm.postprocess_ms > 0, "timing %g / %g", tm.decode_ms,
                tm.postprocess_ms);
        size_t on = 0;
        for (size_t k = 0; k < (size_t)nm * px; k++)
            on += m2[k];
        T_CHECK(on > 0 && on < (size_t)nm * px, "masks all empty or all full (%zu of %zu)", on,
                (size_t)nm * px);
    }
    eng_sam_imginfo bad = {1 << 23, 4, 1024, 1};
    T_CHECK(eng_sam_segment_cached(ms, "img", NULL, &bad, p, 1, 0, i2, m2, NULL, NULL) ==
                ENG_EINVAL,
            "an image too wide to postprocess");
    T_CHECK(eng_sam_segment_cached(ms, "img", NULL, &info, p, 1, 0, i2, NULL, NULL, NULL) ==
                ENG_EINVAL,
            "no mask buffer");
    free(lo), free(m1), free(m2), free(emb);
    eng_sam_destroy(ms);
}

/* The decoder on a backend of its own (here a second CPU backend) computes
 * what the one-backend model computes. */
static void test_split_decoder_backend(void)
{
    T_NEED_FIXTURES();
    T_REQUIRE(model && golden, "setup failed");
    eng_backend *dbe = NULL;
    T_REQUIRE(eng_backend_cpu_create(&dbe, 0) == 0, "%s", eng_last_error());
    eng_sam *ms = NULL;
    eng_sam_options opt = {.max_points = 8, .decoder_backend = dbe};
    T_REQUIRE(eng_sam_load(&ms, t_fixture("sam_tiny.safetensors"), be, &opt) == 0, "%s",
              eng_last_error());
    T_CHECK(eng_sam_decoder_backend(ms) == dbe && eng_sam_backend(ms) == be, "backends");
    T_CHECK(!strcmp(eng_sam_model_id(ms), eng_sam_model_id(model)), "same model id");
    const eng_sam_imginfo info = {800, 534, 1024, 684};
    float *emb = gold_f32("image_embedding", NULL);
    float pts[2] = {400, 293.7f};
    int lab = 1;
    eng_sam_prompt p = {.n_points = 1, .points = pts, .labels = &lab};
    size_t per = 3 * ENG_SAM_LOWRES_FLOATS;
    float *a = malloc(per * 4), *b = malloc(per * 4), ia[3], ib[3];
    T_CHECK(eng_sam_decode(model, emb, &info, &p, 1, 1, ia, a) == 0, "%s", eng_last_error());
    T_CHECK(eng_sam_decode(ms, emb, &info, &p, 1, 1, ib, b) == 0, "%s", eng_last_error());
    T_CHECK(memcmp(a, b, per * 4) == 0 && memcmp(ia, ib, sizeof ia) == 0,
            "split decoder differs (max %g)", t_max_abs_diff(a, b, per, NULL));
    float *in = calloc(3 * 1024 * 1024, sizeof(float)), *e2 = malloc(ENG_SAM_EMB_FLOATS * 4);
    T_CHECK(eng_sam_encode(ms, in, 1, e2) == 0, "encode on the split model: %s", eng_last_error());
    free(in);
    free(e2);
    free(a);
    free(b);
    free(emb);
    eng_sam_destroy(ms);
    eng_backend_destroy(dbe);
}

/* Resident embeddings: a key decoded once needs no host copy after, results
 * equal eng_sam_decode's (also from the slot's kept layer-0 side), and the
 * least recently used slot is the one reused, its kept side with it. */
static void test_resident_embeddings(void)
{
    T_NEED_FIXTURES();
    T_REQUIRE(golden, "setup failed");
    eng_sam *mr = NULL;
    eng_sam_options opt = {.max_points = 8, .embedding_slots = 2};
    T_REQUIRE(eng_sam_load(&mr, t_fixture("sam_tiny.safetensors"), be, &opt) == 0, "%s",
              eng_last_error());
    const eng_sam_imginfo info = {800, 534, 1024, 684};
    float *emb = gold_f32("image_embedding", NULL);
    float *emb2 = malloc(ENG_SAM_EMB_FLOATS * sizeof(float));
    float *emb3 = malloc(ENG_SAM_EMB_FLOATS * sizeof(float));
    for (int i = 0; i < ENG_SAM_EMB_FLOATS; i++) {
        emb2[i] = 0.5f * emb[i];
        emb3[i] = -0.25f * emb[i];
    }
    float pts[2] = {400, 293.7f};
    int lab = 1;
    eng_sam_prompt p = {.n_points = 1, .points = pts, .labels = &lab};
    size_t per = 3 * ENG_SAM_LOWRES_FLOATS;
    float *ref = malloc(per * 4), *got = malloc(per * 4), *ref2 = malloc(per * 4);
    float *ref3 = malloc(per * 4), i0[3], i1[3];
    T_REQUIRE(eng_sam_decode(mr, emb, &info, &p, 1, 1, i0, ref) == 0, "%s", eng_last_error());
    T_REQUIRE(eng_sam_decode(mr, emb2, &info, &p, 1, 1, i0, ref2) == 0, "%s", eng_last_error());
    T_REQUIRE(eng_sam_decode(mr, emb3, &info, &p, 1, 1, i0, ref3) == 0, "%s", eng_last_error());
    T_CHECK(!eng_sam_embedding_resident(mr, "a"), "nothing resident yet");
    T_CHECK(eng_sam_decode_cached(mr, "a", NULL, &info, &p, 1, 1, i1, got) == ENG_ENOTFOUND,
            "unknown key without an embedding");
    T_CHECK(eng_sam_decode_cached(mr, "a", emb, &info, &p, 1, 1, i1, got) == 0, "%s",
            eng_last_error());
    T_CHECK(memcmp(got, ref, per * 4) == 0, "first call differs");
    T_CHECK(eng_sam_embedding_resident(mr, "a"), "a resident");
    T_CHECK(eng_sam_decode_cached(mr, "a", NULL, &info, &p, 1, 1, i1, got) == 0, "%s",
            eng_last_error());
    T_CHECK(memcmp(got, ref, per * 4) == 0, "resident copy differs");
    T_CHECK(eng_sam_decode_cached(mr, "b", emb2, &info, &p, 1, 1, i1, got) == 0, "b");
    T_CHECK(memcmp(got, ref2, per * 4) == 0, "b differs");
    /* touch a, then c evicts b (the least recently used) */
    T_CHECK(eng_sam_decode_cached(mr, "a", NULL, &info, &p, 1, 1, i1, got) == 0, "a again");
    T_CHECK(eng_sam_decode_cached(mr, "c", emb3, &info, &p, 1, 1, i1, got) == 0, "c");
    T_CHECK(memcmp(got, ref3, per * 4) == 0, "c differs (b's kept layer-0 side reused?)");
    T_CHECK(eng_sam_embedding_resident(mr, "a") && eng_sam_embedding_resident(mr, "c") &&
                !eng_sam_embedding_resident(mr, "b"),
            "LRU eviction");
    T_CHECK(eng_sam_decode_cached(mr, "c", NULL, &info, &p, 1, 1, i1, got) == 0 &&
                memcmp(got, ref3, per * 4) == 0,
            "c from its kept side");
    T_CHECK(eng_sam_decode_cached(mr, "a", NULL, &info, &p, 1, 1, i1, got) == 0 &&
                memcmp(got, ref, per * 4) == 0,
            "a intact after eviction of b");
    char longkey[200];
    memset(longkey, 'k', sizeof longkey - 1);
    longkey[sizeof longkey - 1] = 0;
    T_CHECK(eng_sam_decode_cached(mr, longkey, emb, &info, &p, 1, 1, i1, got) == ENG_EINVAL,
            "long key");
    free(ref), free(got), free(ref2), free(ref3), free(emb), free(emb2), free(emb3);
    eng_sam_destroy(mr);
}

static void test_bad_prompts(void)
{
    T_NEED_FIXTURES();
    T_REQUIRE(model, "setup failed");
    const eng_sam_imginfo info = {800, 534, 1024, 684};
    float *emb = calloc(ENG_SAM_EMB_FLOATS, sizeof(float));
    float iou[3], *lo = malloc(3 * ENG_SAM_LOWRES_FLOATS * sizeof(float));
    float pts[2] = {10, 10};
    int bad_label = 7;
    eng_sam_prompt p = {.n_points = 1, .points = pts, .labels = &bad_label};
    T_CHECK(eng_sam_decode(model, emb, &info, &p, 1, 1, iou, lo) == ENG_EINVAL, "bad label");
    int lab = 1;
    p.labels = &lab;
    p.n_points = 100;
    T_CHECK(eng_sam_decode(model, emb, &info, &p, 1, 1, iou, lo) == ENG_EINVAL, "too many points");
    p.n_points = 1;
    pts[0] = NAN;
    T_CHECK(eng_sam_decode(model, emb, &info, &p, 1, 1, iou, lo) == ENG_EINVAL, "nan point");
    T_CHECK(strlen(eng_last_error()) > 0, "message");
    free(emb);
    free(lo);
}

static void test_load_errors(void)
{
    eng_backend *cpu = be;
    if (!cpu && eng_backend_cpu_create(&cpu, 0) != 0)
        T_REQUIRE(0, "cpu backend");
    eng_sam *m = NULL;
    T_CHECK(eng_sam_load(&m, "/nonexistent/sam.pth", cpu, NULL) != 0 && !m, "missing file");
    T_CHECK(strstr(eng_last_error(), "/nonexistent/sam.pth") != NULL, "message names the file: %s",
            eng_last_error());
    if (t_fixtures()) {
        /* a valid safetensors file that is not SAM */
        int rc = eng_sam_load(&m, t_fixture("golden_text_tiny.safetensors"), cpu, NULL);
        T_CHECK(rc != 0 && !m, "not a SAM checkpoint");
        T_CHECK(strstr(eng_last_error(), "patch_embed") != NULL, "names the tensor: %s",
                eng_last_error());
    }
    if (cpu != be)
        eng_backend_destroy(cpu);
}

int main(void)
{
    setup();
    T_RUN(test_config_inferred);
    T_RUN(test_encoder_golden);
    T_RUN(test_case_point1);
    T_RUN(test_case_point1_single);
    T_RUN(test_case_points3);
    T_RUN(test_case_box);
    T_RUN(test_case_box_point);
    T_RUN(test_case_no_prompt);
    T_RUN(test_case_mask_refine);
    T_RUN(test_case_boxes4);
    T_RUN(test_end_to_end_image);
    T_RUN(test_batched_decode);
    T_RUN(test_segment_in_one_call);
    T_RUN(test_split_decoder_backend);
    T_RUN(test_resident_embeddings);
    T_RUN(test_bad_prompts);
    T_RUN(test_load_errors);
    free(embedding);
    eng_sam_destroy(model);
    eng_ckpt_close(golden);
    eng_backend_destroy(be);
    return t_summary("test_sam");
}
