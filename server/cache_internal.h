/*
 * server/cache_internal.h: what the cache's files share (not a public
 * header; only server/cache*.c include it).
 *
 * The cache is three files: cache_db.c (the database: open, lock, schema
 * and migrations, integrity and I/O-error handling, the read connections,
 * the writer thread, LRU eviction, maintenance), cache.c (the embedding
 * table and the memory tier) and cache_adapters.c (the adapter store).
 *
 * Threads and locks, never held across each other except as listed:
 *   - mu guards the memory tier (index of embeddings in host memory or on
 *     the decoder's device), the model key and the disk state words; no
 *     I/O is done under it;
 *   - each read connection has its own mutex, held while its prepared
 *     statements run (any thread: HTTP threads and the worker);
 *   - wmu guards the writer's queue; the writer thread alone owns the
 *     write connection and its statements. Every insert, touch, delete and
 *     eviction is an operation on that queue, so neither the inference
 *     worker nor an HTTP thread ever waits for a disk write.
 * Order when nested: a read connection's mutex, then wmu (a reader queues
 * the deletion of a corrupt row it found); mu is a leaf.
 */
#ifndef TASAM_SERVER_CACHE_INTERNAL_H
#define TASAM_SERVER_CACHE_INTERNAL_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include <sqlite3.h>

#include "server/cache.h"

/* Read connections (HTTP threads and the worker share them). */
#define CACHE_READERS 2
/* Bytes of queued writes (embeddings and adapter blobs) beyond which new
 * puts are dropped (counted in tasam_cache_write_dropped_total). */
#define CACHE_WRITE_QUEUE_MAX (64LL * 1024 * 1024)
/* Operations queued at most (touches and deletions are small). */
#define CACHE_WRITE_QUEUE_OPS 100000
/* Seconds between attempts to bring an unavailable disk tier back. */
#define CACHE_RETRY_S 30.0

/* Statements of a read connection, prepared once per connection. */
enum {
    RD_EMB_DIMS = 0, /* id, crc32, width, height of (sha, model, precision) */
    RD_EMB_GET,      /* id, width, height, bytes, crc32, blob */
    RD_EMB_META,     /* width, height, bytes, created, last_used, hits, id, crc32 */
    RD_AD_GET,       /* adapter columns, crc32, blob, row id */
    RD_AD_META,      /* adapter columns */
    RD_AD_LIST,      /* adapter columns of a page */
    RD_COUNT
};

/* Statements of the write connection (writer thread only). */
enum {
    WR_BEGIN = 0,
    WR_COMMIT,
    WR_ROLLBACK,
    WR_EMB_DEL_KEY, /* delete (sha, model, precision) */
    WR_EMB_INS,     /* insert an embedding row */
    WR_EMB_BLOB,    /* insert its blob */
    WR_EMB_TOUCH,   /* last_used, hits += n */
    WR_EMB_DEL_ROW, /* delete row id with crc32 (a corrupt row a reader found) */
    WR_AD_DEL_KEY,  /* delete adapter_id */
    WR_AD_INS,
    WR_AD_BLOB,
    WR_AD_TOUCH,
    WR_AD_DEL_ROW,
    WR_AD_CLEAR,   /* delete every adapter */
    WR_LRU_EMB,    /* least recently used embedding other than ?1 */
    WR_LRU_AD,     /* least recently used adapter other than ?1 */
    WR_DEL_EMB_ID, /* delete embedding row id */
    WR_DEL_AD_ID,  /* delete adapter row id */
    WR_TOTAL_EMB,  /* SUM(bytes), COUNT(*) of embeddings */
    WR_TOTAL_AD,   /* ... of adapters */
    WR_COUNT
};

/* One read connection. */
typedef struct cache_reader {
    pthread_mutex_t mu;         /* held while its statements run */
    sqlite3 *db;                /* NULL while the disk tier is down */
    sqlite3_stmt *st[RD_COUNT]; /* prepared for the life of db */
} cache_reader;

/* One embedding the memory tier knows about. */
typedef struct mem_entry {
    char sha[65];  /* key ("" when the entry is free) */
    int w, h;      /* image size */
    float *data;   /* host copy (`floats` floats), or NULL */
    int on_device; /* the engine holds it resident (the worker says so) */
    uint64_t tick; /* last use, larger is newer */
} mem_entry;

/* What a queued write does. */
typedef enum cache_op_kind {
    OP_EMB_PUT = 0, /* store an embedding row and blob, evicting to the budget */
    OP_EMB_TOUCH,   /* bump last_used and hits */
    OP_EMB_DEL_ROW, /* drop a corrupt row (id, crc32) */
    OP_AD_PUT,      /* store an adapter row and blob, evicting to the budget */
    OP_AD_TOUCH,
    OP_AD_DEL,     /* drop an adapter by id (it did not parse) */
    OP_AD_DEL_ROW, /* drop a corrupt adapter row (id, crc32) */
    OP_AD_CLEAR,   /* delete every adapter (synchronous: the count comes back) */
    OP_MAINTAIN,   /* evict to the budgets, checkpoint the WAL, retry a down tier */
    OP_BARRIER     /* nothing: srv_cache_flush waits for it */
} cache_op_kind;

typedef struct cache_op {
    cache_op_kind kind;
    char key[65];      /* sha (embeddings) or adapter id */
    char model_id[64]; /* embedding key parts, as they were when queued */
    char precision[8];
    int w, h;               /* OP_EMB_PUT */
    int64_t row, crc;       /* *_DEL_ROW */
    int hits;               /* touches folded into this one */
    uint8_t *blob;          /* *_PUT payload (owned) */
    size_t len;             /* bytes at blob */
    srv_adapter_meta *meta; /* OP_AD_PUT (owned) */
    int sync;               /* a thread waits for it (wcv_done) */
    int done;               /* set by the writer when sync */
    int64_t result;         /* OP_AD_CLEAR: rows deleted, -1 on error */
    struct cache_op *next;  /* queue link */
} cache_op;

struct srv_cache {
    pthread_mutex_t mu; /* guards the fields up to `m` (see the top) */
    char *path;         /* STATE_DIR/cache.db */
    char *dir;          /* STATE_DIR */
    int lock_fd;        /* flock'ed STATE_DIR/tasamd.lock, -1 while not held */
    size_t floats;      /* floats per embedding */
    char model_id[64];  /* key part; "" until srv_cache_set_model */
    char precision[8];  /* key part */
    mem_entry *mem;     /* memory tier index */
    int n_mem;          /* entries in mem (host copies + device slots) */
    int host_slots;     /* host copies kept at most */
    int device_slots;   /* embeddings the engine keeps resident */
    uint64_t tick;      /* LRU clock of mem */
    srv_metrics *m;     /* borrowed; may be NULL */
    int corrupt_keep;   /* cache.db.corrupt-* files kept */

    int disk_up;          /* atomic: the disk tier works */
    int disk_kick;        /* atomic: a reader saw an I/O error; the writer re-checks */
    char disk_error[512]; /* why it is down (under mu) */
    int64_t budget;       /* atomic: embedding byte budget; 0 disables the disk tier */
    int64_t ad_budget;    /* atomic: adapter byte budget; 0 disables the adapter tier */
    /* The writer's totals, inside its open transaction (what eviction
     * counts against the budgets). */
    int64_t disk_bytes; /* atomic: SUM(bytes) of the embedding rows */
    int64_t disk_rows;  /* atomic: COUNT(*) */
    int64_t ad_bytes;   /* atomic: SUM(bytes) of the adapter rows */
    int64_t ad_rows;    /* atomic: COUNT(*) */
    /* The same as last committed: what metrics and listings show, so that
     * a row counted there survives a crash. */
    int64_t shown_disk_bytes, shown_disk_rows, shown_ad_bytes, shown_ad_rows; /* atomic */

    cache_reader rd[CACHE_READERS]; /* read connections */

    pthread_mutex_t wmu;         /* guards the queue below */
    pthread_cond_t wcv;          /* work for the writer */
    pthread_cond_t wdone;        /* a synchronous operation finished */
    cache_op *q_head, *q_tail;   /* queued writes, oldest first */
    cache_op *q_busy;            /* the batch the writer is running, until committed */
    int64_t q_bytes;             /* payload bytes queued */
    int q_ops;                   /* operations queued */
    int stop;                    /* the writer drains the queue and exits */
    pthread_t writer;            /* the writer thread */
    int writer_started;          /* it exists */
    sqlite3 *wdb;                /* the write connection (writer thread; NULL while down) */
    sqlite3_stmt *wst[WR_COUNT]; /* its statements */
    int64_t clock_ms;            /* last last_used written (writer): strictly increasing */
    double t_retry;              /* when to retry a down disk tier (writer) */
    double t_full_log;           /* last "disk full" log line (writer) */
};

/* Unix milliseconds. */
int64_t srv__cache_now_ms(void);
/* CRC-32 of a blob (zlib's polynomial). */
uint32_t srv__cache_blob_crc(const void *p, size_t n);
/* The metrics gauges from the totals and the memory tier (takes mu). */
void srv__cache_gauges(srv_cache *c);
/* Reset a statement and clear its bindings, ready for the next use. */
void srv__cache_stmt_done(sqlite3_stmt *st);
/* Writer thread: step row_st (an INSERT its caller has bound), then store
 * op's blob under the new rowid with blob_st (bound: 1 rowid, 2 blob) and
 * set op->row. Returns SQLITE_OK or the failing step's code. */
int srv__cache_insert_with_blob(srv_cache *c, sqlite3_stmt *row_st, sqlite3_stmt *blob_st,
                                cache_op *op);

/* A read connection with its mutex held, or NULL while the disk tier is
 * down (then nothing is held). Release with srv__cache_reader_put. */
cache_reader *srv__cache_reader_get(srv_cache *c);
void srv__cache_reader_put(cache_reader *r);
/* A reader's statement failed with SQLite code rc: an I/O error or
 * corruption takes the disk tier down (the writer closes and retries). */
void srv__cache_reader_failed(srv_cache *c, int rc, const char *what);

/* Queue a write (the cache takes op and its payload). Returns 0, or -1
 * when it was dropped (queue full, disk tier down): op is freed then. A
 * sync op is waited for and its result returned through op->result (the
 * caller frees it). */
int srv__cache_enqueue(srv_cache *c, cache_op *op);
/* A new operation (zeroed), or NULL. */
cache_op *srv__cache_op_new(cache_op_kind kind);
void srv__cache_op_free(cache_op *op);
/* Under wmu: the newest op on `key` of kinds k1/k2, queued or in the batch
 * being written (readers see it until its transaction has committed). */
cache_op *srv__cache_queued(srv_cache *c, const char *key, cache_op_kind k1, cache_op_kind k2);

/* Writer thread: run one operation on the write connection (cache.c and
 * cache_adapters.c implement their kinds). Returns 0 or the SQLite code. */
int srv__cache_write_embedding(srv_cache *c, cache_op *op, int64_t stamp);
int srv__cache_write_adapter(srv_cache *c, cache_op *op, int64_t stamp);
/* Writer thread, inside a transaction: evict LRU rows of embeddings
 * (adapters: `ad`) other than row keep_id until they fit their budget;
 * returns how many went, or a negative SQLite code. */
int srv__cache_evict(srv_cache *c, int ad, int64_t keep_id);
/* Writer thread: re-read the row and byte totals (and publish them as the
 * shown_* ones when no transaction is open). */
void srv__cache_refresh_totals(srv_cache *c);

/* 1 when an image size could have come from a decode (1 <= w, h; w * h
 * within the largest max-pixels; an aspect ratio SAM can resize). */
int srv__cache_dims_ok(int w, int h);

#endif
