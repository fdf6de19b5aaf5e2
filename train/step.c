/*
 * train/step.c: one task's loss and hypernetwork gradient (step.h).
 */
#include "train/step.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/error.h"
#include "engine/sam_train.h"
#include "hypernet/hypernet_train.h"

#define NT ENG_SAM_LORA_TARGETS
#define LR ENG_SAM_LOWRES_FLOATS

struct tr_step {
    hn_hypernet_config cfg;
    eng_sam_train *dec;
    hn_train *hn;
    size_t an[NT], bn[NT];  /* factor sizes, 0 for absent targets */
    float *A[NT], *B[NT];   /* generated factors (NULL where absent) */
    float *dA[NT], *dB[NT]; /* their gradients */
    float *mem;             /* everything above */
    float *logits, *dl;     /* [3, LR] */
};

void tr_step_opts_default(tr_step_opts *o)
{
    tr_loss_weights_default(&o->loss);
    o->prompt_weight = 1.0f;
    o->l2 = 0.0f;
    o->task_weight = 1.0f;
}

int tr_step_create(tr_step **out, eng_sam *m, const hn_hypernet_config *cfg)
{
    *out = NULL;
    tr_step *s = calloc(1, sizeof *s);
    if (!s)
        return eng_error(ENG_ENOMEM, "out of memory");
    s->cfg = *cfg;
    int rc = hn_train_create(&s->hn, cfg);
    if (!rc)
        rc = eng_sam_train_create(&s->dec, m, cfg->rank);
    size_t total = 6 * (size_t)LR;
    for (int t = 0; t < NT; t++)
        total += 2 * hn_factor_size(cfg, t, &s->an[t], &s->bn[t]);
    if (!rc && !(s->mem = malloc(total * sizeof(float))))
        rc = eng_error(ENG_ENOMEM, "out of memory for the step's factors");
    if (rc) {
        tr_step_destroy(s);
        return rc;
    }
    float *p = s->mem;
    s->logits = p, p += 3 * (size_t)LR;
    s->dl = p, p += 3 * (size_t)LR;
    for (int t = 0; t < NT; t++) {
        if (!s->an[t])
            continue;
        s->A[t] = p, p += s->an[t];
        s->dA[t] = p, p += s->an[t];
        s->B[t] = p, p += s->bn[t];
        s->dB[t] = p, p += s->bn[t];
    }
    *out = s;
    return 0;
}

void tr_step_destroy(tr_step *s)
{
    if (!s)
        return;
    eng_sam_train_destroy(s->dec);
    hn_train_destroy(s->hn);
    free(s->mem);
    free(s);
}

int tr_step_task(tr_step *s, const hn_params *p, const float *task_emb, const tr_image *images,
                 int n_images, const tr_step_opts *o, hn_params *grad, tr_step_stats *stats,
                 float *low_res, float *iou)
{
    if (!p || !task_emb || (n_images && !images) || n_images < 0 || !o || !grad)
        return eng_error(ENG_EINVAL, "tr_step_task: missing argument");
    if (!isfinite(o->prompt_weight) || !isfinite(o->task_weight) || !(o->l2 >= 0) ||
        !isfinite(o->l2))
        return eng_error(ENG_EINVAL, "tr_step_task: weights must be finite, l2 >= 0");
    for (int i = 0; i < n_images; i++) {
        if (!images[i].embedding || images[i].n_prompts < 0 ||
            (images[i].n_prompts && !images[i].prompts))
            return eng_error(ENG_EINVAL, "image %d: no embedding or prompts", i);
        for (int k = 0; k < images[i].n_prompts; k++)
            if (!images[i].prompts[k].target)
                return eng_error(ENG_EINVAL, "image %d, prompt %d: no target", i, k);
    }
    tr_step_stats st = {0};
    int rc = hn_train_forward(s->hn, p, task_emb, s->A, s->B);
    if (!rc)
        rc = eng_sam_train_set_lora(s->dec, s->cfg.alpha / (float)s->cfg.rank,
                                    (const float *const *)s->A, (const float *const *)s->B);
    size_t k_out = 0;
    for (int i = 0; i < n_images && !rc; i++) {
        const tr_image *im = &images[i];
        if (!im->n_prompts)
            continue;
        if ((rc = eng_sam_train_set_image(s->dec, im->embedding, &im->info)))
            break;
        for (int k = 0; k < im->n_prompts && !rc; k++, k_out++) {
            const tr_prompt *tp = &im->prompts[k];
            const int C = tp->multimask ? 3 : 1;
            float pi[3], di[3];
            tr_loss_parts parts;
            rc = eng_sam_train_forward(s->dec, &tp->prompt, tp->multimask, pi, s->logits);
            if (!rc)
                rc = tr_loss_mask(s->logits, pi, tp->target, C, LR, &o->loss, o->prompt_weight,
                                  &parts, s->dl, di);
            if (!rc)
                rc = eng_sam_train_backward(s->dec, s->dl, di);
            if (rc) {
                char why[512];
                snprintf(why, sizeof why, "%s", eng_last_error());
                rc = eng_error(rc, "image %d, prompt %d: %s", i, k, why);
                break;
            }
            st.prompts++;
            st.loss += parts.loss;
            st.focal += parts.focal[parts.best];
            st.dice += parts.dice[parts.best];
            for (int m = 0; m < C; m++)
                st.iou_mse += parts.iou_mse[m] / C;
            if (low_res)
                memcpy(low_res + k_out * 3 * LR, s->logits, (size_t)C * LR * sizeof(float));
            if (iou)
                memcpy(iou + k_out * 3, pi, (size_t)C * sizeof(float));
        }
    }
    if (!rc)
        rc = eng_sam_train_grads(s->dec, s->dA, s->dB);
    if (!rc && o->l2 > 0)
        st.l2 = tr_loss_l2((const float *const *)s->A, (const float *const *)s->B, s->an, s->bn, NT,
                           o->l2, o->task_weight, s->dA, s->dB);
    if (!rc)
        rc = hn_train_backward(s->hn, p, (const float *const *)s->dA, (const float *const *)s->dB,
                               grad);
    if (!rc && stats)
        *stats = st;
    return rc;
}
