/*
 * train/sample.c: training examples and their low-res targets (see
 * sample.h).
 */
#include "train/sample.h"

#include <assert.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/error.h"
#include "engine/image.h"
#include "train/mask.h"

void tr_frame_make(int w, int h, tr_frame *f)
{
    f->w = w;
    f->h = h;
    eng_resize_shape(w, h, TR_SAM_INPUT, &f->rw, &f->rh);
}

/* Original-image coordinate of low-res cell edge k along a side of n
 * original pixels resized to r: 4k n / r, clipped to the image. */
static double sample__edge(int k, int n, int r)
{
    double v = 4.0 * k * n / r;
    return v > n ? n : v;
}

int tr_target_lowres(const uint8_t *mask, int w, int h, uint8_t *out)
{
    if (w < 1 || h < 1 || (int64_t)w * h > ENG_IMAGE_DEFAULT_MAX_PIXELS)
        return eng_error(ENG_EINVAL, "target: bad mask size %dx%d", w, h);
    tr_frame f;
    tr_frame_make(w, h, &f);
    /* S[y][x]: mask pixels in [0, x) x [0, y); (h+1) x (w+1). The mask's
     * integral over [0, X) x [0, Y) for real X, Y is S interpolated
     * bilinearly (the mask is constant on each pixel), so a cell's exact
     * coverage is four such values. */
    const size_t sw = (size_t)w + 1;
    uint32_t *S = calloc(sw * ((size_t)h + 1), sizeof *S);
    double *G = malloc((size_t)(TR_LOWRES + 1) * (TR_LOWRES + 1) * sizeof *G);
    if (!S || !G) {
        free(S);
        free(G);
        return eng_error(ENG_ENOMEM, "target: out of memory for a %dx%d mask", w, h);
    }
    for (int y = 0; y < h; y++) {
        uint32_t row = 0;
        for (int x = 0; x < w; x++) {
            row += mask[(size_t)y * w + x] != 0;
            S[(size_t)(y + 1) * sw + x + 1] = S[(size_t)y * sw + x + 1] + row;
        }
    }
    /* G[i][j]: the integral up to cell corner (i, j) */
    for (int i = 0; i <= TR_LOWRES; i++) {
        const double Y = sample__edge(i, h, f.rh);
        int y = (int)Y < h ? (int)Y : h - 1;
        const double fy = Y - y;
        for (int j = 0; j <= TR_LOWRES; j++) {
            const double X = sample__edge(j, w, f.rw);
            int x = (int)X < w ? (int)X : w - 1;
            const double fx = X - x;
            const uint32_t *s0 = S + (size_t)y * sw + x, *s1 = s0 + sw;
            G[i * (TR_LOWRES + 1) + j] = s0[0] * (1 - fx) * (1 - fy) + s0[1] * fx * (1 - fy) +
                                         s1[0] * (1 - fx) * fy + s1[1] * fx * fy;
        }
    }
    /* a full cell's area in original pixels */
    const double cell = (4.0 * w / f.rw) * (4.0 * h / f.rh);
    for (int i = 0; i < TR_LOWRES; i++)
        for (int j = 0; j < TR_LOWRES; j++) {
            const double *g0 = G + i * (TR_LOWRES + 1) + j, *g1 = g0 + (TR_LOWRES + 1);
            const double cov = g1[1] - g0[1] - g1[0] + g0[0];
            out[i * TR_LOWRES + j] = 4 * j < f.rw && 4 * i < f.rh && cov >= 0.5 * cell ? 1 : 0;
        }
    free(S);
    free(G);
    return 0;
}

int tr_target_lowres_rle(const eng_rle *mask, int w, int h, uint8_t *out)
{
    if (!mask) {
        memset(out, 0, TR_LOWRES * TR_LOWRES);
        return 0;
    }
    if (mask->w != w || mask->h != h)
        return eng_error(ENG_EINVAL, "target: a %dx%d mask for a %dx%d image", mask->w, mask->h, w,
                         h);
    uint8_t *m = calloc((size_t)w * h + 1, 1);
    if (!m)
        return eng_error(ENG_ENOMEM, "target: out of memory for a %dx%d mask", w, h);
    tr_rle_paint(mask, m);
    int rc = tr_target_lowres(m, w, h, out);
    free(m);
    return rc;
}

/* ---- points ---- */

static int sample__pixel(float v, int n)
{
    int p = (int)floor((double)v + 0.5);
    return p < 0 ? 0 : p >= n ? n - 1 : p;
}

tr_hit tr_point_hit(const tr_coco *ds, int image, int category, float x, float y, int *ann)
{
    const tr_coco_image *im = &ds->images[image];
    const int px = sample__pixel(x, im->width), py = sample__pixel(y, im->height);
    int best = -1, crowd = 0;
    for (int j = 0; j < im->n_anns; j++) {
        const int ai = ds->ann_index[im->first_ann + j];
        const tr_coco_ann *a = &ds->anns[ai];
        if (a->category != category || !tr_rle_at(&a->mask, px, py))
            continue;
        if (a->iscrowd)
            crowd = 1;
        else if (best < 0 || a->area < ds->anns[best].area)
            best = ai;
    }
    *ann = best;
    return best >= 0 ? TR_HIT_INSTANCE : crowd ? TR_HIT_CROWD : TR_HIT_EMPTY;
}

void tr_sample_config_default(tr_sample_config *c)
{
    memset(c, 0, sizeof *c);
    c->p_box = 0.15;
    c->p_grid = 0.25;
    c->p_object = 0.45;
    c->grid_side = 32;
    c->p_absent = 0.25;
    c->heldout_tasks = 0;
    c->max_tries = 64;
}

/* A task of category k that may be drawn, uniformly; -1 if none. */
static int sample__task(const tr_coco_category *k, const tr_sample_config *cfg, tr_rng *rng)
{
    int n = 0;
    for (int t = 0; t < k->n_tasks; t++)
        n += cfg->heldout_tasks || !k->task_heldout[t];
    if (n == 0)
        return -1;
    int pick = (int)tr_rng_below(rng, (uint64_t)n);
    for (int t = 0; t < k->n_tasks; t++)
        if ((cfg->heldout_tasks || !k->task_heldout[t]) && pick-- == 0)
            return t;
    return -1;
}

/* The k-th foreground pixel of an RLE (column-major order). */
static void sample__nth_pixel(const eng_rle *r, uint64_t k, int *x, int *y)
{
    uint64_t pos = 0;
    for (size_t i = 0; i < r->n; i++) {
        uint64_t c = r->counts[i];
        if ((i & 1) && k < c) {
            pos += k;
            *x = (int)(pos / (uint64_t)r->h);
            *y = (int)(pos % (uint64_t)r->h);
            return;
        }
        if (i & 1)
            k -= c;
        pos += c;
    }
    *x = *y = 0;
}

/* A point from `src` (uniform, grid or object); 0, or -1 when the source
 * has nothing to offer (no object). */
static int sample__point(const tr_coco *ds, int image, tr_point_source src,
                         const tr_sample_config *cfg, tr_rng *rng, float *x, float *y)
{
    const tr_coco_image *im = &ds->images[image];
    if (src == TR_SRC_GRID) {
        /* SAM's build_point_grid: (i + 0.5) / n of each side */
        const int n = cfg->grid_side > 0 ? cfg->grid_side : 32;
        int gi = (int)tr_rng_below(rng, (uint64_t)n), gj = (int)tr_rng_below(rng, (uint64_t)n);
        *x = (float)((gi + 0.5) / n * im->width);
        *y = (float)((gj + 0.5) / n * im->height);
        return 0;
    }
    if (src == TR_SRC_OBJECT) {
        int n = 0;
        for (int j = 0; j < im->n_anns; j++) {
            const tr_coco_ann *a = &ds->anns[ds->ann_index[im->first_ann + j]];
            n += !a->iscrowd && eng_rle_area(&a->mask) > 0;
        }
        if (n == 0)
            return -1;
        int pick = (int)tr_rng_below(rng, (uint64_t)n);
        for (int j = 0; j < im->n_anns; j++) {
            const tr_coco_ann *a = &ds->anns[ds->ann_index[im->first_ann + j]];
            if (a->iscrowd || eng_rle_area(&a->mask) == 0 || pick-- != 0)
                continue;
            int px, py;
            sample__nth_pixel(&a->mask, tr_rng_below(rng, eng_rle_area(&a->mask)), &px, &py);
            *x = (float)px;
            *y = (float)py;
            return 0;
        }
        return -1;
    }
    *x = (float)tr_rng_below(rng, (uint64_t)im->width);
    *y = (float)tr_rng_below(rng, (uint64_t)im->height);
    return 0;
}

int tr_sample_prompt(const tr_coco *ds, int image, int category, int task,
                     const tr_sample_config *cfg, tr_rng *rng, tr_example *ex)
{
    assert(image >= 0 && image < ds->n_images && category >= 0 && category < ds->n_categories &&
           task >= 0 && task < ds->categories[category].n_tasks);
    const tr_coco_image *im = &ds->images[image];
    memset(ex, 0, sizeof *ex);
    ex->image = image;
    ex->category = category;
    ex->task = task;
    ex->target = -1;

    /* a box on one of the task's instances (none when the category has no
     * instance here), with SAM's noise */
    if (tr_rng_uniform(rng) < cfg->p_box) {
        /* a box on one of the task's instances, with SAM's noise */
        int n = 0, pick;
        for (int j = 0; j < im->n_anns; j++) {
            const tr_coco_ann *a = &ds->anns[ds->ann_index[im->first_ann + j]];
            n += a->category == ex->category && !a->iscrowd && eng_rle_area(&a->mask) > 0;
        }
        pick = n ? (int)tr_rng_below(rng, (uint64_t)n) : -1;
        for (int j = 0; j < im->n_anns && pick >= 0; j++) {
            const int ai = ds->ann_index[im->first_ann + j];
            const tr_coco_ann *a = &ds->anns[ai];
            if (a->category != ex->category || a->iscrowd || eng_rle_area(&a->mask) == 0 ||
                pick-- != 0)
                continue;
            double bb[4];
            eng_rle_bbox(&a->mask, bb);
            double v[4] = {bb[0], bb[1], bb[0] + bb[2] - 1, bb[1] + bb[3] - 1};
            for (int q = 0; q < 4; q++) {
                double side = q & 1 ? bb[3] : bb[2], d = tr_rng_normal(rng) * 0.1 * side;
                d = d > 20 ? 20 : d < -20 ? -20 : d;
                double lim = q & 1 ? im->height - 1 : im->width - 1;
                v[q] = fmin(fmax(v[q] + d, 0), lim);
            }
            if (v[2] < v[0]) {
                double t = v[0];
                v[0] = v[2];
                v[2] = t;
            }
            if (v[3] < v[1]) {
                double t = v[1];
                v[1] = v[3];
                v[3] = t;
            }
            for (int q = 0; q < 4; q++)
                ex->box[q] = (float)v[q];
            ex->is_box = 1;
            ex->source = TR_SRC_BOX;
            ex->target = ai;
            return 0;
        }
    }

    /* a point from a task-independent source */
    const double u = tr_rng_uniform(rng);
    tr_point_source src = u < cfg->p_grid                   ? TR_SRC_GRID
                          : u < cfg->p_grid + cfg->p_object ? TR_SRC_OBJECT
                                                            : TR_SRC_UNIFORM;
    for (int tries = 0; tries <= 2 * cfg->max_tries; tries++) {
        float x, y;
        /* after max_tries points on crowd regions, only object pixels */
        tr_point_source s = tries >= cfg->max_tries ? TR_SRC_OBJECT : src;
        if (sample__point(ds, image, s, cfg, rng, &x, &y) < 0) {
            /* no object in the image */
            if (tries >= cfg->max_tries)
                break;
            src = s = TR_SRC_UNIFORM;
            sample__point(ds, image, s, cfg, rng, &x, &y);
        }
        int ann;
        tr_hit h = tr_point_hit(ds, image, ex->category, x, y, &ann);
        if (h == TR_HIT_CROWD)
            continue;
        ex->source = s;
        ex->n_points = 1;
        ex->points[0][0] = x;
        ex->points[0][1] = y;
        ex->labels[0] = 1;
        ex->target = h == TR_HIT_INSTANCE ? ann : -1;
        return 0;
    }
    return eng_error(ENG_ENOTFOUND, "%s: images[%d] (id %lld): every point lands on a crowd region",
                     ds->json_path, image, (long long)im->id);
}

int tr_sample_example(const tr_coco *ds, int image, const tr_sample_config *cfg, tr_rng *rng,
                      tr_example *ex)
{
    const tr_coco_image *im = &ds->images[image];
    memset(ex, 0, sizeof *ex);
    ex->image = image;
    ex->target = -1;

    /* categories with a drawable task, split by presence in the image */
    int *present = malloc(((size_t)ds->n_categories + 1) * sizeof *present);
    int *absent = malloc(((size_t)ds->n_categories + 1) * sizeof *absent);
    uint8_t *state = calloc((size_t)ds->n_categories + 1, 1); /* 1 instance, 2 crowd only */
    if (!present || !absent || !state) {
        free(present);
        free(absent);
        free(state);
        return eng_error(ENG_ENOMEM, "sample: out of memory");
    }
    for (int j = 0; j < im->n_anns; j++) {
        const tr_coco_ann *a = &ds->anns[ds->ann_index[im->first_ann + j]];
        if (!a->iscrowd)
            state[a->category] = 1;
        else if (!state[a->category])
            state[a->category] = 2;
    }
    int np = 0, na = 0;
    for (int k = 0; k < ds->n_categories; k++) {
        const tr_coco_category *c = &ds->categories[k];
        int usable = 0;
        for (int t = 0; t < c->n_tasks && !usable; t++)
            usable = cfg->heldout_tasks || !c->task_heldout[t];
        if (!usable)
            continue;
        if (state[k] == 1)
            present[np++] = k;
        else if (state[k] == 0)
            absent[na++] = k;
    }
    free(state);
    int rc = 0, category = -1, task = -1;
    if (np + na == 0) {
        rc = eng_error(ENG_ENOTFOUND, "%s: images[%d] (id %lld): no category with a task to draw",
                       ds->json_path, image, (long long)im->id);
    } else {
        int use_absent = tr_rng_uniform(rng) < cfg->p_absent;
        if (np == 0)
            use_absent = 1;
        if (na == 0)
            use_absent = 0;
        category = use_absent ? absent[tr_rng_below(rng, (uint64_t)na)]
                              : present[tr_rng_below(rng, (uint64_t)np)];
        task = sample__task(&ds->categories[category], cfg, rng);
    }
    free(present);
    free(absent);
    return rc ? rc : tr_sample_prompt(ds, image, category, task, cfg, rng, ex);
}

int tr_example_target(const tr_coco *ds, const tr_example *ex, uint8_t *out)
{
    const tr_coco_image *im = &ds->images[ex->image];
    return tr_target_lowres_rle(ex->target >= 0 ? &ds->anns[ex->target].mask : NULL, im->width,
                                im->height, out);
}

/* A uniform pixel index whose centre lies in [e0, e1) of a side of n
 * pixels; the pixel under the middle when none does. */
static int sample__pixel_in(double e0, double e1, int n, tr_rng *rng)
{
    int lo = (int)ceil(e0 - 0.5), hi = (int)ceil(e1 - 0.5) - 1;
    if (lo < 0)
        lo = 0;
    if (hi > n - 1)
        hi = n - 1;
    if (hi < lo) {
        int p = (int)floor((e0 + e1) / 2);
        return p < 0 ? 0 : p >= n ? n - 1 : p;
    }
    return lo + (int)tr_rng_below(rng, (uint64_t)(hi - lo + 1));
}

int tr_sample_refine(const tr_coco *ds, tr_example *ex, const uint8_t *target, const float *logits,
                     tr_rng *rng)
{
    if (ex->n_points >= TR_MAX_POINTS)
        return 0;
    const tr_coco_image *im = &ds->images[ex->image];
    tr_frame f;
    tr_frame_make(im->width, im->height, &f);
    /* cells that start inside the resized image */
    const int ci = (f.rh + 3) / 4, cj = (f.rw + 3) / 4;
    uint64_t n = 0;
    for (int i = 0; i < ci; i++)
        for (int j = 0; j < cj; j++)
            n += (logits[i * TR_LOWRES + j] > 0) != (target[i * TR_LOWRES + j] != 0);
    if (n == 0)
        return 0;
    uint64_t pick = tr_rng_below(rng, n);
    for (int i = 0; i < ci; i++)
        for (int j = 0; j < cj; j++) {
            const int c = i * TR_LOWRES + j;
            if ((logits[c] > 0) == (target[c] != 0) || pick-- != 0)
                continue;
            const int px = sample__pixel_in(sample__edge(j, f.w, f.rw),
                                            sample__edge(j + 1, f.w, f.rw), f.w, rng);
            const int py = sample__pixel_in(sample__edge(i, f.h, f.rh),
                                            sample__edge(i + 1, f.h, f.rh), f.h, rng);
            ex->points[ex->n_points][0] = (float)px;
            ex->points[ex->n_points][1] = (float)py;
            ex->labels[ex->n_points] = target[c] != 0;
            ex->n_points++;
            return 1;
        }
    return 0;
}
