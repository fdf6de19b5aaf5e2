/*
 * server/cache_db.c: the cache database: open and lock, schema and
 * migrations, integrity and I/O errors (the disk tier goes down and comes
 * back; only a corrupt file is moved aside), the read connections, the
 * writer thread and its queue, LRU eviction, maintenance.
 */
#include "server/cache_internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>
#include <zlib.h>

#include "engine/image.h"
#include "engine/sam.h"
#include "server/log.h"
#include "server/sqlite_db.h"

/* Migrations: entry v-1 takes a database from version v-1 to v. The text
 * is the "-- migration v" block of schema/cache.sql. */
static const char *const cache_migrations[SRV_CACHE_SCHEMA_VERSION] = {
    "CREATE TABLE embedding (\n"
    "    id           INTEGER PRIMARY KEY,\n"
    "    image_sha256 TEXT    NOT NULL,\n"
    "    model_id     TEXT    NOT NULL,\n"
    "    precision    TEXT    NOT NULL,\n"
    "    width        INTEGER NOT NULL,\n"
    "    height       INTEGER NOT NULL,\n"
    "    bytes        INTEGER NOT NULL,\n"
    "    crc32        INTEGER NOT NULL,\n"
    "    created      INTEGER NOT NULL,\n"
    "    last_used    INTEGER NOT NULL,\n"
    "    hits         INTEGER NOT NULL DEFAULT 0,\n"
    "    UNIQUE (image_sha256, model_id, precision)\n"
    ");\n"
    "CREATE INDEX embedding_last_used ON embedding (last_used);\n"
    "CREATE TABLE embedding_blob (\n"
    "    embedding_id INTEGER PRIMARY KEY REFERENCES embedding (id) ON DELETE CASCADE,\n"
    "    data         BLOB NOT NULL\n"
    ");\n",
    "CREATE TABLE adapter (\n"
    "    id               INTEGER PRIMARY KEY,\n"
    "    adapter_id       TEXT    NOT NULL UNIQUE,\n"
    "    task             TEXT    NOT NULL,\n"
    "    task_normalized  TEXT    NOT NULL,\n"
    "    hypernet_id      TEXT    NOT NULL,\n"
    "    hypernet_version TEXT    NOT NULL,\n"
    "    text_model       TEXT    NOT NULL,\n"
    "    rank             INTEGER NOT NULL,\n"
    "    alpha            REAL    NOT NULL,\n"
    "    bytes            INTEGER NOT NULL,\n"
    "    crc32            INTEGER NOT NULL,\n"
    "    created          INTEGER NOT NULL,\n"
    "    last_used        INTEGER NOT NULL,\n"
    "    hits             INTEGER NOT NULL DEFAULT 0\n"
    ");\n"
    "CREATE INDEX adapter_last_used ON adapter (last_used);\n"
    "CREATE TABLE adapter_blob (\n"
    "    adapter_row INTEGER PRIMARY KEY REFERENCES adapter (id) ON DELETE CASCADE,\n"
    "    data        BLOB NOT NULL\n"
    ");\n",
};

/* Exposed for the schema test: migration text taking version v-1 to v. */
const char *srv__cache_migration(int v);
const char *srv__cache_migration(int v)
{
    return v >= 1 && v <= SRV_CACHE_SCHEMA_VERSION ? cache_migrations[v - 1] : NULL;
}

#define AD_COLS                                                                                    \
    "a.adapter_id, a.task, a.task_normalized, a.hypernet_id, a.hypernet_version, a.text_model, "   \
    "a.rank, a.alpha, a.bytes, a.created, a.last_used, a.hits"
#define EMB_KEY "image_sha256=?1 AND model_id=?2 AND precision=?3"

static const char *const rd_sql[RD_COUNT] = {
    [RD_EMB_DIMS] = "SELECT id, crc32, width, height FROM embedding WHERE " EMB_KEY,
    [RD_EMB_GET] = "SELECT e.id, e.width, e.height, e.bytes, e.crc32, b.data FROM embedding e "
                   "JOIN embedding_blob b ON b.embedding_id = e.id WHERE e.image_sha256=?1 AND "
                   "e.model_id=?2 AND e.precision=?3",
    [RD_EMB_META] = "SELECT width, height, bytes, created, last_used, hits, id, crc32 FROM "
                    "embedding WHERE " EMB_KEY,
    [RD_AD_GET] = "SELECT " AD_COLS ", a.crc32, b.data, a.id FROM adapter a JOIN adapter_blob b "
                  "ON b.adapter_row = a.id WHERE a.adapter_id=?1",
    [RD_AD_META] = "SELECT " AD_COLS " FROM adapter a WHERE a.adapter_id=?1",
    [RD_AD_LIST] = "SELECT " AD_COLS " FROM adapter a WHERE a.adapter_id > ?1 ORDER BY "
                   "a.adapter_id LIMIT ?2 OFFSET ?3",
};

static const char *const wr_sql[WR_COUNT] = {
    [WR_BEGIN] = "BEGIN IMMEDIATE",
    [WR_COMMIT] = "COMMIT",
    [WR_ROLLBACK] = "ROLLBACK",
    [WR_EMB_DEL_KEY] = "DELETE FROM embedding WHERE " EMB_KEY,
    [WR_EMB_INS] = "INSERT INTO embedding (image_sha256, model_id, precision, width, height, "
                   "bytes, crc32, created, last_used, hits) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?8,0)",
    [WR_EMB_BLOB] = "INSERT INTO embedding_blob (embedding_id, data) VALUES (?1, ?2)",
    [WR_EMB_TOUCH] = "UPDATE embedding SET last_used=?4, hits=hits+?5 WHERE " EMB_KEY,
    [WR_EMB_DEL_ROW] = "DELETE FROM embedding WHERE id=?1 AND crc32=?2",
    [WR_AD_DEL_KEY] = "DELETE FROM adapter WHERE adapter_id=?1",
    [WR_AD_INS] = "INSERT INTO adapter (adapter_id, task, task_normalized, hypernet_id, "
                  "hypernet_version, text_model, rank, alpha, bytes, crc32, created, last_used, "
                  "hits) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,0)",
    [WR_AD_BLOB] = "INSERT INTO adapter_blob (adapter_row, data) VALUES (?1, ?2)",
    [WR_AD_TOUCH] = "UPDATE adapter SET last_used=?2, hits=hits+?3 WHERE adapter_id=?1",
    [WR_AD_DEL_ROW] = "DELETE FROM adapter WHERE id=?1 AND crc32=?2",
    [WR_AD_CLEAR] = "DELETE FROM adapter",
    [WR_LRU_EMB] = "SELECT id, bytes FROM embedding WHERE id != ?1 ORDER BY last_used, id LIMIT 1",
    [WR_LRU_AD] = "SELECT id, bytes FROM adapter WHERE id != ?1 ORDER BY last_used, id LIMIT 1",
    [WR_DEL_EMB_ID] = "DELETE FROM embedding WHERE id=?1",
    [WR_DEL_AD_ID] = "DELETE FROM adapter WHERE id=?1",
    [WR_TOTAL_EMB] = "SELECT COALESCE(SUM(bytes),0), COUNT(*) FROM embedding",
    [WR_TOTAL_AD] = "SELECT COALESCE(SUM(bytes),0), COUNT(*) FROM adapter",
};

int64_t srv__cache_now_ms(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

uint32_t srv__cache_blob_crc(const void *p, size_t n)
{
    uLong crc = crc32(0L, Z_NULL, 0);
    const Bytef *b = p;
    while (n) {
        uInt k = n > (1u << 30) ? (1u << 30) : (uInt)n;
        crc = crc32(crc, b, k);
        b += k;
        n -= k;
    }
    return (uint32_t)crc;
}

int srv__cache_dims_ok(int w, int h)
{
    return w >= 1 && h >= 1 && (int64_t)w * h <= 1000000000LL &&
           eng_resize_check(w, h, ENG_SAM_IMG) == 0;
}

static int64_t ld(const int64_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static void st64(int64_t *p, int64_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }

void srv__cache_gauges(srv_cache *c)
{
    if (!c->m)
        return;
    int used = 0;
    pthread_mutex_lock(&c->mu);
    for (int i = 0; i < c->n_mem; i++)
        used += c->mem[i].sha[0] && c->mem[i].data;
    pthread_mutex_unlock(&c->mu);
    srv_metrics_gauge_set(&c->m->cache_bytes_disk, ld(&c->shown_disk_bytes));
    srv_metrics_gauge_set(&c->m->cache_entries_disk, ld(&c->shown_disk_rows));
    srv_metrics_gauge_set(&c->m->cache_bytes_mem,
                          (int64_t)used * (int64_t)(c->floats * sizeof(float)));
    srv_metrics_gauge_set(&c->m->adapter_bytes_disk, ld(&c->shown_ad_bytes));
    srv_metrics_gauge_set(&c->m->adapter_entries_disk, ld(&c->shown_ad_rows));
    srv_metrics_gauge_set(&c->m->cache_disk_available,
                          __atomic_load_n(&c->disk_up, __ATOMIC_RELAXED));
    srv_metrics_gauge_set(&c->m->cache_write_queue_bytes,
                          __atomic_load_n(&c->q_bytes, __ATOMIC_RELAXED));
}

/* ---- the read connections ---- */

cache_reader *srv__cache_reader_get(srv_cache *c)
{
    if (!__atomic_load_n(&c->disk_up, __ATOMIC_ACQUIRE))
        return NULL;
    cache_reader *r = NULL;
    for (int i = 0; i < CACHE_READERS && !r; i++)
        if (pthread_mutex_trylock(&c->rd[i].mu) == 0)
            r = &c->rd[i];
    if (!r) {
        r = &c->rd[0];
        pthread_mutex_lock(&r->mu);
    }
    if (!r->db) {
        pthread_mutex_unlock(&r->mu);
        return NULL;
    }
    return r;
}

void srv__cache_reader_put(cache_reader *r)
{
    if (r)
        pthread_mutex_unlock(&r->mu);
}

void srv__cache_reader_failed(srv_cache *c, int rc, const char *what)
{
    if (c->m && (rc & 0xff) == SQLITE_IOERR)
        srv_metrics_add(&c->m->cache_io_errors, 1);
    srv_log_warn("cache: %s: %s", what, sqlite3_errstr(rc));
    if ((rc & 0xff) != SQLITE_IOERR && !srv_db_is_corruption(rc))
        return;
    /* the writer takes the tier down and checks the file again */
    pthread_mutex_lock(&c->wmu);
    __atomic_store_n(&c->disk_kick, 1, __ATOMIC_RELEASE);
    pthread_cond_signal(&c->wcv);
    pthread_mutex_unlock(&c->wmu);
}

/* ---- open, close, move aside ---- */

static const srv_db_schema cache_schema = {"cache", SRV_CACHE_APP_ID, SRV_CACHE_SCHEMA_VERSION,
                                           cache_migrations};

static void close_disk(srv_cache *c)
{
    __atomic_store_n(&c->disk_up, 0, __ATOMIC_RELEASE);
    for (int i = 0; i < CACHE_READERS; i++) {
        cache_reader *r = &c->rd[i];
        pthread_mutex_lock(&r->mu);
        for (int k = 0; k < RD_COUNT; k++) {
            sqlite3_finalize(r->st[k]);
            r->st[k] = NULL;
        }
        sqlite3_close(r->db);
        r->db = NULL;
        pthread_mutex_unlock(&r->mu);
    }
    for (int k = 0; k < WR_COUNT; k++) {
        sqlite3_finalize(c->wst[k]);
        c->wst[k] = NULL;
    }
    if (c->wdb) {
        srv_db_exec(c->wdb, "PRAGMA wal_checkpoint(TRUNCATE)");
        if (sqlite3_close(c->wdb) != SQLITE_OK)
            srv_log_warn("cache: closing %s: %s", c->path, sqlite3_errmsg(c->wdb));
    }
    c->wdb = NULL;
}

/* Contract: the disk tier is down for `why`: logged, visible in /v1/info
 * and the metrics; the writer retries after `retry_s`. */
static void disk_down(srv_cache *c, const char *why, double retry_s)
{
    close_disk(c);
    pthread_mutex_lock(&c->mu);
    snprintf(c->disk_error, sizeof c->disk_error, "%s", why);
    pthread_mutex_unlock(&c->mu);
    pthread_mutex_lock(&c->wmu);
    c->t_retry = mono_s() + retry_s;
    pthread_mutex_unlock(&c->wmu);
    srv_log_error("cache: the disk tier is unavailable: %s; serving from memory, retrying every "
                  "%.0f s",
                  why, CACHE_RETRY_S);
    srv__cache_gauges(c);
}

/* Contract: takes STATE_DIR/tasamd.lock. 0; 1 when the directory or the
 * file cannot be made now (a full or failing disk: retried); -1 when
 * another tasamd holds it (why says so). */
static int take_lock(srv_cache *c, char *why, size_t whylen)
{
    char lockpath[4200];
    if (c->lock_fd >= 0)
        return 0;
    snprintf(lockpath, sizeof lockpath, "%s/tasamd.lock", c->dir);
    c->lock_fd = open(lockpath, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
    if (c->lock_fd < 0) {
        snprintf(why, whylen, "cannot open %.300s: %s", lockpath, strerror(errno));
        return 1;
    }
    if (flock(c->lock_fd, LOCK_EX | LOCK_NB) != 0) {
        snprintf(why, whylen, "state dir '%.200s' is in use by another tasamd (%.200s is locked)",
                 c->dir, lockpath);
        close(c->lock_fd);
        c->lock_fd = -1;
        return -1;
    }
    return 0;
}

/* Contract: opens the disk tier (write connection, migrations, read
 * connections, statements). 0 up; 1 down (why set; retried later); -1 when
 * another tasamd holds the state directory. */
static int open_disk(srv_cache *c, char *why, size_t whylen)
{
    int rc = take_lock(c, why, whylen);
    if (rc != 0)
        return rc;
    rc = srv_db_try_open(&c->wdb, c->path, &cache_schema, SQLITE_OPEN_NOMUTEX, why, whylen);
    if (rc == 2 && c->m)
        srv_metrics_add(&c->m->cache_io_errors, 1);
    if (rc == 1) {
        sqlite3_close(c->wdb);
        c->wdb = NULL;
        if (srv_db_move_aside(c->path, "cache", why, c->corrupt_keep) != 0)
            return 1;
        rc = srv_db_try_open(&c->wdb, c->path, &cache_schema, SQLITE_OPEN_NOMUTEX, why, whylen);
    }
    if (rc != 0)
        goto fail;
    for (int k = 0; k < WR_COUNT; k++)
        if ((rc = sqlite3_prepare_v3(c->wdb, wr_sql[k], -1, SQLITE_PREPARE_PERSISTENT, &c->wst[k],
                                     NULL)) != SQLITE_OK) {
            snprintf(why, whylen, "preparing statements: %s", sqlite3_errmsg(c->wdb));
            goto fail;
        }
    for (int i = 0; i < CACHE_READERS; i++) {
        cache_reader *r = &c->rd[i];
        pthread_mutex_lock(&r->mu);
        rc = sqlite3_open_v2(c->path, &r->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);
        if (rc == SQLITE_OK) {
            sqlite3_extended_result_codes(r->db, 1);
            sqlite3_busy_timeout(r->db, 5000);
            for (int k = 0; k < RD_COUNT && rc == SQLITE_OK; k++)
                rc = sqlite3_prepare_v3(r->db, rd_sql[k], -1, SQLITE_PREPARE_PERSISTENT, &r->st[k],
                                        NULL);
        }
        if (rc != SQLITE_OK)
            snprintf(why, whylen, "opening a read connection: %s",
                     r->db ? sqlite3_errmsg(r->db) : sqlite3_errstr(rc));
        pthread_mutex_unlock(&r->mu);
        if (rc != SQLITE_OK)
            goto fail;
    }
    srv__cache_refresh_totals(c);
    int64_t last = 0;
    if (srv_db_query_rc(c->wdb,
                        "SELECT MAX(COALESCE((SELECT MAX(last_used) FROM embedding), 0), "
                        "COALESCE((SELECT MAX(last_used) FROM adapter), 0))",
                        &last) == SQLITE_OK &&
        last > c->clock_ms)
        c->clock_ms = last;
    pthread_mutex_lock(&c->mu);
    c->disk_error[0] = 0;
    pthread_mutex_unlock(&c->mu);
    __atomic_store_n(&c->disk_up, 1, __ATOMIC_RELEASE);
    return 0;
fail:
    close_disk(c);
    return 1;
}

/* ---- the writer ---- */

cache_op *srv__cache_op_new(cache_op_kind kind)
{
    cache_op *op = calloc(1, sizeof *op);
    if (op)
        op->kind = kind;
    return op;
}

void srv__cache_op_free(cache_op *op)
{
    if (!op)
        return;
    free(op->blob);
    free(op->meta);
    free(op);
}

/* The last op of `list` of kind k1 or k2 on `key`, or NULL. */
static cache_op *last_of(cache_op *list, const char *key, cache_op_kind k1, cache_op_kind k2)
{
    cache_op *hit = NULL;
    for (cache_op *op = list; op; op = op->next)
        if ((op->kind == k1 || op->kind == k2) && !strcmp(op->key, key))
            hit = op;
    return hit;
}

cache_op *srv__cache_queued(srv_cache *c, const char *key, cache_op_kind k1, cache_op_kind k2)
{
    /* the queue is newer than the batch being written */
    cache_op *hit = last_of(c->q_head, key, k1, k2);
    return hit ? hit : last_of(c->q_busy, key, k1, k2);
}

int srv__cache_enqueue(srv_cache *c, cache_op *op)
{
    int is_put = op->kind == OP_EMB_PUT || op->kind == OP_AD_PUT;
    pthread_mutex_lock(&c->wmu);
    if (op->kind == OP_EMB_TOUCH || op->kind == OP_AD_TOUCH) {
        /* a touch already queued for the key is folded into this one, which
         * goes last: last_used follows the order of use */
        cache_op *prev = NULL;
        for (cache_op *t = c->q_head; t; prev = t, t = t->next) {
            if (t->kind != op->kind || strcmp(t->key, op->key) != 0 ||
                strcmp(t->model_id, op->model_id) != 0 || strcmp(t->precision, op->precision) != 0)
                continue;
            op->hits += t->hits;
            if (prev)
                prev->next = t->next;
            else
                c->q_head = t->next;
            if (c->q_tail == t)
                c->q_tail = prev;
            c->q_ops--;
            srv__cache_op_free(t);
            break;
        }
    }
    if (op->kind == OP_MAINTAIN && last_of(c->q_head, "", OP_MAINTAIN, OP_MAINTAIN)) {
        pthread_mutex_unlock(&c->wmu);
        srv__cache_op_free(op);
        return 0;
    }
    int down = !__atomic_load_n(&c->disk_up, __ATOMIC_ACQUIRE);
    if (c->stop || (is_put && (c->q_bytes + (int64_t)op->len > CACHE_WRITE_QUEUE_MAX || down)) ||
        c->q_ops >= CACHE_WRITE_QUEUE_OPS ||
        (down && op->kind != OP_MAINTAIN && op->kind != OP_BARRIER && !op->sync)) {
        pthread_mutex_unlock(&c->wmu);
        if (is_put && c->m)
            srv_metrics_add(&c->m->cache_write_dropped, 1);
        if (op->sync) {
            op->result = -1;
            return -1;
        }
        srv__cache_op_free(op);
        return -1;
    }
    op->next = NULL;
    if (c->q_tail)
        c->q_tail->next = op;
    else
        c->q_head = op;
    c->q_tail = op;
    __atomic_store_n(&c->q_bytes, c->q_bytes + (int64_t)op->len, __ATOMIC_RELAXED);
    c->q_ops++;
    pthread_cond_signal(&c->wcv);
    if (op->sync)
        while (!op->done)
            pthread_cond_wait(&c->wdone, &c->wmu);
    pthread_mutex_unlock(&c->wmu);
    if (c->m)
        srv_metrics_gauge_set(&c->m->cache_write_queue_bytes,
                              __atomic_load_n(&c->q_bytes, __ATOMIC_RELAXED));
    return 0;
}

/* Contract: a strictly increasing unix-ms stamp for last_used (writer). */
static int64_t use_stamp(srv_cache *c)
{
    int64_t t = srv__cache_now_ms();
    c->clock_ms = t > c->clock_ms ? t : c->clock_ms + 1;
    return c->clock_ms;
}

void srv__cache_stmt_done(sqlite3_stmt *st)
{
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
}

int srv__cache_insert_with_blob(srv_cache *c, sqlite3_stmt *row_st, sqlite3_stmt *blob_st,
                                cache_op *op)
{
    int rc = sqlite3_step(row_st);
    srv__cache_stmt_done(row_st);
    if (rc != SQLITE_DONE)
        return rc;
    op->row = sqlite3_last_insert_rowid(c->wdb);
    sqlite3_bind_int64(blob_st, 1, op->row);
    sqlite3_bind_blob64(blob_st, 2, op->blob, op->len, SQLITE_STATIC);
    rc = sqlite3_step(blob_st);
    srv__cache_stmt_done(blob_st);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

static int step_reset(sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? SQLITE_OK : rc;
}

void srv__cache_refresh_totals(srv_cache *c)
{
    for (int ad = 0; ad < 2 && c->wdb; ad++) {
        sqlite3_stmt *st = c->wst[ad ? WR_TOTAL_AD : WR_TOTAL_EMB];
        if (sqlite3_step(st) == SQLITE_ROW) {
            st64(ad ? &c->ad_bytes : &c->disk_bytes, sqlite3_column_int64(st, 0));
            st64(ad ? &c->ad_rows : &c->disk_rows, sqlite3_column_int64(st, 1));
        }
        sqlite3_reset(st);
    }
    if (c->wdb && sqlite3_get_autocommit(c->wdb)) {
        st64(&c->shown_disk_bytes, ld(&c->disk_bytes));
        st64(&c->shown_disk_rows, ld(&c->disk_rows));
        st64(&c->shown_ad_bytes, ld(&c->ad_bytes));
        st64(&c->shown_ad_rows, ld(&c->ad_rows));
    }
}

int srv__cache_evict(srv_cache *c, int ad, int64_t keep_id)
{
    int64_t *bytes = ad ? &c->ad_bytes : &c->disk_bytes, *rows = ad ? &c->ad_rows : &c->disk_rows;
    int64_t budget = ld(ad ? &c->ad_budget : &c->budget);
    sqlite3_stmt *lru = c->wst[ad ? WR_LRU_AD : WR_LRU_EMB];
    sqlite3_stmt *del = c->wst[ad ? WR_DEL_AD_ID : WR_DEL_EMB_ID];
    int n = 0, rc;
    while (ld(bytes) > budget) {
        int64_t id = -1, b = 0;
        sqlite3_bind_int64(lru, 1, keep_id);
        rc = sqlite3_step(lru);
        if (rc == SQLITE_ROW) {
            id = sqlite3_column_int64(lru, 0);
            b = sqlite3_column_int64(lru, 1);
        }
        sqlite3_reset(lru);
        if (rc != SQLITE_ROW && rc != SQLITE_DONE)
            return -rc;
        if (id < 0)
            break;
        sqlite3_bind_int64(del, 1, id);
        if ((rc = step_reset(del)) != SQLITE_OK)
            return -rc;
        st64(bytes, ld(bytes) - b);
        st64(rows, ld(rows) - 1);
        n++;
    }
    if (n && c->m)
        srv_metrics_add(ad ? &c->m->adapter_evictions_disk : &c->m->cache_evictions, (uint64_t)n);
    return n;
}

/* Contract: a failed write: a full disk drops the write and keeps the
 * tier; an I/O error or corruption takes the tier down (a corrupt file is
 * checked again, and moved aside, at once). */
static void write_failed(srv_cache *c, int rc, const char *what)
{
    if (c->m && ((rc & 0xff) == SQLITE_IOERR || (rc & 0xff) == SQLITE_FULL))
        srv_metrics_add(&c->m->cache_io_errors, 1);
    if ((rc & 0xff) == SQLITE_FULL) {
        double now = mono_s();
        if (now - c->t_full_log >= CACHE_RETRY_S) {
            srv_log_error("cache: %s: the disk is full (%s); cache writes are dropped until "
                          "there is room",
                          what, sqlite3_errstr(rc));
            c->t_full_log = now;
        }
        return;
    }
    if ((rc & 0xff) == SQLITE_IOERR || srv_db_is_corruption(rc)) {
        char why[256];
        snprintf(why, sizeof why, "%s: %s", what, sqlite3_errstr(rc));
        disk_down(c, why, srv_db_is_corruption(rc) ? 0 : CACHE_RETRY_S);
        return;
    }
    srv_log_warn("cache: %s: %s", what, sqlite3_errstr(rc));
}

/* Contract: runs one queued operation; small ones (touches, deletions)
 * share the open transaction *in_tx, a put or clear gets its own. */
static void run_op(srv_cache *c, cache_op *op, int *in_tx)
{
    int big = op->kind == OP_EMB_PUT || op->kind == OP_AD_PUT || op->kind == OP_AD_CLEAR ||
              op->kind == OP_MAINTAIN;
    int rc = SQLITE_OK;
    if (big && *in_tx) {
        if ((rc = step_reset(c->wst[WR_COMMIT])) != SQLITE_OK) {
            step_reset(c->wst[WR_ROLLBACK]);
            write_failed(c, rc, "updating last use");
        }
        *in_tx = 0;
        srv__cache_refresh_totals(c);
    }
    if (!__atomic_load_n(&c->disk_up, __ATOMIC_ACQUIRE) || op->kind == OP_BARRIER) {
        if (op->kind == OP_EMB_PUT || op->kind == OP_AD_PUT) {
            if (c->m)
                srv_metrics_add(&c->m->cache_write_dropped, 1);
        }
        op->result = -1;
        return;
    }
    if (op->kind == OP_MAINTAIN) {
        for (int ad = 0; ad < 2; ad++) {
            if (ld(ad ? &c->ad_bytes : &c->disk_bytes) <= ld(ad ? &c->ad_budget : &c->budget))
                continue;
            if ((rc = step_reset(c->wst[WR_BEGIN])) != SQLITE_OK)
                break;
            int n = srv__cache_evict(c, ad, -1);
            if (n < 0 || (rc = step_reset(c->wst[WR_COMMIT])) != SQLITE_OK) {
                rc = n < 0 ? -n : rc;
                step_reset(c->wst[WR_ROLLBACK]);
                break;
            }
            if (n)
                srv_log_info("cache: evicted %d %s to fit the budget of %lld bytes", n,
                             ad ? "adapters" : "embeddings",
                             (long long)ld(ad ? &c->ad_budget : &c->budget));
        }
        srv__cache_refresh_totals(c);
        if (rc != SQLITE_OK)
            write_failed(c, rc, "maintenance");
        else
            srv_db_exec(c->wdb, "PRAGMA wal_checkpoint(PASSIVE)");
        return;
    }
    if (!big && !*in_tx) {
        if ((rc = step_reset(c->wst[WR_BEGIN])) != SQLITE_OK) {
            write_failed(c, rc, "beginning a transaction");
            return;
        }
        *in_tx = 1;
    }
    if (big && (rc = step_reset(c->wst[WR_BEGIN])) != SQLITE_OK) {
        write_failed(c, rc, "beginning a transaction");
        return;
    }
    int64_t stamp = use_stamp(c);
    int is_ad = op->kind >= OP_AD_PUT && op->kind <= OP_AD_CLEAR;
    rc = is_ad ? srv__cache_write_adapter(c, op, stamp) : srv__cache_write_embedding(c, op, stamp);
    if (rc == SQLITE_OK && (op->kind == OP_EMB_PUT || op->kind == OP_AD_PUT)) {
        srv__cache_refresh_totals(c);
        int n = srv__cache_evict(c, is_ad, op->row);
        if (n < 0)
            rc = -n;
    }
    if (!big)
        goto small;
    if (rc == SQLITE_OK)
        rc = step_reset(c->wst[WR_COMMIT]);
    if (rc != SQLITE_OK) {
        step_reset(c->wst[WR_ROLLBACK]);
        if (op->kind == OP_EMB_PUT || op->kind == OP_AD_PUT) {
            if (c->m)
                srv_metrics_add(&c->m->cache_write_dropped, 1);
        }
        op->result = -1;
        write_failed(c, rc,
                     op->kind == OP_EMB_PUT  ? "storing an embedding"
                     : op->kind == OP_AD_PUT ? "storing an adapter"
                                             : "deleting the adapters");
    }
    srv__cache_refresh_totals(c);
    return;
small:
    if (rc != SQLITE_OK) {
        step_reset(c->wst[WR_ROLLBACK]);
        *in_tx = 0;
        write_failed(c, rc, "updating the cache");
    }
}

static void *writer_main(void *arg)
{
    srv_cache *c = arg;
    pthread_mutex_lock(&c->wmu);
    for (;;) {
        while (!c->q_head && !c->stop && !__atomic_load_n(&c->disk_kick, __ATOMIC_ACQUIRE) &&
               !(!__atomic_load_n(&c->disk_up, __ATOMIC_ACQUIRE) && mono_s() >= c->t_retry)) {
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            ts.tv_sec += 1;
            pthread_cond_timedwait(&c->wcv, &c->wmu, &ts);
        }
        if (c->stop && !c->q_head)
            break;
        int retry =
            !__atomic_load_n(&c->disk_up, __ATOMIC_ACQUIRE) && !c->stop && mono_s() >= c->t_retry;
        cache_op *batch = c->q_head;
        c->q_busy = batch; /* readers still find it until it is committed */
        c->q_head = c->q_tail = NULL;
        __atomic_store_n(&c->q_bytes, 0, __ATOMIC_RELAXED);
        c->q_ops = 0;
        pthread_mutex_unlock(&c->wmu);

        if (__atomic_exchange_n(&c->disk_kick, 0, __ATOMIC_ACQ_REL) &&
            __atomic_load_n(&c->disk_up, __ATOMIC_ACQUIRE))
            disk_down(c, "a read failed with an I/O error or found corruption", 0);
        if (retry && !__atomic_load_n(&c->disk_up, __ATOMIC_ACQUIRE)) {
            char why[512];
            int rc = open_disk(c, why, sizeof why);
            if (rc == 0) {
                srv_log_info("cache: the disk tier is back: %s, %lld embeddings, %lld adapters",
                             c->path, (long long)ld(&c->disk_rows), (long long)ld(&c->ad_rows));
            } else {
                pthread_mutex_lock(&c->mu);
                int same = !strcmp(c->disk_error, why);
                snprintf(c->disk_error, sizeof c->disk_error, "%s", why);
                pthread_mutex_unlock(&c->mu);
                if (!same)
                    srv_log_error("cache: the disk tier is still unavailable: %s", why);
                pthread_mutex_lock(&c->wmu);
                c->t_retry = mono_s() + CACHE_RETRY_S;
                pthread_mutex_unlock(&c->wmu);
            }
        }
        int in_tx = 0;
        for (cache_op *op = batch; op; op = op->next)
            run_op(c, op, &in_tx);
        if (in_tx) {
            int rc = step_reset(c->wst[WR_COMMIT]);
            if (rc != SQLITE_OK) {
                step_reset(c->wst[WR_ROLLBACK]);
                write_failed(c, rc, "updating last use");
            }
            srv__cache_refresh_totals(c);
        }
        srv__cache_gauges(c);

        pthread_mutex_lock(&c->wmu);
        c->q_busy = NULL;
        int woke = 0;
        while (batch) {
            cache_op *op = batch;
            batch = op->next;
            if (op->sync) {
                op->done = 1; /* the waiting thread frees it */
                woke = 1;
            } else {
                srv__cache_op_free(op);
            }
        }
        if (woke)
            pthread_cond_broadcast(&c->wdone);
    }
    pthread_mutex_unlock(&c->wmu);
    return NULL;
}

/* ---- the public part ---- */

int srv_cache_open(srv_cache **out, const char *state_dir, size_t floats, int64_t budget_bytes,
                   int mem_slots, int corrupt_keep, srv_metrics *m, char *err, size_t errlen)
{
    srv_cache *c;
    char why[512] = "";
    *out = NULL;
    if (srv_mkdirs(state_dir) != 0 && errno != ENOSPC && errno != EIO && errno != EDQUOT &&
        errno != EROFS)
        return srv_errf(err, errlen, "state dir '%s': cannot create: %s", state_dir,
                        strerror(errno));
    c = calloc(1, sizeof *c);
    if (!c)
        return srv_errf(err, errlen, "out of memory");
    pthread_mutex_init(&c->mu, NULL);
    pthread_mutex_init(&c->wmu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&c->wcv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_cond_init(&c->wdone, NULL);
    for (int i = 0; i < CACHE_READERS; i++)
        pthread_mutex_init(&c->rd[i].mu, NULL);
    c->lock_fd = -1;
    c->floats = floats;
    c->budget = budget_bytes;
    c->m = m;
    c->corrupt_keep = corrupt_keep;
    c->host_slots = mem_slots > 0 ? mem_slots : 0;
    c->device_slots = c->host_slots;
    c->n_mem = c->host_slots + c->device_slots;
    if (asprintf(&c->path, "%s/cache.db", state_dir) < 0 || !(c->dir = strdup(state_dir))) {
        srv_errf(err, errlen, "out of memory");
        goto err;
    }
    if (c->n_mem > 0 && !(c->mem = calloc((size_t)c->n_mem, sizeof *c->mem))) {
        srv_errf(err, errlen, "out of memory");
        goto err;
    }
    int rc = open_disk(c, why, sizeof why);
    if (rc < 0) {
        srv_errf(err, errlen, "%s", why);
        goto err;
    }
    if (rc > 0) {
        pthread_mutex_lock(&c->mu);
        snprintf(c->disk_error, sizeof c->disk_error, "%s", why);
        pthread_mutex_unlock(&c->mu);
        c->t_retry = mono_s() + CACHE_RETRY_S;
        srv_log_error("cache: %s: the disk tier is unavailable (%s); starting with the memory "
                      "tier only and retrying every %.0f s",
                      c->path, why, CACHE_RETRY_S);
    } else {
        srv_log_info("cache: %s: %lld embeddings, %lld bytes (budget %lld); %d memory slots; "
                     "%lld adapters, %lld bytes",
                     c->path, (long long)ld(&c->disk_rows), (long long)ld(&c->disk_bytes),
                     (long long)budget_bytes, mem_slots, (long long)ld(&c->ad_rows),
                     (long long)ld(&c->ad_bytes));
    }
    int prc = pthread_create(&c->writer, NULL, writer_main, c);
    if (prc != 0) {
        srv_errf(err, errlen, "cache: cannot start the writer thread: %s", strerror(prc));
        goto err;
    }
    c->writer_started = 1;
    srv__cache_gauges(c);
    *out = c;
    return 0;
err:
    srv_cache_close(c);
    return -1;
}

void srv_cache_close(srv_cache *c)
{
    if (!c)
        return;
    if (c->writer_started) {
        /* the writer drains what is queued, then exits */
        pthread_mutex_lock(&c->wmu);
        c->stop = 1;
        pthread_cond_signal(&c->wcv);
        pthread_mutex_unlock(&c->wmu);
        pthread_join(c->writer, NULL);
    }
    while (c->q_head) {
        cache_op *op = c->q_head;
        c->q_head = op->next;
        srv__cache_op_free(op);
    }
    close_disk(c);
    for (int i = 0; i < c->n_mem && c->mem; i++)
        free(c->mem[i].data);
    free(c->mem);
    free(c->path);
    free(c->dir);
    if (c->lock_fd >= 0)
        close(c->lock_fd);
    for (int i = 0; i < CACHE_READERS; i++)
        pthread_mutex_destroy(&c->rd[i].mu);
    pthread_cond_destroy(&c->wcv);
    pthread_cond_destroy(&c->wdone);
    pthread_mutex_destroy(&c->wmu);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

void srv_cache_set_model(srv_cache *c, const char *model_id, const char *precision)
{
    pthread_mutex_lock(&c->mu);
    snprintf(c->model_id, sizeof c->model_id, "%s", model_id);
    snprintf(c->precision, sizeof c->precision, "%s", precision);
    pthread_mutex_unlock(&c->mu);
}

void srv_cache_set_budget(srv_cache *c, int64_t budget_bytes) { st64(&c->budget, budget_bytes); }

void srv_cache_set_adapter_budget(srv_cache *c, int64_t budget_bytes)
{
    st64(&c->ad_budget, budget_bytes);
}

void srv_cache_maintain(srv_cache *c)
{
    if (!c)
        return;
    cache_op *op = srv__cache_op_new(OP_MAINTAIN);
    if (op)
        srv__cache_enqueue(c, op);
    srv__cache_gauges(c);
}

void srv_cache_flush(srv_cache *c)
{
    cache_op *op = srv__cache_op_new(OP_BARRIER);
    if (!op)
        return;
    op->sync = 1;
    srv__cache_enqueue(c, op);
    srv__cache_op_free(op);
}

void srv_cache_retry(srv_cache *c)
{
    pthread_mutex_lock(&c->wmu);
    c->t_retry = 0;
    pthread_cond_signal(&c->wcv);
    pthread_mutex_unlock(&c->wmu);
}

int srv_cache_disk_status(srv_cache *c, char *why, size_t n)
{
    int up = __atomic_load_n(&c->disk_up, __ATOMIC_ACQUIRE);
    pthread_mutex_lock(&c->mu);
    snprintf(why, n, "%s", up ? "" : c->disk_error);
    pthread_mutex_unlock(&c->mu);
    return up;
}

const char *srv_cache_path(const srv_cache *c) { return c->path; }
