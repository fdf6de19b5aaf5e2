/*
 * engine/sam_lora.c: LoRA targets of the mask decoder and engine adapters (merged or factored).
 *
 * Shapes use the letters of sam_internal.h.
 */
#include "sam_internal.h"

#include <assert.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ */
/* LoRA targets and adapters                                            */

/* The mask decoder's linear layers, in the fixed order adapters and the
 * hypernetwork use: per two-way layer its three attentions' q/k/v/out
 * projections and its MLP, then the final attention, the output
 * hypernetwork MLPs and the IoU head. */
static eng_sam_lora_target lora_targets[ENG_SAM_LORA_TARGETS];
static pthread_once_t lora_targets_once = PTHREAD_ONCE_INIT;

static void lora_add(int *n, int out, int in, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void lora_add(int *n, int out, int in, const char *fmt, ...)
{
    eng_sam_lora_target *t = &lora_targets[(*n)++];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->name, sizeof t->name, fmt, ap);
    va_end(ap);
    t->out = out;
    t->in = in;
}

static void lora_targets_init(void)
{
    static const char *attn[3] = {"self_attn", "cross_attn_token_to_image",
                                  "cross_attn_image_to_token"};
    int n = 0;
    for (int l = 0; l < 2; l++) {
        for (int a = 0; a < 3; a++) {
            int I = a == 0 ? E : E / 2;
            const char *p = "mask_decoder.transformer.layers";
            lora_add(&n, I, E, "%s.%d.%s.q_proj", p, l, attn[a]);
            lora_add(&n, I, E, "%s.%d.%s.k_proj", p, l, attn[a]);
            lora_add(&n, I, E, "%s.%d.%s.v_proj", p, l, attn[a]);
            lora_add(&n, E, I, "%s.%d.%s.out_proj", p, l, attn[a]);
        }
        lora_add(&n, 2048, E, "mask_decoder.transformer.layers.%d.mlp.lin1", l);
        lora_add(&n, E, 2048, "mask_decoder.transformer.layers.%d.mlp.lin2", l);
    }
    const char *f = "mask_decoder.transformer.final_attn_token_to_image";
    lora_add(&n, E / 2, E, "%s.q_proj", f);
    lora_add(&n, E / 2, E, "%s.k_proj", f);
    lora_add(&n, E / 2, E, "%s.v_proj", f);
    lora_add(&n, E, E / 2, "%s.out_proj", f);
    for (int i = 0; i < NMASK; i++)
        for (int j = 0; j < 3; j++)
            lora_add(&n, j == 2 ? UPC2 : E, E,
                     "mask_decoder.output_hypernetworks_mlps.%d.layers.%d", i, j);
    for (int j = 0; j < 3; j++)
        lora_add(&n, j == 2 ? NMASK : E, E, "mask_decoder.iou_prediction_head.layers.%d", j);
    assert(n == ENG_SAM_LORA_TARGETS);
}

const eng_sam_lora_target *eng_sam_lora_targets(void)
{
    pthread_once(&lora_targets_once, lora_targets_init);
    return lora_targets;
}

int eng__sam_lora_target_index(const char *name)
{
    const eng_sam_lora_target *t = eng_sam_lora_targets();
    for (int i = 0; i < ENG_SAM_LORA_TARGETS; i++)
        if (!strcmp(t[i].name, name))
            return i;
    return -1;
}

/* An adapter record with every tensor described (data NULL) at `rank`. */
eng_sam_lora *eng__sam_lora_new(const eng_sam *m, int rank, int merged)
{
    eng_sam_lora *l = calloc(1, sizeof *l);
    if (!l)
        return NULL;
    const eng_sam_lora_target *t = eng_sam_lora_targets();
    eng_dtype dt = eng_backend_dtype(m->dbe);
    eng_device dev = eng_backend_device(m->dbe);
    l->rank = rank;
    l->merged = merged;
    for (int i = 0; i < ENG_SAM_LORA_TARGETS; i++) {
        l->A[i] = eng_view(NULL, dt, dev, 2, (int64_t[]){rank, t[i].in});
        l->B[i] = eng_view(NULL, dt, dev, 2, (int64_t[]){t[i].out, rank});
        l->W[i] = eng_view(NULL, dt, dev, 2, (int64_t[]){t[i].out, t[i].in});
    }
    return l;
}

/* The model's weight for target t. */
const lin_t *eng__sam_lora_base(const eng_sam *m, int t)
{
    /* targets follow lora_targets_init's order */
    if (t < 28) {
        const twoway_layer *L = &m->layers[t / 14];
        int k = t % 14;
        if (k == 12)
            return &L->mlp1;
        if (k == 13)
            return &L->mlp2;
        const dec_attn *a = k < 4 ? &L->self_attn : k < 8 ? &L->t2i : &L->i2t;
        const lin_t *p[4] = {&a->q, &a->k, &a->v, &a->out};
        return p[k % 4];
    }
    if (t < 32) {
        const lin_t *p[4] = {&m->final_attn.q, &m->final_attn.k, &m->final_attn.v,
                             &m->final_attn.out};
        return p[t - 28];
    }
    if (t < 44)
        return &m->hyper[(t - 32) / 3][(t - 32) % 3];
    return &m->iou_head[t - 44];
}

int eng_sam_lora_create(eng_sam *m, int rank, float scale, const float *const *A,
                        const float *const *B, int merged, eng_sam_lora **out)
{
    *out = NULL;
    if (rank < 1 || rank > ENG_SAM_LORA_MAX_RANK)
        return eng_error(ENG_EINVAL, "LoRA rank %d outside 1..%d", rank, ENG_SAM_LORA_MAX_RANK);
    if (!isfinite(scale))
        return eng_error(ENG_EINVAL, "LoRA scale is not finite");
    eng_sam_lora *l = eng__sam_lora_new(m, rank, merged);
    if (!l)
        return eng_error(ENG_ENOMEM, "out of memory");
    size_t esz = eng_dtype_size(eng_backend_dtype(m->dbe)), total = 0;
    for (int t = 0; t < ENG_SAM_LORA_TARGETS; t++) {
        if (!A[t] != !B[t]) {
            free(l);
            return eng_error(ENG_EINVAL, "LoRA target %s: A and B must both be given",
                             eng_sam_lora_targets()[t].name);
        }
        if (!A[t])
            continue;
        l->present[t] = 1;
        total += (size_t)(eng_numel(&l->A[t]) + eng_numel(&l->B[t]) +
                          (merged ? eng_numel(&l->W[t]) : 0)) *
                     esz +
                 3 * 256;
    }
    l->mem = total ? eng_backend_alloc(m->dbe, total) : NULL;
    if (total && !l->mem) {
        free(l);
        return ENG_ENOMEM;
    }
    l->bytes = total;
    uint8_t *p = l->mem;
    float *stage = NULL;
    size_t stage_n = 0;
    int rc = 0;
    for (int t = 0; t < ENG_SAM_LORA_TARGETS && !rc; t++) {
        if (!l->present[t])
            continue;
        eng_tensor *ts[3] = {&l->A[t], &l->B[t], merged ? &l->W[t] : NULL};
        for (int k = 0; k < 3 && ts[k]; k++) {
            ts[k]->data = p;
            p += ((size_t)eng_numel(ts[k]) * esz + 255) & ~(size_t)255;
        }
        size_t nb = (size_t)eng_numel(&l->B[t]);
        for (size_t i = 0; i < (size_t)eng_numel(&l->A[t]); i++)
            if (!isfinite(A[t][i])) {
                rc = eng_error(ENG_EINVAL, "LoRA target %s: A is not finite",
                               eng_sam_lora_targets()[t].name);
                break;
            }
        if (rc)
            break;
        if (nb > stage_n) {
            float *s2 = realloc(stage, nb * sizeof(float));
            if (!s2) {
                rc = eng_error(ENG_ENOMEM, "out of memory");
                break;
            }
            stage = s2;
            stage_n = nb;
        }
        for (size_t i = 0; i < nb; i++) {
            stage[i] = scale * B[t][i];
            if (!isfinite(stage[i])) {
                rc = eng_error(ENG_EINVAL, "LoRA target %s: B is not finite",
                               eng_sam_lora_targets()[t].name);
                break;
            }
        }
        if (rc ||
            (rc = eng_backend_upload(m->dbe, l->A[t].data, A[t], (size_t)eng_numel(&l->A[t]))) ||
            (rc = eng_backend_upload(m->dbe, l->B[t].data, stage, nb)))
            break;
        if (merged) {
            /* W' = (scale B) A + W, computed on the device */
            const lin_t *base = eng__sam_lora_base(m, t);
            m->dctx->status = 0;
            eng_matmul_nn(m->dctx, &l->W[t], &l->B[t], &l->A[t], NULL, 1);
            eng_add(m->dctx, &l->W[t], &l->W[t], &base->w);
            rc = eng_ctx_status(m->dctx);
            if (!rc)
                rc = eng_backend_sync(m->dbe);
        }
    }
    free(stage);
    if (rc) {
        eng_sam_lora_destroy(m, l);
        return rc;
    }
    *out = l;
    return 0;
}

void eng_sam_lora_destroy(eng_sam *m, eng_sam_lora *l)
{
    if (!l)
        return;
    if (l->mem)
        eng_backend_free(m->dbe, l->mem);
    free(l);
}

size_t eng_sam_lora_bytes(const eng_sam_lora *l) { return l ? l->bytes : 0; }
