/*
 * engine/rle.c: COCO run-length encoding of binary masks (see rle.h), and
 * the outer-boundary polygons of a mask's connected components.
 *
 * The RLE follows pycocotools' maskApi.c: counts alternate zero runs and
 * one runs over the pixels in column-major order, the first count being the
 * (possibly empty) leading zero run. Masks here are row-major, so encoding
 * and decoding walk columns; every pass is linear in the pixel count and
 * allocates only whole arrays, never per pixel or per run.
 */
#include "rle.h"

#include "error.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

/* Counts are uint32 as in pycocotools, so a mask of more pixels than that
 * could hold a run we cannot represent; such masks are refused up front. */
#define RLE__MAX_PIXELS ((uint64_t)UINT32_MAX)

/* One compressed count takes at most 7 characters: a delta of up to 32
 * magnitude bits plus a sign bit needs 34 bits, 5 bits per character. */
#define RLE__MAX_GROUP 7

static int rle__check_dims(int h, int w, uint64_t *area)
{
    if (h < 0 || w < 0)
        return eng_error(ENG_EINVAL, "rle: bad mask size %dx%d", h, w);
    *area = (uint64_t)h * (uint64_t)w;
    if (*area > RLE__MAX_PIXELS)
        return eng_error(ENG_ELIMIT, "rle: mask %dx%d has more than %llu pixels", h, w,
                         (unsigned long long)RLE__MAX_PIXELS);
    return 0;
}

/* Growable count array for the encoder: doubling keeps it amortised linear. */
typedef struct {
    uint32_t *v;
    size_t n, cap, max;
} rle__buf;

static int rle__push(rle__buf *b, uint32_t c)
{
    if (b->n == b->cap) {
        size_t cap = b->cap * 2;
        if (cap > b->max)
            cap = b->max;
        uint32_t *v = realloc(b->v, cap * sizeof *v);
        if (!v)
            return eng_error(ENG_ENOMEM, "rle: out of memory for %zu runs", cap);
        b->v = v;
        b->cap = cap;
    }
    b->v[b->n++] = c;
    return 0;
}

/* Record a run boundary at (x, y) (growing the pair array by doubling) and
 * count it for column x. */
static int rle__event(uint32_t **exs, size_t *nev, size_t *cap, uint32_t *count, uint32_t x,
                      uint32_t y)
{
    if (*nev == *cap) {
        uint32_t *p = realloc(*exs, *cap * 4 * sizeof *p);
        if (!p)
            return eng_error(ENG_ENOMEM, "rle: out of memory for run boundaries");
        *exs = p;
        *cap *= 2;
    }
    (*exs)[2 * *nev] = x;
    (*exs)[2 * *nev + 1] = y;
    (*nev)++;
    count[x]++;
    return 0;
}

int eng_rle_encode(const uint8_t *mask, int h, int w, eng_rle *out)
{
    uint64_t area = 0;
    int rc;

    memset(out, 0, sizeof *out);
    if ((rc = rle__check_dims(h, w, &area)) < 0)
        return rc;
    assert(mask || area == 0);

    /* At most area + 1 runs (every pixel flips, plus the leading zero run);
     * start small since real masks have a few runs per column. */
    rle__buf b = {.max = (size_t)area + 1};
    b.cap = 2 * (size_t)w + 16;
    if (b.cap > b.max)
        b.cap = b.max;
    b.v = malloc(b.cap * sizeof *b.v);
    if (!b.v)
        return eng_error(ENG_ENOMEM, "rle: out of memory for %zu runs", b.cap);

    /* Runs are column-major but the mask is row-major: walking columns
     * touches one cache line per pixel (7 ms for a 6 MP mask). Instead scan
     * rows once: a run boundary inside a column is a pixel that differs from
     * the one above it (row -1 counts as background), so compare each row
     * with the previous one 16 bytes at a time (masks have few boundaries,
     * so almost every block matches) and collect the boundaries as (x, y) in
     * row order; then bucket them by column (counting sort: stable, so each
     * column's list stays in increasing y). */
    uint32_t *start = calloc((size_t)w + 1, sizeof *start); /* per-column counts, then ends */
    size_t nev = 0, cap_ev = 4096;
    uint32_t *exs = malloc(cap_ev * 2 * sizeof *exs); /* (x, y) pairs in row order */
    uint32_t *ev = NULL;                              /* y of each boundary, by column */
    if (!start || !exs) {
        rc = eng_error(ENG_ENOMEM, "rle: out of memory");
        goto fail;
    }
    for (int y = 0; y < h; y++) {
        const uint8_t *row = mask + (size_t)y * (size_t)w;
        const uint8_t *up = y ? row - w : NULL;
        int x = 0;
#ifdef __SSE2__
        const __m128i zero = _mm_setzero_si128();
        for (; x + 16 <= w; x += 16) {
            __m128i a = _mm_cmpeq_epi8(_mm_loadu_si128((const __m128i *)(row + x)), zero);
            __m128i c = up ? _mm_cmpeq_epi8(_mm_loadu_si128((const __m128i *)(up + x)), zero)
                           : _mm_set1_epi8(-1);
            unsigned d = (unsigned)_mm_movemask_epi8(_mm_xor_si128(a, c));
            for (; d; d &= d - 1)
                if ((rc = rle__event(&exs, &nev, &cap_ev, start, (uint32_t)(x + __builtin_ctz(d)),
                                     (uint32_t)y)) < 0)
                    goto fail;
        }
#endif
        for (; x < w; x++)
            if ((row[x] != 0) != (up ? up[x] != 0 : 0) &&
                (rc = rle__event(&exs, &nev, &cap_ev, start, (uint32_t)x, (uint32_t)y)) < 0)
                goto fail;
    }
    /* counts -> column starts (exclusive prefix sums), then place */
    uint32_t acc = 0;
    for (int x = 0; x <= w; x++) {
        uint32_t c = start[x];
        start[x] = acc;
        acc += c;
    }
    ev = malloc((nev + 1) * sizeof *ev);
    if (!ev) {
        rc = eng_error(ENG_ENOMEM, "rle: out of memory for run boundaries");
        goto fail;
    }
    for (size_t k = 0; k < nev; k++)
        ev[start[exs[2 * k]]++] = exs[2 * k + 1];
    free(exs);
    exs = NULL;
    /* Now start[x] is the end of column x's boundaries (= the beginning of
     * column x+1's). Walk the column-major stream: column x
     * begins at index x*h with its top pixel's value (an event at y = 0),
     * and flips at each of its other events. */
    uint32_t run = 0, last = 0; /* last: index where the current run began */
    int cur = 0;
    uint32_t e0 = 0;
    for (int x = 0; x < w; x++) {
        uint32_t e1 = start[x];
        uint32_t base = (uint32_t)x * (uint32_t)h;
        int top = e0 < e1 && ev[e0] == 0;
        uint32_t k = e0 + (uint32_t)top;
        if (top != cur) {
            if ((rc = rle__push(&b, base - last)) < 0)
                goto fail;
            last = base;
            cur = top;
        }
        for (; k < e1; k++) {
            if ((rc = rle__push(&b, base + ev[k] - last)) < 0)
                goto fail;
            last = base + ev[k];
            cur = !cur;
        }
        e0 = e1;
    }
    free(start);
    free(ev);
    run = (uint32_t)(area - last);
    if (0) {
    fail:
        free(start);
        free(exs);
        free(ev);
        free(b.v);
        return rc;
    }
    if ((rc = rle__push(&b, run)) < 0) {
        free(b.v);
        return rc;
    }

    if (b.n < b.cap) {
        uint32_t *v = realloc(b.v, b.n * sizeof *v);
        if (v)
            b.v = v;
    }
    out->h = h;
    out->w = w;
    out->n = b.n;
    out->counts = b.v;
    return 0;
}

int eng_rle_decode(const eng_rle *r, uint8_t *mask)
{
    uint64_t area = 0, total = 0;
    int rc;

    if ((rc = rle__check_dims(r->h, r->w, &area)) < 0)
        return rc;
    for (size_t i = 0; i < r->n; i++)
        total += r->counts[i];
    if (total != area)
        return eng_error(ENG_EINVAL, "rle: runs cover %llu pixels, mask %dx%d has %llu",
                         (unsigned long long)total, r->h, r->w, (unsigned long long)area);
    if (area == 0)
        return 0;

    memset(mask, 0, (size_t)area);
    const size_t h = (size_t)r->h, stride = (size_t)r->w;
    size_t pos = 0;
    for (size_t i = 0; i < r->n; i++) {
        size_t c = r->counts[i];
        if ((i & 1) && c > 0) {
            /* One division per run, then walk the column-major span. */
            size_t x = pos / h, y = pos % h, left = c;
            while (left > 0) {
                size_t k = h - y < left ? h - y : left;
                uint8_t *p = mask + y * stride + x;
                for (size_t j = 0; j < k; j++)
                    p[j * stride] = 1;
                left -= k;
                y = 0;
                x++;
            }
        }
        pos += c;
    }
    return 0;
}

int eng_rle_to_string(const eng_rle *r, char **out)
{
    *out = NULL;
    if (r->n > (SIZE_MAX - 1) / RLE__MAX_GROUP)
        return eng_error(ENG_ELIMIT, "rle: %zu runs is too many to write", r->n);
    char *s = malloc(r->n * RLE__MAX_GROUP + 1);
    if (!s)
        return eng_error(ENG_ENOMEM, "rle: out of memory for a %zu-run string", r->n);

    size_t p = 0;
    for (size_t i = 0; i < r->n; i++) {
        int64_t x = (int64_t)r->counts[i];
        if (i > 2)
            x -= (int64_t)r->counts[i - 2];
        /* Little-endian 5-bit groups; 0x10 of the last group is the sign,
         * so stop once the rest is pure sign extension of that bit. The
         * shift is floor division by 32 written without right-shifting a
         * negative value (implementation-defined in C). */
        for (;;) {
            int c = (int)(x & 0x1f);
            x = x < 0 ? ~(~x >> 5) : x >> 5;
            int more = (c & 0x10) ? x != -1 : x != 0;
            if (more)
                c |= 0x20;
            s[p++] = (char)(c + 48);
            if (!more)
                break;
        }
    }
    s[p] = '\0';
    *out = s;
    return 0;
}

int eng_rle_from_string(const char *s, size_t len, int h, int w, eng_rle *out)
{
    uint64_t area = 0, total = 0;
    int rc;

    memset(out, 0, sizeof *out);
    if ((rc = rle__check_dims(h, w, &area)) < 0)
        return rc;

    /* Every count takes at least one character. */
    uint32_t *cnt = malloc((len ? len : 1) * sizeof *cnt);
    if (!cnt)
        return eng_error(ENG_ENOMEM, "rle: out of memory for a %zu-byte counts string", len);

    size_t m = 0, p = 0;
    while (p < len) {
        const size_t start = p;
        int64_t x = 0;
        int k = 0, more;
        do {
            if (p >= len) {
                rc = eng_error(ENG_EINVAL, "rle: counts string ends inside the count at offset %zu",
                               start);
                goto fail;
            }
            unsigned ch = (unsigned char)s[p];
            if (ch < 48 || ch > 48 + 63) {
                rc = eng_error(ENG_EINVAL,
                               "rle: bad character 0x%02x in counts string at offset %zu", ch, p);
                goto fail;
            }
            if (k == RLE__MAX_GROUP) {
                rc = eng_error(ENG_EINVAL, "rle: count at offset %zu overflows", start);
                goto fail;
            }
            int c = (int)ch - 48;
            x |= (int64_t)(c & 0x1f) << (5 * k);
            more = c & 0x20;
            p++;
            k++;
            /* Sign-extend from the top bit of the last group. */
            if (!more && (c & 0x10))
                x -= (int64_t)1 << (5 * k);
        } while (more);

        if (m > 2)
            x += (int64_t)cnt[m - 2];
        if (x < 0) {
            rc = eng_error(ENG_EINVAL, "rle: negative run %lld at offset %zu", (long long)x, start);
            goto fail;
        }
        if (x > (int64_t)UINT32_MAX) {
            rc = eng_error(ENG_EINVAL, "rle: run at offset %zu overflows", start);
            goto fail;
        }
        total += (uint64_t)x;
        if (total > area) {
            rc =
                eng_error(ENG_EINVAL, "rle: runs exceed the %dx%d mask at offset %zu", h, w, start);
            goto fail;
        }
        cnt[m++] = (uint32_t)x;
    }
    if (total != area) {
        rc = eng_error(ENG_EINVAL, "rle: runs cover %llu pixels, mask %dx%d has %llu",
                       (unsigned long long)total, h, w, (unsigned long long)area);
        goto fail;
    }

    if (m > 0 && m < (len ? len : 1)) {
        uint32_t *v = realloc(cnt, m * sizeof *v);
        if (v)
            cnt = v;
    }
    out->h = h;
    out->w = w;
    out->n = m;
    out->counts = cnt;
    return 0;

fail:
    free(cnt);
    return rc;
}

void eng_rle_free(eng_rle *r)
{
    if (!r)
        return;
    free(r->counts);
    r->counts = NULL;
    r->n = 0;
}

uint64_t eng_rle_area(const eng_rle *r)
{
    uint64_t a = 0;
    for (size_t i = 1; i < r->n; i += 2)
        a += r->counts[i];
    return a;
}

/*
 * Same box as pycocotools' rleToBbox for every RLE its encoder produces
 * (and ours: no empty runs but the leading one). Where a parsed string holds
 * empty one-runs, pycocotools lets them widen the box by a pixel that is not
 * foreground; here they are skipped, so the box is always that of the
 * foreground pixels.
 */
void eng_rle_bbox(const eng_rle *r, double bbox[4])
{
    bbox[0] = bbox[1] = bbox[2] = bbox[3] = 0;
    if (r->h <= 0 || r->w <= 0)
        return;
    const uint64_t h = (uint64_t)r->h;
    uint64_t pos = 0, xs = UINT64_MAX, xe = 0, ys = UINT64_MAX, ye = 0;
    int any = 0;
    for (size_t i = 0; i < r->n; i++) {
        uint64_t c = r->counts[i];
        if ((i & 1) && c > 0) {
            uint64_t x0 = pos / h, y0 = pos % h;
            uint64_t x1 = (pos + c - 1) / h, y1 = (pos + c - 1) % h;
            if (x0 < xs)
                xs = x0;
            if (x1 > xe)
                xe = x1;
            if (x0 != x1) {
                /* Runs past the bottom of a column into the top of the next. */
                ys = 0;
                ye = h - 1;
            } else {
                if (y0 < ys)
                    ys = y0;
                if (y1 > ye)
                    ye = y1;
            }
            any = 1;
        }
        pos += c;
    }
    if (!any)
        return;
    bbox[0] = (double)xs;
    bbox[1] = (double)ys;
    bbox[2] = (double)(xe - xs + 1);
    bbox[3] = (double)(ye - ys + 1);
}

/* ---- polygons ---------------------------------------------------------- */

/* Headings in corner space, clockwise on screen (y down): E, S, W, N. A
 * right turn is +1, a left turn +3 (mod 4). */
static const int poly__dx[4] = {1, 0, -1, 0};
static const int poly__dy[4] = {0, 1, 0, -1};
/* Offsets from a corner (x, y) to the pixel ahead-left and ahead-right of
 * the heading; the four pixels round corner (x, y) are (x-1..x, y-1..y). */
static const int poly__al[4][2] = {{0, -1}, {0, 0}, {-1, 0}, {-1, -1}};
static const int poly__ar[4][2] = {{0, 0}, {-1, 0}, {-1, -1}, {0, -1}};

typedef struct {
    const uint8_t *mask;
    int h, w;
} poly__img;

static inline int poly__fg(const poly__img *im, int x, int y)
{
    return x >= 0 && y >= 0 && x < im->w && y < im->h &&
           im->mask[(size_t)y * (size_t)im->w + (size_t)x];
}

/* Growable array of `elem`-byte entries (coordinates, runs, offsets). */
typedef struct {
    void *v;
    size_t n, cap, elem;
} poly__vec;

static int poly__reserve(poly__vec *a, size_t extra)
{
    if (a->n + extra <= a->cap)
        return 0;
    size_t cap = a->cap ? a->cap : 64;
    while (cap < a->n + extra)
        cap *= 2;
    void *v = realloc(a->v, cap * a->elem);
    if (!v)
        return eng_error(ENG_ENOMEM, "polygons: out of memory for %zu entries", cap);
    a->v = v;
    a->cap = cap;
    return 0;
}

static int poly__push2(poly__vec *a, int32_t x, int32_t y)
{
    int rc = poly__reserve(a, 2);
    if (rc < 0)
        return rc;
    int32_t *v = a->v;
    v[a->n++] = x;
    v[a->n++] = y;
    return 0;
}

/*
 * Follow the boundary between the component holding pixel (px, py) and the
 * background, keeping the component on the right. (px, py) must be the
 * component's first pixel in raster order, so the pixels above and left of
 * it are background and its top edge lies on the outer boundary. At each
 * corner: turn left if the pixel ahead-left is foreground (this is what
 * joins diagonal neighbours, i.e. 8-connectivity), else go straight if the
 * pixel ahead-right is, else turn right. Every directed edge is walked at
 * most once, so the loop ends back on the first edge.
 */
static int poly__trace(const poly__img *im, int px, int py, poly__vec *coords)
{
    int x = px, y = py, d = 0, rc;
    if ((rc = poly__push2(coords, x, y)) < 0)
        return rc;
    for (;;) {
        x += poly__dx[d];
        y += poly__dy[d];
        int nd;
        if (poly__fg(im, x + poly__al[d][0], y + poly__al[d][1]))
            nd = (d + 3) & 3;
        else if (poly__fg(im, x + poly__ar[d][0], y + poly__ar[d][1]))
            nd = d;
        else
            nd = (d + 1) & 3;
        if (x == px && y == py && nd == 0)
            return 0;
        if (nd != d && (rc = poly__push2(coords, x, y)) < 0)
            return rc;
        d = nd;
    }
}

/*
 * Components are found on runs, not pixels: each row's runs are joined
 * (union-find) to the runs of the row above that overlap them or touch them
 * diagonally. Scanning runs in raster order, the first run met of each
 * component holds its first pixel (where polygon tracing starts). This
 * touches each pixel once (finding the runs) and costs near-linear time in
 * the number of runs after that.
 */
uint32_t eng_mask_run_root(eng_mask_runs *runs, uint32_t i)
{
    eng_mask_run *r = runs->r;
    while (r[i].parent != i) {
        r[i].parent = r[r[i].parent].parent; /* path halving */
        i = r[i].parent;
    }
    return i;
}

/* Link the later root under the earlier, so a root is always its
 * component's first run in raster order. */
static void runs__union(eng_mask_runs *runs, uint32_t a, uint32_t b)
{
    a = eng_mask_run_root(runs, a);
    b = eng_mask_run_root(runs, b);
    if (a < b)
        runs->r[b].parent = a;
    else if (b < a)
        runs->r[a].parent = b;
}

int eng_mask_runs_find(const uint8_t *mask, int h, int w, int fg, eng_mask_runs *out)
{
    const size_t wz = (size_t)(w > 0 ? w : 0);
    size_t prev0 = 0, prev1 = 0, cap = 0; /* runs of the previous row: [prev0, prev1) */
    memset(out, 0, sizeof *out);
    if (h < 0 || w < 0)
        return eng_error(ENG_EINVAL, "mask runs: bad mask size %dx%d", h, w);
    for (int y = 0; y < h; y++) {
        const uint8_t *row = mask + (size_t)y * wz;
        size_t cur0 = out->n, x = 0;
        while (x < wz) {
            while (x < wz && (row[x] != 0) != fg)
                x++;
            if (x == wz)
                break;
            size_t x0 = x;
            while (x < wz && (row[x] != 0) == fg)
                x++;
            if (out->n >= UINT32_MAX) {
                eng_mask_runs_free(out);
                return eng_error(ENG_ELIMIT, "mask runs: too many runs");
            }
            if (out->n == cap) {
                size_t nc = cap ? 2 * cap : 64;
                eng_mask_run *nr = realloc(out->r, nc * sizeof *nr);
                if (!nr) {
                    eng_mask_runs_free(out);
                    return eng_error(ENG_ENOMEM, "mask runs: out of memory for %zu runs", nc);
                }
                out->r = nr;
                cap = nc;
            }
            eng_mask_run *r = out->r;
            uint32_t id = (uint32_t)out->n++;
            r[id] = (eng_mask_run){y, (int32_t)x0, (int32_t)x, id};
            /* Skip runs above that end left of this one's diagonal reach,
             * join those that reach it. The last one joined may reach the
             * next run too, so do not move past it. */
            while (prev0 < prev1 && (size_t)r[prev0].x1 < x0)
                prev0++;
            for (size_t j = prev0; j < prev1 && (size_t)r[j].x0 <= x; j++)
                runs__union(out, id, (uint32_t)j);
        }
        prev0 = cur0;
        prev1 = out->n;
    }
    return 0;
}

void eng_mask_runs_free(eng_mask_runs *runs)
{
    if (!runs)
        return;
    free(runs->r);
    memset(runs, 0, sizeof *runs);
}

int eng_mask_polygons(const uint8_t *mask, int h, int w, eng_polygons *out)
{
    uint64_t area = 0;
    int rc;

    memset(out, 0, sizeof *out);
    if (h < 0 || w < 0)
        return eng_error(ENG_EINVAL, "polygons: bad mask size %dx%d", h, w);
    area = (uint64_t)h * (uint64_t)w;
    if (area > RLE__MAX_PIXELS || (uint64_t)h + 1 > INT32_MAX || (uint64_t)w + 1 > INT32_MAX)
        return eng_error(ENG_ELIMIT, "polygons: mask %dx%d is too large", h, w);
    if (area == 0)
        return 0;
    assert(mask);

    const poly__img im = {mask, h, w};
    eng_mask_runs runs = {0};
    poly__vec coords = {.elem = sizeof(int32_t)};
    poly__vec starts = {.elem = sizeof(size_t)}; /* (vertex offset, count) pairs */
    if ((rc = eng_mask_runs_find(mask, h, w, 1, &runs)) < 0)
        goto done;

    const eng_mask_run *r = runs.r;
    for (size_t i = 0; i < runs.n; i++) {
        if (eng_mask_run_root(&runs, (uint32_t)i) != i)
            continue;
        size_t first = coords.n;
        if ((rc = poly__trace(&im, r[i].x0, r[i].y, &coords)) < 0)
            goto done;
        if ((rc = poly__reserve(&starts, 2)) < 0)
            goto done;
        size_t *st = starts.v;
        st[starts.n++] = first / 2;
        st[starts.n++] = (coords.n - first) / 2;
    }

    size_t np = starts.n / 2;
    if (np > 0) {
        out->polys = malloc(np * sizeof *out->polys);
        if (!out->polys) {
            rc = eng_error(ENG_ENOMEM, "polygons: out of memory for %zu polygons", np);
            goto done;
        }
        const size_t *st = starts.v;
        out->coords = coords.v;
        coords.v = NULL;
        for (size_t k = 0; k < np; k++) {
            out->polys[k].xy = out->coords + 2 * st[2 * k];
            out->polys[k].n = st[2 * k + 1];
        }
        out->n = np;
    }
    rc = 0;

done:
    eng_mask_runs_free(&runs);
    free(coords.v);
    free(starts.v);
    return rc;
}

void eng_polygons_free(eng_polygons *p)
{
    if (!p)
        return;
    free(p->polys);
    free(p->coords);
    memset(p, 0, sizeof *p);
}
