-- schema/train.sql: tasamd's records of training jobs and of the hypernetwork
-- versions it has served (STATE_DIR/train.db).
--
-- Versioned with PRAGMA user_version; PRAGMA application_id is 0x74737472
-- ("tstr"), so the file is never mistaken for the cache. Each
-- "-- migration N" block takes a database from version N-1 to N; tasamd
-- (server/train_db.c, train_migrations[]) runs the missing blocks in order,
-- each in one transaction together with the user_version bump, and moves a
-- file that fails PRAGMA quick_check aside (train.db.corrupt-<unix time>).
-- tests/test_server_units.c checks that this file and train_db.c agree.
--
-- Unlike cache.db, nothing here can be recomputed: these are records. A job
-- row is written when the job is accepted and updated as it runs (progress
-- at most a few times a second); the job's files (the trainer's output and
-- log) live in STATE_DIR/train/<id>/. The hypernetwork rows are the
-- activation history, newest last: the row with the largest seq is the
-- version being served, the ones before it what rollback returns to; each
-- names its file in STATE_DIR/hypernets/.

-- migration 1
CREATE TABLE job (
    id             TEXT    PRIMARY KEY,       -- 16 lowercase hex digits
    seq            INTEGER NOT NULL UNIQUE,   -- submission order
    state          TEXT    NOT NULL,          -- queued | running | succeeded | failed | cancelled
    params         TEXT    NOT NULL,          -- the accepted request, canonical JSON
    dir            TEXT    NOT NULL,          -- STATE_DIR/train/<id>: log and output
    created        INTEGER NOT NULL,          -- unix milliseconds
    started        INTEGER,                   -- unix milliseconds, NULL until it runs
    finished       INTEGER,                   -- unix milliseconds, NULL until it ends
    step           INTEGER NOT NULL DEFAULT 0,
    steps          INTEGER NOT NULL,
    loss           REAL,                      -- latest step's loss and its parts
    focal          REAL,
    dice           REAL,
    iou_mse        REAL,
    lr             REAL,
    samples_per_s  REAL,
    eta_s          REAL,
    val            TEXT,                      -- latest validation: {"step":k,"metrics":{...}}
    train_images   INTEGER,
    val_images     INTEGER,
    init_id        TEXT,                      -- the hypernetwork it started from
    init_version   TEXT,
    out_id         TEXT,                      -- the hypernetwork it published
    out_version    TEXT,
    published      INTEGER,                   -- 1 published and active, 0 not, NULL undecided
    reason         TEXT,                      -- why it was not published
    error          TEXT,                      -- why it failed, with the trainer's last log lines
    exit_status    INTEGER,                   -- the trainer's exit status, NULL if none
    term_signal    INTEGER,                   -- the signal that ended it, NULL if none
    pid            INTEGER,                   -- the trainer's pid while running
    cancel         INTEGER NOT NULL DEFAULT 0 -- 1 once a cancel was asked for
);
CREATE INDEX job_state ON job (state, seq);
CREATE TABLE hypernet (
    seq          INTEGER PRIMARY KEY,         -- activation order; the largest is active
    hypernet_id  TEXT    NOT NULL,            -- content id (hn_hypernet_id)
    version      TEXT    NOT NULL,            -- its version label
    file         TEXT    NOT NULL,            -- its copy in STATE_DIR/hypernets/
    source       TEXT    NOT NULL,            -- initial | job | file
    job          TEXT,                        -- the job that trained it (source job)
    activated    INTEGER NOT NULL             -- unix milliseconds
);
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,                   -- file_id, file_version: what the shared
    value TEXT NOT NULL                       -- hypernetwork file held when last read
);
