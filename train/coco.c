/*
 * train/coco.c: COCO instances loading (see coco.h).
 *
 * The JSON is parsed with jansson (duplicate keys rejected), then checked
 * entry by entry before anything refers to it: categories, then images,
 * then annotations, whose masks are built at the image's size. The first
 * bad entry ends the load with a message naming the file and the entry.
 */
#include "train/coco.h"
#include "train/coco_internal.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/error.h"
#include "train/mask.h"

/* Longest task phrasing and file name accepted (bytes). */
#define COCO__MAX_TEXT 1024
#define COCO__MAX_PATH 4096
/* Image side limit: COCO RLE sizes stay well inside uint32 arithmetic. */
#define COCO__MAX_SIDE 65535
/* How far outside the image a polygon vertex may lie: annotation tools put
 * vertices on the far edge of the last pixel or a little beyond it; past a
 * pixel it is a wrong annotation (wrong image, swapped axes, scaled). */
#define COCO__POLY_SLACK 1.0

/* ---- messages ---- */

typedef struct {
    const char *name; /* the file, for messages */
} coco__ctx;

/* eng_error with "NAME: ENTRY: " in front; entry and detail are formatted
 * separately so a nested message (eng_last_error) can be passed as %s. */
static int coco__err(const coco__ctx *c, int code, const char *entry, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int coco__err(const coco__ctx *c, int code, const char *entry, const char *fmt, ...)
{
    char detail[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    if (entry && *entry)
        return eng_error(code, "%s: %s: %s", c->name, entry, detail);
    return eng_error(code, "%s: %s", c->name, detail);
}

const char *tr_split_name(tr_split s)
{
    switch (s) {
    case TR_SPLIT_SEEN:
        return "seen";
    case TR_SPLIT_HELDOUT:
        return "heldout_combination";
    case TR_SPLIT_NO_OBJECTS:
        return "no_objects";
    }
    return "?";
}

/* ---- small JSON helpers ---- */

/* An integer id (a JSON integer, or a real with an integral value as some
 * writers emit). */
static int coco__get_id(const json_t *v, int64_t *out)
{
    if (json_is_integer(v)) {
        *out = (int64_t)json_integer_value(v);
        return 0;
    }
    if (json_is_real(v)) {
        double d = json_real_value(v);
        if (d == floor(d) && fabs(d) < 9.0e15) {
            *out = (int64_t)d;
            return 0;
        }
    }
    return -1;
}

static int coco__get_number(const json_t *v, double *out)
{
    if (!json_is_number(v))
        return -1;
    *out = json_number_value(v);
    return isfinite(*out) ? 0 : -1;
}

static char *coco__strdup_trim(const char *s)
{
    while (*s && isspace((unsigned char)*s))
        s++;
    size_t n = strlen(s);
    while (n > 0 && isspace((unsigned char)s[n - 1]))
        n--;
    char *d = malloc(n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = '\0';
    }
    return d;
}

/* Entry i of the list `what`: an object with an integer "id". Writes the
 * entry's name for messages ("images[3] (id 7)") into entry; NULL with the
 * error recorded when it is no such object. */
static const json_t *coco__entry(const coco__ctx *x, const json_t *arr, const char *what, size_t i,
                                 int64_t *id, char *entry, size_t cap)
{
    const json_t *j = json_array_get(arr, i);
    snprintf(entry, cap, "%s[%zu]", what, i);
    if (!json_is_object(j)) {
        coco__err(x, ENG_EFORMAT, entry, "not an object");
        return NULL;
    }
    if (coco__get_id(json_object_get(j, "id"), id)) {
        coco__err(x, ENG_EFORMAT, entry, "missing or non-integer \"id\"");
        return NULL;
    }
    snprintf(entry, cap, "%s[%zu] (id %lld)", what, i, (long long)*id);
    return j;
}

/* ---- plurals and default phrasings ---- */

void tr_coco_plural(const char *name, char *buf, size_t cap)
{
    /* Irregular last words (and words that are their own plural). */
    static const char *const irregular[][2] = {
        {"person", "people"},     {"man", "men"},           {"woman", "women"},
        {"child", "children"},    {"mouse", "mice"},        {"knife", "knives"},
        {"leaf", "leaves"},       {"wolf", "wolves"},       {"foot", "feet"},
        {"tooth", "teeth"},       {"goose", "geese"},       {"sheep", "sheep"},
        {"deer", "deer"},         {"fish", "fish"},         {"skis", "skis"},
        {"scissors", "scissors"}, {"broccoli", "broccoli"}, {"glasses", "glasses"},
        {"pants", "pants"},       {"shorts", "shorts"},     {"series", "series"},
        {"species", "species"},   {"cactus", "cacti"},      {"bus", "buses"},
    };
    const char *last = strrchr(name, ' ');
    last = last ? last + 1 : name;
    const size_t head = (size_t)(last - name), n = strlen(last);
    for (size_t i = 0; i < sizeof irregular / sizeof irregular[0]; i++)
        if (!strcmp(last, irregular[i][0])) {
            snprintf(buf, cap, "%.*s%s", (int)head, name, irregular[i][1]);
            return;
        }
    const char *suffix = "s";
    size_t keep = n;
    char a = n >= 1 ? (char)tolower((unsigned char)last[n - 1]) : 0;
    char b = n >= 2 ? (char)tolower((unsigned char)last[n - 2]) : 0;
    if (a == 's' || a == 'x' || a == 'z' || (a == 'h' && (b == 'c' || b == 's')))
        suffix = "es";
    else if (a == 'y' && b && !strchr("aeiou", b)) {
        suffix = "ies";
        keep = n - 1;
    }
    snprintf(buf, cap, "%.*s%.*s%s", (int)head, name, (int)keep, last, suffix);
}

int tr_coco_default_tasks(const char *name, char **out, int *n)
{
    char pl[COCO__MAX_TEXT + 8], t[2 * COCO__MAX_TEXT + 64];
    tr_coco_plural(name, pl, sizeof pl);
    const char *forms[TR_COCO_MAX_DEFAULT_TASKS][2] = {
        {"segment every ", name}, {"segment all ", pl},   {"", pl},
        {"find the ", pl},        {"select each ", name},
    };
    *n = 0;
    for (int i = 0; i < TR_COCO_MAX_DEFAULT_TASKS; i++) {
        snprintf(t, sizeof t, "%s%s", forms[i][0], forms[i][1]);
        if (!(out[i] = strdup(t))) {
            for (int j = 0; j < i; j++)
                free(out[j]);
            return eng_error(ENG_ENOMEM, "out of memory for task phrasings");
        }
        *n = i + 1;
    }
    return 0;
}

/* ---- lookups ---- */

static int64_t coco__id_of(const tr_coco *c, int images, int i)
{
    return images ? c->images[i].id : c->categories[i].id;
}

static int coco__find(const tr_coco *c, int images, const int *by_id, int n, int64_t id)
{
    int lo = 0, hi = n - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        int64_t v = coco__id_of(c, images, by_id[mid]);
        if (v == id)
            return by_id[mid];
        if (v < id)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return -1;
}

int tr_coco_image_index(const tr_coco *c, int64_t id)
{
    return coco__find(c, 1, c->image_by_id, c->n_images, id);
}

int tr_coco_category_index(const tr_coco *c, int64_t id)
{
    return coco__find(c, 0, c->category_by_id, c->n_categories, id);
}

/* The indices 0..n-1 sorted by key (a stable bottom-up merge sort) into a
 * malloc'd *out; then the first duplicate key, if any, is an error naming
 * both entries of `what` (e.g. "images"). */
static int coco__sort_unique(const coco__ctx *x, const char *what, const int64_t *key, int n,
                             int **out)
{
    int *idx = malloc(((size_t)n + 1) * sizeof *idx), *tmp = malloc(((size_t)n + 1) * sizeof *tmp);
    *out = NULL;
    if (!idx || !tmp) {
        free(idx);
        free(tmp);
        return eng_error(ENG_ENOMEM, "%s: out of memory", x->name);
    }
    for (int i = 0; i < n; i++)
        idx[i] = i;
    for (int w = 1; w < n; w *= 2) {
        for (int lo = 0; lo < n; lo += 2 * w) {
            int mid = lo + w < n ? lo + w : n, hi = lo + 2 * w < n ? lo + 2 * w : n;
            int i = lo, j = mid, k = lo;
            while (i < mid && j < hi)
                tmp[k++] = key[idx[j]] < key[idx[i]] ? idx[j++] : idx[i++];
            while (i < mid)
                tmp[k++] = idx[i++];
            while (j < hi)
                tmp[k++] = idx[j++];
        }
        int *t = idx;
        idx = tmp;
        tmp = t;
    }
    free(tmp);
    for (int i = 1; i < n; i++)
        if (key[idx[i]] == key[idx[i - 1]]) {
            /* stable: idx[i - 1] is the earlier entry */
            int a = idx[i - 1], b = idx[i];
            free(idx);
            char entry[64];
            snprintf(entry, sizeof entry, "%s[%d]", what, b);
            return coco__err(x, ENG_EFORMAT, entry, "duplicate id %lld (also %s[%d])",
                             (long long)key[b], what, a);
        }
    *out = idx;
    return 0;
}

/* Sorted id index of the images or categories. */
static int coco__index(const coco__ctx *x, tr_coco *c, int images, int **out)
{
    const int n = images ? c->n_images : c->n_categories;
    int64_t *key = malloc(((size_t)n + 1) * sizeof *key);
    if (!key)
        return eng_error(ENG_ENOMEM, "%s: out of memory", x->name);
    for (int i = 0; i < n; i++)
        key[i] = coco__id_of(c, images, i);
    int rc = coco__sort_unique(x, images ? "images" : "categories", key, n, out);
    free(key);
    return rc;
}

/* ---- categories ---- */

static int coco__parse_tasks(const coco__ctx *x, tr_coco_category *k, const json_t *jc,
                             const char *entry)
{
    const json_t *jt = json_object_get(jc, "tasks");
    if (!jt && json_object_get(jc, "heldout_tasks"))
        return coco__err(x, ENG_EFORMAT, entry, "heldout_tasks without tasks");
    if (!jt) {
        k->tasks = calloc(TR_COCO_MAX_DEFAULT_TASKS, sizeof *k->tasks);
        k->task_heldout = calloc(TR_COCO_MAX_DEFAULT_TASKS, 1);
        if (!k->tasks || !k->task_heldout)
            return eng_error(ENG_ENOMEM, "%s: out of memory", x->name);
        k->tasks_generated = 1;
        return tr_coco_default_tasks(k->name, k->tasks, &k->n_tasks);
    }
    if (!json_is_array(jt) || json_array_size(jt) == 0)
        return coco__err(x, ENG_EFORMAT, entry, "tasks must be a non-empty list of strings");
    const size_t n = json_array_size(jt);
    if (n > 100000)
        return coco__err(x, ENG_ELIMIT, entry, "%zu tasks is too many", n);
    k->tasks = calloc(n, sizeof *k->tasks);
    k->task_heldout = calloc(n, 1);
    if (!k->tasks || !k->task_heldout)
        return eng_error(ENG_ENOMEM, "%s: out of memory", x->name);
    for (size_t j = 0; j < n; j++) {
        const json_t *s = json_array_get(jt, j);
        if (!json_is_string(s))
            return coco__err(x, ENG_EFORMAT, entry, "tasks[%zu] is not a string", j);
        if (json_string_length(s) > COCO__MAX_TEXT)
            return coco__err(x, ENG_ELIMIT, entry, "tasks[%zu] is longer than %d bytes", j,
                             COCO__MAX_TEXT);
        if (!(k->tasks[j] = coco__strdup_trim(json_string_value(s))))
            return eng_error(ENG_ENOMEM, "%s: out of memory", x->name);
        k->n_tasks = (int)j + 1;
        if (!k->tasks[j][0])
            return coco__err(x, ENG_EFORMAT, entry, "tasks[%zu] is empty", j);
    }
    const json_t *jh = json_object_get(jc, "heldout_tasks");
    if (jh) {
        if (!json_is_array(jh))
            return coco__err(x, ENG_EFORMAT, entry, "heldout_tasks must be a list of strings");
        for (size_t j = 0; j < json_array_size(jh); j++) {
            const json_t *s = json_array_get(jh, j);
            char *t = json_is_string(s) ? coco__strdup_trim(json_string_value(s)) : NULL;
            if (!t)
                return coco__err(x, ENG_EFORMAT, entry, "heldout_tasks[%zu] is not a string", j);
            int found = 0;
            for (int i = 0; i < k->n_tasks; i++)
                if (!strcmp(k->tasks[i], t))
                    k->task_heldout[i] = 1, found = 1;
            free(t);
            if (!found)
                return coco__err(x, ENG_EFORMAT, entry, "heldout_tasks[%zu] is not one of tasks",
                                 j);
        }
    }
    return 0;
}

static int coco__parse_categories(const coco__ctx *x, tr_coco *c, const json_t *arr)
{
    if (!json_is_array(arr))
        return coco__err(x, ENG_EFORMAT, NULL, "no \"categories\" list");
    const size_t n = json_array_size(arr);
    if (n == 0)
        return coco__err(x, ENG_EFORMAT, NULL, "\"categories\" is empty");
    if (n > 1000000)
        return coco__err(x, ENG_ELIMIT, NULL, "%zu categories is too many", n);
    c->categories = calloc(n, sizeof *c->categories);
    if (!c->categories)
        return eng_error(ENG_ENOMEM, "%s: out of memory for %zu categories", x->name, n);
    for (size_t i = 0; i < n; i++) {
        tr_coco_category *k = &c->categories[i];
        char entry[96];
        c->n_categories = (int)i + 1;
        const json_t *jc = coco__entry(x, arr, "categories", i, &k->id, entry, sizeof entry);
        if (!jc)
            return ENG_EFORMAT;
        const json_t *jn = json_object_get(jc, "name");
        if (!json_is_string(jn) || json_string_length(jn) > COCO__MAX_TEXT)
            return coco__err(x, ENG_EFORMAT, entry,
                             "missing \"name\" (a string of at most %d bytes)", COCO__MAX_TEXT);
        const json_t *js = json_object_get(jc, "supercategory");
        k->name = coco__strdup_trim(json_string_value(jn));
        k->supercategory = coco__strdup_trim(
            json_is_string(js) && json_string_length(js) <= COCO__MAX_TEXT ? json_string_value(js)
                                                                           : "");
        if (!k->name || !k->supercategory)
            return eng_error(ENG_ENOMEM, "%s: out of memory", x->name);
        if (!k->name[0])
            return coco__err(x, ENG_EFORMAT, entry, "empty \"name\"");
        const json_t *jsp = json_object_get(jc, "split");
        if (jsp) {
            const char *s = json_string_value(jsp);
            if (s && !strcmp(s, "seen"))
                k->split = TR_SPLIT_SEEN;
            else if (s && !strcmp(s, "heldout_combination"))
                k->split = TR_SPLIT_HELDOUT;
            else if (s && !strcmp(s, "no_objects"))
                k->split = TR_SPLIT_NO_OBJECTS;
            else
                return coco__err(x, ENG_EFORMAT, entry,
                                 "\"split\" must be \"seen\", \"heldout_combination\" or "
                                 "\"no_objects\"");
        }
        int rc = coco__parse_tasks(x, k, jc, entry);
        if (rc)
            return rc;
    }
    return coco__index(x, c, 0, &c->category_by_id);
}

/* ---- images ---- */

/* A relative path inside the image folder: no absolute path, no ".."
 * component, no empty name. */
static int coco__safe_name(const char *s)
{
    if (!*s || *s == '/')
        return 0;
    for (const char *p = s; *p;) {
        const char *e = strchr(p, '/');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        if (n == 2 && p[0] == '.' && p[1] == '.')
            return 0;
        p += n;
        if (*p == '/')
            p++;
    }
    return 1;
}

static int coco__parse_images(const coco__ctx *x, tr_coco *c, const json_t *arr, int flags)
{
    if (!json_is_array(arr))
        return coco__err(x, ENG_EFORMAT, NULL, "no \"images\" list");
    const size_t n = json_array_size(arr);
    if (n > 100000000)
        return coco__err(x, ENG_ELIMIT, NULL, "%zu images is too many", n);
    c->images = calloc(n ? n : 1, sizeof *c->images);
    if (!c->images)
        return eng_error(ENG_ENOMEM, "%s: out of memory for %zu images", x->name, n);
    for (size_t i = 0; i < n; i++) {
        tr_coco_image *im = &c->images[i];
        char entry[96];
        c->n_images = (int)i + 1;
        const json_t *ji = coco__entry(x, arr, "images", i, &im->id, entry, sizeof entry);
        if (!ji)
            return ENG_EFORMAT;
        int64_t w, h;
        if (coco__get_id(json_object_get(ji, "width"), &w) ||
            coco__get_id(json_object_get(ji, "height"), &h) || w < 1 || h < 1 ||
            w > COCO__MAX_SIDE || h > COCO__MAX_SIDE)
            return coco__err(x, ENG_EFORMAT, entry,
                             "\"width\" and \"height\" must be integers in 1..%d", COCO__MAX_SIDE);
        if (w * h > ENG_IMAGE_DEFAULT_MAX_PIXELS)
            return coco__err(x, ENG_ELIMIT, entry, "%lldx%lld is more than %lld pixels",
                             (long long)w, (long long)h, (long long)ENG_IMAGE_DEFAULT_MAX_PIXELS);
        im->width = (int)w;
        im->height = (int)h;
        const json_t *jf = json_object_get(ji, "file_name");
        if (!json_is_string(jf) || json_string_length(jf) > COCO__MAX_PATH - 1)
            return coco__err(x, ENG_EFORMAT, entry, "missing \"file_name\"");
        if (!(im->file_name = strdup(json_string_value(jf))))
            return eng_error(ENG_ENOMEM, "%s: out of memory", x->name);
        if (!coco__safe_name(im->file_name))
            return coco__err(x, ENG_EFORMAT, entry,
                             "file_name '%s' must be a relative path inside the image folder",
                             im->file_name);
        if (!(flags & TR_COCO_NO_IMAGES)) {
            char path[2 * COCO__MAX_PATH];
            struct stat st;
            if (tr_coco_image_path(c, (int)i, path, sizeof path))
                return coco__err(x, ENG_ELIMIT, entry, "image path too long");
            if (stat(path, &st) != 0)
                return coco__err(x, ENG_ENOTFOUND, entry, "image file %s not found", path);
            if (!S_ISREG(st.st_mode) || access(path, R_OK) != 0)
                return coco__err(x, ENG_EIO, entry, "image file %s is not a readable file", path);
        }
    }
    return coco__index(x, c, 1, &c->image_by_id);
}

/* ---- annotations ---- */

int tr__coco_parse_segm(const char *file, const json_t *js, int h, int w, int strict, eng_rle *out,
                        const char *entry)
{
    const coco__ctx ctx = {file}, *x = &ctx;
    int rc;
    memset(out, 0, sizeof *out);
    if (json_is_array(js)) {
        const size_t np = json_array_size(js);
        if (np == 0)
            return coco__err(x, ENG_EFORMAT, entry, "segmentation: empty polygon list");
        if (np > 100000)
            return coco__err(x, ENG_ELIMIT, entry, "segmentation: %zu polygons is too many", np);
        eng_rle *parts = calloc(np, sizeof *parts);
        const eng_rle **pp = calloc(np, sizeof *pp);
        double *xy = NULL;
        rc = 0;
        if (!parts || !pp)
            rc = eng_error(ENG_ENOMEM, "%s: out of memory", x->name);
        for (size_t p = 0; p < np && !rc; p++) {
            const json_t *jp = json_array_get(js, p);
            const size_t nv = json_is_array(jp) ? json_array_size(jp) : 0;
            if (!json_is_array(jp) || nv % 2) {
                rc = coco__err(x, ENG_EFORMAT, entry,
                               "segmentation: polygon %zu must be a list of x, y pairs", p);
                break;
            }
            double *nx = realloc(xy, (nv + 1) * sizeof *xy);
            if (!nx) {
                rc = eng_error(ENG_ENOMEM, "%s: out of memory", x->name);
                break;
            }
            xy = nx;
            for (size_t j = 0; j < nv && !rc; j++)
                if (coco__get_number(json_array_get(jp, j), &xy[j]))
                    rc =
                        coco__err(x, ENG_EFORMAT, entry,
                                  "segmentation: polygon %zu coordinate %zu is not a number", p, j);
            for (size_t j = 0; strict && j + 1 < nv && !rc; j += 2)
                if (xy[j] < -COCO__POLY_SLACK || xy[j] > w + COCO__POLY_SLACK ||
                    xy[j + 1] < -COCO__POLY_SLACK || xy[j + 1] > h + COCO__POLY_SLACK)
                    rc = coco__err(x, ENG_EFORMAT, entry,
                                   "segmentation: polygon %zu vertex %zu (%g, %g) is outside the "
                                   "%dx%d image",
                                   p, j / 2, xy[j], xy[j + 1], w, h);
            if (rc)
                break;
            pp[p] = &parts[p];
            if (nv < 6) {
                /* fewer than 3 points: no area, nothing to add (a few COCO
                 * annotations carry such a part) */
                parts[p].counts = malloc(sizeof *parts[p].counts);
                if (!parts[p].counts) {
                    rc = eng_error(ENG_ENOMEM, "%s: out of memory", x->name);
                    break;
                }
                parts[p].counts[0] = (uint32_t)((uint64_t)h * (uint64_t)w);
                parts[p].n = 1;
                parts[p].h = h;
                parts[p].w = w;
                continue;
            }
            if ((rc = tr_rle_from_polygon(xy, nv / 2, h, w, &parts[p])) < 0) {
                char m[512];
                snprintf(m, sizeof m, "%s", eng_last_error());
                rc = coco__err(x, rc, entry, "segmentation: polygon %zu: %s", p, m);
            }
        }
        if (!rc)
            rc = tr_rle_union(pp, np, out);
        for (size_t p = 0; parts && p < np; p++)
            eng_rle_free(&parts[p]);
        free(parts);
        free(pp);
        free(xy);
        return rc;
    }
    if (!json_is_object(js))
        return coco__err(x, ENG_EFORMAT, entry,
                         "segmentation must be a list of polygons or an RLE object");
    const json_t *jsz = json_object_get(js, "size"), *jc = json_object_get(js, "counts");
    int64_t sh, sw;
    if (!json_is_array(jsz) || json_array_size(jsz) != 2 ||
        coco__get_id(json_array_get(jsz, 0), &sh) || coco__get_id(json_array_get(jsz, 1), &sw))
        return coco__err(x, ENG_EFORMAT, entry,
                         "segmentation: RLE \"size\" must be [height, width]");
    if (sh != h || sw != w)
        return coco__err(x, ENG_EFORMAT, entry,
                         "segmentation: RLE size [%lld, %lld] is not the image's [%d, %d]",
                         (long long)sh, (long long)sw, h, w);
    if (json_is_string(jc)) {
        rc = eng_rle_from_string(json_string_value(jc), json_string_length(jc), h, w, out);
        if (rc) {
            char m[512];
            snprintf(m, sizeof m, "%s", eng_last_error());
            return coco__err(x, rc, entry, "segmentation: bad RLE: %s", m);
        }
        return 0;
    }
    if (!json_is_array(jc))
        return coco__err(x, ENG_EFORMAT, entry,
                         "segmentation: RLE \"counts\" must be a string or a list of integers");
    const size_t n = json_array_size(jc);
    const uint64_t area = (uint64_t)h * (uint64_t)w;
    if (n > area + 1)
        return coco__err(x, ENG_EFORMAT, entry, "segmentation: bad RLE: %zu runs for %llu pixels",
                         n, (unsigned long long)area);
    out->counts = malloc((n ? n : 1) * sizeof *out->counts);
    if (!out->counts)
        return eng_error(ENG_ENOMEM, "%s: out of memory", x->name);
    uint64_t total = 0;
    for (size_t i = 0; i < n; i++) {
        const json_t *v = json_array_get(jc, i);
        json_int_t c = json_is_integer(v) ? json_integer_value(v) : -1;
        if (c < 0 || (uint64_t)c > area - total) {
            eng_rle_free(out);
            return coco__err(x, ENG_EFORMAT, entry,
                             c < 0 ? "segmentation: bad RLE: counts[%zu] is not a non-negative "
                                     "integer"
                                   : "segmentation: bad RLE: counts[%zu] runs past the mask's end",
                             i);
        }
        out->counts[i] = (uint32_t)c;
        total += (uint64_t)c;
    }
    if (total != area) {
        eng_rle_free(out);
        return coco__err(x, ENG_EFORMAT, entry,
                         "segmentation: bad RLE: runs cover %llu pixels, the %dx%d image has %llu",
                         (unsigned long long)total, w, h, (unsigned long long)area);
    }
    out->h = h;
    out->w = w;
    out->n = n;
    return 0;
}

static int coco__parse_anns(const coco__ctx *x, tr_coco *c, const json_t *arr)
{
    if (!json_is_array(arr))
        return coco__err(x, ENG_EFORMAT, NULL, "no \"annotations\" list");
    const size_t n = json_array_size(arr);
    if (n > 100000000)
        return coco__err(x, ENG_ELIMIT, NULL, "%zu annotations is too many", n);
    c->anns = calloc(n ? n : 1, sizeof *c->anns);
    int64_t *ids = calloc(n ? n : 1, sizeof *ids);
    int *order = NULL;
    int rc = 0;
    if (!c->anns || !ids) {
        rc = eng_error(ENG_ENOMEM, "%s: out of memory for %zu annotations", x->name, n);
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        tr_coco_ann *a = &c->anns[i];
        char entry[96];
        c->n_anns = (int)i + 1;
        const json_t *ja = coco__entry(x, arr, "annotations", i, &a->id, entry, sizeof entry);
        if (!ja) {
            rc = ENG_EFORMAT;
            goto done;
        }
        rc = ENG_EFORMAT;
        int64_t iid, cid;
        if (coco__get_id(json_object_get(ja, "image_id"), &iid) ||
            (a->image = tr_coco_image_index(c, iid)) < 0) {
            rc = coco__err(x, rc, entry, "\"image_id\" names no image");
            goto done;
        }
        if (coco__get_id(json_object_get(ja, "category_id"), &cid) ||
            (a->category = tr_coco_category_index(c, cid)) < 0) {
            rc = coco__err(x, rc, entry, "\"category_id\" names no category");
            goto done;
        }
        const json_t *jcr = json_object_get(ja, "iscrowd");
        if (jcr &&
            !(json_is_boolean(jcr) || (json_is_integer(jcr) && (json_integer_value(jcr) == 0 ||
                                                                json_integer_value(jcr) == 1)))) {
            rc = coco__err(x, rc, entry, "\"iscrowd\" must be 0 or 1");
            goto done;
        }
        a->iscrowd = json_is_true(jcr) || (json_is_integer(jcr) && json_integer_value(jcr) == 1);
        const tr_coco_image *im = &c->images[a->image];
        const json_t *jsg = json_object_get(ja, "segmentation");
        if (!jsg) {
            rc = coco__err(x, rc, entry, "no \"segmentation\"");
            goto done;
        }
        if ((rc = tr__coco_parse_segm(x->name, jsg, im->height, im->width, 1, &a->mask, entry)) < 0)
            goto done;
        rc = ENG_EFORMAT;
        const json_t *jar = json_object_get(ja, "area"), *jb = json_object_get(ja, "bbox");
        if (jar) {
            if (coco__get_number(jar, &a->area) || a->area < 0) {
                rc = coco__err(x, rc, entry, "\"area\" must be a non-negative number");
                goto done;
            }
        } else
            a->area = (double)eng_rle_area(&a->mask);
        if (jb) {
            int ok = json_is_array(jb) && json_array_size(jb) == 4;
            for (int k = 0; k < 4 && ok; k++)
                ok = !coco__get_number(json_array_get(jb, (size_t)k), &a->bbox[k]);
            if (!ok || a->bbox[2] < 0 || a->bbox[3] < 0) {
                rc = coco__err(x, rc, entry, "\"bbox\" must be [x, y, width, height]");
                goto done;
            }
        } else
            eng_rle_bbox(&a->mask, a->bbox);
        ids[i] = a->id;
        rc = 0;
    }
    /* Unique annotation ids (COCOeval keys matches on them). */
    if ((rc = coco__sort_unique(x, "annotations", ids, (int)n, &order)) < 0)
        goto done;
    /* Group by image, file order kept within each image. */
    c->ann_index = malloc((n ? n : 1) * sizeof *c->ann_index);
    if (!c->ann_index) {
        rc = eng_error(ENG_ENOMEM, "%s: out of memory", x->name);
        goto done;
    }
    for (size_t i = 0; i < n; i++)
        c->images[c->anns[i].image].n_anns++;
    int pos = 0;
    for (int i = 0; i < c->n_images; i++) {
        c->images[i].first_ann = pos;
        pos += c->images[i].n_anns;
        c->images[i].n_anns = 0;
    }
    for (size_t i = 0; i < n; i++) {
        tr_coco_image *im = &c->images[c->anns[i].image];
        c->ann_index[im->first_ann + im->n_anns++] = (int)i;
    }
done:
    free(ids);
    free(order);
    return rc;
}

/* ---- load ---- */

static int coco__load_json(tr_coco **out, json_t *root, const coco__ctx *x, const char *image_dir,
                           int flags)
{
    *out = NULL;
    tr_coco *c = calloc(1, sizeof *c);
    if (!c)
        return eng_error(ENG_ENOMEM, "out of memory");
    int rc = 0;
    if (!(c->json_path = strdup(x->name)) || (image_dir && !(c->image_dir = strdup(image_dir)))) {
        rc = eng_error(ENG_ENOMEM, "out of memory");
        goto fail;
    }
    if (!(flags & TR_COCO_NO_IMAGES) && !image_dir) {
        rc = eng_error(ENG_EINVAL, "%s: no image folder given", x->name);
        goto fail;
    }
    if (!json_is_object(root)) {
        rc = coco__err(x, ENG_EFORMAT, NULL, "not a COCO instances object");
        goto fail;
    }
    if ((rc = coco__parse_categories(x, c, json_object_get(root, "categories"))) < 0 ||
        (rc = coco__parse_images(x, c, json_object_get(root, "images"), flags)) < 0 ||
        (rc = coco__parse_anns(x, c, json_object_get(root, "annotations"))) < 0)
        goto fail;
    *out = c;
    return 0;
fail:
    tr_coco_destroy(c);
    return rc;
}

int tr_coco_load_buffer(tr_coco **out, const char *json, size_t len, const char *name,
                        const char *image_dir, int flags)
{
    json_error_t je;
    *out = NULL;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &je);
    if (!root)
        return eng_error(ENG_EFORMAT, "%s: line %d column %d: %s", name, je.line, je.column,
                         je.text);
    coco__ctx x = {name};
    int rc = coco__load_json(out, root, &x, image_dir, flags);
    json_decref(root);
    return rc;
}

int tr_coco_load(tr_coco **out, const char *json_path, const char *image_dir, int flags)
{
    *out = NULL;
    FILE *f = fopen(json_path, "rb");
    if (!f)
        return eng_error(ENG_EIO, "%s: cannot open: %s", json_path, strerror(errno));
    json_error_t je;
    json_t *root = json_loadf(f, JSON_REJECT_DUPLICATES, &je);
    int err = ferror(f);
    fclose(f);
    if (!root)
        return eng_error(err ? ENG_EIO : ENG_EFORMAT, "%s: line %d column %d: %s", json_path,
                         je.line, je.column, je.text);
    coco__ctx x = {json_path};
    int rc = coco__load_json(out, root, &x, image_dir, flags);
    json_decref(root);
    return rc;
}

int tr_coco_open_dir(tr_coco **out, const char *dir, int flags)
{
    char json[COCO__MAX_PATH], images[COCO__MAX_PATH];
    *out = NULL;
    if ((size_t)snprintf(json, sizeof json, "%s/instances.json", dir) >= sizeof json ||
        (size_t)snprintf(images, sizeof images, "%s/images", dir) >= sizeof images)
        return eng_error(ENG_ELIMIT, "%s: path too long", dir);
    return tr_coco_load(out, json, images, flags);
}

void tr_coco_destroy(tr_coco *c)
{
    if (!c)
        return;
    for (int i = 0; i < c->n_images; i++)
        free(c->images[i].file_name);
    for (int i = 0; i < c->n_categories; i++) {
        tr_coco_category *k = &c->categories[i];
        free(k->name);
        free(k->supercategory);
        for (int j = 0; k->tasks && j < k->n_tasks; j++)
            free(k->tasks[j]);
        free(k->tasks);
        free(k->task_heldout);
    }
    for (int i = 0; i < c->n_anns; i++)
        eng_rle_free(&c->anns[i].mask);
    free(c->images);
    free(c->categories);
    free(c->anns);
    free(c->ann_index);
    free(c->image_by_id);
    free(c->category_by_id);
    free(c->json_path);
    free(c->image_dir);
    free(c);
}

/* ---- images and masks ---- */

int tr_coco_image_path(const tr_coco *c, int image, char *buf, size_t cap)
{
    const char *dir = c->image_dir ? c->image_dir : ".";
    if ((size_t)snprintf(buf, cap, "%s/%s", dir, c->images[image].file_name) >= cap)
        return eng_error(ENG_ELIMIT, "%s: images[%d]: path too long", c->json_path, image);
    return 0;
}

int tr_coco_load_image(const tr_coco *c, int image, eng_image *out)
{
    char path[2 * COCO__MAX_PATH];
    const tr_coco_image *im = &c->images[image];
    memset(out, 0, sizeof *out);
    int rc = tr_coco_image_path(c, image, path, sizeof path);
    if (rc)
        return rc;
    if ((rc = eng_image_load(path, ENG_IMAGE_DEFAULT_MAX_PIXELS, out)) < 0) {
        char m[512];
        snprintf(m, sizeof m, "%s", eng_last_error());
        return eng_error(rc, "%s: images[%d] (id %lld): %s", c->json_path, image, (long long)im->id,
                         m);
    }
    if (out->w != im->width || out->h != im->height) {
        int w = out->w, h = out->h;
        eng_image_free(out);
        return eng_error(ENG_EFORMAT, "%s: images[%d] (id %lld): %s is %dx%d, the JSON says %dx%d",
                         c->json_path, image, (long long)im->id, path, w, h, im->width, im->height);
    }
    return 0;
}

void tr_coco_category_mask(const tr_coco *c, int image, int category, uint8_t *mask,
                           int *n_instances)
{
    const tr_coco_image *im = &c->images[image];
    int n = 0;
    memset(mask, 0, (size_t)im->width * (size_t)im->height);
    for (int j = 0; j < im->n_anns; j++) {
        const tr_coco_ann *a = &c->anns[c->ann_index[im->first_ann + j]];
        if (a->category == category && !a->iscrowd) {
            tr_rle_paint(&a->mask, mask);
            n++;
        }
    }
    if (n_instances)
        *n_instances = n;
}
