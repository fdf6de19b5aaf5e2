/*
 * server/cache.c: the embedding table and its memory tier.
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

static void delete_row(srv_cache *c, int64_t id) { srv__cache_delete_from(c, "embedding", id); }

static mem_slot *mem_find(srv_cache *c, const char *sha)
{
    for (int i = 0; i < c->n_slots; i++)
        if (c->slots[i].sha[0] && strcmp(c->slots[i].sha, sha) == 0)
            return &c->slots[i];
    return NULL;
}

/* Contract: the slot to (re)use for a new entry: an empty one, else the
 * least recently used. NULL when there are no slots or no memory. */
static mem_slot *mem_victim(srv_cache *c)
{
    mem_slot *v = NULL;
    for (int i = 0; i < c->n_slots; i++) {
        mem_slot *s = &c->slots[i];
        if (!s->sha[0]) {
            v = s;
            break;
        }
        if (!v || s->tick < v->tick)
            v = s;
    }
    if (v && !v->data && !(v->data = malloc(c->floats * sizeof(float))))
        return NULL;
    return v;
}

/* Contract: under mu; bump last_used and hits of the row for sha. */
static void touch_row(srv_cache *c, const char *sha)
{
    sqlite3_stmt *st = NULL;
    if (!c->db || c->budget <= 0)
        return;
    if (sqlite3_prepare_v2(c->db,
                           "UPDATE embedding SET last_used=?1, hits=hits+1 WHERE image_sha256=?2 "
                           "AND model_id=?3 AND precision=?4",
                           -1, &st, NULL) == SQLITE_OK) {
        sqlite3_bind_int64(st, 1, srv__cache_use_stamp(c));
        sqlite3_bind_text(st, 2, sha, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, c->model_id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 4, c->precision, -1, SQLITE_STATIC);
        sqlite3_step(st);
    }
    sqlite3_finalize(st);
}

int srv_cache_get(srv_cache *c, const char *sha, const float **emb, int *w, int *h,
                  srv_cache_tier *tier)
{
    sqlite3_stmt *st = NULL;
    mem_slot *s;
    int rc = 1;
    size_t want = c->floats * sizeof(float);

    pthread_mutex_lock(&c->mu);
    if (!c->model_id[0])
        goto out;
    if ((s = mem_find(c, sha))) {
        s->tick = ++c->tick;
        *emb = s->data;
        *w = s->w;
        *h = s->h;
        *tier = SRV_TIER_MEMORY;
        touch_row(c, sha);
        rc = 0;
        goto out;
    }
    if (!c->db || c->budget <= 0)
        goto out;
    if (sqlite3_prepare_v2(
            c->db,
            "SELECT e.id, e.width, e.height, e.bytes, e.crc32, b.data FROM embedding e "
            "JOIN embedding_blob b ON b.embedding_id = e.id WHERE e.image_sha256=?1 "
            "AND e.model_id=?2 AND e.precision=?3",
            -1, &st, NULL) != SQLITE_OK) {
        srv_log_warn("cache: lookup: %s", sqlite3_errmsg(c->db));
        rc = -1;
        goto out;
    }
    sqlite3_bind_text(st, 1, sha, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, c->model_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, c->precision, -1, SQLITE_STATIC);
    int step = sqlite3_step(st);
    if (step == SQLITE_ROW) {
        int64_t id = sqlite3_column_int64(st, 0);
        int iw = sqlite3_column_int(st, 1), ih = sqlite3_column_int(st, 2);
        int64_t bytes = sqlite3_column_int64(st, 3);
        uint32_t crc = (uint32_t)sqlite3_column_int64(st, 4);
        const void *blob = sqlite3_column_blob(st, 5);
        size_t blen = (size_t)sqlite3_column_bytes(st, 5);
        if (!blob || blen != want || bytes != (int64_t)want ||
            srv__cache_blob_crc(blob, blen) != crc || iw <= 0 || ih <= 0) {
            srv_log_warn(
                "cache: embedding %s in %s is corrupt (%zu bytes, checksum %s); dropped", sha,
                c->path, blen,
                blob && blen == want && srv__cache_blob_crc(blob, blen) == crc ? "ok" : "mismatch");
            sqlite3_finalize(st);
            st = NULL;
            delete_row(c, id);
            srv__cache_refresh_totals(c);
            if (c->m)
                srv_metrics_add(&c->m->cache_corrupt, 1);
            srv__cache_gauges(c);
            rc = 1;
            goto out;
        }
        float *dst;
        s = mem_victim(c);
        if (s) {
            snprintf(s->sha, sizeof s->sha, "%s", sha);
            s->w = iw;
            s->h = ih;
            s->tick = ++c->tick;
            dst = s->data;
        } else {
            if (!c->scratch && !(c->scratch = malloc(want))) {
                rc = -1;
                goto out;
            }
            dst = c->scratch;
        }
        memcpy(dst, blob, want);
        sqlite3_finalize(st);
        st = NULL;
        touch_row(c, sha);
        *emb = dst;
        *w = iw;
        *h = ih;
        *tier = SRV_TIER_DISK;
        srv__cache_gauges(c);
        rc = 0;
    } else if (step != SQLITE_DONE) {
        srv_log_warn("cache: lookup: %s", sqlite3_errmsg(c->db));
        rc = -1;
    }
out:
    sqlite3_finalize(st);
    pthread_mutex_unlock(&c->mu);
    return rc;
}

/* Contract: under mu, inside a transaction: evict embeddings (never
 * `keep_id`) until the total fits the budget. */
int srv__cache_evict(srv_cache *c, int64_t keep_id)
{
    int n = srv__cache_evict_lru(c, "embedding", keep_id, &c->disk_bytes, &c->disk_rows, c->budget);
    if (n && c->m)
        srv_metrics_add(&c->m->cache_evictions, (uint64_t)n);
    return n;
}

int srv_cache_put(srv_cache *c, const char *sha, const float *emb, int w, int h)
{
    sqlite3_stmt *st = NULL;
    size_t bytes = c->floats * sizeof(float);
    int rc = 0;
    int64_t t, id;
    mem_slot *s;

    pthread_mutex_lock(&c->mu);
    if (!c->model_id[0])
        goto out;
    s = mem_find(c, sha);
    if (!s)
        s = mem_victim(c);
    if (s) {
        snprintf(s->sha, sizeof s->sha, "%s", sha);
        s->w = w;
        s->h = h;
        s->tick = ++c->tick;
        if (s->data != emb)
            memcpy(s->data, emb, bytes);
    }
    if (!c->db || c->budget < (int64_t)bytes)
        goto out;
    t = srv__cache_use_stamp(c);
    if (srv__cache_exec(c->db, "BEGIN IMMEDIATE") != SQLITE_OK) {
        rc = -1;
        goto out;
    }
    if (sqlite3_prepare_v2(c->db,
                           "DELETE FROM embedding WHERE image_sha256=?1 AND model_id=?2 AND "
                           "precision=?3",
                           -1, &st, NULL) != SQLITE_OK)
        goto fail;
    sqlite3_bind_text(st, 1, sha, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, c->model_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, c->precision, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE)
        goto fail;
    sqlite3_finalize(st);
    if (sqlite3_prepare_v2(
            c->db,
            "INSERT INTO embedding (image_sha256, model_id, precision, width, height, "
            "bytes, crc32, created, last_used, hits) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?8,0)",
            -1, &st, NULL) != SQLITE_OK)
        goto fail;
    sqlite3_bind_text(st, 1, sha, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, c->model_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, c->precision, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 4, w);
    sqlite3_bind_int(st, 5, h);
    sqlite3_bind_int64(st, 6, (int64_t)bytes);
    sqlite3_bind_int64(st, 7, (int64_t)srv__cache_blob_crc(emb, bytes));
    sqlite3_bind_int64(st, 8, t);
    if (sqlite3_step(st) != SQLITE_DONE)
        goto fail;
    sqlite3_finalize(st);
    st = NULL;
    id = sqlite3_last_insert_rowid(c->db);
    if (srv__cache_insert_blob(c, "embedding_blob", "embedding_id", id, emb, bytes) != 0)
        goto fail;
    srv__cache_refresh_totals(c);
    srv__cache_evict(c, id);
    if (srv__cache_exec(c->db, "COMMIT") != SQLITE_OK)
        goto fail;
    srv__cache_refresh_totals(c);
    srv__cache_gauges(c);
    goto out;
fail:
    srv_log_warn("cache: storing %s: %s", sha, sqlite3_errmsg(c->db));
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

int srv_cache_peek(srv_cache *c, const char *sha, int *w, int *h)
{
    sqlite3_stmt *st = NULL;
    mem_slot *s;
    int rc = 1;
    pthread_mutex_lock(&c->mu);
    if (!c->model_id[0])
        goto out;
    if ((s = mem_find(c, sha))) {
        *w = s->w;
        *h = s->h;
        rc = 0;
        goto out;
    }
    if (!c->db || c->budget <= 0)
        goto out;
    if (sqlite3_prepare_v2(
            c->db,
            "SELECT width, height FROM embedding WHERE image_sha256=?1 AND model_id=?2 "
            "AND precision=?3",
            -1, &st, NULL) != SQLITE_OK) {
        rc = -1;
        goto out;
    }
    sqlite3_bind_text(st, 1, sha, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, c->model_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, c->precision, -1, SQLITE_STATIC);
    int step = sqlite3_step(st);
    if (step == SQLITE_ROW) {
        *w = sqlite3_column_int(st, 0);
        *h = sqlite3_column_int(st, 1);
        rc = 0;
    } else if (step != SQLITE_DONE) {
        rc = -1;
    }
out:
    sqlite3_finalize(st);
    pthread_mutex_unlock(&c->mu);
    return rc;
}

int srv_cache_meta_get(srv_cache *c, const char *sha, srv_cache_meta *out)
{
    sqlite3_stmt *st = NULL;
    mem_slot *s;
    int rc = 1;
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&c->mu);
    if (!c->model_id[0])
        goto out;
    s = mem_find(c, sha);
    snprintf(out->image_id, sizeof out->image_id, "%s", sha);
    snprintf(out->model_id, sizeof out->model_id, "%s", c->model_id);
    snprintf(out->precision, sizeof out->precision, "%s", c->precision);
    if (s) {
        out->in_memory = 1;
        out->width = s->w;
        out->height = s->h;
        out->bytes = (int64_t)(c->floats * sizeof(float));
        rc = 0;
    }
    if (!c->db || c->budget <= 0)
        goto out;
    if (sqlite3_prepare_v2(c->db,
                           "SELECT width, height, bytes, created, last_used, hits FROM embedding "
                           "WHERE image_sha256=?1 AND model_id=?2 AND precision=?3",
                           -1, &st, NULL) != SQLITE_OK) {
        rc = rc == 0 ? 0 : -1;
        goto out;
    }
    sqlite3_bind_text(st, 1, sha, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, c->model_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, c->precision, -1, SQLITE_STATIC);
    if (sqlite3_step(st) == SQLITE_ROW) {
        out->width = sqlite3_column_int(st, 0);
        out->height = sqlite3_column_int(st, 1);
        out->bytes = sqlite3_column_int64(st, 2);
        out->created_ms = sqlite3_column_int64(st, 3);
        out->last_used_ms = sqlite3_column_int64(st, 4);
        out->hits = sqlite3_column_int64(st, 5);
        rc = 0;
    }
out:
    sqlite3_finalize(st);
    pthread_mutex_unlock(&c->mu);
    return rc;
}
