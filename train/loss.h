/*
 * train/loss.h: the training loss on the mask decoder's outputs, and its
 * gradient with respect to the logits and the predicted IoU.
 *
 * For one prompt with C mask outputs (3 multimask, or 1), logits x_m
 * [C, n] (the 256x256 low-res logits, n = 65536) and a target y [n] (0/1,
 * in the low-res frame of the padded 1024x1024 input):
 *
 *   p_m     = sigmoid(x_m)
 *   focal_m = mean over pixels of a_t (1 - p_t)^gamma BCEwithLogits(x_m, y),
 *             p_t = p y + (1 - p)(1 - y), a_t = alpha y + (1 - alpha)(1 - y)
 *   dice_m  = 1 - (2 sum(p_m y) + 1) / (sum(p_m) + sum(y) + 1)
 *   iou_m   = (iou_pred_m - IoU(x_m > 0, y > 0))^2    (IoU 0 when the union is empty)
 *   best    = argmin_m (w_focal focal_m + w_dice dice_m)   (the first on a tie)
 *   loss    = w_focal focal_best + w_dice dice_best + w_iou mean_m iou_m
 *
 * with w_focal 20, w_dice 1, w_iou 1, alpha 0.25, gamma 2 by default: SAM
 * 2's MultiStepMultiMasksAndIous (supervise_all_iou, one step), the loss
 * the reference training golden (../shared/fixtures, "Training") is
 * computed with. Only the best mask's logits get the focal and dice
 * gradient; the IoU term reaches every prediction. The thresholded IoU is
 * a constant for the gradient. Sums over pixels are taken in double.
 */
#ifndef TASAM_TRAIN_LOSS_H
#define TASAM_TRAIN_LOSS_H

#include <stddef.h>
#include <stdint.h>

#define TR_LOSS_MAX_MASKS 4

typedef struct tr_loss_weights {
    float focal;       /* weight of the focal term (20) */
    float dice;        /* weight of the dice term (1) */
    float iou;         /* weight of the IoU-prediction MSE (1) */
    float focal_alpha; /* a_t on positive pixels (0.25) */
    float focal_gamma; /* exponent of (1 - p_t) (2) */
} tr_loss_weights;

/* The defaults above. */
void tr_loss_weights_default(tr_loss_weights *w);

/* One prompt's loss and its parts. */
typedef struct tr_loss_parts {
    double loss;                          /* the total, unscaled */
    int C;                                /* mask outputs */
    int best;                             /* the mask the focal and dice terms train */
    double focal[TR_LOSS_MAX_MASKS];      /* per mask, unweighted */
    double dice[TR_LOSS_MAX_MASKS];       /* per mask, unweighted */
    double iou_mse[TR_LOSS_MAX_MASKS];    /* per mask, unweighted */
    double actual_iou[TR_LOSS_MAX_MASKS]; /* IoU(x_m > 0, y) */
} tr_loss_parts;

/* The loss of logits [C, n] and iou_pred [C] against target [n] (non-zero
 * is foreground), 1 <= C <= TR_LOSS_MAX_MASKS. d_logits [C, n] and d_iou
 * [C] (either may be NULL) receive grad_scale times the gradient (e.g.
 * 1 / prompts, for a batch's mean). ENG_EINVAL naming the fault for
 * non-finite logits or predictions, a bad C or n, or bad weights. */
int tr_loss_mask(const float *logits, const float *iou_pred, const uint8_t *target, int C, size_t n,
                 const tr_loss_weights *w, float grad_scale, tr_loss_parts *out, float *d_logits,
                 float *d_iou);

/* The optional L2 penalty on generated LoRA factors: lambda times the sum
 * of squares of every A[t] (a_n[t] values) and B[t] (b_n[t] values) for t
 * < n_targets (NULL entries skipped). Adds grad_scale * 2 lambda A into
 * dA[t] and likewise for B when those are given (non-NULL). Returns the
 * penalty. */
double tr_loss_l2(const float *const *A, const float *const *B, const size_t *a_n,
                  const size_t *b_n, int n_targets, float lambda, float grad_scale,
                  float *const *dA, float *const *dB);

#endif
