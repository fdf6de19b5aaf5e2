/*
 * tests/fuzz/fuzz_coco.c: libFuzzer target for the trainer's COCO readers:
 * the instances loader (train/coco.c) and the results loader
 * (train/cocoeval.c), then what runs on whatever they accept: prompt
 * sampling and COCOeval.
 *
 * Input: byte 0 picks the reader (even: the rest is an instances file;
 * odd: the rest is a results file against a small fixed ground truth).
 * Whatever loads must be self-consistent: every annotation's mask has its
 * image's size and runs covering it, indices in range; sampled examples
 * name real categories, tasks and targets; COCOeval's numbers lie in
 * [-1, 1]. A refusal must come with a message naming the file. Images over
 * a megapixel are skipped before loading so each run stays far below the
 * timeout (the size limits themselves are unit-tested). Violations abort().
 */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "engine/error.h"
#include "train/coco.h"
#include "train/cocoeval.h"
#include "train/rng.h"
#include "train/sample.h"

static void fz__check(int ok)
{
    if (!ok)
        abort();
}

/* 1 when some image declares more than a megapixel. */
static int fz__large(const uint8_t *data, size_t size)
{
    json_t *j = json_loadb((const char *)data, size, 0, NULL);
    const json_t *im = json_object_get(j, "images");
    int big = 0;
    for (size_t i = 0; i < json_array_size(im) && !big; i++) {
        json_int_t w = json_integer_value(json_object_get(json_array_get(im, i), "width"));
        json_int_t h = json_integer_value(json_object_get(json_array_get(im, i), "height"));
        big = w > 0 && h > 0 && w * h > (1 << 20);
    }
    json_decref(j);
    return big;
}

static void fz__eval(const tr_coco *gt, const tr_coco_dets *dt)
{
    for (int t = 0; t < 2; t++) {
        tr_cocoeval_params p;
        tr_cocoeval *e = NULL;
        tr_cocoeval_params_default(&p, t ? TR_IOU_BBOX : TR_IOU_SEGM);
        fz__check(tr_cocoeval_run(&e, gt, dt, &p) == 0);
        for (int i = 0; i < 12; i++)
            fz__check(e->stats[i] >= -1 && e->stats[i] <= 1);
        tr_cocoeval_destroy(e);
    }
}

static void fz__instances(const uint8_t *data, size_t size)
{
    tr_coco *c = NULL;
    if (fz__large(data, size))
        return;
    if (tr_coco_load_buffer(&c, (const char *)data, size, "fuzz.json", NULL, TR_COCO_NO_IMAGES)) {
        fz__check(c == NULL && strstr(eng_last_error(), "fuzz.json") != NULL);
        return;
    }
    for (int i = 0; i < c->n_anns; i++) {
        const tr_coco_ann *a = &c->anns[i];
        fz__check(a->image >= 0 && a->image < c->n_images);
        fz__check(a->category >= 0 && a->category < c->n_categories);
        const tr_coco_image *im = &c->images[a->image];
        fz__check(a->mask.h == im->height && a->mask.w == im->width);
        uint64_t total = 0;
        for (size_t r = 0; r < a->mask.n; r++)
            total += a->mask.counts[r];
        fz__check(total == (uint64_t)im->width * (uint64_t)im->height);
    }
    for (int k = 0; k < c->n_categories; k++)
        fz__check(c->categories[k].n_tasks > 0 && c->categories[k].tasks[0][0] != '\0');

    tr_sample_config cfg;
    tr_rng rng;
    tr_sample_config_default(&cfg);
    cfg.heldout_tasks = 1;
    tr_rng_seed(&rng, 1, 2);
    for (int i = 0; i < c->n_images && i < 8; i++)
        for (int it = 0; it < 4; it++) {
            tr_example ex;
            if (tr_sample_example(c, i, &cfg, &rng, &ex) != 0)
                continue;
            fz__check(ex.category >= 0 && ex.category < c->n_categories);
            fz__check(ex.task >= 0 && ex.task < c->categories[ex.category].n_tasks);
            fz__check(ex.target >= -1 && ex.target < c->n_anns);
            fz__check(ex.target < 0 || c->anns[ex.target].category == ex.category);
        }

    /* the ground truth as results: every instance found */
    tr_coco_dets *d = NULL;
    fz__check(tr_coco_dets_create(&d) == 0);
    for (int i = 0; i < c->n_anns && i < 2000; i++)
        fz__check(tr_coco_dets_add(d, c, c->anns[i].image, c->categories[c->anns[i].category].id,
                                   1.0 / (1 + i % 7), &c->anns[i].mask, NULL) == 0);
    fz__eval(c, d);
    tr_coco_dets_destroy(d);
    tr_coco_destroy(c);
}

static const char fz__gt[] =
    "{\"images\": [{\"id\": 1, \"width\": 20, \"height\": 20, \"file_name\": \"a\"},"
    " {\"id\": 2, \"width\": 9, \"height\": 7, \"file_name\": \"b\"}],"
    " \"categories\": [{\"id\": 1, \"name\": \"a\"}, {\"id\": 2, \"name\": \"b\"}],"
    " \"annotations\": [{\"id\": 1, \"image_id\": 1, \"category_id\": 1, \"segmentation\": "
    "[[0,0,10,0,10,10,0,10]]}, {\"id\": 2, \"image_id\": 1, \"category_id\": 2, \"iscrowd\": 1, "
    "\"segmentation\": {\"size\": [20, 20], \"counts\": [200, 100, 100]}}, {\"id\": 3, "
    "\"image_id\": 2, \"category_id\": 1, \"segmentation\": [[1,1,8,1,8,6]]}]}";

static void fz__results(const tr_coco *gt, const uint8_t *data, size_t size)
{
    tr_coco_dets *d = NULL;
    if (tr_coco_dets_load_buffer(&d, gt, (const char *)data, size, "results.json")) {
        fz__check(d == NULL && strstr(eng_last_error(), "results.json") != NULL);
        return;
    }
    for (int i = 0; i < d->n; i++) {
        const tr_coco_image *im = &gt->images[d->d[i].image];
        fz__check(d->d[i].mask.h == im->height && d->d[i].mask.w == im->width);
    }
    fz__eval(gt, d);
    tr_coco_dets_destroy(d);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static tr_coco *gt;
    if (!gt && tr_coco_load_buffer(&gt, fz__gt, sizeof fz__gt - 1, "gt.json", NULL,
                                   TR_COCO_NO_IMAGES) != 0)
        abort();
    if (size < 1)
        return 0;
    if (data[0] & 1)
        fz__results(gt, data + 1, size - 1);
    else
        fz__instances(data + 1, size - 1);
    return 0;
}
