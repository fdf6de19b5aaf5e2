/*
 * server/train_db.c: STATE_DIR/train.db, the training jobs and the
 * hypernetwork activation history. See train_db.h and schema/train.sql.
 */
#include "server/train_db.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sqlite3.h>

#include "server/log.h"
#include "server/sqlite_db.h"

/* Migrations: entry v-1 takes a database from version v-1 to v. The text is
 * the "-- migration v" block of schema/train.sql. */
static const char *const train_migrations[SRV_TDB_SCHEMA_VERSION] = {
    "CREATE TABLE job (\n"
    "    id             TEXT    PRIMARY KEY,\n"
    "    seq            INTEGER NOT NULL UNIQUE,\n"
    "    state          TEXT    NOT NULL,\n"
    "    params         TEXT    NOT NULL,\n"
    "    dir            TEXT    NOT NULL,\n"
    "    created        INTEGER NOT NULL,\n"
    "    started        INTEGER,\n"
    "    finished       INTEGER,\n"
    "    step           INTEGER NOT NULL DEFAULT 0,\n"
    "    steps          INTEGER NOT NULL,\n"
    "    loss           REAL,\n"
    "    focal          REAL,\n"
    "    dice           REAL,\n"
    "    iou_mse        REAL,\n"
    "    lr             REAL,\n"
    "    samples_per_s  REAL,\n"
    "    eta_s          REAL,\n"
    "    val            TEXT,\n"
    "    train_images   INTEGER,\n"
    "    val_images     INTEGER,\n"
    "    init_id        TEXT,\n"
    "    init_version   TEXT,\n"
    "    out_id         TEXT,\n"
    "    out_version    TEXT,\n"
    "    published      INTEGER,\n"
    "    reason         TEXT,\n"
    "    error          TEXT,\n"
    "    exit_status    INTEGER,\n"
    "    term_signal    INTEGER,\n"
    "    pid            INTEGER,\n"
    "    cancel         INTEGER NOT NULL DEFAULT 0\n"
    ");\n"
    "CREATE INDEX job_state ON job (state, seq);\n"
    "CREATE TABLE hypernet (\n"
    "    seq          INTEGER PRIMARY KEY,\n"
    "    hypernet_id  TEXT    NOT NULL,\n"
    "    version      TEXT    NOT NULL,\n"
    "    file         TEXT    NOT NULL,\n"
    "    source       TEXT    NOT NULL,\n"
    "    job          TEXT,\n"
    "    activated    INTEGER NOT NULL\n"
    ");\n"
    "CREATE TABLE meta (\n"
    "    key   TEXT PRIMARY KEY,\n"
    "    value TEXT NOT NULL\n"
    ");\n",
};

/* Exposed for the schema test: migration text taking version v-1 to v. */
const char *srv__tdb_migration(int v);
const char *srv__tdb_migration(int v)
{
    return v >= 1 && v <= SRV_TDB_SCHEMA_VERSION ? train_migrations[v - 1] : NULL;
}

static const srv_db_schema train_schema = {"training records", SRV_TDB_APP_ID,
                                           SRV_TDB_SCHEMA_VERSION, train_migrations};

struct srv_tdb {
    pthread_mutex_t mu; /* serialises every call */
    sqlite3 *db;        /* the connection */
    char *path;         /* STATE_DIR/train.db */
};

static const char *const state_names[SRV_TJ_STATES] = {"queued", "running", "succeeded", "failed",
                                                       "cancelled"};

const char *srv_tjob_state_name(srv_tjob_state s)
{
    return (int)s >= 0 && s < SRV_TJ_STATES ? state_names[s] : "unknown";
}

int srv_tjob_state_parse(const char *name)
{
    for (int i = 0; i < SRV_TJ_STATES; i++)
        if (name && !strcmp(name, state_names[i]))
            return i;
    return -1;
}

void srv_tjob_init(srv_tjob *j)
{
    memset(j, 0, sizeof *j);
    j->state = SRV_TJ_QUEUED;
    j->loss = j->focal = j->dice = j->iou_mse = j->lr = j->samples_per_s = j->eta_s = NAN;
    j->train_images = j->val_images = -1;
    j->published = -1;
    j->exit_status = j->term_signal = -1;
}

int srv_tdb_open(srv_tdb **out, const char *state_dir, char *err, size_t errlen)
{
    srv_tdb *db = calloc(1, sizeof *db);
    *out = NULL;
    if (!db)
        return srv_errf(err, errlen, "out of memory");
    pthread_mutex_init(&db->mu, NULL);
    if (asprintf(&db->path, "%s/train.db", state_dir) < 0) {
        db->path = NULL;
        srv_tdb_close(db);
        return srv_errf(err, errlen, "out of memory");
    }
    if (srv_db_open(&db->db, db->path, &train_schema, err, errlen) != 0) {
        srv_tdb_close(db);
        return -1;
    }
    *out = db;
    return 0;
}

void srv_tdb_close(srv_tdb *db)
{
    if (!db)
        return;
    srv_db_close(db->db, db->path);
    free(db->path);
    pthread_mutex_destroy(&db->mu);
    free(db);
}

const char *srv_tdb_path(const srv_tdb *db) { return db->path; }

/* ---- statements ---- */

/* Contract: prepares sql under the lock; logs and returns NULL on error. */
static sqlite3_stmt *prep(srv_tdb *db, const char *sql)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db->db, sql, -1, &st, NULL) != SQLITE_OK) {
        srv_log_error("train db: %s: %s", sqlite3_errmsg(db->db), sql);
        sqlite3_finalize(st);
        return NULL;
    }
    return st;
}

/* Contract: steps st to completion; 0, or -1 logged. Finalizes st. */
static int run(srv_tdb *db, sqlite3_stmt *st)
{
    int rc = st ? sqlite3_step(st) : SQLITE_ERROR;
    if (st && rc != SQLITE_DONE && rc != SQLITE_ROW)
        srv_log_error("train db: %s", sqlite3_errmsg(db->db));
    sqlite3_finalize(st);
    return rc == SQLITE_DONE || rc == SQLITE_ROW ? 0 : -1;
}

static void bind_text_or_null(sqlite3_stmt *st, int i, const char *s)
{
    if (s && s[0])
        sqlite3_bind_text(st, i, s, -1, SQLITE_TRANSIENT);
    else
        sqlite3_bind_null(st, i);
}

static void bind_real_or_null(sqlite3_stmt *st, int i, double v)
{
    if (isfinite(v))
        sqlite3_bind_double(st, i, v);
    else
        sqlite3_bind_null(st, i);
}

static void bind_int_or_null(sqlite3_stmt *st, int i, int64_t v, int64_t null_value)
{
    if (v == null_value)
        sqlite3_bind_null(st, i);
    else
        sqlite3_bind_int64(st, i, v);
}

static double col_real(sqlite3_stmt *st, int i)
{
    return sqlite3_column_type(st, i) == SQLITE_NULL ? NAN : sqlite3_column_double(st, i);
}

static int64_t col_int(sqlite3_stmt *st, int i, int64_t null_value)
{
    return sqlite3_column_type(st, i) == SQLITE_NULL ? null_value : sqlite3_column_int64(st, i);
}

/* Every column of a job row, in the order row_read and bind_row use. */
#define JOB_COLS                                                                                   \
    "id, seq, state, params, dir, created, started, finished, step, steps, loss, focal, dice, "    \
    "iou_mse, lr, samples_per_s, eta_s, val, train_images, val_images, init_id, init_version, "    \
    "out_id, out_version, published, reason, error, exit_status, term_signal, pid, cancel"

static void row_read(sqlite3_stmt *st, srv_tjob *j)
{
    srv_tjob_init(j);
    srv_db_col_text(st, 0, j->id, sizeof j->id);
    j->seq = sqlite3_column_int64(st, 1);
    char state[16];
    srv_db_col_text(st, 2, state, sizeof state);
    int s = srv_tjob_state_parse(state);
    j->state = s < 0 ? SRV_TJ_FAILED : (srv_tjob_state)s;
    srv_db_col_text(st, 3, j->params, sizeof j->params);
    srv_db_col_text(st, 4, j->dir, sizeof j->dir);
    j->created_ms = col_int(st, 5, 0);
    j->started_ms = col_int(st, 6, 0);
    j->finished_ms = col_int(st, 7, 0);
    j->step = col_int(st, 8, 0);
    j->steps = col_int(st, 9, 0);
    j->loss = col_real(st, 10);
    j->focal = col_real(st, 11);
    j->dice = col_real(st, 12);
    j->iou_mse = col_real(st, 13);
    j->lr = col_real(st, 14);
    j->samples_per_s = col_real(st, 15);
    j->eta_s = col_real(st, 16);
    srv_db_col_text(st, 17, j->val, sizeof j->val);
    j->train_images = col_int(st, 18, -1);
    j->val_images = col_int(st, 19, -1);
    srv_db_col_text(st, 20, j->init_id, sizeof j->init_id);
    srv_db_col_text(st, 21, j->init_version, sizeof j->init_version);
    srv_db_col_text(st, 22, j->out_id, sizeof j->out_id);
    srv_db_col_text(st, 23, j->out_version, sizeof j->out_version);
    j->published = (int)col_int(st, 24, -1);
    srv_db_col_text(st, 25, j->reason, sizeof j->reason);
    srv_db_col_text(st, 26, j->error, sizeof j->error);
    j->exit_status = (int)col_int(st, 27, -1);
    j->term_signal = (int)col_int(st, 28, -1);
    j->pid = col_int(st, 29, 0);
    j->cancel = (int)col_int(st, 30, 0);
}

/* Contract: binds j's columns as ?1..?31 in JOB_COLS order. */
static void bind_row(sqlite3_stmt *st, const srv_tjob *j)
{
    sqlite3_bind_text(st, 1, j->id, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, j->seq);
    sqlite3_bind_text(st, 3, srv_tjob_state_name(j->state), -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, j->params, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 5, j->dir, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 6, j->created_ms);
    bind_int_or_null(st, 7, j->started_ms, 0);
    bind_int_or_null(st, 8, j->finished_ms, 0);
    sqlite3_bind_int64(st, 9, j->step);
    sqlite3_bind_int64(st, 10, j->steps);
    bind_real_or_null(st, 11, j->loss);
    bind_real_or_null(st, 12, j->focal);
    bind_real_or_null(st, 13, j->dice);
    bind_real_or_null(st, 14, j->iou_mse);
    bind_real_or_null(st, 15, j->lr);
    bind_real_or_null(st, 16, j->samples_per_s);
    bind_real_or_null(st, 17, j->eta_s);
    bind_text_or_null(st, 18, j->val);
    bind_int_or_null(st, 19, j->train_images, -1);
    bind_int_or_null(st, 20, j->val_images, -1);
    bind_text_or_null(st, 21, j->init_id);
    bind_text_or_null(st, 22, j->init_version);
    bind_text_or_null(st, 23, j->out_id);
    bind_text_or_null(st, 24, j->out_version);
    bind_int_or_null(st, 25, j->published, -1);
    bind_text_or_null(st, 26, j->reason);
    bind_text_or_null(st, 27, j->error);
    bind_int_or_null(st, 28, j->exit_status, -1);
    bind_int_or_null(st, 29, j->term_signal, -1);
    bind_int_or_null(st, 30, j->pid, 0);
    sqlite3_bind_int(st, 31, j->cancel);
}

int srv_tdb_job_insert(srv_tdb *db, srv_tjob *j, int max_queued)
{
    int rc = -1;
    pthread_mutex_lock(&db->mu);
    if (srv_db_exec(db->db, "BEGIN IMMEDIATE") != SQLITE_OK)
        goto out;
    int64_t queued = srv_db_query_int(db->db, "SELECT COUNT(*) FROM job WHERE state='queued'");
    if (queued < 0)
        goto rollback;
    if (queued >= max_queued) {
        rc = 1;
        goto rollback;
    }
    j->seq = srv_db_query_int(db->db, "SELECT COALESCE(MAX(seq), 0) + 1 FROM job");
    sqlite3_stmt *st = prep(db, "INSERT INTO job (" JOB_COLS ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, "
                                "?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, "
                                "?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29, ?30, ?31)");
    if (!st)
        goto rollback;
    bind_row(st, j);
    if (run(db, st) != 0)
        goto rollback;
    if (srv_db_exec(db->db, "COMMIT") != SQLITE_OK)
        goto rollback;
    rc = 0;
    goto out;
rollback:
    srv_db_exec(db->db, "ROLLBACK");
out:
    pthread_mutex_unlock(&db->mu);
    return rc;
}

int srv_tdb_job_update(srv_tdb *db, const srv_tjob *j)
{
    pthread_mutex_lock(&db->mu);
    sqlite3_stmt *st = prep(db, "UPDATE job SET seq=?2, state=?3, params=?4, dir=?5, created=?6, "
                                "started=?7, finished=?8, step=?9, steps=?10, loss=?11, "
                                "focal=?12, dice=?13, iou_mse=?14, lr=?15, samples_per_s=?16, "
                                "eta_s=?17, val=?18, train_images=?19, val_images=?20, "
                                "init_id=?21, init_version=?22, out_id=?23, out_version=?24, "
                                "published=?25, reason=?26, error=?27, exit_status=?28, "
                                "term_signal=?29, pid=?30, cancel=?31 WHERE id=?1");
    if (st)
        bind_row(st, j);
    int rc = run(db, st);
    pthread_mutex_unlock(&db->mu);
    return rc;
}

int srv_tdb_job_set_state_if(srv_tdb *db, const char *id, srv_tjob_state from, srv_tjob_state to,
                             int64_t finished_ms, const char *error)
{
    int rc = -1;
    pthread_mutex_lock(&db->mu);
    sqlite3_stmt *st = prep(db, "UPDATE job SET state=?3, finished=COALESCE(?4, finished), "
                                "error=COALESCE(?5, error) WHERE id=?1 AND state=?2");
    if (st) {
        sqlite3_bind_text(st, 1, id, -1, SQLITE_TRANSIENT);
        sqlite3_bind_text(st, 2, srv_tjob_state_name(from), -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, srv_tjob_state_name(to), -1, SQLITE_STATIC);
        bind_int_or_null(st, 4, finished_ms, 0);
        bind_text_or_null(st, 5, error);
        if (sqlite3_step(st) == SQLITE_DONE)
            rc = sqlite3_changes(db->db) > 0 ? 0 : 1;
        else
            srv_log_error("train db: %s", sqlite3_errmsg(db->db));
    }
    sqlite3_finalize(st);
    pthread_mutex_unlock(&db->mu);
    return rc;
}

/* Contract: under the lock: the first row st yields into *out; 0, 1 when
 * none, -1 on error. Finalizes st. */
static int one_row(srv_tdb *db, sqlite3_stmt *st, srv_tjob *out)
{
    int rc = st ? sqlite3_step(st) : SQLITE_ERROR;
    int ret = rc == SQLITE_ROW ? 0 : rc == SQLITE_DONE ? 1 : -1;
    if (ret == 0)
        row_read(st, out);
    else if (ret < 0 && st)
        srv_log_error("train db: %s", sqlite3_errmsg(db->db));
    sqlite3_finalize(st);
    return ret;
}

int srv_tdb_job_get(srv_tdb *db, const char *id, srv_tjob *out)
{
    pthread_mutex_lock(&db->mu);
    sqlite3_stmt *st = prep(db, "SELECT " JOB_COLS " FROM job WHERE id=?1");
    if (st)
        sqlite3_bind_text(st, 1, id, -1, SQLITE_TRANSIENT);
    int rc = one_row(db, st, out);
    pthread_mutex_unlock(&db->mu);
    return rc;
}

int srv_tdb_job_next_queued(srv_tdb *db, srv_tjob *out)
{
    pthread_mutex_lock(&db->mu);
    int rc = one_row(
        db, prep(db, "SELECT " JOB_COLS " FROM job WHERE state='queued' ORDER BY seq LIMIT 1"),
        out);
    pthread_mutex_unlock(&db->mu);
    return rc;
}

int srv_tdb_job_list(srv_tdb *db, int state, int64_t before, srv_tjob *rows, int max, int *n)
{
    int rc = 0;
    *n = 0;
    pthread_mutex_lock(&db->mu);
    sqlite3_stmt *st = prep(db, "SELECT " JOB_COLS " FROM job WHERE (?1 IS NULL OR state=?1) "
                                "AND (?2 = 0 OR seq < ?2) ORDER BY seq DESC LIMIT ?3");
    if (!st) {
        pthread_mutex_unlock(&db->mu);
        return -1;
    }
    if (state >= 0)
        sqlite3_bind_text(st, 1, srv_tjob_state_name((srv_tjob_state)state), -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, 1);
    sqlite3_bind_int64(st, 2, before);
    sqlite3_bind_int(st, 3, max);
    for (;;) {
        int s = sqlite3_step(st);
        if (s == SQLITE_DONE)
            break;
        if (s != SQLITE_ROW || *n >= max) {
            rc = s == SQLITE_ROW ? 0 : -1;
            break;
        }
        row_read(st, &rows[(*n)++]);
    }
    if (rc)
        srv_log_error("train db: listing jobs: %s", sqlite3_errmsg(db->db));
    sqlite3_finalize(st);
    pthread_mutex_unlock(&db->mu);
    return rc;
}

int srv_tdb_job_counts(srv_tdb *db, int64_t counts[SRV_TJ_STATES])
{
    int rc = 0;
    memset(counts, 0, sizeof(int64_t) * SRV_TJ_STATES);
    pthread_mutex_lock(&db->mu);
    sqlite3_stmt *st = prep(db, "SELECT state, COUNT(*) FROM job GROUP BY state");
    while (st && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        int s = srv_tjob_state_parse((const char *)sqlite3_column_text(st, 0));
        if (s >= 0)
            counts[s] = sqlite3_column_int64(st, 1);
    }
    rc = st && rc == SQLITE_DONE ? 0 : -1;
    sqlite3_finalize(st);
    pthread_mutex_unlock(&db->mu);
    return rc;
}

int srv_tdb_job_prune(srv_tdb *db, int keep, void (*gone)(const char *dir, void *arg), void *arg)
{
    int n = 0;
    char id[SRV_TJOB_ID_LEN + 1], dir[SRV_TJOB_PATH];
    for (;;) {
        pthread_mutex_lock(&db->mu);
        sqlite3_stmt *st = prep(db, "SELECT id, dir FROM job WHERE state IN ('succeeded', "
                                    "'failed', 'cancelled') ORDER BY seq DESC LIMIT 1 OFFSET ?1");
        int found = 0;
        if (st) {
            sqlite3_bind_int(st, 1, keep);
            if (sqlite3_step(st) == SQLITE_ROW) {
                srv_db_col_text(st, 0, id, sizeof id);
                srv_db_col_text(st, 1, dir, sizeof dir);
                found = 1;
            }
            sqlite3_finalize(st);
        }
        if (found) {
            st = prep(db, "DELETE FROM job WHERE id=?1");
            if (st)
                sqlite3_bind_text(st, 1, id, -1, SQLITE_TRANSIENT);
            found = run(db, st) == 0;
        }
        pthread_mutex_unlock(&db->mu);
        if (!found)
            break;
        if (gone)
            gone(dir, arg);
        n++;
    }
    return n;
}

/* ---- hypernetwork versions ---- */

int srv_tdb_hn_push(srv_tdb *db, srv_hn_row *r)
{
    pthread_mutex_lock(&db->mu);
    sqlite3_stmt *st = prep(db, "INSERT INTO hypernet (hypernet_id, version, file, source, job, "
                                "activated) VALUES (?1, ?2, ?3, ?4, ?5, ?6)");
    if (st) {
        sqlite3_bind_text(st, 1, r->id, -1, SQLITE_TRANSIENT);
        sqlite3_bind_text(st, 2, r->version, -1, SQLITE_TRANSIENT);
        sqlite3_bind_text(st, 3, r->file, -1, SQLITE_TRANSIENT);
        sqlite3_bind_text(st, 4, r->source, -1, SQLITE_TRANSIENT);
        bind_text_or_null(st, 5, r->job);
        sqlite3_bind_int64(st, 6, r->activated_ms);
    }
    int rc = run(db, st);
    if (rc == 0)
        r->seq = sqlite3_last_insert_rowid(db->db);
    pthread_mutex_unlock(&db->mu);
    return rc;
}

int srv_tdb_hn_list(srv_tdb *db, srv_hn_row *rows, int max, int *n)
{
    int rc;
    *n = 0;
    pthread_mutex_lock(&db->mu);
    sqlite3_stmt *st = prep(db, "SELECT seq, hypernet_id, version, file, source, job, activated "
                                "FROM hypernet ORDER BY seq DESC LIMIT ?1");
    if (st)
        sqlite3_bind_int(st, 1, max);
    while (st && *n < max && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        srv_hn_row *r = &rows[(*n)++];
        memset(r, 0, sizeof *r);
        r->seq = sqlite3_column_int64(st, 0);
        srv_db_col_text(st, 1, r->id, sizeof r->id);
        srv_db_col_text(st, 2, r->version, sizeof r->version);
        srv_db_col_text(st, 3, r->file, sizeof r->file);
        srv_db_col_text(st, 4, r->source, sizeof r->source);
        srv_db_col_text(st, 5, r->job, sizeof r->job);
        r->activated_ms = sqlite3_column_int64(st, 6);
    }
    rc = st ? 0 : -1;
    sqlite3_finalize(st);
    pthread_mutex_unlock(&db->mu);
    return rc;
}

int srv_tdb_hn_delete(srv_tdb *db, int64_t seq)
{
    pthread_mutex_lock(&db->mu);
    sqlite3_stmt *st = prep(db, "DELETE FROM hypernet WHERE seq=?1");
    if (st)
        sqlite3_bind_int64(st, 1, seq);
    int rc = run(db, st);
    pthread_mutex_unlock(&db->mu);
    return rc;
}

int srv_tdb_hn_file_used(srv_tdb *db, const char *file, int64_t except_seq)
{
    int used = 0;
    pthread_mutex_lock(&db->mu);
    sqlite3_stmt *st = prep(db, "SELECT COUNT(*) FROM hypernet WHERE file=?1 AND seq != ?2");
    if (st) {
        sqlite3_bind_text(st, 1, file, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 2, except_seq);
        /* on an error, say "used": a file is never deleted on a doubt */
        used = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int64(st, 0) > 0 : 1;
    }
    sqlite3_finalize(st);
    pthread_mutex_unlock(&db->mu);
    return used;
}

/* ---- key/value ---- */

int srv_tdb_meta_get(srv_tdb *db, const char *key, char *value, size_t cap)
{
    int rc = -1;
    pthread_mutex_lock(&db->mu);
    sqlite3_stmt *st = prep(db, "SELECT value FROM meta WHERE key=?1");
    if (st) {
        sqlite3_bind_text(st, 1, key, -1, SQLITE_TRANSIENT);
        int s = sqlite3_step(st);
        rc = s == SQLITE_ROW ? 0 : s == SQLITE_DONE ? 1 : -1;
        if (rc == 0)
            srv_db_col_text(st, 0, value, cap);
    }
    sqlite3_finalize(st);
    pthread_mutex_unlock(&db->mu);
    return rc;
}

int srv_tdb_meta_set(srv_tdb *db, const char *key, const char *value)
{
    pthread_mutex_lock(&db->mu);
    sqlite3_stmt *st = prep(db, "INSERT INTO meta (key, value) VALUES (?1, ?2) "
                                "ON CONFLICT (key) DO UPDATE SET value=excluded.value");
    if (st) {
        sqlite3_bind_text(st, 1, key, -1, SQLITE_TRANSIENT);
        sqlite3_bind_text(st, 2, value, -1, SQLITE_TRANSIENT);
    }
    int rc = run(db, st);
    pthread_mutex_unlock(&db->mu);
    return rc;
}
