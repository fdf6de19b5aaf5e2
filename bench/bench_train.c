/*
 * bench/bench_train.c: the training step's cost on the CPU: the mask
 * decoder's forward and backward with a LoRA adapter on all 47 targets,
 * per prompt, split into its parts (training forward, loss, backward), and
 * the whole step of the training loop (tr_step_task: hypernetwork forward,
 * the prompts' forward + loss + backward, hypernetwork backward) as samples
 * a second. The serving decoder's forward under the same adapter is timed
 * too for comparison. A benchmark, never a test: it asserts nothing.
 *
 *   build/bench/bench_train --checkpoint FILE [--reps N] [--prompts N] [--threads N]
 *
 * The embedding is synthetic (the decoder's cost does not depend on it).
 * The training step also reports the process's CPU time (all threads): on
 * a shared, loaded machine wall time includes waiting for a core, CPU time
 * does not.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/error.h"
#include "engine/ops.h"
#include "engine/sam.h"
#include "engine/sam_train.h"
#include "hypernet/hypernet.h"
#include "train/loss.h"
#include "train/step.h"

#include "bench_util.h"

/* CPU time of the whole process (every thread), ms. */
static double cpu_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

#define NT ENG_SAM_LORA_TARGETS
#define LR ENG_SAM_LOWRES_FLOATS

int main(int argc, char **argv)
{
    bench_args args = {.reps = 5, .prompts = 8};
    if (bench_parse_args("bench_train", argc, argv, &args))
        return 2;
    const char *ckpt = args.ckpt;
    const int reps = args.reps, prompts = args.prompts, threads = args.threads;
    eng_backend *be = NULL;
    eng_sam *m = NULL;
    eng_sam_train *t = NULL;
    eng_sam_lora *lo = NULL;
    hn_params *hp = NULL, *hg = NULL;
    tr_step *step = NULL;
    hn_hypernet_config hc;
    hn_hypernet_config_default(&hc);
    if (eng_backend_cpu_create(&be, threads) || eng_sam_load(&m, ckpt, be, NULL) ||
        eng_sam_train_create(&t, m, hc.rank) || hn_params_create(&hp, &hc) ||
        hn_params_create(&hg, &hc) || tr_step_create(&step, m, &hc)) {
        fprintf(stderr, "bench_train: %s\n", eng_last_error());
        return 1;
    }
    const eng_sam_config *cfg = eng_sam_get_config(m);
    printf("model %s (%s) on %s; training workspace %.1f MiB\n", ckpt, cfg->name,
           eng_backend_describe(be), eng_sam_train_workspace_bytes(t) / 1048576.0);

    /* a random adapter on every target, rank 4, as a trained hypernetwork
     * would emit (B not zero, so every LoRA product runs) */
    const eng_sam_lora_target *tg = eng_sam_lora_targets();
    float *A[NT], *B[NT];
    uint64_t s = 1;
    for (int i = 0; i < NT; i++) {
        A[i] = malloc(sizeof(float) * hc.rank * tg[i].in);
        B[i] = malloc(sizeof(float) * hc.rank * tg[i].out);
        for (int k = 0; k < hc.rank * tg[i].in; k++)
            A[i][k] = (float)((s = s * 6364136223846793005ull + 1) >> 40) / 16777216.0f * 0.1f;
        for (int k = 0; k < hc.rank * tg[i].out; k++)
            B[i][k] = (float)((s = s * 6364136223846793005ull + 1) >> 40) / 16777216.0f * 0.05f;
    }
    float *emb = malloc(ENG_SAM_EMB_FLOATS * sizeof *emb), *lg = malloc(3 * LR * sizeof *lg);
    float *dl = malloc(3 * LR * sizeof *dl), *mask_in = malloc(LR * sizeof *mask_in);
    uint8_t *target = malloc(LR);
    double *tm = malloc(4 * (size_t)reps * sizeof *tm);
    for (size_t i = 0; i < ENG_SAM_EMB_FLOATS; i++)
        emb[i] = (float)sin((double)i * 1e-3);
    for (int i = 0; i < LR; i++) {
        int x = i % 256, y = i / 256;
        target[i] = (x - 128) * (x - 128) + (y - 100) * (y - 100) < 50 * 50;
        mask_in[i] = target[i] ? 2.0f : -2.0f;
    }
    const eng_sam_imginfo info = {1024, 768, 1024, 768};
    float pts[2] = {500, 300}, iou[3], di[3];
    int lab = 1;
    eng_sam_prompt p = {.n_points = 1, .points = pts, .labels = &lab};
    tr_loss_weights w;
    tr_loss_weights_default(&w);
    tr_loss_parts parts;
    const float scale = hc.alpha / hc.rank;
    if (eng_sam_lora_create(m, hc.rank, scale, (const float *const *)A, (const float *const *)B, 0,
                            &lo) ||
        eng_sam_train_set_lora(t, scale, (const float *const *)A, (const float *const *)B) ||
        eng_sam_train_set_image(t, emb, &info)) {
        fprintf(stderr, "bench_train: %s\n", eng_last_error());
        return 1;
    }

    /* the serving decoder under the same adapter, for comparison */
    eng_sam_prompt ps = p;
    ps.lora = lo;
    for (int r = -1; r < reps; r++) {
        double t0 = bench_now_ms();
        eng_sam_decode(m, emb, &info, &ps, 1, 1, iou, lg);
        if (r >= 0)
            tm[r] = bench_now_ms() - t0;
    }
    printf("serving decoder, LoRA unmerged, 1 prompt:        %8.1f ms median of %d\n",
           bench_median(tm, reps), reps);

    /* one prompt through the training path, in parts; then with a mask input */
    for (int with_mask = 0; with_mask < 2; with_mask++) {
        p.mask_input = with_mask ? mask_in : NULL;
        int rc = 0;
        for (int r = -1; r < reps && !rc; r++) {
            double t0 = bench_now_ms();
            rc = eng_sam_train_forward(t, &p, 1, iou, lg);
            double t1 = bench_now_ms();
            rc = rc ? rc : tr_loss_mask(lg, iou, target, 3, LR, &w, 1.0f, &parts, dl, di);
            double t2 = bench_now_ms();
            rc = rc ? rc : eng_sam_train_backward(t, dl, di);
            double t3 = bench_now_ms();
            if (r >= 0) {
                tm[r] = t1 - t0;
                tm[reps + r] = t2 - t1;
                tm[2 * reps + r] = t3 - t2;
                tm[3 * reps + r] = t3 - t0;
            }
        }
        if (rc) {
            fprintf(stderr, "bench_train: %s\n", eng_last_error());
            return 1;
        }
        double f = bench_median(tm, reps), l = bench_median(tm + reps, reps);
        double b = bench_median(tm + 2 * reps, reps), all = bench_median(tm + 3 * reps, reps);
        printf("train forward + loss + backward, 1 prompt%s: %8.1f ms median of %d (forward "
               "%.1f, loss %.1f, backward %.1f)\n",
               with_mask ? ", mask input" : "            ", all, reps, f, l, b);
    }

    /* the training loop's step: one task, `prompts` prompts on one image,
     * the default hypernetwork (MiniLM width 384, hidden 256, rank 4, every
     * target) initialised at random so that its adapters are not zero */
    hn_params_init(hp, 1, 1);
    float *task = calloc((size_t)hc.text_dim, sizeof *task);
    for (int i = 0; i < hc.text_dim; i++)
        task[i] = (float)sin(i * 0.37) / sqrtf((float)hc.text_dim);
    tr_prompt *tp = calloc((size_t)prompts, sizeof *tp);
    float *ppts = malloc(2 * (size_t)prompts * sizeof *ppts);
    for (int i = 0; i < prompts; i++) {
        ppts[2 * i] = 100.0f + 800.0f * i / prompts;
        ppts[2 * i + 1] = 200.0f + 300.0f * (i % 3) / 3;
        tp[i] = (tr_prompt){.prompt = {.n_points = 1, .points = ppts + 2 * i, .labels = &lab},
                            .target = target,
                            .multimask = 1};
    }
    tr_image im = {emb, info, tp, prompts};
    tr_step_opts o;
    tr_step_opts_default(&o);
    o.prompt_weight = 1.0f / prompts;
    int rc = 0;
    for (int r = -1; r < reps && !rc; r++) {
        double t0 = bench_now_ms(), c0 = cpu_ms();
        rc = tr_step_task(step, hp, task, &im, 1, &o, hg, NULL, NULL, NULL);
        if (r >= 0) {
            tm[r] = bench_now_ms() - t0;
            tm[reps + r] = cpu_ms() - c0;
        }
    }
    if (rc) {
        fprintf(stderr, "bench_train: %s\n", eng_last_error());
        return 1;
    }
    double st = bench_median(tm, reps), sc = bench_median(tm + reps, reps);
    size_t trunk, heads;
    hn_params_count(hp, &trunk, &heads);
    printf("training step, 1 task x %d prompts (hypernetwork %.2fM parameters): %8.1f ms median "
           "of %d = %.1f ms a prompt, %.1f samples/s; CPU time %.1f ms a prompt\n",
           prompts, (trunk + heads) / 1e6, st, reps, st / prompts, 1000.0 * prompts / st,
           sc / prompts);
    size_t used = 0;
    eng_backend_memory(be, &used, NULL);
    printf("memory   %.1f MiB held by the backend\n", used / 1048576.0);
    for (int i = 0; i < NT; i++)
        free(A[i]), free(B[i]);
    free(emb), free(lg), free(dl), free(mask_in), free(target), free(tm), free(task), free(tp);
    free(ppts);
    tr_step_destroy(step);
    hn_params_destroy(hp);
    hn_params_destroy(hg);
    eng_sam_lora_destroy(m, lo);
    eng_sam_train_destroy(t);
    eng_sam_destroy(m);
    eng_backend_destroy(be);
    return 0;
}
