/*
 * train/cocoeval.h: the COCO detection / instance segmentation protocol,
 * computing what pycocotools' COCOeval computes (evaluate, accumulate,
 * summarize) for iouType "segm" and "bbox".
 *
 *   tr_coco_dets *d; tr_coco_dets_load(&d, gt, "pred.json");
 *   tr_cocoeval_params p; tr_cocoeval_params_default(&p, TR_IOU_SEGM);
 *   tr_cocoeval *e; tr_cocoeval_run(&e, gt, d, &p);  -> e->stats[0] is AP
 *
 * The protocol, as pycocotools runs it (so numbers agree to rounding):
 *   - IoU thresholds .50:.05:.95, recall thresholds 0:.01:1 (101 points),
 *     area ranges all / small (< 32^2) / medium / large (> 96^2, bounds
 *     inclusive), maxDets 1 / 10 / 100;
 *   - per image and category, detections by score (stable on ties), at most
 *     100; segm IoU from the masks, bbox IoU from the boxes; against a crowd
 *     ground truth the IoU is intersection / area(detection), and a crowd
 *     may match many detections;
 *   - greedy matching per IoU threshold, ground truths that are crowd or
 *     outside the area range matched last and their detections ignored;
 *     unmatched detections outside the area range ignored;
 *   - precision made monotone, read at the 101 recall points; a
 *     category/area with no ground truth is -1 and left out of the means;
 *   - the 12 summarize() numbers: AP, AP50, AP75, AP small/medium/large,
 *     AR@1, AR@10, AR@100, AR small/medium/large.
 * Results follow COCO.loadRes: ids 1.. in file order; when the first result
 * has a `bbox`, every area is the box's width x height (and a result
 * without `segmentation` gets its box as a polygon), else every area is the
 * mask's pixel count and a missing box is the mask's (pycocotools' toBbox).
 * For bbox evaluation every result is its box, area included (as when
 * COCOeval is given the results as boxes): segmentation-only results are
 * evaluated as the boxes of their masks.
 */
#ifndef TASAM_TRAIN_COCOEVAL_H
#define TASAM_TRAIN_COCOEVAL_H

#include <stdint.h>
#include <stdio.h>

#include "engine/rle.h"
#include "train/coco.h"

typedef enum tr_iou_type { TR_IOU_SEGM = 0, TR_IOU_BBOX = 1 } tr_iou_type;

/* One detection (a result). */
typedef struct tr_coco_det {
    int64_t id;          /* 1-based, in the order added */
    int image;           /* index into the ground truth's images */
    int64_t category_id; /* may name no ground-truth category: never evaluated */
    double score;
    double area;    /* as COCO.loadRes sets it (see above); bbox evaluation uses w x h */
    double bbox[4]; /* [x, y, w, h] */
    eng_rle mask;   /* the image's h x w */
} tr_coco_det;

typedef struct tr_coco_dets {
    int n, cap;
    tr_coco_det *d;
    int box_mode;           /* -1 until the first result; 1: areas from boxes (loadRes) */
    int n_unknown_category; /* results whose category_id is not in the ground truth */
} tr_coco_dets;

int tr_coco_dets_create(tr_coco_dets **out);
void tr_coco_dets_destroy(tr_coco_dets *d);

/* Add one result on ground-truth image index `image` (bounds-checked).
 * mask (copied) and bbox may each be NULL, not both; a mask must be the
 * image's size. */
int tr_coco_dets_add(tr_coco_dets *d, const tr_coco *gt, int image, int64_t category_id,
                     double score, const eng_rle *mask, const double *bbox);

/* Read a results file (a JSON list of {image_id, category_id, score,
 * segmentation and/or bbox}) against the ground truth; every error names
 * the file and the result. */
int tr_coco_dets_load(tr_coco_dets **out, const tr_coco *gt, const char *path);
int tr_coco_dets_load_buffer(tr_coco_dets **out, const tr_coco *gt, const char *json, size_t len,
                             const char *name);

/* COCOeval.params, the parts that may be changed. */
typedef struct tr_cocoeval_params {
    tr_iou_type iou_type;
    const int64_t *img_ids; /* NULL: every ground-truth image */
    int n_img_ids;
    const int64_t *cat_ids; /* NULL: every ground-truth category */
    int n_cat_ids;
} tr_cocoeval_params;

void tr_cocoeval_params_default(tr_cocoeval_params *p, tr_iou_type t);

enum { TR_EVAL_T = 10, TR_EVAL_R = 101, TR_EVAL_A = 4, TR_EVAL_M = 3 };

typedef struct tr_cocoeval {
    tr_iou_type iou_type;
    double stats[12];  /* summarize(); -1 where nothing was defined */
    int n_imgs;        /* images evaluated */
    int K;             /* categories evaluated */
    int64_t *cat_ids;  /* [K], sorted */
    double *cat_ap;    /* [K]: AP@[.50:.95], area all, 100 dets; -1 without ground truth */
    double *cat_ap50;  /* [K]: AP@.50, area all, 100 dets */
    double *precision; /* [T][R][K][A][M], COCOeval.eval['precision'] */
    double *recall;    /* [T][K][A][M] */
} tr_cocoeval;

int tr_cocoeval_run(tr_cocoeval **out, const tr_coco *gt, const tr_coco_dets *dt,
                    const tr_cocoeval_params *p);
void tr_cocoeval_destroy(tr_cocoeval *e);

/* The 12 summarize() lines, in pycocotools' format. */
void tr_cocoeval_print(const tr_cocoeval *e, FILE *f);

/* Short names of the 12 stats: "AP", "AP50", ..., "ARl". */
const char *tr_cocoeval_stat_name(int i);

/* np.mean(v[v > -1]) with numpy's pairwise summation, so the same bits as
 * numpy; -1 if no value is > -1. */
double tr_cocoeval_mean_defined(const double *v, size_t n);

#endif
