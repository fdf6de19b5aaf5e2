/*
 * server/metrics.c: Prometheus text rendering of srv_metrics.
 */
#include "server/metrics.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const double latency_bounds[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                        0.25,  0.5,    1,     2.5,  5,     10,   30};
static const double batch_bounds[] = {1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64};

static const int tracked_codes[] = {200, 202, 400, 401, 403, 404, 405, 408, 409, 411, 413,
                                    414, 415, 429, 431, 499, 500, 501, 503, 504, 505, 0};

/* by srv_route, in its order */
static const char *const route_names[] = {"segment",       "embeddings_post", "embeddings_get",
                                          "healthz",       "readyz",          "metrics",
                                          "info",          "admin",           "adapters",
                                          "adapters_post", "adapter_get",     "adapter_weights",
                                          "web",           "other",           "train_post",
                                          "train_list",    "train_get",       "train_cancel",
                                          "train_log",     "hypernet_get",    "hypernet_rollback"};

/* The tables above mirror metrics.h's sizes: a route or a status slot added
 * there without its entry here must not compile. */
_Static_assert(sizeof tracked_codes / sizeof tracked_codes[0] == SRV_METRIC_CODES,
               "tracked_codes needs SRV_METRIC_CODES entries");
_Static_assert(sizeof route_names / sizeof route_names[0] == SRV_ROUTE_COUNT,
               "route_names needs a name for every srv_route");
_Static_assert(sizeof latency_bounds / sizeof latency_bounds[0] <= SRV_HIST_MAX_BUCKETS &&
                   sizeof batch_bounds / sizeof batch_bounds[0] <= SRV_HIST_MAX_BUCKETS,
               "a histogram has at most SRV_HIST_MAX_BUCKETS bounds");

const char *srv_route_name(srv_route r)
{
    return (int)r >= 0 && r < SRV_ROUTE_COUNT ? route_names[r] : "other";
}

static void hist_init(srv_hist *h, const double *b, int n)
{
    memset(h, 0, sizeof *h);
    h->bounds = b;
    h->n_bounds = n;
}

void srv_metrics_init(srv_metrics *m)
{
    memset(m, 0, sizeof *m);
    for (int r = 0; r < SRV_ROUTE_COUNT; r++)
        hist_init(&m->duration[r], latency_bounds, (int)(sizeof latency_bounds / sizeof(double)));
    hist_init(&m->batch_size, batch_bounds, (int)(sizeof batch_bounds / sizeof(double)));
    hist_init(&m->encoder_seconds, latency_bounds, (int)(sizeof latency_bounds / sizeof(double)));
    hist_init(&m->decoder_seconds, latency_bounds, (int)(sizeof latency_bounds / sizeof(double)));
    hist_init(&m->postprocess_seconds, latency_bounds,
              (int)(sizeof latency_bounds / sizeof(double)));
    hist_init(&m->adapter_gen_seconds, latency_bounds,
              (int)(sizeof latency_bounds / sizeof(double)));
    m->start_time = (int64_t)time(NULL);
}

/* Contract: v >= 0 (negatives count as 0); any thread. */
void srv_hist_observe(srv_hist *h, double v)
{
    int i = 0;
    if (!(v >= 0))
        v = 0;
    while (i < h->n_bounds && v > h->bounds[i])
        i++;
    __atomic_fetch_add(&h->counts[i], 1, __ATOMIC_RELAXED);
    __atomic_fetch_add(&h->sum_ns, (uint64_t)(v * 1e9 + 0.5), __ATOMIC_RELAXED);
    __atomic_fetch_add(&h->count, 1, __ATOMIC_RELAXED);
}

void srv_metrics_request(srv_metrics *m, srv_route r, int code, double seconds)
{
    int slot = SRV_METRIC_CODES; /* "other" */
    if ((int)r < 0 || r >= SRV_ROUTE_COUNT)
        r = SRV_ROUTE_OTHER;
    for (int i = 0; i < SRV_METRIC_CODES; i++)
        if (tracked_codes[i] == code) {
            slot = i;
            break;
        }
    __atomic_fetch_add(&m->requests[r][slot], 1, __ATOMIC_RELAXED);
    srv_hist_observe(&m->duration[r], seconds);
}

/* A growing text buffer; `failed` makes every later append a no-op. */
typedef struct tbuf {
    char *p;    /* malloc'd text */
    size_t len; /* bytes used */
    size_t cap; /* bytes allocated */
    int failed; /* 1 after an allocation failure */
} tbuf;

static void tb_printf(tbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void tb_printf(tbuf *b, const char *fmt, ...)
{
    va_list ap;
    int n;
    if (b->failed)
        return;
    for (;;) {
        va_start(ap, fmt);
        n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->failed = 1;
            return;
        }
        if ((size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        size_t nc = b->cap * 2 + (size_t)n + 1;
        char *q = realloc(b->p, nc);
        if (!q) {
            b->failed = 1;
            return;
        }
        b->p = q;
        b->cap = nc;
    }
}

void srv_metrics_appendf(char **text, size_t *len, const char *fmt, ...)
{
    va_list ap;
    char *more = NULL;
    va_start(ap, fmt);
    int n = vasprintf(&more, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    char *t = realloc(*text, *len + (size_t)n + 1);
    if (t) {
        memcpy(t + *len, more, (size_t)n + 1);
        *text = t;
        *len += (size_t)n;
    }
    free(more);
}

static uint64_t ld(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static int64_t ldi(const int64_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }

/* Contract: writes one histogram's _bucket/_sum/_count lines; `labels` is
 * "" or `name="value"` pairs without braces. */
static void render_hist(tbuf *b, const char *name, const char *labels, srv_hist *h)
{
    uint64_t cum = 0;
    const char *sep = labels[0] ? "," : "";
    for (int i = 0; i <= h->n_bounds; i++) {
        cum += ld(&h->counts[i]);
        if (i < h->n_bounds)
            tb_printf(b, "%s_bucket{%s%sle=\"%g\"} %llu\n", name, labels, sep, h->bounds[i],
                      (unsigned long long)cum);
        else
            tb_printf(b, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, labels, sep,
                      (unsigned long long)cum);
    }
    if (labels[0]) {
        tb_printf(b, "%s_sum{%s} %.9f\n", name, labels, (double)ld(&h->sum_ns) * 1e-9);
        tb_printf(b, "%s_count{%s} %llu\n", name, labels, (unsigned long long)cum);
    } else {
        tb_printf(b, "%s_sum %.9f\n", name, (double)ld(&h->sum_ns) * 1e-9);
        tb_printf(b, "%s_count %llu\n", name, (unsigned long long)cum);
    }
}

static void counter(tbuf *b, const char *name, const char *help, uint64_t v)
{
    tb_printf(b, "# HELP %s %s\n# TYPE %s counter\n%s %llu\n", name, help, name, name,
              (unsigned long long)v);
}

static void gauge(tbuf *b, const char *name, const char *help, int64_t v)
{
    tb_printf(b, "# HELP %s %s\n# TYPE %s gauge\n%s %lld\n", name, help, name, name, (long long)v);
}

int srv_metrics_render(srv_metrics *m, char **out, size_t *len)
{
    tbuf b = {0};
    char labels[64];
    b.cap = 16384;
    b.p = malloc(b.cap);
    if (!b.p)
        return -1;
    b.p[0] = 0;

    tb_printf(&b, "# HELP tasam_requests_total HTTP requests by route and status code.\n"
                  "# TYPE tasam_requests_total counter\n");
    for (int r = 0; r < SRV_ROUTE_COUNT; r++)
        for (int s = 0; s <= SRV_METRIC_CODES; s++) {
            uint64_t v = ld(&m->requests[r][s]);
            if (!v)
                continue;
            if (s < SRV_METRIC_CODES && tracked_codes[s])
                tb_printf(&b, "tasam_requests_total{route=\"%s\",code=\"%d\"} %llu\n",
                          route_names[r], tracked_codes[s], (unsigned long long)v);
            else
                tb_printf(&b, "tasam_requests_total{route=\"%s\",code=\"other\"} %llu\n",
                          route_names[r], (unsigned long long)v);
        }
    tb_printf(&b, "# HELP tasam_request_duration_seconds Time from request arrival to response.\n"
                  "# TYPE tasam_request_duration_seconds histogram\n");
    for (int r = 0; r < SRV_ROUTE_COUNT; r++) {
        snprintf(labels, sizeof labels, "route=\"%s\"", route_names[r]);
        render_hist(&b, "tasam_request_duration_seconds", labels, &m->duration[r]);
    }
    tb_printf(&b, "# HELP tasam_batch_size Images per image-encoder call.\n"
                  "# TYPE tasam_batch_size histogram\n");
    render_hist(&b, "tasam_batch_size", "", &m->batch_size);
    tb_printf(&b, "# HELP tasam_encoder_seconds Image-encoder call time (one batch).\n"
                  "# TYPE tasam_encoder_seconds histogram\n");
    render_hist(&b, "tasam_encoder_seconds", "", &m->encoder_seconds);
    tb_printf(&b,
              "# HELP tasam_decoder_seconds Mask-decoder call time (all prompts of a request).\n"
              "# TYPE tasam_decoder_seconds histogram\n");
    render_hist(&b, "tasam_decoder_seconds", "", &m->decoder_seconds);
    tb_printf(&b, "# HELP tasam_postprocess_seconds Mask upscaling and thresholding per request.\n"
                  "# TYPE tasam_postprocess_seconds histogram\n");
    render_hist(&b, "tasam_postprocess_seconds", "", &m->postprocess_seconds);

    counter(&b, "tasam_images_encoded_total", "Images run through the image encoder.",
            ld(&m->images_encoded));
    tb_printf(&b,
              "# HELP tasam_cache_hits_total Embeddings served from the cache, by tier.\n"
              "# TYPE tasam_cache_hits_total counter\n"
              "tasam_cache_hits_total{tier=\"memory\"} %llu\n"
              "tasam_cache_hits_total{tier=\"disk\"} %llu\n",
              (unsigned long long)ld(&m->cache_hits_mem),
              (unsigned long long)ld(&m->cache_hits_disk));
    counter(&b, "tasam_cache_misses_total", "Embeddings that had to be computed.",
            ld(&m->cache_misses));
    counter(&b, "tasam_cache_evictions_total", "Cache rows evicted by the byte budget.",
            ld(&m->cache_evictions));
    counter(&b, "tasam_cache_corrupt_total", "Cache rows dropped after a checksum mismatch.",
            ld(&m->cache_corrupt));
    tb_printf(&b, "# HELP tasam_adapter_generation_seconds Adapter generation time (text encoder + "
                  "hypernetwork).\n"
                  "# TYPE tasam_adapter_generation_seconds histogram\n");
    render_hist(&b, "tasam_adapter_generation_seconds", "", &m->adapter_gen_seconds);
    tb_printf(&b,
              "# HELP tasam_adapter_cache_hits_total Task adapters served from the cache, by "
              "tier.\n"
              "# TYPE tasam_adapter_cache_hits_total counter\n"
              "tasam_adapter_cache_hits_total{tier=\"memory\"} %llu\n"
              "tasam_adapter_cache_hits_total{tier=\"disk\"} %llu\n",
              (unsigned long long)ld(&m->adapter_hits_mem),
              (unsigned long long)ld(&m->adapter_hits_disk));
    counter(&b, "tasam_adapter_cache_misses_total", "Task adapters that had to be generated.",
            ld(&m->adapter_misses));
    tb_printf(&b,
              "# HELP tasam_adapter_cache_evictions_total Task adapters evicted, by tier (memory: "
              "the device LRU; disk: the byte budget).\n"
              "# TYPE tasam_adapter_cache_evictions_total counter\n"
              "tasam_adapter_cache_evictions_total{tier=\"memory\"} %llu\n"
              "tasam_adapter_cache_evictions_total{tier=\"disk\"} %llu\n",
              (unsigned long long)ld(&m->adapter_evictions_mem),
              (unsigned long long)ld(&m->adapter_evictions_disk));
    counter(&b, "tasam_adapter_cache_corrupt_total",
            "Cached adapters dropped after a checksum or parse failure.", ld(&m->adapter_corrupt));
    gauge(&b, "tasam_adapters_resident", "Task adapters ready on the device (the memory tier).",
          ldi(&m->adapters_resident));
    tb_printf(&b,
              "# HELP tasam_adapter_cache_bytes Task adapter bytes held, by tier.\n"
              "# TYPE tasam_adapter_cache_bytes gauge\n"
              "tasam_adapter_cache_bytes{tier=\"memory\"} %lld\n"
              "tasam_adapter_cache_bytes{tier=\"disk\"} %lld\n",
              (long long)ldi(&m->adapter_bytes_mem), (long long)ldi(&m->adapter_bytes_disk));
    gauge(&b, "tasam_adapter_cache_entries", "Task adapters in the on-disk cache.",
          ldi(&m->adapter_entries_disk));
    counter(&b, "tasam_encodes_shared_total",
            "Requests served by another request's in-flight encode.", ld(&m->encodes_shared));
    counter(&b, "tasam_rejected_total", "Requests refused because the queue was full (429).",
            ld(&m->rejected_queue_full));
    counter(&b, "tasam_deadline_expired_total",
            "Requests whose deadline passed while queued (504).", ld(&m->deadline_expired));
    counter(&b, "tasam_rate_limited_total", "Requests refused by the per-client rate limit (429).",
            ld(&m->rejected_rate_limit));
    counter(&b, "tasam_body_budget_rejected_total",
            "Requests refused because max-inflight-body-bytes was reached (503).",
            ld(&m->rejected_body_budget));
    counter(&b, "tasam_response_too_large_total",
            "Responses refused because they passed max-response-bytes (413).",
            ld(&m->rejected_response_size));
    counter(&b, "tasam_jobs_abandoned_total",
            "Jobs dropped (queued) or stopped (everything mode) because their client closed the "
            "connection.",
            ld(&m->jobs_abandoned));
    counter(&b, "tasam_cache_write_dropped_total",
            "Cache writes dropped (writer queue full or disk tier unavailable).",
            ld(&m->cache_write_dropped));
    counter(&b, "tasam_cache_io_errors_total",
            "Cache database operations that failed with an I/O error (disk full, EIO).",
            ld(&m->cache_io_errors));
    gauge(&b, "tasam_http_connections", "HTTP connections open.", ldi(&m->connections));
    gauge(&b, "tasam_body_bytes_inflight", "Request-body bytes being received.",
          ldi(&m->body_bytes_inflight));
    gauge(&b, "tasam_cache_disk_available",
          "1 when the on-disk cache works, 0 while it is unavailable (retried).",
          ldi(&m->cache_disk_available));
    gauge(&b, "tasam_cache_write_queue_bytes", "Bytes waiting for the cache writer thread.",
          ldi(&m->cache_write_queue_bytes));
    gauge(&b, "tasam_queue_depth", "Jobs waiting for the inference worker.", ldi(&m->queue_depth));
    gauge(&b, "tasam_inflight_requests", "Requests being handled.", ldi(&m->inflight));
    tb_printf(&b,
              "# HELP tasam_cache_bytes Embedding bytes held, by tier.\n"
              "# TYPE tasam_cache_bytes gauge\n"
              "tasam_cache_bytes{tier=\"memory\"} %lld\n"
              "tasam_cache_bytes{tier=\"disk\"} %lld\n",
              (long long)ldi(&m->cache_bytes_mem), (long long)ldi(&m->cache_bytes_disk));
    gauge(&b, "tasam_cache_entries", "Embeddings in the on-disk cache.",
          ldi(&m->cache_entries_disk));
    tb_printf(&b,
              "# HELP tasam_memory_bytes Backend memory in use and the device total.\n"
              "# TYPE tasam_memory_bytes gauge\n"
              "tasam_memory_bytes{kind=\"used\"} %lld\n"
              "tasam_memory_bytes{kind=\"total\"} %lld\n",
              (long long)ldi(&m->memory_used), (long long)ldi(&m->memory_total));
    gauge(&b, "tasam_hypernets_loaded",
          "Hypernetwork versions in memory: the active one, and during a swap the ones requests "
          "still use.",
          ldi(&m->hypernets_loaded));
    gauge(&b, "tasam_ready", "1 when the model is loaded and the worker runs.", ldi(&m->ready));
    gauge(&b, "tasam_start_time_seconds", "Process start, unix time.", ldi(&m->start_time));

    if (b.failed) {
        free(b.p);
        return -1;
    }
    *out = b.p;
    if (len)
        *len = b.len;
    return 0;
}
