/*
 * bench/bench_amg.c: segment everything (engine/amg.h) on one image, as
 * `tasam segment --everything` runs it: the image encoder, then the point
 * grid through the decoder, the per-mask filters and NMS. Two settings: the
 * reference's defaults (thresholds 0.88 / 0.95), and every mask kept
 * (thresholds 0, the worst case of the per-mask work). A benchmark, never a
 * test: it asserts nothing about speed.
 *
 *   build/bench/bench_amg --checkpoint FILE --image IMG [--points-per-side N]
 *                         [--reps N] [--threads N] [--device cpu|cuda]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "engine/amg.h"
#include "engine/error.h"
#include "engine/image.h"
#include "engine/ops.h"
#include "engine/sam.h"

#include "bench_util.h"

/* CPU seconds (user + system) this process has used: against the wall
 * time, it shows how much of the machine the run had. */
static double cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec * 1e-6;
}

int main(int argc, char **argv)
{
    /* --image and --points-per-side here; the options every engine bench
     * shares (bench_util.h) from the rest */
    const char *image = NULL;
    int side = 16, n = 1;
    char **rest = calloc((size_t)argc + 1, sizeof *rest);
    if (!rest)
        return 1;
    rest[0] = argv[0];
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--image") && i + 1 < argc)
            image = argv[++i];
        else if (!strcmp(argv[i], "--points-per-side") && i + 1 < argc)
            side = atoi(argv[++i]);
        else
            rest[n++] = argv[i];
    }
    bench_args args = {.device = "cpu", .reps = 3, .prompts = 1};
    int bad = bench_parse_args("bench_amg", n, rest, &args);
    free(rest);
    if (bad || !image || args.reps > 100 || side < 1 || side > ENG_AMG_MAX_POINTS_PER_SIDE) {
        fprintf(stderr,
                "usage: bench_amg --checkpoint FILE --image IMG [--points-per-side N (1..%d)] "
                "[--reps N (1..100)] [--threads N] [--device cpu|cuda]\n",
                ENG_AMG_MAX_POINTS_PER_SIDE);
        return 2;
    }
    const char *ckpt = args.ckpt, *device = args.device;
    int reps = args.reps, threads = args.threads;
    eng_backend *be = NULL;
    int rc = !strcmp(device, "cuda") ? eng_backend_cuda_create(&be, 0, ENG_F32)
                                     : eng_backend_cpu_create(&be, threads);
    if (rc) {
        fprintf(stderr, "bench_amg: %s\n", eng_last_error());
        return 1;
    }
    eng_sam *m = NULL;
    eng_image img = {0};
    eng_sam_options opt = {.max_points = 4, .max_batch = 1};
    if (eng_sam_load(&m, ckpt, be, &opt) || eng_image_load(image, 1LL << 30, &img)) {
        fprintf(stderr, "bench_amg: %s\n", eng_last_error());
        eng_sam_destroy(m);
        eng_backend_destroy(be);
        return 1;
    }
    printf("model %s on %s; image %s %dx%d; %dx%d grid, %d prompts\n", ckpt,
           eng_backend_describe(be), image, img.w, img.h, side, side, side * side);
    double *t = malloc((size_t)reps * sizeof *t);
    for (int all = 0; all < 2 && t; all++) {
        eng_amg_params p;
        eng_amg_defaults(&p);
        p.points_per_side = side;
        if (all) {
            p.pred_iou_thresh = 0;
            p.stability_score_thresh = 0;
        }
        eng_amg_input in = {.image = &img};
        eng_amg_result r = {0};
        eng_amg_stats st = {0};
        double cpu = 0;
        for (int k = -1; k < reps && !rc; k++) { /* one warm-up run */
            eng_amg_result_free(&r);
            double s = bench_now_ms(), c0 = cpu_seconds();
            rc = eng_amg_run(m, &in, &p, NULL, &r);
            if (k >= 0) {
                t[k] = bench_now_ms() - s;
                cpu += cpu_seconds() - c0;
                st = r.stats;
            }
        }
        if (rc) {
            fprintf(stderr, "bench_amg: %s\n", eng_last_error());
            eng_amg_result_free(&r);
            break;
        }
        printf("everything %-34s: %8.1f ms median of %d, %.1f CPU-s a run (encoder %.1f, "
               "decoder %.1f, postprocess %.1f, NMS %.1f ms; %lld masks upscaled, %lld "
               "candidates, %zu kept)\n",
               all ? "thresholds 0 (every mask kept)" : "reference defaults (0.88 / 0.95)",
               bench_median(t, reps), reps, cpu / reps, st.encode_ms, st.decode_ms,
               st.postprocess_ms, st.nms_ms, (long long)st.upscaled, (long long)st.candidates, r.n);
        eng_amg_result_free(&r);
    }
    free(t);
    eng_image_free(&img);
    eng_sam_destroy(m);
    eng_backend_destroy(be);
    return rc ? 1 : 0;
}
