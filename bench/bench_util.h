/*
 * bench/bench_util.h: timing helpers the engine benchmarks share, and the
 * serving-path measurement (decode + postprocess in one call) both run.
 */
#ifndef TASAM_BENCH_UTIL_H
#define TASAM_BENCH_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/error.h"
#include "engine/image.h"
#include "engine/sam.h"

/* Monotonic milliseconds. */
static inline double bench_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static inline int bench__cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* The options the engine benchmarks share: --checkpoint FILE (required),
 * --reps N (1..1000), --prompts N (1..256), --threads N and, where
 * a->device is set on entry (its default), --device cpu|cuda. 0, or 2 after
 * printing the usage of `prog`. */
typedef struct bench_args {
    const char *ckpt, *device;
    int reps, prompts, threads;
} bench_args;

static inline int bench_parse_args(const char *prog, int argc, char **argv, bench_args *a)
{
    int with_device = a->device != NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--checkpoint") && i + 1 < argc)
            a->ckpt = argv[++i];
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc)
            a->reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--prompts") && i + 1 < argc)
            a->prompts = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            a->threads = atoi(argv[++i]);
        else if (with_device && !strcmp(argv[i], "--device") && i + 1 < argc)
            a->device = argv[++i];
        else {
            fprintf(stderr,
                    "usage: %s --checkpoint FILE [--reps N] [--prompts N] [--threads N]%s\n", prog,
                    with_device ? " [--device cpu|cuda]" : "");
            return 2;
        }
    }
    if (!a->ckpt || a->reps < 1 || a->reps > 1000 || a->prompts < 1 || a->prompts > 256) {
        fprintf(stderr, "%s: --checkpoint is required; reps 1..1000, prompts 1..256\n", prog);
        return 2;
    }
    return 0;
}

/* Median of n timings (sorts them in place). */
static inline double bench_median(double *t, int n)
{
    qsort(t, (size_t)n, sizeof *t, bench__cmp_double);
    return n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
}

/*
 * The serving path for n prompts as tasamd runs it: eng_sam_segment_cached
 * against the embedding resident under "bench" (decoder, postprocess to
 * orig_w x orig_h masks, three masks a prompt). prompts[n] must be filled.
 * Prints the median over reps of the whole call and of its two parts; 0 or
 * the engine's error.
 */
static inline int bench_segment(eng_sam *m, const float *emb, const eng_sam_prompt *prompts, int n,
                                int orig_w, int orig_h, int reps)
{
    eng_sam_imginfo info = {orig_w, orig_h, 0, 0};
    eng_resize_shape(orig_w, orig_h, ENG_SAM_IMG, &info.input_w, &info.input_h);
    size_t nm = (size_t)n * 3;
    float *iou = malloc(nm * sizeof(float)), *st = malloc(nm * sizeof(float));
    uint8_t *masks = malloc(nm * (size_t)orig_w * (size_t)orig_h);
    double *t = malloc(3 * (size_t)reps * sizeof(double));
    int rc = iou && st && masks && t ? 0 : ENG_ENOMEM;
    for (int r = -2; r < reps && !rc; r++) { /* two warm-up calls */
        eng_sam_timing tm;
        double s = bench_now_ms();
        rc = eng_sam_segment_cached(m, "bench", emb, &info, prompts, n, 1, iou, masks, st, &tm);
        if (r >= 0) {
            t[r] = bench_now_ms() - s;
            t[reps + r] = tm.decode_ms;
            t[2 * reps + r] = tm.postprocess_ms;
        }
    }
    if (!rc)
        printf("segment  %3d prompt(s), %dx%d, 3 masks each: %8.2f ms median of %d (decoder %.2f, "
               "postprocess %.2f)\n",
               n, orig_w, orig_h, bench_median(t, reps), reps, bench_median(t + reps, reps),
               bench_median(t + 2 * reps, reps));
    free(iou), free(st), free(masks), free(t);
    return rc;
}

#endif
