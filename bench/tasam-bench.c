/*
 * bench/tasam-bench.c: the bundled HTTP load tester for tasamd (and for a
 * fleet of them behind HAProxy).
 *
 *   build/bench/tasam-bench --url http://HOST:PORT [workload] [load shape] [output]
 *
 * Two load shapes:
 *   closed loop  --concurrency N: N connections, each sends its next request
 *                when the last one answered. Latency is send to answer. This
 *                measures capacity, but a stalled server also stalls the
 *                client, so slow periods are under-sampled.
 *   open loop    --rate R: arrivals are scheduled in advance (Poisson or
 *                evenly spaced) and latency runs from the *scheduled* send
 *                time, so a request that had to wait for a free connection
 *                or a stalled server counts all of its wait (no coordinated
 *                omission). --connections bounds the requests in flight.
 * --sweep rate=... or concurrency=... runs one step per value and prints a
 * row per step, stopping when errors or p99 pass a bound.
 *
 * The workload is a mix of request kinds (segment with point or box
 * prompts, everything mode, embeddings, healthz) over a set of images, with
 * a chosen fraction of cache misses (an image variant the server has never
 * seen: the same pixels with a unique comment, so the encoder runs) and of
 * requests carrying a task. Every image request sends X-Tasam-Image-Id (the
 * SHA-256 of the image bytes) so a consistent-hashing proxy can route it.
 *
 * Requests are built before their send time and sent with the shared
 * client (clients/http_client.h): plain sockets, keep-alive, one
 * connection per worker thread. Every 200 is checked (a fast wrong answer
 * must not count as throughput).
 *
 * A benchmark, never a test: it reports and asserts nothing about speed.
 * Exit status: 0 every measured request succeeded, 1 some failed (they are
 * in the report), 2 bad usage, 3 setup failed (image, address, image_id).
 */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include "clients/http_client.h"
#include "engine/sha256.h"
#include "server/base64.h"

#define MAX_REQUESTS    1000000 /* bound on recorded requests per step (~48 B each) */
#define MAX_DURATION_S  3600.0
#define MAX_CONCURRENCY 1024
#define MAX_RATE        1e6
#define MAX_LIST        256  /* --image, --points, --boxes, --task entries */
#define MAX_IMAGES      1024 /* images in all, --variants included */
#define MAX_STEPS       64
#define MAX_INSTANCES   64
#define LATE_NS         1000000 /* an open-loop send more than 1 ms after its slot is late */

/* Failures: the client's HC_E* codes (as positive indexes) and one of ours. */
enum { ERR_INVALID = HC_NERR, NERR };
static const char *err_name(int e) { return e == ERR_INVALID ? "invalid_body" : hc_strerror(-e); }

/* timings_ms stages, in the API's order (schema/openapi.yaml, Timings). */
enum { ST_DECODE, ST_QUEUE, ST_ENCODE, ST_DECODE_MASKS, ST_POSTPROCESS, ST_TOTAL, NST };
static const char *const stage_names[NST] = {"decode",       "queue",       "encode",
                                             "decode_masks", "postprocess", "total"};

/* Request kinds of the workload mix. */
enum { K_SEGMENT, K_EVERYTHING, K_EMBEDDINGS, K_HEALTHZ, NKIND };
static const char *const kind_names[NKIND] = {"segment", "everything", "embeddings", "healthz"};

enum { SWEEP_NONE, SWEEP_RATE, SWEEP_CONCURRENCY };
enum { ARR_POISSON, ARR_CONSTANT };

typedef struct {
    char url[1024];
    double mix[NKIND]; /* weights; all 0 until --mix or --route */
    const char *images[MAX_LIST];
    int n_images;
    const char *points[MAX_LIST];
    int n_points;
    const char *boxes[MAX_LIST];
    int n_boxes;
    const char *tasks[MAX_LIST];
    int n_tasks;
    double task_ratio;      /* fraction of segment/everything requests with a task; -1 unset */
    const char *everything; /* JSON of the everything field (default true) */
    double miss_ratio;      /* fraction of image requests that miss the cache */
    int variants;           /* distinct images made of each --image file */
    int no_cache;           /* hits send the image bytes, not image_id */
    int no_id_header;       /* do not send X-Tasam-Image-Id */
    int no_resend;          /* a 404 for image_id is an error, not a reason to send the image */
    int multimask;          /* -1: not sent */
    const char *output;
    int concurrency;  /* closed loop: connections */
    int connections;  /* open loop: most requests in flight */
    double rate;      /* open loop when > 0 */
    int arrivals;     /* ARR_* */
    long requests;    /* per step; 0: not given */
    double duration;  /* per step; 0: not given */
    long warmup;      /* unmeasured requests before the first step */
    double timeout_s; /* per request */
    int sweep;        /* SWEEP_* */
    double steps[MAX_STEPS];
    int n_steps;
    double stop_p99_ms; /* sweep bound; 0: none */
    double stop_errors; /* sweep bound: fraction of failed requests */
    uint64_t seed;
    int json, quiet;
    const char *plot;
    const char *save;  /* --save FILE: the --json document, beside the text */
    const char *title; /* --plot's title (default: what was measured, and where) */
} options;

/* One image of the workload, read and registered at setup. */
typedef struct {
    const char *path;
    uint8_t *bytes;
    size_t len;
    char *b64;    /* base64 of bytes */
    char sha[65]; /* sha256 hex of bytes: X-Tasam-Image-Id when the bytes are sent */
    char id[65];  /* the server's image_id (tasamd: the same) */
    int w, h;     /* from the server's /v1/embeddings answer (0 when unknown) */
    int png, jpg; /* format, for cache-miss variants */
} image;

/* The prepared workload, read-only while workers run. */
typedef struct {
    image img[MAX_IMAGES];
    int n_img;
    json_t *points[MAX_LIST]; /* each [[x,y,l],...] */
    json_t *boxes[MAX_LIST];  /* each [x0,y0,x1,y1] (one box per request) */
    json_t *everything;       /* the everything field's value */
    double cum[NKIND];        /* cumulative mix weights, normalised to 1 */
    char *healthz_req;        /* prebuilt GET /healthz */
    size_t healthz_len;
} workload;

/* One result. status > 0: an HTTP status; < 0: -(HC_E* or ERR_INVALID).
 * Floats keep 1e6 records at ~48 MB. */
typedef struct {
    float lat_ms;     /* from the scheduled send (open loop) or the send (closed) */
    float service_ms; /* from the actual send */
    float lag_ms;     /* actual send - scheduled send (open loop) */
    float t[NST];     /* server timings_ms, NaN where absent */
    int16_t status;
    uint8_t kind;
    uint8_t inst;   /* index into the run's instance table, 255 none */
    int8_t cache;   /* 1 hit, 0 miss, -1 not said */
    uint8_t resent; /* 1: a 404 for image_id, then sent again with the image */
} record;

static volatile sig_atomic_t g_stop;

static void on_sigint(int sig)
{
    (void)sig;
    g_stop = 1;
}

/* ---- random numbers ----------------------------------------------------- */

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Uniform in [0, 1). */
static double urand(uint64_t *s) { return (double)(splitmix(s) >> 11) * 0x1.0p-53; }

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

/* What one generated request is. */
typedef struct {
    char *req; /* the whole request (malloc'd) or the shared healthz one */
    size_t len;
    int kind;
    int owned; /* req is ours to free */
    int by_id; /* the image went by image_id (a 404 means: send the bytes) */
} genreq;

static void genreq_free(genreq *g)
{
    if (g->owned)
        free(g->req);
    g->req = NULL;
    g->owned = 0;
}

static int pick_kind(const workload *w, uint64_t *rng)
{
    double u = urand(rng);
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
    return json_pack("[[i,i,i]]", (int)(urand(rng) * w), (int)(urand(rng) * h), 1);
}

/*
 * Build request number `seq` of a step: the kind, image, prompt and task
 * are drawn from the workload with a generator seeded by (seed, seq), so a
 * run is reproducible. With `bytes`, the same request sends the image
 * itself instead of its image_id (what a client does when a replica that
 * never saw the image answers 404). Returns 0 or -1 (out of memory).
 */
static int make_request(const options *o, const workload *w, const hc_target *t, uint64_t seq,
                        int bytes, genreq *g)
{
    uint64_t rng = o->seed ^ (seq * 0xD1B54A32D192ED03ull);
    splitmix(&rng);
    memset(g, 0, sizeof *g);
    g->kind = pick_kind(w, &rng);
    if (g->kind == K_HEALTHZ) {
        g->req = w->healthz_req;
        g->len = w->healthz_len;
        return 0;
    }
    const image *im = &w->img[(size_t)(urand(&rng) * w->n_img) % (size_t)w->n_img];
    int miss = o->miss_ratio > 0 && urand(&rng) < o->miss_ratio;
    uint8_t *var = NULL;
    size_t var_len = 0;
    char *b64 = NULL; /* the image to send, or NULL to send image_id */
    char id[65];      /* for the header */
    memcpy(id, im->id, sizeof id);
    if (miss) {
        var = miss_variant(im, splitmix(&rng), &var_len);
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
        json_t *pts = o->n_points ? json_deep_copy(w->points[splitmix(&rng) % o->n_points]) : NULL;
        json_t *box = o->n_boxes ? json_deep_copy(w->boxes[splitmix(&rng) % o->n_boxes]) : NULL;
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
        if (o->n_tasks && urand(&rng) < tr)
            json_object_set_new(rest, "task", json_string(o->tasks[splitmix(&rng) % o->n_tasks]));
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
static int workload_init(const options *o, const hc_target *t, workload *w, char *err,
                         size_t errlen)
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

static void workload_free(workload *w)
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

/* ---- one step ----------------------------------------------------------- */

typedef struct run run;

typedef struct {
    run *r;
    pthread_t tid;
    record *rec;
    size_t n, cap;
    long warm_errors, reconnects;
    int oom;
} worker;

struct run {
    const options *o;
    const workload *w;
    const hc_target *t;
    int open;          /* open loop */
    double rate;       /* open loop: requests/s */
    int nworkers;      /* connections */
    long warmup;       /* unmeasured requests first */
    long limit;        /* most measured requests */
    int64_t *sched;    /* open loop: send offsets from t0, ns (limit of them) */
    uint64_t seq_base; /* request numbers of this step start here */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int ready, go;
    int64_t t0, end; /* measuring starts at t0; closed loop stops sending at end */
    atomic_long warm_next, next, done, errors;
    atomic_int finished;
    atomic_int measuring;
    pthread_mutex_t inst_mu; /* guards the instance table */
    char inst[MAX_INSTANCES][64];
    int n_inst;
    int64_t t_last; /* latest response end (ns), under mu */
};

/* Index of an X-Tasam-Instance value in the run's table (255 when full). */
static uint8_t instance_index(run *r, const char *v)
{
    uint8_t idx = 255;
    pthread_mutex_lock(&r->inst_mu);
    for (int i = 0; i < r->n_inst; i++)
        if (!strncmp(r->inst[i], v, sizeof r->inst[i] - 1)) {
            idx = (uint8_t)i;
            break;
        }
    if (idx == 255 && r->n_inst < MAX_INSTANCES) {
        snprintf(r->inst[r->n_inst], sizeof r->inst[0], "%s", v);
        idx = (uint8_t)r->n_inst++;
    }
    pthread_mutex_unlock(&r->inst_mu);
    return idx;
}

/* Check a 200 body against what the kind promises and pull timings_ms and
 * the cache verdict. */
static int check_body(int kind, const hc_response *resp, record *rc)
{
    for (int i = 0; i < NST; i++)
        rc->t[i] = NAN;
    rc->cache = -1;
    if (kind == K_HEALTHZ)
        return 0;
    if (!resp->len)
        return -ERR_INVALID;
    json_t *o = json_loadb(resp->body, resp->len, 0, NULL);
    int ok = 0;
    if (json_is_object(o)) {
        if (kind == K_EMBEDDINGS)
            ok = json_is_string(json_object_get(o, "image_id"));
        else
            ok = json_is_array(json_object_get(o, "masks"));
        json_t *tm = json_object_get(o, "timings_ms");
        for (int i = 0; i < NST && json_is_object(tm); i++) {
            json_t *v = json_object_get(tm, stage_names[i]);
            if (json_is_number(v))
                rc->t[i] = (float)json_number_value(v);
        }
        const char *c =
            json_string_value(json_object_get(json_object_get(o, "cache"), "embedding"));
        if (c)
            rc->cache = !strcmp(c, "hit") ? 1 : !strcmp(c, "miss") ? 0 : -1;
    }
    json_decref(o);
    return ok ? 0 : -ERR_INVALID;
}

/* 1 when r is tasamd's error JSON naming `field`. */
static int error_field_is(const hc_response *r, const char *field)
{
    json_t *o = r->len ? json_loadb(r->body, r->len, 0, NULL) : NULL;
    const char *f = json_string_value(json_object_get(json_object_get(o, "error"), "field"));
    int is = f && !strcmp(f, field);
    json_decref(o);
    return is;
}

static void sleep_until(int64_t t_ns)
{
    struct timespec ts = {.tv_sec = t_ns / 1000000000, .tv_nsec = t_ns % 1000000000};
    while (!g_stop && clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
}

static void *worker_main(void *arg)
{
    worker *wk = arg;
    run *r = wk->r;
    const options *o = r->o;
    hc_conn c;
    hc_response resp;
    record scratch;
    genreq g;
    hc_conn_init(&c);
    hc_response_init(&resp);

    long wn;
    while (!g_stop && (wn = atomic_fetch_add(&r->warm_next, 1)) < r->warmup) {
        /* Warm-up requests are numbered apart from measured ones. */
        if (make_request(o, r->w, r->t, (1ull << 62) + (uint64_t)wn, 0, &g) != 0) {
            wk->warm_errors++;
            continue;
        }
        int e = hc_exchange(&c, r->t, g.req, g.len, &resp, o->timeout_s, &wk->reconnects);
        if (e || resp.status != 200 || check_body(g.kind, &resp, &scratch))
            wk->warm_errors++;
        genreq_free(&g);
    }
    pthread_mutex_lock(&r->mu);
    r->ready++;
    while (!r->go)
        pthread_cond_wait(&r->cv, &r->mu);
    pthread_mutex_unlock(&r->mu);
    int64_t last_end = 0;
    for (;;) {
        if (g_stop)
            break;
        long k = atomic_fetch_add(&r->next, 1);
        if (k >= r->limit || (!r->open && hc_now_ns() >= r->end))
            break;
        if (wk->n == wk->cap) {
            size_t ncap = wk->cap ? wk->cap * 2 : 1024;
            record *nr = realloc(wk->rec, ncap * sizeof *nr);
            if (!nr) {
                wk->oom = 1;
                break;
            }
            wk->rec = nr;
            wk->cap = ncap;
        }
        /* Built before its send time, so building never counts as latency
         * (unless it makes the send late, which then counts). */
        record *rc = &wk->rec[wk->n];
        memset(rc, 0, sizeof *rc);
        rc->inst = 255;
        if (make_request(o, r->w, r->t, r->seq_base + (uint64_t)k, 0, &g) != 0) {
            wk->oom = 1;
            break;
        }
        rc->kind = (uint8_t)g.kind;
        int64_t due = 0;
        if (r->open) {
            due = r->t0 + r->sched[k];
            sleep_until(due);
            if (g_stop) {
                genreq_free(&g);
                break;
            }
        }
        int64_t a = hc_now_ns();
        int e = hc_exchange(&c, r->t, g.req, g.len, &resp, o->timeout_s, &wk->reconnects);
        if (!e && g.by_id && resp.status == 404 && !o->no_resend &&
            error_field_is(&resp, "image_id")) {
            /* The replica does not hold the image (a new or replaced one
             * behind the proxy): send it, as the API asks; both exchanges
             * count in this request's latency. */
            genreq_free(&g);
            if (make_request(o, r->w, r->t, r->seq_base + (uint64_t)k, 1, &g) != 0) {
                wk->oom = 1;
                break;
            }
            rc->resent = 1;
            e = hc_exchange(&c, r->t, g.req, g.len, &resp, o->timeout_s, &wk->reconnects);
        }
        int64_t b = hc_now_ns();
        genreq_free(&g);
        wk->n++;
        rc->lat_ms = (float)((b - (r->open ? due : a)) / 1e6);
        rc->service_ms = (float)((b - a) / 1e6);
        rc->lag_ms = r->open ? (float)((a - due) / 1e6) : 0;
        rc->status = (int16_t)(e ? e : resp.status);
        for (int i = 0; i < NST; i++)
            rc->t[i] = NAN;
        rc->cache = -1;
        if (!e) {
            const char *inst = hc_response_header(&resp, "X-Tasam-Instance");
            if (inst)
                rc->inst = instance_index(r, inst);
            if (resp.status == 200 && check_body(rc->kind, &resp, rc) != 0)
                rc->status = -ERR_INVALID;
        }
        last_end = b;
        atomic_fetch_add(&r->done, 1);
        if (rc->status != 200) {
            atomic_fetch_add(&r->errors, 1);
            /* A refused connect fails in microseconds: back off a little so
             * a dead server does not turn a closed loop into a busy loop. */
            if (e == HC_ECONNECT && !r->open)
                nanosleep(&(struct timespec){0, 10000000}, NULL);
        }
    }
    pthread_mutex_lock(&r->mu);
    if (last_end > r->t_last)
        r->t_last = last_end;
    pthread_mutex_unlock(&r->mu);
    hc_conn_free(&c);
    hc_response_free(&resp);
    atomic_fetch_add(&r->finished, 1);
    return NULL;
}

/* ---- statistics --------------------------------------------------------- */

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of a sorted array. */
static double pct(const float *v, size_t n, double p)
{
    if (!n)
        return NAN;
    double rank = ceil(p / 100.0 * (double)n);
    size_t i = rank < 1 ? 0 : (size_t)rank - 1;
    return v[i < n ? i : n - 1];
}

#define NPCT 4
static const double pct_p[NPCT] = {50, 90, 99, 99.9};
static const char *const pct_json[NPCT] = {"p50_ms", "p90_ms", "p99_ms", "p99_9_ms"};
static const char *const pct_text[NPCT] = {"p50", "p90", "p99", "p99.9"};

/* Every figure of one step. */
typedef struct {
    double x;        /* the step's rate or concurrency */
    double rate;     /* open loop target, 0 closed */
    int connections; /* workers */
    double secs;     /* first scheduled send to the last response */
    long n, ok, errors;
    double achieved_rate, throughput;
    double lat_min, lat[NPCT], lat_max, lat_mean;
    double svc[NPCT]; /* from the actual send */
    double lag_p99, lag_max;
    long late;               /* open-loop sends more than 1 ms after their slot */
    long status[600];        /* by HTTP status */
    long errs[NERR];         /* by transport failure */
    double stage_p50[NST];   /* server timings_ms */
    double ovh_p50, ovh_p99; /* client latency - server model stages */
    double outside_p50, outside_p99;
    double unstaged_p50, unstaged_p99;
    long kind_n[NKIND], kind_ok[NKIND];
    double kind_p50[NKIND], kind_p99[NKIND];
    long cache_hit, cache_miss;
    long resent; /* 404 for image_id, then sent with the image */
    int n_inst;
    char inst[MAX_INSTANCES][64];
    long inst_n[MAX_INSTANCES];
    long warm_errors, reconnects;
    int oom;
    double spectrum[10]; /* latency at the spectrum's percentiles (single-run plot) */
} stats;

static const double spectrum_p[10] = {0, 50, 75, 90, 95, 99, 99.5, 99.9, 99.95, 99.99};

/* What collect() takes from a record: a server stage (0..NST-1) or one of these. */
enum { W_LAT = -1, W_SERVICE = -2, W_LAG = -3, W_OVERHEAD = -4, W_OUTSIDE = -5, W_UNSTAGED = -6 };

/* One figure of every successful record (of `kind`, or all for -1),
 * sorted, NaN skipped; *n gets the count. NULL when out of memory. */
static float *collect(worker *w, int nw, size_t total, size_t *n, int which, int kind)
{
    float *v = malloc((total ? total : 1) * sizeof *v);
    size_t k = 0;
    if (!v)
        return NULL;
    for (int i = 0; i < nw; i++)
        for (size_t j = 0; j < w[i].n; j++) {
            const record *r = &w[i].rec[j];
            if (r->status != 200 || (kind >= 0 && r->kind != kind))
                continue;
            float x = NAN;
            int staged = !isnan(r->t[ST_QUEUE]) && !isnan(r->t[ST_DECODE_MASKS]);
            float model = staged ? r->t[ST_QUEUE] + r->t[ST_DECODE_MASKS] +
                                       (isnan(r->t[ST_ENCODE]) ? 0 : r->t[ST_ENCODE]) +
                                       (isnan(r->t[ST_POSTPROCESS]) ? 0 : r->t[ST_POSTPROCESS])
                                 : NAN;
            if (which == W_LAT)
                x = r->lat_ms;
            else if (which == W_SERVICE)
                x = r->service_ms;
            else if (which == W_LAG)
                x = r->lag_ms;
            else if (which == W_OVERHEAD)
                x = r->service_ms - model; /* NaN without the stages */
            else if (which == W_OUTSIDE)
                x = r->service_ms - r->t[ST_TOTAL];
            else if (which == W_UNSTAGED)
                x = r->t[ST_TOTAL] - model - (isnan(r->t[ST_DECODE]) ? 0 : r->t[ST_DECODE]);
            else if (which >= 0 && which < NST)
                x = r->t[which];
            if (!isnan(x))
                v[k++] = x;
        }
    qsort(v, k, sizeof *v, cmp_float);
    *n = k;
    return v;
}

static int compute_stats(run *r, worker *w, int nw, stats *s)
{
    memset(s, 0, sizeof *s);
    size_t total = 0;
    for (int i = 0; i < nw; i++) {
        total += w[i].n;
        s->warm_errors += w[i].warm_errors;
        s->reconnects += w[i].reconnects;
        s->oom |= w[i].oom;
    }
    s->n = (long)total;
    s->connections = r->nworkers;
    s->rate = r->open ? r->rate : 0;
    s->secs = r->t_last > r->t0 ? (r->t_last - r->t0) / 1e9 : 0;
    /* Open loop: the rate is over the scheduled window (the last answer may
     * come early in a Poisson run's final gap), or longer when answers lag. */
    if (r->open && r->limit > 0 && !g_stop) {
        double window =
            r->o->duration > 0 ? r->o->duration : r->sched[r->limit - 1] / 1e9 + 1 / r->rate;
        s->secs = fmax(s->secs, window);
    }
    for (int i = 0; i < nw; i++)
        for (size_t j = 0; j < w[i].n; j++) {
            const record *rc = &w[i].rec[j];
            if (rc->status > 0 && rc->status < 600)
                s->status[rc->status]++;
            else if (rc->status < 0 && -rc->status < NERR)
                s->errs[-rc->status]++;
            s->kind_n[rc->kind]++;
            if (rc->status == 200) {
                s->ok++;
                s->kind_ok[rc->kind]++;
                s->cache_hit += rc->cache == 1;
                s->cache_miss += rc->cache == 0;
            }
            if (rc->inst != 255)
                s->inst_n[rc->inst]++;
            s->resent += rc->resent;
            if (r->open && rc->lag_ms * 1e6 > LATE_NS)
                s->late++;
        }
    s->errors = s->n - s->ok;
    s->achieved_rate = s->secs > 0 ? s->n / s->secs : 0;
    s->throughput = s->secs > 0 ? s->ok / s->secs : 0;
    s->n_inst = r->n_inst;
    memcpy(s->inst, r->inst, sizeof s->inst);

    size_t n;
    float *v = collect(w, nw, total, &n, W_LAT, -1);
    if (!v)
        return -1;
    s->lat_min = n ? v[0] : NAN;
    s->lat_max = n ? v[n - 1] : NAN;
    double sum = 0;
    for (size_t i = 0; i < n; i++)
        sum += v[i];
    s->lat_mean = n ? sum / n : NAN;
    for (int i = 0; i < NPCT; i++)
        s->lat[i] = pct(v, n, pct_p[i]);
    for (int i = 0; i < 10; i++)
        s->spectrum[i] = i == 0 ? (n ? v[0] : NAN) : pct(v, n, spectrum_p[i]);
    free(v);
    struct {
        int which;
        double *p50, *p99;
    } more[] = {{W_OVERHEAD, &s->ovh_p50, &s->ovh_p99},
                {W_OUTSIDE, &s->outside_p50, &s->outside_p99},
                {W_UNSTAGED, &s->unstaged_p50, &s->unstaged_p99},
                {W_LAG, NULL, &s->lag_p99}};
    for (size_t m = 0; m < sizeof more / sizeof *more; m++) {
        if (!(v = collect(w, nw, total, &n, more[m].which, -1)))
            return -1;
        if (more[m].p50)
            *more[m].p50 = pct(v, n, 50);
        *more[m].p99 = pct(v, n, 99);
        if (more[m].which == W_LAG)
            s->lag_max = n ? v[n - 1] : NAN;
        free(v);
    }
    if (!(v = collect(w, nw, total, &n, W_SERVICE, -1)))
        return -1;
    for (int i = 0; i < NPCT; i++)
        s->svc[i] = pct(v, n, pct_p[i]);
    free(v);
    for (int k = 0; k < NST; k++) {
        if (!(v = collect(w, nw, total, &n, k, -1)))
            return -1;
        s->stage_p50[k] = pct(v, n, 50);
        free(v);
    }
    for (int k = 0; k < NKIND; k++) {
        if (!(v = collect(w, nw, total, &n, W_LAT, k)))
            return -1;
        s->kind_p50[k] = pct(v, n, 50);
        s->kind_p99[k] = pct(v, n, 99);
        free(v);
    }
    return 0;
}

/* ---- running a step ------------------------------------------------------ */

/* Arrival offsets from t0 (ns) for an open-loop step: Poisson (exponential
 * gaps) or evenly spaced, `n` of them or as many as fit in `duration`. */
static int64_t *schedule(const options *o, double rate, uint64_t salt, long *n)
{
    long cap = o->requests ? o->requests : (long)fmin(MAX_REQUESTS, ceil(o->duration * rate) + 1);
    int64_t *s = malloc((size_t)(cap ? cap : 1) * sizeof *s);
    if (!s)
        return NULL;
    uint64_t rng = o->seed ^ (salt * 0x9E3779B97F4A7C15ull) ^ 0xA5A5A5A5ull;
    double t = 0, end = o->requests ? INFINITY : o->duration;
    long k = 0;
    while (k < cap) {
        if (t >= end)
            break;
        s[k++] = (int64_t)(t * 1e9);
        /* Constant: k / rate exactly (no drift from summing gaps). */
        t = o->arrivals == ARR_CONSTANT ? k / rate : t - log(1.0 - urand(&rng)) / rate;
    }
    *n = k;
    return s;
}

/* Run one step (a whole run without --sweep). Returns 0 or -1 (could not
 * start; message printed). */
static int run_step(const options *o, const workload *w, const hc_target *t, int step, double rate,
                    int nworkers, long warmup, stats *st)
{
    run *r = calloc(1, sizeof *r);
    worker *wk = calloc((size_t)nworkers, sizeof *wk);
    if (!r || !wk) {
        free(r), free(wk);
        fprintf(stderr, "tasam-bench: out of memory\n");
        return -1;
    }
    r->o = o;
    r->w = w;
    r->t = t;
    r->open = rate > 0;
    r->rate = rate;
    r->nworkers = nworkers;
    r->warmup = warmup;
    r->seq_base = (uint64_t)step << 40;
    if (r->open) {
        r->sched = schedule(o, rate, (uint64_t)step, &r->limit);
        if (!r->sched) {
            free(r), free(wk);
            fprintf(stderr, "tasam-bench: out of memory\n");
            return -1;
        }
    } else {
        r->limit = o->requests ? o->requests : MAX_REQUESTS;
    }
    pthread_mutex_init(&r->mu, NULL);
    pthread_mutex_init(&r->inst_mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    int started = 0;
    for (; started < nworkers; started++) {
        wk[started].r = r;
        if (pthread_create(&wk[started].tid, NULL, worker_main, &wk[started]) != 0)
            break;
    }
    if (started < nworkers) {
        fprintf(stderr, "tasam-bench: cannot start %d threads (started %d)\n", nworkers, started);
        g_stop = 1; /* the ones running finish at once; nothing is measured */
    }
    /* Open the gate once every thread is warm, and print progress once a
     * second on stderr while they run. */
    int64_t start = hc_now_ns(), last_t = start;
    long last_done = 0;
    while (atomic_load(&r->finished) < started) {
        nanosleep(&(struct timespec){0, 5000000}, NULL);
        int64_t now = hc_now_ns();
        if (!atomic_load(&r->measuring)) {
            pthread_mutex_lock(&r->mu);
            if (r->ready == started) {
                /* A little headroom so the first slots are not already late. */
                r->t0 = hc_now_ns() + (r->open ? 2000000 : 0);
                r->end = o->duration > 0 ? r->t0 + (int64_t)(o->duration * 1e9) : INT64_MAX;
                r->go = 1;
                atomic_store(&r->measuring, 1);
                pthread_cond_broadcast(&r->cv);
            }
            pthread_mutex_unlock(&r->mu);
        }
        if (!o->quiet && now - last_t >= 1000000000) {
            long d = atomic_load(&r->done);
            if (!atomic_load(&r->measuring))
                fprintf(stderr, "[%5.1fs] warm-up %ld/%ld\n", (now - start) / 1e9,
                        atomic_load(&r->warm_next) < warmup ? atomic_load(&r->warm_next) : warmup,
                        warmup);
            else
                fprintf(stderr, "[%5.1fs] %s%ld requests, %.1f req/s, %ld errors\n",
                        (now - start) / 1e9, o->sweep ? "step: " : "", d,
                        (d - last_done) / ((now - last_t) / 1e9), atomic_load(&r->errors));
            last_done = d;
            last_t = now;
        }
    }
    for (int i = 0; i < started; i++)
        pthread_join(wk[i].tid, NULL);
    int rc = started == nworkers && compute_stats(r, wk, started, st) == 0 ? 0 : -1;
    if (rc && started == nworkers)
        fprintf(stderr, "tasam-bench: out of memory for the report\n");
    for (int i = 0; i < nworkers; i++)
        free(wk[i].rec);
    pthread_cond_destroy(&r->cv);
    pthread_mutex_destroy(&r->mu);
    pthread_mutex_destroy(&r->inst_mu);
    free(r->sched);
    free(r);
    free(wk);
    return rc;
}

/* ---- output ------------------------------------------------------------- */

static json_t *jnum(double v)
{
    return isfinite(v) ? json_real(round(v * 1000) / 1000) : json_null();
}

static json_t *stats_json(const stats *s, int server_detail)
{
    json_t *j = json_object(), *sc = json_object(), *te = json_object(), *k = json_object();
    if (s->rate > 0)
        json_object_set_new(j, "rate", jnum(s->rate));
    json_object_set_new(j, "connections", json_integer(s->connections));
    json_object_set_new(j, "duration_s", jnum(s->secs));
    json_object_set_new(j, "requests", json_integer(s->n));
    json_object_set_new(j, "ok", json_integer(s->ok));
    json_object_set_new(j, "errors", json_integer(s->errors));
    json_object_set_new(j, "achieved_rate", jnum(s->achieved_rate));
    json_object_set_new(j, "throughput", jnum(s->throughput));
    json_object_set_new(j, "min_ms", jnum(s->lat_min));
    for (int i = 0; i < NPCT; i++)
        json_object_set_new(j, pct_json[i], jnum(s->lat[i]));
    json_object_set_new(j, "max_ms", jnum(s->lat_max));
    json_object_set_new(j, "mean_ms", jnum(s->lat_mean));
    for (int i = 0; i < NPCT; i++) {
        char key[32];
        snprintf(key, sizeof key, "service_%s", pct_json[i]);
        json_object_set_new(j, key, jnum(s->svc[i]));
    }
    if (s->rate > 0) {
        json_object_set_new(j, "late_sends", json_integer(s->late));
        json_object_set_new(j, "send_lag_p99_ms", jnum(s->lag_p99));
        json_object_set_new(j, "send_lag_max_ms", jnum(s->lag_max));
    }
    for (int c = 100; c < 600; c++)
        if (s->status[c]) {
            char key[8];
            snprintf(key, sizeof key, "%d", c);
            json_object_set_new(sc, key, json_integer(s->status[c]));
        }
    json_object_set_new(j, "status", sc);
    for (int e = 1; e < NERR; e++)
        if (e != -HC_EINVAL)
            json_object_set_new(te, err_name(e), json_integer(s->errs[e]));
    json_object_set_new(j, "transport_errors", te);
    json_object_set_new(j, "reconnects", json_integer(s->reconnects));
    for (int i = 0; i < NKIND; i++)
        if (s->kind_n[i])
            json_object_set_new(k, kind_names[i],
                                json_pack("{s:I,s:I,s:o,s:o}", "requests", (json_int_t)s->kind_n[i],
                                          "ok", (json_int_t)s->kind_ok[i], "p50_ms",
                                          jnum(s->kind_p50[i]), "p99_ms", jnum(s->kind_p99[i])));
    json_object_set_new(j, "kinds", k);
    json_object_set_new(j, "cache_hits", json_integer(s->cache_hit));
    json_object_set_new(j, "cache_misses", json_integer(s->cache_miss));
    json_object_set_new(j, "resent_with_image", json_integer(s->resent));
    json_t *in = json_object();
    for (int i = 0; i < s->n_inst; i++)
        json_object_set_new(in, s->inst[i], json_integer(s->inst_n[i]));
    json_object_set_new(j, "instances", in);
    if (server_detail) {
        json_t *sv = json_object();
        for (int i = 0; i < NST; i++)
            json_object_set_new(sv, stage_names[i], jnum(s->stage_p50[i]));
        json_object_set_new(j, "server_p50_ms", sv);
        json_object_set_new(
            j, "overhead_ms",
            json_pack("{s:o,s:o}", "p50", jnum(s->ovh_p50), "p99", jnum(s->ovh_p99)));
        json_object_set_new(
            j, "outside_server_ms",
            json_pack("{s:o,s:o}", "p50", jnum(s->outside_p50), "p99", jnum(s->outside_p99)));
        json_object_set_new(
            j, "server_unstaged_ms",
            json_pack("{s:o,s:o}", "p50", jnum(s->unstaged_p50), "p99", jnum(s->unstaged_p99)));
        json_object_set_new(j, "warmup_errors", json_integer(s->warm_errors));
    }
    json_object_set_new(j, "truncated_oom", json_boolean(s->oom));
    return j;
}

static void print_errors(const stats *s)
{
    int any = 0;
    for (int c = 100; c < 600; c++)
        if (s->status[c] && c != 200)
            printf("%s%d: %ld", any++ ? ", " : "", c, s->status[c]);
    for (int e = 1; e < NERR; e++)
        if (s->errs[e])
            printf("%s%s: %ld", any++ ? ", " : "", err_name(e), s->errs[e]);
    if (!any)
        printf("-");
}

static void print_run(const options *o, const stats *s)
{
    if (s->rate > 0)
        printf("open loop at %s: %.1f req/s scheduled (%s), up to %d in flight\n", o->url, s->rate,
               o->arrivals == ARR_POISSON ? "Poisson" : "constant", s->connections);
    else
        printf("closed loop at %s: %d connection%s\n", o->url, s->connections,
               s->connections == 1 ? "" : "s");
    printf("  requests     %ld: %ld ok, %ld errors (warm-up %ld, %ld failed)\n", s->n, s->ok,
           s->errors, o->warmup, s->warm_errors);
    printf("  errors       ");
    print_errors(s);
    printf("; reconnects %ld\n", s->reconnects);
    printf("  rate         %.2f req/s achieved, %.2f ok/s (%.2f s)\n", s->achieved_rate,
           s->throughput, s->secs);
    printf("  latency ms   min %.3f  p50 %.3f  p90 %.3f  p99 %.3f  p99.9 %.3f  max %.3f  mean "
           "%.3f%s\n",
           s->lat_min, s->lat[0], s->lat[1], s->lat[2], s->lat[3], s->lat_max, s->lat_mean,
           s->rate > 0 ? "  (from the scheduled send)" : "");
    if (s->rate > 0) {
        printf("  service ms   p50 %.3f  p99 %.3f  (from the actual send)\n", s->svc[0], s->svc[2]);
        printf("  send lag     %ld sends more than 1 ms late, p99 %.3f ms, max %.3f ms%s\n",
               s->late, s->lag_p99, s->lag_max,
               s->late > s->n / 100 ? "  (all connections were busy: raise --connections if the "
                                      "server is not the limit)"
                                    : "");
    }
    int nk = 0;
    for (int k = 0; k < NKIND; k++)
        nk += s->kind_n[k] > 0;
    if (nk > 1)
        for (int k = 0; k < NKIND; k++)
            if (s->kind_n[k])
                printf("  %-12s %ld requests, %ld ok, p50 %.3f ms, p99 %.3f ms\n", kind_names[k],
                       s->kind_n[k], s->kind_ok[k], s->kind_p50[k], s->kind_p99[k]);
    if (s->cache_hit + s->cache_miss)
        printf("  cache        %ld hits, %ld misses (embedding)\n", s->cache_hit, s->cache_miss);
    if (s->resent)
        printf("  resent       %ld requests sent again with the image after a 404 for image_id\n",
               s->resent);
    if (s->n_inst) {
        printf("  instances   ");
        for (int i = 0; i < s->n_inst; i++)
            printf(" %s: %ld", s->inst[i], s->inst_n[i]);
        printf("\n");
    }
    if (!isnan(s->stage_p50[ST_TOTAL])) {
        printf("  server p50   ");
        for (int k = 0; k < NST; k++)
            if (!isnan(s->stage_p50[k]))
                printf(" %s %.3f", stage_names[k], s->stage_p50[k]);
        printf("\n");
    }
    if (!isnan(s->ovh_p50))
        printf("  overhead ms  p50 %.3f  p99 %.3f  (service time - queue - encode - "
               "decode_masks - postprocess)\n",
               s->ovh_p50, s->ovh_p99);
    if (!isnan(s->unstaged_p50))
        printf("  unstaged ms  p50 %.3f  p99 %.3f  (server total - its stages: parse, cache "
               "lookup, mask encoding, JSON)\n",
               s->unstaged_p50, s->unstaged_p99);
    if (!isnan(s->outside_p50))
        printf("  outside ms   p50 %.3f  p99 %.3f  (service time - server total: sockets, "
               "response write)\n",
               s->outside_p50, s->outside_p99);
    if (s->oom)
        printf("  (out of memory for records: the run stopped early)\n");
}

static void print_row_head(const options *o)
{
    printf("%10s %9s %9s %9s %9s %9s %9s %9s %7s  %s\n", o->sweep == SWEEP_RATE ? "rate" : "conc",
           "achieved", "ok/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms", "late",
           "errors");
}

static void print_row(const stats *s)
{
    printf("%10g %9.2f %9.2f %9.2f %9.2f %9.2f %9.2f %9.2f %7ld  ", s->x, s->achieved_rate,
           s->throughput, s->lat[0], s->lat[1], s->lat[2], s->lat[3], s->lat_max, s->late);
    print_errors(s);
    printf("\n");
}

/* ---- plot --------------------------------------------------------------- */

static void xml_text(FILE *f, const char *s)
{
    for (; *s; s++) {
        if (*s == '<')
            fputs("&lt;", f);
        else if (*s == '>')
            fputs("&gt;", f);
        else if (*s == '&')
            fputs("&amp;", f);
        else if (*s == '"')
            fputs("&quot;", f);
        else if ((unsigned char)*s >= 0x20)
            fputc(*s, f);
    }
}

/* A "nice" decade step (1, 2, 5 x 10^k) at or below v. */
static double nice_floor(double v)
{
    double d = pow(10, floor(log10(v)));
    return v >= 5 * d ? 5 * d : v >= 2 * d ? 2 * d : d;
}

static double nice_ceil(double v)
{
    double d = pow(10, floor(log10(v)));
    return v <= d ? d : v <= 2 * d ? 2 * d : v <= 5 * d ? 5 * d : 10 * d;
}

/*
 * A line chart as SVG: n points per series at positions px (0..1 along x,
 * labelled xl), latency on a log scale. One polyline per series with a
 * circle per point; a NaN value breaks the line. Returns 0 or -1.
 */
static int svg_chart(const char *path, const char *title, const char *xlabel, int n,
                     const double *px, char xl[][32], int ns, const char *const *names,
                     double ys[][MAX_STEPS])
{
    static const char *const colors[] = {"#1f77b4", "#2ca02c", "#ff7f0e", "#d62728", "#7f7f7f"};
    const double W = 760, H = 460, L = 80, R = 130, T = 50, B = 60;
    double lo = INFINITY, hi = 0;
    for (int s = 0; s < ns; s++)
        for (int i = 0; i < n; i++)
            if (isfinite(ys[s][i]) && ys[s][i] > 0) {
                lo = fmin(lo, ys[s][i]);
                hi = fmax(hi, ys[s][i]);
            }
    if (!(hi > 0)) {
        lo = 1;
        hi = 10;
    }
    lo = nice_floor(lo);
    hi = nice_ceil(hi);
    if (hi <= lo)
        hi = lo * 10;
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    double pw = W - L - R, ph = H - T - B;
#define SX(u) (L + (u)*pw)
#define SY(v) (T + ph - (log10(v) - log10(lo)) / (log10(hi) - log10(lo)) * ph)
    fprintf(f,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" "
            "viewBox=\"0 0 %.0f %.0f\" font-family=\"sans-serif\" font-size=\"12\">\n"
            "<title>",
            W, H, W, H);
    xml_text(f, title);
    fprintf(f, "</title>\n<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n");
    fprintf(f, "<text x=\"%.0f\" y=\"24\" font-size=\"14\" text-anchor=\"middle\">", W / 2);
    xml_text(f, title);
    fprintf(f, "</text>\n");
    /* y grid and labels at 1, 2, 5 x 10^k */
    for (double d = pow(10, floor(log10(lo))); d <= hi * 1.0001; d *= 10)
        for (int m = 0; m < 3; m++) {
            double v = d * (m == 0 ? 1 : m == 1 ? 2 : 5);
            if (v < lo * 0.9999 || v > hi * 1.0001)
                continue;
            fprintf(f,
                    "<line x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>\n"
                    "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%g</text>\n",
                    L, L + pw, SY(v), SY(v), L - 6, SY(v) + 4, v);
        }
    int every = n > 12 ? (n + 11) / 12 : 1;
    for (int i = 0; i < n; i++) {
        fprintf(f, "<line x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"#eee\"/>\n",
                SX(px[i]), SX(px[i]), T, T + ph);
        if (i % every == 0) {
            fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">", SX(px[i]),
                    T + ph + 18);
            xml_text(f, xl[i]);
            fprintf(f, "</text>\n");
        }
    }
    fprintf(f,
            "<rect x=\"%.0f\" y=\"%.0f\" width=\"%.0f\" height=\"%.0f\" fill=\"none\" "
            "stroke=\"#333\"/>\n",
            L, T, pw, ph);
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">", L + pw / 2, H - 16);
    xml_text(f, xlabel);
    fprintf(f,
            "</text>\n<text transform=\"translate(20 %.1f) rotate(-90)\" "
            "text-anchor=\"middle\">latency, ms (log scale)</text>\n",
            T + ph / 2);
    for (int s = 0; s < ns; s++) {
        const char *col = colors[s % 5];
        fprintf(f, "<g class=\"series\" data-name=\"%s\">\n", names[s]);
        int open = 0;
        for (int i = 0; i < n; i++) {
            double v = ys[s][i];
            if (!(isfinite(v) && v > 0)) {
                if (open)
                    fprintf(f, "\"/>\n");
                open = 0;
                continue;
            }
            if (!open)
                fprintf(f,
                        "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\" "
                        "points=\"",
                        col);
            fprintf(f, "%s%.1f,%.1f", open ? " " : "", SX(px[i]), SY(v));
            open = 1;
        }
        if (open)
            fprintf(f, "\"/>\n");
        for (int i = 0; i < n; i++)
            if (isfinite(ys[s][i]) && ys[s][i] > 0) {
                fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"><title>%s ",
                        SX(px[i]), SY(ys[s][i]), col, names[s]);
                xml_text(f, xl[i]);
                fprintf(f, ": %.3f ms</title></circle>\n", ys[s][i]);
            }
        fprintf(f,
                "</g>\n<line x1=\"%.0f\" x2=\"%.0f\" y1=\"%.0f\" y2=\"%.0f\" stroke=\"%s\" "
                "stroke-width=\"2\"/>\n<text x=\"%.0f\" y=\"%.0f\">%s</text>\n",
                L + pw + 14, L + pw + 34, T + 14 + s * 20.0, T + 14 + s * 20.0, col, L + pw + 40,
                T + 18 + s * 20.0, names[s]);
    }
#undef SX
#undef SY
    fprintf(f, "</svg>\n");
    return fclose(f) == 0 ? 0 : -1;
}

/* The sweep plot (percentiles vs the swept value) or, for one run, the
 * latency spectrum (latency vs percentile, on a "nines" axis). */
static int plot(const options *o, const stats *st, int n)
{
    static double ys[NPCT][MAX_STEPS];
    static char xl[MAX_STEPS][32];
    double px[MAX_STEPS];
    char title[1400];
    if (o->sweep) {
        double lo = st[0].x, hi = st[0].x;
        for (int i = 0; i < n; i++) {
            lo = fmin(lo, st[i].x);
            hi = fmax(hi, st[i].x);
        }
        int logx = lo > 0 && hi / lo >= 20;
        for (int i = 0; i < n; i++) {
            px[i] = hi == lo ? 0.5
                    : logx   ? (log(st[i].x) - log(lo)) / (log(hi) - log(lo))
                             : (st[i].x - lo) / (hi - lo);
            snprintf(xl[i], sizeof xl[i], "%g", st[i].x);
            for (int p = 0; p < NPCT; p++)
                ys[p][i] = st[i].lat[p];
        }
        if (o->title)
            snprintf(title, sizeof title, "%s", o->title);
        else
            snprintf(title, sizeof title, "tasam-bench %s sweep, %s",
                     o->sweep == SWEEP_RATE ? "rate" : "concurrency", o->url);
        return svg_chart(
            o->plot, title,
            o->sweep == SWEEP_RATE
                ? (logx ? "scheduled rate, requests/s (log scale)" : "scheduled rate, requests/s")
                : (logx ? "connections (log scale)" : "connections"),
            n, px, xl, NPCT, pct_text, ys);
    }
    static const char *const name[] = {"latency"};
    for (int i = 0; i < 10; i++) {
        px[i] = (i == 0 ? 0 : log10(100.0 / (100.0 - spectrum_p[i]))) / 4.0;
        snprintf(xl[i], sizeof xl[i], "%g%%", spectrum_p[i]);
        ys[0][i] = st[0].spectrum[i];
    }
    px[0] = 0;
    if (o->title)
        snprintf(title, sizeof title, "%s", o->title);
    else
        snprintf(title, sizeof title, "tasam-bench latency by percentile, %s", o->url);
    return svg_chart(o->plot, title, "percentile", 10, px, xl, 1, name, ys);
}

/* ---- options ------------------------------------------------------------ */

static void usage(FILE *f)
{
    fprintf(
        f,
        "usage: tasam-bench [options]\n"
        "HTTP load tester for tasamd and fleets of it (keep-alive, one connection per thread).\n"
        "\n"
        "target:\n"
        "  --url http://HOST:PORT     server or proxy (default http://127.0.0.1:8080)\n"
        "load shape (closed loop unless --rate):\n"
        "  --concurrency N            closed loop: N connections, each sends when the last\n"
        "                             answer came (default 1)\n"
        "  --rate R                   open loop: R requests/s scheduled in advance; latency runs\n"
        "                             from the scheduled send (no coordinated omission)\n"
        "  --arrivals poisson|constant  open-loop arrival process (default poisson)\n"
        "  --connections N            open loop: most requests in flight (default 64)\n"
        "  --requests N | --duration S  measured requests or seconds per step (default 100 req)\n"
        "  --warmup N                 unmeasured requests first (default 0)\n"
        "  --timeout S                per request: connect, send and answer (default 60)\n"
        "  --sweep rate=A,B,...|concurrency=A,B,...  one step per value (at most %d)\n"
        "  --stop-p99 MS              sweep: stop after a step whose p99 passes MS (default off)\n"
        "  --stop-errors F            sweep: stop after a step whose failed fraction passes F\n"
        "                             (default 0.01)\n"
        "workload:\n"
        "  --mix K=W,...              request kinds and weights: segment, everything, embeddings,\n"
        "                             healthz (default segment=1)\n"
        "  --route K                  the same as --mix K=1\n"
        "  --image FILE               JPEG/PNG (repeat for a set, up to %d); each is POSTed once\n"
        "                             to /v1/embeddings and later requests send its image_id\n"
        "  --variants N               make N distinct images of each file (its pixels under N\n"
        "                             names), all registered: a larger set of cached images\n"
        "  --miss-ratio F             fraction of image requests that send a never-seen variant\n"
        "                             (same pixels, unique comment): a cache miss (default 0)\n"
        "  --no-cache                 hits send the image bytes instead of image_id\n"
        "  --points \"x,y,l;...\"       one prompt's points (repeat for a set; l 1 foreground)\n"
        "  --boxes \"x0,y0,x1,y1\"      one box prompt (repeat for a set); without points or\n"
        "                             boxes, each segment request has a random point\n"
        "  --task TEXT                a task (repeat for a set); --task-ratio F of segment and\n"
        "                             everything requests carry one (default 1)\n"
        "  --everything JSON          the everything field: true (default) or an object of\n"
        "                             the generator's parameters\n"
        "  --multimask[=true|false]   send multimask (default: the server's default)\n"
        "  --output rle|png|polygon   mask encoding (default: the server's, rle)\n"
        "  --no-id-header             do not send X-Tasam-Image-Id\n"
        "  --no-resend                a 404 for an image_id is a failure (by default the request\n"
        "                             is sent again with the image, as a client behind a proxy\n"
        "                             must when a replica is new or replaced; both count)\n"
        "  --seed N                   the workload's and arrivals' random seed (default 1)\n"
        "output:\n"
        "  --json                     every figure as JSON on stdout\n"
        "  --save FILE                the same JSON into FILE, with the text report on stdout\n"
        "  --title TEXT               the plot's title\n"
        "  --plot FILE.svg            latency percentiles vs the swept value, or (one run) the\n"
        "                             latency by percentile\n"
        "  --quiet                    no progress on stderr\n"
        "Latency percentiles are over successful requests; failures are counted by status and\n"
        "by transport failure (a 200 whose body is not the route's JSON is invalid_body).\n"
        "X-Tasam-Instance answers are counted per replica, cache hits from the answers.\n"
        "Exit: 0 all succeeded, 1 some failed, 2 usage, 3 setup failed.\n",
        MAX_STEPS, MAX_LIST);
}

static int parse_long(const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (end == s || *end || errno || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

static int parse_num(const char *s, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || *end || errno || !(v >= lo && v <= hi))
        return -1;
    *out = v;
    return 0;
}

static int kind_index(const char *s, size_t n)
{
    for (int k = 0; k < NKIND; k++)
        if (strlen(kind_names[k]) == n && !strncmp(kind_names[k], s, n))
            return k;
    return -1;
}

/* "segment=8,everything=1" */
static int parse_mix(const char *s, options *o)
{
    memset(o->mix, 0, sizeof o->mix);
    while (*s) {
        const char *eq = strchr(s, '='), *comma = strchr(s, ',');
        if (!eq || (comma && comma < eq))
            return -1;
        int k = kind_index(s, (size_t)(eq - s));
        char num[32];
        size_t nl = comma ? (size_t)(comma - eq - 1) : strlen(eq + 1);
        if (k < 0 || nl == 0 || nl >= sizeof num)
            return -1;
        memcpy(num, eq + 1, nl);
        num[nl] = '\0';
        if (parse_num(num, 0, 1e6, &o->mix[k]))
            return -1;
        s = comma ? comma + 1 : eq + 1 + nl;
    }
    double sum = 0;
    for (int k = 0; k < NKIND; k++)
        sum += o->mix[k];
    return sum > 0 ? 0 : -1;
}

/* "rate=10,20,50" or "concurrency=1,2,4" */
static int parse_sweep(const char *s, options *o)
{
    const char *v;
    if (!strncmp(s, "rate=", 5)) {
        o->sweep = SWEEP_RATE;
        v = s + 5;
    } else if (!strncmp(s, "concurrency=", 12)) {
        o->sweep = SWEEP_CONCURRENCY;
        v = s + 12;
    } else {
        return -1;
    }
    o->n_steps = 0;
    while (*v) {
        char num[32];
        const char *comma = strchr(v, ',');
        size_t nl = comma ? (size_t)(comma - v) : strlen(v);
        if (nl == 0 || nl >= sizeof num || o->n_steps == MAX_STEPS)
            return -1;
        memcpy(num, v, nl);
        num[nl] = '\0';
        double x;
        if (o->sweep == SWEEP_RATE ? parse_num(num, 1e-3, MAX_RATE, &x)
                                   : parse_num(num, 1, MAX_CONCURRENCY, &x))
            return -1;
        if (o->sweep == SWEEP_CONCURRENCY && x != floor(x))
            return -1;
        o->steps[o->n_steps++] = x;
        v = comma ? comma + 1 : v + nl;
        if (comma && !*v)
            return -1;
    }
    return o->n_steps ? 0 : -1;
}

static int add_list(const char **list, int *n, const char *v)
{
    if (*n >= MAX_LIST)
        return -1;
    list[(*n)++] = v;
    return 0;
}

/* Returns 0 to run, 1 after --help, 2 on a bad option (message printed). */
static int parse_args(int argc, char **argv, options *o)
{
    enum {
        O_URL = 256,
        O_ROUTE,
        O_MIX,
        O_IMAGE,
        O_MISS,
        O_VARIANTS,
        O_NOCACHE,
        O_POINTS,
        O_BOXES,
        O_TASK,
        O_TASKR,
        O_EVERY,
        O_MULTI,
        O_OUTPUT,
        O_NOIDH,
        O_NORESEND,
        O_CONC,
        O_CONNS,
        O_RATE,
        O_ARR,
        O_REQ,
        O_DUR,
        O_WARM,
        O_TIMEOUT,
        O_SWEEP,
        O_STOPP99,
        O_STOPERR,
        O_SEED,
        O_JSON,
        O_PLOT,
        O_SAVE,
        O_TITLE,
        O_QUIET,
        O_HELP
    };
    static const struct option lo[] = {{"url", required_argument, 0, O_URL},
                                       {"route", required_argument, 0, O_ROUTE},
                                       {"mix", required_argument, 0, O_MIX},
                                       {"image", required_argument, 0, O_IMAGE},
                                       {"miss-ratio", required_argument, 0, O_MISS},
                                       {"variants", required_argument, 0, O_VARIANTS},
                                       {"no-cache", no_argument, 0, O_NOCACHE},
                                       {"points", required_argument, 0, O_POINTS},
                                       {"boxes", required_argument, 0, O_BOXES},
                                       {"task", required_argument, 0, O_TASK},
                                       {"task-ratio", required_argument, 0, O_TASKR},
                                       {"everything", required_argument, 0, O_EVERY},
                                       {"multimask", optional_argument, 0, O_MULTI},
                                       {"output", required_argument, 0, O_OUTPUT},
                                       {"no-id-header", no_argument, 0, O_NOIDH},
                                       {"no-resend", no_argument, 0, O_NORESEND},
                                       {"concurrency", required_argument, 0, O_CONC},
                                       {"connections", required_argument, 0, O_CONNS},
                                       {"rate", required_argument, 0, O_RATE},
                                       {"arrivals", required_argument, 0, O_ARR},
                                       {"requests", required_argument, 0, O_REQ},
                                       {"duration", required_argument, 0, O_DUR},
                                       {"warmup", required_argument, 0, O_WARM},
                                       {"timeout", required_argument, 0, O_TIMEOUT},
                                       {"sweep", required_argument, 0, O_SWEEP},
                                       {"stop-p99", required_argument, 0, O_STOPP99},
                                       {"stop-errors", required_argument, 0, O_STOPERR},
                                       {"seed", required_argument, 0, O_SEED},
                                       {"json", no_argument, 0, O_JSON},
                                       {"plot", required_argument, 0, O_PLOT},
                                       {"save", required_argument, 0, O_SAVE},
                                       {"title", required_argument, 0, O_TITLE},
                                       {"quiet", no_argument, 0, O_QUIET},
                                       {"help", no_argument, 0, O_HELP},
                                       {0, 0, 0, 0}};
    memset(o, 0, sizeof *o);
    snprintf(o->url, sizeof o->url, "http://127.0.0.1:8080");
    o->multimask = -1;
    o->concurrency = 1;
    o->connections = 64;
    o->timeout_s = 60;
    o->task_ratio = -1;
    o->stop_errors = 0.01;
    o->seed = 1;
    o->variants = 1;
    int mix_given = 0, conc_given = 0, conns_given = 0;
    opterr = 0;
    optind = 1;
    int ch;
    long v;
    while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        const char *a = optarg;
        switch (ch) {
        case O_URL:
            if (strlen(a) >= sizeof o->url)
                goto bad;
            snprintf(o->url, sizeof o->url, "%s", a);
            break;
        case O_ROUTE: {
            int k = kind_index(a, strlen(a));
            if (k < 0 || mix_given)
                goto bad;
            memset(o->mix, 0, sizeof o->mix);
            o->mix[k] = 1;
            mix_given = 1;
            break;
        }
        case O_MIX:
            if (mix_given || parse_mix(a, o))
                goto bad;
            mix_given = 1;
            break;
        case O_IMAGE:
            if (add_list(o->images, &o->n_images, a))
                goto bad;
            break;
        case O_MISS:
            if (parse_num(a, 0, 1, &o->miss_ratio))
                goto bad;
            break;
        case O_VARIANTS:
            if (parse_long(a, 1, MAX_IMAGES, &v))
                goto bad;
            o->variants = (int)v;
            break;
        case O_NOCACHE:
            o->no_cache = 1;
            break;
        case O_POINTS:
            if (add_list(o->points, &o->n_points, a))
                goto bad;
            break;
        case O_BOXES:
            if (add_list(o->boxes, &o->n_boxes, a))
                goto bad;
            break;
        case O_TASK:
            if (!*a || add_list(o->tasks, &o->n_tasks, a))
                goto bad;
            break;
        case O_TASKR:
            if (parse_num(a, 0, 1, &o->task_ratio))
                goto bad;
            break;
        case O_EVERY:
            o->everything = a;
            break;
        case O_MULTI:
            if (!a || !strcmp(a, "true") || !strcmp(a, "1"))
                o->multimask = 1;
            else if (!strcmp(a, "false") || !strcmp(a, "0"))
                o->multimask = 0;
            else
                goto bad;
            break;
        case O_OUTPUT:
            if (strcmp(a, "rle") && strcmp(a, "png") && strcmp(a, "polygon"))
                goto bad;
            o->output = a;
            break;
        case O_NOIDH:
            o->no_id_header = 1;
            break;
        case O_NORESEND:
            o->no_resend = 1;
            break;
        case O_CONC:
            if (parse_long(a, 1, MAX_CONCURRENCY, &v))
                goto bad;
            o->concurrency = (int)v;
            conc_given = 1;
            break;
        case O_CONNS:
            if (parse_long(a, 1, MAX_CONCURRENCY, &v))
                goto bad;
            o->connections = (int)v;
            conns_given = 1;
            break;
        case O_RATE:
            if (parse_num(a, 1e-3, MAX_RATE, &o->rate))
                goto bad;
            break;
        case O_ARR:
            if (!strcmp(a, "poisson"))
                o->arrivals = ARR_POISSON;
            else if (!strcmp(a, "constant"))
                o->arrivals = ARR_CONSTANT;
            else
                goto bad;
            break;
        case O_REQ:
            if (parse_long(a, 1, MAX_REQUESTS, &o->requests))
                goto bad;
            break;
        case O_DUR:
            if (parse_num(a, 0.001, MAX_DURATION_S, &o->duration))
                goto bad;
            break;
        case O_WARM:
            if (parse_long(a, 0, MAX_REQUESTS, &o->warmup))
                goto bad;
            break;
        case O_TIMEOUT:
            if (parse_num(a, 0.001, 3600, &o->timeout_s))
                goto bad;
            break;
        case O_SWEEP:
            if (parse_sweep(a, o))
                goto bad;
            break;
        case O_STOPP99:
            if (parse_num(a, 0.001, 1e9, &o->stop_p99_ms))
                goto bad;
            break;
        case O_STOPERR:
            if (parse_num(a, 0, 1, &o->stop_errors))
                goto bad;
            break;
        case O_SEED: {
            char *end;
            errno = 0;
            unsigned long long s = strtoull(a, &end, 10);
            if (end == a || *end || errno || *a == '-')
                goto bad;
            o->seed = s;
            break;
        }
        case O_JSON:
            o->json = 1;
            break;
        case O_PLOT:
            if (!*a)
                goto bad;
            o->plot = a;
            break;
        case O_SAVE:
            if (!*a)
                goto bad;
            o->save = a;
            break;
        case O_TITLE:
            if (strlen(a) > 200)
                goto bad;
            o->title = a;
            break;
        case O_QUIET:
            o->quiet = 1;
            break;
        case O_HELP:
            usage(stdout);
            return 1;
        default:
            fprintf(stderr, "tasam-bench: unknown option or missing value: %s\n", argv[optind - 1]);
            return 2;
        }
        continue;
    bad:
        fprintf(stderr, "tasam-bench: bad value for %s: %s\n", argv[optind - 1], a ? a : "");
        return 2;
    }
    if (optind < argc) {
        fprintf(stderr, "tasam-bench: unexpected argument: %s\n", argv[optind]);
        return 2;
    }
    if (!mix_given)
        o->mix[K_SEGMENT] = 1;
    if (o->requests == 0 && o->duration == 0)
        o->requests = 100;
    const char *why = NULL;
    int images = o->mix[K_SEGMENT] + o->mix[K_EVERYTHING] + o->mix[K_EMBEDDINGS] > 0;
    if (o->requests && o->duration)
        why = "give --requests or --duration, not both";
    else if (images && !o->n_images)
        why = "the mix sends images: give --image FILE";
    else if (!o->mix[K_SEGMENT] && (o->n_points || o->n_boxes))
        why = "--points and --boxes apply to segment requests: the mix has none";
    else if (!(o->mix[K_SEGMENT] + o->mix[K_EVERYTHING]) &&
             (o->n_tasks || o->multimask >= 0 || o->output))
        why = "--task, --multimask and --output apply to segment and everything requests";
    else if (!images && (o->no_cache || o->miss_ratio > 0 || o->n_images || o->variants > 1))
        why = "--image, --variants, --no-cache and --miss-ratio need a mix with image requests";
    else if (o->n_images * o->variants > MAX_IMAGES)
        why = "too many images: --image files x --variants is at most 1024";
    else if (o->task_ratio >= 0 && !o->n_tasks)
        why = "--task-ratio needs --task";
    else if (o->everything && !o->mix[K_EVERYTHING])
        why = "--everything needs everything requests in the mix (--mix everything=1)";
    else if (o->sweep == SWEEP_RATE && (o->rate > 0 || conc_given))
        why = "--sweep rate= sets the rate: drop --rate and --concurrency";
    else if (o->sweep == SWEEP_CONCURRENCY && (o->rate > 0 || conc_given || conns_given))
        why = "--sweep concurrency= is a closed loop: drop --rate, --concurrency, --connections";
    else if (o->rate > 0 && conc_given)
        why = "--rate is an open loop: use --connections (requests in flight), not --concurrency";
    else if (o->rate == 0 && o->sweep != SWEEP_RATE && conns_given)
        why = "--connections applies to the open loop (--rate or --sweep rate=)";
    else if (!o->sweep && (o->stop_p99_ms > 0))
        why = "--stop-p99 applies to --sweep";
    else if (o->title && !o->plot)
        why = "--title names the --plot";
    if (why) {
        fprintf(stderr, "tasam-bench: %s\n", why);
        return 2;
    }
    return 0;
}

/* ---- main --------------------------------------------------------------- */

int main(int argc, char **argv)
{
    options o;
    hc_target t;
    static workload w; /* ~200 KB: not on the stack */
    char err[1024] = "";
    int rc = parse_args(argc, argv, &o);
    if (rc)
        return rc == 1 ? 0 : 2;
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {.sa_handler = on_sigint};
    sigaction(SIGINT, &sa, NULL);
    if (hc_target_init(&t, o.url, err, sizeof err) != 0) {
        fprintf(stderr, "tasam-bench: --url: %s\n", err);
        return 2;
    }
    rc = workload_init(&o, &t, &w, err, sizeof err);
    if (rc) {
        fprintf(stderr, "tasam-bench: %s\n", err[0] ? err : "setup failed");
        workload_free(&w);
        hc_target_free(&t);
        return rc;
    }
    int nsteps = o.sweep ? o.n_steps : 1;
    stats *st = calloc((size_t)nsteps, sizeof *st);
    if (!st) {
        fprintf(stderr, "tasam-bench: out of memory\n");
        workload_free(&w);
        hc_target_free(&t);
        return 3;
    }
    int done = 0, failed = 0;
    char stopped[256] = "";
    if (o.sweep && !o.json)
        print_row_head(&o);
    for (int i = 0; i < nsteps && !g_stop; i++) {
        double rate = o.sweep == SWEEP_RATE ? o.steps[i] : o.rate;
        int nw = o.sweep == SWEEP_CONCURRENCY ? (int)o.steps[i]
                 : rate > 0                   ? o.connections
                                              : o.concurrency;
        if (run_step(&o, &w, &t, i, rate, nw, i == 0 ? o.warmup : 0, &st[i]) != 0) {
            failed = 1;
            break;
        }
        st[i].x = o.sweep == SWEEP_RATE ? rate : nw;
        done++;
        failed |= st[i].errors > 0 || st[i].oom;
        if (o.sweep && !o.json) {
            print_row(&st[i]);
            fflush(stdout);
        }
        double frac = st[i].n ? (double)st[i].errors / st[i].n : 0;
        if (o.sweep && i + 1 < nsteps) {
            if (frac > o.stop_errors)
                snprintf(stopped, sizeof stopped, "errors %.1f%% > %.1f%% at %s=%g", frac * 100,
                         o.stop_errors * 100, o.sweep == SWEEP_RATE ? "rate" : "concurrency",
                         st[i].x);
            else if (o.stop_p99_ms > 0 && !(st[i].lat[2] <= o.stop_p99_ms))
                snprintf(stopped, sizeof stopped, "p99 %.1f ms > %.1f ms at %s=%g", st[i].lat[2],
                         o.stop_p99_ms, o.sweep == SWEEP_RATE ? "rate" : "concurrency", st[i].x);
            if (stopped[0])
                break;
        }
    }
    if (done && (o.json || o.save)) {
        json_t *j = json_object();
        json_object_set_new(j, "url", json_string(o.url));
        json_object_set_new(j, "mode",
                            json_string(o.rate > 0 || o.sweep == SWEEP_RATE ? "open" : "closed"));
        if (o.rate > 0 || o.sweep == SWEEP_RATE)
            json_object_set_new(j, "arrivals",
                                json_string(o.arrivals == ARR_POISSON ? "poisson" : "constant"));
        json_t *mix = json_object();
        for (int k = 0; k < NKIND; k++)
            if (o.mix[k] > 0)
                json_object_set_new(mix, kind_names[k], json_real(o.mix[k]));
        json_object_set_new(j, "mix", mix);
        json_object_set_new(j, "miss_ratio", json_real(o.miss_ratio));
        json_object_set_new(j, "images", json_integer(w.n_img));
        json_object_set_new(j, "warmup", json_integer(o.warmup));
        json_object_set_new(j, "seed", json_integer((json_int_t)o.seed));
        if (o.sweep) {
            json_object_set_new(j, "sweep",
                                json_string(o.sweep == SWEEP_RATE ? "rate" : "concurrency"));
            json_t *steps = json_array();
            for (int i = 0; i < done; i++)
                json_array_append_new(steps, stats_json(&st[i], 0));
            json_object_set_new(j, "steps", steps);
            json_object_set_new(j, "stopped", stopped[0] ? json_string(stopped) : json_null());
        } else {
            json_t *one = stats_json(&st[0], 1);
            json_object_update(j, one);
            json_decref(one);
        }
        if (o.json) {
            json_dumpf(j, stdout, JSON_INDENT(2) | JSON_REAL_PRECISION(10));
            fputc('\n', stdout);
        }
        if (o.save && json_dump_file(j, o.save, JSON_INDENT(2) | JSON_REAL_PRECISION(10)) != 0) {
            fprintf(stderr, "tasam-bench: cannot write --save %s\n", o.save);
            failed = 1;
        }
        json_decref(j);
    }
    if (done && !o.json && !o.sweep)
        print_run(&o, &st[0]);
    else if (!o.json && stopped[0])
        printf("stopped: %s\n", stopped);
    if (done && o.plot && plot(&o, st, done) != 0) {
        fprintf(stderr, "tasam-bench: cannot write --plot %s: %s\n", o.plot, strerror(errno));
        failed = 1;
    }
    if (g_stop && !o.json)
        printf("(interrupted)\n");
    fflush(stdout);
    free(st);
    workload_free(&w);
    hc_target_free(&t);
    return !done ? 3 : failed ? 1 : 0;
}
