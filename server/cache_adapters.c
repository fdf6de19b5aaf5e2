/*
 * server/cache_adapters.c: the adapter store (the adapter table of the cache database).
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

/* ---- adapters ---- */

void srv_cache_set_adapter_budget(srv_cache *c, int64_t budget_bytes)
{
    pthread_mutex_lock(&c->mu);
    c->ad_budget = budget_bytes;
    pthread_mutex_unlock(&c->mu);
}

#define AD_COLS                                                                                    \
    "a.adapter_id, a.task, a.task_normalized, a.hypernet_id, a.hypernet_version, a.text_model, "   \
    "a.rank, a.alpha, a.bytes, a.created, a.last_used, a.hits"
#define AD_NCOLS 12

/* Contract: fills *m from the AD_COLS columns of the current row. */
static void ad_row(sqlite3_stmt *st, srv_adapter_meta *m)
{
    memset(m, 0, sizeof *m);
    srv_db_col_text(st, 0, m->id, sizeof m->id);
    srv_db_col_text(st, 1, m->task, sizeof m->task);
    srv_db_col_text(st, 2, m->task_normalized, sizeof m->task_normalized);
    srv_db_col_text(st, 3, m->hypernet_id, sizeof m->hypernet_id);
    srv_db_col_text(st, 4, m->hypernet_version, sizeof m->hypernet_version);
    srv_db_col_text(st, 5, m->text_model, sizeof m->text_model);
    m->rank = sqlite3_column_int(st, 6);
    m->alpha = sqlite3_column_double(st, 7);
    m->bytes = sqlite3_column_int64(st, 8);
    m->created_ms = sqlite3_column_int64(st, 9);
    m->last_used_ms = sqlite3_column_int64(st, 10);
    m->hits = sqlite3_column_int64(st, 11);
}

/* Contract: under mu; bump hits and last_used of the row of `id`. */
static void ad_touch_locked(srv_cache *c, const char *id)
{
    sqlite3_stmt *st = NULL;
    if (!c->db || c->ad_budget <= 0)
        return;
    if (sqlite3_prepare_v2(c->db,
                           "UPDATE adapter SET last_used=?1, hits=hits+1 WHERE adapter_id=?2", -1,
                           &st, NULL) == SQLITE_OK) {
        sqlite3_bind_int64(st, 1, srv__cache_use_stamp(c));
        sqlite3_bind_text(st, 2, id, -1, SQLITE_STATIC);
        sqlite3_step(st);
    }
    sqlite3_finalize(st);
}

/* Contract: under mu; delete the row of `id` (its blob goes by cascade). */
static void ad_delete_locked(srv_cache *c, const char *id)
{
    sqlite3_stmt *st = NULL;
    if (!c->db)
        return;
    if (sqlite3_prepare_v2(c->db, "DELETE FROM adapter WHERE adapter_id=?1", -1, &st, NULL) ==
        SQLITE_OK) {
        sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
        sqlite3_step(st);
    }
    sqlite3_finalize(st);
    srv__cache_refresh_totals(c);
}

void srv_cache_adapter_touch(srv_cache *c, const char *id)
{
    pthread_mutex_lock(&c->mu);
    ad_touch_locked(c, id);
    pthread_mutex_unlock(&c->mu);
}

void srv_cache_adapter_delete(srv_cache *c, const char *id)
{
    pthread_mutex_lock(&c->mu);
    ad_delete_locked(c, id);
    srv__cache_gauges(c);
    pthread_mutex_unlock(&c->mu);
}

int srv_cache_adapter_get(srv_cache *c, const char *id, int touch, uint8_t **blob, size_t *len,
                          srv_adapter_meta *meta)
{
    sqlite3_stmt *st = NULL;
    int rc = 1;
    *blob = NULL;
    *len = 0;
    pthread_mutex_lock(&c->mu);
    if (!c->db || c->ad_budget <= 0)
        goto out;
    if (sqlite3_prepare_v2(c->db,
                           "SELECT " AD_COLS ", a.crc32, b.data FROM adapter a JOIN adapter_blob b "
                           "ON b.adapter_row = a.id WHERE a.adapter_id=?1",
                           -1, &st, NULL) != SQLITE_OK) {
        srv_log_warn("cache: adapter lookup: %s", sqlite3_errmsg(c->db));
        rc = -1;
        goto out;
    }
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    int step = sqlite3_step(st);
    if (step == SQLITE_ROW) {
        srv_adapter_meta m;
        ad_row(st, &m);
        uint32_t crc = (uint32_t)sqlite3_column_int64(st, AD_NCOLS);
        const void *data = sqlite3_column_blob(st, AD_NCOLS + 1);
        size_t n = (size_t)sqlite3_column_bytes(st, AD_NCOLS + 1);
        if (!data || n == 0 || (int64_t)n != m.bytes || srv__cache_blob_crc(data, n) != crc) {
            srv_log_warn("cache: adapter %s in %s is corrupt (%zu bytes, %lld expected, checksum "
                         "%s); dropped",
                         id, c->path, n, (long long)m.bytes,
                         data && srv__cache_blob_crc(data, n) == crc ? "ok" : "mismatch");
            sqlite3_finalize(st);
            st = NULL;
            ad_delete_locked(c, id);
            if (c->m)
                srv_metrics_add(&c->m->adapter_corrupt, 1);
            srv__cache_gauges(c);
            rc = 1;
            goto out;
        }
        *blob = malloc(n);
        if (!*blob) {
            rc = -1;
            goto out;
        }
        memcpy(*blob, data, n);
        *len = n;
        sqlite3_finalize(st);
        st = NULL;
        if (touch) {
            ad_touch_locked(c, id);
            m.hits++;
        }
        if (meta)
            *meta = m;
        rc = 0;
    } else if (step != SQLITE_DONE) {
        srv_log_warn("cache: adapter lookup: %s", sqlite3_errmsg(c->db));
        rc = -1;
    }
out:
    sqlite3_finalize(st);
    pthread_mutex_unlock(&c->mu);
    return rc;
}

int srv_cache_adapter_meta(srv_cache *c, const char *id, srv_adapter_meta *out)
{
    sqlite3_stmt *st = NULL;
    int rc = 1;
    pthread_mutex_lock(&c->mu);
    if (!c->db || c->ad_budget <= 0)
        goto out;
    if (sqlite3_prepare_v2(c->db, "SELECT " AD_COLS " FROM adapter a WHERE a.adapter_id=?1", -1,
                           &st, NULL) != SQLITE_OK) {
        rc = -1;
        goto out;
    }
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    int step = sqlite3_step(st);
    if (step == SQLITE_ROW) {
        ad_row(st, out);
        rc = 0;
    } else if (step != SQLITE_DONE) {
        rc = -1;
    }
out:
    sqlite3_finalize(st);
    pthread_mutex_unlock(&c->mu);
    return rc;
}

/* Contract: under mu, inside a transaction: evict adapter rows (never
 * `keep_id`) until the total fits the adapter budget. */
int srv__cache_ad_evict(srv_cache *c, int64_t keep_id)
{
    int n = srv__cache_evict_lru(c, "adapter", keep_id, &c->ad_bytes, &c->ad_rows, c->ad_budget);
    if (n && c->m)
        srv_metrics_add(&c->m->adapter_evictions_disk, (uint64_t)n);
    return n;
}

int srv_cache_adapter_put(srv_cache *c, const srv_adapter_meta *m, const uint8_t *blob, size_t len)
{
    sqlite3_stmt *st = NULL;
    int rc = 0;
    int64_t t, row;
    pthread_mutex_lock(&c->mu);
    if (!c->db || c->ad_budget < (int64_t)len || len == 0) {
        rc = 1;
        goto out;
    }
    t = srv__cache_use_stamp(c);
    if (srv__cache_exec(c->db, "BEGIN IMMEDIATE") != SQLITE_OK) {
        rc = -1;
        goto out;
    }
    if (sqlite3_prepare_v2(c->db, "DELETE FROM adapter WHERE adapter_id=?1", -1, &st, NULL) !=
        SQLITE_OK)
        goto fail;
    sqlite3_bind_text(st, 1, m->id, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE)
        goto fail;
    sqlite3_finalize(st);
    if (sqlite3_prepare_v2(c->db,
                           "INSERT INTO adapter (adapter_id, task, task_normalized, hypernet_id, "
                           "hypernet_version, text_model, rank, alpha, bytes, crc32, created, "
                           "last_used, hits) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,0)",
                           -1, &st, NULL) != SQLITE_OK)
        goto fail;
    sqlite3_bind_text(st, 1, m->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, m->task, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, m->task_normalized, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, m->hypernet_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, m->hypernet_version, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 6, m->text_model, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 7, m->rank);
    sqlite3_bind_double(st, 8, m->alpha);
    sqlite3_bind_int64(st, 9, (int64_t)len);
    sqlite3_bind_int64(st, 10, (int64_t)srv__cache_blob_crc(blob, len));
    sqlite3_bind_int64(st, 11, m->created_ms > 0 ? m->created_ms : t);
    sqlite3_bind_int64(st, 12, t);
    if (sqlite3_step(st) != SQLITE_DONE)
        goto fail;
    sqlite3_finalize(st);
    st = NULL;
    row = sqlite3_last_insert_rowid(c->db);
    if (srv__cache_insert_blob(c, "adapter_blob", "adapter_row", row, blob, len) != 0)
        goto fail;
    srv__cache_refresh_totals(c);
    srv__cache_ad_evict(c, row);
    if (srv__cache_exec(c->db, "COMMIT") != SQLITE_OK)
        goto fail;
    srv__cache_refresh_totals(c);
    goto out;
fail:
    srv_log_warn("cache: storing adapter %s: %s", m->id, sqlite3_errmsg(c->db));
    sqlite3_finalize(st);
    st = NULL;
    srv__cache_exec(c->db, "ROLLBACK");
    srv__cache_refresh_totals(c);
    rc = -1;
out:
    srv__cache_gauges(c);
    pthread_mutex_unlock(&c->mu);
    return rc;
}

int srv_cache_adapter_list(srv_cache *c, const char *after, int64_t offset, int limit,
                           srv_adapter_meta *out, int *n, int64_t *total)
{
    sqlite3_stmt *st = NULL;
    int rc = 0;
    *n = 0;
    *total = 0;
    pthread_mutex_lock(&c->mu);
    if (!c->db || c->ad_budget <= 0)
        goto out;
    *total = c->ad_rows;
    if (sqlite3_prepare_v2(c->db,
                           "SELECT " AD_COLS " FROM adapter a WHERE a.adapter_id > ?1 ORDER BY "
                           "a.adapter_id LIMIT ?2 OFFSET ?3",
                           -1, &st, NULL) != SQLITE_OK) {
        rc = -1;
        goto out;
    }
    sqlite3_bind_text(st, 1, after ? after : "", -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 2, limit);
    sqlite3_bind_int64(st, 3, offset);
    int step = SQLITE_DONE;
    while (*n < limit && (step = sqlite3_step(st)) == SQLITE_ROW)
        ad_row(st, &out[(*n)++]);
    if (*n < limit && step != SQLITE_DONE)
        rc = -1;
out:
    sqlite3_finalize(st);
    pthread_mutex_unlock(&c->mu);
    return rc;
}

int64_t srv_cache_adapter_clear(srv_cache *c)
{
    int64_t n = 0;
    pthread_mutex_lock(&c->mu);
    if (c->db) {
        n = c->ad_rows;
        if (srv__cache_exec(c->db, "DELETE FROM adapter") != SQLITE_OK) {
            srv_log_warn("cache: flushing adapters: %s", sqlite3_errmsg(c->db));
            n = -1;
        }
        srv__cache_refresh_totals(c);
        srv__cache_gauges(c);
    }
    pthread_mutex_unlock(&c->mu);
    return n;
}
