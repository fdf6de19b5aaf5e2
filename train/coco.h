/*
 * train/coco.h: a COCO instances dataset (the JSON of `instances_*.json` and
 * its image folder) held in memory for training and evaluation, with task
 * texts per category.
 *
 * What is read, as pycocotools' COCO() and COCOeval read it:
 *   images      id (integer, unique), width, height (1..65535, at most
 *               ENG_IMAGE_DEFAULT_MAX_PIXELS pixels), file_name (relative,
 *               no "..", checked to exist in the image folder unless
 *               TR_COCO_NO_IMAGES)
 *   categories  id (unique), name, optional supercategory, optional `tasks`
 *               (a list of phrasings; without it "segment every <name>" and
 *               a few variants), optional `heldout_tasks` (the phrasings of
 *               `tasks` that training never saw) and `split` ("seen",
 *               "heldout_combination", "no_objects": how evaluation groups
 *               the category); at least one category
 *   annotations id (unique), image_id and category_id (present above),
 *               segmentation as polygons ([[x0,y0,x1,y1,...], ...], merged;
 *               each vertex within one pixel of the image; a part of fewer
 *               than 3 points adds nothing, where pycocotools would read a
 *               list whose first part has 4 numbers as boxes), uncompressed RLE
 *               ({"size":[h,w],"counts":[...]}) or compressed RLE
 *               ({"size":[h,w],"counts":"..."}) of the image's size,
 *               iscrowd (0/1, default 0), area and bbox (default: the
 *               mask's; COCOeval's area ranges use `area`)
 * Masks are kept as RLE at the image's size. Crowd regions are kept and
 * marked: they are no training target and COCO evaluation ignores matches
 * to them. Any other field is ignored.
 *
 * Every error names the file and the entry ("instances.json: annotations[12]
 * (id 345): segmentation: polygon 0 vertex 3 (-7.5, 20) is outside the 640x480
 * image") and leaves nothing allocated.
 */
#ifndef TASAM_TRAIN_COCO_H
#define TASAM_TRAIN_COCO_H

#include <stddef.h>
#include <stdint.h>

#include "engine/image.h"
#include "engine/rle.h"

/* How evaluation groups a category (the synthetic set marks them). */
typedef enum tr_split {
    TR_SPLIT_SEEN = 0,      /* an attribute combination training saw */
    TR_SPLIT_HELDOUT = 1,   /* a combination never seen in training */
    TR_SPLIT_NO_OBJECTS = 2 /* a task with no matching object anywhere */
} tr_split;

typedef struct tr_coco_image {
    int64_t id;
    int width, height;
    char *file_name; /* as in the JSON, relative to the image folder */
    int first_ann;   /* this image's annotations are ann_index[first_ann ..  */
    int n_anns;      /* .. first_ann + n_anns), in file order */
} tr_coco_image;

typedef struct tr_coco_category {
    int64_t id;
    char *name;
    char *supercategory; /* "" when absent */
    int n_tasks;
    char **tasks;          /* phrasings, each trimmed and non-empty */
    uint8_t *task_heldout; /* [n_tasks]: 1 = a phrasing held out from training */
    int tasks_generated;   /* 1: no `tasks` in the file; made from the name */
    tr_split split;
} tr_coco_category;

typedef struct tr_coco_ann {
    int64_t id;
    int image;      /* index into images */
    int category;   /* index into categories */
    int iscrowd;    /* 1: a crowd region (no training target; ignored by COCOeval) */
    double area;    /* the JSON's `area`, else the mask's pixel count */
    double bbox[4]; /* the JSON's `bbox` [x, y, w, h], else the mask's box */
    eng_rle mask;   /* h x w of the image */
} tr_coco_ann;

typedef struct tr_coco {
    char *json_path; /* for messages */
    char *image_dir; /* NULL when loaded without images */
    int n_images, n_categories, n_anns;
    tr_coco_image *images;        /* in file order */
    tr_coco_category *categories; /* in file order */
    tr_coco_ann *anns;            /* in file order */
    int *ann_index;               /* [n_anns]: annotation indices grouped by image */
    /* id -> index lookups, sorted by id */
    int *image_by_id, *category_by_id;
} tr_coco;

enum {
    TR_COCO_NO_IMAGES = 1, /* do not look for image files (evaluation only) */
};

/* Load `json_path` with images in `image_dir` (may be NULL with
 * TR_COCO_NO_IMAGES). 0 or a negative ENG_E* code with eng_last_error(). */
int tr_coco_load(tr_coco **out, const char *json_path, const char *image_dir, int flags);

/* Same from memory; `name` stands for the file in messages. */
int tr_coco_load_buffer(tr_coco **out, const char *json, size_t len, const char *name,
                        const char *image_dir, int flags);

/* A dataset folder as `tasam-train synth` writes one: DIR/instances.json
 * and DIR/images/. */
int tr_coco_open_dir(tr_coco **out, const char *dir, int flags);

void tr_coco_destroy(tr_coco *c);

/* Index of the image / category with this id, or -1. */
int tr_coco_image_index(const tr_coco *c, int64_t id);
int tr_coco_category_index(const tr_coco *c, int64_t id);

/* The image file's path (image_dir/file_name) into buf; 0 or ENG_ELIMIT when
 * it does not fit. */
int tr_coco_image_path(const tr_coco *c, int image, char *buf, size_t cap);

/* Decode image `image` to RGB; its size must be the JSON's width x height
 * (an error naming the file and entry otherwise). */
int tr_coco_load_image(const tr_coco *c, int image, eng_image *out);

/* Union of the masks of category `category`'s non-crowd instances in image
 * `image`, into a row-major height x width 0/1 buffer; *n_instances (may be
 * NULL) gets how many there were. */
void tr_coco_category_mask(const tr_coco *c, int image, int category, uint8_t *mask,
                           int *n_instances);

/* The default phrasings of a category without `tasks`: "segment every
 * <name>" and variants with the plural (n of them; the strings are
 * malloc'd into out[0..n), at most TR_COCO_MAX_DEFAULT_TASKS). */
#define TR_COCO_MAX_DEFAULT_TASKS 5
int tr_coco_default_tasks(const char *name, char **out, int *n);

/* The English plural of a category name ("bus" -> "buses", "person" ->
 * "people"), into buf. */
void tr_coco_plural(const char *name, char *buf, size_t cap);

const char *tr_split_name(tr_split s);

#endif
