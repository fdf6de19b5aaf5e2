/*
 * bench/bench_idle.c: what a sporadic request costs on the CPU backend
 * against one that follows another at once, for several spin times of the
 * CPU pool (eng_cpu_set_spin_us; 0 is a pool whose threads sleep as soon as
 * a loop ends). The serving path of one point prompt
 * (eng_sam_segment_cached: decoder + postprocess to 800x534, three masks,
 * embedding resident) is timed right after another call, and after the
 * process has been idle for each --idle-ms gap; spin settings and gaps
 * alternate within every round, so the drift of a shared machine falls on
 * all of them alike. Reports medians. A benchmark: it asserts nothing.
 *
 *   build/bench/bench_idle --checkpoint FILE [--reps N] [--threads N]
 *                          [--idle-ms 50,500,2000] [--spin-us 0,500]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/error.h"
#include "engine/ops.h"
#include "engine/sam.h"

#include "bench_util.h"

#define MAX_LIST 8

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

/* Contract: parses "a,b,c" into out (at most MAX_LIST values in [lo, hi]);
 * the count, or -1. */
static int parse_list(const char *s, int lo, int hi, int *out)
{
    int n = 0;
    while (*s && n < MAX_LIST) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s || v < lo || v > hi || (*end && *end != ','))
            return -1;
        out[n++] = (int)v;
        s = *end ? end + 1 : end;
    }
    return *s ? -1 : n;
}

int main(int argc, char **argv)
{
    const char *ckpt = NULL, *gaps_s = "50,500,2000", *spins_s = "0,500";
    int reps = 9, threads = 0, gaps[MAX_LIST], spins[MAX_LIST], n_gaps, n_spins;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--checkpoint") && i + 1 < argc)
            ckpt = argv[++i];
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc)
            reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--idle-ms") && i + 1 < argc)
            gaps_s = argv[++i];
        else if (!strcmp(argv[i], "--spin-us") && i + 1 < argc)
            spins_s = argv[++i];
        else {
            fprintf(stderr, "usage: bench_idle --checkpoint FILE [--reps N] [--threads N] "
                            "[--idle-ms MS,...] [--spin-us US,...]\n");
            return 2;
        }
    }
    n_gaps = parse_list(gaps_s, 1, 60000, gaps);
    n_spins = parse_list(spins_s, 0, 100000, spins);
    if (!ckpt || reps < 1 || reps > 200 || n_gaps < 1 || n_spins < 1) {
        fprintf(stderr,
                "bench_idle: --checkpoint is required; reps 1..200; --idle-ms 1..60000 "
                "and --spin-us 0..100000, comma-separated, at most %d each\n",
                MAX_LIST);
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
    const size_t cells = (size_t)n_spins * (size_t)(n_gaps + 1);
    float *emb = malloc((size_t)ENG_SAM_EMB_FLOATS * sizeof(float));
    uint8_t *masks = malloc((size_t)3 * 800 * 534);
    /* t[(spin * (n_gaps + 1) + column) * reps + rep]; column 0: back to back */
    double *t = malloc(cells * (size_t)reps * sizeof(double));
    if (!emb || !masks || !t) {
        fprintf(stderr, "bench_idle: out of memory\n");
        return 1;
    }
    /* a smooth synthetic embedding: the decoder's cost does not depend on it */
    for (size_t i = 0; i < (size_t)ENG_SAM_EMB_FLOATS; i++)
        emb[i] = (float)((double)(i % 977) * 1e-3 - 0.5);
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
    for (int r = 0; r < reps; r++)
        for (int g = 0; g < n_gaps; g++)
            for (int s = 0; s < n_spins; s++) {
                double *cell = t + (size_t)s * (size_t)(n_gaps + 1) * (size_t)reps;
                eng_cpu_set_spin_us(spins[s]);
                /* back to back: right after the previous call */
                eng_sam_segment_cached(m, "bench", NULL, &info, &p, 1, 1, iou, masks, stab, &tm);
                double t0 = bench_now_ms();
                eng_sam_segment_cached(m, "bench", NULL, &info, &p, 1, 1, iou, masks, stab, &tm);
                if (g == 0)
                    cell[r] = bench_now_ms() - t0;
                sleep_ms(gaps[g]);
                t0 = bench_now_ms();
                eng_sam_segment_cached(m, "bench", NULL, &info, &p, 1, 1, iou, masks, stab, &tm);
                cell[(size_t)(g + 1) * (size_t)reps + (size_t)r] = bench_now_ms() - t0;
            }
    printf("  median ms of %d runs   back to back", reps);
    for (int g = 0; g < n_gaps; g++)
        printf("  after %5d ms idle", gaps[g]);
    printf("\n");
    for (int s = 0; s < n_spins; s++) {
        double *cell = t + (size_t)s * (size_t)(n_gaps + 1) * (size_t)reps;
        double w = bench_median(cell, reps);
        printf("  spin %6d us      %12.2f", spins[s], w);
        for (int g = 0; g < n_gaps; g++)
            printf("  %10.2f (%+6.2f)", bench_median(cell + (size_t)(g + 1) * (size_t)reps, reps),
                   bench_median(cell + (size_t)(g + 1) * (size_t)reps, reps) - w);
        printf("\n");
    }
    eng_cpu_set_spin_us(ENG_CPU_SPIN_US_DEFAULT);
    eng_sam_destroy(m);
    eng_backend_destroy(be);
    free(emb), free(masks), free(t);
    return 0;
}
