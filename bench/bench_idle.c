/*
 * bench/bench_idle.c: what a sporadic request costs on the CPU backend
 * against a request that follows another at once. The serving path of one
 * point prompt (eng_sam_segment_cached: decoder + postprocess to 800x534,
 * three masks, embedding resident) is timed back to back, and after the
 * process has been idle for each of --idle-ms gaps; the rounds alternate
 * (warm, idle gap 1, warm, idle gap 2, ...) so that the drift of a shared
 * machine falls on all of them alike. Reports medians and the extra cost
 * of the first request after a pause. A benchmark: it asserts nothing.
 *
 *   build/bench/bench_idle --checkpoint FILE [--reps N] [--threads N]
 *                          [--idle-ms 50,500,2000]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/error.h"
#include "engine/ops.h"
#include "engine/sam.h"

#include "bench_util.h"

#define MAX_GAPS 8

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

int main(int argc, char **argv)
{
    const char *ckpt = NULL, *gaps_s = "50,500,2000";
    int reps = 9, threads = 0, gaps[MAX_GAPS], n_gaps = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--checkpoint") && i + 1 < argc)
            ckpt = argv[++i];
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc)
            reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--idle-ms") && i + 1 < argc)
            gaps_s = argv[++i];
        else {
            fprintf(stderr, "usage: bench_idle --checkpoint FILE [--reps N] [--threads N] "
                            "[--idle-ms MS,MS,...]\n");
            return 2;
        }
    }
    for (const char *p = gaps_s; *p && n_gaps < MAX_GAPS;) {
        char *end;
        long g = strtol(p, &end, 10);
        if (end == p || g < 1 || g > 60000) {
            fprintf(stderr, "bench_idle: --idle-ms takes 1..60000 ms, comma-separated\n");
            return 2;
        }
        gaps[n_gaps++] = (int)g;
        p = *end == ',' ? end + 1 : end;
    }
    if (!ckpt || reps < 1 || reps > 200 || n_gaps == 0) {
        fprintf(stderr, "bench_idle: --checkpoint is required; reps 1..200\n");
        return 2;
    }
    eng_backend *be = NULL;
    eng_sam *m = NULL;
    eng_sam_options opt = {.embedding_slots = 1};
    if (eng_backend_cpu_create(&be, threads) || eng_sam_load(&m, ckpt, be, &opt)) {
        fprintf(stderr, "bench_idle: %s\n", eng_last_error());
        eng_backend_destroy(be);
        return 1;
    }
    const eng_sam_imginfo info = {800, 534, 1024, 684};
    float *emb = malloc((size_t)ENG_SAM_EMB_FLOATS * sizeof(float));
    uint8_t *masks = malloc((size_t)3 * 800 * 534);
    double *warm = malloc((size_t)reps * sizeof(double));
    double *idle = malloc((size_t)reps * n_gaps * sizeof(double));
    if (!emb || !masks || !warm || !idle) {
        fprintf(stderr, "bench_idle: out of memory\n");
        return 1;
    }
    /* a smooth synthetic embedding: the decoder's cost does not depend on it */
    for (size_t i = 0; i < (size_t)ENG_SAM_EMB_FLOATS; i++)
        emb[i] = (float)((i % 977) * 1e-3 - 0.5);
    const float pt[2] = {400, 294};
    const int lab[1] = {1};
    eng_sam_prompt p = {.n_points = 1, .points = pt, .labels = lab};
    float iou[3], stab[3];
    eng_sam_timing tm;
    printf("bench_idle: %s on %s; serving path, one point, three masks at 800x534\n", ckpt,
           eng_backend_describe(be));
    /* make the embedding resident and warm everything up */
    for (int i = 0; i < 3; i++)
        if (eng_sam_segment_cached(m, "bench", i ? NULL : emb, &info, &p, 1, 1, iou, masks, stab,
                                   &tm)) {
            fprintf(stderr, "bench_idle: %s\n", eng_last_error());
            return 1;
        }
    for (int r = 0; r < reps; r++) {
        for (int g = 0; g < n_gaps; g++) {
            /* warm: right after the previous call */
            double t0 = bench_now_ms();
            eng_sam_segment_cached(m, "bench", NULL, &info, &p, 1, 1, iou, masks, stab, &tm);
            if (g == 0)
                warm[r] = bench_now_ms() - t0;
            sleep_ms(gaps[g]);
            t0 = bench_now_ms();
            eng_sam_segment_cached(m, "bench", NULL, &info, &p, 1, 1, iou, masks, stab, &tm);
            idle[(size_t)g * reps + r] = bench_now_ms() - t0;
        }
    }
    double w = bench_median(warm, reps);
    printf("  back to back:       median %7.2f ms (%d runs)\n", w, reps);
    for (int g = 0; g < n_gaps; g++) {
        double v = bench_median(idle + (size_t)g * reps, reps);
        printf("  after %5d ms idle: median %7.2f ms, %+6.2f ms against back to back\n", gaps[g], v,
               v - w);
    }
    eng_sam_destroy(m);
    eng_backend_destroy(be);
    free(emb), free(masks), free(warm), free(idle);
    return 0;
}
