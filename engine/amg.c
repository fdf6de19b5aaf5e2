/*
 * engine/amg.c: automatic mask generation (see amg.h): SAM's
 * SamAutomaticMaskGenerator on top of eng_sam_segment_each.
 *
 * Reference: segment_anything/automatic_mask_generator.py and
 * utils/amg.py; torchvision.ops.batched_nms (CPU kernel); OpenCV's
 * connectedComponentsWithStats for the small-region removal.
 */
#include "amg.h"

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "error.h"

#define NEAR_EDGE_ATOL    20.0f /* is_box_near_crop_edge's atol */
#define NMS_VANILLA_BOXES 1000  /* torchvision: boxes.numel() > 4000 on the CPU */

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

static int cancelled(const eng_amg_hooks *h)
{
    if (h && h->cancel && h->cancel(h->arg))
        return eng_error(ENG_ECANCELED, "automatic mask generation was stopped before it finished");
    return 0;
}

/* ------------------------------------------------------------------ */
/* parameters                                                           */

void eng_amg_defaults(eng_amg_params *p)
{
    memset(p, 0, sizeof *p);
    p->points_per_side = 32;
    p->points_per_batch = 64;
    p->pred_iou_thresh = 0.88;
    p->stability_score_thresh = 0.95;
    p->stability_score_offset = 1.0;
    p->box_nms_thresh = 0.7;
    p->crop_n_layers = 0;
    p->crop_nms_thresh = 0.7;
    p->crop_overlap_ratio = 512.0 / 1500.0;
    p->crop_n_points_downscale_factor = 1;
    p->min_mask_region_area = 0;
}

static const eng_amg_param_desc param_table[] = {
    {"points_per_side", 1, offsetof(eng_amg_params, points_per_side),
     "points along each side of the grid, 1..128 (32)"},
    {"points_per_batch", 1, offsetof(eng_amg_params, points_per_batch),
     "prompts per decoder pass, 1..256 (64)"},
    {"pred_iou_thresh", 0, offsetof(eng_amg_params, pred_iou_thresh),
     "keep masks whose predicted IoU is above this (0.88)"},
    {"stability_score_thresh", 0, offsetof(eng_amg_params, stability_score_thresh),
     "... and whose stability score is at least this (0.95)"},
    {"stability_score_offset", 0, offsetof(eng_amg_params, stability_score_offset),
     "logit offset of the stability score (1.0)"},
    {"box_nms_thresh", 0, offsetof(eng_amg_params, box_nms_thresh),
     "box IoU above which a duplicate is dropped (0.7)"},
    {"crop_n_layers", 1, offsetof(eng_amg_params, crop_n_layers),
     "layers of crops, each encoded again, 0..4 (0)"},
    {"crop_nms_thresh", 0, offsetof(eng_amg_params, crop_nms_thresh),
     "box IoU for duplicates between crops (0.7)"},
    {"crop_overlap_ratio", 0, offsetof(eng_amg_params, crop_overlap_ratio),
     "overlap of the first layer's crops (0.3413 = 512/1500)"},
    {"crop_n_points_downscale_factor", 1, offsetof(eng_amg_params, crop_n_points_downscale_factor),
     "layer i's grid side is points_per_side / factor^i (1)"},
    {"min_mask_region_area", 1, offsetof(eng_amg_params, min_mask_region_area),
     "remove holes and islands smaller than this (0: off)"},
};

const eng_amg_param_desc *eng_amg_param_table(size_t *n)
{
    *n = sizeof param_table / sizeof param_table[0];
    return param_table;
}

static int bad(char *field, const char *name, const char *fmt, double v, double lo, double hi)
{
    if (field)
        snprintf(field, 64, "%s", name);
    char msg[160];
    snprintf(msg, sizeof msg, fmt, lo, hi);
    return eng_error(ENG_EINVAL, "%s = %g: %s", name, v, msg);
}

static int in_range(double v, double lo, double hi) { return isfinite(v) && v >= lo && v <= hi; }

int eng_amg_check(const eng_amg_params *p, char *field)
{
    if (field)
        field[0] = 0;
    if (!p->grids && p->n_grids == 0) {
        if (p->points_per_side < 1 || p->points_per_side > ENG_AMG_MAX_POINTS_PER_SIDE)
            return bad(field, "points_per_side", "must be an integer in [%g, %g]",
                       p->points_per_side, 1, ENG_AMG_MAX_POINTS_PER_SIDE);
    } else if (p->points_per_side != 0) {
        if (field)
            snprintf(field, 64, "point_grids");
        return eng_error(ENG_EINVAL, "give points_per_side or point_grids, not both");
    }
    if (p->points_per_batch < 1 || p->points_per_batch > ENG_AMG_MAX_POINTS_PER_BATCH)
        return bad(field, "points_per_batch", "must be an integer in [%g, %g]", p->points_per_batch,
                   1, ENG_AMG_MAX_POINTS_PER_BATCH);
    if (!in_range(p->pred_iou_thresh, 0, 1))
        return bad(field, "pred_iou_thresh", "must be a number in [%g, %g]", p->pred_iou_thresh, 0,
                   1);
    if (!in_range(p->stability_score_thresh, 0, 1))
        return bad(field, "stability_score_thresh", "must be a number in [%g, %g]",
                   p->stability_score_thresh, 0, 1);
    if (!in_range(p->stability_score_offset, 0, 1000))
        return bad(field, "stability_score_offset", "must be a number in [%g, %g]",
                   p->stability_score_offset, 0, 1000);
    if (!in_range(p->box_nms_thresh, 0, 1))
        return bad(field, "box_nms_thresh", "must be a number in [%g, %g]", p->box_nms_thresh, 0,
                   1);
    if (p->crop_n_layers < 0 || p->crop_n_layers > ENG_AMG_MAX_CROP_LAYERS)
        return bad(field, "crop_n_layers", "must be an integer in [%g, %g]", p->crop_n_layers, 0,
                   ENG_AMG_MAX_CROP_LAYERS);
    if (!in_range(p->crop_nms_thresh, 0, 1))
        return bad(field, "crop_nms_thresh", "must be a number in [%g, %g]", p->crop_nms_thresh, 0,
                   1);
    if (!(isfinite(p->crop_overlap_ratio) && p->crop_overlap_ratio >= 0 &&
          p->crop_overlap_ratio < 1))
        return bad(field, "crop_overlap_ratio", "must be a number in [%g, %g)",
                   p->crop_overlap_ratio, 0, 1);
    if (p->min_mask_region_area < 0)
        return bad(field, "min_mask_region_area", "must be an integer >= %g (%g: off)",
                   p->min_mask_region_area, 0, 0);
    if (p->grids || p->n_grids) {
        if (!p->grids || p->n_grids != p->crop_n_layers + 1) {
            if (field)
                snprintf(field, 64, "point_grids");
            return eng_error(
                ENG_EINVAL, "point_grids holds %d grids; crop_n_layers = %d needs %d (one a layer)",
                p->n_grids, p->crop_n_layers, p->crop_n_layers + 1);
        }
        for (int g = 0; g < p->n_grids; g++) {
            const eng_amg_grid *gr = &p->grids[g];
            if (gr->n < 1 || gr->n > ENG_AMG_MAX_GRID_POINTS || !gr->xy) {
                if (field)
                    snprintf(field, 64, "point_grids[%d]", g);
                return eng_error(ENG_EINVAL, "point_grids[%d] holds %d points (1 to %d)", g, gr->n,
                                 ENG_AMG_MAX_GRID_POINTS);
            }
            for (int i = 0; i < gr->n; i++)
                if (!in_range(gr->xy[2 * i], 0, 1) || !in_range(gr->xy[2 * i + 1], 0, 1)) {
                    if (field)
                        snprintf(field, 64, "point_grids[%d][%d]", g, i);
                    return eng_error(ENG_EINVAL,
                                     "point_grids[%d][%d] = (%g, %g) is outside [0, 1] x [0, 1]", g,
                                     i, gr->xy[2 * i], gr->xy[2 * i + 1]);
                }
        }
        if (p->crop_n_points_downscale_factor < 1)
            return bad(field, "crop_n_points_downscale_factor", "must be an integer in [%g, %g]",
                       p->crop_n_points_downscale_factor, 1, ENG_AMG_MAX_POINTS_PER_SIDE);
        return 0;
    }
    /* layer i's grid side is int(points_per_side / factor^i): at least 1 */
    int f = p->crop_n_points_downscale_factor;
    long long fl = 1;
    for (int i = 0; i < p->crop_n_layers && f >= 1 && fl <= p->points_per_side; i++)
        fl *= f;
    if (f < 1 || f > ENG_AMG_MAX_POINTS_PER_SIDE)
        return bad(field, "crop_n_points_downscale_factor", "must be an integer in [%g, %g]", f, 1,
                   ENG_AMG_MAX_POINTS_PER_SIDE);
    if (p->points_per_side / fl < 1) {
        if (field)
            snprintf(field, 64, "crop_n_points_downscale_factor");
        return eng_error(ENG_EINVAL,
                         "crop_n_points_downscale_factor = %d leaves crop layer %d without a point "
                         "(points_per_side %d / %d^%d < 1)",
                         f, p->crop_n_layers, p->points_per_side, f, p->crop_n_layers);
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* grids and crops                                                      */

/* build_point_grid's 1-D coordinates: np.linspace(offset, 1 - offset, n)
 * with offset 1 / (2n), computed as numpy does: i * step + start, the last
 * one exactly `stop`. */
static double grid_coord(int i, int n)
{
    double offset = 1.0 / (2.0 * n);
    if (n == 1)
        return offset;
    if (i == n - 1)
        return 1.0 - offset;
    double step = ((1.0 - offset) - offset) / (double)(n - 1);
    return (double)i * step + offset;
}

void eng_amg_point_grid(int n, double *xy)
{
    for (int y = 0; y < n; y++)
        for (int x = 0; x < n; x++) {
            xy[2 * ((size_t)y * n + x)] = grid_coord(x, n);
            xy[2 * ((size_t)y * n + x) + 1] = grid_coord(y, n);
        }
}

int eng_amg_crop_boxes(int w, int h, int n_layers, double overlap_ratio, int (*boxes)[4],
                       int *layers, int cap)
{
    int n = 0, short_side = w < h ? w : h;
    int total = 1;
    for (int i = 1, c = 4; i <= n_layers; i++, c *= 4)
        total += c;
    if (total > cap)
        return eng_error(ENG_EINVAL, "%d crop boxes do not fit in %d", total, cap);
    boxes[n][0] = 0;
    boxes[n][1] = 0;
    boxes[n][2] = w;
    boxes[n][3] = h;
    layers[n++] = 0;
    for (int i = 0; i < n_layers; i++) {
        int per_side = 1 << (i + 1);
        /* int(overlap_ratio * short_side * (2 / n_crops_per_side)) */
        int overlap = (int)(overlap_ratio * short_side * (2.0 / per_side));
        /* crop_len: int(math.ceil((overlap * (n - 1) + orig_len) / n)) */
        int crop_w = (int)ceil((double)(overlap * (per_side - 1) + w) / per_side);
        int crop_h = (int)ceil((double)(overlap * (per_side - 1) + h) / per_side);
        /* itertools.product(x0s, y0s): x outer */
        for (int xi = 0; xi < per_side; xi++)
            for (int yi = 0; yi < per_side; yi++) {
                int x0 = (crop_w - overlap) * xi, y0 = (crop_h - overlap) * yi;
                boxes[n][0] = x0;
                boxes[n][1] = y0;
                boxes[n][2] = x0 + crop_w < w ? x0 + crop_w : w;
                boxes[n][3] = y0 + crop_h < h ? y0 + crop_h : h;
                layers[n++] = i + 1;
            }
    }
    return n;
}

/* ------------------------------------------------------------------ */
/* per-mask steps                                                       */

void eng_amg_mask_box(const uint8_t *mask, int w, int h, int box[4])
{
    int x0 = w, y0 = -1, x1 = -1, y1 = -1;
    for (int y = 0; y < h; y++) {
        const uint8_t *row = mask + (size_t)y * w;
        int a = 0;
        while (a < w && !row[a])
            a++;
        if (a == w)
            continue;
        int b = w - 1;
        while (!row[b])
            b--;
        if (y0 < 0)
            y0 = y;
        y1 = y;
        if (a < x0)
            x0 = a;
        if (b > x1)
            x1 = b;
    }
    if (y0 < 0) {
        box[0] = box[1] = box[2] = box[3] = 0;
        return;
    }
    box[0] = x0;
    box[1] = y0;
    box[2] = x1;
    box[3] = y1;
}

int eng_amg_box_near_crop_edge(const int box[4], const int crop_box[4], int w, int h)
{
    /* uncrop the box, then torch.isclose(atol=20, rtol=0) in float32 */
    const int img[4] = {0, 0, w, h};
    const int off[4] = {crop_box[0], crop_box[1], crop_box[0], crop_box[1]};
    for (int k = 0; k < 4; k++) {
        float b = (float)(box[k] + off[k]);
        int near_crop = fabsf(b - (float)crop_box[k]) <= NEAR_EDGE_ATOL;
        int near_img = fabsf(b - (float)img[k]) <= NEAR_EDGE_ATOL;
        if (near_crop && !near_img)
            return 1;
    }
    return 0;
}

/* A growing list of RLE runs: column-major pixels pushed as (value, count). */
typedef struct rle_builder {
    uint32_t *c;
    size_t n, cap;
    int cur;      /* value of the run being counted */
    uint64_t acc; /* its length so far */
    int oom;
} rle_builder;

static void rb_flush(rle_builder *b)
{
    if (b->n == b->cap) {
        size_t cap = b->cap ? 2 * b->cap : 64;
        uint32_t *c = realloc(b->c, cap * sizeof *c);
        if (!c) {
            b->oom = 1;
            return;
        }
        b->c = c;
        b->cap = cap;
    }
    b->c[b->n++] = (uint32_t)b->acc;
}

static inline void rb_push(rle_builder *b, int v, uint64_t count)
{
    if (!count)
        return;
    if (v != b->cur) {
        rb_flush(b);
        b->cur = v;
        b->acc = 0;
    }
    b->acc += count;
}

int eng_amg_rle_uncrop(const uint8_t *mask, int cw, int ch, int x0, int y0, int w, int h,
                       eng_rle *out)
{
    memset(out, 0, sizeof *out);
    if (cw < 0 || ch < 0 || x0 < 0 || y0 < 0 || x0 + cw > w || y0 + ch > h ||
        (uint64_t)w * (uint64_t)h > UINT32_MAX)
        return eng_error(ENG_EINVAL, "crop %dx%d at (%d, %d) does not fit a %dx%d image", cw, ch,
                         x0, y0, w, h);
    rle_builder b = {0};
    b.cur = 0;
    for (int x = 0; x < w && !b.oom; x++) {
        if (x < x0 || x >= x0 + cw) {
            rb_push(&b, 0, (uint64_t)h);
            continue;
        }
        rb_push(&b, 0, (uint64_t)y0);
        const uint8_t *col = mask + (x - x0);
        int y = 0;
        while (y < ch) {
            int v = col[(size_t)y * cw] != 0, y1 = y + 1;
            while (y1 < ch && (col[(size_t)y1 * cw] != 0) == v)
                y1++;
            rb_push(&b, v, (uint64_t)(y1 - y));
            y = y1;
        }
        rb_push(&b, 0, (uint64_t)(h - y0 - ch));
    }
    if (!b.oom)
        rb_flush(&b);
    if (b.oom) {
        free(b.c);
        return eng_error(ENG_ENOMEM, "out of memory for a mask's RLE");
    }
    out->h = h;
    out->w = w;
    out->n = b.n;
    out->counts = b.c;
    return 0;
}

/* ------------------------------------------------------------------ */
/* NMS as torchvision computes it                                       */

/* (score, index) pairs sorted as at::sort with KeyValueCompDesc: NaN first,
 * then decreasing. */
typedef struct kv {
    float k;
    int i;
} kv;

static inline int kv_before(kv a, kv b) { return (isnan(a.k) && !isnan(b.k)) || a.k > b.k; }

/* std::stable_sort: merge sort, ties in input order. */
static void kv_stable_sort(kv *a, kv *tmp, size_t n)
{
    for (size_t w = 1; w < n; w *= 2) {
        for (size_t lo = 0; lo < n; lo += 2 * w) {
            size_t mid = lo + w < n ? lo + w : n, hi = lo + 2 * w < n ? lo + 2 * w : n;
            size_t i = lo, j = mid, k = lo;
            while (i < mid && j < hi)
                tmp[k++] = kv_before(a[j], a[i]) ? a[j++] : a[i++];
            while (i < mid)
                tmp[k++] = a[i++];
            while (j < hi)
                tmp[k++] = a[j++];
        }
        memcpy(a, tmp, n * sizeof *a);
    }
}

/* libstdc++'s std::sort (introsort: median-of-three pivot moved to the
 * front, unguarded partition, heapsort past 2 log2(n) levels, a final
 * insertion sort over runs of 16), step for step, so that ties among the
 * kept boxes of a large NMS come out in torchvision's order. */
#define STL_THRESHOLD 16

static inline void kv_swap(kv *a, kv *b)
{
    kv t = *a;
    *a = *b;
    *b = t;
}

static void stl_move_median_to_first(kv *result, kv *a, kv *b, kv *c)
{
    if (kv_before(*a, *b)) {
        if (kv_before(*b, *c))
            kv_swap(result, b);
        else if (kv_before(*a, *c))
            kv_swap(result, c);
        else
            kv_swap(result, a);
    } else if (kv_before(*a, *c)) {
        kv_swap(result, a);
    } else if (kv_before(*b, *c)) {
        kv_swap(result, c);
    } else {
        kv_swap(result, b);
    }
}

static kv *stl_unguarded_partition(kv *first, kv *last, kv *pivot)
{
    for (;;) {
        while (kv_before(*first, *pivot))
            ++first;
        --last;
        while (kv_before(*pivot, *last))
            --last;
        if (!(first < last))
            return first;
        kv_swap(first, last);
        ++first;
    }
}

static void stl_push_heap(kv *first, ptrdiff_t hole, ptrdiff_t top, kv value)
{
    ptrdiff_t parent = (hole - 1) / 2;
    while (hole > top && kv_before(first[parent], value)) {
        first[hole] = first[parent];
        hole = parent;
        parent = (hole - 1) / 2;
    }
    first[hole] = value;
}

static void stl_adjust_heap(kv *first, ptrdiff_t hole, ptrdiff_t len, kv value)
{
    ptrdiff_t top = hole, second = hole;
    while (second < (len - 1) / 2) {
        second = 2 * (second + 1);
        if (kv_before(first[second], first[second - 1]))
            second--;
        first[hole] = first[second];
        hole = second;
    }
    if ((len & 1) == 0 && second == (len - 2) / 2) {
        second = 2 * (second + 1);
        first[hole] = first[second - 1];
        hole = second - 1;
    }
    stl_push_heap(first, hole, top, value);
}

static void stl_heap_sort(kv *first, kv *last)
{
    ptrdiff_t len = last - first;
    if (len >= 2)
        for (ptrdiff_t parent = (len - 2) / 2;; parent--) {
            stl_adjust_heap(first, parent, len, first[parent]);
            if (parent == 0)
                break;
        }
    while (last - first > 1) {
        --last;
        kv value = *last;
        *last = *first;
        stl_adjust_heap(first, 0, last - first, value);
    }
}

static void stl_introsort_loop(kv *first, kv *last, int depth)
{
    while (last - first > STL_THRESHOLD) {
        if (depth == 0) {
            stl_heap_sort(first, last);
            return;
        }
        --depth;
        kv *mid = first + (last - first) / 2;
        stl_move_median_to_first(first, first + 1, mid, last - 1);
        kv *cut = stl_unguarded_partition(first + 1, last, first);
        stl_introsort_loop(cut, last, depth);
        last = cut;
    }
}

static void stl_unguarded_linear_insert(kv *last)
{
    kv val = *last, *next = last - 1;
    while (kv_before(val, *next)) {
        *last = *next;
        last = next;
        --next;
    }
    *last = val;
}

static void stl_insertion_sort(kv *first, kv *last)
{
    if (first == last)
        return;
    for (kv *i = first + 1; i != last; ++i) {
        if (kv_before(*i, *first)) {
            kv val = *i;
            memmove(first + 1, first, (size_t)(i - first) * sizeof *first);
            *first = val;
        } else {
            stl_unguarded_linear_insert(i);
        }
    }
}

static void kv_std_sort(kv *a, size_t n)
{
    if (n < 2)
        return;
    int lg = 0;
    for (size_t v = n; v > 1; v >>= 1)
        lg++;
    stl_introsort_loop(a, a + n, 2 * lg);
    if (n > STL_THRESHOLD) {
        stl_insertion_sort(a, a + STL_THRESHOLD);
        for (kv *i = a + STL_THRESHOLD; i != a + n; ++i)
            stl_unguarded_linear_insert(i);
    } else {
        stl_insertion_sort(a, a + n);
    }
}

int eng_amg_nms(const float (*boxes)[4], const float *scores, int n, double thresh, int *keep,
                int *n_keep, const eng_amg_hooks *hooks)
{
    *n_keep = 0;
    if (n <= 0)
        return 0;
    kv *order = malloc((size_t)n * sizeof *order), *tmp = malloc((size_t)n * sizeof *tmp);
    float *area = malloc((size_t)n * sizeof *area);
    uint8_t *supp = calloc((size_t)n, 1);
    int rc = 0, nk = 0;
    if (!order || !tmp || !area || !supp) {
        rc = eng_error(ENG_ENOMEM, "out of memory for NMS over %d boxes", n);
        goto out;
    }
    for (int i = 0; i < n; i++) {
        order[i] = (kv){scores[i], i};
        area[i] = (boxes[i][2] - boxes[i][0]) * (boxes[i][3] - boxes[i][1]);
    }
    kv_stable_sort(order, tmp, (size_t)n);
    for (int a = 0; a < n; a++) {
        int i = order[a].i;
        if (supp[i])
            continue;
        if ((a & 255) == 0 && (rc = cancelled(hooks)))
            goto out;
        keep[nk++] = i;
        float ix1 = boxes[i][0], iy1 = boxes[i][1], ix2 = boxes[i][2], iy2 = boxes[i][3];
        for (int b = a + 1; b < n; b++) {
            int j = order[b].i;
            if (supp[j])
                continue;
            float xx1 = ix1 > boxes[j][0] ? ix1 : boxes[j][0];
            float yy1 = iy1 > boxes[j][1] ? iy1 : boxes[j][1];
            float xx2 = ix2 < boxes[j][2] ? ix2 : boxes[j][2];
            float yy2 = iy2 < boxes[j][3] ? iy2 : boxes[j][3];
            float ww = xx2 - xx1 > 0.0f ? xx2 - xx1 : 0.0f;
            float hh = yy2 - yy1 > 0.0f ? yy2 - yy1 : 0.0f;
            float inter = ww * hh;
            float ovr = inter / (area[i] + area[j] - inter);
            if ((double)ovr > thresh)
                supp[j] = 1;
        }
    }
    if (n > NMS_VANILLA_BOXES) {
        /* _batched_nms_vanilla: the kept indices in increasing order, then
         * sorted by score with at::sort (stable = false: std::sort) */
        int m = 0;
        for (int i = 0; i < n; i++)
            if (!supp[i])
                order[m++] = (kv){scores[i], i};
        kv_std_sort(order, (size_t)m);
        for (int i = 0; i < m; i++)
            keep[i] = order[i].i;
    }
out:
    *n_keep = rc ? 0 : nk;
    free(order);
    free(tmp);
    free(area);
    free(supp);
    return rc;
}

/* Keep records keep[0..nk) of r, in that order; free the others. */
static int result_select(eng_amg_result *r, const int *keep, int nk)
{
    eng_amg_mask *sel = malloc(((size_t)nk + 1) * sizeof *sel);
    uint8_t *used = calloc(r->n + 1, 1);
    if (!sel || !used) {
        free(sel);
        free(used);
        return eng_error(ENG_ENOMEM, "out of memory");
    }
    for (int i = 0; i < nk; i++) {
        sel[i] = r->masks[keep[i]];
        used[keep[i]] = 1;
    }
    for (size_t i = 0; i < r->n; i++)
        if (!used[i])
            eng_rle_free(&r->masks[i].rle);
    free(used);
    free(r->masks);
    r->masks = sel;
    r->n = (size_t)nk;
    r->cap = (size_t)nk + 1;
    return 0;
}

/* NMS over r's boxes (box, or alt_boxes when given) with scores. */
static int result_nms(eng_amg_result *r, const int (*alt_boxes)[4], const float *scores,
                      double thresh, const eng_amg_hooks *hooks)
{
    if (r->n == 0)
        return 0;
    if (r->n > (size_t)INT32_MAX)
        return eng_error(ENG_ELIMIT, "too many masks for NMS");
    int n = (int)r->n, nk = 0;
    float(*bx)[4] = malloc((size_t)n * sizeof *bx);
    int *keep = malloc((size_t)n * sizeof *keep);
    int rc;
    if (!bx || !keep) {
        free(bx);
        free(keep);
        return eng_error(ENG_ENOMEM, "out of memory");
    }
    for (int i = 0; i < n; i++)
        for (int k = 0; k < 4; k++)
            bx[i][k] = (float)(alt_boxes ? alt_boxes[i][k] : r->masks[i].box[k]);
    rc = eng_amg_nms((const float(*)[4])bx, scores, n, thresh, keep, &nk, hooks);
    if (!rc)
        rc = result_select(r, keep, nk);
    free(bx);
    free(keep);
    return rc;
}

int eng_amg_crop_nms(eng_amg_result *r, double thresh, const eng_amg_hooks *hooks)
{
    if (r->n == 0)
        return 0;
    float *scores = malloc(r->n * sizeof *scores);
    if (!scores)
        return eng_error(ENG_ENOMEM, "out of memory");
    for (size_t i = 0; i < r->n; i++) {
        const int *c = r->masks[i].crop_box;
        /* 1 / box_area(crop_boxes): an int64 area, its reciprocal in float32 */
        int64_t area = (int64_t)(c[2] - c[0]) * (int64_t)(c[3] - c[1]);
        scores[i] = 1.0f / (float)area;
    }
    int rc = result_nms(r, NULL, scores, thresh, hooks);
    free(scores);
    return rc;
}

/* ------------------------------------------------------------------ */
/* small regions                                                        */

int eng_amg_remove_small_regions(uint8_t *mask, int w, int h, int64_t area_thresh, int holes,
                                 int *changed)
{
    *changed = 0;
    /* the working mask's components (holes: the background's), on runs */
    eng_mask_runs runs;
    int rc = eng_mask_runs_find(mask, h, w, holes ? 0 : 1, &runs);
    if (rc)
        return rc;
    size_t n = runs.n;
    int64_t *size = NULL, *key = NULL;
    uint8_t *small = NULL;
    if (n == 0)
        goto out;
    /* per component (indexed by its root run): size, and the first 2x2
     * block of the image in raster order that it touches, the order in which
     * OpenCV's block-based labelling numbers components (labels decide which
     * of equally large islands survives when all are small) */
    size = calloc(n, sizeof *size);
    key = malloc(n * sizeof *key);
    small = calloc(n, 1);
    if (!size || !key || !small) {
        rc = eng_error(ENG_ENOMEM, "out of memory for connected components");
        goto out;
    }
    for (size_t i = 0; i < n; i++)
        key[i] = INT64_MAX;
    int64_t bw = ((int64_t)w + 1) / 2;
    for (size_t i = 0; i < n; i++) {
        const eng_mask_run *ru = &runs.r[i];
        uint32_t root = eng_mask_run_root(&runs, (uint32_t)i);
        size[root] += ru->x1 - ru->x0;
        int64_t k = (int64_t)(ru->y / 2) * bw + ru->x0 / 2;
        if (k < key[root])
            key[root] = k;
    }
    int any_small = 0, any_large = 0;
    size_t best = n;
    for (size_t i = 0; i < n; i++) {
        if (runs.r[i].parent != i)
            continue;
        if (size[i] < area_thresh) {
            small[i] = 1;
            any_small = 1;
        } else {
            any_large = 1;
        }
        /* np.argmax(sizes): the largest, the lowest label among equals */
        if (best == n || size[i] > size[best] || (size[i] == size[best] && key[i] < key[best]))
            best = i;
    }
    if (!any_small)
        goto out;
    *changed = 1;
    /* holes: fill the small background components. islands: keep the large
     * components, or only the largest when every one is small */
    for (size_t i = 0; i < n; i++) {
        uint32_t root = eng_mask_run_root(&runs, (uint32_t)i);
        int drop = holes ? small[root] : any_large ? small[root] : root != best;
        if (drop)
            memset(mask + (size_t)runs.r[i].y * w + runs.r[i].x0, holes ? 1 : 0,
                   (size_t)(runs.r[i].x1 - runs.r[i].x0));
    }
out:
    eng_mask_runs_free(&runs);
    free(size);
    free(key);
    free(small);
    return rc;
}

int eng_amg_small_regions(eng_amg_result *r, int w, int h, int min_area, double thresh,
                          const eng_amg_hooks *hooks)
{
    if (r->n == 0)
        return 0;
    size_t px = (size_t)w * (size_t)h;
    uint8_t *mask = malloc(px ? px : 1);
    float *scores = malloc(r->n * sizeof *scores);
    int(*nbox)[4] = malloc(r->n * sizeof *nbox);
    int rc = 0;
    if (!mask || !scores || !nbox) {
        rc = eng_error(ENG_ENOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < r->n; i++) {
        eng_amg_mask *mk = &r->masks[i];
        if ((rc = cancelled(hooks)))
            goto out;
        if (mk->rle.h != h || mk->rle.w != w) {
            rc = eng_error(ENG_EINVAL, "mask %zu is %dx%d, not %dx%d", i, mk->rle.w, mk->rle.h, w,
                           h);
            goto out;
        }
        if ((rc = eng_rle_decode(&mk->rle, mask)))
            goto out;
        int ch_holes = 0, ch_islands = 0;
        if ((rc = eng_amg_remove_small_regions(mask, w, h, min_area, 1, &ch_holes)) ||
            (rc = eng_amg_remove_small_regions(mask, w, h, min_area, 0, &ch_islands)))
            goto out;
        /* score 1 for unchanged masks so that NMS prefers them */
        int changed = ch_holes || ch_islands;
        scores[i] = changed ? 0.0f : 1.0f;
        eng_amg_mask_box(mask, w, h, nbox[i]);
        if (changed) {
            /* a changed mask that NMS keeps carries its new RLE and box */
            eng_rle nr;
            if ((rc = eng_rle_encode(mask, h, w, &nr)))
                goto out;
            eng_rle_free(&mk->rle);
            mk->rle = nr;
            memcpy(mk->box, nbox[i], sizeof mk->box);
        }
    }
    rc = result_nms(r, (const int(*)[4])nbox, scores, thresh, hooks);
out:
    free(mask);
    free(scores);
    free(nbox);
    return rc;
}

/* ------------------------------------------------------------------ */
/* the generator                                                        */

void eng_amg_result_free(eng_amg_result *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->n; i++)
        eng_rle_free(&r->masks[i].rle);
    free(r->masks);
    memset(r, 0, sizeof *r);
}

static int result_push(eng_amg_result *r, const eng_amg_mask *m)
{
    if (r->n == r->cap) {
        size_t cap = r->cap ? 2 * r->cap : 64;
        eng_amg_mask *nm = realloc(r->masks, cap * sizeof *nm);
        if (!nm)
            return eng_error(ENG_ENOMEM, "out of memory for %zu masks", cap);
        r->masks = nm;
        r->cap = cap;
    }
    r->masks[r->n++] = *m;
    return 0;
}

/* One crop's run through eng_sam_segment_each. */
typedef struct crop_run {
    const eng_amg_params *p;
    const eng_amg_hooks *hooks;
    int crop[4];          /* x0, y0, x1, y1 */
    int cw, ch, w, h;     /* crop and image size */
    const double *pts;    /* [n, 2] prompts in the crop's frame */
    eng_amg_result cand;  /* this crop's candidates: boxes and points in the crop's frame */
    size_t *bytes;        /* RLE bytes held (all crops) */
    size_t max_bytes;     /* bound on *bytes (0: none) */
    eng_amg_stats *stats; /* counters */
    eng_amg_progress prog;
    size_t kept_before; /* masks kept by earlier crops */
} crop_run;

static int cr_before(void *arg, int first, int n, int total)
{
    crop_run *c = arg;
    c->prog.points_done = first;
    c->prog.points = total;
    c->prog.kept = c->kept_before + c->cand.n;
    if (c->hooks && c->hooks->progress)
        c->hooks->progress(c->hooks->arg, &c->prog);
    int rc = cancelled(c->hooks);
    if (!rc)
        c->stats->prompts += n; /* decoded next */
    return rc;
}

static void cr_select(void *arg, int first, int n, const float *iou, uint8_t *keep)
{
    crop_run *c = arg;
    /* if pred_iou_thresh > 0: keep iou_preds > thresh (float32 compare) */
    float t = (float)c->p->pred_iou_thresh;
    for (int i = 0; i < n * 3; i++) {
        keep[i] = !(c->p->pred_iou_thresh > 0.0) || iou[i] > t;
        c->stats->upscaled += keep[i];
    }
}

static int cr_mask(void *arg, const eng_sam_mask *mk)
{
    crop_run *c = arg;
    eng_amg_mask r;
    memset(&r, 0, sizeof r);
    r.predicted_iou = mk->iou;
    r.stability_score = eng_sam_stability(mk->above_hi, mk->above_lo);
    if (c->p->stability_score_thresh > 0.0 &&
        !(r.stability_score >= (float)c->p->stability_score_thresh))
        return 0;
    eng_amg_mask_box(mk->mask, c->cw, c->ch, r.box);
    if (eng_amg_box_near_crop_edge(r.box, c->crop, c->w, c->h))
        return 0;
    int rc = eng_amg_rle_uncrop(mk->mask, c->cw, c->ch, c->crop[0], c->crop[1], c->w, c->h, &r.rle);
    if (rc)
        return rc;
    *c->bytes += r.rle.n * sizeof(uint32_t) + sizeof r;
    if (c->max_bytes && *c->bytes > c->max_bytes) {
        eng_rle_free(&r.rle);
        return eng_error(ENG_ELIMIT,
                         "the masks kept so far take more than %zu bytes (max_mask_bytes); raise "
                         "pred_iou_thresh or stability_score_thresh, or lower points_per_side",
                         c->max_bytes);
    }
    r.point[0] = c->pts[2 * mk->prompt];
    r.point[1] = c->pts[2 * mk->prompt + 1];
    memcpy(r.crop_box, c->crop, sizeof r.crop_box);
    if ((rc = result_push(&c->cand, &r))) {
        eng_rle_free(&r.rle);
        return rc;
    }
    c->stats->candidates++;
    return 0;
}

/* The crop's pixels as an image of their own. */
static int crop_image(const eng_image *img, const int b[4], eng_image *out)
{
    int cw = b[2] - b[0], ch = b[3] - b[1];
    out->w = cw;
    out->h = ch;
    out->rgb = malloc((size_t)cw * (size_t)ch * 3);
    if (!out->rgb)
        return eng_error(ENG_ENOMEM, "out of memory for a %dx%d crop", cw, ch);
    for (int y = 0; y < ch; y++)
        memcpy(out->rgb + (size_t)y * cw * 3, img->rgb + ((size_t)(b[1] + y) * img->w + b[0]) * 3,
               (size_t)cw * 3);
    return 0;
}

/* _process_crop: embedding, grid, batches, NMS within the crop, uncrop;
 * the crop's masks are appended to out. */
static int process_crop(eng_sam *m, const eng_amg_input *in, const eng_amg_params *p,
                        const eng_amg_hooks *hooks, int ci, int n_crops, const int box[4],
                        int layer, float *input, float *emb, size_t *bytes, eng_amg_result *out)
{
    int W = in->image ? in->image->w : in->width, H = in->image ? in->image->h : in->height;
    int cw = box[2] - box[0], ch = box[3] - box[1];
    int whole = box[0] == 0 && box[1] == 0 && cw == W && ch == H;
    const float *embedding = NULL;
    const char *key = NULL;
    eng_sam_imginfo info = {.orig_w = cw, .orig_h = ch};
    eng_resize_shape(cw, ch, ENG_SAM_IMG, &info.input_w, &info.input_h);
    int rc;

    if (whole && in->embedding) {
        embedding = in->embedding;
        key = in->key;
    } else {
        /* set_image(image[y0:y1, x0:x1]) */
        eng_image crop = {0};
        const eng_image *src = in->image;
        if (!whole) {
            if ((rc = crop_image(in->image, box, &crop)))
                return rc;
            src = &crop;
        }
        double t0 = now_ms();
        rc = eng_sam_preprocess(src, input, &info);
        eng_image_free(&crop);
        if (!rc)
            rc = eng_sam_encode(m, input, 1, emb);
        out->stats.encode_ms += now_ms() - t0;
        if (rc)
            return rc;
        embedding = emb;
    }

    /* the layer's grid, scaled to the crop: points_for_image = grid * [w, h] */
    int side = 0, n;
    const double *grid = NULL;
    double *own = NULL;
    if (p->grids) {
        n = p->grids[layer].n;
        grid = p->grids[layer].xy;
    } else {
        int64_t f = 1;
        for (int i = 0; i < layer; i++)
            f *= p->crop_n_points_downscale_factor;
        side = (int)(p->points_per_side / f);
        n = side * side;
    }
    double *pts = malloc((size_t)n * 2 * sizeof *pts);
    float *fpts = malloc((size_t)n * 2 * sizeof *fpts);
    eng_sam_prompt *pr = calloc((size_t)n, sizeof *pr);
    if (!grid)
        grid = own = malloc((size_t)n * 2 * sizeof *own);
    if (!pts || !fpts || !pr || !grid) {
        free(pts);
        free(fpts);
        free(pr);
        free(own);
        return eng_error(ENG_ENOMEM, "out of memory for %d prompts", n);
    }
    if (own)
        eng_amg_point_grid(side, own);
    static const int one = 1;
    for (int i = 0; i < n; i++) {
        pts[2 * i] = grid[2 * i] * cw;
        pts[2 * i + 1] = grid[2 * i + 1] * ch;
        fpts[2 * i] = (float)pts[2 * i];
        fpts[2 * i + 1] = (float)pts[2 * i + 1];
        pr[i].n_points = 1;
        pr[i].points = &fpts[2 * i];
        pr[i].labels = &one;
        pr[i].lora = in->lora;
    }

    crop_run c;
    memset(&c, 0, sizeof c);
    c.p = p;
    c.hooks = hooks;
    memcpy(c.crop, box, sizeof c.crop);
    c.cw = cw;
    c.ch = ch;
    c.w = W;
    c.h = H;
    c.pts = pts;
    c.bytes = bytes;
    c.max_bytes = in->max_mask_bytes;
    c.stats = &out->stats;
    c.prog.crop = ci;
    c.prog.n_crops = n_crops;
    c.kept_before = out->n;
    eng_sam_each each = {.offset = (float)p->stability_score_offset,
                         .batch = p->points_per_batch,
                         .before = cr_before,
                         .select = cr_select,
                         .mask = cr_mask,
                         .arg = &c};
    eng_sam_timing tm = {0, 0};
    rc = eng_sam_segment_each(m, key, embedding, &info, pr, n, 1, &each, &tm);
    out->stats.decode_ms += tm.decode_ms;
    out->stats.postprocess_ms += tm.postprocess_ms;
    free(fpts);
    free(pr);
    free(own);
    if (!rc) {
        c.prog.points_done = n;
        c.prog.kept = out->n + c.cand.n;
        if (hooks && hooks->progress)
            hooks->progress(hooks->arg, &c.prog);
        /* remove duplicates within the crop: NMS on the predicted IoU, boxes
         * in the crop's frame */
        double t0 = now_ms();
        float *scores = malloc((c.cand.n + 1) * sizeof *scores);
        if (!scores) {
            rc = eng_error(ENG_ENOMEM, "out of memory");
        } else {
            for (size_t i = 0; i < c.cand.n; i++)
                scores[i] = c.cand.masks[i].predicted_iou;
            rc = result_nms(&c.cand, NULL, scores, p->box_nms_thresh, hooks);
            free(scores);
        }
        out->stats.nms_ms += now_ms() - t0;
    }
    /* back to the image's frame */
    for (size_t i = 0; !rc && i < c.cand.n; i++) {
        eng_amg_mask *mk = &c.cand.masks[i];
        mk->box[0] += box[0];
        mk->box[1] += box[1];
        mk->box[2] += box[0];
        mk->box[3] += box[1];
        mk->point[0] += box[0];
        mk->point[1] += box[1];
        if ((rc = result_push(out, mk)))
            break;
        mk->rle.counts = NULL; /* moved */
    }
    eng_amg_result_free(&c.cand);
    free(pts);
    return rc;
}

int eng_amg_run(eng_sam *m, const eng_amg_input *in, const eng_amg_params *p,
                const eng_amg_hooks *hooks, eng_amg_result *out)
{
    memset(out, 0, sizeof *out);
    int rc = eng_amg_check(p, NULL);
    if (rc)
        return rc;
    int W = in->image ? in->image->w : in->width, H = in->image ? in->image->h : in->height;
    if (W < 1 || H < 1)
        return eng_error(ENG_EINVAL, "bad image size %dx%d", W, H);
    if ((uint64_t)W * (uint64_t)H > UINT32_MAX)
        return eng_error(ENG_ELIMIT, "a %dx%d image is too large for RLE masks", W, H);
    if (!in->image && (!in->embedding || p->crop_n_layers > 0))
        return eng_error(ENG_EINVAL, p->crop_n_layers > 0
                                         ? "crop layers encode crops of the image: they need its "
                                           "pixels, not only its embedding"
                                         : "neither the image nor its embedding was given");
    int n_crops = 1;
    for (int i = 1, c = 4; i <= p->crop_n_layers; i++, c *= 4)
        n_crops += c;
    int(*boxes)[4] = malloc((size_t)n_crops * sizeof *boxes);
    int *layers = malloc((size_t)n_crops * sizeof *layers);
    float *input = NULL, *emb = NULL;
    int need_encoder = !in->embedding || p->crop_n_layers > 0;
    if (need_encoder) {
        input = malloc((size_t)3 * ENG_SAM_IMG * ENG_SAM_IMG * sizeof *input);
        emb = malloc((size_t)ENG_SAM_EMB_FLOATS * sizeof *emb);
    }
    if (!boxes || !layers || (need_encoder && (!input || !emb))) {
        rc = eng_error(ENG_ENOMEM, "out of memory");
        goto out;
    }
    if ((rc = eng_amg_crop_boxes(W, H, p->crop_n_layers, p->crop_overlap_ratio, boxes, layers,
                                 n_crops)) < 0)
        goto out;
    rc = 0;
    size_t bytes = 0;
    for (int ci = 0; ci < n_crops && !rc; ci++) {
        if ((rc = cancelled(hooks)))
            break;
        rc = process_crop(m, in, p, hooks, ci, n_crops, boxes[ci], layers[ci], input, emb, &bytes,
                          out);
        out->stats.crops++;
        /* what NMS dropped no longer counts */
        bytes = 0;
        for (size_t i = 0; i < out->n; i++)
            bytes += out->masks[i].rle.n * sizeof(uint32_t) + sizeof out->masks[i];
    }
    double t0 = now_ms();
    /* remove duplicate masks between crops, preferring smaller crops */
    if (!rc && n_crops > 1)
        rc = eng_amg_crop_nms(out, p->crop_nms_thresh, hooks);
    if (!rc && p->min_mask_region_area > 0)
        rc = eng_amg_small_regions(
            out, W, H, p->min_mask_region_area,
            p->box_nms_thresh > p->crop_nms_thresh ? p->box_nms_thresh : p->crop_nms_thresh, hooks);
    out->stats.nms_ms += now_ms() - t0;
out:
    free(boxes);
    free(layers);
    free(input);
    free(emb);
    return rc;
}
