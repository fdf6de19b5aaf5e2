/*
 * server/cache_db.c: the cache database: open (lock, schema, migrations, integrity), blobs,
 * LRU eviction and maintenance.
 */
#include "server/cache_internal.h"

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

int64_t srv__cache_now_ms(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

/* Contract: under mu; a unix-ms timestamp greater than every one written
 * before by this process or found in the database at open. */
int64_t srv__cache_use_stamp(srv_cache *c)
{
    int64_t t = srv__cache_now_ms();
    c->clock_ms = t > c->clock_ms ? t : c->clock_ms + 1;
    return c->clock_ms;
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

void srv__cache_gauges(srv_cache *c)
{
    if (!c->m)
        return;
    int used = 0;
    for (int i = 0; i < c->n_slots; i++)
        used += c->slots[i].sha[0] != 0;
    srv_metrics_gauge_set(&c->m->cache_bytes_disk, c->disk_bytes);
    srv_metrics_gauge_set(&c->m->cache_entries_disk, c->disk_rows);
    srv_metrics_gauge_set(&c->m->cache_bytes_mem,
                          (int64_t)used * (int64_t)(c->floats * sizeof(float)));
    srv_metrics_gauge_set(&c->m->adapter_bytes_disk, c->ad_bytes);
    srv_metrics_gauge_set(&c->m->adapter_entries_disk, c->ad_rows);
}

int srv__cache_exec(sqlite3 *db, const char *sql) { return srv_db_exec(db, sql); }

int64_t srv__cache_query_int(sqlite3 *db, const char *sql) { return srv_db_query_int(db, sql); }

void srv__cache_refresh_totals(srv_cache *c)
{
    sqlite3_stmt *st = NULL;
    c->disk_bytes = c->disk_rows = 0;
    c->ad_bytes = c->ad_rows = 0;
    if (!c->db)
        return;
    if (sqlite3_prepare_v2(c->db, "SELECT COALESCE(SUM(bytes),0), COUNT(*) FROM embedding", -1, &st,
                           NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW) {
        c->disk_bytes = sqlite3_column_int64(st, 0);
        c->disk_rows = sqlite3_column_int64(st, 1);
    }
    sqlite3_finalize(st);
    st = NULL;
    if (sqlite3_prepare_v2(c->db, "SELECT COALESCE(SUM(bytes),0), COUNT(*) FROM adapter", -1, &st,
                           NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW) {
        c->ad_bytes = sqlite3_column_int64(st, 0);
        c->ad_rows = sqlite3_column_int64(st, 1);
    }
    sqlite3_finalize(st);
}

static const srv_db_schema cache_schema = {"cache", SRV_CACHE_APP_ID, SRV_CACHE_SCHEMA_VERSION,
                                           cache_migrations};

int srv_cache_open(srv_cache **out, const char *state_dir, size_t floats, int64_t budget_bytes,
                   int mem_slots, srv_metrics *m, char *err, size_t errlen)
{
    srv_cache *c;
    char lockpath[4200];

    *out = NULL;
    if (srv_mkdirs(state_dir) != 0)
        return srv_errf(err, errlen, "state dir '%s': cannot create: %s", state_dir,
                        strerror(errno));
    c = calloc(1, sizeof *c);
    if (!c)
        return srv_errf(err, errlen, "out of memory");
    pthread_mutex_init(&c->mu, NULL);
    c->lock_fd = -1;
    c->floats = floats;
    c->budget = budget_bytes;
    c->m = m;
    c->n_slots = mem_slots;
    if (asprintf(&c->path, "%s/cache.db", state_dir) < 0) {
        c->path = NULL;
        srv_errf(err, errlen, "out of memory");
        goto err;
    }
    if (mem_slots > 0 && !(c->slots = calloc((size_t)mem_slots, sizeof *c->slots))) {
        srv_errf(err, errlen, "out of memory");
        goto err;
    }
    snprintf(lockpath, sizeof lockpath, "%s/tasamd.lock", state_dir);
    c->lock_fd = open(lockpath, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
    if (c->lock_fd < 0) {
        srv_errf(err, errlen, "state dir '%s': cannot open %s: %s", state_dir, lockpath,
                 strerror(errno));
        goto err;
    }
    if (flock(c->lock_fd, LOCK_EX | LOCK_NB) != 0) {
        srv_errf(err, errlen, "state dir '%s' is in use by another tasamd (%s is locked)",
                 state_dir, lockpath);
        goto err;
    }
    if (srv_db_open(&c->db, c->path, &cache_schema, err, errlen) != 0)
        goto err;
    srv__cache_refresh_totals(c);
    c->clock_ms = srv__cache_query_int(
        c->db, "SELECT MAX(COALESCE((SELECT MAX(last_used) FROM embedding), 0), "
               "COALESCE((SELECT MAX(last_used) FROM adapter), 0))");
    srv_log_info("cache: %s: %lld embeddings, %lld bytes (budget %lld); %d memory slots; %lld "
                 "adapters, %lld bytes",
                 c->path, (long long)c->disk_rows, (long long)c->disk_bytes, (long long)c->budget,
                 mem_slots, (long long)c->ad_rows, (long long)c->ad_bytes);
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
    srv_db_close(c->db, c->path);
    for (int i = 0; i < c->n_slots && c->slots; i++)
        free(c->slots[i].data);
    free(c->slots);
    free(c->scratch);
    free(c->path);
    if (c->lock_fd >= 0)
        close(c->lock_fd);
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

void srv_cache_set_budget(srv_cache *c, int64_t budget_bytes)
{
    pthread_mutex_lock(&c->mu);
    c->budget = budget_bytes;
    pthread_mutex_unlock(&c->mu);
}

/* Contract: under mu: delete row `id` of `table` ("embedding" or "adapter");
 * its blob goes with it (ON DELETE CASCADE). */
void srv__cache_delete_from(srv_cache *c, const char *table, int64_t id)
{
    sqlite3_stmt *st = NULL;
    char sql[64];
    snprintf(sql, sizeof sql, "DELETE FROM %s WHERE id=?1", table);
    if (sqlite3_prepare_v2(c->db, sql, -1, &st, NULL) == SQLITE_OK) {
        sqlite3_bind_int64(st, 1, id);
        sqlite3_step(st);
    }
    sqlite3_finalize(st);
}

/* Contract: under mu, inside a transaction: store `len` bytes as the blob of
 * row `row` (`table` is "embedding_blob" or "adapter_blob", `key` its row
 * column). Returns 0 or -1 (sqlite3_errmsg has why). */
int srv__cache_insert_blob(srv_cache *c, const char *table, const char *key, int64_t row,
                           const void *data, size_t len)
{
    sqlite3_stmt *st = NULL;
    char sql[96];
    int rc = -1;
    snprintf(sql, sizeof sql, "INSERT INTO %s (%s, data) VALUES (?1, ?2)", table, key);
    if (sqlite3_prepare_v2(c->db, sql, -1, &st, NULL) == SQLITE_OK) {
        sqlite3_bind_int64(st, 1, row);
        sqlite3_bind_blob64(st, 2, data, len, SQLITE_STATIC);
        rc = sqlite3_step(st) == SQLITE_DONE ? 0 : -1;
    }
    sqlite3_finalize(st);
    return rc;
}

/* Contract: under mu, inside a transaction: delete the least recently used
 * rows of `table` (never `keep_id`) until *bytes fits `budget`, keeping
 * *bytes and *rows in step; returns how many went. Both tiers evict alike. */
int srv__cache_evict_lru(srv_cache *c, const char *table, int64_t keep_id, int64_t *bytes,
                         int64_t *rows, int64_t budget)
{
    sqlite3_stmt *st = NULL;
    char sql[128];
    int n = 0;
    snprintf(sql, sizeof sql,
             "SELECT id, bytes FROM %s WHERE id != ?1 ORDER BY last_used, id LIMIT 1", table);
    while (*bytes > budget) {
        int64_t id = -1, b = 0;
        if (sqlite3_prepare_v2(c->db, sql, -1, &st, NULL) != SQLITE_OK)
            break;
        sqlite3_bind_int64(st, 1, keep_id);
        if (sqlite3_step(st) == SQLITE_ROW) {
            id = sqlite3_column_int64(st, 0);
            b = sqlite3_column_int64(st, 1);
        }
        sqlite3_finalize(st);
        st = NULL;
        if (id < 0)
            break;
        srv__cache_delete_from(c, table, id);
        *bytes -= b;
        (*rows)--;
        n++;
    }
    return n;
}

void srv_cache_maintain(srv_cache *c)
{
    if (!c)
        return;
    pthread_mutex_lock(&c->mu);
    if (c->db) {
        if (c->disk_bytes > c->budget && srv__cache_exec(c->db, "BEGIN IMMEDIATE") == SQLITE_OK) {
            int n = srv__cache_evict(c, -1);
            if (srv__cache_exec(c->db, "COMMIT") != SQLITE_OK)
                srv__cache_exec(c->db, "ROLLBACK");
            srv__cache_refresh_totals(c);
            if (n)
                srv_log_info("cache: evicted %d embeddings to fit the budget of %lld bytes", n,
                             (long long)c->budget);
        }
        if (c->ad_bytes > c->ad_budget && srv__cache_exec(c->db, "BEGIN IMMEDIATE") == SQLITE_OK) {
            int n = srv__cache_ad_evict(c, -1);
            if (srv__cache_exec(c->db, "COMMIT") != SQLITE_OK)
                srv__cache_exec(c->db, "ROLLBACK");
            srv__cache_refresh_totals(c);
            if (n)
                srv_log_info("cache: evicted %d adapters to fit the budget of %lld bytes", n,
                             (long long)c->ad_budget);
        }
        srv__cache_exec(c->db, "PRAGMA wal_checkpoint(PASSIVE)");
    }
    srv__cache_gauges(c);
    pthread_mutex_unlock(&c->mu);
}

const char *srv_cache_path(const srv_cache *c) { return c->path; }
