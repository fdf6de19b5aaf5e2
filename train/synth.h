/*
 * train/synth.h: the procedural synthetic dataset (`tasam-train synth`):
 * images of coloured, textured shapes on textured backgrounds, with
 * categories that are attribute combinations and several phrasings each,
 * written as COCO instances (compressed RLE masks) and PNG images.
 *
 * Objects have four attributes:
 *   shape   circle, square, triangle, star, ring, hexagon
 *   colour  red, green, blue, yellow, purple
 *   texture solid, striped, dotted
 *   size    small (radius 7-10% of the short side), large (15-21%)
 * An image holds min..max objects drawn in order, later ones occluding
 * earlier ones; each object keeps at least 40% of its pixels visible, and
 * its mask is what is visible (a ring's hole shows what is behind it).
 *
 * Categories (ids in this order, the same for every seed):
 *   "circle"                 shape                     6
 *   "red shape"              colour                    5
 *   "red circle"             colour + shape           30
 *   "striped circle"         texture + shape          18
 *   "small striped circle"   size + texture + shape   36
 * An object is an instance of every category it matches, so one object is
 * annotated once per matching category (five annotations, one mask).
 *
 * Held out, chosen from the seed: three (colour, shape) pairs never drawn
 * in train ("heldout_combination": their colour + shape categories exist
 * only in val, whose images do draw them) and two pairs drawn nowhere
 * ("no_objects": categories in val with no instance at all). Phrasings:
 * train categories carry six templates ("segment every red circle", "red
 * circles", ...); val categories carry those and two more, listed in
 * `heldout_tasks`. Every image id i is drawn from (seed, split, i) alone, so
 * a larger set extends a smaller one with the same seed, and the same seed
 * gives the same bytes.
 */
#ifndef TASAM_TRAIN_SYNTH_H
#define TASAM_TRAIN_SYNTH_H

#include <stddef.h>
#include <stdint.h>

#include "engine/rle.h"
#include "train/coco.h"

enum { TR_SYNTH_SHAPES = 6, TR_SYNTH_COLORS = 5, TR_SYNTH_TEXTURES = 3, TR_SYNTH_SIZES = 2 };
enum { TR_SYNTH_TRAIN = 0, TR_SYNTH_VAL = 1 };
#define TR_SYNTH_MAX_OBJECTS       16
#define TR_SYNTH_HELDOUT_PAIRS     3
#define TR_SYNTH_ABSENT_PAIRS      2
#define TR_SYNTH_TEMPLATES         8 /* phrasing templates ... */
#define TR_SYNTH_HELDOUT_TEMPLATES 2 /* ... the last two only in val */

extern const char *const tr_synth_shape_names[TR_SYNTH_SHAPES];
extern const char *const tr_synth_color_names[TR_SYNTH_COLORS];
extern const char *const tr_synth_texture_names[TR_SYNTH_TEXTURES];
extern const char *const tr_synth_size_names[TR_SYNTH_SIZES];
/* The nominal RGB of each colour (objects jitter around it). */
extern const uint8_t tr_synth_color_rgb[TR_SYNTH_COLORS][3];

typedef struct tr_synth_config {
    uint64_t seed;
    int train_images, val_images;
    int width, height;            /* every image's size */
    int min_objects, max_objects; /* per image, 1..TR_SYNTH_MAX_OBJECTS */
} tr_synth_config;

/* seed 0, 500 train and 100 val images of 320x240, 2-6 objects each. */
void tr_synth_config_default(tr_synth_config *c);

/* 0, or ENG_EINVAL with a message naming the bad setting. */
int tr_synth_config_check(const tr_synth_config *c);

/* The held-out pairs a seed picks: pair = colour * TR_SYNTH_SHAPES + shape. */
typedef struct tr_synth_plan {
    int heldout[TR_SYNTH_HELDOUT_PAIRS]; /* drawn in val only */
    int absent[TR_SYNTH_ABSENT_PAIRS];   /* drawn nowhere */
} tr_synth_plan;

void tr_synth_plan_make(uint64_t seed, tr_synth_plan *p);

/* A category: each attribute's index, or -1 for "any". */
typedef struct tr_synth_category {
    int64_t id;
    int shape, color, texture, size;
    char name[64];   /* "small striped circle" */
    char plural[72]; /* "small striped circles" */
    tr_split split;
} tr_synth_category;

/* Every category the split lists (train: the seen ones; val: all), in id
 * order; *out is malloc'd. */
int tr_synth_categories(const tr_synth_plan *p, int split, tr_synth_category **out, int *n);

/* Phrasing template t (0..TR_SYNTH_TEMPLATES) of a category, into buf. */
void tr_synth_task(const tr_synth_category *k, int t, char *buf, size_t cap);

typedef struct tr_synth_object {
    int shape, color, texture, size;
    double cx, cy, r, angle; /* centre, radius (pixels), rotation (radians) */
    eng_rle mask;            /* visible pixels, h x w */
    uint64_t area;           /* visible pixel count (> 0) */
} tr_synth_object;

typedef struct tr_synth_image {
    int w, h;
    uint8_t *rgb; /* h x w x 3 */
    int n_objects;
    tr_synth_object obj[TR_SYNTH_MAX_OBJECTS];
} tr_synth_image;

/* Draw image `index` of `split`. */
int tr_synth_render(const tr_synth_config *c, const tr_synth_plan *p, int split, int index,
                    tr_synth_image *out);
void tr_synth_image_free(tr_synth_image *im);

/* 1 when the object is an instance of the category. */
int tr_synth_matches(const tr_synth_category *k, const tr_synth_object *o);

/* Called after each image: split name, images done, images in the split. */
typedef void (*tr_synth_progress_fn)(void *ctx, const char *split, int done, int total);

/* Write DIR/train/{instances.json,images/} and DIR/val/... . Refuses to
 * overwrite an existing instances.json unless `force`. */
int tr_synth_write(const tr_synth_config *c, const char *dir, int force,
                   tr_synth_progress_fn progress, void *ctx);

#endif
