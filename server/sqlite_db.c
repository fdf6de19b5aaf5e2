/*
 * server/sqlite_db.c: open, check, migrate or move aside one of tasamd's
 * SQLite databases. See sqlite_db.h.
 */
#include "server/sqlite_db.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "server/log.h"

int srv_db_exec(sqlite3 *db, const char *sql)
{
    char *msg = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &msg);
    if (rc != SQLITE_OK) {
        srv_log_debug("sqlite: %s: %s", sql, msg ? msg : sqlite3_errstr(rc));
        sqlite3_free(msg);
    }
    return rc;
}

int64_t srv_db_query_int(sqlite3 *db, const char *sql)
{
    sqlite3_stmt *st = NULL;
    int64_t v = -1;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
}

void srv_db_col_text(sqlite3_stmt *st, int i, char *out, size_t cap)
{
    const unsigned char *s = sqlite3_column_text(st, i);
    snprintf(out, cap, "%s", s ? (const char *)s : "");
}

int srv_mkdirs(const char *dir)
{
    char tmp[4096];
    size_t n = strlen(dir);
    if (n == 0 || n >= sizeof tmp) {
        errno = ENAMETOOLONG;
        return -1;
    }
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

int srv_db_is_corruption(int rc)
{
    rc &= 0xff;
    return rc == SQLITE_CORRUPT || rc == SQLITE_NOTADB;
}

int srv_db_query_rc(sqlite3 *db, const char *sql, int64_t *v)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
    if (rc == SQLITE_OK) {
        rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) {
            *v = sqlite3_column_int64(st, 0);
            rc = SQLITE_OK;
        }
    }
    sqlite3_finalize(st);
    return rc;
}

int srv_db_try_open(sqlite3 **db, const char *path, const srv_db_schema *sc, int mutex_flag,
                    char *why, size_t whylen)
{
    sqlite3_stmt *st = NULL;
    int64_t ver = 0, app = 0, tables = 0;
    int rc =
        sqlite3_open_v2(path, db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | mutex_flag, NULL);
    if (rc != SQLITE_OK) {
        snprintf(why, whylen, "cannot open: %s", sqlite3_errstr(rc));
        return srv_db_is_corruption(rc) ? 1 : 2;
    }
    sqlite3_extended_result_codes(*db, 1);
    sqlite3_busy_timeout(*db, 5000);
    /* quick_check first: on a file that is not a database this is where
     * SQLite notices (SQLITE_NOTADB); an I/O error here is not corruption */
    rc = sqlite3_prepare_v2(*db, "PRAGMA quick_check", -1, &st, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(st);
    if (rc != SQLITE_ROW) {
        snprintf(why, whylen, "PRAGMA quick_check could not run: %s", sqlite3_errstr(rc));
        sqlite3_finalize(st);
        return srv_db_is_corruption(rc) ? 1 : 2;
    }
    const char *verdict = (const char *)sqlite3_column_text(st, 0);
    if (!verdict || strcmp(verdict, "ok") != 0) {
        snprintf(why, whylen, "fails PRAGMA quick_check (%.200s)", verdict ? verdict : "");
        sqlite3_finalize(st);
        return 1;
    }
    sqlite3_finalize(st);
    if ((rc = srv_db_exec(*db, "PRAGMA journal_mode=WAL")) != SQLITE_OK ||
        (rc = srv_db_exec(*db, "PRAGMA synchronous=NORMAL")) != SQLITE_OK ||
        (rc = srv_db_exec(*db, "PRAGMA foreign_keys=ON")) != SQLITE_OK) {
        snprintf(why, whylen, "cannot set WAL mode: %s", sqlite3_errstr(rc));
        return srv_db_is_corruption(rc) ? 1 : 2;
    }
    if ((rc = srv_db_query_rc(*db, "PRAGMA user_version", &ver)) != SQLITE_OK ||
        (rc = srv_db_query_rc(*db, "PRAGMA application_id", &app)) != SQLITE_OK ||
        (rc = srv_db_query_rc(*db, "SELECT COUNT(*) FROM sqlite_master", &tables)) != SQLITE_OK) {
        snprintf(why, whylen, "cannot read its header: %s", sqlite3_errstr(rc));
        return srv_db_is_corruption(rc) ? 1 : 2;
    }
    if (app != 0 && app != sc->app_id) {
        snprintf(why, whylen, "belongs to another application (application_id %lld)",
                 (long long)app);
        return 1;
    }
    if (ver == 0 && tables > 0) {
        snprintf(why, whylen, "has tables but no tasam schema version");
        return 1;
    }
    if (ver > sc->version) {
        snprintf(why, whylen, "has schema version %lld, newer than this build's %d", (long long)ver,
                 sc->version);
        return 1;
    }
    for (int64_t v = ver + 1; v <= sc->version; v++) {
        char bump[96];
        snprintf(bump, sizeof bump, "PRAGMA user_version=%lld; PRAGMA application_id=%d;",
                 (long long)v, sc->app_id);
        if ((rc = srv_db_exec(*db, "BEGIN IMMEDIATE")) != SQLITE_OK)
            goto fail_migrate;
        if ((rc = srv_db_exec(*db, sc->migrations[v - 1])) != SQLITE_OK ||
            (rc = srv_db_exec(*db, bump)) != SQLITE_OK) {
            srv_db_exec(*db, "ROLLBACK");
            goto fail_migrate;
        }
        if ((rc = srv_db_exec(*db, "COMMIT")) != SQLITE_OK)
            goto fail_migrate;
        srv_log_info("%s: %s migrated to schema version %lld", sc->what, path, (long long)v);
    }
    return 0;
fail_migrate:
    snprintf(why, whylen, "migration failed: %s", sqlite3_errstr(rc));
    return srv_db_is_corruption(rc) ? 1 : 2;
}

/* One <file>.corrupt-* file found when pruning. */
typedef struct corrupt_file {
    char name[256]; /* its name in the folder */
    time_t mtime;   /* when it was moved aside */
} corrupt_file;

static int newest_first(const void *a, const void *b)
{
    const corrupt_file *x = a, *y = b;
    if (x->mtime != y->mtime)
        return x->mtime < y->mtime ? 1 : -1;
    return strcmp(y->name, x->name);
}

/* Contract: deletes all but the newest `keep` <base>.corrupt-* files of
 * `dir` (with their -wal and -shm). */
static void prune_corrupt(const char *dir, const char *base, int keep)
{
    char prefix[300];
    size_t pl = (size_t)snprintf(prefix, sizeof prefix, "%s.corrupt-", base);
    DIR *d = opendir(dir);
    corrupt_file *f = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    if (!d || pl >= sizeof prefix) {
        if (d)
            closedir(d);
        return;
    }
    while ((e = readdir(d))) {
        size_t len = strlen(e->d_name);
        if (strncmp(e->d_name, prefix, pl) != 0 || len >= sizeof f->name ||
            (len > 4 &&
             (!strcmp(e->d_name + len - 4, "-wal") || !strcmp(e->d_name + len - 4, "-shm"))))
            continue;
        if (n == cap) {
            corrupt_file *g = realloc(f, (cap = cap ? 2 * cap : 16) * sizeof *f);
            if (!g)
                break;
            f = g;
        }
        char path[4608]; /* dir (< 4200) + / + a name (< 256) + a suffix */
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        snprintf(f[n].name, sizeof f[n].name, "%s", e->d_name);
        f[n].mtime = stat(path, &st) == 0 ? st.st_mtime : 0;
        n++;
    }
    closedir(d);
    if (n)
        qsort(f, n, sizeof *f, newest_first);
    for (size_t i = (size_t)(keep > 0 ? keep : 0); i < n; i++) {
        static const char *const suf[] = {"", "-wal", "-shm"};
        for (int k = 0; k < 3; k++) {
            char path[4608];
            snprintf(path, sizeof path, "%s/%s%s", dir, f[i].name, suf[k]);
            if (unlink(path) == 0 && k == 0)
                srv_log_info("deleted %s (keeping the newest %d)", path, keep);
        }
    }
    free(f);
}

int srv_db_move_aside(const char *path, const char *what, const char *why, int keep)
{
    char dst[4200], a[4300], b[4300];
    long t = (long)time(NULL);
    struct stat st;
    snprintf(dst, sizeof dst, "%s.corrupt-%ld", path, t);
    for (int k = 2; stat(dst, &st) == 0 && k < 1000; k++)
        snprintf(dst, sizeof dst, "%s.corrupt-%ld-%d", path, t, k);
    if (rename(path, dst) != 0 && errno != ENOENT) {
        srv_log_error("%s: %s %s and cannot be moved aside: %s", what, path, why, strerror(errno));
        return -1;
    }
    for (int k = 0; k < 2; k++) {
        const char *suf = k ? "-shm" : "-wal";
        snprintf(a, sizeof a, "%s%s", path, suf);
        snprintf(b, sizeof b, "%s%s", dst, suf);
        if (rename(a, b) != 0 && errno != ENOENT)
            unlink(a);
    }
    srv_log_warn("%s: %s %s; moved aside to %s, starting an empty one", what, path, why, dst);
    if (keep >= 0) {
        char dir[4200];
        snprintf(dir, sizeof dir, "%s", path);
        char *slash = strrchr(dir, '/');
        const char *base = slash ? slash + 1 : path;
        if (slash)
            *slash = 0;
        prune_corrupt(slash ? dir : ".", base, keep);
    }
    return 0;
}

int srv_db_open(sqlite3 **out, const char *path, const srv_db_schema *sc, char *err, size_t errlen)
{
    char why[512];
    sqlite3 *db = NULL;
    int rc = srv_db_try_open(&db, path, sc, SQLITE_OPEN_FULLMUTEX, why, sizeof why);
    if (rc == 1) {
        sqlite3_close(db);
        db = NULL;
        if (srv_db_move_aside(path, sc->what, why, -1) != 0)
            return srv_errf(err, errlen, "%s %s %s and cannot be moved aside", sc->what, path, why);
        rc = srv_db_try_open(&db, path, sc, SQLITE_OPEN_FULLMUTEX, why, sizeof why);
    }
    if (rc != 0) {
        /* an I/O error, a full disk, permissions: the file is kept as it is */
        sqlite3_close(db);
        return srv_errf(err, errlen, "%s %s: %s", sc->what, path, why);
    }
    *out = db;
    return 0;
}

void srv_db_close(sqlite3 *db, const char *path)
{
    if (!db)
        return;
    srv_db_exec(db, "PRAGMA wal_checkpoint(TRUNCATE)");
    if (sqlite3_close(db) != SQLITE_OK)
        srv_log_warn("closing %s: %s", path ? path : "a database", sqlite3_errmsg(db));
}
