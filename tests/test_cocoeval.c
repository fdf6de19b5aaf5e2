/*
 * tests/test_cocoeval.c: the COCO protocol (train/cocoeval.c) against the
 * fixture's pycocotools numbers (../shared/fixtures/coco_eval, to 1e-6),
 * hand-computed cases (ranking, partial IoU, crowd regions, maxDets), the
 * results loader on hostile files, `tasam-train coco-eval` end to end, and,
 * where pycocotools installs from PyPI into build/pycocotools, a
 * cross-check of polygon rasterisation and COCOeval on random data.
 */
#include "tests/harness.h"
#include "tests/tdata.h"

#include <jansson.h>

#include "engine/error.h"
#include "engine/rle.h"
#include "train/coco.h"
#include "train/cocoeval.h"
#include "train/mask.h"
#include "train/rng.h"

static char tasam_train[1024];

/* ---- the fixture ---- */

static void check_stats(const tr_cocoeval *e, const json_t *stats, const json_t *per,
                        const char *what)
{
    double worst = 0;
    for (int i = 0; i < 12; i++) {
        double ref = json_number_value(json_array_get(stats, (size_t)i));
        double d = fabs(e->stats[i] - ref);
        worst = d > worst ? d : worst;
        T_CHECK(d <= 1e-6, "%s stats[%d] (%s) = %.12f, pycocotools %.12f", what, i,
                tr_cocoeval_stat_name(i), e->stats[i], ref);
    }
    T_CHECK((int)json_object_size(per) == e->K, "%s: %d categories, the reference %zu", what, e->K,
            json_object_size(per));
    for (int k = 0; k < e->K; k++) {
        char key[32];
        snprintf(key, sizeof key, "%lld", (long long)e->cat_ids[k]);
        const json_t *v = json_object_get(per, key);
        T_CHECK(v && fabs(e->cat_ap[k] - json_number_value(v)) <= 1e-6,
                "%s category %s AP %.12f, pycocotools %.12f", what, key, e->cat_ap[k],
                json_number_value(v));
        double d = v ? fabs(e->cat_ap[k] - json_number_value(v)) : 1;
        worst = d > worst ? d : worst;
    }
    printf("  %s: worst |difference| from pycocotools %.3g\n", what, worst);
}

static void test_fixture(void)
{
    T_NEED_FIXTURES();
    char gtp[4096], predp[4096];
    snprintf(gtp, sizeof gtp, "%s", t_fixture("coco_eval/gt.json"));
    snprintf(predp, sizeof predp, "%s", t_fixture("coco_eval/pred.json"));
    json_t *ref = json_load_file(t_fixture("coco_eval/stats.json"), 0, NULL);
    T_REQUIRE(ref, "coco_eval/stats.json");
    tr_coco *gt = NULL;
    tr_coco_dets *dt = NULL;
    T_REQUIRE(tr_coco_load(&gt, gtp, NULL, TR_COCO_NO_IMAGES) == 0, "%s", eng_last_error());
    T_REQUIRE(tr_coco_dets_load(&dt, gt, predp) == 0, "%s", eng_last_error());
    T_CHECK(gt->n_images == json_integer_value(json_object_get(ref, "n_images")) &&
                gt->n_anns == json_integer_value(json_object_get(ref, "n_annotations")) &&
                dt->n == json_integer_value(json_object_get(ref, "n_predictions")),
            "counts %d %d %d", gt->n_images, gt->n_anns, dt->n);
    static const struct {
        tr_iou_type t;
        const char *stats, *per;
    } types[] = {{TR_IOU_SEGM, "segm", "segm_per_category_ap"},
                 {TR_IOU_BBOX, "bbox", "bbox_per_category_ap"}};
    for (int i = 0; i < 2; i++) {
        tr_cocoeval_params p;
        tr_cocoeval *e = NULL;
        tr_cocoeval_params_default(&p, types[i].t);
        T_REQUIRE(tr_cocoeval_run(&e, gt, dt, &p) == 0, "%s", eng_last_error());
        check_stats(e, json_object_get(ref, types[i].stats), json_object_get(ref, types[i].per),
                    types[i].stats);
        tr_cocoeval_destroy(e);
    }
    tr_coco_dets_destroy(dt);
    tr_coco_destroy(gt);
    json_decref(ref);
}

/* `tasam-train coco-eval` as a user runs it. */
static void test_cli(void)
{
    T_NEED_FIXTURES();
    char cmd[20000], out[16384];
    json_t *ref = json_load_file(t_fixture("coco_eval/stats.json"), 0, NULL);
    T_REQUIRE(ref, "stats.json");
    for (int i = 0; i < 2; i++) {
        const char *type = i ? "bbox" : "segm";
        char gtp[4096];
        snprintf(gtp, sizeof gtp, "%s", t_fixture("coco_eval/gt.json"));
        snprintf(cmd, sizeof cmd, "%s coco-eval --gt %s --pred %s --iou-type %s --json %s",
                 tasam_train, gtp, t_fixture("coco_eval/pred.json"), type, td_path("eval.json"));
        int st = t_run_cmd(cmd, out, sizeof out);
        T_CHECK(st == 0, "exit %d: %s", st, out);
        T_CHECK(
            strstr(out, "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]"),
            "summary lines missing: %s", out);
        json_t *j = json_load_file(td_path("eval.json"), 0, NULL);
        T_REQUIRE(j, "no JSON written");
        const json_t *stats = json_object_get(j, "stats"), *want = json_object_get(ref, type);
        for (int k = 0; k < 12; k++)
            T_CHECK(fabs(json_number_value(json_array_get(stats, (size_t)k)) -
                         json_number_value(json_array_get(want, (size_t)k))) <= 1e-6,
                    "%s stats[%d] in the JSON", type, k);
        T_CHECK(json_object_size(json_object_get(j, "per_category_ap")) == 5, "per_category_ap");
        json_decref(j);
    }
    json_decref(ref);
    /* usage errors: 2; a bad results file: 1 with the entry named */
    snprintf(cmd, sizeof cmd, "%s coco-eval --gt x.json", tasam_train);
    T_CHECK(t_run_cmd(cmd, out, sizeof out) == 2 && strstr(out, "--pred"), "missing --pred: %s",
            out);
    snprintf(cmd, sizeof cmd, "%s coco-eval --gt a --pred b --iou-type keypoints", tasam_train);
    T_CHECK(t_run_cmd(cmd, out, sizeof out) == 2 && strstr(out, "segm or bbox"), "iou type: %s",
            out);
    T_REQUIRE(td_write(td_path("bad_pred.json"),
                       "[{\"image_id\": 1, \"category_id\": 1, \"score\": 0.5, \"segmentation\": "
                       "{\"size\": [449, 864], \"counts\": \"??\"}}]") == 0,
              "write");
    snprintf(cmd, sizeof cmd, "%s coco-eval --gt %s --pred %s", tasam_train,
             t_fixture("coco_eval/gt.json"), td_path("bad_pred.json"));
    T_CHECK(t_run_cmd(cmd, out, sizeof out) == 1 && strstr(out, "bad_pred.json: results[0]"),
            "bad results: %s", out);
    snprintf(cmd, sizeof cmd, "%s coco-eval --help", tasam_train);
    T_CHECK(t_run_cmd(cmd, out, sizeof out) == 0 && strstr(out, "usage: tasam-train coco-eval"),
            "--help: %s", out);
}

/* ---- hand-computed cases ---- */

/* A w x h mask with rectangle [x0, x1) x [y0, y1) set, and `extra` more
 * pixels of row y1 from x0. */
static void rect(eng_rle *r, int w, int h, int x0, int y0, int x1, int y1, int extra)
{
    uint8_t *m = calloc((size_t)w * h, 1);
    for (int y = y0; y < y1; y++)
        for (int x = x0; x < x1; x++)
            m[y * w + x] = 1;
    for (int x = x0; x < x0 + extra; x++)
        m[y1 * w + x] = 1;
    eng_rle_encode(m, h, w, r);
    free(m);
}

/* Ground truth on one 20x20 image: A = [0,10)^2 of category 1, and
 * optionally a crowd region [10,20)^2 of category 1. */
static tr_coco *hand_gt(int crowd)
{
    eng_rle a, c;
    char *sa = NULL, *sc = NULL, json[4096];
    rect(&a, 20, 20, 0, 0, 10, 10, 0);
    rect(&c, 20, 20, 10, 10, 20, 20, 0);
    eng_rle_to_string(&a, &sa);
    eng_rle_to_string(&c, &sc);
    snprintf(
        json, sizeof json,
        "{\"images\": [{\"id\": 1, \"width\": 20, \"height\": 20, \"file_name\": \"a\"}],"
        " \"categories\": [{\"id\": 1, \"name\": \"thing\"}],"
        " \"annotations\": [{\"id\": 1, \"image_id\": 1, \"category_id\": 1, \"segmentation\": "
        "{\"size\": [20, 20], \"counts\": \"%s\"}}%s%s%s]}",
        sa,
        crowd ? ", {\"id\": 2, \"image_id\": 1, \"category_id\": 1, \"iscrowd\": 1, "
                "\"segmentation\": {\"size\": [20, 20], \"counts\": \""
              : "",
        crowd ? sc : "", crowd ? "\"}}" : "");
    free(sa);
    free(sc);
    eng_rle_free(&a);
    eng_rle_free(&c);
    tr_coco *gt = NULL;
    if (tr_coco_load_buffer(&gt, json, strlen(json), "hand.json", NULL, TR_COCO_NO_IMAGES))
        return NULL;
    return gt;
}

/* Equal to hand arithmetic up to COCOeval's eps in tp / (tp + fp + eps). */
static int near(double a, double b) { return fabs(a - b) < 1e-12; }

/* Evaluate dets given as (score, rectangle, extra pixels). */
static tr_cocoeval *hand_eval(const tr_coco *gt, tr_iou_type t, int n, const double *score,
                              const int (*r)[5])
{
    tr_coco_dets *d = NULL;
    tr_cocoeval *e = NULL;
    if (tr_coco_dets_create(&d))
        return NULL;
    for (int i = 0; i < n; i++) {
        eng_rle m;
        rect(&m, 20, 20, r[i][0], r[i][1], r[i][2], r[i][3], r[i][4]);
        tr_coco_dets_add(d, gt, 0, 1, score[i], &m, NULL);
        eng_rle_free(&m);
    }
    tr_cocoeval_params p;
    tr_cocoeval_params_default(&p, t);
    tr_cocoeval_run(&e, gt, d, &p);
    tr_coco_dets_destroy(d);
    return e;
}

static void test_hand_cases(void)
{
    tr_coco *gt = hand_gt(0), *gtc = hand_gt(1);
    T_REQUIRE(gt && gtc, "%s", eng_last_error());
    /* detections: rectangle x0, y0, x1, y1 and extra pixels of row y1 */
    static const int hit_miss[2][5] = {{0, 0, 10, 10, 0}, {10, 10, 20, 20, 0}};
    static const int partial[1][5] = {{0, 0, 10, 7, 8}};
    static const int crowd_hit[2][5] = {{12, 12, 16, 16, 0}, {0, 0, 10, 10, 0}};
    tr_cocoeval *e;

    /* a hit ranked above a miss: AP 1; A (area 100) is small, so medium
     * and large have no ground truth: -1 */
    const double s1[2] = {0.9, 0.8};
    e = hand_eval(gt, TR_IOU_SEGM, 2, s1, hit_miss);
    T_REQUIRE(e, "%s", eng_last_error());
    T_CHECK(near(e->stats[0], 1) && near(e->stats[1], 1) && near(e->stats[3], 1) &&
                e->stats[4] == -1 && e->stats[5] == -1 && near(e->stats[6], 1) &&
                near(e->stats[8], 1),
            "hit then miss: AP %g AP50 %g APs %g APm %g AR1 %g", e->stats[0], e->stats[1],
            e->stats[3], e->stats[4], e->stats[6]);
    tr_cocoeval_destroy(e);

    /* the miss ranked first: precision 1/2 at recall 1 -> AP 0.5; AR@1 sees
     * only the miss -> 0, AR@10 -> 1 */
    const double s2[2] = {0.8, 0.9};
    e = hand_eval(gt, TR_IOU_SEGM, 2, s2, hit_miss);
    T_REQUIRE(e, "%s", eng_last_error());
    T_CHECK(near(e->stats[0], 0.5) && e->stats[6] == 0 && near(e->stats[7], 1),
            "miss then hit: AP %g AR1 %g AR10 %g", e->stats[0], e->stats[6], e->stats[7]);
    tr_cocoeval_destroy(e);

    /* IoU 78/100: a true positive at thresholds .50 .. .75 (6 of 10) */
    const double s3[1] = {0.7};
    e = hand_eval(gt, TR_IOU_SEGM, 1, s3, partial);
    T_REQUIRE(e, "%s", eng_last_error());
    T_CHECK(near(e->stats[0], 0.6) && near(e->stats[1], 1) && near(e->stats[2], 1) &&
                near(e->stats[8], 0.6),
            "IoU 0.78: AP %.15g AP50 %g AP75 %g AR100 %g", e->stats[0], e->stats[1], e->stats[2],
            e->stats[8]);
    /* as boxes: the detection's box is [0,0,10,8], IoU 0.8: a hit at
     * .50 .. .80 (np.linspace gives .80 exactly), 7 of 10 */
    tr_cocoeval_destroy(e);
    e = hand_eval(gt, TR_IOU_BBOX, 1, s3, partial);
    T_REQUIRE(e, "%s", eng_last_error());
    T_CHECK(near(e->stats[0], 0.7), "box IoU 0.8: AP %.15g", e->stats[0]);
    tr_cocoeval_destroy(e);

    /* a detection inside a crowd region (IoU = intersection / its area = 1)
     * is matched to the crowd and ignored: still AP 1 with it ranked first;
     * without the crowd it is a false positive: AP 0.5 */
    const double s4[2] = {0.95, 0.9};
    e = hand_eval(gtc, TR_IOU_SEGM, 2, s4, crowd_hit);
    T_REQUIRE(e, "%s", eng_last_error());
    T_CHECK(near(e->stats[0], 1), "with the crowd region: AP %g", e->stats[0]);
    tr_cocoeval_destroy(e);
    e = hand_eval(gt, TR_IOU_SEGM, 2, s4, crowd_hit);
    T_REQUIRE(e, "%s", eng_last_error());
    T_CHECK(near(e->stats[0], 0.5), "without it: AP %g", e->stats[0]);
    tr_cocoeval_destroy(e);

    /* no detection at all: AP 0 (ground truth exists), not -1 */
    e = hand_eval(gt, TR_IOU_SEGM, 0, NULL, NULL);
    T_REQUIRE(e, "%s", eng_last_error());
    T_CHECK(e->stats[0] == 0 && e->cat_ap[0] == 0, "no detections: AP %g", e->stats[0]);
    tr_cocoeval_destroy(e);
    tr_coco_destroy(gt);
    tr_coco_destroy(gtc);
}

static void test_results_hostile(void)
{
    tr_coco *gt = hand_gt(0);
    T_REQUIRE(gt, "%s", eng_last_error());
    static const struct {
        const char *json, *expect;
    } cases[] = {
        {"{}", "must be a list"},
        {"[1]", "results[0]: not an object"},
        {"[{\"image_id\": 9, \"category_id\": 1, \"score\": 1, \"bbox\": [0,0,1,1]}]",
         "results[0]: image_id 9 is not in the ground truth"},
        {"[{\"image_id\": 1, \"category_id\": 1, \"bbox\": [0,0,1,1]}]", "results[0]: missing"},
        {"[{\"image_id\": 1, \"score\": 1, \"bbox\": [0,0,1,1]}]", "category_id"},
        {"[{\"image_id\": 1, \"category_id\": 1, \"score\": 1}]",
         "neither \"segmentation\" nor \"bbox\""},
        {"[{\"image_id\": 1, \"category_id\": 1, \"score\": 1, \"bbox\": [0,0,1]}]", "bbox"},
        {"[{\"image_id\": 1, \"category_id\": 1, \"score\": 1, \"bbox\": [0,0,1,1]},"
         " {\"image_id\": 1, \"category_id\": 1, \"score\": 1, \"segmentation\": {\"size\": [20, "
         "20], \"counts\": [400]}}]",
         "results[1]: no \"bbox\""},
        {"[{\"image_id\": 1, \"category_id\": 1, \"score\": 1, \"segmentation\": {\"size\": [20, "
         "20], \"counts\": [400]}}, {\"image_id\": 1, \"category_id\": 1, \"score\": 1, \"bbox\": "
         "[0,0,1,1]}]",
         "results[1]: no \"segmentation\""},
        {"[{\"image_id\": 1, \"category_id\": 1, \"score\": 1, \"segmentation\": {\"size\": [2, "
         "2], "
         "\"counts\": [4]}}]",
         "results[0] (image_id 1): segmentation: RLE size [2, 2] is not the image's [20, 20]"},
        {"[{\"image_id\": 1, \"category_id\": 1, \"score\": 1, \"segmentation\": {\"size\": [20, "
         "20], \"counts\": \"zzz\"}}]",
         "bad RLE"},
        {"[{\"image_id\": 1, \"category_id\": 1, \"score\": 1e999, \"bbox\": [0,0,1,1]}]",
         "line 1"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        tr_coco_dets *d = NULL;
        int rc = tr_coco_dets_load_buffer(&d, gt, cases[i].json, strlen(cases[i].json), "r.json");
        T_CHECK(rc < 0 && !d && strstr(eng_last_error(), "r.json") &&
                    strstr(eng_last_error(), cases[i].expect),
                "case %zu: '%s' not in: %s", i, cases[i].expect, eng_last_error());
        tr_coco_dets_destroy(d);
    }
    /* an empty list is no results (AP 0), and unknown categories are kept
     * but not evaluated */
    tr_coco_dets *d = NULL;
    const char *unk =
        "[{\"image_id\": 1, \"category_id\": 77, \"score\": 1, \"bbox\": [0,0,10,10]}]";
    T_CHECK(tr_coco_dets_load_buffer(&d, gt, "[]", 2, "r.json") == 0 && d->n == 0, "empty list");
    tr_coco_dets_destroy(d);
    T_REQUIRE(tr_coco_dets_load_buffer(&d, gt, unk, strlen(unk), "r.json") == 0, "%s",
              eng_last_error());
    T_CHECK(d->n == 1 && d->n_unknown_category == 1 && d->d[0].area == 100, "unknown category");
    tr_coco_dets_destroy(d);
    tr_coco_destroy(gt);
}

/* ---- the pycocotools cross-check ---- */

/* Random masks and polygons against pycocotools itself. */
static void test_pycocotools(void)
{
    char out[65536], cmd[8192];
    if (system("tests/pycoco/setup.sh build/pycocotools >/dev/null 2>&1") != 0)
        T_SKIP("pycocotools could not be installed from PyPI into build/pycocotools (see "
               "build/pycocotools.log; delete build/pycocotools.failed to retry)");
    tr_rng rng;
    tr_rng_seed(&rng, 2024, 5);

    /* polygons: random, concave, self-intersecting, partly outside */
    json_t *polys = json_array();
    enum { NPOLY = 300 };
    char *ours[NPOLY];
    for (int i = 0; i < NPOLY; i++) {
        const int w = 5 + (int)tr_rng_below(&rng, 60), h = 5 + (int)tr_rng_below(&rng, 60);
        const int k = 3 + (int)tr_rng_below(&rng, 12);
        double xy[64];
        json_t *p = json_array();
        for (int j = 0; j < k; j++) {
            /* mostly inside, some up to 3 px outside; some on the grid */
            double x = tr_rng_range(&rng, -3, w + 3), y = tr_rng_range(&rng, -3, h + 3);
            if (tr_rng_below(&rng, 4) == 0)
                x = floor(x), y = floor(y);
            else if (tr_rng_below(&rng, 4) == 0)
                x = floor(x) + 0.5, y = floor(y) + 0.5;
            xy[2 * j] = x;
            xy[2 * j + 1] = y;
            json_array_append_new(p, json_real(x));
            json_array_append_new(p, json_real(y));
        }
        json_array_append_new(polys, json_pack("{s:i, s:i, s:o}", "h", h, "w", w, "poly", p));
        eng_rle r;
        ours[i] = NULL;
        if (tr_rle_from_polygon(xy, (size_t)k, h, w, &r) == 0) {
            eng_rle_to_string(&r, &ours[i]);
            eng_rle_free(&r);
        }
    }
    T_REQUIRE(json_dump_file(polys, td_path("polys.json"), 0) == 0, "write polys");
    json_decref(polys);

    /* ground truth: a synthetic set, some annotations as polygons (their
     * outlines), some as crowd regions in uncompressed RLE */
    T_REQUIRE(td_synth("x", 3, 0, 16, 96, 80) == 0, "%s", eng_last_error());
    json_t *gt = json_load_file(td_path("x/val/instances.json"), 0, NULL);
    T_REQUIRE(gt, "synthetic instances");
    json_t *anns = json_object_get(gt, "annotations");
    size_t na = json_array_size(anns);
    eng_rle *masks = calloc(na, sizeof *masks);
    int *img = calloc(na, sizeof *img), *cat = calloc(na, sizeof *cat);
    T_REQUIRE(masks && img && cat, "alloc");
    for (size_t i = 0; i < na; i++) {
        json_t *a = json_array_get(anns, i), *s = json_object_get(a, "segmentation");
        const char *c = json_string_value(json_object_get(s, "counts"));
        T_REQUIRE(eng_rle_from_string(c, strlen(c), 80, 96, &masks[i]) == 0, "rle");
        img[i] = (int)json_integer_value(json_object_get(a, "image_id"));
        cat[i] = (int)json_integer_value(json_object_get(a, "category_id"));
        const uint64_t pick = tr_rng_below(&rng, 6);
        if (pick == 0) {
            uint8_t *m = calloc(96 * 80, 1);
            eng_polygons pg;
            eng_rle_decode(&masks[i], m);
            if (eng_mask_polygons(m, 80, 96, &pg) == 0 && pg.n > 0) {
                json_t *ps = json_array();
                for (size_t q = 0; q < pg.n; q++) {
                    json_t *pl = json_array();
                    for (size_t v = 0; v < 2 * pg.polys[q].n; v++)
                        json_array_append_new(pl, json_integer(pg.polys[q].xy[v]));
                    if (pg.polys[q].n >= 3)
                        json_array_append_new(ps, pl);
                    else
                        json_decref(pl);
                }
                if (json_array_size(ps))
                    json_object_set_new(a, "segmentation", ps);
                else
                    json_decref(ps);
                eng_polygons_free(&pg);
            }
            free(m);
        } else if (pick == 1) {
            json_t *cn = json_array();
            for (size_t q = 0; q < masks[i].n; q++)
                json_array_append_new(cn, json_integer(masks[i].counts[q]));
            json_object_set_new(a, "iscrowd", json_integer(1));
            json_object_set_new(a, "segmentation",
                                json_pack("{s:[i,i], s:o}", "size", 80, 96, "counts", cn));
        }
    }
    T_REQUIRE(json_dump_file(gt, td_path("gt.json"), JSON_COMPACT) == 0, "write gt");

    /* results: shifted copies of the ground truth (scores with ties), some
     * duplicates, masks on the wrong category or image */
    json_t *ps = json_array(), *pb = json_array();
    for (size_t i = 0; i < na; i++)
        for (int rep = 0; rep < 3; rep++) {
            if (tr_rng_uniform(&rng) > (rep == 0 ? 0.8 : 0.15))
                continue;
            int dx = (int)tr_rng_below(&rng, 7) - 3, dy = (int)tr_rng_below(&rng, 7) - 3;
            size_t src = rep == 2 ? (size_t)tr_rng_below(&rng, na) : i;
            int c = tr_rng_below(&rng, 8) == 0 ? 1 + (int)tr_rng_below(&rng, 95) : cat[i];
            uint8_t *m = calloc(96 * 80, 1), *s2 = calloc(96 * 80, 1);
            eng_rle_decode(&masks[src], m);
            for (int y = 0; y < 80; y++)
                for (int x = 0; x < 96; x++) {
                    int sx = x - dx, sy = y - dy;
                    s2[y * 96 + x] = sx >= 0 && sy >= 0 && sx < 96 && sy < 80 && m[sy * 96 + sx];
                }
            eng_rle r;
            char *str = NULL;
            double bb[4];
            eng_rle_encode(s2, 80, 96, &r);
            eng_rle_to_string(&r, &str);
            eng_rle_bbox(&r, bb);
            const double score = floor(tr_rng_uniform(&rng) * 20) / 20; /* ties */
            json_array_append_new(ps, json_pack("{s:i, s:i, s:f, s:{s:[i,i], s:s}}", "image_id",
                                                img[i], "category_id", c, "score", score,
                                                "segmentation", "size", 80, 96, "counts", str));
            json_array_append_new(pb, json_pack("{s:i, s:i, s:f, s:[f,f,f,f]}", "image_id", img[i],
                                                "category_id", c, "score", score, "bbox",
                                                bb[0] + 0.25, bb[1], bb[2] - 0.5, bb[3] + 0.75));
            free(str);
            eng_rle_free(&r);
            free(m);
            free(s2);
        }
    T_REQUIRE(json_dump_file(ps, td_path("pred_segm.json"), JSON_COMPACT) == 0 &&
                  json_dump_file(pb, td_path("pred_box.json"), JSON_COMPACT) == 0,
              "write results");
    json_decref(ps);
    json_decref(pb);
    json_decref(gt);
    for (size_t i = 0; i < na; i++)
        eng_rle_free(&masks[i]);
    free(masks);
    free(img);
    free(cat);

    snprintf(cmd, sizeof cmd, "build/pycocotools/bin/python3 tests/pycoco/crosscheck.py %s",
             td_dir);
    int st = t_run_cmd(cmd, out, sizeof out);
    T_REQUIRE(st == 0, "crosscheck.py exit %d: %s", st, out);
    json_t *ref = json_load_file(td_path("ref.json"), 0, NULL);
    T_REQUIRE(ref, "ref.json");

    const json_t *rp = json_object_get(ref, "polys");
    int same = 0;
    for (int i = 0; i < NPOLY; i++) {
        const char *want = json_string_value(json_array_get(rp, (size_t)i));
        if (ours[i] && want && !strcmp(ours[i], want))
            same++;
        else if (same + 3 > i)
            T_CHECK(0, "polygon %d: ours '%s', pycocotools '%s'", i, ours[i] ? ours[i] : "(error)",
                    want ? want : "?");
        free(ours[i]);
    }
    T_CHECK(same == NPOLY, "%d of %d polygons rasterise as pycocotools does", same, NPOLY);

    tr_coco *g = NULL;
    T_REQUIRE(tr_coco_load(&g, td_path("gt.json"), NULL, TR_COCO_NO_IMAGES) == 0, "%s",
              eng_last_error());
    static const struct {
        const char *key, *file;
        tr_iou_type t;
    } runs[] = {{"segm", "pred_segm.json", TR_IOU_SEGM},
                {"bbox", "pred_box.json", TR_IOU_BBOX},
                {"segm_boxes", "pred_box.json", TR_IOU_SEGM}};
    for (int i = 0; i < 3; i++) {
        tr_coco_dets *d = NULL;
        tr_cocoeval *e = NULL;
        tr_cocoeval_params p;
        T_REQUIRE(tr_coco_dets_load(&d, g, td_path(runs[i].file)) == 0, "%s", eng_last_error());
        tr_cocoeval_params_default(&p, runs[i].t);
        T_REQUIRE(tr_cocoeval_run(&e, g, d, &p) == 0, "%s", eng_last_error());
        const json_t *r = json_object_get(ref, runs[i].key);
        check_stats(e, json_object_get(r, "stats"), json_object_get(r, "per_category_ap"),
                    runs[i].key);
        tr_cocoeval_destroy(e);
        tr_coco_dets_destroy(d);
    }
    tr_coco_destroy(g);
    json_decref(ref);
}

int main(int argc, char **argv)
{
    (void)argc;
    td_sibling(argv[0], "tasam-train", tasam_train, sizeof tasam_train);
    if (td_init("cocoeval")) {
        perror("mkdtemp");
        return 1;
    }
    T_RUN(test_fixture);
    T_RUN(test_cli);
    T_RUN(test_hand_cases);
    T_RUN(test_results_hostile);
    T_RUN(test_pycocotools);
    td_cleanup();
    return t_summary("test_cocoeval");
}
