/*
 * server/sqlite_db.c: open, check, migrate or move aside one of tasamd's
 * SQLite databases. See sqlite_db.h.
 */
#include "server/sqlite_db.h"

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

/*
 * Contract: opens `path` into *db and brings it to the schema. Returns 0,
 * 1 when the file is unusable (corrupt, foreign, newer: the caller moves it
 * aside; `why` says which), or -1 for errors that moving aside cannot fix.
 * On a non-zero return *db may still need closing.
 */
static int try_open(sqlite3 **db, const char *path, const srv_db_schema *sc, char *why,
                    size_t whylen)
{
    sqlite3_stmt *st = NULL;
    int rc;
    int64_t ver, app, tables;

    rc = sqlite3_open_v2(path, db,
                         SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX, NULL);
    if (rc != SQLITE_OK) {
        snprintf(why, whylen, "cannot open: %s", sqlite3_errstr(rc));
        return rc == SQLITE_CANTOPEN ? -1 : 1;
    }
    sqlite3_busy_timeout(*db, 5000);
    /* quick_check first: on a file that is not a database this is where
     * SQLite notices (SQLITE_NOTADB). */
    rc = sqlite3_prepare_v2(*db, "PRAGMA quick_check", -1, &st, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(st);
    if (rc != SQLITE_ROW || !sqlite3_column_text(st, 0) ||
        strcmp((const char *)sqlite3_column_text(st, 0), "ok") != 0) {
        snprintf(why, whylen, "fails PRAGMA quick_check (%s)",
                 rc == SQLITE_ROW && sqlite3_column_text(st, 0)
                     ? (const char *)sqlite3_column_text(st, 0)
                     : sqlite3_errmsg(*db));
        sqlite3_finalize(st);
        return 1;
    }
    sqlite3_finalize(st);
    if (srv_db_exec(*db, "PRAGMA journal_mode=WAL") != SQLITE_OK ||
        srv_db_exec(*db, "PRAGMA synchronous=NORMAL") != SQLITE_OK ||
        srv_db_exec(*db, "PRAGMA foreign_keys=ON") != SQLITE_OK) {
        snprintf(why, whylen, "cannot set WAL mode: %s", sqlite3_errmsg(*db));
        return 1;
    }
    ver = srv_db_query_int(*db, "PRAGMA user_version");
    app = srv_db_query_int(*db, "PRAGMA application_id");
    tables = srv_db_query_int(*db, "SELECT COUNT(*) FROM sqlite_master");
    if (ver < 0 || app < 0 || tables < 0) {
        snprintf(why, whylen, "cannot read its header: %s", sqlite3_errmsg(*db));
        return 1;
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
        if (srv_db_exec(*db, "BEGIN IMMEDIATE") != SQLITE_OK)
            goto fail_migrate;
        if (srv_db_exec(*db, sc->migrations[v - 1]) != SQLITE_OK ||
            srv_db_exec(*db, bump) != SQLITE_OK) {
            srv_db_exec(*db, "ROLLBACK");
            goto fail_migrate;
        }
        if (srv_db_exec(*db, "COMMIT") != SQLITE_OK)
            goto fail_migrate;
        srv_log_info("%s: %s migrated to schema version %lld", sc->what, path, (long long)v);
    }
    return 0;
fail_migrate:
    snprintf(why, whylen, "migration failed: %s", sqlite3_errmsg(*db));
    return 1;
}

/* Contract: renames the database (and its -wal/-shm files) aside. */
static int move_aside(const char *path, const char *what, const char *why)
{
    char dst[4200], a[4300], b[4300];
    long t = (long)time(NULL);
    snprintf(dst, sizeof dst, "%s.corrupt-%ld", path, t);
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
    return 0;
}

int srv_db_open(sqlite3 **out, const char *path, const srv_db_schema *sc, char *err, size_t errlen)
{
    char why[512];
    sqlite3 *db = NULL;
    int rc = try_open(&db, path, sc, why, sizeof why);
    if (rc == 1) {
        sqlite3_close(db);
        db = NULL;
        if (move_aside(path, sc->what, why) != 0)
            return srv_errf(err, errlen, "%s %s %s and cannot be moved aside", sc->what, path, why);
        rc = try_open(&db, path, sc, why, sizeof why);
    }
    if (rc != 0) {
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
