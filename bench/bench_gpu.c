/*
 * bench/bench_gpu.c: SAM on the CUDA backend: encoder ms per image at batch
 * 1 (and batch B), decoder ms per call for 1, 16 and 64 prompts, the serving
 * path (decoder + postprocess to masks in one call) for the same counts, GPU
 * memory, and TFLOP/s against the analytic FLOP count (eng_sam_encoder_flops:
 * ViT-H 5.96 TFLOP per image). A benchmark, never a test: it asserts nothing about
 * speed. Times are wall-clock medians around the public calls, which include
 * the host->device copy of the f32 input (12 MiB per image) and the copy back
 * of the embedding; TASAM_CUDA_PROFILE=1 prints the device time per op.
 *
 *   build/bench/bench_gpu [--checkpoint FILE]... [--arch vit_b,vit_h]
 *                         [--dtype bf16|fp16|fp32] [--reps N] [--batch B]
 *                         [--weights-dir DIR]
 *
 * With no --checkpoint: the fixture `tiny` model (when $TASAM_FIXTURES or
 * ../shared/fixtures has it), then random ViT-B and ViT-H weights, written by
 * mkweights (beside this binary) into --weights-dir (default: this binary's
 * folder) when missing.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "engine/error.h"
#include "engine/ops.h"
#include "engine/sam.h"

#include "bench_util.h"

#ifdef ENG_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

static uint64_t rng = 88172645463325252ull;
static float frand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((rng >> 40) * (1.0 / 8388608.0)) - 1.0f;
}

static size_t device_used(void)
{
#ifdef ENG_HAVE_CUDA
    size_t fr = 0, tot = 0;
    if (cudaMemGetInfo(&fr, &tot) == cudaSuccess)
        return tot - fr;
#endif
    return 0;
}

static int bench_model(const char *label, const char *path, eng_dtype dt, int reps, int batch)
{
    eng_backend *be = NULL, *dbe = NULL;
    if (eng_backend_cuda_create(&be, 0, dt) != 0) {
        printf("%s: no CUDA backend: %s\n", label, eng_last_error());
        return 1;
    }
    /* bf16 is served with the decoder in fp16 (eng_sam_open_backends) */
    if (dt == ENG_BF16 && eng_backend_cuda_create(&dbe, 0, ENG_F16) != 0) {
        printf("%s: no fp16 decoder backend: %s\n", label, eng_last_error());
        eng_backend_destroy(be);
        return 1;
    }
    size_t dev0 = device_used();
    eng_sam *m = NULL;
    eng_sam_options opt = {
        .max_points = 16, .max_batch = batch, .decoder_backend = dbe, .embedding_slots = 1};
    double t0 = bench_now_ms();
    if (eng_sam_load(&m, path, be, &opt) != 0) {
        printf("%s: load %s: %s\n", label, path, eng_last_error());
        eng_backend_destroy(dbe);
        eng_backend_destroy(be);
        return 1;
    }
    double load_ms = bench_now_ms() - t0;
    const eng_sam_config *cfg = eng_sam_get_config(m);
    printf("== %s (%s: C=%d depth=%d heads=%d hd=%d) on %s; load %.0f ms, workspace %.1f MiB\n",
           label, cfg->name, cfg->embed_dim, cfg->depth, cfg->heads, cfg->head_dim,
           eng_backend_describe(be), load_ms, eng_sam_workspace_bytes(m) / 1048576.0);

    size_t img = (size_t)3 * ENG_SAM_IMG * ENG_SAM_IMG;
    float *in = malloc(img * batch * sizeof(float));
    float *emb = malloc((size_t)ENG_SAM_EMB_FLOATS * batch * sizeof(float));
    for (size_t i = 0; i < img * batch; i++)
        in[i] = 2.0f * frand();
    double *t = malloc((size_t)(reps > 0 ? reps : 1) * sizeof(double));
    int rc = 0;
    for (int i = 0; i < 3 && !rc; i++)
        rc = eng_sam_encode(m, in, 1, emb);
    for (int i = 0; i < reps && !rc; i++) {
        double s = bench_now_ms();
        rc = eng_sam_encode(m, in, 1, emb);
        t[i] = bench_now_ms() - s;
    }
    if (rc) {
        printf("  encode: %s\n", eng_last_error());
        goto out;
    }
    double flops = eng_sam_encoder_flops(cfg);
    double e1 = bench_median(t, reps);
    printf("  encoder batch 1: median %.3f ms (min %.3f, %d reps), %.1f TFLOP/s (%.3f TFLOP "
           "per image)\n",
           e1, t[0], reps, flops / (e1 * 1e-3) / 1e12, flops / 1e12);
    if (batch > 1) {
        rc = eng_sam_encode(m, in, batch, emb);
        int r8 = reps / 2 > 2 ? reps / 2 : 3;
        for (int i = 0; i < r8 && !rc; i++) {
            double s = bench_now_ms();
            rc = eng_sam_encode(m, in, batch, emb);
            t[i] = bench_now_ms() - s;
        }
        if (rc) {
            printf("  encode batch %d: %s\n", batch, eng_last_error());
            goto out;
        }
        double eb = bench_median(t, r8) / batch;
        printf("  encoder batch %d: median %.3f ms per image, %.1f TFLOP/s\n", batch, eb,
               flops / (eb * 1e-3) / 1e12);
    }

    /* decoder: one positive point per prompt (+ SAM's padding point: 7 tokens) */
    const eng_sam_imginfo info = {1024, 1024, 1024, 1024};
    static const int counts[3] = {1, 16, 64};
    eng_sam_prompt *pr = calloc(64, sizeof *pr);
    float *pts = malloc(64 * 2 * sizeof(float));
    int *lab = malloc(64 * sizeof(int));
    float *iou = malloc(64 * 3 * sizeof(float));
    float *lo = malloc((size_t)64 * 3 * ENG_SAM_LOWRES_FLOATS * sizeof(float));
    for (int i = 0; i < 64; i++) {
        pts[2 * i] = 100.0f + 13.0f * i;
        pts[2 * i + 1] = 900.0f - 11.0f * i;
        lab[i] = 1;
        pr[i].n_points = 1;
        pr[i].points = pts + 2 * i;
        pr[i].labels = lab + i;
    }
    /* as tasamd serves a cached image: the embedding resident on the GPU
     * (eng_sam_decode_cached); and, for comparison, uploaded on every call */
    for (int resident = 1; resident >= 0 && !rc; resident--)
        for (int c = 0; c < 3 && !rc; c++) {
            int n = counts[c];
            const char *key = resident ? "bench" : NULL;
            for (int i = 0; i < 2 && !rc; i++)
                rc = eng_sam_decode_cached(m, key, emb, &info, pr, n, 1, iou, lo);
            for (int i = 0; i < reps && !rc; i++) {
                double s = bench_now_ms();
                rc = eng_sam_decode_cached(m, key, emb, &info, pr, n, 1, iou, lo);
                t[i] = bench_now_ms() - s;
            }
            if (rc) {
                printf("  decode: %s\n", eng_last_error());
                break;
            }
            double d = bench_median(t, reps);
            printf("  decoder %2d prompt%s (embedding %s): median %.3f ms per call (%.3f ms per "
                   "prompt), %.1f GFLOP/s\n",
                   n, n == 1 ? " " : "s", resident ? "resident" : "uploaded", d, d / n,
                   eng_sam_decoder_flops(7) * n / (d * 1e-3) / 1e9);
        }
    /* the serving path: decoder + postprocess to a 1024x768 image's masks
     * in one call, the embedding resident (as tasamd serves a cached image) */
    for (int c = 0; c < 3 && !rc; c++)
        if ((rc = bench_segment(m, emb, pr, counts[c], 1024, 768, reps)))
            printf("  segment: %s\n", eng_last_error());
    free(pr), free(pts), free(lab), free(iou), free(lo);
    size_t used = 0, total = 0;
    eng_backend_memory(be, &used, &total);
    size_t dev1 = device_used();
    printf("  GPU memory: backend %.1f MiB (weights + workspace + scratch + staging); device in "
           "use %.1f MiB of %.1f MiB (%.1f MiB before load, the CUDA context included)\n",
           used / 1048576.0, dev1 / 1048576.0, total / 1048576.0, dev0 / 1048576.0);
out:
    free(in), free(emb), free(t);
    eng_sam_destroy(m);
    eng_backend_destroy(dbe);
    eng_backend_destroy(be);
    return rc ? 1 : 0;
}

/* FILE for a random-weight architecture, generated with mkweights if missing. */
static int random_weights(const char *self, const char *dir, const char *arch, char *path,
                          size_t cap)
{
    char bindir[1024];
    snprintf(bindir, sizeof bindir, "%s", self);
    char *slash = strrchr(bindir, '/');
    if (slash)
        *slash = '\0';
    else
        snprintf(bindir, sizeof bindir, ".");
    snprintf(path, cap, "%s/sam_%s_random.safetensors", dir ? dir : bindir, arch);
    struct stat st;
    if (stat(path, &st) == 0)
        return 0;
    char cmd[3200];
    snprintf(cmd, sizeof cmd, "'%s/mkweights' --arch %s --out '%s'", bindir, arch, path);
    printf("generating %s weights: %s\n", arch, cmd);
    fflush(stdout);
    return system(cmd) == 0 ? 0 : -1;
}

int main(int argc, char **argv)
{
    const char *ckpts[16];
    int n_ck = 0, reps = 20, batch = 1;
    const char *archs = "vit_b,vit_h", *wdir = NULL;
    eng_dtype dt = ENG_BF16;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--checkpoint") && i + 1 < argc && n_ck < 16)
            ckpts[n_ck++] = argv[++i];
        else if (!strcmp(argv[i], "--arch") && i + 1 < argc)
            archs = argv[++i];
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc)
            reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--batch") && i + 1 < argc)
            batch = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--weights-dir") && i + 1 < argc)
            wdir = argv[++i];
        else if (!strcmp(argv[i], "--dtype") && i + 1 < argc) {
            i++;
            dt = !strcmp(argv[i], "fp32") ? ENG_F32
                                          : (!strcmp(argv[i], "fp16") ? ENG_F16 : ENG_BF16);
        } else {
            fprintf(stderr,
                    "usage: bench_gpu [--checkpoint FILE]... [--arch vit_b,vit_h] "
                    "[--dtype bf16|fp16|fp32] [--reps N] [--batch B] [--weights-dir DIR]\n");
            return 2;
        }
    }
    if (reps < 1)
        reps = 1;
    if (batch < 1)
        batch = 1;
    eng_backend *probe = NULL;
    if (eng_backend_cuda_create(&probe, 0, dt) != 0) {
        printf("bench_gpu: no GPU run: %s\n", eng_last_error());
        return 0;
    }
    eng_backend_destroy(probe);
    int fails = 0;
    if (n_ck) {
        for (int i = 0; i < n_ck; i++)
            fails += bench_model(ckpts[i], ckpts[i], dt, reps, batch);
        return fails ? 1 : 0;
    }
    const char *fx = getenv("TASAM_FIXTURES");
    char path[1200];
    snprintf(path, sizeof path, "%s/sam_tiny.safetensors", fx && *fx ? fx : "../shared/fixtures");
    struct stat st;
    if (stat(path, &st) == 0)
        fails += bench_model("tiny (fixture)", path, dt, reps, batch);
    char list[256];
    snprintf(list, sizeof list, "%s", archs);
    for (char *save = NULL, *a = strtok_r(list, ",", &save); a; a = strtok_r(NULL, ",", &save)) {
        if (random_weights(argv[0], wdir, a, path, sizeof path) != 0) {
            printf("%s: could not generate random weights\n", a);
            fails++;
            continue;
        }
        char label[64];
        snprintf(label, sizeof label, "%s (random weights)", a);
        fails += bench_model(label, path, dt, reps, batch);
    }
    return fails ? 1 : 0;
}
