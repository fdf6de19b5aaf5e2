/*
 * server/sqlite_db.h: opening one of tasamd's SQLite databases (the cache,
 * STATE_DIR/cache.db, and the training records, STATE_DIR/train.db) the same
 * way: WAL with synchronous=NORMAL and foreign keys, a PRAGMA
 * application_id that marks the file as ours, a PRAGMA user_version brought
 * up to date by running the missing migrations in order (each in one
 * transaction together with the version bump), and a PRAGMA quick_check
 * first. A file that fails the check, is not SQLite, belongs to another
 * application or carries a newer schema is renamed
 * `<file>.corrupt-<unix time>` (with its -wal and -shm files) with a log line
 * and a fresh database is created in its place; an I/O error or a full disk
 * is not corruption, and never moves a file aside.
 *
 * The connection is opened in SQLite's serialized mode; callers still keep
 * their own mutex around multi-statement work.
 */
#ifndef TASAM_SERVER_SQLITE_DB_H
#define TASAM_SERVER_SQLITE_DB_H

#include <stddef.h>
#include <stdint.h>

#include <sqlite3.h>

/* What a database is. */
typedef struct srv_db_schema {
    const char *what;              /* "cache", "training records": names the file in logs */
    int app_id;                    /* PRAGMA application_id of our files */
    int version;                   /* schema version this build writes */
    const char *const *migrations; /* [version]: entry v-1 takes version v-1 to v */
} srv_db_schema;

/*
 * Open `path` (creating it) and bring it to sc's schema, moving an unusable
 * file aside first (every moved-aside file is kept: these are records).
 * Returns 0 with *out set, or -1 with a message in err (the directory is
 * not writable, an I/O error or a full disk: the file is left as it is, or
 * even a fresh file cannot be set up).
 */
int srv_db_open(sqlite3 **out, const char *path, const srv_db_schema *sc, char *err, size_t errlen);

/*
 * One attempt at opening `path` into *db (extended result codes on) with
 * `mutex_flag` (SQLITE_OPEN_NOMUTEX or SQLITE_OPEN_FULLMUTEX), checking and
 * migrating it. Returns 0; 1 when the file is unusable as ours (corrupt, not
 * a database, another application's, a newer schema: move it aside); 2 for
 * anything else (an I/O error, a full disk, permissions: they say nothing
 * about the file, which must be kept). `why` says what happened. On a
 * non-zero return *db may still need closing.
 */
int srv_db_try_open(sqlite3 **db, const char *path, const srv_db_schema *sc, int mutex_flag,
                    char *why, size_t whylen);

/* Rename `path` (and its -wal and -shm) to `<path>.corrupt-<unix time>`,
 * never over an earlier one, logging `why`; then, when keep >= 0, delete
 * all but the newest `keep` such files. 0, or -1 (logged). */
int srv_db_move_aside(const char *path, const char *what, const char *why, int keep);

/* 1 for SQLite's verdict that the file itself is bad (SQLITE_CORRUPT,
 * SQLITE_NOTADB), 0 for everything else. */
int srv_db_is_corruption(int rc);

/* Checkpoint the WAL and close. NULL ok. */
void srv_db_close(sqlite3 *db, const char *path);

/* Run SQL without results; returns 0 or the SQLite code (logged at debug). */
int srv_db_exec(sqlite3 *db, const char *sql);

/* The single integer a PRAGMA/SELECT returns, or -1. */
int64_t srv_db_query_int(sqlite3 *db, const char *sql);
/* The same into *v; SQLITE_OK or the failing SQLite code. */
int srv_db_query_rc(sqlite3 *db, const char *sql, int64_t *v);

/* Text column i of a row into out (cap bytes, always terminated; "" for
 * NULL). */
void srv_db_col_text(sqlite3_stmt *st, int i, char *out, size_t cap);

/* mkdir -p with mode 0750; 0 or -1 (errno set). */
int srv_mkdirs(const char *dir);

#endif
