/*
 * bench/tasam-bench/workload.c: the workload: images (read, varied,
 * registered with the server), the request mix, and each request built
 * from a seeded generator so that a run is reproducible.
 */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <zlib.h>

#include "bench/tasam-bench/tb.h"
#include "engine/sha256.h"
#include "server/base64.h"

/* ---- random numbers ----------------------------------------------------- */

uint64_t tb_splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Uniform in [0, 1). */
double tb_urand(uint64_t *s) { return (double)(tb_splitmix(s) >> 11) * 0x1.0p-53; }

/* ---- workload ----------------------------------------------------------- */

static int read_file(const char *path, uint8_t **buf, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return -1;
    size_t cap = 1 << 16, n = 0;
    uint8_t *b = malloc(cap);
    while (b) {
        size_t got = fread(b + n, 1, cap - n, f);
        n += got;
        if (n < cap)
            break;
        if (cap >= HC_MAX_BODY) { /* the daemon would refuse it anyway */
            free(b);
            b = NULL;
            break;
        }
        uint8_t *nb = realloc(b, cap * 2);
        if (!nb) {
            free(b);
            b = NULL;
            break;
        }
        b = nb;
        cap *= 2;
    }
    int bad = ferror(f);
    fclose(f);
    if (!b || bad) {
        free(b);
        return -1;
    }
    *buf = b;
    *len = n;
    return 0;
}

/* "a,b,c;d,e,f" -> [[a,b,c],[d,e,f]], each item exactly `arity` numbers. */
static json_t *parse_tuples(const char *s, int arity, const char *what, char *err, size_t errlen)
{
    json_t *arr = json_array();
    const char *p = s;
    while (arr && *p) {
        json_t *item = json_array();
        for (int k = 0; k < arity; k++) {
            char *end;
            errno = 0;
            double v = strtod(p, &end);
            if (end == p || errno || !isfinite(v) ||
                (k < arity - 1 ? *end != ',' : (*end && *end != ';'))) {
                snprintf(err, errlen,
                         "%s: expected %d comma-separated numbers per item, "
                         "items separated by ';': %s",
                         what, arity, s);
                json_decref(item);
                json_decref(arr);
                return NULL;
            }
            json_array_append_new(
                item, v == floor(v) && fabs(v) < 1e15 ? json_integer((json_int_t)v) : json_real(v));
            p = end + (*end == ',' || *end == ';');
        }
        json_array_append_new(arr, item);
    }
    if (arr && json_array_size(arr) == 0) {
        snprintf(err, errlen, "%s: empty", what);
        json_decref(arr);
        return NULL;
    }
    return arr;
}

/*
 * A cache-miss variant of an image: the same pixels with a unique comment
 * (JPEG: a COM segment after SOI; PNG: a tEXt chunk after IHDR), so its
 * SHA-256, and thus its image_id, is new and the server must run the
 * encoder. Returns a malloc'd buffer of *len bytes, or NULL.
 */
static uint8_t *miss_variant(const image *im, uint64_t nonce, size_t *len)
{
    char tag[40];
    int tl = snprintf(tag, sizeof tag, "tasam-bench:%016llx", (unsigned long long)nonce);
    if (im->jpg) {
        /* FF D8 | FF FE len(2, counts itself) text | rest */
        uint8_t *b = malloc(im->len + 4 + (size_t)tl);
        if (!b)
            return NULL;
        memcpy(b, im->bytes, 2);
        b[2] = 0xFF;
        b[3] = 0xFE;
        b[4] = (uint8_t)((tl + 2) >> 8);
        b[5] = (uint8_t)(tl + 2);
        memcpy(b + 6, tag, (size_t)tl);
        memcpy(b + 6 + tl, im->bytes + 2, im->len - 2);
        *len = im->len + 4 + (size_t)tl;
        return b;
    }
    /* signature (8) | IHDR chunk (25) | tEXt: len(4) "tEXt" "Comment\0" tag crc(4) | rest */
    static const char key[] = "Comment";
    size_t dl = sizeof key + (size_t)tl, at = 33, cl = 12 + dl;
    uint8_t *b = malloc(im->len + cl);
    if (!b)
        return NULL;
    memcpy(b, im->bytes, at);
    uint8_t *c = b + at;
    c[0] = (uint8_t)(dl >> 24), c[1] = (uint8_t)(dl >> 16), c[2] = (uint8_t)(dl >> 8);
    c[3] = (uint8_t)dl;
    memcpy(c + 4, "tEXt", 4);
    memcpy(c + 8, key, sizeof key);
    memcpy(c + 8 + sizeof key, tag, (size_t)tl);
    uLong crc = crc32(0L, c + 4, (uInt)(4 + dl));
    uint8_t *cr = c + 8 + dl;
    cr[0] = (uint8_t)(crc >> 24), cr[1] = (uint8_t)(crc >> 16), cr[2] = (uint8_t)(crc >> 8);
    cr[3] = (uint8_t)crc;
    memcpy(b + at + cl, im->bytes + at, im->len - at);
    *len = im->len + cl;
    return b;
}

void tb_genreq_free(genreq *g)
{
    if (g->owned)
        free(g->req);
    g->req = NULL;
    g->owned = 0;
}

static int pick_kind(const workload *w, uint64_t *rng)
{
    double u = tb_urand(rng);
    for (int k = 0; k < NKIND; k++)
        if (u < w->cum[k])
            return k;
    for (int k = NKIND - 1; k >= 0; k--)
        if (w->cum[k] > (k ? w->cum[k - 1] : 0))
            return k;
    return K_HEALTHZ;
}

/* A random point prompt inside the image (foreground), [[x,y,1]]. */
static json_t *random_point(const image *im, uint64_t *rng)
{
    int w = im->w > 0 ? im->w : 64, h = im->h > 0 ? im->h : 64;
    return json_pack("[[i,i,i]]", (int)(tb_urand(rng) * w), (int)(tb_urand(rng) * h), 1);
}

/*
 * Build request number `seq` of a step: the kind, image, prompt and task
 * are drawn from the workload with a generator seeded by (seed, seq), so a
 * run is reproducible. With `bytes`, the same request sends the image
 * itself instead of its image_id (what a client does when a replica that
 * never saw the image answers 404). Returns 0 or -1 (out of memory).
 */
int tb_make_request(const options *o, const workload *w, const hc_target *t, uint64_t seq,
                    int bytes, genreq *g)
{
    uint64_t rng = o->seed ^ (seq * 0xD1B54A32D192ED03ull);
    tb_splitmix(&rng);
    memset(g, 0, sizeof *g);
    g->kind = pick_kind(w, &rng);
    if (g->kind == K_HEALTHZ) {
        g->req = w->healthz_req;
        g->len = w->healthz_len;
        return 0;
    }
    const image *im = &w->img[(size_t)(tb_urand(&rng) * w->n_img) % (size_t)w->n_img];
    int miss = o->miss_ratio > 0 && tb_urand(&rng) < o->miss_ratio;
    uint8_t *var = NULL;
    size_t var_len = 0;
    char *b64 = NULL; /* the image to send, or NULL to send image_id */
    char id[65];      /* for the header */
    memcpy(id, im->id, sizeof id);
    if (miss) {
        var = miss_variant(im, tb_splitmix(&rng), &var_len);
        if (!var)
            return -1;
        uint8_t d[32];
        eng_sha256(var, var_len, d);
        eng_sha256_hex(d, id);
        b64 = srv_base64_encode(var, var_len);
        free(var);
        if (!b64)
            return -1;
    } else if (o->no_cache || bytes || g->kind == K_EMBEDDINGS) {
        b64 = im->b64;
        memcpy(id, im->sha, sizeof id);
    }
    g->by_id = !b64;

    /* Every field but the image, then the image spliced in front: the
     * base64 is copied once instead of escaped by the JSON writer. */
    json_t *rest = json_object();
    if (!b64)
        json_object_set_new(rest, "image_id", json_string(im->id));
    if (g->kind == K_SEGMENT) {
        json_t *pts =
            o->n_points ? json_deep_copy(w->points[tb_splitmix(&rng) % o->n_points]) : NULL;
        json_t *box = o->n_boxes ? json_deep_copy(w->boxes[tb_splitmix(&rng) % o->n_boxes]) : NULL;
        if (!pts && !box)
            pts = random_point(im, &rng);
        if (pts)
            json_object_set_new(rest, "points", pts);
        if (box)
            json_object_set_new(rest, "boxes", json_pack("[o]", box));
    } else if (g->kind == K_EVERYTHING) {
        json_object_set_new(rest, "everything", json_deep_copy(w->everything));
    }
    if (g->kind != K_EMBEDDINGS) {
        double tr = o->task_ratio >= 0 ? o->task_ratio : 1.0;
        if (o->n_tasks && tb_urand(&rng) < tr)
            json_object_set_new(rest, "task",
                                json_string(o->tasks[tb_splitmix(&rng) % o->n_tasks]));
        if (o->multimask >= 0)
            json_object_set_new(rest, "multimask", json_boolean(o->multimask));
        if (o->output)
            json_object_set_new(rest, "output", json_string(o->output));
    }
    char *rs = json_dumps(rest, JSON_COMPACT);
    json_decref(rest);
    char *body = NULL;
    size_t bl = 0;
    if (rs && b64) {
        size_t b64l = strlen(b64), rl = strlen(rs);
        body = malloc(b64l + rl + 16);
        if (body)
            bl = (size_t)sprintf(body, "{\"image\":\"%s\"%s%s", b64, rl > 2 ? "," : "}",
                                 rl > 2 ? rs + 1 : "");
    } else if (rs) {
        body = rs;
        rs = NULL;
        bl = strlen(body);
    }
    free(rs);
    if (miss)
        free(b64);
    if (!body)
        return -1;
    char hdr[128] = "";
    if (!o->no_id_header)
        snprintf(hdr, sizeof hdr, "X-Tasam-Image-Id: %s\r\n", id);
    hc_request rq = {.method = "POST",
                     .path = g->kind == K_EMBEDDINGS ? "/v1/embeddings" : "/v1/segment",
                     .headers = hdr,
                     .content_type = "application/json",
                     .body = body,
                     .body_len = bl};
    int e = hc_request_build(t, &rq, &g->req, &g->len);
    free(body);
    g->owned = 1;
    return e ? -1 : 0;
}

/* POST an image to /v1/embeddings once: its image_id (checked against our
 * own SHA-256) and size. */
static int register_image(const options *o, const hc_target *t, image *im, char *err, size_t errlen)
{
    json_t *b = json_pack("{s:s}", "image", im->b64);
    char *body = b ? json_dumps(b, JSON_COMPACT) : NULL;
    json_decref(b);
    char hdr[128], *req = NULL;
    size_t rl = 0;
    snprintf(hdr, sizeof hdr, "X-Tasam-Image-Id: %s\r\n", im->sha);
    hc_request rq = {.method = "POST",
                     .path = "/v1/embeddings",
                     .headers = o->no_id_header ? NULL : hdr,
                     .content_type = "application/json",
                     .body = body,
                     .body_len = body ? strlen(body) : 0};
    if (!body || hc_request_build(t, &rq, &req, &rl) != 0) {
        free(body);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    free(body);
    hc_conn c;
    hc_response r;
    hc_conn_init(&c);
    hc_response_init(&r);
    int rc = -1;
    int e = hc_exchange(&c, t, req, rl, &r, o->timeout_s, NULL);
    if (e) {
        snprintf(err, errlen, "POST /v1/embeddings for %s: %s", im->path, hc_strerror(e));
    } else if (r.status != 200) {
        snprintf(err, errlen, "POST /v1/embeddings for %s answered %d: %.300s", im->path, r.status,
                 r.body ? r.body : "");
    } else {
        json_t *j = json_loadb(r.body, r.len, 0, NULL);
        const char *id = json_string_value(json_object_get(j, "image_id"));
        if (!id || strlen(id) != 64) {
            snprintf(err, errlen, "POST /v1/embeddings for %s: no image_id in the answer",
                     im->path);
        } else {
            /* tasamd's id is the SHA-256; a stub may name images its own
             * way, and requests by id then send its name. */
            snprintf(im->id, sizeof im->id, "%s", id);
            im->w = (int)json_integer_value(json_object_get(j, "width"));
            im->h = (int)json_integer_value(json_object_get(j, "height"));
            rc = 0;
        }
        json_decref(j);
    }
    hc_conn_free(&c);
    hc_response_free(&r);
    free(req);
    return rc;
}

/* Read the images, parse the prompts, register the images with the server
 * when some request kind sends one. Returns 0, 2 (usage) or 3 (setup). */
int tb_workload_init(const options *o, const hc_target *t, workload *w, char *err, size_t errlen)
{
    memset(w, 0, sizeof *w);
    double sum = 0;
    for (int k = 0; k < NKIND; k++) {
        sum += o->mix[k];
        w->cum[k] = sum;
    }
    for (int k = 0; k < NKIND; k++)
        w->cum[k] /= sum;
    hc_request hz = {.method = "GET", .path = "/healthz"};
    if (hc_request_build(t, &hz, &w->healthz_req, &w->healthz_len) != 0) {
        snprintf(err, errlen, "out of memory");
        return 3;
    }
    for (int i = 0; i < o->n_points; i++)
        if (!(w->points[i] = parse_tuples(o->points[i], 3, "--points", err, errlen)))
            return 2;
    for (int i = 0; i < o->n_boxes; i++) {
        json_t *b = parse_tuples(o->boxes[i], 4, "--boxes", err, errlen);
        if (!b)
            return 2;
        if (json_array_size(b) != 1) {
            json_decref(b);
            snprintf(err, errlen, "--boxes %s: one box per option (give --boxes again)",
                     o->boxes[i]);
            return 2;
        }
        w->boxes[i] = json_incref(json_array_get(b, 0));
        json_decref(b);
    }
    json_error_t je;
    w->everything = json_loads(o->everything ? o->everything : "true", JSON_DECODE_ANY, &je);
    if (!w->everything || !(json_is_true(w->everything) || json_is_object(w->everything))) {
        snprintf(err, errlen, "--everything: expected true or a JSON object of parameters: %s",
                 o->everything);
        return 2;
    }
    if (o->mix[K_SEGMENT] + o->mix[K_EVERYTHING] + o->mix[K_EMBEDDINGS] == 0)
        return 0;
    int total = o->n_images * o->variants;
    for (int i = 0; i < total; i++) {
        image *im = &w->img[w->n_img++];
        const image *base = &w->img[i - i % o->variants];
        im->path = o->images[i / o->variants];
        if (i % o->variants == 0) {
            if (read_file(im->path, &im->bytes, &im->len) != 0 || im->len < 8) {
                snprintf(err, errlen, "cannot read --image %s (or it is empty)", im->path);
                return 3;
            }
            im->jpg = im->bytes[0] == 0xFF && im->bytes[1] == 0xD8;
            im->png = im->len > 33 && !memcmp(im->bytes, "\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR", 16);
            if ((o->miss_ratio > 0 || o->variants > 1) && !im->jpg && !im->png) {
                snprintf(err, errlen,
                         "--miss-ratio and --variants need JPEG or PNG images: %s is "
                         "neither",
                         im->path);
                return 2;
            }
        } else {
            /* Variant k of the file: its pixels under another name (a
             * fixed nonce, so every run registers the same images). */
            im->jpg = base->jpg;
            im->png = base->png;
            if (!(im->bytes =
                      miss_variant(base, 0x7A5A0000ull + (uint64_t)(i % o->variants), &im->len))) {
                snprintf(err, errlen, "out of memory");
                return 3;
            }
        }
        if (!o->quiet && total > 10 && (i + 1) % 10 == 0)
            fprintf(stderr, "registering images: %d/%d\n", i + 1, total);
        uint8_t d[32];
        eng_sha256(im->bytes, im->len, d);
        eng_sha256_hex(d, im->sha);
        memcpy(im->id, im->sha, sizeof im->id);
        if (!(im->b64 = srv_base64_encode(im->bytes, im->len))) {
            snprintf(err, errlen, "out of memory");
            return 3;
        }
        if (register_image(o, t, im, err, errlen) != 0)
            return 3;
    }
    return 0;
}

void tb_workload_free(workload *w)
{
    for (int i = 0; i < w->n_img; i++) {
        free(w->img[i].bytes);
        free(w->img[i].b64);
    }
    for (int i = 0; i < MAX_LIST; i++) {
        json_decref(w->points[i]);
        json_decref(w->boxes[i]);
    }
    json_decref(w->everything);
    free(w->healthz_req);
}
