/*
 * server/cache.h: the embedding cache, two tiers, and the disk tier of the
 * adapter cache (same database; the adapters' memory tier is the worker's,
 * server/adapter_cache.h).
 *
 * Tier 1, memory: embeddings held in memory, each either a host copy (at
 * most `mem_slots`: computed but not yet decoded, e.g. by POST
 * /v1/embeddings) or resident in the engine's device slots (the worker
 * reports those with srv_cache_note_resident; the host copy is then freed:
 * the engine's copy is enough). Tier 2, disk: an SQLite database in WAL
 * mode, STATE_DIR/cache.db, keyed by (image sha256, model id, precision),
 * with a CRC-32 over every blob checked on read, a byte budget and LRU
 * eviction by last use. Schema and migrations: schema/cache.sql (kept
 * identical to cache_migrations[] in cache_db.c; a unit test compares them).
 *
 * Disk I/O: reads run on two read connections; every write (insert with
 * its evictions, last-use bumps, deletions) is queued for one writer
 * thread with its own connection, so the inference worker and the HTTP
 * threads never wait for a disk write; statements are prepared once per
 * connection. A write still queued is visible to every lookup. The queue
 * is bounded (64 MiB of payload; beyond, puts are dropped and counted).
 *
 * Crash safety: every insert (with its evictions) is one transaction; a
 * kill -9 loses at most the writes queued and the one being written.
 *
 * Failures: at open (and at every retry) a file SQLite reports corrupt or
 * not a database, one failing `PRAGMA quick_check`, or one of another
 * application or a newer schema is renamed aside (cache.db.corrupt-<unix
 * time>; the newest cache-corrupt-keep are kept) with a log line and a
 * fresh one is created. Any other error (an I/O error, a full disk,
 * permissions) leaves the file alone: the disk tier is down (logged, in
 * tasam_cache_disk_available and /v1/info), lookups miss it and writes are
 * dropped, and it is retried every 30 s. A full disk while running drops
 * the writes it refuses and keeps the tier up.
 *
 * Threads: any thread may call anything, except that srv_cache_get,
 * srv_cache_put and srv_cache_note_resident are the inference worker's
 * (srv_cache_get hands out a pointer into the memory tier).
 */
#ifndef TASAM_SERVER_CACHE_H
#define TASAM_SERVER_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "server/metrics.h"

/* The schema version this build writes (PRAGMA user_version). */
#define SRV_CACHE_SCHEMA_VERSION 2
/* PRAGMA application_id of our databases ("tsam"). */
#define SRV_CACHE_APP_ID 0x7473616d

typedef struct srv_cache srv_cache;

/* Where an embedding came from. */
typedef enum srv_cache_tier { SRV_TIER_NONE = 0, SRV_TIER_MEMORY, SRV_TIER_DISK } srv_cache_tier;

/* One row's metadata (GET /v1/embeddings/{id}). */
typedef struct srv_cache_meta {
    char image_id[65];    /* sha256 hex of the image bytes */
    char model_id[64];    /* eng_sam_model_id() */
    char precision[8];    /* "fp32", "fp16", "bf16" */
    int width, height;    /* original image size */
    int64_t bytes;        /* blob size */
    int64_t created_ms;   /* unix milliseconds */
    int64_t last_used_ms; /* unix milliseconds */
    int64_t hits;         /* times served from the cache */
    int in_memory;        /* 1 when also in the memory tier */
} srv_cache_meta;

/*
 * Open (creating the directory and database as needed) STATE_DIR/cache.db.
 * `floats` is the size of one embedding in floats; budget_bytes the disk
 * byte budget (0: disk tier disabled); mem_slots the host copies of the
 * memory tier and the engine's device slots it mirrors; corrupt_keep the
 * cache.db.corrupt-* files kept. `m` (borrowed, may be NULL) receives
 * counters and gauges. Also takes an exclusive lock on STATE_DIR/tasamd.lock
 * so two daemons never share a state directory. A disk tier that cannot
 * open for any reason but that lock (a full or failing disk) is not an
 * error: the cache starts without it and retries. Returns 0 or a negative
 * code with a message in err.
 */
int srv_cache_open(srv_cache **out, const char *state_dir, size_t floats, int64_t budget_bytes,
                   int mem_slots, int corrupt_keep, srv_metrics *m, char *err, size_t errlen);

/* Close the database cleanly (WAL checkpoint) and free everything. NULL ok. */
void srv_cache_close(srv_cache *c);

/* Bind the cache to the loaded model: rows are keyed by (sha, model_id,
 * precision). Until this is called every lookup misses. */
void srv_cache_set_model(srv_cache *c, const char *model_id, const char *precision);

/* Change the disk byte budget (evicts at the next put or maintenance). */
void srv_cache_set_budget(srv_cache *c, int64_t budget_bytes);

/*
 * Worker only, for an embedding its engine does not hold: the host copy
 * (*emb points at it, valid until the next srv_cache_get/put; tier MEMORY),
 * else a write still queued or the disk row copied into `scratch`
 * (`floats` floats; *emb = scratch; tier MEMORY or DISK). scratch NULL
 * asks only whether it is there (*emb NULL). *w, *h get the image size;
 * hits and last_used are bumped. Returns 0, 1 on a miss (a corrupt or
 * impossible row is dropped, logged and reported as a miss), or a negative
 * code on a database error (treated by callers as a miss).
 */
int srv_cache_get(srv_cache *c, const char *sha, float *scratch, const float **emb, int *w, int *h,
                  srv_cache_tier *tier);

/* Worker only. Store an embedding (copied): queued for the disk tier, and
 * kept as a host copy when keep_host (nobody will decode it soon, e.g.
 * POST /v1/embeddings). Returns 0 or a negative code (not queued). */
int srv_cache_put(srv_cache *c, const char *sha, const float *emb, int w, int h, int keep_host);

/* Worker only. The engine now holds sha resident (it was just decoded
 * under that key): its host copy is freed, and the mirror of the engine's
 * LRU drops the embedding the engine evicted for it. */
void srv_cache_note_resident(srv_cache *c, const char *sha, int w, int h);

/* Bump sha's last use (memory and disk) without reading it (a device hit). */
void srv_cache_touch(srv_cache *c, const char *sha);

/* Any thread. srv_cache_get's answer without reading the blob or counting
 * a hit: 0 when `sha` is in a tier or queued (fills *w, *h), 1 when
 * absent, a negative code on a database error (callers treat it as a
 * miss). A disk row whose stored size is impossible is dropped (a miss); a
 * row whose blob turns out corrupt is a hit here and a miss in
 * srv_cache_get. */
int srv_cache_peek(srv_cache *c, const char *sha, int *w, int *h);

/* Any thread. 0 and *out filled when present, 1 when absent, negative on a
 * database error. */
int srv_cache_meta_get(srv_cache *c, const char *sha, srv_cache_meta *out);

/* Any thread (the control loop's timer): queue an eviction to the budgets
 * and a WAL checkpoint (and, while the disk tier is down, let it retry). */
void srv_cache_maintain(srv_cache *c);

/* Wait until every write queued before the call is on disk (or dropped). */
void srv_cache_flush(srv_cache *c);

/* While the disk tier is down, try it again now rather than at the next
 * 30 s retry (SIGHUP does this: an operator who freed space need not
 * wait). */
void srv_cache_retry(srv_cache *c);

/* 1 when the disk tier works; else 0 and why (n bytes) it is down. */
int srv_cache_disk_status(srv_cache *c, char *why, size_t n);

/* Path of the database file (borrowed). */
const char *srv_cache_path(const srv_cache *c);

/* ---- adapters (disk tier) ----
 *
 * Table `adapter` (schema/cache.sql, migration 2): one row per adapter id
 * (ad_task_id: SHA-256 of the normalised task and the hypernetwork's content
 * id, so another hypernetwork never shares a row), with the serialized
 * adapter (adapters/adapter.h's safetensors form) in `adapter_blob`, a
 * CRC-32 of it checked on every read, and its own byte budget
 * (adapter-cache-bytes) with LRU eviction by last use. Any thread may call
 * these; writes are queued for the writer thread like the embeddings'.
 */

/* Task text limit in bytes: AD_TASK_MAX (adapters/adapter.h), which this
 * header does not include; server/adapter_cache.c asserts they agree. */
#define SRV_TASK_MAX 1000

/* One adapter row's metadata. */
typedef struct srv_adapter_meta {
    char id[65];                            /* adapter id, 64 lowercase hex */
    char task[SRV_TASK_MAX + 1];            /* the task as first given */
    char task_normalized[SRV_TASK_MAX + 1]; /* ad_normalize_task(task) */
    char hypernet_id[65];                   /* hypernetwork content id */
    char hypernet_version[64];              /* the trainer's label */
    char text_model[64];                    /* encoder that embedded the task */
    int rank;                               /* LoRA rank */
    double alpha;                           /* LoRA alpha (scale alpha/rank) */
    int64_t bytes;                          /* serialized size */
    int64_t created_ms;                     /* unix milliseconds */
    int64_t last_used_ms;                   /* unix milliseconds */
    int64_t hits;                           /* requests served from the cache */
} srv_adapter_meta;

/* Change the adapter byte budget (0 disables the adapter disk tier). */
void srv_cache_set_adapter_budget(srv_cache *c, int64_t budget_bytes);

/*
 * Read adapter `id`: 0 with *blob (malloc'd; the caller frees it), *len and
 * *meta (may be NULL) filled, bumping hits and last_used when `touch`; 1 when
 * absent or disabled. A row whose blob fails its size or CRC-32 check is
 * deleted, logged and counted (adapter_corrupt) and reported as absent.
 * Negative on a database error.
 */
int srv_cache_adapter_get(srv_cache *c, const char *id, int touch, uint8_t **blob, size_t *len,
                          srv_adapter_meta *meta);

/* Queue storing (or replacing) an adapter row and its blob, one
 * transaction with the evictions the budget needs (never the new row). A
 * blob larger than the whole budget is not stored (returns 1). 0 queued,
 * negative when dropped. */
int srv_cache_adapter_put(srv_cache *c, const srv_adapter_meta *meta, const uint8_t *blob,
                          size_t len);

/* Metadata only: 0 found, 1 absent, negative on error. No hit is counted. */
int srv_cache_adapter_meta(srv_cache *c, const char *id, srv_adapter_meta *out);

/* Queue bumping hits and last_used of `id` (a memory-tier hit). */
void srv_cache_adapter_touch(srv_cache *c, const char *id);

/* Queue dropping a row (a blob that would not parse). */
void srv_cache_adapter_delete(srv_cache *c, const char *id);

/*
 * List rows ordered by id: those with id > `after` (NULL or "" for the
 * start), skipping `offset` more, at most `limit` (<= cap of out). *n gets
 * the rows written, *total the number of rows in the table. 0 or negative.
 */
int srv_cache_adapter_list(srv_cache *c, const char *after, int64_t offset, int limit,
                           srv_adapter_meta *out, int *n, int64_t *total);

/* Delete every adapter row (waits for the writer); returns how many, or
 * negative on error or while the disk tier is down. */
int64_t srv_cache_adapter_clear(srv_cache *c);

#endif
