/*
 * bench/bench_data.c: the trainer's data path on the CPU: writing the
 * synthetic set, loading it as COCO, drawing training examples and their
 * low-res targets, and COCO evaluation. `make bench` runs it; nothing here
 * is asserted.
 *
 *   bench_data [--out DIR] [--images N] [--size WxH] [--reps R]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/bench_util.h"
#include "engine/error.h"
#include "engine/rle.h"
#include "train/coco.h"
#include "train/cocoeval.h"
#include "train/io.h"
#include "train/rng.h"
#include "train/sample.h"
#include "train/synth.h"

static int fail(const char *what)
{
    fprintf(stderr, "bench_data: %s: %s\n", what, eng_last_error());
    return 1;
}

int main(int argc, char **argv)
{
    const char *out = "build/bench/synth";
    int images = 200, reps = 5, w = 320, h = 240;
    for (int i = 1; i < argc; i++) {
        long long v;
        if (!strcmp(argv[i], "--out") && i + 1 < argc)
            out = argv[++i];
        else if (!strcmp(argv[i], "--images") && i + 1 < argc &&
                 !tr_parse_int(argv[i + 1], 1, 1e6, &v))
            images = (int)v, i++;
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc &&
                 !tr_parse_int(argv[i + 1], 1, 1000, &v))
            reps = (int)v, i++;
        else if (!strcmp(argv[i], "--size") && i + 1 < argc &&
                 !tr_parse_size(argv[i + 1], 64, 4096, &w, &h))
            i++;
        else {
            fprintf(stderr, "usage: bench_data [--out DIR] [--images N] [--size WxH] [--reps R]\n");
            return 2;
        }
    }

    /* synth: the whole write, PNG encoding included */
    tr_synth_config c;
    tr_synth_config_default(&c);
    c.train_images = images;
    c.val_images = images / 4 > 0 ? images / 4 : 1;
    c.width = w;
    c.height = h;
    double t0 = bench_now_ms();
    if (tr_synth_write(&c, out, 1, NULL, NULL))
        return fail("synth");
    double ms = bench_now_ms() - t0;
    printf("synth: %d images of %dx%d in %.0f ms: %.1f images/s (render, RLE, PNG, JSON)\n",
           c.train_images + c.val_images, w, h, ms, (c.train_images + c.val_images) * 1e3 / ms);

    /* load: JSON, RLE decode, image files checked */
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/train", out);
    tr_coco *ds = NULL;
    double tl[64];
    for (int r = 0; r < reps && r < 64; r++) {
        tr_coco_destroy(ds);
        t0 = bench_now_ms();
        if (tr_coco_open_dir(&ds, dir, 0))
            return fail("load");
        tl[r] = bench_now_ms() - t0;
    }
    printf("load: %d images, %d annotations: %.1f ms (median of %d)\n", ds->n_images, ds->n_anns,
           bench_median(tl, reps < 64 ? reps : 64), reps);

    /* examples and targets */
    tr_sample_config sc;
    tr_rng rng;
    tr_sample_config_default(&sc);
    tr_rng_seed(&rng, 1, 1);
    const int n_ex = 2000;
    t0 = bench_now_ms();
    for (int i = 0; i < n_ex; i++) {
        tr_example ex;
        if (tr_sample_example(ds, i % ds->n_images, &sc, &rng, &ex))
            return fail("sample");
    }
    ms = bench_now_ms() - t0;
    printf("sample: %.1f us an example (prompt, task, target instance)\n", ms * 1e3 / n_ex);
    uint8_t *target = malloc(TR_LOWRES * TR_LOWRES);
    const int sizes[][2] = {{320, 240}, {640, 480}, {1024, 768}, {1920, 1080}};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0] && target; s++) {
        const int sw = sizes[s][0], sh = sizes[s][1];
        uint8_t *m = calloc((size_t)sw * sh, 1);
        eng_rle r;
        for (int y = sh / 4; y < sh / 2; y++)
            for (int x = sw / 3; x < sw / 2; x++)
                m[(size_t)y * sw + x] = 1;
        if (!m || eng_rle_encode(m, sh, sw, &r))
            return fail("mask");
        double tt[64];
        for (int k = 0; k < reps && k < 64; k++) {
            t0 = bench_now_ms();
            if (tr_target_lowres_rle(&r, sw, sh, target))
                return fail("target");
            tt[k] = bench_now_ms() - t0;
        }
        printf("target: %dx%d mask -> 256x256 low-res target: %.2f ms (median of %d)\n", sw, sh,
               bench_median(tt, reps < 64 ? reps : 64), reps);
        eng_rle_free(&r);
        free(m);
    }
    free(target);

    /* COCO evaluation: the ground truth itself as results, scored at
     * random, so every (image, category) has work */
    tr_coco_dets *d = NULL;
    if (tr_coco_dets_create(&d))
        return fail("dets");
    for (int i = 0; i < ds->n_anns; i++)
        if (tr_coco_dets_add(d, ds, ds->anns[i].image, ds->categories[ds->anns[i].category].id,
                             tr_rng_uniform(&rng), &ds->anns[i].mask, NULL))
            return fail("dets");
    for (int t = 0; t < 2; t++) {
        tr_cocoeval_params p;
        tr_cocoeval *e = NULL;
        tr_cocoeval_params_default(&p, t ? TR_IOU_BBOX : TR_IOU_SEGM);
        t0 = bench_now_ms();
        if (tr_cocoeval_run(&e, ds, d, &p))
            return fail("cocoeval");
        ms = bench_now_ms() - t0;
        printf("cocoeval %s: %d images x %d categories, %d results: %.0f ms (AP %.3f)\n",
               t ? "bbox" : "segm", ds->n_images, e->K, d->n, ms, e->stats[0]);
        tr_cocoeval_destroy(e);
    }
    tr_coco_dets_destroy(d);
    tr_coco_destroy(ds);
    return 0;
}
