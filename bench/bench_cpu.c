/*
 * bench/bench_cpu.c: engine benchmark on the CPU backend (or CUDA with
 * --device cuda): encoder ms per image and decoder ms per prompt, with
 * GFLOP/s against the analytic FLOP counts (eng_sam_*_flops), and the
 * serving path (decoder + postprocess to a 1024x768 image's masks). A
 * benchmark, never a test: it asserts nothing about speed.
 *
 *   build/bench/bench_cpu --checkpoint FILE [--reps N] [--prompts N]
 *                         [--threads N] [--device cpu|cuda]
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/error.h"
#include "engine/ops.h"
#include "engine/sam.h"

#include "bench_util.h"

int main(int argc, char **argv)
{
    bench_args args = {.device = "cpu", .reps = 5, .prompts = 1};
    if (bench_parse_args("bench_cpu", argc, argv, &args))
        return 2;
    const char *ckpt = args.ckpt, *device = args.device;
    const int reps = args.reps, prompts = args.prompts, threads = args.threads;
    eng_backend *be = NULL;
    int rc = !strcmp(device, "cuda") ? eng_backend_cuda_create(&be, 0, ENG_BF16)
                                     : eng_backend_cpu_create(&be, threads);
    if (rc) {
        fprintf(stderr, "bench_cpu: %s\n", eng_last_error());
        return 1;
    }
    eng_sam *m = NULL;
    double t0 = bench_now_ms();
    eng_sam_options opt = {.embedding_slots = 1};
    if (eng_sam_load(&m, ckpt, be, &opt)) {
        fprintf(stderr, "bench_cpu: %s\n", eng_last_error());
        eng_backend_destroy(be);
        return 1;
    }
    const eng_sam_config *cfg = eng_sam_get_config(m);
    printf("model %s (%s, embed %d, depth %d) on %s, loaded in %.0f ms, workspace %.1f MiB\n", ckpt,
           cfg->name, cfg->embed_dim, cfg->depth, eng_backend_describe(be), bench_now_ms() - t0,
           eng_sam_workspace_bytes(m) / 1048576.0);

    float *input = malloc((size_t)3 * ENG_SAM_IMG * ENG_SAM_IMG * sizeof(float));
    float *emb = malloc((size_t)ENG_SAM_EMB_FLOATS * sizeof(float));
    float *iou = malloc((size_t)prompts * 3 * sizeof(float));
    float *lo = malloc((size_t)prompts * 3 * ENG_SAM_LOWRES_FLOATS * sizeof(float));
    eng_sam_prompt *pr = calloc((size_t)prompts, sizeof *pr);
    double *t = malloc((size_t)reps * sizeof(double));
    if (!input || !emb || !iou || !lo || !pr || !t) {
        fprintf(stderr, "bench_cpu: out of memory\n");
        return 1;
    }
    /* a smooth synthetic image, already normalised */
    for (size_t i = 0; i < (size_t)3 * ENG_SAM_IMG * ENG_SAM_IMG; i++)
        input[i] = (float)sin((double)i * 1e-3);
    /* warm-up: first touch of the workspace and scratch */
    if (eng_sam_encode(m, input, 1, emb)) {
        fprintf(stderr, "bench_cpu: %s\n", eng_last_error());
        return 1;
    }
    for (int r = 0; r < reps; r++) {
        double s = bench_now_ms();
        eng_sam_encode(m, input, 1, emb);
        t[r] = bench_now_ms() - s;
    }
    double enc = bench_median(t, reps), ef = eng_sam_encoder_flops(cfg);
    printf("encoder  batch 1: %8.1f ms median of %d   %7.1f GFLOP/s (%.1f GFLOP)\n", enc, reps,
           ef / enc / 1e6, ef / 1e9);

    const eng_sam_imginfo info = {1024, 768, 1024, 768};
    float pts[2] = {500, 300};
    int lab = 1;
    for (int i = 0; i < prompts; i++) {
        pr[i].n_points = 1;
        pr[i].points = pts;
        pr[i].labels = &lab;
    }
    /* the embedding passed in on every call, then kept resident (as tasamd
     * serves a cached image: no layout change, and layer 0's image side kept) */
    for (int resident = 0; resident < 2; resident++) {
        const char *key = resident ? "bench" : NULL;
        eng_sam_decode_cached(m, key, emb, &info, pr, prompts, 1, iou, lo);
        for (int r = 0; r < reps; r++) {
            double s = bench_now_ms();
            eng_sam_decode_cached(m, key, emb, &info, pr, prompts, 1, iou, lo);
            t[r] = bench_now_ms() - s;
        }
        double dec = bench_median(t, reps), df = eng_sam_decoder_flops(7) * prompts;
        printf("decoder  %3d prompt(s), embedding %-8s: %8.1f ms median of %d (%.1f ms a prompt)"
               "   %7.1f GFLOP/s\n",
               prompts, resident ? "resident" : "passed", dec, reps, dec / prompts, df / dec / 1e6);
    }
    /* as tasamd serves it: decoder and postprocess in one call, a 4:3 photo */
    if (bench_segment(m, emb, pr, prompts, 1024, 768, reps))
        fprintf(stderr, "bench_cpu: segment: %s\n", eng_last_error());
    size_t used = 0;
    eng_backend_memory(be, &used, NULL);
    printf("memory   %.1f MiB held by the backend\n", used / 1048576.0);
    free(input);
    free(emb);
    free(iou);
    free(lo);
    free(pr);
    free(t);
    eng_sam_destroy(m);
    eng_backend_destroy(be);
    return 0;
}
