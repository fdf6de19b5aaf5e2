/*
 * server/cache.c: the two-tier embedding cache (memory LRU + SQLite) and the
 * adapter cache's SQLite tier.
 */
#include "server/cache.h"

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

/* One entry of the memory tier. */
typedef struct mem_slot {
    char sha[65];      /* key ("" when the slot is empty) */
    int w, h;          /* image size */
    float *data;       /* `floats` floats (allocated on first use) */
    uint64_t tick;     /* last use, larger is newer */
} mem_slot;

struct srv_cache {
    pthread_mutex_t mu;      /* guards everything below */
    sqlite3 *db;             /* the connection; NULL after a fatal error */
    char *path;              /* STATE_DIR/cache.db */
    int lock_fd;             /* flock'ed STATE_DIR/tasamd.lock */
    size_t floats;           /* floats per embedding */
    int64_t budget;          /* disk byte budget; 0 disables the disk tier */
    int64_t disk_bytes;      /* SUM(bytes) of the rows */
    int64_t disk_rows;       /* COUNT(*) */
    char model_id[64];       /* key part; "" until srv_cache_set_model */
    char precision[8];       /* key part */
    mem_slot *slots;         /* memory tier */
    int n_slots;             /* entries in slots */
    uint64_t tick;           /* LRU clock for the memory tier */
    int64_t clock_ms;        /* last last_used written: strictly increasing, so LRU order has no ties */
    float *scratch;          /* a disk hit lands here when the memory tier has no slots */
    srv_metrics *m;          /* borrowed; may be NULL */
    int64_t ad_budget;       /* adapter byte budget; 0 disables the adapter tier */
    int64_t ad_bytes;        /* SUM(bytes) of the adapter rows */
    int64_t ad_rows;         /* COUNT(*) of the adapter rows */
};

static int64_t now_ms(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

/* Contract: under mu; a unix-ms timestamp greater than every one written
 * before by this process or found in the database at open. */
static int64_t use_stamp(srv_cache *c)
{
    int64_t t = now_ms();
    c->clock_ms = t > c->clock_ms ? t : c->clock_ms + 1;
    return c->clock_ms;
}

static uint32_t blob_crc(const void *p, size_t n)
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

static void gauges(srv_cache *c)
{
    if (!c->m)
        return;
    int used = 0;
    for (int i = 0; i < c->n_slots; i++)
        used += c->slots[i].sha[0] != 0;
    srv_metrics_gauge_set(&c->m->cache_bytes_disk, c->disk_bytes);
    srv_metrics_gauge_set(&c->m->cache_entries_disk, c->disk_rows);
    srv_metrics_gauge_set(&c->m->cache_bytes_mem, (int64_t)used * (int64_t)(c->floats * sizeof(float)));
    srv_metrics_gauge_set(&c->m->adapter_bytes_disk, c->ad_bytes);
    srv_metrics_gauge_set(&c->m->adapter_entries_disk, c->ad_rows);
}

/* Contract: runs SQL without results; returns 0 or the SQLite code. */
static int exec(sqlite3 *db, const char *sql)
{
    char *msg = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &msg);
    if (rc != SQLITE_OK) {
        srv_log_debug("cache: sqlite: %s: %s", sql, msg ? msg : sqlite3_errstr(rc));
        sqlite3_free(msg);
    }
    return rc;
}

/* Contract: the single integer a PRAGMA/SELECT returns, or -1. */
static int64_t query_int(sqlite3 *db, const char *sql)
{
    sqlite3_stmt *st = NULL;
    int64_t v = -1;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
}

static void refresh_totals(srv_cache *c)
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

/*
 * Contract: opens c->path and brings it to the current schema. Returns 0,
 * 1 when the file is unusable (corrupt, foreign, newer: the caller moves it
 * aside; `why` says which), or -1 for errors that moving aside cannot fix.
 */
static int try_open(srv_cache *c, char *why, size_t whylen)
{
    sqlite3_stmt *st = NULL;
    int rc;
    int64_t ver, app, tables;

    rc = sqlite3_open_v2(c->path, &c->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
                         SQLITE_OPEN_FULLMUTEX, NULL);
    if (rc != SQLITE_OK) {
        snprintf(why, whylen, "cannot open: %s", sqlite3_errstr(rc));
        return rc == SQLITE_CANTOPEN ? -1 : 1;
    }
    sqlite3_busy_timeout(c->db, 5000);
    /* quick_check first: on a file that is not a database this is where
     * SQLite notices (SQLITE_NOTADB). */
    rc = sqlite3_prepare_v2(c->db, "PRAGMA quick_check", -1, &st, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(st);
    if (rc != SQLITE_ROW || !sqlite3_column_text(st, 0) ||
        strcmp((const char *)sqlite3_column_text(st, 0), "ok") != 0) {
        snprintf(why, whylen, "fails PRAGMA quick_check (%s)",
                 rc == SQLITE_ROW && sqlite3_column_text(st, 0)
                     ? (const char *)sqlite3_column_text(st, 0)
                     : sqlite3_errmsg(c->db));
        sqlite3_finalize(st);
        return 1;
    }
    sqlite3_finalize(st);
    st = NULL;
    if (exec(c->db, "PRAGMA journal_mode=WAL") != SQLITE_OK ||
        exec(c->db, "PRAGMA synchronous=NORMAL") != SQLITE_OK ||
        exec(c->db, "PRAGMA foreign_keys=ON") != SQLITE_OK) {
        snprintf(why, whylen, "cannot set WAL mode: %s", sqlite3_errmsg(c->db));
        return 1;
    }
    ver = query_int(c->db, "PRAGMA user_version");
    app = query_int(c->db, "PRAGMA application_id");
    tables = query_int(c->db, "SELECT COUNT(*) FROM sqlite_master");
    if (ver < 0 || app < 0 || tables < 0) {
        snprintf(why, whylen, "cannot read its header: %s", sqlite3_errmsg(c->db));
        return 1;
    }
    if (app != 0 && app != SRV_CACHE_APP_ID) {
        snprintf(why, whylen, "belongs to another application (application_id %lld)", (long long)app);
        return 1;
    }
    if (ver == 0 && tables > 0) {
        snprintf(why, whylen, "has tables but no tasam schema version");
        return 1;
    }
    if (ver > SRV_CACHE_SCHEMA_VERSION) {
        snprintf(why, whylen, "has schema version %lld, newer than this build's %d", (long long)ver,
                 SRV_CACHE_SCHEMA_VERSION);
        return 1;
    }
    for (int64_t v = ver + 1; v <= SRV_CACHE_SCHEMA_VERSION; v++) {
        char bump[96];
        snprintf(bump, sizeof bump, "PRAGMA user_version=%lld; PRAGMA application_id=%d;",
                 (long long)v, SRV_CACHE_APP_ID);
        if (exec(c->db, "BEGIN IMMEDIATE") != SQLITE_OK)
            goto fail_migrate;
        if (exec(c->db, cache_migrations[v - 1]) != SQLITE_OK || exec(c->db, bump) != SQLITE_OK) {
            exec(c->db, "ROLLBACK");
            goto fail_migrate;
        }
        if (exec(c->db, "COMMIT") != SQLITE_OK)
            goto fail_migrate;
        srv_log_info("cache: %s migrated to schema version %lld", c->path, (long long)v);
    }
    refresh_totals(c);
    c->clock_ms = query_int(c->db, "SELECT MAX(COALESCE((SELECT MAX(last_used) FROM embedding), 0), "
                                   "COALESCE((SELECT MAX(last_used) FROM adapter), 0))");
    return 0;
fail_migrate:
    snprintf(why, whylen, "migration failed: %s", sqlite3_errmsg(c->db));
    return 1;
}

/* Contract: renames the database (and its -wal/-shm files) aside. */
static int move_aside(srv_cache *c, const char *why)
{
    char dst[4200], a[4300], b[4300];
    long t = (long)time(NULL);
    snprintf(dst, sizeof dst, "%s.corrupt-%ld", c->path, t);
    if (rename(c->path, dst) != 0 && errno != ENOENT) {
        srv_log_error("cache: %s %s and cannot be moved aside: %s", c->path, why, strerror(errno));
        return -1;
    }
    for (int k = 0; k < 2; k++) {
        const char *suf = k ? "-shm" : "-wal";
        snprintf(a, sizeof a, "%s%s", c->path, suf);
        snprintf(b, sizeof b, "%s%s", dst, suf);
        if (rename(a, b) != 0 && errno != ENOENT)
            unlink(a);
    }
    srv_log_warn("cache: %s %s; moved aside to %s, starting an empty cache", c->path, why, dst);
    return 0;
}

static int mkdir_p(const char *dir)
{
    char tmp[4096];
    size_t n = strlen(dir);
    if (n == 0 || n >= sizeof tmp)
        return -1;
    memcpy(tmp, dir, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (tmp[i] == '/' || tmp[i] == 0) {
            char s = tmp[i];
            tmp[i] = 0;
            if (mkdir(tmp, 0750) != 0 && errno != EEXIST)
                return -1;
            tmp[i] = s;
        }
    }
    return 0;
}

int srv_cache_open(srv_cache **out, const char *state_dir, size_t floats, int64_t budget_bytes,
                   int mem_slots, srv_metrics *m, char *err, size_t errlen)
{
    srv_cache *c;
    char lockpath[4200], why[512];
    int rc;

    *out = NULL;
    if (mkdir_p(state_dir) != 0)
        return srv_errf(err, errlen, "state dir '%s': cannot create: %s", state_dir, strerror(errno));
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
        srv_errf(err, errlen, "state dir '%s': cannot open %s: %s", state_dir, lockpath, strerror(errno));
        goto err;
    }
    if (flock(c->lock_fd, LOCK_EX | LOCK_NB) != 0) {
        srv_errf(err, errlen, "state dir '%s' is in use by another tasamd (%s is locked)", state_dir,
             lockpath);
        goto err;
    }
    rc = try_open(c, why, sizeof why);
    if (rc == 1) {
        sqlite3_close(c->db);
        c->db = NULL;
        if (move_aside(c, why) != 0) {
            srv_errf(err, errlen, "cache %s %s and cannot be moved aside", c->path, why);
            goto err;
        }
        rc = try_open(c, why, sizeof why);
    }
    if (rc != 0) {
        srv_errf(err, errlen, "cache %s: %s", c->path, why);
        goto err;
    }
    srv_log_info("cache: %s: %lld embeddings, %lld bytes (budget %lld); %d memory slots; %lld "
                 "adapters, %lld bytes",
                 c->path, (long long)c->disk_rows, (long long)c->disk_bytes, (long long)c->budget,
                 mem_slots, (long long)c->ad_rows, (long long)c->ad_bytes);
    gauges(c);
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
    if (c->db) {
        exec(c->db, "PRAGMA wal_checkpoint(TRUNCATE)");
        if (sqlite3_close(c->db) != SQLITE_OK)
            srv_log_warn("cache: closing %s: %s", c->path, sqlite3_errmsg(c->db));
    }
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
        sqlite3_bind_int64(st, 1, use_stamp(c));
        sqlite3_bind_text(st, 2, sha, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, c->model_id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 4, c->precision, -1, SQLITE_STATIC);
        sqlite3_step(st);
    }
    sqlite3_finalize(st);
}

/* Contract: under mu: delete row `id` of `table` ("embedding" or "adapter");
 * its blob goes with it (ON DELETE CASCADE). */
static void delete_from(srv_cache *c, const char *table, int64_t id)
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

static void delete_row(srv_cache *c, int64_t id) { delete_from(c, "embedding", id); }

/* Contract: under mu, inside a transaction: store `len` bytes as the blob of
 * row `row` (`table` is "embedding_blob" or "adapter_blob", `key` its row
 * column). Returns 0 or -1 (sqlite3_errmsg has why). */
static int insert_blob(srv_cache *c, const char *table, const char *key, int64_t row,
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
static int evict_lru(srv_cache *c, const char *table, int64_t keep_id, int64_t *bytes,
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
        delete_from(c, table, id);
        *bytes -= b;
        (*rows)--;
        n++;
    }
    return n;
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
    if (sqlite3_prepare_v2(c->db,
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
        if (!blob || blen != want || bytes != (int64_t)want || blob_crc(blob, blen) != crc ||
            iw <= 0 || ih <= 0) {
            srv_log_warn("cache: embedding %s in %s is corrupt (%zu bytes, checksum %s); dropped",
                         sha, c->path, blen,
                         blob && blen == want && blob_crc(blob, blen) == crc ? "ok" : "mismatch");
            sqlite3_finalize(st);
            st = NULL;
            delete_row(c, id);
            refresh_totals(c);
            if (c->m)
                srv_metrics_add(&c->m->cache_corrupt, 1);
            gauges(c);
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
        gauges(c);
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
static int evict(srv_cache *c, int64_t keep_id)
{
    int n = evict_lru(c, "embedding", keep_id, &c->disk_bytes, &c->disk_rows, c->budget);
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
    t = use_stamp(c);
    if (exec(c->db, "BEGIN IMMEDIATE") != SQLITE_OK) {
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
    if (sqlite3_prepare_v2(c->db,
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
    sqlite3_bind_int64(st, 7, (int64_t)blob_crc(emb, bytes));
    sqlite3_bind_int64(st, 8, t);
    if (sqlite3_step(st) != SQLITE_DONE)
        goto fail;
    sqlite3_finalize(st);
    st = NULL;
    id = sqlite3_last_insert_rowid(c->db);
    if (insert_blob(c, "embedding_blob", "embedding_id", id, emb, bytes) != 0)
        goto fail;
    refresh_totals(c);
    evict(c, id);
    if (exec(c->db, "COMMIT") != SQLITE_OK)
        goto fail;
    refresh_totals(c);
    gauges(c);
    goto out;
fail:
    srv_log_warn("cache: storing %s: %s", sha, sqlite3_errmsg(c->db));
    sqlite3_finalize(st);
    st = NULL;
    exec(c->db, "ROLLBACK");
    refresh_totals(c);
    rc = -1;
out:
    gauges(c);
    pthread_mutex_unlock(&c->mu);
    return rc;
}

int srv_cache_peek(srv_cache *c, const char *sha, int *w, int *h)
{
    sqlite3_stmt *st = NULL;
    mem_slot *s;
    int found = 0;
    pthread_mutex_lock(&c->mu);
    if (!c->model_id[0])
        goto out;
    if ((s = mem_find(c, sha))) {
        *w = s->w;
        *h = s->h;
        found = 1;
        goto out;
    }
    if (!c->db || c->budget <= 0)
        goto out;
    if (sqlite3_prepare_v2(c->db,
                           "SELECT width, height FROM embedding WHERE image_sha256=?1 AND model_id=?2 "
                           "AND precision=?3",
                           -1, &st, NULL) == SQLITE_OK) {
        sqlite3_bind_text(st, 1, sha, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, c->model_id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, c->precision, -1, SQLITE_STATIC);
        if (sqlite3_step(st) == SQLITE_ROW) {
            *w = sqlite3_column_int(st, 0);
            *h = sqlite3_column_int(st, 1);
            found = 1;
        }
    }
out:
    sqlite3_finalize(st);
    pthread_mutex_unlock(&c->mu);
    return found;
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

static int ad_evict(srv_cache *c, int64_t keep_id);

void srv_cache_maintain(srv_cache *c)
{
    if (!c)
        return;
    pthread_mutex_lock(&c->mu);
    if (c->db) {
        if (c->disk_bytes > c->budget && exec(c->db, "BEGIN IMMEDIATE") == SQLITE_OK) {
            int n = evict(c, -1);
            if (exec(c->db, "COMMIT") != SQLITE_OK)
                exec(c->db, "ROLLBACK");
            refresh_totals(c);
            if (n)
                srv_log_info("cache: evicted %d embeddings to fit the budget of %lld bytes", n,
                             (long long)c->budget);
        }
        if (c->ad_bytes > c->ad_budget && exec(c->db, "BEGIN IMMEDIATE") == SQLITE_OK) {
            int n = ad_evict(c, -1);
            if (exec(c->db, "COMMIT") != SQLITE_OK)
                exec(c->db, "ROLLBACK");
            refresh_totals(c);
            if (n)
                srv_log_info("cache: evicted %d adapters to fit the budget of %lld bytes", n,
                             (long long)c->ad_budget);
        }
        exec(c->db, "PRAGMA wal_checkpoint(PASSIVE)");
    }
    gauges(c);
    pthread_mutex_unlock(&c->mu);
}

const char *srv_cache_path(const srv_cache *c)
{
    return c->path;
}

/* ---- adapters ---- */

void srv_cache_set_adapter_budget(srv_cache *c, int64_t budget_bytes)
{
    pthread_mutex_lock(&c->mu);
    c->ad_budget = budget_bytes;
    pthread_mutex_unlock(&c->mu);
}

#define AD_COLS                                                                                   \
    "a.adapter_id, a.task, a.task_normalized, a.hypernet_id, a.hypernet_version, a.text_model, "  \
    "a.rank, a.alpha, a.bytes, a.created, a.last_used, a.hits"
#define AD_NCOLS 12

static void col_text(sqlite3_stmt *st, int i, char *out, size_t cap)
{
    const unsigned char *t = sqlite3_column_text(st, i);
    snprintf(out, cap, "%s", t ? (const char *)t : "");
}

/* Contract: fills *m from the AD_COLS columns of the current row. */
static void ad_row(sqlite3_stmt *st, srv_adapter_meta *m)
{
    memset(m, 0, sizeof *m);
    col_text(st, 0, m->id, sizeof m->id);
    col_text(st, 1, m->task, sizeof m->task);
    col_text(st, 2, m->task_normalized, sizeof m->task_normalized);
    col_text(st, 3, m->hypernet_id, sizeof m->hypernet_id);
    col_text(st, 4, m->hypernet_version, sizeof m->hypernet_version);
    col_text(st, 5, m->text_model, sizeof m->text_model);
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
        sqlite3_bind_int64(st, 1, use_stamp(c));
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
    refresh_totals(c);
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
    gauges(c);
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
        if (!data || n == 0 || (int64_t)n != m.bytes || blob_crc(data, n) != crc) {
            srv_log_warn("cache: adapter %s in %s is corrupt (%zu bytes, %lld expected, checksum "
                         "%s); dropped",
                         id, c->path, n, (long long)m.bytes,
                         data && blob_crc(data, n) == crc ? "ok" : "mismatch");
            sqlite3_finalize(st);
            st = NULL;
            ad_delete_locked(c, id);
            if (c->m)
                srv_metrics_add(&c->m->adapter_corrupt, 1);
            gauges(c);
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
static int ad_evict(srv_cache *c, int64_t keep_id)
{
    int n = evict_lru(c, "adapter", keep_id, &c->ad_bytes, &c->ad_rows, c->ad_budget);
    if (n && c->m)
        srv_metrics_add(&c->m->adapter_evictions_disk, (uint64_t)n);
    return n;
}

int srv_cache_adapter_put(srv_cache *c, const srv_adapter_meta *m, const uint8_t *blob,
                          size_t len)
{
    sqlite3_stmt *st = NULL;
    int rc = 0;
    int64_t t, row;
    pthread_mutex_lock(&c->mu);
    if (!c->db || c->ad_budget < (int64_t)len || len == 0) {
        rc = 1;
        goto out;
    }
    t = use_stamp(c);
    if (exec(c->db, "BEGIN IMMEDIATE") != SQLITE_OK) {
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
    sqlite3_bind_int64(st, 10, (int64_t)blob_crc(blob, len));
    sqlite3_bind_int64(st, 11, m->created_ms > 0 ? m->created_ms : t);
    sqlite3_bind_int64(st, 12, t);
    if (sqlite3_step(st) != SQLITE_DONE)
        goto fail;
    sqlite3_finalize(st);
    st = NULL;
    row = sqlite3_last_insert_rowid(c->db);
    if (insert_blob(c, "adapter_blob", "adapter_row", row, blob, len) != 0)
        goto fail;
    refresh_totals(c);
    ad_evict(c, row);
    if (exec(c->db, "COMMIT") != SQLITE_OK)
        goto fail;
    refresh_totals(c);
    goto out;
fail:
    srv_log_warn("cache: storing adapter %s: %s", m->id, sqlite3_errmsg(c->db));
    sqlite3_finalize(st);
    st = NULL;
    exec(c->db, "ROLLBACK");
    refresh_totals(c);
    rc = -1;
out:
    gauges(c);
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
        if (exec(c->db, "DELETE FROM adapter") != SQLITE_OK) {
            srv_log_warn("cache: flushing adapters: %s", sqlite3_errmsg(c->db));
            n = -1;
        }
        refresh_totals(c);
        gauges(c);
    }
    pthread_mutex_unlock(&c->mu);
    return n;
}
