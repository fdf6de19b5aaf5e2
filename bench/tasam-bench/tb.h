/*
 * bench/tasam-bench/tb.h: the parts of the load tester (one program):
 *   main.c      options, the steps of a sweep, main
 *   workload.c  the images, the request mix, building each request
 *   run.c       one step: worker threads, open and closed loop, statistics
 *   report.c    the text, JSON and SVG output, and the names of things
 * The program's contract is at the top of main.c and in `--help`.
 */
#ifndef TASAM_BENCH_TB_H
#define TASAM_BENCH_TB_H

#include <jansson.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#include "clients/http_client.h"

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
/* Name of failure e (an index: -HC_E*, or ERR_INVALID). */
const char *tb_err_name(int e);

/* timings_ms stages, in the API's order (schema/openapi.yaml, Timings). */
enum { ST_DECODE, ST_QUEUE, ST_ENCODE, ST_DECODE_MASKS, ST_POSTPROCESS, ST_TOTAL, NST };
extern const char *const tb_stage_names[NST];

/* Request kinds of the workload mix. */
enum { K_SEGMENT, K_EVERYTHING, K_EMBEDDINGS, K_HEALTHZ, NKIND };
extern const char *const tb_kind_names[NKIND];

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

/* What one generated request is. */
typedef struct {
    char *req; /* the whole request (malloc'd) or the shared healthz one */
    size_t len;
    int kind;
    int owned; /* req is ours to free */
    int by_id; /* the image went by image_id (a 404 means: send the bytes) */
} genreq;

#define NPCT 4
extern const double tb_pct_p[NPCT];         /* the percentiles reported */
extern const char *const tb_pct_json[NPCT]; /* their JSON names: p50_ms ... */
extern const char *const tb_pct_text[NPCT]; /* their names in text and plots */
#define NSPECTRUM 10
extern const double tb_spectrum_p[NSPECTRUM]; /* percentiles of a single run's plot */

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
    double spectrum[NSPECTRUM]; /* latency at the spectrum's percentiles (single-run plot) */
} stats;

/* Set by SIGINT: every loop ends early and what was measured is reported. */
extern volatile sig_atomic_t tb_stop;

/* ---- workload.c ---- */

/* splitmix64: the next value of the generator state *s. */
uint64_t tb_splitmix(uint64_t *s);
/* Uniform in [0, 1). */
double tb_urand(uint64_t *s);
/* Read the images, parse the prompts, register the images with the
 * server when some request kind sends one. Returns 0, 2 (usage) or 3
 * (setup) with a message in err. */
int tb_workload_init(const options *o, const hc_target *t, workload *w, char *err, size_t errlen);
void tb_workload_free(workload *w);
/* Build request number `seq` of a step (reproducible from the seed); with
 * `bytes`, the image goes as bytes instead of image_id. 0 or -1 (memory). */
int tb_make_request(const options *o, const workload *w, const hc_target *t, uint64_t seq,
                    int bytes, genreq *g);
void tb_genreq_free(genreq *g);

/* ---- run.c ---- */

/* Run one step (a whole run without --sweep) at `rate` (open loop; 0:
 * closed) with `nworkers` connections, `warmup` unmeasured requests first,
 * into *st. 0, or -1 when it could not start (message printed). */
int tb_run_step(const options *o, const workload *w, const hc_target *t, int step, double rate,
                int nworkers, long warmup, stats *st);

/* ---- report.c ---- */

/* Every figure of a step as JSON (server stage detail when `server_detail`). */
json_t *tb_stats_json(const stats *s, int server_detail);
void tb_print_run(const options *o, const stats *s);
void tb_print_row_head(const options *o);
void tb_print_row(const stats *s);
/* --plot: the sweep's percentiles, or one run's latency by percentile.
 * 0 or -1 (errno set). */
int tb_plot(const options *o, const stats *st, int n);

#endif
