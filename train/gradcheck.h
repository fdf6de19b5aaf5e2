/*
 * train/gradcheck.h: recomputing a training golden (`tasam-train grad`).
 *
 * A training golden is a JSON file of cases and a safetensors file of
 * tensors, in the layout of ../shared/fixtures' golden_train_tiny.*:
 *
 *   JSON: {"image_size": [h, w], "rank": r, "alpha": a,
 *          "targets": [layer names...],            (optional: informative)
 *          "cases": [{"name": "pos_point",
 *                     "prompt": {"points": [[x, y], ...], "labels": [1, ...],
 *                                "box": [x0, y0, x1, y1]},   (each part optional)
 *                     "best": 0, "loss": 2.2}, ...]}        (optional references)
 *   safetensors: image_embedding [256, 64, 64]; per case CASE.target
 *          [256, 256] (u8 or float, non-zero = foreground) and, for each
 *          adapted layer, CASE.<layer>.lora_A [r, in] and .lora_B [out, r]
 *          (any float dtype); optionally the reference results
 *          (CASE.loss, .low_res_logits, .iou_predictions, .<layer>.grad_A/B).
 *
 * Prompts are in original-image pixels; the loss is train/loss.h's with the
 * default weights on the 3 multimask outputs; the adapter scale is alpha /
 * rank. Every field is validated: a malformed file is an error naming the
 * file, the case and the field.
 */
#ifndef TASAM_TRAIN_GRADCHECK_H
#define TASAM_TRAIN_GRADCHECK_H

#include <stddef.h>

#include "engine/ckpt.h"
#include "engine/sam.h"
#include "engine/sam_train.h"
#include "train/loss.h"

#define TR_GC_MAX_CASES  256 /* results are held until the dump is written */
#define TR_GC_MAX_POINTS 64
#define TR_GC_NAME_MAX   64

typedef struct tr_gc_case {
    char name[TR_GC_NAME_MAX]; /* letters, digits, '_', '-' */
    int n_points;
    float points[2 * TR_GC_MAX_POINTS]; /* x, y in original pixels */
    int labels[TR_GC_MAX_POINTS];
    int has_box;
    float box[4];
    int ref_best;    /* the JSON's "best", -1 when absent */
    double ref_loss; /* the JSON's "loss", NAN when absent */
} tr_gc_case;

typedef struct tr_gc_cases {
    int img_w, img_h; /* original image size */
    int rank;
    float alpha;
    int n;
    tr_gc_case *cases; /* [n] */
} tr_gc_cases;

/* Parse cases from JSON text (`label` names it in messages). */
int tr_gc_cases_parse(const char *json, size_t len, const char *label, tr_gc_cases **out);
/* Read and parse a cases file. */
int tr_gc_cases_load(const char *path, tr_gc_cases **out);
void tr_gc_cases_free(tr_gc_cases *c);

/* One case recomputed. */
typedef struct tr_gc_result {
    tr_loss_parts parts;
    float iou[3];                        /* iou_predictions */
    float *logits;                       /* [3, 256, 256] */
    int adapted[ENG_SAM_LORA_TARGETS];   /* layers the case adapts */
    float *grad_A[ENG_SAM_LORA_TARGETS]; /* [r, in] where adapted */
    float *grad_B[ENG_SAM_LORA_TARGETS]; /* [out, r] where adapted */
} tr_gc_result;

/* Recompute case `idx` of `cs` on training handle t (of rank cs->rank):
 * the embedding and the case's target and factors from `golden`. `res` is
 * filled (free with tr_gc_result_free). Errors name the golden file, the
 * case and the tensor. */
int tr_gc_run(eng_sam_train *t, const eng_ckpt *golden, const tr_gc_cases *cs, int idx,
              tr_gc_result *res);
void tr_gc_result_free(tr_gc_result *r);

/* The relative L2 error |a - b| / |b| over n values (|a - b| when b is
 * 0), in double. */
double tr_rel_l2(const float *a, const float *b, size_t n);

#endif
