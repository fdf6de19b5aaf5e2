/*
 * train/evaluate.c: mIoU and AP of a hypernetwork's adapters on a dataset
 * (evaluate.h).
 */
#include "train/evaluate.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/amg.h"
#include "engine/error.h"
#include "hypernet/hypernet_train.h"
#include "train/cocoeval.h"
#include "train/rng.h"
#include "train/sample.h"

#define NT ENG_SAM_LORA_TARGETS
#define LR ENG_SAM_LOWRES_FLOATS

void tr_eval_config_default(tr_eval_config *c)
{
    memset(c, 0, sizeof *c);
    c->seed = 0;
    c->prompts = 4;
    c->max_present = 4;
    c->absent = 1;
    c->max_images = 0;
    c->iou_thresh = 0;
    c->heldout_phrasings = 1;
    c->ap = 1;
    c->ap_points_per_side = 16;
    c->ap_max_categories = 0;
    c->ap_pred_iou_thresh = 0.88;
    c->ap_stability_thresh = 0.95;
}

int tr_eval_config_check(const tr_eval_config *c)
{
    if (c->prompts < 1 || c->prompts > 256)
        return eng_error(ENG_EINVAL, "eval: prompts per pair must be 1..256, not %d", c->prompts);
    if (c->max_present < 0 || c->absent < 0 || c->max_images < 0 || c->ap_max_categories < 0)
        return eng_error(ENG_EINVAL, "eval: counts must not be negative");
    if (!(c->iou_thresh >= 0 && c->iou_thresh <= 1))
        return eng_error(ENG_EINVAL, "eval: the IoU threshold must be in [0, 1]");
    if (c->ap && (c->ap_points_per_side < 1 || c->ap_points_per_side > 64))
        return eng_error(ENG_EINVAL, "eval: points per side must be 1..64, not %d",
                         c->ap_points_per_side);
    if (!(c->ap_pred_iou_thresh >= 0 && c->ap_pred_iou_thresh <= 1) ||
        !(c->ap_stability_thresh >= 0 && c->ap_stability_thresh <= 1))
        return eng_error(ENG_EINVAL, "eval: everything mode's thresholds must be in [0, 1]");
    return 0;
}

const char *tr_eval_group_name(tr_eval_group g)
{
    static const char *const names[TR_EVAL_GROUPS] = {"seen", "heldout_phrasing",
                                                      "heldout_combination", "no_objects"};
    return g >= 0 && g < TR_EVAL_GROUPS ? names[g] : "?";
}

void tr_eval_result_free(tr_eval_result *r)
{
    if (!r)
        return;
    free(r->tasks);
    memset(r, 0, sizeof *r);
}

static double ev__now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---- choosing what to evaluate ---- */

typedef struct ev_pair {
    int task;  /* index into the result's tasks */
    int image; /* dataset image */
} ev_pair;

/* The pairs' working state. */
typedef struct ev_plan {
    int *task_of; /* [rows of tasks]: result task index of each phrasing, -1 */
    ev_pair *pairs;
    int n_pairs, cap_pairs;
    int cap_tasks; /* entries allocated in the result's tasks */
} ev_plan;

static tr_eval_group ev__group(const tr_coco_category *k, int heldout_phrasing)
{
    if (k->split == TR_SPLIT_NO_OBJECTS)
        return TR_EVAL_NO_OBJECTS;
    if (k->split == TR_SPLIT_HELDOUT)
        return TR_EVAL_HELDOUT_COMBINATION;
    return heldout_phrasing ? TR_EVAL_HELDOUT_PHRASING : TR_EVAL_SEEN;
}

/* The result task of (category k, phrasing t), added when new; -1 on OOM. */
static int ev__task(tr_eval_result *r, ev_plan *pl, const tr_tasks *tk, const tr_coco *ds, int k,
                    int t, int heldout)
{
    const int row = tk->first[k] + t;
    if (pl->task_of[row] >= 0)
        return pl->task_of[row];
    if (r->n_tasks == pl->cap_tasks) {
        int cap = pl->cap_tasks ? 2 * pl->cap_tasks : 64;
        tr_eval_task *n = realloc(r->tasks, (size_t)cap * sizeof *n);
        if (!n)
            return -1;
        r->tasks = n;
        pl->cap_tasks = cap;
    }
    tr_eval_task *e = &r->tasks[r->n_tasks];
    memset(e, 0, sizeof *e);
    e->category = k;
    e->task = t;
    e->group = ev__group(&ds->categories[k], heldout);
    e->ap = e->ap50 = -1;
    return pl->task_of[row] = r->n_tasks++;
}

static int ev__add_pair(ev_plan *pl, int task, int image)
{
    if (pl->n_pairs == pl->cap_pairs) {
        int cap = pl->cap_pairs ? 2 * pl->cap_pairs : 256;
        ev_pair *n = realloc(pl->pairs, (size_t)cap * sizeof *n);
        if (!n)
            return -1;
        pl->pairs = n;
        pl->cap_pairs = cap;
    }
    pl->pairs[pl->n_pairs++] = (ev_pair){task, image};
    return 0;
}

/* A phrasing of category k, uniformly among the held-out ones (heldout) or
 * the others; -1 when there is none. */
static int ev__phrasing(const tr_coco_category *k, int heldout, tr_rng *rng)
{
    int n = 0;
    for (int t = 0; t < k->n_tasks; t++)
        n += !k->task_heldout[t] == !heldout;
    if (!n)
        return -1;
    int pick = (int)tr_rng_below(rng, (uint64_t)n);
    for (int t = 0; t < k->n_tasks; t++)
        if (!k->task_heldout[t] == !heldout && pick-- == 0)
            return t;
    return -1;
}

/* Pick up to `want` of list[0..n) in place (a partial Fisher-Yates). */
static int ev__pick(int *list, int n, int want, tr_rng *rng)
{
    if (want <= 0 || want > n)
        want = n;
    for (int i = 0; i < want; i++) {
        int j = i + (int)tr_rng_below(rng, (uint64_t)(n - i));
        int x = list[i];
        list[i] = list[j];
        list[j] = x;
    }
    return want;
}

static int ev__pair_cmp(const void *a, const void *b)
{
    const ev_pair *x = a, *y = b;
    return x->task != y->task ? (x->task > y->task) - (x->task < y->task)
                              : (x->image > y->image) - (x->image < y->image);
}

static int ev__plan(tr_eval_result *r, ev_plan *pl, const tr_coco *ds, const tr_tasks *tk,
                    const tr_eval_config *c, int n_images)
{
    const int K = ds->n_categories;
    int *present = malloc(((size_t)K + 1) * sizeof *present);
    int *absent = malloc(((size_t)K + 1) * sizeof *absent);
    int *noobj = malloc(((size_t)K + 1) * sizeof *noobj);
    int *chosen = malloc(((size_t)K + 1) * sizeof *chosen);
    uint8_t *state = malloc((size_t)K + 1);
    int rc = 0, n_noobj = 0;
    if (!present || !absent || !noobj || !chosen || !state)
        rc = eng_error(ENG_ENOMEM, "eval: out of memory");
    for (int k = 0; k < K && !rc; k++)
        if (ds->categories[k].split == TR_SPLIT_NO_OBJECTS)
            noobj[n_noobj++] = k;
    for (int i = 0; i < n_images && !rc; i++) {
        tr_rng rng;
        tr_rng_seed(&rng, c->seed, 0x45564C00ull + (uint64_t)i);
        const tr_coco_image *im = &ds->images[i];
        memset(state, 0, (size_t)K);
        for (int j = 0; j < im->n_anns; j++) {
            const tr_coco_ann *a = &ds->anns[ds->ann_index[im->first_ann + j]];
            state[a->category] = a->iscrowd ? (state[a->category] ? state[a->category] : 2) : 1;
        }
        int np = 0, na = 0, nc = 0;
        for (int k = 0; k < K; k++) {
            if (state[k] == 1)
                present[np++] = k;
            else if (state[k] == 0 && ds->categories[k].split != TR_SPLIT_NO_OBJECTS)
                absent[na++] = k;
        }
        np = ev__pick(present, np, c->max_present, &rng);
        na = c->absent ? ev__pick(absent, na, c->absent, &rng) : 0;
        for (int q = 0; q < np; q++)
            chosen[nc++] = present[q];
        for (int q = 0; q < na; q++)
            chosen[nc++] = absent[q];
        if (n_noobj)
            chosen[nc++] = noobj[i % n_noobj];
        for (int q = 0; q < nc && !rc; q++) {
            const int k = chosen[q];
            const tr_coco_category *cat = &ds->categories[k];
            for (int ho = 0; ho <= (c->heldout_phrasings && cat->split == TR_SPLIT_SEEN); ho++) {
                int t = ev__phrasing(cat, ho, &rng);
                if (t < 0 && !ho)
                    t = 0; /* every phrasing held out: evaluate the first */
                if (t < 0)
                    continue;
                int ti = ev__task(r, pl, tk, ds, k, t, ho);
                if (ti < 0 || ev__add_pair(pl, ti, i))
                    rc = eng_error(ENG_ENOMEM, "eval: out of memory");
            }
        }
    }
    free(present);
    free(absent);
    free(noobj);
    free(chosen);
    free(state);
    if (!rc)
        qsort(pl->pairs, (size_t)pl->n_pairs, sizeof *pl->pairs, ev__pair_cmp);
    return rc;
}

/* ---- the adapters ---- */

/* Host factors of one task and the model's adapter made from them. */
typedef struct ev_adapter {
    hn_train *hn;
    float *A[NT], *B[NT];
    float *mem;
} ev_adapter;

static int ev__adapter_init(ev_adapter *a, const hn_hypernet_config *cfg)
{
    memset(a, 0, sizeof *a);
    size_t total = 0, an, bn;
    for (int t = 0; t < NT; t++)
        total += hn_factor_size(cfg, t, &an, &bn);
    int rc = hn_train_create(&a->hn, cfg);
    if (rc)
        return rc;
    if (!(a->mem = malloc((total + 1) * sizeof(float))))
        return eng_error(ENG_ENOMEM, "eval: out of memory for adapters");
    float *p = a->mem;
    for (int t = 0; t < NT; t++) {
        hn_factor_size(cfg, t, &an, &bn);
        if (!an)
            continue;
        a->A[t] = p, p += an;
        a->B[t] = p, p += bn;
    }
    return 0;
}

static void ev__adapter_free(ev_adapter *a)
{
    hn_train_destroy(a->hn);
    free(a->mem);
}

/* The adapter of one task embedding on model m. */
static int ev__lora(ev_adapter *a, eng_sam *m, const hn_params *p, const float *task_emb,
                    eng_sam_lora **out)
{
    int rc = hn_train_forward(a->hn, p, task_emb, a->A, a->B);
    if (!rc)
        rc = eng_sam_lora_create(m, p->cfg.rank, p->cfg.alpha / (float)p->cfg.rank,
                                 (const float *const *)a->A, (const float *const *)a->B, 0, out);
    return rc;
}

/* ---- mIoU ---- */

/* Buffers of the mIoU pass, sized for the largest image. */
typedef struct ev_bufs {
    float *emb;                 /* [256*64*64] */
    eng_sam_prompt *prompts;    /* [P] */
    tr_example *ex;             /* [P] */
    float *iou;                 /* [P, 3] */
    float *low_res;             /* [P, 3, LR] */
    float *keep;                /* [P, LR]: the kept masks' logits */
    uint8_t *masks, *pred, *gt; /* [P, px], [px], [px] */
    size_t px;
} ev_bufs;

static void ev__bufs_free(ev_bufs *b)
{
    free(b->emb);
    free(b->prompts);
    free(b->ex);
    free(b->iou);
    free(b->low_res);
    free(b->keep);
    free(b->masks);
    free(b->pred);
    free(b->gt);
}

static int ev__bufs_init(ev_bufs *b, const tr_coco *ds, int n_images, int P)
{
    memset(b, 0, sizeof *b);
    for (int i = 0; i < n_images; i++) {
        size_t px = (size_t)ds->images[i].width * ds->images[i].height;
        if (px > b->px)
            b->px = px;
    }
    b->emb = malloc(ENG_SAM_EMB_FLOATS * sizeof *b->emb);
    b->prompts = calloc((size_t)P, sizeof *b->prompts);
    b->ex = calloc((size_t)P, sizeof *b->ex);
    b->iou = malloc((size_t)P * 3 * sizeof *b->iou);
    b->low_res = malloc((size_t)P * 3 * LR * sizeof *b->low_res);
    b->keep = malloc((size_t)P * LR * sizeof *b->keep);
    b->masks = malloc((size_t)P * b->px + 1);
    b->pred = malloc(b->px + 1);
    b->gt = malloc(b->px + 1);
    if (!b->emb || !b->prompts || !b->ex || !b->iou || !b->low_res || !b->keep || !b->masks ||
        !b->pred || !b->gt) {
        ev__bufs_free(b);
        return eng_error(ENG_ENOMEM, "eval: out of memory for %d prompts", P);
    }
    return 0;
}

/* The IoU of one (image, task) pair under adapter lora. */
static int ev__pair_iou(eng_sam *m, tr_embed *emb, const tr_coco *ds, const tr_eval_task *t,
                        int image, const eng_sam_lora *lora, const tr_eval_config *c, ev_bufs *b,
                        double *iou_out, int *present)
{
    eng_sam_imginfo info;
    int rc = tr_embed_get(emb, image, b->emb, &info);
    if (rc)
        return rc;
    tr_sample_config sc;
    tr_sample_config_default(&sc);
    sc.p_box = 0; /* a box would name the instance */
    tr_rng rng;
    /* the clicks depend on (seed, image, category) only */
    tr_rng_seed(&rng, c->seed,
                ((uint64_t)1 << 62) | ((uint64_t)image << 24) | (uint64_t)t->category);
    const int P = c->prompts;
    for (int k = 0; k < P && !rc; k++) {
        rc = tr_sample_prompt(ds, image, t->category, t->task, &sc, &rng, &b->ex[k]);
        b->prompts[k] = (eng_sam_prompt){.n_points = b->ex[k].n_points,
                                         .points = &b->ex[k].points[0][0],
                                         .labels = b->ex[k].labels,
                                         .lora = lora};
    }
    if (!rc)
        rc = eng_sam_decode(m, b->emb, &info, b->prompts, P, 1, b->iou, b->low_res);
    if (rc)
        return rc;
    int kept = 0;
    for (int k = 0; k < P; k++) {
        int best = 0;
        for (int j = 1; j < 3; j++)
            if (b->iou[k * 3 + j] > b->iou[k * 3 + best])
                best = j;
        if (c->iou_thresh <= 0 || b->iou[k * 3 + best] >= c->iou_thresh)
            memcpy(b->keep + (size_t)kept++ * LR, b->low_res + ((size_t)k * 3 + best) * LR,
                   LR * sizeof(float));
    }
    const size_t px = (size_t)info.orig_w * info.orig_h;
    memset(b->pred, 0, px);
    if (kept && (rc = eng_sam_postprocess(m, b->keep, kept, &info, b->masks, NULL)))
        return rc;
    for (int k = 0; k < kept; k++)
        for (size_t q = 0; q < px; q++)
            b->pred[q] |= b->masks[(size_t)k * px + q];
    int n_inst = 0;
    tr_coco_category_mask(ds, image, t->category, b->gt, &n_inst);
    *present = n_inst > 0;
    uint64_t inter = 0, uni = 0;
    for (size_t q = 0; q < px; q++) {
        inter += b->pred[q] & b->gt[q];
        uni += b->pred[q] | b->gt[q];
    }
    *iou_out = uni ? (double)inter / (double)uni : 1.0;
    return 0;
}

static int ev__miou(tr_eval_result *r, const ev_plan *pl, eng_sam *m, tr_embed *emb,
                    const tr_coco *ds, const tr_tasks *tk, const hn_params *p,
                    const tr_eval_config *c, tr_eval_progress_fn progress, void *ctx,
                    volatile sig_atomic_t *stop, int n_images)
{
    ev_bufs b;
    ev_adapter ad;
    int rc = ev__bufs_init(&b, ds, n_images, c->prompts);
    if (rc)
        return rc;
    if ((rc = ev__adapter_init(&ad, &p->cfg))) {
        ev__bufs_free(&b);
        ev__adapter_free(&ad);
        return rc;
    }
    for (int q = 0; q < pl->n_pairs && !rc;) {
        tr_eval_task *t = &r->tasks[pl->pairs[q].task];
        if (stop && *stop) {
            rc = eng_error(ENG_ECANCELED, "cancelled");
            break;
        }
        eng_sam_lora *lora = NULL;
        if ((rc = ev__lora(&ad, m, p, tr_tasks_get(tk, t->category, t->task), &lora)))
            break;
        const int task = pl->pairs[q].task;
        for (; q < pl->n_pairs && pl->pairs[q].task == task && !rc; q++) {
            double iou;
            int present;
            if ((rc = ev__pair_iou(m, emb, ds, t, pl->pairs[q].image, lora, c, &b, &iou, &present)))
                break;
            t->iou_sum += iou;
            t->pairs++;
            t->present_iou_sum += present ? iou : 0;
            t->present_pairs += present;
        }
        eng_sam_lora_destroy(m, lora);
        if (!rc && progress)
            progress(ctx, task + 1, r->n_tasks);
    }
    ev__bufs_free(&b);
    ev__adapter_free(&ad);
    return rc;
}

/* ---- AP: task-only everything mode ---- */

static int ev__amg_cancel(void *arg)
{
    volatile sig_atomic_t *stop = arg;
    return stop && *stop;
}

/* The categories AP evaluates: all; or, with ap_max_categories, every
 * category that is not a seen one (held-out combinations and no-object
 * tasks are few and reported apart) and that many seen ones chosen from the
 * seed; in file order. */
static int ev__ap_categories(const tr_coco *ds, const tr_eval_config *c, int *cats)
{
    const int K = ds->n_categories;
    int n = 0, ns = 0;
    for (int k = 0; k < K; k++)
        if (ds->categories[k].split == TR_SPLIT_SEEN)
            cats[ns++] = k;
    if (c->ap_max_categories && c->ap_max_categories < ns) {
        tr_rng rng;
        tr_rng_seed(&rng, c->seed, 0x41500000ull);
        ns = ev__pick(cats, ns, c->ap_max_categories, &rng);
    }
    n = ns;
    for (int k = 0; k < K; k++)
        if (ds->categories[k].split != TR_SPLIT_SEEN)
            cats[n++] = k;
    for (int i = 1; i < n; i++) /* back to file order */
        for (int j = i; j > 0 && cats[j - 1] > cats[j]; j--) {
            int x = cats[j];
            cats[j] = cats[j - 1];
            cats[j - 1] = x;
        }
    return n;
}

/* The first phrasing of category k that is held out (heldout) or not; -1
 * when none is. */
static int ev__first_phrasing(const tr_coco_category *k, int heldout)
{
    for (int t = 0; t < k->n_tasks; t++)
        if (!k->task_heldout[t] == !heldout)
            return t;
    return -1;
}

/* One pass of AP: every chosen category under one phrasing (pass 0: its
 * first training phrasing; pass 1: its first held-out one, seen categories
 * only) in everything mode on every image, then COCOeval over those images
 * and categories. */
static int ev__ap_pass(tr_eval_result *r, ev_plan *pl, eng_sam *m, tr_embed *emb, const tr_coco *ds,
                       const tr_tasks *tk, const hn_params *p, const tr_eval_config *c,
                       const int *cats, int n_cats, int pass, int n_images, float *ebuf,
                       ev_adapter *ad, tr_eval_progress_fn progress, void *ctx,
                       volatile sig_atomic_t *stop)
{
    tr_coco_dets *d = NULL;
    int rc = tr_coco_dets_create(&d);
    int64_t *cat_ids = malloc(((size_t)n_cats + 1) * sizeof *cat_ids);
    int64_t *img_ids = malloc(((size_t)n_images + 1) * sizeof *img_ids);
    int *task_of = malloc(((size_t)n_cats + 1) * sizeof *task_of);
    int nc = 0;
    if (!rc && (!cat_ids || !img_ids || !task_of))
        rc = eng_error(ENG_ENOMEM, "eval: out of memory");
    eng_amg_params ap;
    eng_amg_defaults(&ap);
    ap.points_per_side = c->ap_points_per_side;
    ap.pred_iou_thresh = c->ap_pred_iou_thresh;
    ap.stability_score_thresh = c->ap_stability_thresh;
    const eng_amg_hooks hooks = {.cancel = ev__amg_cancel, .arg = (void *)stop};
    for (int q = 0; q < n_cats && !rc; q++) {
        const int k = cats[q];
        const tr_coco_category *cat = &ds->categories[k];
        if (pass && cat->split != TR_SPLIT_SEEN)
            continue;
        int t = ev__first_phrasing(cat, pass);
        if (t < 0 && !pass)
            t = 0;
        if (t < 0)
            continue;
        const int ti = ev__task(r, pl, tk, ds, k, t, pass);
        if (ti < 0) {
            rc = eng_error(ENG_ENOMEM, "eval: out of memory");
            break;
        }
        eng_sam_lora *lora = NULL;
        if ((rc = ev__lora(ad, m, p, tr_tasks_get(tk, k, t), &lora)))
            break;
        tr_eval_task *te = &r->tasks[ti];
        for (int i = 0; i < n_images && !rc; i++) {
            eng_sam_imginfo info;
            if ((rc = tr_embed_get(emb, i, ebuf, &info)))
                break;
            eng_amg_input in = {
                .width = info.orig_w, .height = info.orig_h, .embedding = ebuf, .lora = lora};
            eng_amg_result res;
            rc = eng_amg_run(m, &in, &ap, &hooks, &res);
            for (size_t j = 0; j < res.n && !rc; j++)
                rc = tr_coco_dets_add(d, ds, i, cat->id, res.masks[j].predicted_iou,
                                      &res.masks[j].rle, NULL);
            if (!rc) {
                te->ap_images++;
                te->ap_dets += (long)res.n;
            }
            eng_amg_result_free(&res);
        }
        eng_sam_lora_destroy(m, lora);
        cat_ids[nc] = cat->id;
        task_of[nc++] = ti;
        if (!rc && progress)
            progress(ctx, q + 1, n_cats);
    }
    if (rc == ENG_ECANCELED)
        eng_error(rc, "cancelled");
    tr_cocoeval *e = NULL;
    if (!rc && nc) {
        for (int i = 0; i < n_images; i++)
            img_ids[i] = ds->images[i].id;
        tr_cocoeval_params prm;
        tr_cocoeval_params_default(&prm, TR_IOU_SEGM);
        prm.img_ids = img_ids;
        prm.n_img_ids = n_images;
        prm.cat_ids = cat_ids;
        prm.n_cat_ids = nc;
        rc = tr_cocoeval_run(&e, ds, d, &prm);
    }
    if (!rc && e) {
        /* e->cat_ids is sorted: find each task's category there */
        for (int q = 0; q < nc; q++)
            for (int k = 0; k < e->K; k++)
                if (e->cat_ids[k] == cat_ids[q]) {
                    r->tasks[task_of[q]].ap = e->cat_ap[k];
                    r->tasks[task_of[q]].ap50 = e->cat_ap50[k];
                }
        if (!pass) {
            r->ap = e->stats[0];
            r->ap50 = e->stats[1];
        }
    }
    tr_cocoeval_destroy(e);
    tr_coco_dets_destroy(d);
    free(cat_ids);
    free(img_ids);
    free(task_of);
    return rc;
}

static int ev__ap(tr_eval_result *r, ev_plan *pl, eng_sam *m, tr_embed *emb, const tr_coco *ds,
                  const tr_tasks *tk, const hn_params *p, const tr_eval_config *c,
                  tr_eval_progress_fn progress, void *ctx, volatile sig_atomic_t *stop,
                  int n_images)
{
    int *cats = malloc(((size_t)ds->n_categories + 1) * sizeof *cats);
    float *ebuf = malloc(ENG_SAM_EMB_FLOATS * sizeof *ebuf);
    ev_adapter ad;
    int rc = !cats || !ebuf ? eng_error(ENG_ENOMEM, "eval: out of memory")
                            : ev__adapter_init(&ad, &p->cfg);
    const int n = rc ? 0 : ev__ap_categories(ds, c, cats);
    for (int pass = 0; pass <= (c->heldout_phrasings != 0) && !rc; pass++)
        rc = ev__ap_pass(r, pl, m, emb, ds, tk, p, c, cats, n, pass, n_images, ebuf, &ad, progress,
                         ctx, stop);
    if (cats && ebuf)
        ev__adapter_free(&ad);
    free(cats);
    free(ebuf);
    return rc;
}

/* ---- the whole ---- */

static void ev__summarise(tr_eval_result *r)
{
    double sum = 0, psum = 0, gsum[TR_EVAL_GROUPS] = {0};
    r->pairs = r->present_pairs = 0;
    memset(r->group_pairs, 0, sizeof r->group_pairs);
    for (int i = 0; i < r->n_tasks; i++) {
        const tr_eval_task *t = &r->tasks[i];
        sum += t->iou_sum;
        r->pairs += t->pairs;
        psum += t->present_iou_sum;
        r->present_pairs += t->present_pairs;
        gsum[t->group] += t->iou_sum;
        r->group_pairs[t->group] += t->pairs;
    }
    double apsum[TR_EVAL_GROUPS] = {0}, dets[TR_EVAL_GROUPS] = {0}, imgs[TR_EVAL_GROUPS] = {0};
    int apn[TR_EVAL_GROUPS] = {0};
    for (int i = 0; i < r->n_tasks; i++) {
        const tr_eval_task *t = &r->tasks[i];
        if (t->ap >= 0) {
            apsum[t->group] += t->ap;
            apn[t->group]++;
        }
        dets[t->group] += (double)t->ap_dets;
        imgs[t->group] += t->ap_images;
    }
    for (int g = 0; g < TR_EVAL_GROUPS; g++) {
        r->group_ap[g] = apn[g] ? apsum[g] / apn[g] : -1;
        r->dets_per_image[g] = imgs[g] ? dets[g] / imgs[g] : -1;
    }
    r->miou = r->pairs ? sum / r->pairs : -1;
    r->present_miou = r->present_pairs ? psum / r->present_pairs : -1;
    for (int g = 0; g < TR_EVAL_GROUPS; g++)
        r->group_miou[g] = r->group_pairs[g] ? gsum[g] / r->group_pairs[g] : -1;
}

int tr_eval_run(tr_eval_result *r, eng_sam *m, tr_embed *emb, const tr_coco *ds,
                const tr_tasks *tasks, const hn_params *p, const tr_eval_config *c,
                tr_eval_progress_fn progress, void *ctx, volatile sig_atomic_t *stop)
{
    memset(r, 0, sizeof *r);
    r->ap = r->ap50 = -1;
    for (int g = 0; g < TR_EVAL_GROUPS; g++)
        r->group_ap[g] = r->dets_per_image[g] = -1;
    int rc = tr_eval_config_check(c);
    if (rc)
        return rc;
    if (tasks->n_categories != ds->n_categories || tasks->dim != p->cfg.text_dim)
        return eng_error(ENG_EINVAL, "eval: task embeddings of another dataset or width");
    const double t0 = ev__now();
    const int n_images =
        c->max_images && c->max_images < ds->n_images ? c->max_images : ds->n_images;
    r->images = n_images;
    ev_plan pl = {0};
    if (!(pl.task_of = malloc(((size_t)tasks->rows + 1) * sizeof *pl.task_of)))
        return eng_error(ENG_ENOMEM, "eval: out of memory");
    for (int i = 0; i < tasks->rows; i++)
        pl.task_of[i] = -1;
    rc = ev__plan(r, &pl, ds, tasks, c, n_images);
    if (!rc)
        rc = ev__miou(r, &pl, m, emb, ds, tasks, p, c, progress, ctx, stop, n_images);
    if (!rc && c->ap)
        rc = ev__ap(r, &pl, m, emb, ds, tasks, p, c, progress, ctx, stop, n_images);
    free(pl.task_of);
    free(pl.pairs);
    ev__summarise(r);
    r->seconds = ev__now() - t0;
    return rc;
}

static json_t *ev__num(double v) { return v >= 0 && isfinite(v) ? json_real(v) : json_null(); }

json_t *tr_eval_json(const tr_eval_result *r, const tr_coco *ds, int per_task)
{
    json_t *j = json_object(), *g = json_object();
    json_object_set_new(j, "miou", ev__num(r->miou));
    json_object_set_new(j, "pairs", json_integer(r->pairs));
    json_object_set_new(j, "present_miou", ev__num(r->present_miou));
    json_object_set_new(j, "present_pairs", json_integer(r->present_pairs));
    json_object_set_new(j, "ap", ev__num(r->ap));
    json_object_set_new(j, "ap50", ev__num(r->ap50));
    json_object_set_new(j, "images", json_integer(r->images));
    for (int k = 0; k < TR_EVAL_GROUPS; k++) {
        json_t *o = json_object();
        json_object_set_new(o, "miou", ev__num(r->group_miou[k]));
        json_object_set_new(o, "pairs", json_integer(r->group_pairs[k]));
        json_object_set_new(o, "ap", ev__num(r->group_ap[k]));
        json_object_set_new(o, "dets_per_image", ev__num(r->dets_per_image[k]));
        json_object_set_new(g, tr_eval_group_name((tr_eval_group)k), o);
    }
    json_object_set_new(j, "groups", g);
    if (per_task) {
        json_t *a = json_array();
        for (int i = 0; i < r->n_tasks; i++) {
            const tr_eval_task *t = &r->tasks[i];
            const tr_coco_category *k = &ds->categories[t->category];
            json_t *o = json_object();
            json_object_set_new(o, "category", json_string(k->name));
            json_object_set_new(o, "category_id", json_integer(k->id));
            json_object_set_new(o, "task", json_string(k->tasks[t->task]));
            json_object_set_new(o, "group", json_string(tr_eval_group_name(t->group)));
            json_object_set_new(o, "miou", ev__num(t->pairs ? t->iou_sum / t->pairs : -1));
            json_object_set_new(o, "pairs", json_integer(t->pairs));
            json_object_set_new(o, "ap", ev__num(t->ap));
            json_object_set_new(o, "ap50", ev__num(t->ap50));
            json_array_append_new(a, o);
        }
        json_object_set_new(j, "per_task", a);
    }
    return j;
}
