/*
 * server/train_db.h: STATE_DIR/train.db, the records of training jobs and of
 * the hypernetwork versions tasamd has served (schema/train.sql).
 *
 * A job row holds what was asked (the canonical request), where its files
 * are, its state, its latest progress and how it ended. The hypernetwork
 * rows are the activation history: the largest seq is the active version,
 * the rows before it are what rollback returns to (newest first). `meta`
 * remembers what the shared hypernetwork file held when last read.
 *
 * Threads: any. One mutex serialises every call (SQLite's own serialized
 * mode protects the connection; the mutex makes multi-statement updates
 * atomic). Functions return 0, 1 for "absent" where stated, or -1 on a
 * database error (logged).
 */
#ifndef TASAM_SERVER_TRAIN_DB_H
#define TASAM_SERVER_TRAIN_DB_H

#include <stddef.h>
#include <stdint.h>

/* The schema version this build writes (PRAGMA user_version). */
#define SRV_TDB_SCHEMA_VERSION 1
/* PRAGMA application_id of train.db ("tstr"). */
#define SRV_TDB_APP_ID 0x74737472

#define SRV_TJOB_ID_LEN 16   /* hex digits of a job id */
#define SRV_TJOB_PARAMS 2048 /* bytes of a job's canonical request */
#define SRV_TJOB_VAL    8192 /* bytes of its latest validation JSON */
#define SRV_TJOB_ERROR  4096 /* bytes of its error (message and the trainer's last lines) */
#define SRV_TJOB_REASON 512  /* bytes of why it did not publish */
#define SRV_TJOB_PATH   1024 /* bytes of a path we keep */

/* A job's states; the order is the metrics' and the schema's. */
typedef enum srv_tjob_state {
    SRV_TJ_QUEUED = 0,
    SRV_TJ_RUNNING,
    SRV_TJ_SUCCEEDED,
    SRV_TJ_FAILED,
    SRV_TJ_CANCELLED,
    SRV_TJ_STATES
} srv_tjob_state;

/* "queued", "running", ... */
const char *srv_tjob_state_name(srv_tjob_state s);
/* The state named `name`, or -1. */
int srv_tjob_state_parse(const char *name);

/* One job row. Numbers that are not known yet are NaN (reals) or -1
 * (counts, exit status, signal, published). */
typedef struct srv_tjob {
    char id[SRV_TJOB_ID_LEN + 1]; /* lowercase hex */
    int64_t seq;                  /* submission order */
    srv_tjob_state state;         /* where it is */
    char params[SRV_TJOB_PARAMS]; /* canonical request JSON */
    char dir[SRV_TJOB_PATH];      /* its folder in STATE_DIR/train/ */
    int64_t created_ms;           /* unix ms */
    int64_t started_ms;           /* unix ms, 0 until it runs */
    int64_t finished_ms;          /* unix ms, 0 until it ends */
    int64_t step;                 /* steps done */
    int64_t steps;                /* steps asked for */
    double loss;                  /* latest step: total loss */
    double focal;                 /* its focal part */
    double dice;                  /* its dice part */
    double iou_mse;               /* its IoU-head part */
    double lr;                    /* learning rate at that step */
    double samples_per_s;         /* training throughput */
    double eta_s;                 /* seconds left, the trainer's estimate */
    char val[SRV_TJOB_VAL];       /* latest validation {"step":k,"metrics":{...}}, or "" */
    int64_t train_images;         /* images in the training split, -1 unknown */
    int64_t val_images;           /* images in the validation split, -1 unknown */
    char init_id[65];             /* the hypernetwork it started from, or "" */
    char init_version[64];        /* its version */
    char out_id[65];              /* the hypernetwork it published, or "" */
    char out_version[64];         /* its version */
    int published;                /* 1 published and active, 0 not, -1 undecided */
    char reason[SRV_TJOB_REASON]; /* why it was not published, or "" */
    char error[SRV_TJOB_ERROR];   /* why it failed, or "" */
    int exit_status;              /* the trainer's exit status, -1 none */
    int term_signal;              /* the signal that ended it, -1 none */
    int64_t pid;                  /* the trainer's pid while it runs, 0 otherwise */
    int cancel;                   /* 1 once a cancel was asked for */
} srv_tjob;

/* A fresh row: every number unknown, state queued. */
void srv_tjob_init(srv_tjob *j);

/* One hypernetwork activation. */
typedef struct srv_hn_row {
    int64_t seq;                   /* activation order */
    char id[65];                   /* content id */
    char version[64];              /* version label */
    char file[SRV_TJOB_PATH];      /* its copy in STATE_DIR/hypernets/ */
    char source[16];               /* initial | job | file */
    char job[SRV_TJOB_ID_LEN + 1]; /* the job that trained it, or "" */
    int64_t activated_ms;          /* unix ms */
} srv_hn_row;

typedef struct srv_tdb srv_tdb;

/* Open (creating) STATE_DIR/train.db; a bad file is moved aside. Returns 0
 * or -1 with a message in err. */
int srv_tdb_open(srv_tdb **out, const char *state_dir, char *err, size_t errlen);
void srv_tdb_close(srv_tdb *db);

/* ---- jobs ---- */

/* Insert j (j->seq is assigned) unless `max_queued` jobs are queued
 * already: returns 0, 1 when the queue is full, -1 on error. */
int srv_tdb_job_insert(srv_tdb *db, srv_tjob *j, int max_queued);
/* Write every column of j's row. */
int srv_tdb_job_update(srv_tdb *db, const srv_tjob *j);
/* The row of `id`: 0, 1 when absent. */
int srv_tdb_job_get(srv_tdb *db, const char *id, srv_tjob *out);
/* Move job `id` from state `from` to `to` (finished_ms stamped when not 0;
 * `error` set when not NULL) only if it is in `from`: 0 when it moved, 1
 * when it was in another state or absent. How a cancel and the start of a
 * job never both win. */
int srv_tdb_job_set_state_if(srv_tdb *db, const char *id, srv_tjob_state from, srv_tjob_state to,
                             int64_t finished_ms, const char *error);
/* The oldest queued job: 0, 1 when none. */
int srv_tdb_job_next_queued(srv_tdb *db, srv_tjob *out);
/* Up to `max` rows, newest first, in state `state` (-1: any) and older than
 * seq `before` (0: no bound), into rows[]; *n gets how many. */
int srv_tdb_job_list(srv_tdb *db, int state, int64_t before, srv_tjob *rows, int max, int *n);
/* Jobs per state into counts[SRV_TJ_STATES]. */
int srv_tdb_job_counts(srv_tdb *db, int64_t counts[SRV_TJ_STATES]);
/* Delete all but the newest `keep` finished jobs; each deleted job's folder
 * is passed to `gone` (for the caller to remove). Returns how many went. */
int srv_tdb_job_prune(srv_tdb *db, int keep, void (*gone)(const char *dir, void *arg), void *arg);

/* ---- hypernetwork versions ---- */

/* Append an activation (r->seq is assigned). */
int srv_tdb_hn_push(srv_tdb *db, srv_hn_row *r);
/* The history, newest (active) first: up to max rows; *n how many. */
int srv_tdb_hn_list(srv_tdb *db, srv_hn_row *rows, int max, int *n);
/* Delete activation `seq`. */
int srv_tdb_hn_delete(srv_tdb *db, int64_t seq);
/* 1 when some row other than `except_seq` names `file`, 0 when none. */
int srv_tdb_hn_file_used(srv_tdb *db, const char *file, int64_t except_seq);

/* ---- key/value ---- */

/* 0 with value copied (cap bytes), 1 when absent. */
int srv_tdb_meta_get(srv_tdb *db, const char *key, char *value, size_t cap);
int srv_tdb_meta_set(srv_tdb *db, const char *key, const char *value);

/* Path of the file (borrowed). */
const char *srv_tdb_path(const srv_tdb *db);

#endif
