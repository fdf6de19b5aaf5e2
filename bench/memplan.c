/*
 * bench/memplan.c: the device memory a tasamd configuration needs, worked
 * out without a GPU: the model is loaded on the plan backend
 * (engine/plan.c), which counts what the CUDA backend would allocate for
 * the same calls: weights, the dense positional encoding, the resident
 * embeddings (gpu-cache-slots), the workspace (planned in measure mode), the
 * scratch the load's warm-up grows, the backend's fixed buffers, and
 * adapter-slots LoRA adapters of rank R. Not in it: the CUDA context (driver
 * state, cuBLAS/cuBLASLt and our kernels' code), which only a GPU can
 * measure (bench_gpu prints it as "before load"), and the allocator's
 * rounding (cudaMalloc rounds large blocks up to 2 MiB).
 *
 *   build/bench/memplan --checkpoint FILE [--dtype fp16|bf16|fp32]
 *       [--batch 1,2,4,8] [--slots 8] [--adapters 16] [--rank 8]
 *       [--points 16] [--decode-batch 64] [--device-gib 16]
 *
 * fp16 is the T4's configuration (one backend); bf16 is served with the
 * decoder on a second, fp16 backend (eng_sam_open_backends), planned so too.
 * Defaults are tasamd's (server/config.c): 8 slots, 16 adapters, 16 points.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/error.h"
#include "engine/ops.h"
#include "engine/sam.h"

#define MiB (1024.0 * 1024.0)

typedef struct plan_cfg {
    const char *ckpt;
    eng_dtype dt;
    int slots, adapters, rank, points, decode_batch;
    double device_gib;
} plan_cfg;

/* Device bytes of one rank-r adapter on every target, merged or not. */
static int adapter_bytes(eng_sam *m, int rank, int merged, size_t *bytes)
{
    const eng_sam_lora_target *tg = eng_sam_lora_targets();
    const float *A[ENG_SAM_LORA_TARGETS], *B[ENG_SAM_LORA_TARGETS];
    int rc = 0;
    for (int t = 0; t < ENG_SAM_LORA_TARGETS; t++) {
        A[t] = calloc((size_t)rank * tg[t].in, sizeof(float));
        B[t] = calloc((size_t)tg[t].out * rank, sizeof(float));
        if (!A[t] || !B[t])
            rc = eng_error(ENG_ENOMEM, "out of memory");
    }
    eng_sam_lora *l = NULL;
    if (!rc && !(rc = eng_sam_lora_create(m, rank, 1.0f, A, B, merged, &l)))
        *bytes = eng_sam_lora_bytes(l);
    eng_sam_lora_destroy(m, l);
    for (int t = 0; t < ENG_SAM_LORA_TARGETS; t++) {
        free((void *)A[t]);
        free((void *)B[t]);
    }
    return rc;
}

/* Bytes the plan backends hold for a model of c at encoder batch `batch`
 * with `slots` resident embeddings: allocations (weights, dense PE, slots,
 * workspace), scratch, fixed buffers, summed over the encoder's and the
 * decoder's backends; and the workspace and adapter sizes. 0 or 1. */
typedef struct plan_sizes {
    size_t allocs, scratch, fixed, workspace, unmerged, merged;
    char arch[16];
} plan_sizes;

static int plan_load(const plan_cfg *c, int batch, int slots, plan_sizes *s)
{
    eng_backend *be = NULL, *dbe = NULL;
    int rc = eng_backend_plan_create(&be, c->dt);
    if (!rc && c->dt == ENG_BF16)
        rc = eng_backend_plan_create(&dbe, ENG_F16);
    eng_sam *m = NULL;
    eng_sam_options opt = {.max_points = c->points,
                           .max_batch = batch,
                           .max_decode_batch = c->decode_batch,
                           .embedding_slots = slots,
                           .decoder_backend = dbe};
    memset(s, 0, sizeof *s);
    if (!rc)
        rc = eng_sam_load(&m, c->ckpt, be, &opt);
    if (!rc)
        rc = adapter_bytes(m, c->rank, 0, &s->unmerged);
    if (!rc)
        rc = adapter_bytes(m, c->rank, 1, &s->merged);
    if (!rc) {
        for (int i = 0; i < 2; i++) {
            size_t a = 0, sc = 0, f = 0;
            if (i == 1 && !dbe)
                break;
            eng_backend_plan_bytes(i ? dbe : be, &a, &sc, &f);
            s->allocs += a, s->scratch += sc, s->fixed += f;
        }
        s->workspace = eng_sam_workspace_bytes(m);
        snprintf(s->arch, sizeof s->arch, "%s", eng_sam_get_config(m)->name);
    } else {
        fprintf(stderr, "memplan: %s\n", eng_last_error());
    }
    eng_sam_destroy(m);
    eng_backend_destroy(dbe);
    eng_backend_destroy(be);
    return rc ? 1 : 0;
}

static int plan_batch(const plan_cfg *c, int batch, int header)
{
    plan_sizes s, s0;
    if (plan_load(c, batch, c->slots, &s) || plan_load(c, batch, 0, &s0))
        return 1;
    /* resident embeddings: the difference against no slots; weights: what
     * neither that nor the workspace is */
    size_t slots = s.allocs - s0.allocs, weights = s0.allocs - s0.workspace;
    size_t ad = (size_t)c->adapters * s.unmerged;
    double total = (double)(s.allocs + s.scratch + s.fixed + ad);
    if (header) {
        printf("memplan: %s (%s), %s storage%s; %d resident embeddings, %d adapters of rank %d "
               "(%.2f MiB each unmerged, %.1f MiB merged), %d points, decoder groups of %d\n",
               c->ckpt, s.arch, c->dt == ENG_BF16 ? "bf16" : (c->dt == ENG_F16 ? "fp16" : "fp32"),
               c->dt == ENG_BF16 ? " (decoder on a second, fp16 backend)" : "", c->slots,
               c->adapters, c->rank, s.unmerged / MiB, s.merged / MiB, c->points, c->decode_batch);
        printf(
            "| encoder batch | weights (+ dense PE) | resident embeddings | workspace | scratch | "
            "fixed buffers | adapters | total | of %.0f GiB |\n",
            c->device_gib);
        printf("| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
    }
    printf("| %d | %.1f MiB | %.1f MiB | %.1f MiB | %.1f MiB | %.1f MiB | %.1f MiB | %.1f MiB "
           "(%.2f GiB) | %.0f%% |\n",
           batch, weights / MiB, slots / MiB, s.workspace / MiB, s.scratch / MiB, s.fixed / MiB,
           ad / MiB, total / MiB, total / (MiB * 1024),
           100.0 * total / (c->device_gib * MiB * 1024));
    return 0;
}

int main(int argc, char **argv)
{
    plan_cfg c = {NULL, ENG_F16, 8, 16, 8, 16, 64, 16.0};
    const char *batches = "1,2,4,8";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v)
            goto usage;
        i++;
        if (!strcmp(a, "--checkpoint"))
            c.ckpt = v;
        else if (!strcmp(a, "--dtype"))
            c.dt = !strcmp(v, "bf16") ? ENG_BF16 : (!strcmp(v, "fp32") ? ENG_F32 : ENG_F16);
        else if (!strcmp(a, "--batch"))
            batches = v;
        else if (!strcmp(a, "--slots"))
            c.slots = atoi(v);
        else if (!strcmp(a, "--adapters"))
            c.adapters = atoi(v);
        else if (!strcmp(a, "--rank"))
            c.rank = atoi(v);
        else if (!strcmp(a, "--points"))
            c.points = atoi(v);
        else if (!strcmp(a, "--decode-batch"))
            c.decode_batch = atoi(v);
        else if (!strcmp(a, "--device-gib"))
            c.device_gib = atof(v);
        else
            goto usage;
    }
    if (!c.ckpt || c.rank < 1 || c.rank > ENG_SAM_LORA_MAX_RANK || c.device_gib <= 0)
        goto usage;
    char list[128];
    snprintf(list, sizeof list, "%s", batches);
    int fails = 0, first = 1;
    for (char *save = NULL, *b = strtok_r(list, ",", &save); b; b = strtok_r(NULL, ",", &save)) {
        fails += plan_batch(&c, atoi(b) > 0 ? atoi(b) : 1, first);
        first = 0;
    }
    printf("(the CUDA context is not included: bench_gpu measures it as \"before load\")\n");
    return fails ? 1 : 0;
usage:
    fprintf(stderr, "usage: memplan --checkpoint FILE [--dtype fp16|bf16|fp32] [--batch 1,2,4,8] "
                    "[--slots N] [--adapters N] [--rank R] [--points N] [--decode-batch N] "
                    "[--device-gib G]\n");
    return 2;
}
