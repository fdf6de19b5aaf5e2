/*
 * engine/amg.h: automatic mask generation ("segment everything"): SAM's
 * SamAutomaticMaskGenerator (segment_anything/automatic_mask_generator.py
 * and utils/amg.py), computed the same way and giving the same masks in the
 * same order.
 *
 * For each crop box (the whole image, then crop_n_layers layers of 2^i x 2^i
 * overlapping crops, each crop resized and encoded on its own) a grid of
 * single-point prompts goes through the batched decoder (three masks each).
 * Masks whose predicted IoU is not above pred_iou_thresh are dropped before
 * they are upscaled; the others are upscaled to the crop, scored for
 * stability at +-stability_score_offset, thresholded at 0, boxed, dropped
 * when their box touches an inner crop edge, and kept as COCO RLE at the
 * image size. Box NMS (torchvision's batched_nms) runs per crop on the
 * predicted IoU, then across crops preferring smaller crops, then, with
 * min_mask_region_area, holes and islands below that area are removed and
 * NMS runs again preferring masks that did not change.
 *
 * Memory: one crop's embedding, one mask of the crop's size and the RLE of
 * the masks kept so far; nothing grows with the number of prompts but that
 * RLE, which `max_mask_bytes` bounds.
 *
 * Numbers follow the reference's float32/float64 arithmetic where it
 * decides a mask's fate: thresholds compare in float32 (pred_iou,
 * stability, the mask at 0), NMS computes IoU in float32 and compares it
 * with the threshold in double, the grid is computed in double as numpy
 * does, crop boxes with the reference's integer rounding.
 */
#ifndef TASAM_ENGINE_AMG_H
#define TASAM_ENGINE_AMG_H

#include <stddef.h>
#include <stdint.h>

#include "image.h"
#include "rle.h"
#include "sam.h"

#define ENG_AMG_MAX_POINTS_PER_SIDE  128 /* 16384 prompts a crop */
#define ENG_AMG_MAX_POINTS_PER_BATCH 256 /* prompts per decoder pass */
#define ENG_AMG_MAX_CROP_LAYERS      4   /* 1 + 4 + 16 + 64 + 256 crops */
#define ENG_AMG_MAX_GRID_POINTS      (ENG_AMG_MAX_POINTS_PER_SIDE * ENG_AMG_MAX_POINTS_PER_SIDE)

/* An explicit point grid: n points (x, y) in [0, 1], scaled to each crop. */
typedef struct eng_amg_grid {
    int n;            /* points, 1 .. ENG_AMG_MAX_GRID_POINTS */
    const double *xy; /* [n, 2] (borrowed) */
} eng_amg_grid;

/* The generator's arguments, with its names; eng_amg_defaults gives the
 * reference's defaults. */
typedef struct eng_amg_params {
    int points_per_side;                /* grid side (32); 0 when `grids` is given */
    int points_per_batch;               /* prompts per decoder pass (64) */
    double pred_iou_thresh;             /* keep masks with predicted IoU above this (0.88) */
    double stability_score_thresh;      /* ... and stability at least this (0.95) */
    double stability_score_offset;      /* stability thresholds at +-offset (1.0) */
    double box_nms_thresh;              /* NMS IoU within a crop (0.7) */
    int crop_n_layers;                  /* crop layers after the whole image (0) */
    double crop_nms_thresh;             /* NMS IoU across crops (0.7) */
    double crop_overlap_ratio;          /* overlap of the first layer's crops (512 / 1500) */
    int crop_n_points_downscale_factor; /* layer i's side is points_per_side / factor^i (1) */
    int min_mask_region_area;           /* remove holes and islands below this area (0: off) */
    int n_grids;                        /* explicit grids, one per layer (crop_n_layers + 1) */
    const eng_amg_grid *grids;          /* [n_grids] (borrowed), or NULL */
} eng_amg_params;

void eng_amg_defaults(eng_amg_params *p);

/* The scalar parameters by the reference's name, for parsers (the API's
 * `everything` object, the CLI's --points-per-side ...): where each lives in
 * eng_amg_params, its type and a one-line help with the default. */
typedef struct eng_amg_param_desc {
    const char *name; /* "points_per_side" */
    int is_int;       /* 1: int field, 0: double field */
    size_t offset;    /* offsetof(eng_amg_params, ...) */
    const char *help; /* "points along each side of the grid, 1..128 (32)" */
} eng_amg_param_desc;

/* The table (*n entries; point_grids is not in it). */
const eng_amg_param_desc *eng_amg_param_table(size_t *n);

/* Check every parameter against the reference's constraints and this
 * engine's bounds (ENG_AMG_MAX_*). Returns 0, or ENG_EINVAL with the message
 * naming the parameter and `field` (64 bytes, may be NULL) set to its name
 * ("points_per_side", "point_grids[1][7]", ...). */
int eng_amg_check(const eng_amg_params *p, char *field);

/* What to segment. */
typedef struct eng_amg_input {
    const eng_image *image;   /* RGB pixels; NULL when only the embedding is at hand (then no
                                 crop layers) */
    int width, height;        /* the image size (needed when image is NULL) */
    const float *embedding;   /* [256,64,64] of the whole image, or NULL: encoded here */
    const char *key;          /* resident-embedding key of it (eng_sam_decode_cached), or NULL */
    const eng_sam_lora *lora; /* task adapter on every prompt, or NULL */
    size_t max_mask_bytes;    /* bound on the RLE of the masks kept at once (0: none) */
} eng_amg_input;

/* Where a run is, for progress output. */
typedef struct eng_amg_progress {
    int crop, n_crops;       /* crop being worked on (0-based) */
    int points_done, points; /* prompts of this crop decoded so far, and in all */
    size_t kept;             /* masks kept so far (all crops, before cross-crop NMS) */
} eng_amg_progress;

typedef struct eng_amg_hooks {
    /* polled between decoder passes, crops and NMS steps: non-zero stops the
     * run with ENG_ECANCELED (e.g. a request's deadline). May be NULL. */
    int (*cancel)(void *arg);
    void (*progress)(void *arg, const eng_amg_progress *p); /* may be NULL */
    void *arg;
} eng_amg_hooks;

/* One mask, as one record of the reference's generate() output. */
typedef struct eng_amg_mask {
    eng_rle rle;           /* the mask at the image size (COCO RLE, column-major) */
    int box[4];            /* x0, y0, x1, y1 with x1, y1 the last pixel (batched_mask_to_box);
                              the reference's bbox is [x0, y0, x1 - x0, y1 - y0] */
    float predicted_iou;   /* the IoU head's score (the task's adapted head under a task) */
    float stability_score; /* 0 where no logit is above -offset (the reference: NaN) */
    double point[2];       /* the prompt, image pixels */
    int crop_box[4];       /* x0, y0, x1, y1 (x1, y1 exclusive) of the crop it came from */
} eng_amg_mask;

typedef struct eng_amg_stats {
    int crops;             /* crops processed */
    int64_t prompts;       /* prompts decoded */
    int64_t upscaled;      /* masks upscaled (predicted IoU above pred_iou_thresh) */
    int64_t candidates;    /* masks that passed every per-mask filter (before NMS) */
    double encode_ms;      /* image encoder (crops; the whole image when not given) */
    double decode_ms;      /* prompt encoder + mask decoder */
    double postprocess_ms; /* upscaling, thresholds, boxes, RLE */
    double nms_ms;         /* NMS and small-region removal */
} eng_amg_stats;

typedef struct eng_amg_result {
    size_t n;            /* masks */
    size_t cap;          /* allocated records */
    eng_amg_mask *masks; /* [n], the reference's output order */
    eng_amg_stats stats;
} eng_amg_result;

void eng_amg_result_free(eng_amg_result *r);

/* Run the generator on `in` with SAM model m. Returns 0 with *out filled
 * (zeroed first; free with eng_amg_result_free even on failure), or a
 * negative code: ENG_EINVAL (bad parameters, see eng_amg_check),
 * ENG_ECANCELED (hooks->cancel), ENG_ELIMIT (max_mask_bytes), ENG_ENOMEM, or
 * the model's own errors. hooks may be NULL. */
int eng_amg_run(eng_sam *m, const eng_amg_input *in, const eng_amg_params *p,
                const eng_amg_hooks *hooks, eng_amg_result *out);

/* ---- the building blocks, each as its counterpart in utils/amg.py or
 * torchvision (exposed for tests and for callers that assemble their own) */

/* build_point_grid: xy [n*n, 2], row by row (y outer), numpy's linspace. */
void eng_amg_point_grid(int n, double *xy);

/* generate_crop_boxes for a w x h image: up to `cap` boxes x0, y0, x1, y1
 * (x1, y1 exclusive) and their layers; returns the number of crops
 * (1 + 4 + ... + 4^n_layers), or ENG_EINVAL when cap is too small. */
int eng_amg_crop_boxes(int w, int h, int n_layers, double overlap_ratio, int (*boxes)[4],
                       int *layers, int cap);

/* batched_mask_to_box of a row-major w x h mask: x0, y0, x1, y1 (inclusive),
 * all 0 for an empty mask. */
void eng_amg_mask_box(const uint8_t *mask, int w, int h, int box[4]);

/* is_box_near_crop_edge: 1 when a box (in the crop's frame) lies within 20
 * pixels of an edge of crop_box that is not an edge of the w x h image. */
int eng_amg_box_near_crop_edge(const int box[4], const int crop_box[4], int w, int h);

/* uncrop_masks + mask_to_rle: the COCO RLE of a row-major cw x ch mask
 * placed at (x0, y0) in an otherwise empty w x h image. */
int eng_amg_rle_uncrop(const uint8_t *mask, int cw, int ch, int x0, int y0, int w, int h,
                       eng_rle *out);

/* torchvision's batched_nms with one category: keep [n_keep] are the
 * indices of the boxes kept (x0, y0, x1, y1 as float32), in decreasing
 * score order; a box is dropped when its IoU (float32, no +1) with a kept
 * box is above `thresh`. Ties keep the order of torchvision on the CPU: a
 * stable sort, and past 1000 boxes (its per-class path) libstdc++'s
 * std::sort of the kept indices. keep holds n entries. Returns 0, or
 * ENG_ECANCELED / ENG_ENOMEM. */
int eng_amg_nms(const float (*boxes)[4], const float *scores, int n, double thresh, int *keep,
                int *n_keep, const eng_amg_hooks *hooks);

/* remove_small_regions in place on a row-major w x h 0/1 mask: holes = 1
 * fills background components (8-connected, as cv2's
 * connectedComponentsWithStats) smaller than area_thresh; holes = 0 removes
 * such foreground components, keeping the largest when all are small.
 * *changed = 1 when any component was below the threshold. */
int eng_amg_remove_small_regions(uint8_t *mask, int w, int h, int64_t area_thresh, int holes,
                                 int *changed);

/* The cross-crop NMS of _generate_masks: scores 1 / area(crop_box), so a
 * mask from a smaller crop wins; filters and reorders r. */
int eng_amg_crop_nms(eng_amg_result *r, double thresh, const eng_amg_hooks *hooks);

/* postprocess_small_regions on a w x h image: each mask's holes then
 * islands below min_area removed, NMS at `thresh` preferring unchanged
 * masks; filters and reorders r. */
int eng_amg_small_regions(eng_amg_result *r, int w, int h, int min_area, double thresh,
                          const eng_amg_hooks *hooks);

#endif
