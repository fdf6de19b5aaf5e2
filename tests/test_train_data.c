/*
 * tests/test_train_data.c: the trainer's data: polygon rasterisation
 * (hand-checked masks and geometric bounds), RLE union/intersection against
 * pixel loops, the COCO loader on good and hostile files, the synthetic
 * dataset (same seed, same bytes; sanity of masks, categories and held-out
 * splits), the low-res target against a per-pixel area computation, and the
 * prompt-sampling rules.
 */
#include "tests/harness.h"
#include "tests/tdata.h"

#include <jansson.h>

#include "engine/error.h"
#include "engine/image.h"
#include "engine/rle.h"
#include "train/coco.h"
#include "train/mask.h"
#include "train/rng.h"
#include "train/sample.h"
#include "train/io.h"
#include "train/synth.h"

static char tasam_train[1024];

/* ---- helpers ---- */

static int synth_pair_is(const int *v, int n, const tr_synth_object *o)
{
    for (int i = 0; i < n; i++)
        if (v[i] == o->color * TR_SYNTH_SHAPES + o->shape)
            return 1;
    return 0;
}

static uint8_t *decode(const eng_rle *r)
{
    uint8_t *m = calloc((size_t)r->h * r->w + 1, 1);
    if (m && eng_rle_decode(r, m) != 0) {
        free(m);
        return NULL;
    }
    return m;
}

/* The mask of a polygon as rows of '0'/'1' (for messages). */
static int mask_equals_rows(const uint8_t *m, int h, int w, const char *const *rows)
{
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            if ((m[y * w + x] != 0) != (rows[y][x] == '1'))
                return 0;
    return 1;
}

/* ---- polygons ---- */

static void check_poly(const double *xy, size_t k, int h, int w, const char *const *rows,
                       const char *what)
{
    eng_rle r;
    T_REQUIRE(tr_rle_from_polygon(xy, k, h, w, &r) == 0, "%s: %s", what, eng_last_error());
    uint8_t *m = decode(&r);
    T_CHECK(m && mask_equals_rows(m, h, w, rows), "%s: mask differs from the hand-checked one",
            what);
    free(m);
    eng_rle_free(&r);
}

/* Hand-checked: pixel (x, y) is inside when its centre (x + .5, y + .5) is
 * (the vertices here make the 5x rounding exact, no centre on an edge). */
static void test_polygon_hand(void)
{
    const double square[] = {1, 1, 4, 1, 4, 4, 1, 4};
    const char *const square_rows[] = {"000000", "011100", "011100", "011100", "000000", "000000"};
    check_poly(square, 4, 6, 6, square_rows, "square [1,4]^2");

    /* x + y < 6 through pixel centres: x + y <= 4 */
    const double tri[] = {0, 0, 6, 0, 0, 6};
    const char *const tri_rows[] = {"11111000", "11110000", "11100000", "11000000",
                                    "10000000", "00000000", "00000000", "00000000"};
    check_poly(tri, 3, 8, 8, tri_rows, "triangle x+y<6");

    /* the same square given clockwise and counter-clockwise */
    const double square_ccw[] = {1, 1, 1, 4, 4, 4, 4, 1};
    check_poly(square_ccw, 4, 6, 6, square_rows, "square, other orientation");

    /* partly outside: clipped to the image */
    const double clip[] = {-1, -1, 3, -1, 3, 3, -1, 3};
    const char *const clip_rows[] = {"1110", "1110", "1110", "0000"};
    check_poly(clip, 4, 4, 4, clip_rows, "square reaching past the top-left corner");

    /* reaching past the bottom edge: columns fill to their end */
    const double low[] = {1, 2, 3, 2, 3, 9, 1, 9};
    const char *const low_rows[] = {"0000", "0000", "0110", "0110"};
    check_poly(low, 4, 4, 4, low_rows, "rectangle past the bottom edge");

    /* entirely outside: empty */
    const double out[] = {10, 0, 12, 0, 12, 2};
    const char *const out_rows[] = {"0000", "0000", "0000", "0000"};
    check_poly(out, 3, 4, 4, out_rows, "triangle right of the image");

    /* two squares in one polygon list: union via tr_rle_union */
    const double a[] = {0, 0, 2, 0, 2, 2, 0, 2}, b[] = {1, 1, 4, 1, 4, 3, 1, 3};
    eng_rle ra, rb, u;
    T_REQUIRE(tr_rle_from_polygon(a, 4, 4, 5, &ra) == 0 &&
                  tr_rle_from_polygon(b, 4, 4, 5, &rb) == 0,
              "%s", eng_last_error());
    const eng_rle *both[2] = {&ra, &rb};
    T_REQUIRE(tr_rle_union(both, 2, &u) == 0, "%s", eng_last_error());
    uint8_t *m = decode(&u);
    const char *const u_rows[] = {"11000", "11110", "01110", "00000"};
    T_CHECK(m && mask_equals_rows(m, 4, 5, u_rows), "union of two squares");
    T_CHECK(eng_rle_area(&u) == 9, "union area %llu", (unsigned long long)eng_rle_area(&u));
    free(m);
    eng_rle_free(&ra);
    eng_rle_free(&rb);
    eng_rle_free(&u);

    /* refused: too few vertices, non-finite, absurd coordinates */
    const double two[] = {0, 0, 1, 1}, nan_[] = {0, 0, NAN, 1, 2, 2}, far[] = {0, 0, 1e9, 0, 0, 1};
    T_CHECK(tr_rle_from_polygon(two, 2, 4, 4, &u) < 0, "2 vertices accepted");
    T_CHECK(tr_rle_from_polygon(nan_, 3, 4, 4, &u) < 0, "NaN accepted");
    T_CHECK(tr_rle_from_polygon(far, 3, 4, 4, &u) < 0, "1e9 accepted");
}

/* Random convex polygons: a pixel whose centre is deeper than 0.25 px
 * inside must be set, one further than 0.25 px outside must not (the 5x
 * grid moves the boundary by at most 0.1 px plus a rounding step). */
static void test_polygon_convex_bounds(void)
{
    tr_rng rng;
    tr_rng_seed(&rng, 7, 1);
    int bad = 0, cases = 0;
    for (int it = 0; it < 200; it++) {
        const int w = 20 + (int)tr_rng_below(&rng, 60), h = 20 + (int)tr_rng_below(&rng, 60);
        const int k = 3 + (int)tr_rng_below(&rng, 9);
        const double cx = tr_rng_range(&rng, 0, w), cy = tr_rng_range(&rng, 0, h);
        const double rad = tr_rng_range(&rng, 2, 25);
        double xy[24], ang[12];
        for (int i = 0; i < k; i++)
            ang[i] = tr_rng_range(&rng, 0, 6.283185307179586);
        for (int i = 1; i < k; i++) /* sort: a convex polygon in angle order */
            for (int j = i; j > 0 && ang[j] < ang[j - 1]; j--) {
                double t = ang[j];
                ang[j] = ang[j - 1];
                ang[j - 1] = t;
            }
        for (int i = 0; i < k; i++) {
            xy[2 * i] = cx + rad * cos(ang[i]);
            xy[2 * i + 1] = cy + rad * sin(ang[i]);
        }
        eng_rle r;
        if (tr_rle_from_polygon(xy, (size_t)k, h, w, &r) != 0) {
            bad++;
            continue;
        }
        uint8_t *m = decode(&r);
        for (int y = 0; y < h && m; y++)
            for (int x = 0; x < w; x++) {
                /* signed distance of the centre to the polygon: min over
                 * edges of the inward distance (convex, counter-clockwise
                 * in these axes) */
                const double px = x + 0.5, py = y + 0.5;
                double dmin = 1e30;
                for (int i = 0; i < k; i++) {
                    const double x0 = xy[2 * i], y0 = xy[2 * i + 1];
                    const double x1 = xy[2 * ((i + 1) % k)], y1 = xy[2 * ((i + 1) % k) + 1];
                    const double ex = x1 - x0, ey = y1 - y0, len = sqrt(ex * ex + ey * ey);
                    if (len < 1e-9)
                        continue;
                    const double d = (ex * (py - y0) - ey * (px - x0)) / len;
                    dmin = d < dmin ? d : dmin;
                }
                cases++;
                if ((dmin > 0.25 && !m[y * w + x]) || (dmin < -0.25 && m[y * w + x]))
                    bad++;
            }
        free(m);
        eng_rle_free(&r);
    }
    T_CHECK(bad == 0, "%d of %d pixels on the wrong side of a convex polygon", bad, cases);
}

/* Union, intersection and lookup on runs against pixel loops. */
static void test_rle_ops(void)
{
    tr_rng rng;
    tr_rng_seed(&rng, 3, 3);
    for (int it = 0; it < 100; it++) {
        const int h = 1 + (int)tr_rng_below(&rng, 30), w = 1 + (int)tr_rng_below(&rng, 30);
        const size_t n = (size_t)h * w;
        uint8_t *a = malloc(n), *b = malloc(n), *c = malloc(n);
        const double pa = tr_rng_uniform(&rng), pb = tr_rng_uniform(&rng);
        uint64_t inter = 0, uni = 0;
        for (size_t i = 0; i < n; i++) {
            a[i] = tr_rng_uniform(&rng) < pa;
            b[i] = tr_rng_uniform(&rng) < pb;
            inter += a[i] && b[i];
            uni += a[i] || b[i];
        }
        eng_rle ra, rb, ru, rc;
        T_REQUIRE(eng_rle_encode(a, h, w, &ra) == 0 && eng_rle_encode(b, h, w, &rb) == 0, "encode");
        T_CHECK(tr_rle_intersection(&ra, &rb) == inter, "intersection");
        T_CHECK(tr_rle_union_area(&ra, &rb) == uni, "union area");
        const eng_rle *both[2] = {&ra, &rb};
        T_REQUIRE(tr_rle_union(both, 2, &ru) == 0, "%s", eng_last_error());
        uint8_t *m = decode(&ru);
        int same = m != NULL;
        for (size_t i = 0; same && i < n; i++)
            same = m[i] == (a[i] || b[i]);
        T_CHECK(same, "union mask (%dx%d)", h, w);
        T_REQUIRE(tr_rle_copy(&ra, &rc) == 0, "copy");
        int at = 1;
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++)
                at &= tr_rle_at(&rc, x, y) == a[(size_t)y * w + x];
        T_CHECK(at && !tr_rle_at(&rc, -1, 0) && !tr_rle_at(&rc, w, 0), "lookup");
        memset(c, 0, n);
        tr_rle_paint(&ra, c);
        T_CHECK(!memcmp(c, a, n), "paint");
        free(m);
        free(a);
        free(b);
        free(c);
        eng_rle_free(&ra);
        eng_rle_free(&rb);
        eng_rle_free(&ru);
        eng_rle_free(&rc);
    }
}

/* ---- COCO loading ---- */

/* td_dir/coco/{images/a.png (12x10), images/b.png (8x6)} */
static int make_images(void)
{
    uint8_t px[12 * 10 * 3];
    memset(px, 128, sizeof px);
    if (tr_mkdirs(td_path("coco/images")))
        return -1;
    if (eng_png_write(td_path("coco/images/a.png"), px, 12, 10, 3) ||
        eng_png_write(td_path("coco/images/b.png"), px, 8, 6, 3))
        return -1;
    return 0;
}

/* A good instances file around `anns` and `cats` (JSON fragments). */
static char *coco_json(const char *images, const char *anns, const char *cats)
{
    static char buf[16384];
    snprintf(buf, sizeof buf, "{\"images\": %s, \"annotations\": %s, \"categories\": %s}", images,
             anns, cats);
    return buf;
}

static const char *good_images =
    "[{\"id\": 7, \"width\": 12, \"height\": 10, \"file_name\": \"a.png\"},"
    " {\"id\": 3, \"width\": 8, \"height\": 6, \"file_name\": \"b.png\"}]";
static const char *good_cats =
    "[{\"id\": 5, \"name\": \"bus\", \"supercategory\": \"vehicle\"},"
    " {\"id\": 2, \"name\": \"red circle\", \"tasks\": [\" segment every red circle \", \"red "
    "circles\"], \"heldout_tasks\": [\"red circles\"], \"split\": \"heldout_combination\"}]";

static void test_coco_load_good(void)
{
    T_REQUIRE(make_images() == 0, "cannot write images in %s", td_dir);
    /* b.png mask: a 2x2 block at x 1..2, y 1..2 as compressed RLE */
    uint8_t m[6 * 8] = {0};
    m[1 * 8 + 1] = m[1 * 8 + 2] = m[2 * 8 + 1] = m[2 * 8 + 2] = 1;
    eng_rle r;
    char *counts = NULL;
    T_REQUIRE(eng_rle_encode(m, 6, 8, &r) == 0 && eng_rle_to_string(&r, &counts) == 0, "rle");
    char anns[4096];
    snprintf(anns, sizeof anns,
             "[{\"id\": 1, \"image_id\": 7, \"category_id\": 5, \"segmentation\": [[1,1, 4,1, 4,4, "
             "1,4]], \"area\": 9.0, \"bbox\": [1,1,3,3], \"iscrowd\": 0},"
             " {\"id\": 2, \"image_id\": 3, \"category_id\": 2, \"segmentation\": {\"size\": [6, "
             "8], \"counts\": \"%s\"}},"
             " {\"id\": 3, \"image_id\": 7, \"category_id\": 5, \"iscrowd\": 1, \"segmentation\": "
             "{\"size\": [10, 12], \"counts\": [100, 5, 15]}},"
             " {\"id\": 4, \"image_id\": 7, \"category_id\": 2, \"segmentation\": [[0,0, 2,0, 2,2, "
             "0,2], [6,6, 8,6, 8,8, 6,8], [9,9, 10,10]]}]",
             counts);
    free(counts);
    eng_rle_free(&r);
    T_REQUIRE(td_write(td_path("coco/instances.json"), coco_json(good_images, anns, good_cats)) ==
                  0,
              "write");
    tr_coco *c = NULL;
    T_REQUIRE(tr_coco_open_dir(&c, td_path("coco"), 0) == 0, "%s", eng_last_error());
    T_CHECK(c->n_images == 2 && c->n_categories == 2 && c->n_anns == 4, "counts %d %d %d",
            c->n_images, c->n_categories, c->n_anns);
    T_CHECK(tr_coco_image_index(c, 7) == 0 && tr_coco_image_index(c, 3) == 1 &&
                tr_coco_image_index(c, 4) == -1,
            "image lookup");
    T_CHECK(tr_coco_category_index(c, 2) == 1 && tr_coco_category_index(c, 5) == 0, "cat lookup");

    /* generated phrasings for "bus"; given ones trimmed, held-out marked */
    const tr_coco_category *bus = &c->categories[0], *rc = &c->categories[1];
    T_CHECK(bus->tasks_generated && bus->n_tasks == TR_COCO_MAX_DEFAULT_TASKS &&
                !strcmp(bus->tasks[0], "segment every bus") &&
                !strcmp(bus->tasks[1], "segment all buses"),
            "default tasks: '%s', '%s'", bus->tasks[0], bus->n_tasks > 1 ? bus->tasks[1] : "");
    T_CHECK(!strcmp(bus->supercategory, "vehicle") && bus->split == TR_SPLIT_SEEN, "bus fields");
    T_CHECK(!rc->tasks_generated && rc->n_tasks == 2 &&
                !strcmp(rc->tasks[0], "segment every red circle") && !rc->task_heldout[0] &&
                rc->task_heldout[1] && rc->split == TR_SPLIT_HELDOUT,
            "given tasks");

    /* the polygon: pixels 1..3 x 1..3 of a.png; JSON area and bbox kept */
    const tr_coco_ann *a0 = &c->anns[0], *a1 = &c->anns[1], *a2 = &c->anns[2], *a3 = &c->anns[3];
    T_CHECK(eng_rle_area(&a0->mask) == 9 && tr_rle_at(&a0->mask, 1, 1) &&
                tr_rle_at(&a0->mask, 3, 3) && !tr_rle_at(&a0->mask, 4, 4),
            "polygon mask");
    T_CHECK(a0->area == 9 && a0->bbox[2] == 3 && !a0->iscrowd && a0->image == 0, "ann 0 fields");
    /* compressed RLE decoded; area and bbox from the mask when absent */
    T_CHECK(a1->image == 1 && a1->category == 1 && a1->area == 4 && a1->bbox[0] == 1 &&
                a1->bbox[1] == 1 && a1->bbox[2] == 2 && a1->bbox[3] == 2,
            "RLE annotation: area %g bbox %g,%g,%g,%g", a1->area, a1->bbox[0], a1->bbox[1],
            a1->bbox[2], a1->bbox[3]);
    /* uncompressed crowd RLE: 5 pixels from column-major index 100
     * (column 10, rows 0..4) */
    T_CHECK(a2->iscrowd && eng_rle_area(&a2->mask) == 5 && tr_rle_at(&a2->mask, 10, 0) &&
                tr_rle_at(&a2->mask, 10, 4) && !tr_rle_at(&a2->mask, 10, 5),
            "crowd RLE");
    /* two polygons merged (and a 2-point part that adds nothing) */
    T_CHECK(eng_rle_area(&a3->mask) == 8 && tr_rle_at(&a3->mask, 0, 0) &&
                tr_rle_at(&a3->mask, 7, 7),
            "two-polygon annotation: area %llu", (unsigned long long)eng_rle_area(&a3->mask));
    /* annotations grouped by image in file order */
    const tr_coco_image *im = &c->images[0];
    T_CHECK(im->n_anns == 3 && c->ann_index[im->first_ann] == 0 &&
                c->ann_index[im->first_ann + 1] == 2 && c->ann_index[im->first_ann + 2] == 3,
            "image 7's annotations");
    /* category mask: the non-crowd instances of "bus" on image 7 */
    uint8_t cm[120];
    int ninst;
    tr_coco_category_mask(c, 0, 0, cm, &ninst);
    int sum = 0;
    for (int i = 0; i < 120; i++)
        sum += cm[i];
    T_CHECK(ninst == 1 && sum == 9, "category mask: %d instances, %d pixels", ninst, sum);
    eng_image img;
    T_CHECK(tr_coco_load_image(c, 1, &img) == 0 && img.w == 8 && img.h == 6, "%s",
            eng_last_error());
    eng_image_free(&img);
    tr_coco_destroy(c);
}

/* Each hostile file fails with a message naming the file and the entry. */
static void test_coco_load_hostile(void)
{
    T_REQUIRE(make_images() == 0, "images");
    const char *poly = "[[1,1, 4,1, 4,4, 1,4]]";
    char anns_ok[256];
    snprintf(anns_ok, sizeof anns_ok,
             "[{\"id\": 1, \"image_id\": 7, \"category_id\": 5, \"segmentation\": %s}]", poly);
    static const struct {
        const char *images, *anns, *cats; /* NULL: the good one */
        const char *expect[2];            /* substrings of the message */
    } cases[] = {
        {NULL, NULL, "[]", {"\"categories\" is empty", NULL}},
        {NULL,
         NULL,
         "[{\"id\": 5, \"name\": \"a\"}, {\"id\": 5, \"name\": \"b\"}]",
         {"categories[1]", "duplicate id 5"}},
        {NULL, NULL, "[{\"id\": 5}]", {"categories[0] (id 5)", "name"}},
        {NULL,
         NULL,
         "[{\"id\": 5, \"name\": \"a\", \"tasks\": [1]}]",
         {"categories[0]", "tasks[0]"}},
        {NULL, NULL, "[{\"id\": 5, \"name\": \"a\", \"tasks\": []}]", {"categories[0]", "tasks"}},
        {NULL,
         NULL,
         "[{\"id\": 5, \"name\": \"a\", \"tasks\": [\"x\"], \"heldout_tasks\": [\"y\"]}]",
         {"categories[0]", "heldout_tasks[0]"}},
        {NULL,
         NULL,
         "[{\"id\": 5, \"name\": \"a\", \"split\": \"maybe\"}]",
         {"categories[0]", "split"}},
        {NULL,
         NULL,
         "[{\"id\": 5, \"name\": \"a\", \"heldout_tasks\": [\"a\"]}]",
         {"categories[0] (id 5)", "heldout_tasks without tasks"}},
        {"[{\"id\": 7, \"width\": 12, \"height\": 10, \"file_name\": \"missing.png\"}]",
         NULL,
         NULL,
         {"images[0] (id 7)", "missing.png not found"}},
        {"[{\"id\": 7, \"width\": 12, \"height\": 10, \"file_name\": \"../a.png\"}]",
         NULL,
         NULL,
         {"images[0] (id 7)", "relative path"}},
        {"[{\"id\": 7, \"width\": 12, \"height\": 10, \"file_name\": \"/etc/passwd\"}]",
         NULL,
         NULL,
         {"images[0] (id 7)", "relative path"}},
        {"[{\"id\": 7, \"width\": 0, \"height\": 10, \"file_name\": \"a.png\"}]",
         NULL,
         NULL,
         {"images[0] (id 7)", "width"}},
        {"[{\"id\": 7, \"width\": 12, \"height\": 10, \"file_name\": \"a.png\"}, {\"id\": 7, "
         "\"width\": 8, \"height\": 6, \"file_name\": \"b.png\"}]",
         NULL,
         NULL,
         {"images[1]", "duplicate id 7"}},
        {NULL,
         "[{\"id\": 1, \"image_id\": 99, \"category_id\": 5, \"segmentation\": [[1,1,4,1,4,4]]}]",
         NULL,
         {"annotations[0] (id 1)", "image_id"}},
        {NULL,
         "[{\"id\": 1, \"image_id\": 7, \"category_id\": 99, \"segmentation\": [[1,1,4,1,4,4]]}]",
         NULL,
         {"annotations[0] (id 1)", "category_id"}},
        {NULL,
         "[{\"id\": 1, \"image_id\": 7, \"category_id\": 5, \"segmentation\": [[1,1,4,1,4,4]]},"
         " {\"id\": 1, \"image_id\": 3, \"category_id\": 5, \"segmentation\": [[1,1,4,1,4,4]]}]",
         NULL,
         {"annotations[1]", "duplicate id 1"}},
        {NULL,
         "[{\"id\": 1, \"image_id\": 7, \"category_id\": 5, \"segmentation\": [[1,1,40,1,4,4]]}]",
         NULL,
         {"annotations[0] (id 1)", "polygon 0 vertex 1 (40, 1) is outside the 12x10 image"}},
        {NULL,
         "[{\"id\": 1, \"image_id\": 7, \"category_id\": 5, \"segmentation\": [[1,1,4,1,4]]}]",
         NULL,
         {"annotations[0] (id 1)", "polygon 0"}},
        {NULL,
         "[{\"id\": 1, \"image_id\": 7, \"category_id\": 5, \"segmentation\": []}]",
         NULL,
         {"annotations[0] (id 1)", "empty polygon list"}},
        {NULL,
         "[{\"id\": 1, \"image_id\": 7, \"category_id\": 5, \"segmentation\": "
         "[[1,1,\"a\",1,4,4]]}]",
         NULL,
         {"annotations[0] (id 1)", "not a number"}},
        {NULL,
         "[{\"id\": 1, \"image_id\": 7, \"category_id\": 5, \"segmentation\": {\"size\": [10, 12], "
         "\"counts\": \"#bad\"}}]",
         NULL,
         {"annotations[0] (id 1)", "bad RLE"}},
        {NULL,
         "[{\"id\": 1, \"image_id\": 7, \"category_id\": 5, \"segmentation\": {\"size\": [10, 12], "
         "\"counts\": [100, 5]}}]",
         NULL,
         {"annotations[0] (id 1)", "runs cover 105 pixels"}},
        {NULL,
         "[{\"id\": 1, \"image_id\": 7, \"category_id\": 5, \"segmentation\": {\"size\": [10, 12], "
         "\"counts\": [100, -5, 25]}}]",
         NULL,
         {"annotations[0] (id 1)", "counts[1]"}},
        {NULL,
         "[{\"id\": 1, \"image_id\": 7, \"category_id\": 5, \"segmentation\": {\"size\": [6, 8], "
         "\"counts\": [48]}}]",
         NULL,
         {"annotations[0] (id 1)", "not the image's [10, 12]"}},
        {NULL,
         "[{\"id\": 1, \"image_id\": 7, \"category_id\": 5, \"iscrowd\": 2, \"segmentation\": "
         "[[1,1,4,1,4,4]]}]",
         NULL,
         {"annotations[0] (id 1)", "iscrowd"}},
        {NULL,
         "[{\"id\": 1, \"image_id\": 7, \"category_id\": 5}]",
         NULL,
         {"annotations[0] (id 1)", "segmentation"}},
        {NULL,
         "[{\"id\": 1, \"image_id\": 7, \"category_id\": 5, \"segmentation\": [[1,1,4,1,4,4]], "
         "\"bbox\": [1, 2]}]",
         NULL,
         {"annotations[0] (id 1)", "bbox"}},
        {NULL, "{}", NULL, {"\"annotations\"", NULL}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *json = coco_json(cases[i].images ? cases[i].images : good_images,
                                     cases[i].anns ? cases[i].anns : anns_ok,
                                     cases[i].cats ? cases[i].cats : good_cats);
        T_REQUIRE(td_write(td_path("coco/bad.json"), json) == 0, "write");
        tr_coco *c = NULL;
        int rc = tr_coco_load(&c, td_path("coco/bad.json"), td_path("coco/images"), 0);
        const char *msg = eng_last_error();
        T_CHECK(rc < 0 && c == NULL, "case %zu loaded", i);
        T_CHECK(strstr(msg, "bad.json") != NULL, "case %zu: message names no file: %s", i, msg);
        for (int k = 0; k < 2; k++)
            T_CHECK(!cases[i].expect[k] || strstr(msg, cases[i].expect[k]),
                    "case %zu: '%s' not in: %s", i, cases[i].expect[k], msg);
        tr_coco_destroy(c);
    }
    /* not JSON, missing file, unreadable image, wrong image size */
    tr_coco *c = NULL;
    T_REQUIRE(td_write(td_path("coco/bad.json"), "{\"images\": [") == 0, "write");
    T_CHECK(tr_coco_load(&c, td_path("coco/bad.json"), td_path("coco/images"), 0) < 0 &&
                strstr(eng_last_error(), "bad.json: line"),
            "truncated JSON: %s", eng_last_error());
    T_CHECK(tr_coco_load(&c, td_path("coco/none.json"), td_path("coco/images"), 0) < 0 &&
                strstr(eng_last_error(), "none.json"),
            "missing file: %s", eng_last_error());
    T_REQUIRE(td_write(td_path("coco/images/c.png"), "not a png") == 0, "write");
    T_REQUIRE(td_write(td_path("coco/bad.json"),
                       coco_json("[{\"id\": 1, \"width\": 12, \"height\": 10, \"file_name\": "
                                 "\"c.png\"}, {\"id\": 2, \"width\": 10, \"height\": 10, "
                                 "\"file_name\": \"a.png\"}]",
                                 "[]", good_cats)) == 0,
              "write");
    T_REQUIRE(tr_coco_load(&c, td_path("coco/bad.json"), td_path("coco/images"), 0) == 0, "%s",
              eng_last_error());
    eng_image img;
    T_CHECK(tr_coco_load_image(c, 0, &img) < 0 && strstr(eng_last_error(), "images[0] (id 1)"),
            "corrupt image: %s", eng_last_error());
    T_CHECK(tr_coco_load_image(c, 1, &img) < 0 && strstr(eng_last_error(), "12x10") &&
                strstr(eng_last_error(), "images[1] (id 2)"),
            "image of the wrong size: %s", eng_last_error());
    tr_coco_destroy(c);
}

static void test_plurals(void)
{
    static const char *const cases[][2] = {
        {"person", "people"},
        {"bus", "buses"},
        {"traffic light", "traffic lights"},
        {"toothbrush", "toothbrushes"},
        {"strawberry", "strawberries"},
        {"toy", "toys"},
        {"box", "boxes"},
        {"sheep", "sheep"},
        {"wine glass", "wine glasses"},
        {"knife", "knives"},
        {"skis", "skis"},
        {"red circle", "red circles"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char buf[64];
        tr_coco_plural(cases[i][0], buf, sizeof buf);
        T_CHECK(!strcmp(buf, cases[i][1]), "plural of '%s': '%s'", cases[i][0], buf);
    }
}

/* ---- synthetic data ---- */

static int files_equal(const char *a, const char *b)
{
    size_t na = 0, nb = 0;
    uint8_t *x = t_read_file(a, &na), *y = t_read_file(b, &nb);
    int eq = x && y && na == nb && !memcmp(x, y, na);
    free(x);
    free(y);
    return eq;
}

static void test_synth_deterministic(void)
{
    T_REQUIRE(td_synth("s1", 5, 3, 2, 96, 72) == 0, "%s", eng_last_error());
    T_REQUIRE(td_synth("s2", 5, 3, 2, 96, 72) == 0, "%s", eng_last_error());
    T_REQUIRE(td_synth("s3", 6, 3, 2, 96, 72) == 0, "%s", eng_last_error());
    T_REQUIRE(td_synth("s4", 5, 2, 1, 96, 72) == 0, "%s", eng_last_error());
    const char *files[] = {"train/instances.json", "val/instances.json", "train/images/000000.png",
                           "train/images/000002.png", "val/images/000001.png"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char a[256], b[256], c[256];
        snprintf(a, sizeof a, "s1/%s", files[i]);
        snprintf(b, sizeof b, "s2/%s", files[i]);
        snprintf(c, sizeof c, "s3/%s", files[i]);
        T_CHECK(files_equal(td_path(a), td_path(b)), "seed 5 twice: %s differs", files[i]);
        T_CHECK(!files_equal(td_path(a), td_path(c)), "seeds 5 and 6: %s is the same", files[i]);
    }
    /* a smaller set with the same seed is a prefix: the same images */
    T_CHECK(
        files_equal(td_path("s1/train/images/000001.png"), td_path("s4/train/images/000001.png")) &&
            files_equal(td_path("s1/val/images/000000.png"), td_path("s4/val/images/000000.png")),
        "image i depends on the set's size");
    /* refuses to overwrite without force */
    tr_synth_config c;
    tr_synth_config_default(&c);
    c.train_images = c.val_images = 1;
    T_CHECK(tr_synth_write(&c, td_path("s1"), 0, NULL, NULL) < 0 &&
                strstr(eng_last_error(), "exists"),
            "overwrote without --force: %s", eng_last_error());
    c.width = 10;
    T_CHECK(tr_synth_write(&c, td_path("s9"), 0, NULL, NULL) < 0, "10 px wide accepted");
}

static int color_nearest(const double rgb[3])
{
    int best = 0;
    double bd = 1e30;
    for (int k = 0; k < TR_SYNTH_COLORS; k++) {
        double d = 0;
        for (int c = 0; c < 3; c++)
            d += (rgb[c] - tr_synth_color_rgb[k][c]) * (rgb[c] - tr_synth_color_rgb[k][c]);
        if (d < bd)
            bd = d, best = k;
    }
    return best;
}

static void test_synth_sanity(void)
{
    T_REQUIRE(td_synth("sane", 11, 12, 24, 128, 96) == 0, "%s", eng_last_error());
    tr_coco *tr = NULL, *va = NULL;
    T_REQUIRE(tr_coco_open_dir(&tr, td_path("sane/train"), 0) == 0, "%s", eng_last_error());
    T_REQUIRE(tr_coco_open_dir(&va, td_path("sane/val"), 0) == 0, "%s", eng_last_error());
    tr_synth_plan plan;
    tr_synth_plan_make(11, &plan);
    tr_synth_config cfg;
    tr_synth_config_default(&cfg);
    cfg.seed = 11;
    cfg.width = 128;
    cfg.height = 96;

    /* categories: train has the seen ones, val all with their splits */
    T_CHECK(va->n_categories == 95 && tr->n_categories == 95 - 5, "categories %d / %d",
            tr->n_categories, va->n_categories);
    int n_held = 0, n_absent = 0;
    for (int k = 0; k < va->n_categories; k++) {
        const tr_coco_category *c = &va->categories[k];
        n_held += c->split == TR_SPLIT_HELDOUT;
        n_absent += c->split == TR_SPLIT_NO_OBJECTS;
        int ti = tr_coco_category_index(tr, c->id);
        T_CHECK((ti >= 0) == (c->split == TR_SPLIT_SEEN), "'%s' in train: %d, split %s", c->name,
                ti >= 0, tr_split_name(c->split));
        int nh = 0;
        for (int t = 0; t < c->n_tasks; t++) {
            nh += c->task_heldout[t];
            /* a held-out phrasing never appears in train */
            for (int u = 0; ti >= 0 && u < tr->categories[ti].n_tasks; u++)
                T_CHECK(!c->task_heldout[t] || strcmp(c->tasks[t], tr->categories[ti].tasks[u]),
                        "'%s' held out yet in train", c->tasks[t]);
        }
        T_CHECK(nh == TR_SYNTH_HELDOUT_TEMPLATES && c->n_tasks == TR_SYNTH_TEMPLATES,
                "'%s': %d tasks, %d held out", c->name, c->n_tasks, nh);
        if (c->split == TR_SPLIT_NO_OBJECTS) {
            int n = 0;
            for (int a = 0; a < va->n_anns; a++)
                n += va->anns[a].category == k;
            T_CHECK(n == 0, "no_objects category '%s' has %d instances", c->name, n);
        }
    }
    T_CHECK(n_held == TR_SYNTH_HELDOUT_PAIRS && n_absent == TR_SYNTH_ABSENT_PAIRS,
            "%d held out, %d absent", n_held, n_absent);

    /* every annotation: a non-empty mask, area and box its own; each
     * object annotated by exactly its matching categories; a solid
     * object's pixels have its category's colour */
    for (int split = 0; split < 2; split++) {
        const tr_coco *ds = split ? va : tr;
        tr_synth_category *cats;
        int nc;
        T_REQUIRE(tr_synth_categories(&plan, split, &cats, &nc) == 0, "categories");
        int next_ann = 0;
        for (int i = 0; i < ds->n_images; i++) {
            tr_synth_image im;
            T_REQUIRE(tr_synth_render(&cfg, &plan, split, i, &im) == 0, "%s", eng_last_error());
            for (int o = 0; o < im.n_objects; o++) {
                const tr_synth_object *ob = &im.obj[o];
                T_CHECK(!synth_pair_is(plan.absent, TR_SYNTH_ABSENT_PAIRS, ob) &&
                            (split || !synth_pair_is(plan.heldout, TR_SYNTH_HELDOUT_PAIRS, ob)),
                        "split %d image %d draws a held-out pair", split, i);
                for (int k = 0; k < nc; k++) {
                    if (!tr_synth_matches(&cats[k], ob))
                        continue;
                    T_REQUIRE(next_ann < ds->n_anns, "too few annotations");
                    const tr_coco_ann *a = &ds->anns[next_ann++];
                    T_CHECK(a->image == i && ds->categories[a->category].id == cats[k].id &&
                                eng_rle_area(&a->mask) == ob->area && ob->area > 0 &&
                                a->area == (double)ob->area,
                            "split %d image %d object %d category '%s'", split, i, o, cats[k].name);
                    T_CHECK(a->mask.n == ob->mask.n &&
                                !memcmp(a->mask.counts, ob->mask.counts, ob->mask.n * 4),
                            "mask of image %d object %d", i, o);
                }
                if (ob->texture == 0) {
                    double sum[3] = {0, 0, 0};
                    uint64_t n = 0;
                    uint8_t *m = decode(&ob->mask);
                    for (int p = 0; m && p < im.w * im.h; p++)
                        if (m[p]) {
                            for (int c = 0; c < 3; c++)
                                sum[c] += im.rgb[3 * p + c];
                            n++;
                        }
                    free(m);
                    for (int c = 0; c < 3; c++)
                        sum[c] /= (double)(n ? n : 1);
                    T_CHECK(color_nearest(sum) == ob->color, "solid %s object's pixels look %s",
                            tr_synth_color_names[ob->color],
                            tr_synth_color_names[color_nearest(sum)]);
                }
            }
            tr_synth_image_free(&im);
        }
        T_CHECK(next_ann == ds->n_anns, "split %d: %d annotations, %d expected", split, ds->n_anns,
                next_ann);
        free(cats);
    }
    /* the held-out combinations do appear in val (24 images, 3 pairs of 30) */
    int seen_held = 0;
    for (int a = 0; a < va->n_anns; a++)
        seen_held += va->categories[va->anns[a].category].split == TR_SPLIT_HELDOUT;
    T_CHECK(seen_held > 0, "no instance of a held-out combination in val");
    tr_coco_destroy(tr);
    tr_coco_destroy(va);
}

/* ---- low-res targets ---- */

/* The exact coverage of each low-res cell, pixel by pixel (an independent
 * per-pixel overlap sum, not the integral image). */
static void target_reference(const uint8_t *m, int w, int h, uint8_t *out)
{
    tr_frame f;
    tr_frame_make(w, h, &f);
    const double sx = (double)w / f.rw, sy = (double)h / f.rh;
    for (int i = 0; i < TR_LOWRES; i++)
        for (int j = 0; j < TR_LOWRES; j++) {
            out[i * TR_LOWRES + j] = 2; /* undecided */
            const double x0 = 4 * j * sx, x1 = (4 * j + 4) * sx, y0 = 4 * i * sy,
                         y1 = (4 * i + 4) * sy;
            double cov = 0;
            for (int y = (int)y0; y < h && y < y1; y++)
                for (int x = (int)x0; x < w && x < x1; x++) {
                    if (!m[y * w + x])
                        continue;
                    double ox = fmin(x + 1, x1) - fmax(x, x0), oy = fmin(y + 1, y1) - fmax(y, y0);
                    if (ox > 0 && oy > 0)
                        cov += ox * oy;
                }
            const double frac = cov / ((x1 - x0) * (y1 - y0));
            if (4 * j >= f.rw || 4 * i >= f.rh)
                out[i * TR_LOWRES + j] = 0;
            else if (fabs(frac - 0.5) > 1e-9)
                out[i * TR_LOWRES + j] = frac >= 0.5;
        }
}

static void test_target_lowres(void)
{
    uint8_t *t = malloc(TR_LOWRES * TR_LOWRES), *ref = malloc(TR_LOWRES * TR_LOWRES);
    T_REQUIRE(t && ref, "alloc");
    /* 1024 x 1024: a cell is 4 x 4 pixels */
    uint8_t *m = calloc(1024 * 1024, 1);
    for (int y = 8; y < 12; y++)
        for (int x = 8; x < 12; x++)
            m[y * 1024 + x] = 1; /* cell (2, 2) full */
    for (int y = 20; y < 22; y++)
        for (int x = 40; x < 44; x++)
            m[y * 1024 + x] = 1; /* cell (5, 10) half */
    for (int x = 80; x < 84; x++)
        m[40 * 1024 + x] = 1; /* cell (10, 20) a quarter */
    T_REQUIRE(tr_target_lowres(m, 1024, 1024, t) == 0, "%s", eng_last_error());
    int ones = 0;
    for (int i = 0; i < TR_LOWRES * TR_LOWRES; i++)
        ones += t[i];
    T_CHECK(ones == 2 && t[2 * TR_LOWRES + 2] && t[5 * TR_LOWRES + 10] && !t[10 * TR_LOWRES + 20],
            "1024x1024: %d cells set", ones);
    free(m);

    /* 512 x 256 (resized 1024 x 512): a cell is 2 x 2 pixels; rows past 128
     * are padding */
    m = calloc(512 * 256, 1);
    m[4 * 512 + 10] = m[4 * 512 + 11] = 1; /* half of cell (2, 5) */
    for (int x = 0; x < 512; x++)
        m[255 * 512 + x] = 1; /* the last row: half of the cells of row 127 */
    T_REQUIRE(tr_target_lowres(m, 512, 256, t) == 0, "%s", eng_last_error());
    ones = 0;
    for (int i = 0; i < TR_LOWRES * TR_LOWRES; i++)
        ones += t[i];
    T_CHECK(t[2 * TR_LOWRES + 5] && t[127 * TR_LOWRES + 0] && !t[128 * TR_LOWRES + 0] &&
                ones == 1 + 256,
            "512x256: %d cells set", ones);
    free(m);

    /* non-integer scales: random blobs against the per-pixel reference */
    const int sizes[][2] = {{800, 534}, {333, 517}, {100, 61}, {1500, 997}};
    tr_rng rng;
    tr_rng_seed(&rng, 1, 9);
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        const int w = sizes[s][0], h = sizes[s][1];
        m = calloc((size_t)w * h, 1);
        for (int b = 0; b < 12; b++) {
            const double cx = tr_rng_range(&rng, 0, w), cy = tr_rng_range(&rng, 0, h);
            const double r = tr_rng_range(&rng, 1, w / 6.0);
            for (int y = 0; y < h; y++)
                for (int x = 0; x < w; x++)
                    if ((x - cx) * (x - cx) + (y - cy) * (y - cy) <= r * r)
                        m[(size_t)y * w + x] = 1;
        }
        T_REQUIRE(tr_target_lowres(m, w, h, t) == 0, "%s", eng_last_error());
        target_reference(m, w, h, ref);
        int diff = 0, set = 0;
        for (int i = 0; i < TR_LOWRES * TR_LOWRES; i++) {
            diff += ref[i] != 2 && ref[i] != t[i];
            set += t[i];
        }
        T_CHECK(diff == 0 && set > 0, "%dx%d: %d cells differ from the per-pixel reference", w, h,
                diff);
        /* the RLE route gives the same */
        eng_rle r;
        uint8_t *t2 = malloc(TR_LOWRES * TR_LOWRES);
        T_REQUIRE(t2 && eng_rle_encode(m, h, w, &r) == 0, "encode");
        T_CHECK(tr_target_lowres_rle(&r, w, h, t2) == 0 && !memcmp(t, t2, TR_LOWRES * TR_LOWRES),
                "RLE target");
        eng_rle_free(&r);
        free(t2);
        free(m);
    }
    free(t);
    free(ref);
}

/* ---- sampling ---- */

/* a hand-made dataset: image 40x30, category 1 "dog" with two overlapping
 * instances (a big square and a small one inside it) and a crowd region,
 * category 2 "cat" elsewhere, category 3 "cow" absent */
static tr_coco *sampling_dataset(void)
{
    const char *json =
        "{\"images\": [{\"id\": 1, \"width\": 40, \"height\": 30, \"file_name\": \"x.png\"}],"
        " \"categories\": [{\"id\": 1, \"name\": \"dog\"}, {\"id\": 2, \"name\": \"cat\"},"
        "  {\"id\": 3, \"name\": \"cow\", \"tasks\": [\"cows\", \"held\"], \"heldout_tasks\": "
        "[\"held\"]}],"
        " \"annotations\": ["
        "  {\"id\": 10, \"image_id\": 1, \"category_id\": 1, \"segmentation\": "
        "[[0,0,16,0,16,16,0,16]]},"
        "  {\"id\": 11, \"image_id\": 1, \"category_id\": 1, \"segmentation\": "
        "[[4,4,8,4,8,8,4,8]]},"
        "  {\"id\": 12, \"image_id\": 1, \"category_id\": 1, \"iscrowd\": 1, \"segmentation\": "
        "[[20,0,40,0,40,10,20,10]]},"
        "  {\"id\": 13, \"image_id\": 1, \"category_id\": 2, \"segmentation\": "
        "[[20,15,36,15,36,28,20,28]]}]}";
    tr_coco *c = NULL;
    if (tr_coco_load_buffer(&c, json, strlen(json), "sampling.json", NULL, TR_COCO_NO_IMAGES))
        return NULL;
    return c;
}

static void test_point_hit(void)
{
    tr_coco *c = sampling_dataset();
    T_REQUIRE(c, "%s", eng_last_error());
    int ann;
    T_CHECK(tr_point_hit(c, 0, 0, 2, 2, &ann) == TR_HIT_INSTANCE && ann == 0, "big dog");
    T_CHECK(tr_point_hit(c, 0, 0, 5, 6, &ann) == TR_HIT_INSTANCE && ann == 1,
            "overlap: the smaller instance wins (got %d)", ann);
    T_CHECK(tr_point_hit(c, 0, 0, 30, 5, &ann) == TR_HIT_CROWD && ann == -1, "crowd");
    T_CHECK(tr_point_hit(c, 0, 0, 25, 20, &ann) == TR_HIT_EMPTY, "a cat is not a dog");
    T_CHECK(tr_point_hit(c, 0, 1, 25, 20, &ann) == TR_HIT_INSTANCE && ann == 3, "cat");
    T_CHECK(tr_point_hit(c, 0, 1, 30, 5, &ann) == TR_HIT_EMPTY, "a dog crowd is no cat");
    /* SAM's coordinates: (15.4, 0) names pixel 15 (inside), (15.6, 0) pixel 16 */
    T_CHECK(tr_point_hit(c, 0, 0, 15.4f, 0, &ann) == TR_HIT_INSTANCE &&
                tr_point_hit(c, 0, 0, 15.6f, 0, &ann) == TR_HIT_EMPTY,
            "pixel rounding");
    tr_coco_destroy(c);
}

static void test_sample_rules(void)
{
    tr_coco *c = sampling_dataset();
    T_REQUIRE(c, "%s", eng_last_error());
    tr_sample_config cfg;
    tr_sample_config_default(&cfg);
    tr_rng rng, rng2;
    tr_rng_seed(&rng, 42, 0);
    tr_rng_seed(&rng2, 42, 0);
    int n_box = 0, n_pos = 0, n_neg_present = 0, n_absent = 0, src[4] = {0};
    for (int it = 0; it < 3000; it++) {
        tr_example ex, ex2;
        T_REQUIRE(tr_sample_example(c, 0, &cfg, &rng, &ex) == 0, "%s", eng_last_error());
        T_REQUIRE(tr_sample_example(c, 0, &cfg, &rng2, &ex2) == 0, "%s", eng_last_error());
        T_CHECK(!memcmp(&ex, &ex2, sizeof ex), "the same seed gave another example at %d", it);
        const tr_coco_category *k = &c->categories[ex.category];
        T_CHECK(ex.task >= 0 && ex.task < k->n_tasks && !k->task_heldout[ex.task],
                "a held-out task drawn");
        src[ex.source]++;
        if (ex.category == 2) { /* cow: absent */
            n_absent++;
            T_CHECK(ex.target == -1 && !ex.is_box, "absent task with a target");
            continue;
        }
        if (ex.is_box) {
            n_box++;
            T_REQUIRE(ex.target >= 0, "box without target");
            const tr_coco_ann *a = &c->anns[ex.target];
            T_CHECK(a->category == ex.category && !a->iscrowd, "box on another category");
            double bb[4];
            eng_rle_bbox(&a->mask, bb);
            const double want[4] = {bb[0], bb[1], bb[0] + bb[2] - 1, bb[1] + bb[3] - 1};
            for (int q = 0; q < 4; q++)
                T_CHECK(fabs(ex.box[q] - want[q]) <= 20.0 + 1e-6, "box noise over 20 px");
            continue;
        }
        T_CHECK(ex.n_points == 1 && ex.labels[0] == 1, "one positive click");
        const int px = (int)floor(ex.points[0][0] + 0.5), py = (int)floor(ex.points[0][1] + 0.5);
        int ann;
        tr_hit h = tr_point_hit(c, 0, ex.category, ex.points[0][0], ex.points[0][1], &ann);
        T_CHECK(h != TR_HIT_CROWD, "a point on a crowd region of the task was kept");
        if (ex.target >= 0) {
            n_pos++;
            T_CHECK(c->anns[ex.target].category == ex.category &&
                        tr_rle_at(&c->anns[ex.target].mask, px, py),
                    "target instance does not hold the point");
        } else {
            n_neg_present++;
            for (int a = 0; a < c->n_anns; a++)
                T_CHECK(c->anns[a].category != ex.category || !tr_rle_at(&c->anns[a].mask, px, py),
                        "empty target for a point on an instance of the task");
        }
    }
    /* every kind occurs: boxes, positives, negatives on present tasks,
     * absent tasks, and each point source */
    T_CHECK(n_box > 100 && n_pos > 100 && n_neg_present > 100 && n_absent > 300,
            "boxes %d, positive %d, negative %d, absent %d", n_box, n_pos, n_neg_present, n_absent);
    T_CHECK(src[TR_SRC_UNIFORM] > 100 && src[TR_SRC_GRID] > 100 && src[TR_SRC_OBJECT] > 100,
            "sources %d %d %d", src[0], src[1], src[2]);
    /* a prompt for a given task: the absent cow never gets a box or a
     * target; with p_box 1 a present dog always gets a box */
    tr_sample_config all_box = cfg;
    all_box.p_box = 1;
    for (int it = 0; it < 200; it++) {
        tr_example e1, e2;
        T_REQUIRE(tr_sample_prompt(c, 0, 2, 0, &all_box, &rng, &e1) == 0 &&
                      tr_sample_prompt(c, 0, 0, 1, &all_box, &rng, &e2) == 0,
                  "%s", eng_last_error());
        T_CHECK(e1.category == 2 && e1.task == 0 && !e1.is_box && e1.target == -1 &&
                    e1.n_points == 1,
                "absent task prompt");
        T_CHECK(e2.category == 0 && e2.task == 1 && e2.is_box && e2.target >= 0 &&
                    c->anns[e2.target].category == 0 && !c->anns[e2.target].iscrowd,
                "box prompt on a dog");
    }
    /* the target in the low-res frame: the small dog square */
    tr_example ex = {.image = 0, .target = 1};
    uint8_t *t = malloc(TR_LOWRES * TR_LOWRES), *r = malloc(TR_LOWRES * TR_LOWRES);
    uint8_t full[40 * 30];
    tr_rle_paint(&c->anns[1].mask, memset(full, 0, sizeof full));
    T_REQUIRE(t && r && tr_example_target(c, &ex, t) == 0 && tr_target_lowres(full, 40, 30, r) == 0,
              "target");
    T_CHECK(!memcmp(t, r, TR_LOWRES * TR_LOWRES), "example target is the instance's");
    ex.target = -1;
    int any = 0;
    T_REQUIRE(tr_example_target(c, &ex, t) == 0, "target");
    for (int i = 0; i < TR_LOWRES * TR_LOWRES; i++)
        any |= t[i];
    T_CHECK(!any, "the empty target is empty");
    free(t);
    free(r);
    tr_coco_destroy(c);
}

static void test_sample_refine(void)
{
    tr_coco *c = sampling_dataset(); /* 40x30: resized 1024x768, a cell is 0.156 px */
    T_REQUIRE(c, "%s", eng_last_error());
    float *logits = malloc(TR_LOWRES * TR_LOWRES * sizeof *logits);
    uint8_t *target = calloc(TR_LOWRES * TR_LOWRES, 1);
    T_REQUIRE(logits && target, "alloc");
    for (int i = 0; i < TR_LOWRES * TR_LOWRES; i++)
        logits[i] = -3;
    tr_rng rng;
    tr_rng_seed(&rng, 1, 1);
    tr_example ex = {.image = 0, .n_points = 1, .target = -1};
    T_CHECK(tr_sample_refine(c, &ex, target, logits, &rng) == 0 && ex.n_points == 1,
            "no error, yet a point");
    /* a false positive at cell (64, 128): 1024-frame (512..516, 256..260),
     * original x = 20.0..20.16, y = 10.0..10.16: pixel (20, 10), negative */
    logits[64 * TR_LOWRES + 128] = 2;
    /* a false positive in the padding (row 200 > 768/4) never counts */
    logits[200 * TR_LOWRES + 5] = 2;
    T_CHECK(tr_sample_refine(c, &ex, target, logits, &rng) == 1 && ex.n_points == 2 &&
                ex.points[1][0] == 20 && ex.points[1][1] == 10 && ex.labels[1] == 0,
            "negative refinement point (%g, %g) label %d", ex.points[1][0], ex.points[1][1],
            ex.labels[1]);
    /* a miss: positive */
    logits[64 * TR_LOWRES + 128] = -2;
    target[6 * TR_LOWRES + 7] = 1;
    T_CHECK(tr_sample_refine(c, &ex, target, logits, &rng) == 1 && ex.n_points == 3 &&
                ex.labels[2] == 1 && ex.points[2][0] == 1 && ex.points[2][1] == 1,
            "positive refinement point (%g, %g) label %d", ex.points[2][0], ex.points[2][1],
            ex.labels[2]);
    free(logits);
    free(target);
    tr_coco_destroy(c);
}

/* `tasam-train synth` and `check-data` as a user runs them. */
static void test_commands(void)
{
    char cmd[4096], out[8192];
    snprintf(cmd, sizeof cmd,
             "%s synth --out %s --seed 3 --train-images 4 --val-images 2 --size 96x64", tasam_train,
             td_path("cmd"));
    T_CHECK(t_run_cmd(cmd, out, sizeof out) == 0 && strstr(out, "synth: val 2/2 images"),
            "synth: %s", out);
    tr_coco *c = NULL;
    T_CHECK(tr_coco_open_dir(&c, td_path("cmd/train"), 0) == 0 && c->n_images == 4 &&
                c->images[0].width == 96 && c->images[0].height == 64,
            "synth output: %s", eng_last_error());
    tr_coco_destroy(c);
    T_CHECK(t_run_cmd(cmd, out, sizeof out) == 1 && strstr(out, "exists"), "overwrite: %s", out);
    snprintf(cmd, sizeof cmd, "%s synth --out %s --size 10x10", tasam_train, td_path("cmd2"));
    T_CHECK(t_run_cmd(cmd, out, sizeof out) == 2 && strstr(out, "--size"), "bad size: %s", out);
    snprintf(cmd, sizeof cmd, "%s synth --seed 1", tasam_train);
    T_CHECK(t_run_cmd(cmd, out, sizeof out) == 2 && strstr(out, "--out"), "no --out: %s", out);
    snprintf(cmd, sizeof cmd, "%s synth --help", tasam_train);
    T_CHECK(t_run_cmd(cmd, out, sizeof out) == 0 && strstr(out, "usage: tasam-train synth"), "%s",
            out);

    snprintf(cmd, sizeof cmd, "%s check-data --data %s --decode", tasam_train, td_path("cmd/val"));
    T_CHECK(t_run_cmd(cmd, out, sizeof out) == 0 && strstr(out, "2 images, 95 categories") &&
                strstr(out, "3 heldout_combination, 2 no_objects") &&
                strstr(out, "every image decodes"),
            "check-data: %s", out);
    /* a truncated image: decoding names it */
    T_REQUIRE(td_write(td_path("cmd/val/images/000001.png"), "\x89PNG\r\n") == 0, "write");
    T_CHECK(t_run_cmd(cmd, out, sizeof out) == 1 && strstr(out, "images[1] (id 2)"),
            "check-data on a broken image: %s", out);
    snprintf(cmd, sizeof cmd, "%s check-data", tasam_train);
    T_CHECK(t_run_cmd(cmd, out, sizeof out) == 2, "check-data without data: %s", out);
    snprintf(cmd, sizeof cmd, "%s no-such-command", tasam_train);
    T_CHECK(t_run_cmd(cmd, out, sizeof out) == 2 && strstr(out, "unknown command"), "%s", out);
}

int main(int argc, char **argv)
{
    (void)argc;
    td_sibling(argv[0], "tasam-train", tasam_train, sizeof tasam_train);
    if (td_init("traindata")) {
        perror("mkdtemp");
        return 1;
    }
    T_RUN(test_polygon_hand);
    T_RUN(test_polygon_convex_bounds);
    T_RUN(test_rle_ops);
    T_RUN(test_coco_load_good);
    T_RUN(test_coco_load_hostile);
    T_RUN(test_plurals);
    T_RUN(test_synth_deterministic);
    T_RUN(test_synth_sanity);
    T_RUN(test_target_lowres);
    T_RUN(test_point_hit);
    T_RUN(test_sample_rules);
    T_RUN(test_sample_refine);
    T_RUN(test_commands);
    td_cleanup();
    return t_summary("test_train_data");
}
