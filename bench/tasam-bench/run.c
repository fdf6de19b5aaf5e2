/*
 * bench/tasam-bench/run.c: one step of a run: the worker threads (one
 * connection each), the open loop's schedule and the closed loop, and the
 * statistics of what they recorded.
 */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

#include "bench/tasam-bench/tb.h"

volatile sig_atomic_t tb_stop;

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
            json_t *v = json_object_get(tm, tb_stage_names[i]);
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
    while (!tb_stop && clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
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
    while (!tb_stop && (wn = atomic_fetch_add(&r->warm_next, 1)) < r->warmup) {
        /* Warm-up requests are numbered apart from measured ones. */
        if (tb_make_request(o, r->w, r->t, (1ull << 62) + (uint64_t)wn, 0, &g) != 0) {
            wk->warm_errors++;
            continue;
        }
        int e = hc_exchange(&c, r->t, g.req, g.len, &resp, o->timeout_s, &wk->reconnects);
        if (e || resp.status != 200 || check_body(g.kind, &resp, &scratch))
            wk->warm_errors++;
        tb_genreq_free(&g);
    }
    pthread_mutex_lock(&r->mu);
    r->ready++;
    while (!r->go)
        pthread_cond_wait(&r->cv, &r->mu);
    pthread_mutex_unlock(&r->mu);
    int64_t last_end = 0;
    for (;;) {
        if (tb_stop)
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
        if (tb_make_request(o, r->w, r->t, r->seq_base + (uint64_t)k, 0, &g) != 0) {
            wk->oom = 1;
            break;
        }
        rc->kind = (uint8_t)g.kind;
        int64_t due = 0;
        if (r->open) {
            due = r->t0 + r->sched[k];
            sleep_until(due);
            if (tb_stop) {
                tb_genreq_free(&g);
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
            tb_genreq_free(&g);
            if (tb_make_request(o, r->w, r->t, r->seq_base + (uint64_t)k, 1, &g) != 0) {
                wk->oom = 1;
                break;
            }
            rc->resent = 1;
            e = hc_exchange(&c, r->t, g.req, g.len, &resp, o->timeout_s, &wk->reconnects);
        }
        int64_t b = hc_now_ns();
        tb_genreq_free(&g);
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
    if (r->open && r->limit > 0 && !tb_stop) {
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
        s->lat[i] = pct(v, n, tb_pct_p[i]);
    for (int i = 0; i < 10; i++)
        s->spectrum[i] = i == 0 ? (n ? v[0] : NAN) : pct(v, n, tb_spectrum_p[i]);
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
        s->svc[i] = pct(v, n, tb_pct_p[i]);
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
        t = o->arrivals == ARR_CONSTANT ? k / rate : t - log(1.0 - tb_urand(&rng)) / rate;
    }
    *n = k;
    return s;
}

/* Run one step (a whole run without --sweep). Returns 0 or -1 (could not
 * start; message printed). */
int tb_run_step(const options *o, const workload *w, const hc_target *t, int step, double rate,
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
        tb_stop = 1; /* the ones running finish at once; nothing is measured */
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
