/*
 * server/metrics.h: counters, gauges and histograms, rendered as Prometheus
 * text (exposition format 0.0.4) for GET /metrics.
 *
 * Every update is a relaxed atomic add or store, so any thread may record
 * without a lock; rendering reads the atomics one by one (a scrape may see
 * a histogram mid-update, which Prometheus tolerates).
 */
#ifndef TASAM_SERVER_METRICS_H
#define TASAM_SERVER_METRICS_H

#include <stddef.h>
#include <stdint.h>

/* Routes, the `route` label. */
typedef enum srv_route {
    SRV_ROUTE_SEGMENT = 0,       /* POST /v1/segment */
    SRV_ROUTE_EMBED_POST,        /* POST /v1/embeddings */
    SRV_ROUTE_EMBED_GET,         /* GET /v1/embeddings/{id} */
    SRV_ROUTE_HEALTHZ,           /* GET /healthz */
    SRV_ROUTE_READYZ,            /* GET /readyz */
    SRV_ROUTE_METRICS,           /* GET /metrics */
    SRV_ROUTE_INFO,              /* GET /v1/info */
    SRV_ROUTE_ADMIN,             /* /admin/... (DELETE /admin/adapters) */
    SRV_ROUTE_ADAPTERS,          /* GET /v1/adapters (list, or ?task= lookup) */
    SRV_ROUTE_ADAPTERS_POST,     /* POST /v1/adapters */
    SRV_ROUTE_ADAPTER_GET,       /* GET /v1/adapters/{id} */
    SRV_ROUTE_ADAPTER_WEIGHTS,   /* GET /v1/adapters/{id}/weights */
    SRV_ROUTE_WEB,               /* GET / and /web/... (the demo page) */
    SRV_ROUTE_OTHER,             /* anything else (404/405) */
    SRV_ROUTE_TRAIN_POST,        /* POST /admin/train */
    SRV_ROUTE_TRAIN_LIST,        /* GET /admin/train */
    SRV_ROUTE_TRAIN_GET,         /* GET /admin/train/{id} */
    SRV_ROUTE_TRAIN_CANCEL,      /* DELETE /admin/train/{id} */
    SRV_ROUTE_TRAIN_LOG,         /* GET /admin/train/{id}/log */
    SRV_ROUTE_HYPERNET_GET,      /* GET /admin/hypernet */
    SRV_ROUTE_HYPERNET_ROLLBACK, /* POST /admin/hypernet/rollback */
    SRV_ROUTE_COUNT
} srv_route;

#define SRV_HIST_MAX_BUCKETS 16
/* Status codes tracked one by one; others are counted under "other". */
#define SRV_METRIC_CODES 22

/* A histogram with fixed upper bounds (the +Inf bucket is implicit). */
typedef struct srv_hist {
    const double *bounds;                      /* ascending upper bounds (borrowed, static) */
    int n_bounds;                              /* entries in bounds */
    uint64_t counts[SRV_HIST_MAX_BUCKETS + 1]; /* per-bucket (not cumulative); last is +Inf */
    uint64_t sum_ns;                           /* sum of observations in units of 1e-9 */
    uint64_t count;                            /* observations */
} srv_hist;

typedef struct srv_metrics {
    uint64_t requests[SRV_ROUTE_COUNT][SRV_METRIC_CODES + 1]; /* by route and code slot */
    srv_hist duration[SRV_ROUTE_COUNT];                       /* request seconds per route */
    srv_hist batch_size;                                      /* images per encoder call */
    srv_hist encoder_seconds;                                 /* one encoder call (a batch) */
    srv_hist decoder_seconds;        /* one decoder call (all prompts of a request) */
    srv_hist postprocess_seconds;    /* upscaling + thresholding of one request */
    uint64_t images_encoded;         /* images through the encoder */
    uint64_t cache_hits_mem;         /* embeddings served from the in-memory LRU */
    uint64_t cache_hits_disk;        /* ... from SQLite */
    uint64_t cache_misses;           /* embeddings that had to be computed */
    uint64_t cache_evictions;        /* rows evicted from SQLite by the byte budget */
    uint64_t cache_corrupt;          /* rows dropped on a checksum mismatch */
    uint64_t encodes_shared;         /* requests that shared another's in-flight encode */
    srv_hist adapter_gen_seconds;    /* one adapter generation (text encoder + hypernetwork) */
    uint64_t adapter_hits_mem;       /* adapters served from the device LRU */
    uint64_t adapter_hits_disk;      /* ... from SQLite (parsed and uploaded) */
    uint64_t adapter_misses;         /* adapters that had to be generated */
    uint64_t adapter_evictions_mem;  /* adapters dropped from the device LRU */
    uint64_t adapter_evictions_disk; /* adapter rows evicted from SQLite by the budget */
    uint64_t adapter_corrupt;        /* adapter rows dropped (checksum or parse failure) */
    uint64_t rejected_queue_full;    /* 429s */
    uint64_t rejected_rate_limit;    /* 429s of the per-client rate limit */
    uint64_t rejected_body_budget;   /* 503s of max-inflight-body-bytes */
    uint64_t rejected_response_size; /* 413s of max-response-bytes */
    uint64_t jobs_abandoned;         /* queued jobs dropped because their client left */
    uint64_t cache_write_dropped;    /* cache writes dropped (writer queue full, disk tier down) */
    uint64_t cache_io_errors;        /* database operations that failed with an I/O error */
    uint64_t deadline_expired;       /* 504s */
    int64_t queue_depth;             /* jobs waiting (gauge) */
    int64_t inflight;                /* requests being handled (gauge) */
    int64_t connections;             /* HTTP connections the gate holds (gauge) */
    int64_t body_bytes_inflight;     /* request-body bytes being received (gauge) */
    int64_t cache_disk_available;    /* 1 when the disk tier works, 0 while it is down (gauge) */
    int64_t cache_write_queue_bytes; /* bytes waiting for the cache writer (gauge) */
    int64_t cache_bytes_disk;        /* embedding bytes in SQLite (gauge) */
    int64_t cache_bytes_mem;         /* embedding bytes in the in-memory LRU (gauge) */
    int64_t cache_entries_disk;      /* rows in SQLite (gauge) */
    int64_t adapters_resident;       /* adapters in the device LRU (gauge) */
    int64_t adapter_bytes_mem;       /* device bytes of those (gauge) */
    int64_t adapter_bytes_disk;      /* adapter bytes in SQLite (gauge) */
    int64_t adapter_entries_disk;    /* adapter rows in SQLite (gauge) */
    int64_t hypernets_loaded;        /* hypernetwork versions in memory: the active one and any
                                        that requests still pin (gauge) */
    int64_t memory_used;             /* backend device/host bytes (gauge) */
    int64_t memory_total;            /* device total, 0 if unknown (gauge) */
    int64_t ready;                   /* 1 once the model is loaded (gauge) */
    int64_t start_time;              /* unix seconds at start */
} srv_metrics;

/* Zero everything and set the bucket bounds. */
void srv_metrics_init(srv_metrics *m);

/* Label of a route ("segment", ...). */
const char *srv_route_name(srv_route r);

void srv_metrics_request(srv_metrics *m, srv_route r, int code, double seconds);
void srv_hist_observe(srv_hist *h, double v);
static inline void srv_metrics_add(uint64_t *ctr, uint64_t n)
{
    __atomic_fetch_add(ctr, n, __ATOMIC_RELAXED);
}
static inline void srv_metrics_gauge_add(int64_t *g, int64_t n)
{
    __atomic_fetch_add(g, n, __ATOMIC_RELAXED);
}
static inline void srv_metrics_gauge_set(int64_t *g, int64_t v)
{
    __atomic_store_n(g, v, __ATOMIC_RELAXED);
}

/* Append printf output to a malloc'd NUL-terminated text (*text may be
 * NULL, *len its length): how other subsystems add their own series after
 * srv_metrics_render. On an allocation failure the text is left as it was. */
void srv_metrics_appendf(char **text, size_t *len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Render the exposition text into a malloc'd NUL-terminated buffer.
 * Returns 0 or a negative code (out of memory). */
int srv_metrics_render(srv_metrics *m, char **out, size_t *len);

#endif
