/*
 * engine/sam_train.h: training SAM's mask decoder through a LoRA adapter.
 *
 * SAM stays frozen; what is trained is an adapter on any of the decoder's
 * ENG_SAM_LORA_TARGETS linear layers (eng_sam_lora_targets()), each
 *   y = x W^T + b + scale (x A^T) B^T,   A [r, in], B [out, r],
 * and what comes out is d loss / d A and d loss / d B (B unscaled, as a
 * hypernetwork emits it). The caller computes the loss from the logits this
 * forward returns (train/loss.h) and hands back its gradient.
 *
 * A training handle keeps what the backward needs, which the serving
 * decoder (eng_sam_decode) does not: it has its own workspace on the
 * model's decoder backend, planned once at create for the model's
 * max_points and a mask input, so steps allocate nothing and the serving
 * path is untouched. It borrows the model's weights; a model may have
 * several handles, but a handle and the model's own calls must not run at
 * the same time on two threads (one owner thread, as for the model).
 *
 * One step for one task:
 *   eng_sam_train_set_lora(t, scale, A, B);      factors; gradients zeroed
 *   for each image:
 *     eng_sam_train_set_image(t, embedding, &info);
 *     for each prompt:
 *       eng_sam_train_forward(t, &prompt, 1, iou, logits);
 *       ... loss and its gradient (train/loss.h) ...
 *       eng_sam_train_backward(t, d_logits, d_iou);   gradients accumulate
 *   eng_sam_train_grads(t, dA, dB);
 * Prompts are the serving path's (points, a box, a mask_input, e.g. the
 * previous round's low-res logits, treated as a constant as SAM's training
 * does); `lora` in a prompt is ignored. Prompts without a mask input share
 * the first layer's image-side projections, computed once per image and
 * adapter.
 *
 * The backward needs a backend with backward ops (the CPU backend; see
 * eng_backend_has_backward): create fails with ENG_EUNSUP elsewhere. Every
 * function that can fail returns 0 or a negative ENG_E* code with a message
 * (eng_last_error()).
 */
#ifndef TASAM_ENGINE_SAM_TRAIN_H
#define TASAM_ENGINE_SAM_TRAIN_H

#include <stddef.h>

#include "sam.h"

typedef struct eng_sam_train eng_sam_train;

/* A training handle on model m (borrowed: must outlive the handle) for
 * adapters of rank `rank` (1..ENG_SAM_LORA_MAX_RANK). Starts with no
 * adapter (plain SAM) and no image. */
int eng_sam_train_create(eng_sam_train **out, eng_sam *m, int rank);
void eng_sam_train_destroy(eng_sam_train *t);

/* Workspace bytes planned at create (activations kept for the backward). */
size_t eng_sam_train_workspace_bytes(const eng_sam_train *t);

/* The adapter the next prompts run under: for each target t, A[t]
 * [rank, in] and B[t] [out, rank] host f32, B unscaled, both NULL for a
 * layer not adapted (A and B themselves may be NULL: no adapter at all);
 * the layer adds scale (x A^T) B^T. Values must be finite. Zeroes the
 * gradients (they are with respect to these factors) and drops the image's
 * first-layer side and any pending forward. */
int eng_sam_train_set_lora(eng_sam_train *t, float scale, const float *const *A,
                           const float *const *B);

/* Zero the accumulated gradients. */
int eng_sam_train_zero_grad(eng_sam_train *t);

/* The image the next prompts are on: its embedding [256, 64, 64] (CHW, as
 * eng_sam_encode gives it) host f32, and its sizes (for the prompts'
 * coordinates). */
int eng_sam_train_set_image(eng_sam_train *t, const float *embedding, const eng_sam_imginfo *info);

/* Forward of one prompt on the current image under the current adapter,
 * keeping the activations for eng_sam_train_backward. multimask 1: the C = 3
 * multimask outputs (masks 1..3), 0: the single mask 0 (C = 1), as
 * eng_sam_decode slices them. iou [C] and low_res [C, 256, 256] host f32
 * (either may be NULL). */
int eng_sam_train_forward(eng_sam_train *t, const eng_sam_prompt *p, int multimask, float *iou,
                          float *low_res);

/* Backward of the last forward: d_low_res [C, 256, 256] = d loss / d
 * logits and d_iou [C] = d loss / d iou (host f32; d_iou may be NULL: no
 * loss on the IoU head). Adds d loss / d A and d loss / d B into the
 * gradients. One backward per forward (ENG_EINVAL without a forward). */
int eng_sam_train_backward(eng_sam_train *t, const float *d_low_res, const float *d_iou);

/* The accumulated gradients as host f32: dA[t] [rank, in] and dB[t]
 * [out, rank] (with respect to the unscaled B) for every adapted target t;
 * entries for other targets, and NULL entries, are not touched. */
int eng_sam_train_grads(eng_sam_train *t, float *const *dA, float *const *dB);

#endif
