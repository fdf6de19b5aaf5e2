/*
 * train/mask.c: polygon rasterisation with pycocotools' arithmetic, and
 * union / intersection / lookup on RLE runs (see mask.h).
 */
#include "train/mask.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/error.h"

/* ---- run cursor: walks an RLE's runs, skipping empty ones ---- */

typedef struct {
    const uint32_t *c; /* counts */
    size_t n, i;       /* run count, current run */
    uint64_t left;     /* pixels left in the current run */
    int v;             /* value of the current run (run i is i & 1) */
} mask__cur;

static void mask__skip_empty(mask__cur *k)
{
    while (k->left == 0 && k->i + 1 < k->n) {
        k->i++;
        k->left = k->c[k->i];
        k->v = (int)(k->i & 1);
    }
}

static void mask__cur_init(mask__cur *k, const eng_rle *r)
{
    k->c = r->counts;
    k->n = r->n;
    k->i = 0;
    k->left = r->n ? r->counts[0] : 0;
    k->v = 0;
    mask__skip_empty(k);
}

static void mask__cur_step(mask__cur *k, uint64_t s)
{
    k->left -= s;
    mask__skip_empty(k);
}

/* Make room for `need` more entries in a doubling uint32 array. */
static int mask__grow(uint32_t **v, size_t *cap, size_t n, size_t need, const char *what)
{
    if (n + need <= *cap)
        return 0;
    size_t c = *cap ? *cap * 2 : 256;
    while (c < n + need)
        c *= 2;
    uint32_t *nv = realloc(*v, c * sizeof *nv);
    if (!nv)
        return eng_error(ENG_ENOMEM, "%s: out of memory for %zu entries", what, c);
    *v = nv;
    *cap = c;
    return 0;
}

/* Growable run list that merges equal neighbours, so the output is
 * canonical (no empty runs but a leading zero run). */
typedef struct {
    uint32_t *v;
    size_t n, cap;
    int cur; /* value of run n-1 */
} mask__out;

static int mask__out_push(mask__out *o, int val, uint64_t len)
{
    if (len == 0)
        return 0;
    if (o->n > 0 && o->cur == val) {
        o->v[o->n - 1] += (uint32_t)len;
        return 0;
    }
    /* A first run of ones needs the empty leading zero run. */
    int need = (o->n == 0 && val) ? 2 : 1;
    int rc = mask__grow(&o->v, &o->cap, o->n, (size_t)need, "mask runs");
    if (rc)
        return rc;
    if (need == 2)
        o->v[o->n++] = 0;
    o->v[o->n++] = (uint32_t)len;
    o->cur = val;
    return 0;
}

uint64_t tr_rle_intersection(const eng_rle *a, const eng_rle *b)
{
    mask__cur x, y;
    mask__cur_init(&x, a);
    mask__cur_init(&y, b);
    uint64_t both = 0;
    while (x.left && y.left) {
        uint64_t s = x.left < y.left ? x.left : y.left;
        if (x.v && y.v)
            both += s;
        mask__cur_step(&x, s);
        mask__cur_step(&y, s);
    }
    return both;
}

uint64_t tr_rle_union_area(const eng_rle *a, const eng_rle *b)
{
    return eng_rle_area(a) + eng_rle_area(b) - tr_rle_intersection(a, b);
}

/* out = a | b (b NULL: a canonical copy of a), same size. */
static int mask__merge(const eng_rle *a, const eng_rle *b, eng_rle *out)
{
    mask__cur x, y = {0};
    mask__out o = {0};
    int rc;
    mask__cur_init(&x, a);
    if (b)
        mask__cur_init(&y, b);
    while (x.left && (!b || y.left)) {
        uint64_t s = !b || x.left < y.left ? x.left : y.left;
        if ((rc = mask__out_push(&o, x.v | (b ? y.v : 0), s)) < 0) {
            free(o.v);
            return rc;
        }
        mask__cur_step(&x, s);
        if (b)
            mask__cur_step(&y, s);
    }
    out->h = a->h;
    out->w = a->w;
    out->n = o.n;
    out->counts = o.v;
    return 0;
}

int tr_rle_union(const eng_rle *const *r, size_t n, eng_rle *out)
{
    memset(out, 0, sizeof *out);
    if (n == 0)
        return eng_error(ENG_EINVAL, "mask: union of no masks");
    for (size_t i = 1; i < n; i++)
        if (r[i]->h != r[0]->h || r[i]->w != r[0]->w)
            return eng_error(ENG_EINVAL, "mask: union of a %dx%d and a %dx%d mask", r[0]->h,
                             r[0]->w, r[i]->h, r[i]->w);
    /* Fold pairwise, acc = acc | r[i]: each pass is linear in the runs. */
    eng_rle acc;
    int rc = mask__merge(r[0], NULL, &acc);
    if (rc)
        return rc;
    for (size_t i = 1; i < n; i++) {
        eng_rle next;
        rc = mask__merge(&acc, r[i], &next);
        eng_rle_free(&acc);
        if (rc)
            return rc;
        acc = next;
    }
    *out = acc;
    return 0;
}

int tr_rle_copy(const eng_rle *src, eng_rle *dst)
{
    memset(dst, 0, sizeof *dst);
    if (src->n) {
        dst->counts = malloc(src->n * sizeof *dst->counts);
        if (!dst->counts)
            return eng_error(ENG_ENOMEM, "mask: out of memory for %zu runs", src->n);
        memcpy(dst->counts, src->counts, src->n * sizeof *dst->counts);
    }
    dst->h = src->h;
    dst->w = src->w;
    dst->n = src->n;
    return 0;
}

int tr_rle_at(const eng_rle *r, int x, int y)
{
    if (x < 0 || y < 0 || x >= r->w || y >= r->h)
        return 0;
    const uint64_t pos = (uint64_t)x * (uint64_t)r->h + (uint64_t)y;
    uint64_t end = 0;
    for (size_t i = 0; i < r->n; i++) {
        end += r->counts[i];
        if (pos < end)
            return (int)(i & 1);
    }
    return 0;
}

void tr_rle_paint(const eng_rle *r, uint8_t *mask)
{
    const size_t h = (size_t)r->h, stride = (size_t)r->w;
    uint64_t pos = 0;
    for (size_t i = 0; i < r->n; i++) {
        uint64_t c = r->counts[i];
        if ((i & 1) && c) {
            size_t x = (size_t)(pos / h), y = (size_t)(pos % h);
            for (uint64_t k = 0; k < c; k++) {
                mask[y * stride + x] = 1;
                if (++y == h) {
                    y = 0;
                    x++;
                }
            }
        }
        pos += c;
    }
}

/* ---- polygons ---- */

/* Growable list of column-major pixel positions where the boundary crosses
 * a pixel-centre column. */
typedef struct {
    uint32_t *v;
    size_t n, cap;
} mask__marks;

static int mask__mark(mask__marks *m, uint32_t pos)
{
    int rc = mask__grow(&m->v, &m->cap, m->n, 1, "polygon boundary crossings");
    if (rc)
        return rc;
    m->v[m->n++] = pos;
    return 0;
}

static int mask__cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x > y ? 1 : x < y ? -1 : 0;
}

/* The boundary walker: consecutive upsampled points (u, v); a crossing is
 * recorded where u moves between 5c+2 and 5c+3, i.e. across the centre of
 * pixel column c, at the first pixel row whose centre is at or below the
 * boundary there (pycocotools' rule, its expressions kept as written so the
 * rounding is the same). */
typedef struct {
    int h, w;
    int have_prev, pu, pv;
    mask__marks marks;
} mask__walk;

static int mask__visit(mask__walk *k, int u, int v)
{
    const double scale = 5.0;
    int rc = 0;
    if (k->have_prev && u != k->pu) {
        double xd = (double)(u < k->pu ? u : u - 1);
        xd = (xd + .5) / scale - .5;
        if (floor(xd) == xd && xd >= 0 && xd <= k->w - 1) {
            double yd = (double)(v < k->pv ? v : k->pv);
            yd = (yd + .5) / scale - .5;
            if (yd < 0)
                yd = 0;
            else if (yd > k->h)
                yd = k->h;
            yd = ceil(yd);
            rc = mask__mark(&k->marks, (uint32_t)((int)xd * k->h + (int)yd));
        }
    }
    k->have_prev = 1;
    k->pu = u;
    k->pv = v;
    return rc;
}

int tr_rle_from_polygon(const double *xy, size_t k, int h, int w, eng_rle *out)
{
    memset(out, 0, sizeof *out);
    if (h < 1 || w < 1 || (uint64_t)h * (uint64_t)w >= ((uint64_t)1 << 32))
        return eng_error(ENG_EINVAL, "polygon: bad mask size %dx%d", h, w);
    if (k < 3)
        return eng_error(ENG_EINVAL, "polygon: %zu vertices (at least 3 needed)", k);
    for (size_t j = 0; j < 2 * k; j++)
        if (!isfinite(xy[j]) || fabs(xy[j]) > TR_POLY_MAX_COORD)
            return eng_error(ENG_EINVAL, "polygon: vertex %zu has coordinate %g out of range",
                             j / 2, xy[j]);

    /* Vertices at 5x, rounded as pycocotools does: (int)(5 v + 0.5), which
     * truncates toward zero (a coordinate just below 0 rounds up). */
    int *px = malloc((k + 1) * sizeof *px), *py = malloc((k + 1) * sizeof *py);
    mask__walk wk = {.h = h, .w = w};
    int rc = 0;
    if (!px || !py) {
        rc = eng_error(ENG_ENOMEM, "polygon: out of memory for %zu vertices", k);
        goto done;
    }
    uint64_t steps = 0;
    for (size_t j = 0; j < k; j++) {
        px[j] = (int)(5.0 * xy[2 * j] + .5);
        py[j] = (int)(5.0 * xy[2 * j + 1] + .5);
    }
    px[k] = px[0];
    py[k] = py[0];
    for (size_t j = 0; j < k; j++) {
        int dx = abs(px[j + 1] - px[j]), dy = abs(py[j + 1] - py[j]);
        steps += (uint64_t)(dx > dy ? dx : dy) + 1;
    }
    if (steps > TR_POLY_MAX_STEPS) {
        rc = eng_error(ENG_ELIMIT, "polygon: boundary of %llu steps is longer than %u",
                       (unsigned long long)steps, TR_POLY_MAX_STEPS);
        goto done;
    }

    /* Trace each edge from its first vertex to its second with a DDA along
     * the longer axis. pycocotools computes every point from the edge's
     * endpoint of lower coordinate on that axis (swapping when the edge runs
     * backwards) and walks the index in reverse so the points still come in
     * boundary order; the same arithmetic is kept for the same rounding. */
    for (size_t j = 0; j < k && rc == 0; j++) {
        int xs = px[j], xe = px[j + 1], ys = py[j], ye = py[j + 1];
        const int dx = abs(xe - xs), dy = abs(ys - ye);
        const int flip = (dx >= dy && xs > xe) || (dx < dy && ys > ye);
        if (flip) {
            int t = xs;
            xs = xe;
            xe = t;
            t = ys;
            ys = ye;
            ye = t;
        }
        if (dx == 0 && dy == 0) {
            /* A repeated vertex: one point, no crossing (pycocotools
             * divides 0 by 0 here, and the point's row is never read). */
            rc = mask__visit(&wk, xs, ys);
            continue;
        }
        const double s = dx >= dy ? (double)(ye - ys) / dx : (double)(xe - xs) / dy;
        if (dx >= dy) {
            for (int d = 0; d <= dx && rc == 0; d++) {
                int t = flip ? dx - d : d;
                rc = mask__visit(&wk, t + xs, (int)(ys + s * t + .5));
            }
        } else {
            for (int d = 0; d <= dy && rc == 0; d++) {
                int t = flip ? dy - d : d;
                rc = mask__visit(&wk, (int)(xs + s * t + .5), t + ys);
            }
        }
    }
    if (rc)
        goto done;

    /* Crossings, sorted, are the run boundaries: the differences between
     * consecutive ones (the last against h*w) are the runs. Two crossings at
     * one pixel cancel: the empty run between them is dropped and the next
     * run joins the one before, as pycocotools does. */
    const uint32_t area = (uint32_t)((uint64_t)h * (uint64_t)w);
    if ((rc = mask__mark(&wk.marks, area)) < 0)
        goto done;
    qsort(wk.marks.v, wk.marks.n, sizeof *wk.marks.v, mask__cmp_u32);
    uint32_t *a = wk.marks.v, prev = 0;
    size_t na = wk.marks.n;
    for (size_t j = 0; j < na; j++) {
        uint32_t t = a[j];
        a[j] -= prev;
        prev = t;
    }
    size_t m = 0, j = 0;
    a[m++] = a[j++];
    while (j < na) {
        if (a[j] > 0)
            a[m++] = a[j++];
        else {
            j++;
            if (j < na)
                a[m - 1] += a[j++];
        }
    }
    out->h = h;
    out->w = w;
    out->n = m;
    out->counts = a;
    wk.marks.v = NULL;
done:
    free(px);
    free(py);
    free(wk.marks.v);
    return rc;
}

/* v clamped to [lo, hi] (infinities included). */
static double mask__clamp(double v, double lo, double hi) { return v < lo ? lo : v > hi ? hi : v; }

int tr_rle_from_box(const double box[4], int h, int w, eng_rle *out)
{
    /* A box reaching far past the image rasterises as the box clamped to
     * a pixel beyond each border: the crossings it loses lie outside the
     * image, where pycocotools drops them too. */
    const double xs = mask__clamp(box[0], -1, w + 1), xe = mask__clamp(box[0] + box[2], -1, w + 1);
    const double ys = mask__clamp(box[1], -1, h + 1), ye = mask__clamp(box[1] + box[3], -1, h + 1);
    const double xy[8] = {xs, ys, xs, ye, xe, ye, xe, ys};
    return tr_rle_from_polygon(xy, 4, h, w, out);
}
