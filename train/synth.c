/*
 * train/synth.c: the procedural synthetic dataset (see synth.h).
 *
 * One image: a textured background, then objects placed one at a time on
 * top of the earlier ones. A placement is kept only if every earlier object
 * keeps 40% of its pixels (and 30 pixels) visible; an owner map (which
 * object each pixel shows, by pixel centre) gives the visible masks. Edges
 * are antialiased from 3x3 samples per pixel; the mask is the centre
 * sample, so a pixel belongs to the object covering its centre.
 *
 * Determinism: every random draw comes from tr_rng streams keyed by (seed,
 * split, image index), and the only floating point is IEEE arithmetic and
 * libm's sin/cos, so one build gives the same bytes for the same seed.
 */
#include "train/synth.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "engine/error.h"
#include "engine/image.h"
#include "train/io.h"
#include "train/rng.h"

const char *const tr_synth_shape_names[TR_SYNTH_SHAPES] = {"circle", "square", "triangle",
                                                           "star",   "ring",   "hexagon"};
const char *const tr_synth_color_names[TR_SYNTH_COLORS] = {"red", "green", "blue", "yellow",
                                                           "purple"};
const char *const tr_synth_texture_names[TR_SYNTH_TEXTURES] = {"solid", "striped", "dotted"};
const char *const tr_synth_size_names[TR_SYNTH_SIZES] = {"small", "large"};
const uint8_t tr_synth_color_rgb[TR_SYNTH_COLORS][3] = {
    {210, 40, 40}, {40, 170, 60}, {45, 85, 215}, {235, 205, 35}, {140, 60, 185}};

enum { SHAPE_CIRCLE, SHAPE_SQUARE, SHAPE_TRIANGLE, SHAPE_STAR, SHAPE_RING, SHAPE_HEXAGON };

/* Phrasing templates: a prefix, then "n" the name, "p" the plural, or "N"
 * the name followed by " in the image". The last TR_SYNTH_HELDOUT_TEMPLATES
 * appear only in val. */
static const char *const synth__templates[TR_SYNTH_TEMPLATES][2] = {
    {"segment every ", "n"}, {"segment all ", "p"},    {"", "p"},
    {"find the ", "p"},      {"select each ", "n"},    {"mask every ", "N"},
    {"highlight the ", "p"}, {"pick out every ", "n"},
};

/* Streams of the generator's random draws. */
#define SYNTH__STREAM_PLAN 0x706c616eull /* "plan" */
#define SYNTH__MIN_VISIBLE 0.4
#define SYNTH__MIN_PIXELS  30
#define SYNTH__PLACE_TRIES 40

void tr_synth_config_default(tr_synth_config *c)
{
    memset(c, 0, sizeof *c);
    c->seed = 0;
    c->train_images = 500;
    c->val_images = 100;
    c->width = 320;
    c->height = 240;
    c->min_objects = 2;
    c->max_objects = 6;
}

int tr_synth_config_check(const tr_synth_config *c)
{
    if (c->seed > (uint64_t)INT64_MAX)
        return eng_error(ENG_EINVAL, "synth: seed %llu is over 2^63 - 1",
                         (unsigned long long)c->seed);
    if (c->width < 64 || c->height < 64 || c->width > 4096 || c->height > 4096)
        return eng_error(ENG_EINVAL, "synth: image size %dx%d is outside 64x64..4096x4096",
                         c->width, c->height);
    if (c->train_images < 0 || c->val_images < 0 || c->train_images > 10000000 ||
        c->val_images > 10000000)
        return eng_error(ENG_EINVAL, "synth: image counts must be in 0..10000000");
    if (c->min_objects < 1 || c->max_objects < c->min_objects ||
        c->max_objects > TR_SYNTH_MAX_OBJECTS)
        return eng_error(ENG_EINVAL, "synth: objects per image %d..%d must lie within 1..%d",
                         c->min_objects, c->max_objects, TR_SYNTH_MAX_OBJECTS);
    return 0;
}

/* ---- plan and categories ---- */

void tr_synth_plan_make(uint64_t seed, tr_synth_plan *p)
{
    tr_rng r;
    tr_rng_seed(&r, seed, SYNTH__STREAM_PLAN);
    int pairs[TR_SYNTH_COLORS * TR_SYNTH_SHAPES];
    for (int i = 0; i < TR_SYNTH_COLORS * TR_SYNTH_SHAPES; i++)
        pairs[i] = i;
    tr_rng_shuffle(&r, pairs, TR_SYNTH_COLORS * TR_SYNTH_SHAPES);
    for (int i = 0; i < TR_SYNTH_HELDOUT_PAIRS; i++)
        p->heldout[i] = pairs[i];
    for (int i = 0; i < TR_SYNTH_ABSENT_PAIRS; i++)
        p->absent[i] = pairs[TR_SYNTH_HELDOUT_PAIRS + i];
}

static int synth__pair_in(const int *v, int n, int color, int shape)
{
    for (int i = 0; i < n; i++)
        if (v[i] == color * TR_SYNTH_SHAPES + shape)
            return 1;
    return 0;
}

/* May an object of this colour and shape be drawn in the split? */
static int synth__drawable(const tr_synth_plan *p, int split, int color, int shape)
{
    if (synth__pair_in(p->absent, TR_SYNTH_ABSENT_PAIRS, color, shape))
        return 0;
    return split == TR_SYNTH_VAL ||
           !synth__pair_in(p->heldout, TR_SYNTH_HELDOUT_PAIRS, color, shape);
}

static void synth__name(tr_synth_category *k)
{
    char words[4][16];
    int n = 0;
    if (k->size >= 0)
        snprintf(words[n++], sizeof words[0], "%s", tr_synth_size_names[k->size]);
    if (k->texture >= 0)
        snprintf(words[n++], sizeof words[0], "%s", tr_synth_texture_names[k->texture]);
    if (k->color >= 0)
        snprintf(words[n++], sizeof words[0], "%s", tr_synth_color_names[k->color]);
    snprintf(words[n++], sizeof words[0], "%s",
             k->shape >= 0 ? tr_synth_shape_names[k->shape] : "shape");
    size_t p = 0;
    k->name[0] = '\0';
    for (int i = 0; i < n; i++)
        p += (size_t)snprintf(k->name + p, sizeof k->name - p, "%s%s", i ? " " : "", words[i]);
    snprintf(k->plural, sizeof k->plural, "%ss", k->name);
}

int tr_synth_categories(const tr_synth_plan *p, int split, tr_synth_category **out, int *n)
{
    enum {
        MAXC = TR_SYNTH_SHAPES + TR_SYNTH_COLORS + TR_SYNTH_COLORS * TR_SYNTH_SHAPES +
               TR_SYNTH_TEXTURES * TR_SYNTH_SHAPES +
               TR_SYNTH_SIZES * TR_SYNTH_TEXTURES * TR_SYNTH_SHAPES
    };
    tr_synth_category *v = calloc(MAXC, sizeof *v);
    if (!v)
        return eng_error(ENG_ENOMEM, "synth: out of memory");
    int m = 0;
    int64_t id = 0;
#define SYNTH__ADD(SH, CO, TX, SZ, SPLIT)                                                          \
    do {                                                                                           \
        tr_synth_category k = {++id, SH, CO, TX, SZ, "", "", SPLIT};                               \
        if (split == TR_SYNTH_VAL || (SPLIT) == TR_SPLIT_SEEN) {                                   \
            synth__name(&k);                                                                       \
            v[m++] = k;                                                                            \
        }                                                                                          \
    } while (0)
    for (int s = 0; s < TR_SYNTH_SHAPES; s++)
        SYNTH__ADD(s, -1, -1, -1, TR_SPLIT_SEEN);
    for (int c = 0; c < TR_SYNTH_COLORS; c++)
        SYNTH__ADD(-1, c, -1, -1, TR_SPLIT_SEEN);
    for (int c = 0; c < TR_SYNTH_COLORS; c++)
        for (int s = 0; s < TR_SYNTH_SHAPES; s++) {
            tr_split sp =
                synth__pair_in(p->absent, TR_SYNTH_ABSENT_PAIRS, c, s)     ? TR_SPLIT_NO_OBJECTS
                : synth__pair_in(p->heldout, TR_SYNTH_HELDOUT_PAIRS, c, s) ? TR_SPLIT_HELDOUT
                                                                           : TR_SPLIT_SEEN;
            SYNTH__ADD(s, c, -1, -1, sp);
        }
    for (int t = 0; t < TR_SYNTH_TEXTURES; t++)
        for (int s = 0; s < TR_SYNTH_SHAPES; s++)
            SYNTH__ADD(s, -1, t, -1, TR_SPLIT_SEEN);
    for (int z = 0; z < TR_SYNTH_SIZES; z++)
        for (int t = 0; t < TR_SYNTH_TEXTURES; t++)
            for (int s = 0; s < TR_SYNTH_SHAPES; s++)
                SYNTH__ADD(s, -1, t, z, TR_SPLIT_SEEN);
#undef SYNTH__ADD
    *out = v;
    *n = m;
    return 0;
}

void tr_synth_task(const tr_synth_category *k, int t, char *buf, size_t cap)
{
    const char *const *tp = synth__templates[t];
    if (tp[1][0] == 'N')
        snprintf(buf, cap, "%s%s in the image", tp[0], k->name);
    else
        snprintf(buf, cap, "%s%s", tp[0], tp[1][0] == 'p' ? k->plural : k->name);
}

int tr_synth_matches(const tr_synth_category *k, const tr_synth_object *o)
{
    return (k->shape < 0 || k->shape == o->shape) && (k->color < 0 || k->color == o->color) &&
           (k->texture < 0 || k->texture == o->texture) && (k->size < 0 || k->size == o->size);
}

/* ---- geometry ---- */

/* An object's outline in image coordinates. */
typedef struct {
    int shape;
    double cx, cy, r, r_in; /* circle and ring radii */
    int nv;
    double vx[10], vy[10]; /* polygon vertices */
    double reach;          /* farthest point from the centre */
} synth__geom;

static void synth__geom_make(const tr_synth_object *o, synth__geom *g)
{
    memset(g, 0, sizeof *g);
    g->shape = o->shape;
    g->cx = o->cx;
    g->cy = o->cy;
    g->r = o->r;
    g->r_in = 0.55 * o->r;
    g->reach = o->r;
    /* polygon shapes: vertex count and the radius of even / odd vertices,
     * in units of r (sized so the shapes' areas are comparable) */
    static const struct {
        int shape, nv;
        double even, odd;
    } polys[] = {{SHAPE_SQUARE, 4, 1.0, 1.0},
                 {SHAPE_TRIANGLE, 3, 1.15, 1.15},
                 {SHAPE_HEXAGON, 6, 1.0, 1.0},
                 {SHAPE_STAR, 10, 1.12, 0.48}};
    const double pi = 3.14159265358979323846;
    double rad[10];
    for (size_t p = 0; p < sizeof polys / sizeof polys[0]; p++)
        if (polys[p].shape == o->shape) {
            g->nv = polys[p].nv;
            for (int i = 0; i < g->nv; i++)
                rad[i] = ((i & 1) ? polys[p].odd : polys[p].even) * o->r;
        }
    for (int i = 0; i < g->nv; i++) {
        double a = o->angle + 2 * pi * i / g->nv;
        g->vx[i] = o->cx + rad[i] * cos(a);
        g->vy[i] = o->cy + rad[i] * sin(a);
        if (rad[i] > g->reach)
            g->reach = rad[i];
    }
}

static int synth__inside(const synth__geom *g, double x, double y)
{
    const double dx = x - g->cx, dy = y - g->cy, d2 = dx * dx + dy * dy;
    if (g->shape == SHAPE_CIRCLE)
        return d2 <= g->r * g->r;
    if (g->shape == SHAPE_RING)
        return d2 <= g->r * g->r && d2 >= g->r_in * g->r_in;
    int in = 0; /* even-odd crossing test */
    for (int i = 0, j = g->nv - 1; i < g->nv; j = i++)
        if ((g->vy[i] > y) != (g->vy[j] > y) &&
            x < (g->vx[j] - g->vx[i]) * (y - g->vy[i]) / (g->vy[j] - g->vy[i]) + g->vx[i])
            in = !in;
    return in;
}

/* The pixel range an outline may touch, clipped to the image. */
static void synth__bounds(const synth__geom *g, int w, int h, int *x0, int *y0, int *x1, int *y1)
{
    *x0 = (int)floor(g->cx - g->reach) - 1;
    *y0 = (int)floor(g->cy - g->reach) - 1;
    *x1 = (int)ceil(g->cx + g->reach) + 1;
    *y1 = (int)ceil(g->cy + g->reach) + 1;
    if (*x0 < 0)
        *x0 = 0;
    if (*y0 < 0)
        *y0 = 0;
    if (*x1 > w)
        *x1 = w;
    if (*y1 > h)
        *y1 = h;
}

/* ---- drawing ---- */

static uint8_t synth__u8(double v) { return v <= 0 ? 0 : v >= 255 ? 255 : (uint8_t)(v + 0.5); }

/* A low-saturation tone (backgrounds never look like a named colour). */
static void synth__tone(tr_rng *r, double out[3])
{
    double g = tr_rng_range(r, 70, 190);
    for (int c = 0; c < 3; c++)
        out[c] = g + tr_rng_range(r, -12, 12);
}

static void synth__background(tr_rng *r, uint8_t *rgb, int w, int h)
{
    double t1[3], t2[3];
    synth__tone(r, t1);
    synth__tone(r, t2);
    const int kind = (int)tr_rng_below(r, 4);
    const double ang = tr_rng_range(r, 0, 3.14159265358979323846), ca = cos(ang), sa = sin(ang);
    const double period = tr_rng_range(r, 6, 22), noise = tr_rng_range(r, 3, 10);
    /* blotches: a coarse grid of tones, bilinearly blended */
    enum { GRID = 12 };
    double grid[GRID + 1][GRID + 1][3];
    for (int i = 0; i <= GRID; i++)
        for (int j = 0; j <= GRID; j++)
            synth__tone(r, grid[i][j]);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            double v[3];
            const double s = x * ca + y * sa;
            if (kind == 0 || kind == 1) {
                int band = kind == 0 ? (int)floor(s / period) & 1
                                     : (((int)floor(x / period) + (int)floor(y / period)) & 1);
                memcpy(v, band ? t1 : t2, sizeof v);
            } else if (kind == 2) {
                double f = s / (double)(w > h ? w : h);
                f = f < 0 ? 0 : f > 1 ? 1 : f;
                for (int c = 0; c < 3; c++)
                    v[c] = t1[c] + (t2[c] - t1[c]) * f;
            } else {
                double gx = (double)x / w * (GRID - 1), gy = (double)y / h * (GRID - 1);
                int ix = (int)gx, iy = (int)gy;
                double fx = gx - ix, fy = gy - iy;
                for (int c = 0; c < 3; c++)
                    v[c] = (grid[iy][ix][c] * (1 - fx) + grid[iy][ix + 1][c] * fx) * (1 - fy) +
                           (grid[iy + 1][ix][c] * (1 - fx) + grid[iy + 1][ix + 1][c] * fx) * fy;
            }
            const double n = tr_rng_range(r, -noise, noise);
            uint8_t *p = rgb + ((size_t)y * w + x) * 3;
            for (int c = 0; c < 3; c++)
                p[c] = synth__u8(v[c] + n);
        }
}

/* The object's colour at (x, y): its base colour, dark stripes, or light
 * dots, in the object's rotated frame. */
static void synth__texel(const tr_synth_object *o, const double base[3], double x, double y,
                         double out[3])
{
    const double ca = cos(o->angle), sa = sin(o->angle);
    const double u = (x - o->cx) * ca + (y - o->cy) * sa, v = -(x - o->cx) * sa + (y - o->cy) * ca;
    memcpy(out, base, 3 * sizeof *out);
    if (o->texture == 1) {
        const double half = fmax(2.0, 0.22 * o->r);
        if ((long)floor(u / half) & 1)
            for (int c = 0; c < 3; c++)
                out[c] = base[c] * 0.4;
    } else if (o->texture == 2) {
        const double sp = fmax(5.0, 0.5 * o->r);
        double du = u / sp - floor(u / sp) - 0.5, dv = v / sp - floor(v / sp) - 0.5;
        if (du * du + dv * dv <= 0.3 * 0.3)
            for (int c = 0; c < 3; c++)
                out[c] = base[c] + (255 - base[c]) * 0.75;
    }
}

static void synth__paint(uint8_t *rgb, int w, int h, const tr_synth_object *o, const double base[3])
{
    synth__geom g;
    int x0, y0, x1, y1;
    synth__geom_make(o, &g);
    synth__bounds(&g, w, h, &x0, &y0, &x1, &y1);
    for (int y = y0; y < y1; y++)
        for (int x = x0; x < x1; x++) {
            int cov = 0;
            for (int sy = 0; sy < 3; sy++)
                for (int sx = 0; sx < 3; sx++)
                    cov += synth__inside(&g, x + (sx + 0.5) / 3, y + (sy + 0.5) / 3);
            if (!cov)
                continue;
            double col[3];
            synth__texel(o, base, x + 0.5, y + 0.5, col);
            uint8_t *p = rgb + ((size_t)y * w + x) * 3;
            const double a = cov / 9.0;
            for (int c = 0; c < 3; c++)
                p[c] = synth__u8(p[c] * (1 - a) + col[c] * a);
        }
}

void tr_synth_image_free(tr_synth_image *im)
{
    if (!im)
        return;
    free(im->rgb);
    for (int i = 0; i < im->n_objects; i++)
        eng_rle_free(&im->obj[i].mask);
    memset(im, 0, sizeof *im);
}

int tr_synth_render(const tr_synth_config *c, const tr_synth_plan *p, int split, int index,
                    tr_synth_image *out)
{
    int rc;
    memset(out, 0, sizeof *out);
    if ((rc = tr_synth_config_check(c)) < 0)
        return rc;
    const int w = c->width, h = c->height;
    const size_t npx = (size_t)w * h;
    tr_rng r;
    tr_rng_seed(&r, c->seed, ((uint64_t)(split + 1) << 40) | (uint64_t)index);
    out->w = w;
    out->h = h;
    out->rgb = malloc(npx * 3);
    int8_t *owner = malloc(npx);            /* top object at each pixel centre, -1 none */
    uint8_t *cand = malloc(npx), *m = NULL; /* candidate's pixels; one object's mask */
    if (!out->rgb || !owner || !cand) {
        rc = eng_error(ENG_ENOMEM, "synth: out of memory for a %dx%d image", w, h);
        goto fail;
    }
    memset(owner, -1, npx);
    synth__background(&r, out->rgb, w, h);

    const int want =
        c->min_objects + (int)tr_rng_below(&r, (uint64_t)(c->max_objects - c->min_objects + 1));
    const double side = w < h ? w : h;
    uint64_t full[TR_SYNTH_MAX_OBJECTS], vis[TR_SYNTH_MAX_OBJECTS];
    double base[TR_SYNTH_MAX_OBJECTS][3];
    for (int k = 0; k < want; k++) {
        for (int tries = 0; tries < SYNTH__PLACE_TRIES; tries++) {
            tr_synth_object o = {0};
            do {
                o.shape = (int)tr_rng_below(&r, TR_SYNTH_SHAPES);
                o.color = (int)tr_rng_below(&r, TR_SYNTH_COLORS);
            } while (!synth__drawable(p, split, o.color, o.shape));
            o.texture = (int)tr_rng_below(&r, TR_SYNTH_TEXTURES);
            o.size = (int)tr_rng_below(&r, TR_SYNTH_SIZES);
            o.r = side * (o.size ? tr_rng_range(&r, 0.15, 0.21) : tr_rng_range(&r, 0.07, 0.10));
            o.cx = tr_rng_range(&r, o.r, w - o.r);
            o.cy = tr_rng_range(&r, o.r, h - o.r);
            o.angle = tr_rng_range(&r, 0, 6.283185307179586);
            double col[3];
            for (int ch = 0; ch < 3; ch++)
                col[ch] = tr_synth_color_rgb[o.color][ch] + tr_rng_range(&r, -18, 18);

            /* the candidate's pixels, and how many each earlier object loses */
            synth__geom g;
            int x0, y0, x1, y1;
            synth__geom_make(&o, &g);
            synth__bounds(&g, w, h, &x0, &y0, &x1, &y1);
            uint64_t area = 0, lost[TR_SYNTH_MAX_OBJECTS] = {0};
            for (int y = y0; y < y1; y++)
                for (int x = x0; x < x1; x++) {
                    const size_t i = (size_t)y * w + x;
                    cand[i] = (uint8_t)synth__inside(&g, x + 0.5, y + 0.5);
                    if (cand[i]) {
                        area++;
                        if (owner[i] >= 0)
                            lost[owner[i]]++;
                    }
                }
            int ok = area >= SYNTH__MIN_PIXELS;
            for (int j = 0; j < out->n_objects && ok; j++)
                ok = vis[j] - lost[j] >= SYNTH__MIN_PIXELS &&
                     (double)(vis[j] - lost[j]) >= SYNTH__MIN_VISIBLE * (double)full[j];
            if (!ok)
                continue;
            const int id = out->n_objects++;
            for (int y = y0; y < y1; y++)
                for (int x = x0; x < x1; x++)
                    if (cand[(size_t)y * w + x])
                        owner[(size_t)y * w + x] = (int8_t)id;
            for (int j = 0; j < id; j++)
                vis[j] -= lost[j];
            full[id] = vis[id] = area;
            memcpy(base[id], col, sizeof col);
            out->obj[id] = o;
            break;
        }
    }
    for (int k = 0; k < out->n_objects; k++)
        synth__paint(out->rgb, w, h, &out->obj[k], base[k]);

    /* visible masks from the owner map */
    m = malloc(npx);
    if (!m) {
        rc = eng_error(ENG_ENOMEM, "synth: out of memory");
        goto fail;
    }
    for (int k = 0; k < out->n_objects; k++) {
        for (size_t i = 0; i < npx; i++)
            m[i] = owner[i] == k;
        if ((rc = eng_rle_encode(m, h, w, &out->obj[k].mask)) < 0)
            goto fail;
        out->obj[k].area = eng_rle_area(&out->obj[k].mask);
    }
    free(m);
    free(owner);
    free(cand);
    return 0;
fail:
    free(m);
    free(owner);
    free(cand);
    tr_synth_image_free(out);
    return rc;
}

/* ---- writing ---- */

static json_t *synth__category_json(const tr_synth_category *k, int split)
{
    json_t *tasks = json_array(), *held = json_array(), *attr = json_object();
    const int nt = split == TR_SYNTH_VAL ? TR_SYNTH_TEMPLATES
                                         : TR_SYNTH_TEMPLATES - TR_SYNTH_HELDOUT_TEMPLATES;
    for (int t = 0; t < nt; t++) {
        char buf[160];
        tr_synth_task(k, t, buf, sizeof buf);
        json_array_append_new(tasks, json_string(buf));
        if (t >= TR_SYNTH_TEMPLATES - TR_SYNTH_HELDOUT_TEMPLATES)
            json_array_append_new(held, json_string(buf));
    }
    if (k->shape >= 0)
        json_object_set_new(attr, "shape", json_string(tr_synth_shape_names[k->shape]));
    if (k->color >= 0)
        json_object_set_new(attr, "color", json_string(tr_synth_color_names[k->color]));
    if (k->texture >= 0)
        json_object_set_new(attr, "texture", json_string(tr_synth_texture_names[k->texture]));
    if (k->size >= 0)
        json_object_set_new(attr, "size", json_string(tr_synth_size_names[k->size]));
    json_t *j = json_object();
    json_object_set_new(j, "id", json_integer(k->id));
    json_object_set_new(j, "name", json_string(k->name));
    json_object_set_new(j, "supercategory", json_string("shape"));
    json_object_set_new(j, "attributes", attr);
    json_object_set_new(j, "split", json_string(tr_split_name(k->split)));
    json_object_set_new(j, "tasks", tasks);
    if (split == TR_SYNTH_VAL)
        json_object_set_new(j, "heldout_tasks", held);
    else
        json_decref(held);
    return j;
}

static json_t *synth__pairs_json(const int *v, int n)
{
    json_t *a = json_array();
    for (int i = 0; i < n; i++) {
        char buf[64];
        snprintf(buf, sizeof buf, "%s %s", tr_synth_color_names[v[i] / TR_SYNTH_SHAPES],
                 tr_synth_shape_names[v[i] % TR_SYNTH_SHAPES]);
        json_array_append_new(a, json_string(buf));
    }
    return a;
}

static int synth__write_split(const tr_synth_config *c, const tr_synth_plan *p, const char *dir,
                              int split, tr_synth_progress_fn progress, void *ctx)
{
    const char *sname = split == TR_SYNTH_VAL ? "val" : "train";
    const int n = split == TR_SYNTH_VAL ? c->val_images : c->train_images;
    char sdir[4096], idir[4096 + 16], jpath[4096 + 32];
    if ((size_t)snprintf(sdir, sizeof sdir, "%s/%s", dir, sname) >= sizeof sdir)
        return eng_error(ENG_ELIMIT, "synth: output path too long");
    snprintf(idir, sizeof idir, "%s/images", sdir);
    snprintf(jpath, sizeof jpath, "%s/instances.json", sdir);
    int rc = tr_mkdirs(idir);
    if (rc)
        return rc;

    tr_synth_category *cats = NULL;
    int nc = 0;
    if ((rc = tr_synth_categories(p, split, &cats, &nc)) < 0)
        return rc;
    json_t *root = json_object(), *images = json_array(), *anns = json_array(),
           *jcats = json_array(), *info = json_object();
    if (!root || !images || !anns || !jcats || !info) {
        json_decref(root);
        root = NULL;
        json_decref(images);
        json_decref(anns);
        json_decref(jcats);
        json_decref(info);
        rc = eng_error(ENG_ENOMEM, "synth: out of memory");
        goto done;
    }
    json_object_set_new(info, "description", json_string("tasam synthetic shapes"));
    json_object_set_new(info, "generator", json_string("tasam-train synth"));
    json_object_set_new(info, "version", json_integer(1));
    json_object_set_new(info, "split", json_string(sname));
    json_object_set_new(info, "seed", json_integer((json_int_t)c->seed));
    json_object_set_new(info, "width", json_integer(c->width));
    json_object_set_new(info, "height", json_integer(c->height));
    json_object_set_new(info, "objects_per_image",
                        json_pack("[i,i]", c->min_objects, c->max_objects));
    json_object_set_new(info, "heldout_combinations",
                        synth__pairs_json(p->heldout, TR_SYNTH_HELDOUT_PAIRS));
    json_object_set_new(info, "no_object_combinations",
                        synth__pairs_json(p->absent, TR_SYNTH_ABSENT_PAIRS));
    json_object_set_new(root, "info", info);
    json_object_set_new(root, "images", images);
    json_object_set_new(root, "annotations", anns);
    json_object_set_new(root, "categories", jcats);
    for (int k = 0; k < nc; k++)
        json_array_append_new(jcats, synth__category_json(&cats[k], split));

    int64_t ann_id = 0;
    for (int i = 0; i < n; i++) {
        tr_synth_image im;
        char name[32], path[sizeof idir + 40];
        if ((rc = tr_synth_render(c, p, split, i, &im)) < 0)
            goto done;
        snprintf(name, sizeof name, "%06d.png", i);
        snprintf(path, sizeof path, "%s/%s", idir, name);
        rc = eng_png_write(path, im.rgb, im.w, im.h, 3);
        json_array_append_new(images, json_pack("{s:i, s:s, s:i, s:i}", "id", i + 1, "file_name",
                                                name, "width", im.w, "height", im.h));
        for (int o = 0; o < im.n_objects && rc == 0; o++) {
            char *counts = NULL;
            double bb[4];
            if ((rc = eng_rle_to_string(&im.obj[o].mask, &counts)) < 0)
                break;
            eng_rle_bbox(&im.obj[o].mask, bb);
            for (int k = 0; k < nc; k++)
                if (tr_synth_matches(&cats[k], &im.obj[o]))
                    json_array_append_new(
                        anns,
                        json_pack("{s:I, s:i, s:I, s:{s:[i,i], s:s}, s:I, s:[i,i,i,i], s:i}", "id",
                                  (json_int_t)++ann_id, "image_id", i + 1, "category_id",
                                  (json_int_t)cats[k].id, "segmentation", "size", im.h, im.w,
                                  "counts", counts, "area", (json_int_t)im.obj[o].area, "bbox",
                                  (int)bb[0], (int)bb[1], (int)bb[2], (int)bb[3], "iscrowd", 0));
            free(counts);
        }
        tr_synth_image_free(&im);
        if (rc)
            goto done;
        if (progress)
            progress(ctx, sname, i + 1, n);
    }
    rc = tr_write_json(jpath, root, JSON_COMPACT);
done:
    json_decref(root);
    free(cats);
    return rc;
}

int tr_synth_write(const tr_synth_config *c, const char *dir, int force,
                   tr_synth_progress_fn progress, void *ctx)
{
    int rc = tr_synth_config_check(c);
    if (rc)
        return rc;
    for (int split = 0; split < 2 && !force; split++) {
        char jpath[4096];
        struct stat st;
        snprintf(jpath, sizeof jpath, "%s/%s/instances.json", dir, split ? "val" : "train");
        if (stat(jpath, &st) == 0)
            return eng_error(ENG_EINVAL, "synth: %s exists (--force to overwrite)", jpath);
    }
    tr_synth_plan p;
    tr_synth_plan_make(c->seed, &p);
    if ((rc = synth__write_split(c, &p, dir, TR_SYNTH_TRAIN, progress, ctx)) < 0)
        return rc;
    return synth__write_split(c, &p, dir, TR_SYNTH_VAL, progress, ctx);
}
