/*
 * train/cocoeval.c: COCOeval (see cocoeval.h).
 *
 * Laid out as pycocotools' evaluate() / accumulate() / summarize(), one
 * category at a time so memory holds one category's per-image matches:
 *
 *   for each category k:
 *     for each image i: IoUs of its (<= 100, by score) detections against
 *       its ground truths, then per area range a the greedy matching of
 *       evaluateImg (dtMatches, dtIgnore, gtIgnore for T thresholds)
 *     for each area range a and maxDets m: accumulate over the images
 *   summarize() from precision [T][R][K][A][M] and recall [T][K][A][M]
 *
 * Floating point follows numpy's expressions (the thresholds as
 * np.linspace builds them, precision as tp / (fp + tp + eps), the means as
 * numpy sums) so results agree to the last bits, not only to 1e-6.
 */
#include "train/cocoeval.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/error.h"
#include "train/coco_internal.h"
#include "train/mask.h"

enum { T_ = TR_EVAL_T, R_ = TR_EVAL_R, A_ = TR_EVAL_A, M_ = TR_EVAL_M };
static const int eval__max_dets[M_] = {1, 10, 100};
static const double eval__area[A_][2] = {
    {0, 1e10}, {0, 32.0 * 32.0}, {32.0 * 32.0, 96.0 * 96.0}, {96.0 * 96.0, 1e10}};
static const char *const eval__area_lbl[A_] = {"all", "small", "medium", "large"};

/* np.linspace(start, stop, num): i * ((stop - start) / (num - 1)) + start,
 * the last value exactly stop. */
static void eval__linspace(double start, double stop, int num, double *out)
{
    const double step = (stop - start) / (num - 1);
    for (int i = 0; i < num; i++)
        out[i] = i * step + start;
    out[num - 1] = stop;
}

/* ---- results ---- */

int tr_coco_dets_create(tr_coco_dets **out)
{
    *out = calloc(1, sizeof **out);
    if (!*out)
        return eng_error(ENG_ENOMEM, "out of memory");
    (*out)->box_mode = -1;
    return 0;
}

void tr_coco_dets_destroy(tr_coco_dets *d)
{
    if (!d)
        return;
    for (int i = 0; i < d->n; i++)
        eng_rle_free(&d->d[i].mask);
    free(d->d);
    free(d);
}

/* Append a result, taking ownership of *mask (may be NULL). */
static int eval__push(tr_coco_dets *d, const tr_coco *gt, int image, int64_t category_id,
                      double score, eng_rle *mask, const double *bbox)
{
    const tr_coco_image *im = &gt->images[image];
    int rc = 0;
    if (d->n == d->cap) {
        int cap = d->cap ? d->cap * 2 : 256;
        tr_coco_det *nd = cap > d->cap ? realloc(d->d, (size_t)cap * sizeof *nd) : NULL;
        if (!nd) {
            eng_rle_free(mask);
            return eng_error(ENG_ENOMEM, "out of memory for %d results", cap);
        }
        d->d = nd;
        d->cap = cap;
    }
    if (d->box_mode < 0)
        d->box_mode = bbox != NULL;
    tr_coco_det *t = &d->d[d->n];
    memset(t, 0, sizeof *t);
    t->id = (int64_t)d->n + 1;
    t->image = image;
    t->category_id = category_id;
    t->score = score;
    if (d->box_mode) {
        /* loadRes' bbox branch: the box's area; a box-only result's mask is
         * the box as a polygon (COCOeval rasterises it for segm). */
        memcpy(t->bbox, bbox, sizeof t->bbox);
        t->area = bbox[2] * bbox[3];
        if (mask)
            t->mask = *mask;
        else if ((rc = tr_rle_from_box(bbox, im->height, im->width, &t->mask)) < 0)
            return rc;
    } else {
        t->mask = *mask;
        t->area = (double)eng_rle_area(mask);
        if (bbox)
            memcpy(t->bbox, bbox, sizeof t->bbox);
        else
            eng_rle_bbox(mask, t->bbox);
    }
    if (tr_coco_category_index(gt, category_id) < 0)
        d->n_unknown_category++;
    d->n++;
    return 0;
}

int tr_coco_dets_add(tr_coco_dets *d, const tr_coco *gt, int image, int64_t category_id,
                     double score, const eng_rle *mask, const double *bbox)
{
    if (image < 0 || image >= gt->n_images)
        return eng_error(ENG_EINVAL, "result on image index %d of %d", image, gt->n_images);
    if (!isfinite(score))
        return eng_error(ENG_EINVAL, "result score %g is not finite", score);
    const tr_coco_image *im = &gt->images[image];
    if (mask && (mask->h != im->height || mask->w != im->width))
        return eng_error(ENG_EINVAL, "result mask is %dx%d, image id %lld is %dx%d", mask->w,
                         mask->h, (long long)im->id, im->width, im->height);
    const int box_mode = d->box_mode < 0 ? bbox != NULL : d->box_mode;
    if (box_mode && !bbox)
        return eng_error(ENG_EINVAL, "result without a bbox after results with one");
    if (!box_mode && !mask)
        return eng_error(ENG_EINVAL, "result without a mask after results without a bbox");
    for (int k = 0; bbox && k < 4; k++)
        if (!isfinite(bbox[k]))
            return eng_error(ENG_EINVAL, "result bbox is not finite");
    eng_rle copy = {0};
    int rc;
    if (mask && (rc = tr_rle_copy(mask, &copy)) < 0)
        return rc;
    return eval__push(d, gt, image, category_id, score, mask ? &copy : NULL, bbox);
}

static int eval__load_json(tr_coco_dets **out, const tr_coco *gt, json_t *root, const char *name)
{
    int rc = 0;
    *out = NULL;
    if (!json_is_array(root))
        return eng_error(ENG_EFORMAT, "%s: results must be a list of objects", name);
    tr_coco_dets *d;
    if ((rc = tr_coco_dets_create(&d)) < 0)
        return rc;
    const size_t n = json_array_size(root);
    if (n > 100000000) {
        rc = eng_error(ENG_ELIMIT, "%s: %zu results is too many", name, n);
        goto fail;
    }
    for (size_t i = 0; i < n; i++) {
        const json_t *jr = json_array_get(root, i);
        char entry[64];
        snprintf(entry, sizeof entry, "results[%zu]", i);
        rc = ENG_EFORMAT;
        if (!json_is_object(jr)) {
            rc = eng_error(rc, "%s: %s: not an object", name, entry);
            goto fail;
        }
        const json_t *ji = json_object_get(jr, "image_id"),
                     *jc = json_object_get(jr, "category_id"), *js = json_object_get(jr, "score"),
                     *jb = json_object_get(jr, "bbox"), *jm = json_object_get(jr, "segmentation");
        if (!json_is_integer(ji)) {
            rc = eng_error(rc, "%s: %s: missing or non-integer \"image_id\"", name, entry);
            goto fail;
        }
        const int image = tr_coco_image_index(gt, (int64_t)json_integer_value(ji));
        if (image < 0) {
            rc = eng_error(rc, "%s: %s: image_id %lld is not in the ground truth %s", name, entry,
                           (long long)json_integer_value(ji), gt->json_path);
            goto fail;
        }
        if (!json_is_integer(jc)) {
            rc = eng_error(rc, "%s: %s: missing or non-integer \"category_id\"", name, entry);
            goto fail;
        }
        if (!json_is_number(js) || !isfinite(json_number_value(js))) {
            rc = eng_error(rc, "%s: %s: missing or non-numeric \"score\"", name, entry);
            goto fail;
        }
        /* loadRes: an empty bbox list counts as none. */
        double box[4];
        int has_box = json_is_array(jb) && json_array_size(jb) > 0;
        if (jb && !json_is_array(jb)) {
            rc = eng_error(rc, "%s: %s: \"bbox\" must be [x, y, width, height]", name, entry);
            goto fail;
        }
        for (int k = 0; has_box && k < 4; k++) {
            const json_t *v = json_array_get(jb, (size_t)k);
            if (json_array_size(jb) != 4 || !json_is_number(v) ||
                !isfinite(box[k] = json_number_value(v))) {
                rc = eng_error(rc, "%s: %s: \"bbox\" must be [x, y, width, height]", name, entry);
                goto fail;
            }
        }
        if (d->box_mode == 1 && !has_box) {
            rc = eng_error(rc, "%s: %s: no \"bbox\" (the first result has one, so all must)", name,
                           entry);
            goto fail;
        }
        if (d->box_mode == 0 && !jm) {
            rc = eng_error(rc,
                           "%s: %s: no \"segmentation\" (the first result has no \"bbox\", so "
                           "all must have one)",
                           name, entry);
            goto fail;
        }
        if (d->box_mode < 0 && !has_box && !jm) {
            rc = eng_error(rc, "%s: %s: neither \"segmentation\" nor \"bbox\"", name, entry);
            goto fail;
        }
        const tr_coco_image *im = &gt->images[image];
        eng_rle mask = {0};
        char where[128];
        snprintf(where, sizeof where, "%s (image_id %lld)", entry, (long long)im->id);
        if (jm && (rc = tr__coco_parse_segm(name, jm, im->height, im->width, 0, &mask, where)) < 0)
            goto fail;
        if ((rc = eval__push(d, gt, image, (int64_t)json_integer_value(jc), json_number_value(js),
                             jm ? &mask : NULL, has_box ? box : NULL)) < 0) {
            char m[512];
            snprintf(m, sizeof m, "%s", eng_last_error());
            rc = eng_error(rc, "%s: %s: %s", name, where, m);
            goto fail;
        }
    }
    *out = d;
    return 0;
fail:
    tr_coco_dets_destroy(d);
    return rc;
}

int tr_coco_dets_load_buffer(tr_coco_dets **out, const tr_coco *gt, const char *json, size_t len,
                             const char *name)
{
    json_error_t je;
    *out = NULL;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &je);
    if (!root)
        return eng_error(ENG_EFORMAT, "%s: line %d column %d: %s", name, je.line, je.column,
                         je.text);
    int rc = eval__load_json(out, gt, root, name);
    json_decref(root);
    return rc;
}

int tr_coco_dets_load(tr_coco_dets **out, const tr_coco *gt, const char *path)
{
    json_error_t je;
    *out = NULL;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    if (!root)
        return eng_error(je.line <= 0 ? ENG_EIO : ENG_EFORMAT, "%s: line %d column %d: %s", path,
                         je.line, je.column, je.text);
    int rc = eval__load_json(out, gt, root, path);
    json_decref(root);
    return rc;
}

/* ---- evaluation ---- */

void tr_cocoeval_params_default(tr_cocoeval_params *p, tr_iou_type t)
{
    memset(p, 0, sizeof *p);
    p->iou_type = t;
}

static int eval__cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x > y ? 1 : x < y ? -1 : 0;
}

/* np.unique: sorted, duplicates removed, into a malloc'd array. */
static int eval__unique(const int64_t *v, int n, int64_t **out, int *n_out)
{
    int64_t *u = malloc(((size_t)n + 1) * sizeof *u);
    if (!u)
        return eng_error(ENG_ENOMEM, "out of memory");
    if (n)
        memcpy(u, v, (size_t)n * sizeof *u);
    qsort(u, (size_t)n, sizeof *u, eval__cmp_i64);
    int m = 0;
    for (int i = 0; i < n; i++)
        if (m == 0 || u[m - 1] != u[i])
            u[m++] = u[i];
    *out = u;
    *n_out = m;
    return 0;
}

/* Sort keys for a stable descending sort by score (np.argsort(-score,
 * kind='mergesort')): ties keep their order. */
typedef struct {
    double score;
    int pos;
} eval__key;

static int eval__cmp_score(const void *a, const void *b)
{
    const eval__key *x = a, *y = b;
    if (x->score != y->score)
        return x->score < y->score ? 1 : -1;
    return x->pos > y->pos ? 1 : x->pos < y->pos ? -1 : 0;
}

/* pycocotools' bbIou for one pair. */
static double eval__box_iou(const double *d, const double *g, int crowd)
{
    double w = fmin(d[2] + d[0], g[2] + g[0]) - fmax(d[0], g[0]);
    if (w <= 0)
        return 0;
    double h = fmin(d[3] + d[1], g[3] + g[1]) - fmax(d[1], g[1]);
    if (h <= 0)
        return 0;
    double i = w * h, da = d[2] * d[3], u = crowd ? da : da + g[2] * g[3] - i;
    return i / u;
}

/* rleIou for one pair: intersection over union, or over the detection's
 * area against a crowd; 0 without overlap. */
static double eval__mask_iou(const eng_rle *d, const eng_rle *g, int crowd)
{
    uint64_t i = tr_rle_intersection(d, g);
    if (i == 0)
        return 0;
    uint64_t u = crowd ? eng_rle_area(d) : eng_rle_area(d) + eng_rle_area(g) - i;
    return (double)i / (double)u;
}

/* One image's evaluateImg output for one category and area range, with
 * maxDet = 100 (accumulate cuts it to 1 and 10). */
typedef struct {
    int valid;          /* 0: no ground truth and no detection (None) */
    int D, G;           /* detections (by score), ground truths */
    double *scores;     /* [D] */
    int64_t *dtm;       /* [T][D]: matched ground-truth id, 0 = none (as numpy reads it) */
    uint8_t *dt_ignore; /* [T][D] */
    uint8_t *gt_ignore; /* [G] */
} eval__img;

typedef struct {
    const tr_coco *gt;
    const tr_coco_dets *dt;
    tr_iou_type type;
    double iou_thrs[T_], rec_thrs[R_];
    /* the current image x category */
    int *g_idx, *d_idx; /* annotation / detection indices */
    int *g_order;       /* ground truths, ignored ones last */
    double *ious;       /* [D][G] in file order of G */
    int64_t *gtm;       /* [G] detection matched at the current threshold */
} eval__ctx;

static void eval__img_free(eval__img *e)
{
    free(e->scores);
    free(e->dtm);
    free(e->dt_ignore);
    free(e->gt_ignore);
    memset(e, 0, sizeof *e);
}

/*
 * evaluateImg for ground truths g_idx[0..G) and detections d_idx[0..D)
 * (already sorted by score and cut at 100) over all area ranges, into
 * out[A]. ious is [D][G].
 */
static int eval__match(eval__ctx *c, int G, int D, eval__img *out)
{
    const tr_coco_ann *anns = c->gt->anns;
    const tr_coco_det *dets = c->dt->d;
    for (int a = 0; a < A_; a++) {
        eval__img *e = &out[a];
        e->valid = 1;
        e->D = D;
        e->G = G;
        e->scores = malloc(((size_t)D + 1) * sizeof *e->scores);
        e->dtm = calloc((size_t)T_ * D + 1, sizeof *e->dtm);
        e->dt_ignore = calloc((size_t)T_ * D + 1, 1);
        e->gt_ignore = malloc((size_t)G + 1);
        if (!e->scores || !e->dtm || !e->dt_ignore || !e->gt_ignore)
            return eng_error(ENG_ENOMEM, "cocoeval: out of memory");
        const double lo = eval__area[a][0], hi = eval__area[a][1];
        /* ground truths not ignored first, file order otherwise (stable) */
        int ng = 0;
        for (int pass = 0; pass < 2; pass++)
            for (int g = 0; g < G; g++) {
                const tr_coco_ann *t = &anns[c->g_idx[g]];
                int ig = t->iscrowd || t->area < lo || t->area > hi;
                if (ig == pass) {
                    c->g_order[ng] = g;
                    e->gt_ignore[ng++] = (uint8_t)ig;
                }
            }
        for (int d = 0; d < D; d++)
            e->scores[d] = dets[c->d_idx[d]].score;
        for (int t = 0; t < T_; t++) {
            for (int g = 0; g < G; g++)
                c->gtm[g] = 0;
            for (int d = 0; d < D; d++) {
                double iou = fmin(c->iou_thrs[t], 1 - 1e-10);
                int m = -1;
                for (int gi = 0; gi < G; gi++) {
                    const tr_coco_ann *gt = &anns[c->g_idx[c->g_order[gi]]];
                    /* a ground truth already matched is taken, unless a crowd */
                    if (c->gtm[gi] > 0 && !gt->iscrowd)
                        continue;
                    /* matched a regular one and the rest are ignored: stop */
                    if (m > -1 && e->gt_ignore[m] == 0 && e->gt_ignore[gi] == 1)
                        break;
                    const double v = c->ious[(size_t)d * G + c->g_order[gi]];
                    if (v < iou)
                        continue;
                    iou = v;
                    m = gi;
                }
                if (m == -1)
                    continue;
                e->dt_ignore[(size_t)t * D + d] = e->gt_ignore[m];
                e->dtm[(size_t)t * D + d] = anns[c->g_idx[c->g_order[m]]].id;
                c->gtm[m] = dets[c->d_idx[d]].id;
            }
        }
        /* unmatched detections outside the area range are ignored */
        for (int d = 0; d < D; d++) {
            const tr_coco_det *dd = &dets[c->d_idx[d]];
            const double ar = c->type == TR_IOU_BBOX ? dd->bbox[2] * dd->bbox[3] : dd->area;
            if (ar < lo || ar > hi)
                for (int t = 0; t < T_; t++)
                    if (e->dtm[(size_t)t * D + d] == 0)
                        e->dt_ignore[(size_t)t * D + d] = 1;
        }
    }
    return 0;
}

/* Per-image grouping of detections by image (file order kept). */
typedef struct {
    int *first, *index; /* CSR over images */
} eval__by_image;

static int eval__group(const tr_coco *gt, const tr_coco_dets *dt, eval__by_image *b)
{
    b->first = calloc((size_t)gt->n_images + 1, sizeof *b->first);
    b->index = malloc(((size_t)dt->n + 1) * sizeof *b->index);
    if (!b->first || !b->index)
        return eng_error(ENG_ENOMEM, "cocoeval: out of memory");
    for (int i = 0; i < dt->n; i++)
        b->first[dt->d[i].image + 1]++;
    for (int i = 0; i < gt->n_images; i++)
        b->first[i + 1] += b->first[i];
    int *fill = calloc((size_t)gt->n_images + 1, sizeof *fill);
    if (!fill)
        return eng_error(ENG_ENOMEM, "cocoeval: out of memory");
    for (int i = 0; i < dt->n; i++) {
        int im = dt->d[i].image;
        b->index[b->first[im] + fill[im]++] = i;
    }
    free(fill);
    return 0;
}

/* Pairwise summation in numpy's order (loops_utils.h: blocks of 8
 * accumulators up to 128 values, halves above). */
static double eval__pairwise(const double *a, size_t n)
{
    if (n < 8) {
        double r = 0.;
        for (size_t i = 0; i < n; i++)
            r += a[i];
        return r;
    }
    if (n <= 128) {
        double r[8], res;
        size_t i;
        for (int j = 0; j < 8; j++)
            r[j] = a[j];
        for (i = 8; i < n - (n % 8); i += 8)
            for (int j = 0; j < 8; j++)
                r[j] += a[i + j];
        res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for (; i < n; i++)
            res += a[i];
        return res;
    }
    size_t n2 = n / 2;
    n2 -= n2 % 8;
    return eval__pairwise(a, n2) + eval__pairwise(a + n2, n - n2);
}

double tr_cocoeval_mean_defined(const double *v, size_t n)
{
    double *keep = malloc((n + 1) * sizeof *keep);
    size_t m = 0;
    if (!keep) {
        /* plain sum: the same value to rounding */
        double s = 0;
        for (size_t i = 0; i < n; i++)
            if (v[i] > -1)
                s += v[i], m++;
        return m ? s / (double)m : -1;
    }
    for (size_t i = 0; i < n; i++)
        if (v[i] > -1)
            keep[m++] = v[i];
    double r = m ? eval__pairwise(keep, m) / (double)m : -1;
    free(keep);
    return r;
}

/*
 * accumulate() for one category k and area a, all maxDets, from the
 * per-image results E[0..n_imgs).
 */
static int eval__accumulate(const eval__ctx *c, tr_cocoeval *r, int k, int a, const eval__img *E,
                            int n_imgs)
{
    const int K = r->K;
    size_t total = 0;
    int npig = 0, any = 0;
    for (int i = 0; i < n_imgs; i++) {
        if (!E[i].valid)
            continue;
        any = 1;
        total += (size_t)E[i].D;
        for (int g = 0; g < E[i].G; g++)
            npig += E[i].gt_ignore[g] == 0;
    }
    if (!any || npig == 0)
        return 0; /* stays -1 */
    eval__key *keys = malloc((total + 1) * sizeof *keys);
    int *src_img = malloc((total + 1) * sizeof *src_img),
        *src_d = malloc((total + 1) * sizeof *src_d);
    double *pr = malloc((total + 1) * sizeof *pr), *rc = malloc((total + 1) * sizeof *rc);
    int ret = 0;
    if (!keys || !src_img || !src_d || !pr || !rc) {
        ret = eng_error(ENG_ENOMEM, "cocoeval: out of memory");
        goto done;
    }
    for (int m = 0; m < M_; m++) {
        const int maxdet = eval__max_dets[m];
        /* concatenate e['dtScores'][0:maxDet] over images, sort stably */
        size_t nd = 0;
        for (int i = 0; i < n_imgs; i++) {
            if (!E[i].valid)
                continue;
            int D = E[i].D < maxdet ? E[i].D : maxdet;
            for (int d = 0; d < D; d++) {
                keys[nd].score = E[i].scores[d];
                keys[nd].pos = (int)nd;
                src_img[nd] = i;
                src_d[nd] = d;
                nd++;
            }
        }
        qsort(keys, nd, sizeof *keys, eval__cmp_score);
        for (int t = 0; t < T_; t++) {
            double tp = 0, fp = 0;
            for (size_t j = 0; j < nd; j++) {
                const eval__img *e = &E[src_img[keys[j].pos]];
                const size_t at = (size_t)t * e->D + src_d[keys[j].pos];
                const int ig = e->dt_ignore[at], matched = e->dtm[at] != 0;
                tp += matched && !ig;
                fp += !matched && !ig;
                rc[j] = tp / npig;
                pr[j] = tp / (fp + tp + DBL_EPSILON);
            }
            r->recall[(((size_t)t * K + k) * A_ + a) * M_ + m] = nd ? rc[nd - 1] : 0;
            for (size_t j = nd; j-- > 1;)
                if (pr[j] > pr[j - 1])
                    pr[j - 1] = pr[j];
            /* np.searchsorted(rc, recThrs, side='left'); past the end the
             * remaining points stay 0 */
            size_t lo = 0;
            for (int q = 0; q < R_; q++) {
                const double thr = c->rec_thrs[q];
                size_t hi = nd;
                while (lo < hi) {
                    size_t mid = lo + (hi - lo) / 2;
                    if (rc[mid] < thr)
                        lo = mid + 1;
                    else
                        hi = mid;
                }
                double v = lo < nd ? pr[lo] : 0;
                r->precision[((((size_t)t * R_ + q) * K + k) * A_ + a) * M_ + m] = v;
            }
        }
    }
done:
    free(keys);
    free(src_img);
    free(src_d);
    free(pr);
    free(rc);
    return ret;
}

/* summarize()'s _summarize: the mean of precision (ap) or recall over the
 * defined entries at one area range and maxDets, all or one IoU threshold. */
static double eval__summarize(const tr_cocoeval *r, const double *iou_thrs, int ap, double iou_thr,
                              int area, int maxdets)
{
    int m = -1;
    for (int i = 0; i < M_; i++)
        if (eval__max_dets[i] == maxdets)
            m = i;
    const int K = r->K;
    double *v = malloc(((size_t)T_ * R_ * (K ? K : 1) + 1) * sizeof *v);
    if (!v || m < 0) {
        free(v);
        return -1;
    }
    size_t n = 0;
    for (int t = 0; t < T_; t++) {
        if (iou_thr >= 0 && iou_thrs[t] != iou_thr)
            continue;
        if (ap) {
            for (int q = 0; q < R_; q++)
                for (int k = 0; k < K; k++)
                    v[n++] = r->precision[((((size_t)t * R_ + q) * K + k) * A_ + area) * M_ + m];
        } else {
            for (int k = 0; k < K; k++)
                v[n++] = r->recall[(((size_t)t * K + k) * A_ + area) * M_ + m];
        }
    }
    double s = tr_cocoeval_mean_defined(v, n);
    free(v);
    return s;
}

int tr_cocoeval_run(tr_cocoeval **out, const tr_coco *gt, const tr_coco_dets *dt,
                    const tr_cocoeval_params *p)
{
    *out = NULL;
    eval__ctx c = {.gt = gt, .dt = dt, .type = p->iou_type};
    eval__linspace(.5, 0.95, T_, c.iou_thrs);
    eval__linspace(.0, 1.00, R_, c.rec_thrs);
    eval__by_image by = {0};
    eval__img *E = NULL;
    int64_t *img_ids = NULL;
    int n_imgs = 0, rc;
    tr_cocoeval *r = calloc(1, sizeof *r);
    if (!r)
        return eng_error(ENG_ENOMEM, "cocoeval: out of memory");
    r->iou_type = p->iou_type;

    /* p.imgIds, p.catIds: the given lists or every ground-truth id, sorted
     * and unique */
    int64_t *tmp =
        malloc(((size_t)(gt->n_images > gt->n_categories ? gt->n_images : gt->n_categories) + 1) *
               sizeof *tmp);
    if (!tmp) {
        rc = eng_error(ENG_ENOMEM, "cocoeval: out of memory");
        goto fail;
    }
    for (int i = 0; i < gt->n_images; i++)
        tmp[i] = gt->images[i].id;
    rc = p->img_ids ? eval__unique(p->img_ids, p->n_img_ids, &img_ids, &n_imgs)
                    : eval__unique(tmp, gt->n_images, &img_ids, &n_imgs);
    for (int i = 0; rc == 0 && i < gt->n_categories; i++)
        tmp[i] = gt->categories[i].id;
    if (rc == 0)
        rc = p->cat_ids ? eval__unique(p->cat_ids, p->n_cat_ids, &r->cat_ids, &r->K)
                        : eval__unique(tmp, gt->n_categories, &r->cat_ids, &r->K);
    free(tmp);
    if (rc)
        goto fail;
    r->n_imgs = n_imgs;
    const int K = r->K;
    const size_t np = (size_t)T_ * R_ * K * A_ * M_, nr = (size_t)T_ * K * A_ * M_;
    r->precision = malloc((np + 1) * sizeof *r->precision);
    r->recall = malloc((nr + 1) * sizeof *r->recall);
    r->cat_ap = malloc(((size_t)K + 1) * sizeof *r->cat_ap);
    r->cat_ap50 = malloc(((size_t)K + 1) * sizeof *r->cat_ap50);
    E = calloc((size_t)A_ * n_imgs + 1, sizeof *E);
    if (!r->precision || !r->recall || !r->cat_ap || !r->cat_ap50 || !E) {
        rc = eng_error(ENG_ENOMEM, "cocoeval: out of memory");
        goto fail;
    }
    for (size_t i = 0; i < np; i++)
        r->precision[i] = -1;
    for (size_t i = 0; i < nr; i++)
        r->recall[i] = -1;
    if ((rc = eval__group(gt, dt, &by)) < 0)
        goto fail;
    /* per-pair buffers sized for the largest image */
    int max_g = 1, max_d = 1;
    for (int i = 0; i < gt->n_images; i++) {
        if (gt->images[i].n_anns > max_g)
            max_g = gt->images[i].n_anns;
        if (by.first[i + 1] - by.first[i] > max_d)
            max_d = by.first[i + 1] - by.first[i];
    }
    c.g_idx = malloc((size_t)max_g * sizeof *c.g_idx);
    c.g_order = malloc((size_t)max_g * sizeof *c.g_order);
    c.gtm = malloc((size_t)max_g * sizeof *c.gtm);
    c.d_idx = malloc((size_t)max_d * sizeof *c.d_idx);
    if (!c.g_idx || !c.g_order || !c.gtm || !c.d_idx) {
        rc = eng_error(ENG_ENOMEM, "cocoeval: out of memory");
        goto fail;
    }

    for (int k = 0; k < K; k++) {
        const int64_t cat = r->cat_ids[k];
        for (int ii = 0; ii < n_imgs; ii++) {
            const int im = tr_coco_image_index(gt, img_ids[ii]);
            int G = 0, D = 0;
            if (im >= 0) {
                const tr_coco_image *img = &gt->images[im];
                const int nd = by.first[im + 1] - by.first[im];
                for (int j = 0; j < img->n_anns; j++) {
                    int ai = gt->ann_index[img->first_ann + j];
                    if (gt->categories[gt->anns[ai].category].id == cat)
                        c.g_idx[G++] = ai;
                }
                for (int j = 0; j < nd; j++) {
                    int di = by.index[by.first[im] + j];
                    if (dt->d[di].category_id == cat)
                        c.d_idx[D++] = di;
                }
            }
            if (G == 0 && D == 0)
                continue; /* None for every area range */
            /* detections by score, stable, at most maxDets[-1] */
            if (D > 1) {
                eval__key *kk = malloc((size_t)D * sizeof *kk);
                int *sorted = malloc((size_t)D * sizeof *sorted);
                if (!kk || !sorted) {
                    free(kk);
                    free(sorted);
                    rc = eng_error(ENG_ENOMEM, "cocoeval: out of memory");
                    goto fail;
                }
                for (int d = 0; d < D; d++)
                    kk[d] = (eval__key){dt->d[c.d_idx[d]].score, d};
                qsort(kk, (size_t)D, sizeof *kk, eval__cmp_score);
                for (int d = 0; d < D; d++)
                    sorted[d] = c.d_idx[kk[d].pos];
                memcpy(c.d_idx, sorted, (size_t)D * sizeof *sorted);
                free(kk);
                free(sorted);
            }
            if (D > eval__max_dets[M_ - 1])
                D = eval__max_dets[M_ - 1];
            free(c.ious);
            c.ious = malloc(((size_t)D * G + 1) * sizeof *c.ious);
            if (!c.ious) {
                rc = eng_error(ENG_ENOMEM, "cocoeval: out of memory");
                goto fail;
            }
            for (int d = 0; d < D; d++)
                for (int g = 0; g < G; g++) {
                    const tr_coco_ann *ga = &gt->anns[c.g_idx[g]];
                    const tr_coco_det *da = &dt->d[c.d_idx[d]];
                    c.ious[(size_t)d * G + g] =
                        p->iou_type == TR_IOU_BBOX
                            ? eval__box_iou(da->bbox, ga->bbox, ga->iscrowd)
                            : eval__mask_iou(&da->mask, &ga->mask, ga->iscrowd);
                }
            eval__img tmp_a[A_] = {0};
            rc = eval__match(&c, G, D, tmp_a);
            for (int a = 0; a < A_; a++)
                E[(size_t)a * n_imgs + ii] = tmp_a[a];
            if (rc)
                goto fail;
        }
        for (int a = 0; a < A_; a++)
            if ((rc = eval__accumulate(&c, r, k, a, E + (size_t)a * n_imgs, n_imgs)) < 0)
                goto fail;
        for (size_t i = 0; i < (size_t)A_ * n_imgs; i++)
            eval__img_free(&E[i]);
    }

    /* per category: AP over IoU .50:.95 and at .50, area all, 100 dets */
    for (int k = 0; k < K; k++) {
        double v[T_ * R_];
        size_t n = 0;
        for (int t = 0; t < T_; t++)
            for (int q = 0; q < R_; q++)
                v[n++] = r->precision[((((size_t)t * R_ + q) * K + k) * A_ + 0) * M_ + 2];
        r->cat_ap[k] = tr_cocoeval_mean_defined(v, n);
        r->cat_ap50[k] = tr_cocoeval_mean_defined(v, R_);
    }
    const double *th = c.iou_thrs;
    r->stats[0] = eval__summarize(r, th, 1, -1, 0, 100);
    r->stats[1] = eval__summarize(r, th, 1, .5, 0, 100);
    r->stats[2] = eval__summarize(r, th, 1, .75, 0, 100);
    r->stats[3] = eval__summarize(r, th, 1, -1, 1, 100);
    r->stats[4] = eval__summarize(r, th, 1, -1, 2, 100);
    r->stats[5] = eval__summarize(r, th, 1, -1, 3, 100);
    r->stats[6] = eval__summarize(r, th, 0, -1, 0, 1);
    r->stats[7] = eval__summarize(r, th, 0, -1, 0, 10);
    r->stats[8] = eval__summarize(r, th, 0, -1, 0, 100);
    r->stats[9] = eval__summarize(r, th, 0, -1, 1, 100);
    r->stats[10] = eval__summarize(r, th, 0, -1, 2, 100);
    r->stats[11] = eval__summarize(r, th, 0, -1, 3, 100);
    rc = 0;
    *out = r;
    r = NULL;
fail:
    for (size_t i = 0; E && i < (size_t)A_ * n_imgs; i++)
        eval__img_free(&E[i]);
    free(E);
    free(img_ids);
    free(by.first);
    free(by.index);
    free(c.g_idx);
    free(c.d_idx);
    free(c.g_order);
    free(c.gtm);
    free(c.ious);
    tr_cocoeval_destroy(r);
    return rc;
}

void tr_cocoeval_destroy(tr_cocoeval *e)
{
    if (!e)
        return;
    free(e->cat_ids);
    free(e->cat_ap);
    free(e->cat_ap50);
    free(e->precision);
    free(e->recall);
    free(e);
}

const char *tr_cocoeval_stat_name(int i)
{
    static const char *const names[12] = {"AP",  "AP50", "AP75",  "APs", "APm", "APl",
                                          "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"};
    return i >= 0 && i < 12 ? names[i] : "?";
}

void tr_cocoeval_print(const tr_cocoeval *e, FILE *f)
{
    static const struct {
        int ap;
        const char *iou;
        int area, maxdets;
    } rows[12] = {{1, "0.50:0.95", 0, 100}, {1, "0.50", 0, 100},      {1, "0.75", 0, 100},
                  {1, "0.50:0.95", 1, 100}, {1, "0.50:0.95", 2, 100}, {1, "0.50:0.95", 3, 100},
                  {0, "0.50:0.95", 0, 1},   {0, "0.50:0.95", 0, 10},  {0, "0.50:0.95", 0, 100},
                  {0, "0.50:0.95", 1, 100}, {0, "0.50:0.95", 2, 100}, {0, "0.50:0.95", 3, 100}};
    for (int i = 0; i < 12; i++)
        fprintf(f, " %-18s %s @[ IoU=%-9s | area=%6s | maxDets=%3d ] = %0.3f\n",
                rows[i].ap ? "Average Precision" : "Average Recall", rows[i].ap ? "(AP)" : "(AR)",
                rows[i].iou, eval__area_lbl[rows[i].area], rows[i].maxdets, e->stats[i]);
}
