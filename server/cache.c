/*
 * server/cache.c: the embedding table and the memory tier.
 *
 * The memory tier is an index of the embeddings held in memory, each
 * either a host copy or resident in the engine's device slots (never
 * both): an embedding computed by POST /v1/embeddings, or not yet decoded,
 * is a host copy; once the decoder has uploaded it (srv_cache_note_resident)
 * the host copy is freed, because the engine keeps its own on the device
 * and a second one in host memory would only duplicate it. The index of
 * resident ones mirrors the engine's LRU (same slot count, same order of
 * use), so that HTTP threads can tell that an image_id is cached without
 * asking the engine, which belongs to the worker.
 */
#include "server/cache_internal.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sqlite3.h>

#include "server/log.h"

/* Contract: under mu; the entry of sha, or NULL. */
static mem_entry *mem_find(srv_cache *c, const char *sha)
{
    for (int i = 0; i < c->n_mem; i++)
        if (c->mem[i].sha[0] && strcmp(c->mem[i].sha, sha) == 0)
            return &c->mem[i];
    return NULL;
}

/* Contract: under mu; drops the host copy of e (and e itself when it is
 * not resident either). */
static void mem_drop_data(mem_entry *e)
{
    free(e->data);
    e->data = NULL;
    if (!e->on_device)
        memset(e, 0, sizeof *e);
}

/* Contract: under mu; the least recently used entry with (want_data) a
 * host copy, or (else) resident, or NULL. */
static mem_entry *mem_lru(srv_cache *c, int want_data)
{
    mem_entry *v = NULL;
    for (int i = 0; i < c->n_mem; i++) {
        mem_entry *e = &c->mem[i];
        if (e->sha[0] && (want_data ? e->data != NULL : e->on_device) && (!v || e->tick < v->tick))
            v = e;
    }
    return v;
}

/* Contract: under mu; the entry for sha, made when absent (in a free
 * entry: there is always one, host copies and resident ones being bounded
 * by host_slots and device_slots). */
static mem_entry *mem_get(srv_cache *c, const char *sha, int w, int h)
{
    mem_entry *e = mem_find(c, sha);
    for (int i = 0; !e && i < c->n_mem; i++)
        if (!c->mem[i].sha[0]) {
            e = &c->mem[i];
            snprintf(e->sha, sizeof e->sha, "%s", sha);
        }
    if (e) {
        e->w = w;
        e->h = h;
        e->tick = ++c->tick;
    }
    return e;
}

/* Contract: queues a deletion of the corrupt or impossible row (id, crc). */
static void drop_row(srv_cache *c, int64_t row, int64_t crc)
{
    cache_op *op = srv__cache_op_new(OP_EMB_DEL_ROW);
    if (!op)
        return;
    op->row = row;
    op->crc = crc;
    srv__cache_enqueue(c, op);
}

/* Contract: a row whose stored image size no decode could give: logged,
 * counted and queued for deletion. */
static void impossible_size(srv_cache *c, const char *sha, int w, int h, int64_t row, int64_t crc)
{
    srv_log_warn("cache: embedding %s in %s has an impossible size %dx%d; dropped", sha, c->path, w,
                 h);
    if (c->m)
        srv_metrics_add(&c->m->cache_corrupt, 1);
    drop_row(c, row, crc);
}

/* Contract: the size in the current RD_EMB_DIMS row into *w, *h: 0, or 1
 * when it is impossible (the row is dropped). */
static int dims_row(srv_cache *c, sqlite3_stmt *st, const char *sha, int *w, int *h)
{
    int rw = sqlite3_column_int(st, 2), rh = sqlite3_column_int(st, 3);
    if (!srv__cache_dims_ok(rw, rh)) {
        impossible_size(c, sha, rw, rh, sqlite3_column_int64(st, 0), sqlite3_column_int64(st, 1));
        return 1;
    }
    *w = rw;
    *h = rh;
    return 0;
}

/* Contract: the model key under mu into model/precision; 0 when no model
 * is bound yet (every lookup misses then). */
static int model_key(srv_cache *c, char *model, char *precision)
{
    pthread_mutex_lock(&c->mu);
    snprintf(model, 64, "%s", c->model_id);
    snprintf(precision, 8, "%s", c->precision);
    pthread_mutex_unlock(&c->mu);
    return model[0] != 0;
}

static void bind_key(sqlite3_stmt *st, const char *sha, const char *model, const char *precision)
{
    sqlite3_bind_text(st, 1, sha, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, model, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 3, precision, -1, SQLITE_TRANSIENT);
}

/* Contract: sha's size from a write still queued; 1 found. */
static int from_queue(srv_cache *c, const char *sha, const char *model, const char *precision,
                      float *dst, int *w, int *h)
{
    int found = 0;
    pthread_mutex_lock(&c->wmu);
    cache_op *op = srv__cache_queued(c, sha, OP_EMB_PUT, OP_EMB_PUT);
    if (op && !strcmp(op->model_id, model) && !strcmp(op->precision, precision)) {
        *w = op->w;
        *h = op->h;
        if (dst)
            memcpy(dst, op->blob, op->len);
        found = 1;
    }
    pthread_mutex_unlock(&c->wmu);
    return found;
}

/* Contract: sha's size from the disk tier (RD_EMB_DIMS: no blob read);
 * 0 found, 1 absent (or the tier off or down), -1 on a read error. */
static int disk_dims(srv_cache *c, const char *sha, const char *model, const char *precision,
                     int *w, int *h)
{
    int rc = 1;
    if (__atomic_load_n(&c->budget, __ATOMIC_RELAXED) <= 0)
        return 1;
    cache_reader *r = srv__cache_reader_get(c);
    if (!r)
        return 1;
    sqlite3_stmt *st = r->st[RD_EMB_DIMS];
    bind_key(st, sha, model, precision);
    int step = sqlite3_step(st);
    if (step == SQLITE_ROW) {
        rc = dims_row(c, st, sha, w, h);
    } else if (step != SQLITE_DONE) {
        srv__cache_reader_failed(c, step, "embedding lookup");
        rc = -1;
    }
    srv__cache_stmt_done(st);
    srv__cache_reader_put(r);
    return rc;
}

int srv_cache_peek(srv_cache *c, const char *sha, int *w, int *h)
{
    char model[64], precision[8];
    mem_entry *e;
    int found = 0;
    if (!model_key(c, model, precision))
        return 1;
    pthread_mutex_lock(&c->mu);
    if ((e = mem_find(c, sha))) {
        *w = e->w;
        *h = e->h;
        found = 1;
    }
    pthread_mutex_unlock(&c->mu);
    if (found || from_queue(c, sha, model, precision, NULL, w, h))
        return 0;
    return disk_dims(c, sha, model, precision, w, h);
}

int srv_cache_get(srv_cache *c, const char *sha, float *scratch, const float **emb, int *w, int *h,
                  srv_cache_tier *tier)
{
    char model[64], precision[8];
    size_t want = c->floats * sizeof(float);
    mem_entry *e;
    int rc = 1;
    *emb = NULL;
    if (!model_key(c, model, precision))
        return 1;
    pthread_mutex_lock(&c->mu);
    if ((e = mem_find(c, sha))) {
        /* the caller's engine does not hold it (else it would not ask) */
        e->on_device = 0;
        if (e->data) {
            e->tick = ++c->tick;
            *emb = e->data;
            *w = e->w;
            *h = e->h;
            *tier = SRV_TIER_MEMORY;
            rc = 0;
        } else {
            memset(e, 0, sizeof *e);
        }
    }
    pthread_mutex_unlock(&c->mu);
    if (rc == 0) {
        srv_cache_touch(c, sha);
        return 0;
    }
    if (from_queue(c, sha, model, precision, scratch, w, h)) {
        *emb = scratch;
        *tier = SRV_TIER_MEMORY;
        return 0;
    }
    if (!scratch) {
        /* existence only (an embeddings request): the size is enough */
        rc = disk_dims(c, sha, model, precision, w, h);
        if (rc == 0) {
            *tier = SRV_TIER_DISK;
            srv_cache_touch(c, sha);
        }
        return rc;
    }
    if (__atomic_load_n(&c->budget, __ATOMIC_RELAXED) <= 0)
        return 1;
    cache_reader *r = srv__cache_reader_get(c);
    if (!r)
        return 1;
    sqlite3_stmt *st = r->st[RD_EMB_GET];
    bind_key(st, sha, model, precision);
    int step = sqlite3_step(st);
    if (step == SQLITE_ROW) {
        int64_t row = sqlite3_column_int64(st, 0);
        int rw = sqlite3_column_int(st, 1), rh = sqlite3_column_int(st, 2);
        int64_t bytes = sqlite3_column_int64(st, 3);
        int64_t crc = sqlite3_column_int64(st, 4);
        const void *blob = sqlite3_column_blob(st, 5);
        size_t blen = (size_t)sqlite3_column_bytes(st, 5);
        int sum_ok = blob && blen == want && srv__cache_blob_crc(blob, blen) == (uint32_t)crc;
        if (!sum_ok || bytes != (int64_t)want || !srv__cache_dims_ok(rw, rh)) {
            srv_log_warn("cache: embedding %s in %s is corrupt (%zu bytes, checksum %s, size "
                         "%dx%d); dropped",
                         sha, c->path, blen, sum_ok ? "ok" : "mismatch", rw, rh);
            if (c->m)
                srv_metrics_add(&c->m->cache_corrupt, 1);
            drop_row(c, row, crc);
        } else {
            memcpy(scratch, blob, want);
            *emb = scratch;
            *w = rw;
            *h = rh;
            *tier = SRV_TIER_DISK;
            rc = 0;
        }
    } else if (step != SQLITE_DONE) {
        srv__cache_reader_failed(c, step, "embedding lookup");
        rc = -1;
    }
    srv__cache_stmt_done(st);
    srv__cache_reader_put(r);
    if (rc == 0)
        srv_cache_touch(c, sha);
    return rc;
}

void srv_cache_touch(srv_cache *c, const char *sha)
{
    char model[64], precision[8];
    mem_entry *e;
    if (!model_key(c, model, precision))
        return;
    pthread_mutex_lock(&c->mu);
    if ((e = mem_find(c, sha)))
        e->tick = ++c->tick;
    pthread_mutex_unlock(&c->mu);
    if (__atomic_load_n(&c->budget, __ATOMIC_RELAXED) <= 0)
        return;
    cache_op *op = srv__cache_op_new(OP_EMB_TOUCH);
    if (!op)
        return;
    snprintf(op->key, sizeof op->key, "%s", sha);
    snprintf(op->model_id, sizeof op->model_id, "%s", model);
    snprintf(op->precision, sizeof op->precision, "%s", precision);
    op->hits = 1;
    srv__cache_enqueue(c, op);
}

int srv_cache_put(srv_cache *c, const char *sha, const float *emb, int w, int h, int keep_host)
{
    size_t bytes = c->floats * sizeof(float);
    char model[64], precision[8];
    int rc = 0;
    if (!model_key(c, model, precision))
        return 0;
    if (keep_host && c->host_slots > 0) {
        float *copy = malloc(bytes);
        if (copy)
            memcpy(copy, emb, bytes);
        pthread_mutex_lock(&c->mu);
        mem_entry *e = mem_find(c, sha);
        int held = 0;
        for (int i = 0; i < c->n_mem; i++)
            held += c->mem[i].sha[0] && c->mem[i].data;
        if (copy && (!e || !e->data) && held >= c->host_slots)
            mem_drop_data(mem_lru(c, 1));
        e = copy ? mem_get(c, sha, w, h) : NULL;
        if (e) {
            free(e->data);
            e->data = copy;
        } else {
            free(copy);
        }
        pthread_mutex_unlock(&c->mu);
    }
    if (__atomic_load_n(&c->budget, __ATOMIC_RELAXED) < (int64_t)bytes)
        return 0;
    cache_op *op = srv__cache_op_new(OP_EMB_PUT);
    uint8_t *blob = malloc(bytes);
    if (!op || !blob) {
        free(op);
        free(blob);
        return -1;
    }
    memcpy(blob, emb, bytes);
    snprintf(op->key, sizeof op->key, "%s", sha);
    snprintf(op->model_id, sizeof op->model_id, "%s", model);
    snprintf(op->precision, sizeof op->precision, "%s", precision);
    op->w = w;
    op->h = h;
    op->blob = blob;
    op->len = bytes;
    if (srv__cache_enqueue(c, op) != 0)
        rc = -1;
    srv__cache_gauges(c);
    return rc;
}

void srv_cache_note_resident(srv_cache *c, const char *sha, int w, int h)
{
    if (c->device_slots <= 0)
        return;
    pthread_mutex_lock(&c->mu);
    mem_entry *e = mem_get(c, sha, w, h);
    if (e) {
        e->on_device = 1;
        free(e->data); /* the engine holds it now: no second copy */
        e->data = NULL;
    }
    int resident = 0;
    for (int i = 0; i < c->n_mem; i++)
        resident += c->mem[i].sha[0] && c->mem[i].on_device;
    if (resident > c->device_slots) {
        /* the engine reused its least recently used slot for this one */
        mem_entry *v = mem_lru(c, 0);
        if (v) {
            v->on_device = 0;
            if (!v->data)
                memset(v, 0, sizeof *v);
        }
    }
    pthread_mutex_unlock(&c->mu);
    srv__cache_gauges(c);
}

int srv_cache_meta_get(srv_cache *c, const char *sha, srv_cache_meta *out)
{
    char model[64], precision[8];
    mem_entry *e;
    int rc = 1;
    memset(out, 0, sizeof *out);
    if (!model_key(c, model, precision))
        return 1;
    snprintf(out->image_id, sizeof out->image_id, "%s", sha);
    snprintf(out->model_id, sizeof out->model_id, "%s", model);
    snprintf(out->precision, sizeof out->precision, "%s", precision);
    pthread_mutex_lock(&c->mu);
    if ((e = mem_find(c, sha))) {
        out->in_memory = 1;
        out->width = e->w;
        out->height = e->h;
        out->bytes = (int64_t)(c->floats * sizeof(float));
        rc = 0;
    }
    pthread_mutex_unlock(&c->mu);
    if (rc != 0 && from_queue(c, sha, model, precision, NULL, &out->width, &out->height)) {
        out->in_memory = 1;
        out->bytes = (int64_t)(c->floats * sizeof(float));
        rc = 0;
    }
    if (__atomic_load_n(&c->budget, __ATOMIC_RELAXED) <= 0)
        return rc;
    cache_reader *r = srv__cache_reader_get(c);
    if (!r)
        return rc;
    sqlite3_stmt *st = r->st[RD_EMB_META];
    bind_key(st, sha, model, precision);
    int step = sqlite3_step(st);
    if (step == SQLITE_ROW) {
        int rw = sqlite3_column_int(st, 0), rh = sqlite3_column_int(st, 1);
        if (srv__cache_dims_ok(rw, rh)) {
            out->width = rw;
            out->height = rh;
            out->bytes = sqlite3_column_int64(st, 2);
            out->created_ms = sqlite3_column_int64(st, 3);
            out->last_used_ms = sqlite3_column_int64(st, 4);
            out->hits = sqlite3_column_int64(st, 5);
            rc = 0;
        } else {
            impossible_size(c, sha, rw, rh, sqlite3_column_int64(st, 6),
                            sqlite3_column_int64(st, 7));
        }
    } else if (step != SQLITE_DONE) {
        srv__cache_reader_failed(c, step, "embedding lookup");
        rc = rc == 0 ? 0 : -1;
    }
    srv__cache_stmt_done(st);
    srv__cache_reader_put(r);
    return rc;
}

int srv__cache_write_embedding(srv_cache *c, cache_op *op, int64_t stamp)
{
    sqlite3_stmt *st;
    int rc;
    switch (op->kind) {
    case OP_EMB_PUT:
        st = c->wst[WR_EMB_DEL_KEY];
        bind_key(st, op->key, op->model_id, op->precision);
        rc = sqlite3_step(st);
        srv__cache_stmt_done(st);
        if (rc != SQLITE_DONE)
            return rc;
        st = c->wst[WR_EMB_INS];
        bind_key(st, op->key, op->model_id, op->precision);
        sqlite3_bind_int(st, 4, op->w);
        sqlite3_bind_int(st, 5, op->h);
        sqlite3_bind_int64(st, 6, (int64_t)op->len);
        sqlite3_bind_int64(st, 7, (int64_t)srv__cache_blob_crc(op->blob, op->len));
        sqlite3_bind_int64(st, 8, stamp);
        return srv__cache_insert_with_blob(c, st, c->wst[WR_EMB_BLOB], op);
    case OP_EMB_TOUCH:
        st = c->wst[WR_EMB_TOUCH];
        bind_key(st, op->key, op->model_id, op->precision);
        sqlite3_bind_int64(st, 4, stamp);
        sqlite3_bind_int(st, 5, op->hits);
        break;
    case OP_EMB_DEL_ROW:
        st = c->wst[WR_EMB_DEL_ROW];
        sqlite3_bind_int64(st, 1, op->row);
        sqlite3_bind_int64(st, 2, op->crc);
        break;
    default:
        return SQLITE_MISUSE;
    }
    rc = sqlite3_step(st);
    srv__cache_stmt_done(st);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}
