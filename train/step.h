/*
 * train/step.h: the gradient of a training step, the core `tasam-train run`
 * calls: for one task (its text embedding) and prompts on one or more
 * images, the loss and the gradient of every hypernetwork parameter.
 *
 *   hypernetwork(task) -> A_t, B_t            (hypernet/hypernet_train.h)
 *   for each prompt: SAM's decoder with the adapter -> logits, IoU
 *                    loss and its gradient     (train/loss.h)
 *                    the decoder's backward    (engine/sam_train.h)
 *   dA_t, dB_t (+ the optional L2 on A, B) -> the hypernetwork's backward
 *
 * SAM stays frozen. A batch of several tasks is several tr_step_task calls
 * into one gradient (they accumulate), with prompt_weight = 1 / (prompts in
 * the batch) and task_weight = 1 / (tasks in the batch) making the
 * objective a mean. A prompt's mask_input (the previous round's logits in
 * refinement rounds) is a constant, as in SAM's training.
 */
#ifndef TASAM_TRAIN_STEP_H
#define TASAM_TRAIN_STEP_H

#include <stdint.h>

#include "engine/sam.h"
#include "hypernet/hypernet.h"
#include "train/loss.h"

/* One training prompt. */
typedef struct tr_prompt {
    eng_sam_prompt prompt; /* points, box, mask_input; its lora is ignored */
    const uint8_t *target; /* [256, 256] 0/1 in the low-res frame of the padded input */
    int multimask;         /* 1: the best of the 3 multimask outputs, 0: the single mask */
} tr_prompt;

/* The prompts on one image. */
typedef struct tr_image {
    const float *embedding; /* [256, 64, 64] (eng_sam_encode's layout) */
    eng_sam_imginfo info;
    const tr_prompt *prompts;
    int n_prompts;
} tr_image;

typedef struct tr_step_opts {
    tr_loss_weights loss; /* tr_loss_weights_default */
    float prompt_weight;  /* each prompt's loss enters the objective times this (1) */
    float l2;             /* lambda of the L2 on the generated A and B (0: off) */
    float task_weight;    /* the L2 term enters times this (1) */
} tr_step_opts;

void tr_step_opts_default(tr_step_opts *o);

/* Sums over the prompts of a call (unweighted), for logs. */
typedef struct tr_step_stats {
    int prompts;
    double loss;    /* sum of the prompts' losses */
    double focal;   /* sum of focal[best] */
    double dice;    /* sum of dice[best] */
    double iou_mse; /* sum of mean_m iou_mse[m] */
    double l2;      /* the L2 penalty of the task's factors (0 when off) */
} tr_step_stats;

typedef struct tr_step tr_step;

/* Buffers for hypernetworks of configuration cfg on model m (borrowed; its
 * decoder backend must have backward ops, i.e. the CPU backend). */
int tr_step_create(tr_step **out, eng_sam *m, const hn_hypernet_config *cfg);
void tr_step_destroy(tr_step *s);

/* One task: grad += d objective / d p, where objective = prompt_weight *
 * sum of the prompts' losses + task_weight * l2 * |factors|^2; stats (may
 * be NULL) receive the sums. low_res [total prompts, 3, 256, 256] and iou
 * [total prompts, 3] (either may be NULL) receive each prompt's outputs
 * (the first C = 3 or 1 of each slot), e.g. for the next refinement round. */
int tr_step_task(tr_step *s, const hn_params *p, const float *task_emb, const tr_image *images,
                 int n_images, const tr_step_opts *o, hn_params *grad, tr_step_stats *stats,
                 float *low_res, float *iou);

#endif
