/*
 * server/cache_internal.h: what the cache's files share (not a public
 * header; only server/cache*.c include it).
 *
 * The cache is three files: cache_db.c (the database: open, lock, schema
 * and migrations, blobs, LRU eviction, maintenance), cache.c (the embedding
 * table and its memory tier) and cache_adapters.c (the adapter store). One
 * mutex guards the memory tier and the connection; every function named
 * "under mu" below expects it held.
 */
#ifndef TASAM_SERVER_CACHE_INTERNAL_H
#define TASAM_SERVER_CACHE_INTERNAL_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include <sqlite3.h>

#include "server/cache.h"

/* One entry of the memory tier. */
typedef struct mem_slot {
    char sha[65];  /* key ("" when the slot is empty) */
    int w, h;      /* image size */
    float *data;   /* `floats` floats (allocated on first use) */
    uint64_t tick; /* last use, larger is newer */
} mem_slot;

struct srv_cache {
    pthread_mutex_t mu; /* guards everything below */
    sqlite3 *db;        /* the connection; NULL after a fatal error */
    char *path;         /* STATE_DIR/cache.db */
    int lock_fd;        /* flock'ed STATE_DIR/tasamd.lock */
    size_t floats;      /* floats per embedding */
    int64_t budget;     /* disk byte budget; 0 disables the disk tier */
    int64_t disk_bytes; /* SUM(bytes) of the rows */
    int64_t disk_rows;  /* COUNT(*) */
    char model_id[64];  /* key part; "" until srv_cache_set_model */
    char precision[8];  /* key part */
    mem_slot *slots;    /* memory tier */
    int n_slots;        /* entries in slots */
    uint64_t tick;      /* LRU clock for the memory tier */
    int64_t clock_ms;   /* last last_used written: strictly increasing, so LRU order has no ties */
    float *scratch;     /* a disk hit lands here when the memory tier has no slots */
    srv_metrics *m;     /* borrowed; may be NULL */
    int64_t ad_budget;  /* adapter byte budget; 0 disables the adapter tier */
    int64_t ad_bytes;   /* SUM(bytes) of the adapter rows */
    int64_t ad_rows;    /* COUNT(*) of the adapter rows */
};

/* Unix milliseconds. */
int64_t srv__cache_now_ms(void);
/* Under mu: a unix-ms timestamp greater than every one written before by
 * this process or found in the database at open. */
int64_t srv__cache_use_stamp(srv_cache *c);
/* CRC-32 of a blob (zlib's polynomial). */
uint32_t srv__cache_blob_crc(const void *p, size_t n);
/* Under mu: the metrics gauges from the totals. */
void srv__cache_gauges(srv_cache *c);
/* Runs SQL without results; returns 0 or the SQLite code. */
int srv__cache_exec(sqlite3 *db, const char *sql);
/* The single integer a PRAGMA/SELECT returns, or -1. */
int64_t srv__cache_query_int(sqlite3 *db, const char *sql);
/* Under mu: re-read the row and byte totals of both tables. */
void srv__cache_refresh_totals(srv_cache *c);
/* Under mu: delete row `id` of `table` ("embedding" or "adapter"); its blob
 * goes with it (ON DELETE CASCADE). */
void srv__cache_delete_from(srv_cache *c, const char *table, int64_t id);
/* Under mu, inside a transaction: store `len` bytes as the blob of row
 * `row` (`table` is "embedding_blob" or "adapter_blob", `key` its row
 * column). Returns 0 or -1 (sqlite3_errmsg has why). */
int srv__cache_insert_blob(srv_cache *c, const char *table, const char *key, int64_t row,
                           const void *data, size_t len);
/* Under mu, inside a transaction: delete the least recently used rows of
 * `table` (never `keep_id`) until *bytes fits `budget`, keeping *bytes and
 * *rows in step; returns how many went. */
int srv__cache_evict_lru(srv_cache *c, const char *table, int64_t keep_id, int64_t *bytes,
                         int64_t *rows, int64_t budget);
/* Under mu, inside a transaction: evict embeddings / adapters (never
 * `keep_id`, -1 for none) until their totals fit their budgets. */
int srv__cache_evict(srv_cache *c, int64_t keep_id);
int srv__cache_ad_evict(srv_cache *c, int64_t keep_id);

#endif
