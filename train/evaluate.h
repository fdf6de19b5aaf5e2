/*
 * train/evaluate.h: how well a hypernetwork's adapters segment a dataset's
 * tasks (`tasam-train eval`, and `run`'s validation).
 *
 * mIoU, per (image, task) pair: `prompts` clicks drawn as training draws
 * them (train/sample.h, without boxes: a uniform pixel, a grid point or a
 * pixel of any annotated object, never chosen by the task) from a fixed
 * seed, each decoded by the serving path (eng_sam_decode under the task's
 * adapter, three masks); a click's answer is its mask with the highest
 * predicted IoU (as a client picks it), and where iou_thresh > 0 only when
 * that prediction reaches it (the adapted IoU head then also says a click
 * is not on the task's objects; by default the mask alone says so, by being
 * empty). The pair's IoU is that of the union of the answers and the union
 * of the task's ground truth in the image, at the image's resolution (1
 * when both are empty); present_miou averages the pairs whose task has an
 * instance in the image (an adapter that answers nothing scores 0 there). The clicks depend on
 * (seed, image, category) only, so every hypernetwork, and a category's seen and held-out
 * phrasings, answer the same clicks.
 *
 * Pairs, chosen from the seed: on each image, up to max_present of the
 * categories with an instance there, `absent` categories with none, and one
 * of the categories marked `no_objects` (in turn); each pair with one of
 * the category's training phrasings and, with heldout_phrasings, again with
 * one of its held-out phrasings.
 *
 * AP: COCO segm AP@[.50:.95] (train/cocoeval.h) of task-only everything
 * mode (engine/amg.h under the task's adapter, a grid of
 * ap_points_per_side^2 points, the generator's filters at
 * ap_pred_iou_thresh and ap_stability_thresh, masks ranked by the adapted
 * IoU head), each
 * result's category being the task's; every AP category runs on every
 * image evaluated (the protocol counts a category's missed ground truth on
 * every image), with its first training phrasing, and seen categories
 * again with their first held-out phrasing.
 *
 * Both are reported overall and apart for four groups (tr_eval_group):
 * seen categories with a training phrasing, the same with a held-out
 * phrasing, held-out attribute combinations, and no-object tasks (where AP
 * is undefined and `dets_per_image`, the masks everything mode still
 * returns, says how well the task suppresses them).
 */
#ifndef TASAM_TRAIN_EVALUATE_H
#define TASAM_TRAIN_EVALUATE_H

#include <jansson.h>
#include <signal.h>
#include <stdint.h>

#include "engine/sam.h"
#include "hypernet/hypernet.h"
#include "train/coco.h"
#include "train/embed.h"
#include "train/tasks.h"

typedef struct tr_eval_config {
    uint64_t seed;              /* the pairs' and clicks' seed (0) */
    int prompts;                /* clicks per pair (4) */
    int max_present;            /* present categories per image, 0: all (4) */
    int absent;                 /* absent categories per image (1) */
    int max_images;             /* the first N images, 0: all (0) */
    float iou_thresh;           /* a click's mask is kept at this predicted IoU; 0: always (0) */
    int heldout_phrasings;      /* also evaluate a held-out phrasing per pair (1) */
    int ap;                     /* compute AP (1) */
    int ap_points_per_side;     /* everything mode's grid for AP (16) */
    int ap_max_categories;      /* seen categories for AP, 0: all; chosen from the seed (the
                                   held-out combinations and no-object ones always run) (0) */
    double ap_pred_iou_thresh;  /* everything mode's filters, as a server may configure them: */
    double ap_stability_thresh; /* predicted IoU above, stability at least (SAM's 0.88, 0.95) */
} tr_eval_config;

void tr_eval_config_default(tr_eval_config *c);
/* ENG_EINVAL naming the field out of range. */
int tr_eval_config_check(const tr_eval_config *c);

typedef enum tr_eval_group {
    TR_EVAL_SEEN = 0,            /* seen categories, training phrasings */
    TR_EVAL_HELDOUT_PHRASING,    /* seen categories, held-out phrasings */
    TR_EVAL_HELDOUT_COMBINATION, /* attribute combinations training never saw */
    TR_EVAL_NO_OBJECTS,          /* tasks with no matching object anywhere */
    TR_EVAL_GROUPS
} tr_eval_group;

const char *tr_eval_group_name(tr_eval_group g);

/* One task (a category's phrasing) evaluated. */
typedef struct tr_eval_task {
    int category, task; /* indices into the dataset */
    tr_eval_group group;
    int pairs;              /* images it was evaluated on for mIoU */
    double iou_sum;         /* sum of their IoUs */
    int present_pairs;      /* those where the task has an instance */
    double present_iou_sum; /* sum of their IoUs */
    double ap;              /* its AP (-1: not evaluated or no ground truth) */
    double ap50;            /* its AP@.5 (-1 likewise) */
    int ap_images;          /* images everything mode ran on for it (0: no AP) */
    long ap_dets;           /* masks everything mode returned over them */
} tr_eval_task;

typedef struct tr_eval_result {
    double miou;         /* mean IoU over every pair */
    int pairs;           /* pairs evaluated */
    double present_miou; /* mean IoU over the pairs whose task is in the image */
    int present_pairs;
    double group_miou[TR_EVAL_GROUPS]; /* -1 where a group has no pair */
    int group_pairs[TR_EVAL_GROUPS];
    double ap;                             /* COCO AP of the training phrasings, -1: not computed */
    double ap50;                           /* AP@.5 likewise */
    double group_ap[TR_EVAL_GROUPS];       /* mean per-category AP, -1: none defined */
    double dets_per_image[TR_EVAL_GROUPS]; /* everything mode's masks per image and task */
    int images;                            /* images evaluated */
    int n_tasks;
    tr_eval_task *tasks; /* [n_tasks] */
    double seconds;      /* wall time */
} tr_eval_result;

void tr_eval_result_free(tr_eval_result *r);

/* Called after each task: tasks done, tasks in all. */
typedef void (*tr_eval_progress_fn)(void *ctx, int done, int total);

/* Evaluate the hypernetwork p (its adapters made on the host, applied
 * unmerged) on ds with model m, the images' embeddings from emb (filled)
 * and the task texts from tasks. ENG_ECANCELED between tasks once *stop is
 * set. r is zeroed first; free it with tr_eval_result_free on success and
 * failure alike. */
int tr_eval_run(tr_eval_result *r, eng_sam *m, tr_embed *emb, const tr_coco *ds,
                const tr_tasks *tasks, const hn_params *p, const tr_eval_config *c,
                tr_eval_progress_fn progress, void *ctx, volatile sig_atomic_t *stop);

/* The result as JSON: {"miou", "pairs", "ap", "ap50", "images", "groups":
 * {name: {"miou", "pairs", "ap", "dets_per_image"}}} plus, with per_task,
 * "per_task": [{"category", "category_id", "task", "group", "miou",
 * "pairs", "ap", "ap50"}]. Numbers that are undefined are null. */
json_t *tr_eval_json(const tr_eval_result *r, const tr_coco *ds, int per_task);

#endif
