/*
 * server/cache_adapters.c: the adapter store (the adapter table of the
 * cache database): reads on the read connections, writes queued for the
 * writer thread (cache_db.c). A write still queued is visible to every
 * read, so a client never misses the adapter it was just answered with.
 */
#include "server/cache_internal.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sqlite3.h>

#include "server/log.h"
#include "server/sqlite_db.h"

#define AD_NCOLS 12

/* Contract: fills *m from the adapter columns of the current row. */
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

static int enabled(srv_cache *c) { return __atomic_load_n(&c->ad_budget, __ATOMIC_RELAXED) > 0; }

/*
 * Contract: what the writer's queue says about adapter `id`: 1 with the
 * queued row (meta, and a copy of its blob when blob != NULL) when a put
 * is queued last, 2 when a deletion is (the row is as good as gone), 0
 * when nothing about it is queued.
 */
static int from_queue(srv_cache *c, const char *id, srv_adapter_meta *meta, uint8_t **blob,
                      size_t *len)
{
    int rc = 0;
    pthread_mutex_lock(&c->wmu);
    cache_op *op = srv__cache_queued(c, id, OP_AD_PUT, OP_AD_DEL);
    if (!op && srv__cache_queued(c, "", OP_AD_CLEAR, OP_AD_CLEAR))
        rc = 2;
    if (op && op->kind == OP_AD_DEL) {
        rc = 2;
    } else if (op) {
        rc = 1;
        if (meta)
            *meta = *op->meta;
        if (blob) {
            *blob = malloc(op->len);
            if (*blob) {
                memcpy(*blob, op->blob, op->len);
                *len = op->len;
            } else {
                rc = -1;
            }
        }
    }
    pthread_mutex_unlock(&c->wmu);
    return rc;
}

static void queue_simple(srv_cache *c, cache_op_kind kind, const char *id, int64_t row, int64_t crc)
{
    cache_op *op = srv__cache_op_new(kind);
    if (!op)
        return;
    snprintf(op->key, sizeof op->key, "%s", id);
    op->row = row;
    op->crc = crc;
    op->hits = 1;
    srv__cache_enqueue(c, op);
}

void srv_cache_adapter_touch(srv_cache *c, const char *id)
{
    if (enabled(c))
        queue_simple(c, OP_AD_TOUCH, id, 0, 0);
}

void srv_cache_adapter_delete(srv_cache *c, const char *id)
{
    queue_simple(c, OP_AD_DEL, id, 0, 0);
}

int srv_cache_adapter_get(srv_cache *c, const char *id, int touch, uint8_t **blob, size_t *len,
                          srv_adapter_meta *meta)
{
    int rc = 1, q;
    srv_adapter_meta m;
    *blob = NULL;
    *len = 0;
    if (!enabled(c))
        return 1;
    q = from_queue(c, id, &m, blob, len);
    if (q == 2)
        return 1;
    if (q < 0)
        return -1;
    if (q == 1) {
        rc = 0;
        goto hit;
    }
    cache_reader *r = srv__cache_reader_get(c);
    if (!r)
        return 1;
    sqlite3_stmt *st = r->st[RD_AD_GET];
    sqlite3_bind_text(st, 1, id, -1, SQLITE_TRANSIENT);
    int step = sqlite3_step(st);
    if (step == SQLITE_ROW) {
        ad_row(st, &m);
        int64_t crc = sqlite3_column_int64(st, AD_NCOLS);
        const void *data = sqlite3_column_blob(st, AD_NCOLS + 1);
        size_t n = (size_t)sqlite3_column_bytes(st, AD_NCOLS + 1);
        int64_t row = sqlite3_column_int64(st, AD_NCOLS + 2);
        int sum_ok = data && srv__cache_blob_crc(data, n) == (uint32_t)crc;
        if (!data || n == 0 || (int64_t)n != m.bytes || !sum_ok) {
            srv_log_warn("cache: adapter %s in %s is corrupt (%zu bytes, %lld expected, checksum "
                         "%s); dropped",
                         id, c->path, n, (long long)m.bytes, sum_ok ? "ok" : "mismatch");
            if (c->m)
                srv_metrics_add(&c->m->adapter_corrupt, 1);
            queue_simple(c, OP_AD_DEL_ROW, id, row, crc);
        } else if (!(*blob = malloc(n))) {
            rc = -1;
        } else {
            memcpy(*blob, data, n);
            *len = n;
            rc = 0;
        }
    } else if (step != SQLITE_DONE) {
        srv__cache_reader_failed(c, step, "adapter lookup");
        rc = -1;
    }
    srv__cache_stmt_done(st);
    srv__cache_reader_put(r);
    if (rc != 0)
        return rc;
hit:
    if (touch) {
        srv_cache_adapter_touch(c, id);
        m.hits++;
    }
    if (meta)
        *meta = m;
    return 0;
}

int srv_cache_adapter_meta(srv_cache *c, const char *id, srv_adapter_meta *out)
{
    int rc = 1, q;
    if (!enabled(c))
        return 1;
    q = from_queue(c, id, out, NULL, NULL);
    if (q)
        return q == 1 ? 0 : 1;
    cache_reader *r = srv__cache_reader_get(c);
    if (!r)
        return 1;
    sqlite3_stmt *st = r->st[RD_AD_META];
    sqlite3_bind_text(st, 1, id, -1, SQLITE_TRANSIENT);
    int step = sqlite3_step(st);
    if (step == SQLITE_ROW) {
        ad_row(st, out);
        rc = 0;
    } else if (step != SQLITE_DONE) {
        srv__cache_reader_failed(c, step, "adapter lookup");
        rc = -1;
    }
    srv__cache_stmt_done(st);
    srv__cache_reader_put(r);
    return rc;
}

int srv_cache_adapter_put(srv_cache *c, const srv_adapter_meta *m, const uint8_t *blob, size_t len)
{
    if (!enabled(c) || __atomic_load_n(&c->ad_budget, __ATOMIC_RELAXED) < (int64_t)len || len == 0)
        return 1;
    cache_op *op = srv__cache_op_new(OP_AD_PUT);
    uint8_t *copy = malloc(len);
    srv_adapter_meta *meta = malloc(sizeof *meta);
    if (!op || !copy || !meta) {
        free(op);
        free(copy);
        free(meta);
        return -1;
    }
    memcpy(copy, blob, len);
    *meta = *m;
    meta->bytes = (int64_t)len;
    snprintf(op->key, sizeof op->key, "%s", m->id);
    op->blob = copy;
    op->len = len;
    op->meta = meta;
    return srv__cache_enqueue(c, op);
}

int srv_cache_adapter_list(srv_cache *c, const char *after, int64_t offset, int limit,
                           srv_adapter_meta *out, int *n, int64_t *total)
{
    int rc = 0;
    *n = 0;
    *total = 0;
    if (!enabled(c))
        return 0;
    /* a listing reflects the disk: let queued writes land first */
    srv_cache_flush(c);
    cache_reader *r = srv__cache_reader_get(c);
    if (!r)
        return 0;
    *total = __atomic_load_n(&c->shown_ad_rows, __ATOMIC_RELAXED);
    sqlite3_stmt *st = r->st[RD_AD_LIST];
    sqlite3_bind_text(st, 1, after ? after : "", -1, SQLITE_TRANSIENT);
    sqlite3_bind_int(st, 2, limit);
    sqlite3_bind_int64(st, 3, offset);
    int step = SQLITE_DONE;
    while (*n < limit && (step = sqlite3_step(st)) == SQLITE_ROW)
        ad_row(st, &out[(*n)++]);
    if (*n < limit && step != SQLITE_DONE) {
        srv__cache_reader_failed(c, step, "adapter listing");
        rc = -1;
    }
    srv__cache_stmt_done(st);
    srv__cache_reader_put(r);
    return rc;
}

int64_t srv_cache_adapter_clear(srv_cache *c)
{
    cache_op *op = srv__cache_op_new(OP_AD_CLEAR);
    if (!op)
        return -1;
    op->sync = 1;
    srv__cache_enqueue(c, op);
    int64_t n = op->result;
    srv__cache_op_free(op);
    return n;
}

int srv__cache_write_adapter(srv_cache *c, cache_op *op, int64_t stamp)
{
    sqlite3_stmt *st;
    int rc;
    switch (op->kind) {
    case OP_AD_PUT: {
        const srv_adapter_meta *m = op->meta;
        st = c->wst[WR_AD_DEL_KEY];
        sqlite3_bind_text(st, 1, m->id, -1, SQLITE_STATIC);
        rc = sqlite3_step(st);
        srv__cache_stmt_done(st);
        if (rc != SQLITE_DONE)
            return rc;
        st = c->wst[WR_AD_INS];
        sqlite3_bind_text(st, 1, m->id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, m->task, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, m->task_normalized, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 4, m->hypernet_id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 5, m->hypernet_version, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 6, m->text_model, -1, SQLITE_STATIC);
        sqlite3_bind_int(st, 7, m->rank);
        sqlite3_bind_double(st, 8, m->alpha);
        sqlite3_bind_int64(st, 9, (int64_t)op->len);
        sqlite3_bind_int64(st, 10, (int64_t)srv__cache_blob_crc(op->blob, op->len));
        sqlite3_bind_int64(st, 11, m->created_ms > 0 ? m->created_ms : stamp);
        sqlite3_bind_int64(st, 12, stamp);
        return srv__cache_insert_with_blob(c, st, c->wst[WR_AD_BLOB], op);
    }
    case OP_AD_TOUCH:
        st = c->wst[WR_AD_TOUCH];
        sqlite3_bind_text(st, 1, op->key, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 2, stamp);
        sqlite3_bind_int(st, 3, op->hits);
        break;
    case OP_AD_DEL:
        st = c->wst[WR_AD_DEL_KEY];
        sqlite3_bind_text(st, 1, op->key, -1, SQLITE_STATIC);
        break;
    case OP_AD_DEL_ROW:
        st = c->wst[WR_AD_DEL_ROW];
        sqlite3_bind_int64(st, 1, op->row);
        sqlite3_bind_int64(st, 2, op->crc);
        break;
    case OP_AD_CLEAR:
        op->result = __atomic_load_n(&c->ad_rows, __ATOMIC_RELAXED);
        st = c->wst[WR_AD_CLEAR];
        break;
    default:
        return SQLITE_MISUSE;
    }
    rc = sqlite3_step(st);
    srv__cache_stmt_done(st);
    if (rc != SQLITE_DONE && op->kind == OP_AD_CLEAR)
        op->result = -1;
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}
