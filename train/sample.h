/*
 * train/sample.h: training examples drawn from a COCO dataset as the
 * server is used: an image, a task (one phrasing of one category), and a
 * prompt, with the mask the adapted decoder should answer in SAM's
 * 256 x 256 low-res frame.
 *
 * The rules (ARCHITECTURE.md, "Training and hot swap"):
 *   - a point prompt is a click anywhere: a uniform pixel, a point of SAM's
 *     everything-mode grid, or a pixel of a random annotated object of any
 *     category. Where it lands never depends on the task, so the prompt
 *     does not give the answer away;
 *   - a point inside an instance of the task's category targets that
 *     instance (the smallest, where instances overlap); a point anywhere
 *     else (another object, background) targets an empty mask with IoU
 *     target 0; a point inside only a crowd region of the task's category
 *     has no target and is drawn again;
 *   - box prompts are boxes of the task's instances with SAM's box noise
 *     (each side moved by N(0, 10% of the box side), at most 20 pixels);
 *   - a refinement round adds a point drawn uniformly from the error region
 *     of the previous prediction, positive on a missed pixel, negative on a
 *     wrong one, as SAM was trained;
 *   - everything is drawn from a tr_rng, so a seed repeats the examples.
 *
 * Coordinates are SAM's: a point (x, y) in original-image pixels names the
 * pixel (floor(x + 0.5), floor(y + 0.5)) (SAM adds 0.5 to reach the pixel
 * centre); boxes are x0, y0, x1, y1 with x1, y1 the last pixel inside.
 */
#ifndef TASAM_TRAIN_SAMPLE_H
#define TASAM_TRAIN_SAMPLE_H

#include <stdint.h>

#include "engine/rle.h"
#include "train/coco.h"
#include "train/rng.h"

#define TR_LOWRES     256  /* side of SAM's low-res mask frame */
#define TR_SAM_INPUT  1024 /* side of SAM's padded input */
#define TR_MAX_POINTS 16   /* points in one prompt (the first + refinement rounds) */

/*
 * The low-res frame of a w x h image: SAM resizes it to rw x rh (long side
 * 1024, eng_resize_shape), pads bottom/right to 1024 x 1024, and the
 * decoder's low-res logits see that at 256 x 256, a cell per 4 x 4 input
 * pixels. Cell (i, j) thus covers the original-image rectangle
 * [4j w/rw, (4j+4) w/rw) x [4i h/rh, (4i+4) h/rh) (the resize maps pixel
 * edges linearly); cells past rw x rh are padding.
 */
typedef struct tr_frame {
    int w, h;   /* original image */
    int rw, rh; /* resized, long side 1024 */
} tr_frame;

void tr_frame_make(int w, int h, tr_frame *f);

/*
 * The low-res target of a mask, the rule the loss expects
 * (../shared/fixtures "Training": CASE.target): cell (i, j) is 1 when the
 * mask covers at least half of the cell's rectangle (above), by exact area
 * (each original pixel a unit square, partly covered pixels counted by the
 * part inside); padding cells are 0. This is the box-filter (area) resize
 * of the mask to the 1024 frame, padded, averaged over 4 x 4 and
 * thresholded at 0.5. out: [256 * 256] u8 0/1, row-major.
 */
int tr_target_lowres(const uint8_t *mask, int w, int h, uint8_t *out);

/* Same from an RLE (NULL: the empty mask, all zeros). */
int tr_target_lowres_rle(const eng_rle *mask, int w, int h, uint8_t *out);

/* What a point prompt lands on, for a task's category. */
typedef enum tr_hit {
    TR_HIT_EMPTY = 0,    /* background or another category: empty target */
    TR_HIT_INSTANCE = 1, /* an instance of the category: *ann is its index */
    TR_HIT_CROWD = 2     /* only a crowd region of the category: no target */
} tr_hit;

tr_hit tr_point_hit(const tr_coco *ds, int image, int category, float x, float y, int *ann);

typedef enum tr_point_source {
    TR_SRC_UNIFORM = 0, /* a uniform pixel */
    TR_SRC_GRID = 1,    /* a point of the everything-mode grid */
    TR_SRC_OBJECT = 2,  /* a pixel of a random annotated object, any category */
    TR_SRC_BOX = 3,     /* a box prompt on a task instance */
} tr_point_source;

typedef struct tr_sample_config {
    double p_box;      /* a box prompt when the task has an instance (default 0.15) */
    double p_grid;     /* a grid point (default 0.25) */
    double p_object;   /* a pixel of a random object (default 0.45); else uniform */
    int grid_side;     /* points per side of the grid (SAM's default 32) */
    double p_absent;   /* a task with no instance in the image (default 0.25) */
    int heldout_tasks; /* 1: phrasings marked held out may be drawn (default 0) */
    int max_tries;     /* redraws of a point that lands on a crowd region (default 64) */
} tr_sample_config;

void tr_sample_config_default(tr_sample_config *c);

/* One training example. */
typedef struct tr_example {
    int image;    /* index into ds->images */
    int category; /* the task's category */
    int task;     /* index into the category's tasks */
    int is_box;   /* 1: the prompt is `box` (points only from refinement rounds) */
    tr_point_source source;
    int n_points;
    float points[TR_MAX_POINTS][2]; /* x, y in original pixels */
    int labels[TR_MAX_POINTS];      /* 1 positive, 0 negative */
    float box[4];                   /* x0, y0, x1, y1 */
    int target;                     /* annotation index, -1: the empty mask (IoU target 0) */
} tr_example;

/* Draw an example on image `image`; ENG_ENOTFOUND when the image offers
 * none (no category has a usable task). */
int tr_sample_example(const tr_coco *ds, int image, const tr_sample_config *cfg, tr_rng *rng,
                      tr_example *ex);

/* A prompt for a given image, category and task (index into its tasks), as
 * tr_sample_example draws them: a box on one of the category's instances
 * there with probability p_box, else a click from a task-independent
 * source, with its target. For evaluation with a fixed seed, and the
 * second half of tr_sample_example. */
int tr_sample_prompt(const tr_coco *ds, int image, int category, int task,
                     const tr_sample_config *cfg, tr_rng *rng, tr_example *ex);

/* The example's target in the low-res frame (tr_target_lowres_rle of the
 * targeted instance, zeros for -1). */
int tr_example_target(const tr_coco *ds, const tr_example *ex, uint8_t *out);

/*
 * A refinement round: a point drawn uniformly from the error region of
 * `logits` (the previous low-res prediction, [256 * 256], foreground where
 * > 0) against `target` ([256 * 256] 0/1), cells inside the image only;
 * within the chosen cell a uniform pixel whose centre lies in it (the
 * pixel under the cell's centre when none does). Appends it to ex (label
 * 1 on a missed cell, 0 on a wrong one) and returns 1; returns 0 when the
 * prediction has no error or ex is full.
 */
int tr_sample_refine(const tr_coco *ds, tr_example *ex, const uint8_t *target, const float *logits,
                     tr_rng *rng);

#endif
