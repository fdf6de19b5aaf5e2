/*
 * tests/test_amg.c: automatic mask generation (engine/amg.h) against the
 * official SamAutomaticMaskGenerator's output on the fixture model
 * (golden_amg_tiny, every case), and each step on constructed inputs with
 * hand-computed answers: the point grid, crop boxes, boxes from masks, the
 * crop-edge filter, uncropped RLE, torchvision's NMS (no +1, strict >, ties,
 * its per-class path past 1000 boxes), the smaller-crop preference, small
 * holes and islands (8-connected), parameter checks, cancelling and the
 * mask-memory bound.
 */
#include "harness.h"

#include "tests/amg_case.h"

#include "engine/amg.h"
#include "engine/error.h"
#include "engine/image.h"
#include "engine/ops.h"
#include "engine/rle.h"
#include "engine/sam.h"

static eng_backend *be;
static eng_sam *model;
static eng_image dog;
static float *dog_emb; /* dog.jpg's embedding [256,64,64] */

static void setup(void)
{
    if (!t_fixtures())
        return;
    if (eng_backend_cpu_create(&be, 0) != 0)
        return;
    eng_sam_options opt = {.max_points = 4, .max_batch = 1, .embedding_slots = 1};
    if (eng_sam_load(&model, t_fixture("sam_tiny.safetensors"), be, &opt) != 0) {
        fprintf(stderr, "load: %s\n", eng_last_error());
        return;
    }
    if (eng_image_load(t_fixture("images/dog.jpg"), ENG_IMAGE_DEFAULT_MAX_PIXELS, &dog) != 0) {
        fprintf(stderr, "dog.jpg: %s\n", eng_last_error());
        return;
    }
    float *input = malloc((size_t)3 * ENG_SAM_IMG * ENG_SAM_IMG * sizeof(float));
    dog_emb = malloc((size_t)ENG_SAM_EMB_FLOATS * sizeof(float));
    eng_sam_imginfo info;
    if (!input || !dog_emb || eng_sam_preprocess(&dog, input, &info) != 0 ||
        eng_sam_encode(model, input, 1, dog_emb) != 0) {
        free(dog_emb);
        dog_emb = NULL;
    }
    free(input);
}

#define NEED_MODEL()                                                                               \
    do {                                                                                           \
        T_NEED_FIXTURES();                                                                         \
        T_REQUIRE(model &&dog_emb, "the fixture model or image did not load: %s",                  \
                  eng_last_error());                                                               \
    } while (0)

/* ---- the fixture cases ---- */

static void run_case(const json_t *c, eng_ckpt *golden, int pass_embedding)
{
    eng_amg_params p;
    amg_case_params(c, &p);
    eng_amg_input in = {.image = &dog};
    if (pass_embedding && p.crop_n_layers == 0) {
        /* as the daemon runs it: the cached embedding, no pixels */
        in.image = NULL;
        in.width = dog.w;
        in.height = dog.h;
        in.embedding = dog_emb;
        in.key = "dog";
    }
    eng_amg_result r;
    int rc = eng_amg_run(model, &in, &p, NULL, &r);
    T_CHECK(rc == 0, "%s: %s", json_string_value(json_object_get(c, "name")), eng_last_error());
    if (rc == 0) {
        amg_rec *recs = amg_recs_from_result(&r);
        amg_case_check(c, golden, recs, (int)r.n);
        amg_recs_free(recs, (int)r.n);
    }
    eng_amg_result_free(&r);
}

static void test_fixture_cases(void)
{
    NEED_MODEL();
    json_t *cases = amg_cases_load();
    eng_ckpt *golden = NULL;
    T_REQUIRE(cases && json_array_size(cases) >= 4, "golden_amg_tiny.json: no cases");
    T_REQUIRE(eng_ckpt_open(&golden, t_fixture("golden_amg_tiny.safetensors")) == 0, "%s",
              eng_last_error());
    for (size_t i = 0; i < json_array_size(cases); i++)
        run_case(json_array_get(cases, i), golden, 0);
    /* from the embedding alone, as the daemon serves an image_id */
    for (size_t i = 0; i < json_array_size(cases); i++)
        if (!strcmp(json_string_value(json_object_get(json_array_get(cases, i), "name")) ?: "",
                    "grid4_thresh"))
            run_case(json_array_get(cases, i), golden, 1);
    eng_ckpt_close(golden);
    json_decref(cases);
}

/* ---- grids and crops ---- */

static void test_point_grid(void)
{
    double xy[2 * 16];
    eng_amg_point_grid(4, xy);
    static const double v[4] = {0.125, 0.375, 0.625, 0.875};
    int ok = 1;
    for (int y = 0; y < 4; y++)
        for (int x = 0; x < 4; x++)
            ok &= xy[2 * (y * 4 + x)] == v[x] && xy[2 * (y * 4 + x) + 1] == v[y];
    T_CHECK(ok, "4x4 grid: rows of y, x fastest, 1/8 + i/4");
    eng_amg_point_grid(1, xy);
    T_CHECK(xy[0] == 0.5 && xy[1] == 0.5, "1x1 grid is the centre, got (%g, %g)", xy[0], xy[1]);
    /* numpy's linspace(1/6, 5/6, 3): start, start + step, stop */
    eng_amg_point_grid(3, xy);
    T_CHECK(xy[0] == 1.0 / 6 && xy[2] == 0 * 1.0 + 1.0 / 6 + (5.0 / 6 - 1.0 / 6) / 2 &&
                xy[4] == 1 - 1.0 / 6,
            "3x3 grid %.17g %.17g %.17g", xy[0], xy[2], xy[4]);
}

static void test_crop_boxes(void)
{
    int b[21][4], l[21];
    /* 800x534, ratio 512/1500: layer 1 overlap int(0.34133 * 534 * 1) = 182,
     * crop 491 x 358 (ceil((182 + 800) / 2), ceil((182 + 534) / 2)), x0 0,
     * 309, y0 0, 176; layer 2 overlap 91, crop 269 x 202, steps 178 and 111 */
    int n = eng_amg_crop_boxes(800, 534, 2, 512.0 / 1500.0, b, l, 21);
    T_REQUIRE(n == 21, "1 + 4 + 16 crops, got %d", n);
    static const int want1[5][4] = {{0, 0, 800, 534},
                                    {0, 0, 491, 358},
                                    {0, 176, 491, 534},
                                    {309, 0, 800, 358},
                                    {309, 176, 800, 534}};
    for (int i = 0; i < 5; i++)
        T_CHECK(!memcmp(b[i], want1[i], sizeof want1[i]) && l[i] == (i > 0),
                "crop %d: [%d %d %d %d] layer %d", i, b[i][0], b[i][1], b[i][2], b[i][3], l[i]);
    /* layer 2, x outer: the second crop is x0 0, y0 111; the last is clipped */
    T_CHECK(b[5][0] == 0 && b[5][1] == 0 && b[5][2] == 269 && b[5][3] == 202 && l[5] == 2,
            "crop 5 [%d %d %d %d]", b[5][0], b[5][1], b[5][2], b[5][3]);
    T_CHECK(b[6][0] == 0 && b[6][1] == 111 && b[6][2] == 269 && b[6][3] == 313, "crop 6");
    T_CHECK(b[9][0] == 178 && b[9][1] == 0, "crop 9 [%d %d]", b[9][0], b[9][1]);
    T_CHECK(b[20][0] == 534 && b[20][1] == 333 && b[20][2] == 800 && b[20][3] == 534,
            "crop 20 [%d %d %d %d]", b[20][0], b[20][1], b[20][2], b[20][3]);
    T_CHECK(eng_amg_crop_boxes(800, 534, 2, 0.3, b, l, 20) == ENG_EINVAL, "capacity checked");
}

/* ---- per-mask steps ---- */

static void test_mask_box(void)
{
    uint8_t m[6 * 5] = {0};
    int b[4];
    eng_amg_mask_box(m, 6, 5, b);
    T_CHECK(!b[0] && !b[1] && !b[2] && !b[3], "empty mask: zeros");
    m[2 * 6 + 3] = 1;
    eng_amg_mask_box(m, 6, 5, b);
    T_CHECK(b[0] == 3 && b[1] == 2 && b[2] == 3 && b[3] == 2, "one pixel: its coordinates");
    m[4 * 6 + 0] = 1;
    m[1 * 6 + 5] = 1;
    eng_amg_mask_box(m, 6, 5, b);
    T_CHECK(b[0] == 0 && b[1] == 1 && b[2] == 5 && b[3] == 4, "inclusive max [%d %d %d %d]", b[0],
            b[1], b[2], b[3]);
}

static void test_crop_edge(void)
{
    const int full[4] = {0, 0, 800, 534}, right[4] = {309, 0, 800, 358};
    const int any[4] = {0, 0, 799, 533};
    T_CHECK(!eng_amg_box_near_crop_edge(any, full, 800, 534), "the whole image has no inner edge");
    /* in the right-hand crop's frame; left edge x 309 is inner, bottom 358 too */
    const int at_left[4] = {0, 100, 50, 200}, left_21[4] = {21, 100, 50, 200};
    const int at_left_20[4] = {20, 100, 50, 200};
    T_CHECK(eng_amg_box_near_crop_edge(at_left, right, 800, 534), "touches the inner left edge");
    T_CHECK(eng_amg_box_near_crop_edge(at_left_20, right, 800, 534), "20 px: within atol");
    T_CHECK(!eng_amg_box_near_crop_edge(left_21, right, 800, 534), "21 px: clear");
    const int at_right[4] = {100, 100, 490, 200}; /* 799 vs 800: also the image edge */
    T_CHECK(!eng_amg_box_near_crop_edge(at_right, right, 800, 534), "image edge does not count");
    const int at_top[4] = {100, 0, 200, 100};
    T_CHECK(!eng_amg_box_near_crop_edge(at_top, right, 800, 534), "top is the image edge");
    const int at_bottom[4] = {100, 100, 200, 340}; /* 340 vs 358 */
    T_CHECK(eng_amg_box_near_crop_edge(at_bottom, right, 800, 534), "bottom within 18 px");
    /* an empty mask in an inner crop: [0,0,0,0] lies on the crop's corner */
    const int empty[4] = {0, 0, 0, 0};
    T_CHECK(eng_amg_box_near_crop_edge(empty, right, 800, 534), "empty mask at an inner corner");
}

static void test_rle_uncrop(void)
{
    /* a 3x2 crop placed at (1, 1) of a 5x4 image, against encoding the
     * padded mask directly */
    const uint8_t crop[2 * 3] = {1, 0, 1, 1, 1, 0};
    uint8_t full[4 * 5] = {0};
    for (int y = 0; y < 2; y++)
        for (int x = 0; x < 3; x++)
            full[(1 + y) * 5 + 1 + x] = crop[y * 3 + x];
    eng_rle a = {0}, b = {0};
    T_REQUIRE(eng_amg_rle_uncrop(crop, 3, 2, 1, 1, 5, 4, &a) == 0, "%s", eng_last_error());
    T_REQUIRE(eng_rle_encode(full, 4, 5, &b) == 0, "encode");
    T_CHECK(a.n == b.n && !memcmp(a.counts, b.counts, a.n * 4) && a.h == 4 && a.w == 5,
            "uncropped RLE equals the padded mask's");
    eng_rle_free(&a);
    eng_rle_free(&b);
    /* a random crop of random pixels, many sizes */
    unsigned s = 7;
    int ok = 1;
    for (int t = 0; t < 50 && ok; t++) {
        int w = 1 + (int)((s = s * 1103515245u + 12345u) >> 16) % 40;
        int h = 1 + (int)((s = s * 1103515245u + 12345u) >> 16) % 40;
        int cw = 1 + (int)((s = s * 1103515245u + 12345u) >> 16) % w;
        int ch = 1 + (int)((s = s * 1103515245u + 12345u) >> 16) % h;
        int x0 = (int)((s = s * 1103515245u + 12345u) >> 16) % (w - cw + 1);
        int y0 = (int)((s = s * 1103515245u + 12345u) >> 16) % (h - ch + 1);
        uint8_t *c = malloc((size_t)cw * ch), *f = calloc((size_t)w * h, 1);
        for (int i = 0; i < cw * ch; i++)
            c[i] = ((s = s * 1103515245u + 12345u) >> 20) & 1;
        for (int y = 0; y < ch; y++)
            for (int x = 0; x < cw; x++)
                f[(y0 + y) * w + x0 + x] = c[y * cw + x];
        ok = eng_amg_rle_uncrop(c, cw, ch, x0, y0, w, h, &a) == 0 &&
             eng_rle_encode(f, h, w, &b) == 0 && a.n == b.n && !memcmp(a.counts, b.counts, a.n * 4);
        eng_rle_free(&a);
        eng_rle_free(&b);
        free(c);
        free(f);
    }
    T_CHECK(ok, "random crops: uncropped RLE equals the padded mask's");
    T_CHECK(eng_amg_rle_uncrop(crop, 3, 2, 3, 1, 5, 4, &a) == ENG_EINVAL, "crop outside refused");
}

/* ---- NMS ---- */

static void test_nms_basic(void)
{
    /* box_iou without +1: [0,0,10,10] vs [0,0,10,5] is 50 / 100 = 0.5 */
    const float bx[3][4] = {{0, 0, 10, 5}, {0, 0, 10, 10}, {20, 20, 30, 30}};
    const float sc[3] = {0.5f, 0.9f, 0.1f};
    int keep[4], nk;
    T_REQUIRE(eng_amg_nms(bx, sc, 3, 0.5, keep, &nk, NULL) == 0, "nms");
    T_CHECK(nk == 3 && keep[0] == 1 && keep[1] == 0 && keep[2] == 2,
            "IoU 0.5 is not above 0.5: all kept, by score (got %d: %d %d %d)", nk, keep[0], keep[1],
            keep[2]);
    T_REQUIRE(eng_amg_nms(bx, sc, 3, 0.49, keep, &nk, NULL) == 0, "nms");
    T_CHECK(nk == 2 && keep[0] == 1 && keep[1] == 2, "0.5 > 0.49: the lower score goes");
    /* a lower-scoring box suppressed by a box that is itself suppressed
     * survives: suppression only comes from kept boxes */
    const float chain[3][4] = {{0, 0, 10, 10}, {0, 0, 10, 8}, {0, 0, 10, 6}};
    const float cs[3] = {0.9f, 0.8f, 0.7f}; /* IoU 0.8, 0.75 (1 vs 2), 0.6 (0 vs 2) */
    T_REQUIRE(eng_amg_nms(chain, cs, 3, 0.7, keep, &nk, NULL) == 0, "nms");
    T_CHECK(nk == 2 && keep[0] == 0 && keep[1] == 2, "chain: got %d (%d %d)", nk, keep[0], keep[1]);
    /* zero-area boxes: 0 / 0 is NaN, never above the threshold */
    const float flat[2][4] = {{5, 5, 5, 9}, {5, 5, 5, 9}};
    const float fs[2] = {0.3f, 0.2f};
    T_REQUIRE(eng_amg_nms(flat, fs, 2, 0.1, keep, &nk, NULL) == 0, "nms");
    T_CHECK(nk == 2, "identical zero-area boxes both kept (NaN IoU), got %d", nk);
    /* ties keep the input order (stable sort) */
    const float far[4][4] = {{0, 0, 1, 1}, {10, 10, 11, 11}, {20, 20, 21, 21}, {30, 30, 31, 31}};
    const float ts[4] = {0.5f, 0.7f, 0.5f, 0.7f};
    T_REQUIRE(eng_amg_nms(far, ts, 4, 0.5, keep, &nk, NULL) == 0, "nms");
    T_CHECK(nk == 4 && keep[0] == 1 && keep[1] == 3 && keep[2] == 0 && keep[3] == 2,
            "ties in input order: %d %d %d %d", keep[0], keep[1], keep[2], keep[3]);
    T_REQUIRE(eng_amg_nms(far, ts, 0, 0.5, keep, &nk, NULL) == 0 && nk == 0, "no boxes");
}

#define AMG_STD_SORT_HEAD                                                                          \
    287, 302, 899, 299, 902, 698, 296, 905, 503, 293, 908, 290, 911, 695, 500, 914, 506, 284, 917, \
        281, 920, 692, 278, 923
#define AMG_STD_SORT_HASH 0x68da2f6125fc67c3ull

/* Past 1000 boxes torchvision sorts the kept indices with std::sort, which
 * is not stable: 1200 disjoint boxes with three distinct scores. The expected
 * first 24 and a checksum of the whole order were produced by libstdc++'s
 * std::sort (GCC 12) on (score, index) pairs in increasing index order with
 * torchvision's comparator, independently of this code. */
static void test_nms_large_ties(void)
{
    enum { N = 1200 };
    float(*bx)[4] = malloc(sizeof(float[N][4]));
    float *sc = malloc(N * sizeof *sc);
    int *keep = malloc(N * sizeof *keep), nk;
    for (int i = 0; i < N; i++) {
        bx[i][0] = (float)(3 * i);
        bx[i][1] = 0;
        bx[i][2] = (float)(3 * i + 2);
        bx[i][3] = 2;
        sc[i] = (float)((i * 7) % 3) * 0.25f;
    }
    T_REQUIRE(eng_amg_nms((const float(*)[4])bx, sc, N, 0.5, keep, &nk, NULL) == 0, "nms");
    T_REQUIRE(nk == N, "disjoint boxes all kept: %d", nk);
    int sorted = 1;
    for (int i = 1; i < N; i++)
        sorted &= sc[keep[i - 1]] >= sc[keep[i]];
    T_CHECK(sorted, "decreasing scores");
    uint64_t h = 1469598103934665603ull;
    for (int i = 0; i < N; i++)
        h = (h ^ (uint64_t)keep[i]) * 1099511628211ull;
    static const int head[24] = {AMG_STD_SORT_HEAD};
    int same = 1;
    for (int i = 0; i < 24; i++)
        same &= keep[i] == head[i];
    T_CHECK(same, "first kept: %d %d %d %d ... (not std::sort's order)", keep[0], keep[1], keep[2],
            keep[3]);
    T_CHECK(h == AMG_STD_SORT_HASH, "order checksum %llx", (unsigned long long)h);
    /* 1000 boxes: the coordinate-trick path, stable */
    T_REQUIRE(eng_amg_nms((const float(*)[4])bx, sc, 1000, 0.5, keep, &nk, NULL) == 0, "nms");
    int stable = 1;
    for (int i = 1; i < nk; i++)
        stable &= sc[keep[i - 1]] > sc[keep[i]] ||
                  (sc[keep[i - 1]] == sc[keep[i]] && keep[i - 1] < keep[i]);
    T_CHECK(stable && nk == 1000, "1000 boxes: stable order");
    free(bx);
    free(sc);
    free(keep);
}

/* A result record with a box and an RLE of a w x h mask holding the box. */
static eng_amg_mask rec_box(int w, int h, int x0, int y0, int x1, int y1, float iou,
                            const int crop[4])
{
    eng_amg_mask m;
    memset(&m, 0, sizeof m);
    uint8_t *px = calloc((size_t)w * h, 1);
    for (int y = y0; y <= y1; y++)
        for (int x = x0; x <= x1; x++)
            px[y * w + x] = 1;
    eng_rle_encode(px, h, w, &m.rle);
    free(px);
    m.box[0] = x0;
    m.box[1] = y0;
    m.box[2] = x1;
    m.box[3] = y1;
    m.predicted_iou = iou;
    memcpy(m.crop_box, crop, sizeof m.crop_box);
    return m;
}

static void test_crop_nms_prefers_smaller(void)
{
    const int full[4] = {0, 0, 100, 80}, small[4] = {0, 0, 60, 50}, mid[4] = {40, 0, 100, 80};
    eng_amg_result r;
    memset(&r, 0, sizeof r);
    r.masks = calloc(4, sizeof *r.masks);
    r.cap = 4;
    /* the same object seen from the whole image (high IoU) and from a small
     * crop (low IoU); a separate object from a middle-sized crop */
    r.masks[r.n++] = rec_box(100, 80, 10, 10, 30, 30, 0.99f, full);
    r.masks[r.n++] = rec_box(100, 80, 10, 10, 30, 31, 0.5f, small);
    r.masks[r.n++] = rec_box(100, 80, 70, 50, 90, 70, 0.7f, mid);
    r.masks[r.n++] = rec_box(100, 80, 70, 50, 90, 70, 0.9f, full);
    T_REQUIRE(eng_amg_crop_nms(&r, 0.7, NULL) == 0, "%s", eng_last_error());
    /* scores 1/3000 (small), 1/4800 (mid), 1/8000 (full) */
    T_CHECK(r.n == 2, "two objects remain, got %zu", r.n);
    T_CHECK(r.n == 2 && r.masks[0].crop_box[2] == 60 && r.masks[0].predicted_iou == 0.5f,
            "the small crop's mask wins and comes first");
    T_CHECK(r.n == 2 && r.masks[1].crop_box[0] == 40, "the mid crop's mask beats the whole image");
    eng_amg_result_free(&r);
}

/* ---- small regions ---- */

static uint8_t *draw(int w, int h, const char *rows)
{
    uint8_t *m = calloc((size_t)w * h, 1);
    for (int i = 0; i < w * h; i++)
        m[i] = rows[i] == '#';
    return m;
}

static void test_small_regions(void)
{
    /* a ring with a 2x2 hole; a lone pixel touching the ring only at a
     * corner (8-connected: part of it); a 2-pixel island apart */
    const char *pic = "........."
                      ".#####..."
                      ".#..#...."
                      ".#..#...."
                      ".####...."
                      ".....#..."
                      "........."
                      "......##."
                      ".........";
    int w = 9, h = 9, ch;
    uint8_t *m = draw(w, h, pic);
    T_REQUIRE(eng_amg_remove_small_regions(m, w, h, 4, 1, &ch) == 0, "holes");
    T_CHECK(!ch && !m[2 * 9 + 2], "a hole of 4 is not below 4: unchanged");
    T_REQUIRE(eng_amg_remove_small_regions(m, w, h, 5, 1, &ch) == 0, "holes");
    T_CHECK(ch && m[2 * 9 + 2] && m[3 * 9 + 3] && !m[0], "hole of 4 below 5 filled");
    free(m);
    m = draw(w, h, pic);
    T_REQUIRE(eng_amg_remove_small_regions(m, w, h, 3, 0, &ch) == 0, "islands");
    T_CHECK(ch && !m[7 * 9 + 6] && !m[7 * 9 + 7], "the 2-pixel island removed");
    T_CHECK(m[5 * 9 + 5], "the corner-touching pixel belongs to the ring (8-connected)");
    free(m);
    /* every island small: only the largest stays */
    const char *two = "##....#"
                      ".......";
    m = draw(7, 2, two);
    T_REQUIRE(eng_amg_remove_small_regions(m, 7, 2, 10, 0, &ch) == 0, "islands");
    T_CHECK(ch && m[0] && m[1] && !m[6], "all below the area: the largest kept");
    free(m);
    /* equal sizes: cv2 numbers components in the order of the 2x2 blocks
     * they first touch (its block-based labelling), and np.argmax takes the
     * first: the island in block row 0, column 1 (pixel row 1) beats the one
     * in column 3 (pixel row 0) */
    const char *tie = "......##"
                      "..##....";
    m = draw(8, 2, tie);
    T_REQUIRE(eng_amg_remove_small_regions(m, 8, 2, 10, 0, &ch) == 0, "islands");
    T_CHECK(ch && m[8 + 2] && m[8 + 3] && !m[6] && !m[7], "tie: the first block's island kept");
    free(m);
    /* holes mode on an empty mask: the background is one component */
    m = calloc(16, 1);
    T_REQUIRE(eng_amg_remove_small_regions(m, 4, 4, 17, 1, &ch) == 0, "holes");
    T_CHECK(ch && m[0] && m[15], "an empty mask whose background is small is filled");
    free(m);
}

static void test_small_regions_nms(void)
{
    /* two masks of one object: A has a speck beside it (changed by the
     * island removal), B does not; after removal their boxes coincide and
     * NMS prefers the unchanged B although A came first */
    const int full[4] = {0, 0, 20, 10};
    eng_amg_result r;
    memset(&r, 0, sizeof r);
    r.masks = calloc(3, sizeof *r.masks);
    r.cap = 3;
    eng_amg_mask a = rec_box(20, 10, 2, 2, 8, 7, 0.9f, full);
    {
        uint8_t *px = calloc(200, 1);
        eng_rle_decode(&a.rle, px);
        px[9 * 20 + 18] = 1; /* the speck */
        eng_rle_free(&a.rle);
        eng_rle_encode(px, 10, 20, &a.rle);
        free(px);
        a.box[2] = 18;
        a.box[3] = 9;
    }
    r.masks[r.n++] = a;
    r.masks[r.n++] = rec_box(20, 10, 2, 2, 8, 7, 0.8f, full);
    r.masks[r.n++] = rec_box(20, 10, 12, 1, 16, 4, 0.7f, full);
    T_REQUIRE(eng_amg_small_regions(&r, 20, 10, 3, 0.7, NULL) == 0, "%s", eng_last_error());
    T_CHECK(r.n == 2, "duplicate removed, got %zu", r.n);
    T_CHECK(r.n == 2 && r.masks[0].predicted_iou == 0.8f && r.masks[1].predicted_iou == 0.7f,
            "unchanged masks first, in order");
    eng_amg_result_free(&r);

    /* a changed mask that survives carries its new RLE and box */
    memset(&r, 0, sizeof r);
    r.masks = calloc(1, sizeof *r.masks);
    r.cap = 1;
    a = rec_box(20, 10, 2, 2, 8, 7, 0.9f, full);
    {
        uint8_t *px = calloc(200, 1);
        eng_rle_decode(&a.rle, px);
        px[9 * 20 + 18] = 1;
        eng_rle_free(&a.rle);
        eng_rle_encode(px, 10, 20, &a.rle);
        free(px);
    }
    r.masks[r.n++] = a;
    T_REQUIRE(eng_amg_small_regions(&r, 20, 10, 3, 0.7, NULL) == 0, "%s", eng_last_error());
    T_CHECK(r.n == 1 && eng_rle_area(&r.masks[0].rle) == 42 && r.masks[0].box[2] == 8 &&
                r.masks[0].box[3] == 7,
            "the kept changed mask: area %llu, box to (%d, %d)",
            (unsigned long long)(r.n ? eng_rle_area(&r.masks[0].rle) : 0),
            r.n ? r.masks[0].box[2] : -1, r.n ? r.masks[0].box[3] : -1);
    eng_amg_result_free(&r);
}

/* ---- the whole run ---- */

static void test_params_checked(void)
{
    eng_amg_params p;
    char field[64];
    eng_amg_defaults(&p);
    T_CHECK(eng_amg_check(&p, field) == 0 && !field[0], "defaults are valid: %s", eng_last_error());
    T_CHECK(p.points_per_side == 32 && p.points_per_batch == 64 && p.pred_iou_thresh == 0.88 &&
                p.stability_score_thresh == 0.95 && p.stability_score_offset == 1.0 &&
                p.box_nms_thresh == 0.7 && p.crop_n_layers == 0 && p.crop_nms_thresh == 0.7 &&
                p.crop_overlap_ratio == 512.0 / 1500 && p.crop_n_points_downscale_factor == 1 &&
                p.min_mask_region_area == 0,
            "the reference's defaults");
#define BAD(stmt, name)                                                                            \
    do {                                                                                           \
        eng_amg_defaults(&p);                                                                      \
        stmt;                                                                                      \
        int rc_ = eng_amg_check(&p, field);                                                        \
        T_CHECK(rc_ == ENG_EINVAL && !strcmp(field, name) && strstr(eng_last_error(), name),       \
                "%s: rc %d field '%s' message '%s'", #stmt, rc_, field, eng_last_error());         \
    } while (0)
    BAD(p.points_per_side = 0, "points_per_side");
    BAD(p.points_per_side = 129, "points_per_side");
    BAD(p.points_per_batch = 0, "points_per_batch");
    BAD(p.points_per_batch = 257, "points_per_batch");
    BAD(p.pred_iou_thresh = NAN, "pred_iou_thresh");
    BAD(p.pred_iou_thresh = 1.5, "pred_iou_thresh");
    BAD(p.stability_score_thresh = -0.1, "stability_score_thresh");
    BAD(p.stability_score_offset = INFINITY, "stability_score_offset");
    BAD(p.box_nms_thresh = 2, "box_nms_thresh");
    BAD(p.crop_n_layers = 5, "crop_n_layers");
    BAD(p.crop_nms_thresh = -1, "crop_nms_thresh");
    BAD(p.crop_overlap_ratio = 1, "crop_overlap_ratio");
    BAD(p.min_mask_region_area = -1, "min_mask_region_area");
    BAD(p.crop_n_points_downscale_factor = 0, "crop_n_points_downscale_factor");
    /* 4 / 3^2 < 1: the second crop layer would have no point */
    BAD((p.points_per_side = 4, p.crop_n_layers = 2, p.crop_n_points_downscale_factor = 3),
        "crop_n_points_downscale_factor");
    const double xy[4] = {0.5, 0.5, 1.5, 0.2};
    eng_amg_grid g[2] = {{1, xy}, {2, xy}};
    BAD((p.points_per_side = 0, p.grids = g, p.n_grids = 1, p.crop_n_layers = 1), "point_grids");
    BAD((p.grids = g, p.n_grids = 1), "point_grids");
    BAD((p.points_per_side = 0, p.grids = g + 1, p.n_grids = 1), "point_grids[0][1]");
    eng_amg_defaults(&p);
    p.points_per_side = 0;
    p.grids = g;
    p.n_grids = 1;
    T_CHECK(eng_amg_check(&p, field) == 0, "an explicit grid: %s", eng_last_error());
}

static int cancel_after(void *arg)
{
    int *calls = arg;
    return ++*calls > 2;
}

static void test_run_limits(void)
{
    NEED_MODEL();
    eng_amg_params p;
    eng_amg_defaults(&p);
    p.points_per_side = 4;
    p.points_per_batch = 1;
    eng_amg_input in = {.image = &dog};
    eng_amg_result r;
    /* nothing above the threshold: an empty answer, not an error */
    p.pred_iou_thresh = 1.0;
    T_CHECK(eng_amg_run(model, &in, &p, NULL, &r) == 0 && r.n == 0 && r.stats.prompts == 16 &&
                r.stats.upscaled == 0,
            "empty: rc %s, %zu masks, %lld prompts, %lld upscaled", eng_last_error(), r.n,
            (long long)r.stats.prompts, (long long)r.stats.upscaled);
    eng_amg_result_free(&r);
    /* cancelled between decoder passes */
    int calls = 0;
    eng_amg_hooks hk = {.cancel = cancel_after, .arg = &calls};
    p.pred_iou_thresh = 0;
    T_CHECK(eng_amg_run(model, &in, &p, &hk, &r) == ENG_ECANCELED && calls == 3 &&
                r.stats.prompts == 1,
            "cancel: %s (after %d polls, %lld prompts)", eng_last_error(), calls,
            (long long)r.stats.prompts);
    eng_amg_result_free(&r);
    /* the mask-memory bound */
    p.stability_score_thresh = 0;
    in.max_mask_bytes = 1000;
    T_CHECK(eng_amg_run(model, &in, &p, NULL, &r) == ENG_ELIMIT &&
                strstr(eng_last_error(), "max_mask_bytes"),
            "mask bytes: %s", eng_last_error());
    eng_amg_result_free(&r);
    /* crop layers need pixels */
    eng_amg_input emb_only = {.width = dog.w, .height = dog.h, .embedding = dog_emb};
    p.crop_n_layers = 1;
    T_CHECK(eng_amg_run(model, &emb_only, &p, NULL, &r) == ENG_EINVAL &&
                strstr(eng_last_error(), "pixels"),
            "crops without pixels: %s", eng_last_error());
    eng_amg_result_free(&r);
}

/* A zero adapter gives the plain model's masks exactly. */
static void test_zero_adapter(void)
{
    NEED_MODEL();
    const eng_sam_lora_target *t = eng_sam_lora_targets();
    const float *A[ENG_SAM_LORA_TARGETS] = {0}, *B[ENG_SAM_LORA_TARGETS] = {0};
    float *zero = calloc(2048 * 4, sizeof(float));
    for (int i = 0; i < ENG_SAM_LORA_TARGETS; i++)
        if (t[i].in <= 2048 && t[i].out <= 2048)
            A[i] = B[i] = zero;
    eng_sam_lora *lo = NULL;
    T_REQUIRE(eng_sam_lora_create(model, 4, 2.0f, A, B, 0, &lo) == 0, "%s", eng_last_error());
    eng_amg_params p;
    eng_amg_defaults(&p);
    p.points_per_side = 3;
    p.pred_iou_thresh = 0;
    p.stability_score_thresh = 0;
    p.box_nms_thresh = 1;
    eng_amg_input in = {.image = &dog};
    eng_amg_result a, b;
    T_REQUIRE(eng_amg_run(model, &in, &p, NULL, &a) == 0, "%s", eng_last_error());
    in.lora = lo;
    T_REQUIRE(eng_amg_run(model, &in, &p, NULL, &b) == 0, "%s", eng_last_error());
    int same = a.n == b.n && a.n == 27;
    for (size_t i = 0; same && i < a.n; i++)
        same = a.masks[i].predicted_iou == b.masks[i].predicted_iou &&
               a.masks[i].rle.n == b.masks[i].rle.n &&
               !memcmp(a.masks[i].rle.counts, b.masks[i].rle.counts, a.masks[i].rle.n * 4);
    T_CHECK(same, "a zero adapter changed the masks (%zu vs %zu)", a.n, b.n);
    eng_amg_result_free(&a);
    eng_amg_result_free(&b);
    eng_sam_lora_destroy(model, lo);
    free(zero);
}

int main(void)
{
    setup();
    T_RUN(test_point_grid);
    T_RUN(test_crop_boxes);
    T_RUN(test_mask_box);
    T_RUN(test_crop_edge);
    T_RUN(test_rle_uncrop);
    T_RUN(test_nms_basic);
    T_RUN(test_nms_large_ties);
    T_RUN(test_crop_nms_prefers_smaller);
    T_RUN(test_small_regions);
    T_RUN(test_small_regions_nms);
    T_RUN(test_params_checked);
    T_RUN(test_fixture_cases);
    T_RUN(test_run_limits);
    T_RUN(test_zero_adapter);
    eng_image_free(&dog);
    free(dog_emb);
    eng_sam_destroy(model);
    eng_backend_destroy(be);
    return t_summary("test_amg");
}
