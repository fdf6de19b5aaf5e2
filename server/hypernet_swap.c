/*
 * server/hypernet_swap.c: activation of hypernetwork versions: the copies in
 * STATE_DIR/hypernets/, the history in train.db, rollback, publishing to
 * the shared file and watching it. See hypernet_swap.h (the second half).
 */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "engine/error.h"
#include "server/fileio.h"
#include "server/hypernet_swap.h"
#include "server/log.h"
#include "server/sqlite_db.h"

/* Largest hypernetwork file read (a rank-8 network over every target is a
 * few MiB; this leaves room and still refuses a stray multi-GiB file). */
#define HN_FILE_MAX ((size_t)512 << 20)
/* History rows read at once (more than any sane hypernet-keep). */
#define HISTORY_MAX 128

/* The stat of the shared file when last read. */
typedef struct file_stamp {
    dev_t dev;             /* device */
    ino_t ino;             /* inode: a rename over the file changes it */
    off_t size;            /* bytes */
    struct timespec mtime; /* modification time */
    int valid;             /* 1 once read */
} file_stamp;

struct srv_hnswap {
    pthread_mutex_t mu;           /* serialises activations, checks and rollbacks */
    srv_tdb *db;                  /* the history (borrowed) */
    srv_sched *s;                 /* the worker's queue (borrowed) */
    srv_metrics *m;               /* counters (borrowed) */
    char dir[SRV_TJOB_PATH];      /* STATE_DIR/hypernets */
    char file[SRV_TJOB_PATH];     /* the shared file, absolute */
    char file_dir[SRV_TJOB_PATH]; /* its folder (watched) */
    char file_base[NAME_MAX + 1]; /* its name in that folder */
    int keep;                     /* previous versions kept */
    srv_hn_row *rows;             /* under mu: [HISTORY_MAX] scratch for history reads */
    file_stamp stamp;             /* under mu: the shared file as last read */
    uint64_t swaps_ok;            /* atomic: activations that swapped */
    uint64_t swaps_failed;        /* atomic: activations refused (bad file, probe, load) */
    uint64_t publish_failed;      /* atomic: versions that could not be written to the file */
    uint64_t file_checks;         /* atomic: reads of the shared file */
    int64_t last_swap_ms;         /* atomic: unix ms of the last swap */
    char last_error[512];         /* under mu: the last refusal, "" none */
    /* ---- the watcher (control loop only) ---- */
    uv_loop_t *loop;    /* the control loop, NULL until watching */
    uv_fs_event_t ev;   /* inotify on file_dir */
    uv_fs_poll_t poll;  /* stat poll of file */
    int ev_on, poll_on; /* handles initialised */
    uv_work_t work;     /* a check on the thread pool */
    int work_busy;      /* a check is queued or running */
    int work_again;     /* another change came in meanwhile */
    int work_force;     /* the next check re-reads even an unchanged stat (SIGHUP) */
    int stopping;       /* watch_stop was called */
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- files ---- */

/* Contract: a file name part from a version label: [A-Za-z0-9._-] kept,
 * anything else '_', at most 32 characters. */
static void safe_label(const char *v, char *out, size_t cap)
{
    size_t k = 0;
    for (; *v && k + 1 < cap && k < 32; v++) {
        char c = *v;
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 c == '.' || c == '-' || c == '_';
        out[k++] = ok ? c : '_';
    }
    out[k] = 0;
}

/*
 * Contract: copies `src` into the history folder under a temporary name
 * (fsync'ed) and reads it as a hypernetwork: *p, version and id. On failure
 * nothing is left behind and *e says why (400: not a hypernetwork, 500: I/O).
 */
static int stage(srv_hnswap *sw, const char *src, char *staged, size_t cap, hn_params **p,
                 char version[HN_NAME_MAX], char id[65], srv_error *e)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    char err[600];
    unsigned r = 0;
    *p = NULL;
    if (srv_file_read(src, HN_FILE_MAX, &buf, &len, err, sizeof err) != 0)
        return srv_fail(e, 400, "", "%s", err);
    if (getrandom(&r, sizeof r, GRND_NONBLOCK) != (ssize_t)sizeof r)
        r = (unsigned)now_ms();
    srv_pathf(staged, cap, "%s/.incoming-%d-%08x.safetensors", sw->dir, (int)getpid(), r);
    if (hn_params_read_mem(p, buf, len, src, version) != 0) {
        free(buf);
        return srv_fail(e, 400, "", "%s is not a usable hypernetwork: %s", src, eng_last_error());
    }
    if (srv_file_write_atomic(staged, buf, len, err, sizeof err) != 0) {
        free(buf);
        hn_params_destroy(*p);
        *p = NULL;
        return srv_fail(e, 500, "", "%s", err);
    }
    free(buf);
    hn_params_id(*p, id);
    return 0;
}

/* Contract: the history file name of (version, id). */
static void history_name(srv_hnswap *sw, const char *version, const char *id, char *out, size_t cap)
{
    char label[40];
    safe_label(version, label, sizeof label);
    srv_pathf(out, cap, "%s/v%s-%.16s.safetensors", sw->dir, label, id);
}

/* Contract: deletes `file` unless some history row other than except_seq
 * names it. */
static void drop_file(srv_hnswap *sw, const char *file, int64_t except_seq)
{
    if (!srv_tdb_hn_file_used(sw->db, file, except_seq) && unlink(file) == 0)
        srv_log_info("hypernet: removed %s", file);
}

/* Contract: under mu: keeps the active version and `keep` before it. */
static void prune(srv_hnswap *sw)
{
    srv_hn_row *rows = sw->rows;
    int n = 0;
    if (srv_tdb_hn_list(sw->db, rows, HISTORY_MAX, &n) != 0)
        return;
    for (int i = sw->keep + 1; i < n; i++) {
        srv_tdb_hn_delete(sw->db, rows[i].seq);
        drop_file(sw, rows[i].file, rows[i].seq);
    }
}

/* ---- the worker's part ---- */

/* A caller waiting for its swap job. */
typedef struct waiter {
    pthread_mutex_t mu; /* guards done */
    pthread_cond_t cv;  /* signalled once done */
    int done;           /* the job completed */
} waiter;

static void swap_done(srv_job *j, void *arg)
{
    waiter *w = arg;
    (void)j;
    pthread_mutex_lock(&w->mu);
    w->done = 1;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

/* Contract: has the worker load p (from `file`) beside the active version
 * and swap; blocks until it did or refused. 0 with ld->result/previous, or
 * -1 with *e set. */
static int worker_swap(srv_hnswap *sw, const hn_params *p, const char *version, const char *id,
                       const char *file, srv_hn_load *ld, srv_error *e)
{
    srv_job j;
    waiter w;
    memset(&j, 0, sizeof j);
    memset(ld, 0, sizeof *ld);
    ld->params = p;
    snprintf(ld->id, sizeof ld->id, "%s", id);
    snprintf(ld->version, sizeof ld->version, "%s", version);
    srv_pathf(ld->file, sizeof ld->file, "%s", file);
    j.kind = SRV_KIND_HN_SWAP;
    j.hn_load = ld;
    j.done = swap_done;
    j.done_arg = &w;
    pthread_mutex_init(&w.mu, NULL);
    pthread_cond_init(&w.cv, NULL);
    w.done = 0;
    int rc = srv_sched_submit_control(sw->s, &j, e);
    if (rc == 0) {
        pthread_mutex_lock(&w.mu);
        while (!w.done)
            pthread_cond_wait(&w.cv, &w.mu);
        pthread_mutex_unlock(&w.mu);
        if (j.status != 200) {
            *e = j.err;
            rc = -1;
        }
    }
    pthread_cond_destroy(&w.cv);
    pthread_mutex_destroy(&w.mu);
    return rc;
}

/* ---- activation ---- */

static const char *source_name(srv_hn_source s)
{
    return s == SRV_HN_INITIAL ? "initial"
           : s == SRV_HN_JOB   ? "job"
           : s == SRV_HN_FILE  ? "file"
                               : "rollback";
}

/* Contract: under mu: remembers what the shared file holds now. */
static void remember_file(srv_hnswap *sw, const char *id, const char *version)
{
    srv_tdb_meta_set(sw->db, "file_id", id);
    srv_tdb_meta_set(sw->db, "file_version", version);
}

/* Contract: under mu: writes `from` (a history file) to the shared file;
 * records it as what the file holds. 0, or -1 with note set. */
static int publish(srv_hnswap *sw, const char *from, const char *id, const char *version,
                   char *note, size_t cap)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    char err[600];
    if (srv_file_read(from, HN_FILE_MAX, &buf, &len, err, sizeof err) != 0 ||
        srv_file_write_atomic(sw->file, buf, len, err, sizeof err) != 0) {
        free(buf);
        __atomic_add_fetch(&sw->publish_failed, 1, __ATOMIC_RELAXED);
        srv_log_warn("hypernet: version %s is active here but could not be published to %s: %s "
                     "(other replicas will not follow)",
                     version, sw->file, err);
        snprintf(note, cap, "not published to the shared file: %.200s", err);
        return -1;
    }
    free(buf);
    remember_file(sw, id, version);
    /* our own write must not look like a change made by someone else */
    struct stat st;
    if (stat(sw->file, &st) == 0) {
        sw->stamp.dev = st.st_dev;
        sw->stamp.ino = st.st_ino;
        sw->stamp.size = st.st_size;
        sw->stamp.mtime = st.st_mtim;
        sw->stamp.valid = 1;
    }
    srv_log_info("hypernet: published version %s (%.16s...) to %s", version, id, sw->file);
    return 0;
}

/*
 * Contract: under mu: swaps in the checked hypernetwork p (id, version) that
 * lives at `staged` (renamed to its history name here unless `in_history`),
 * records the activation (push, unless `pop_seq` > 0: then that newer row
 * is dropped instead, a rollback) and publishes when asked. 0 with *res, or
 * -1 with *e (the staged copy is removed).
 */
static int swap_in(srv_hnswap *sw, hn_params *p, const char *id, const char *version,
                   const char *staged, int in_history, srv_hn_source source, const char *job,
                   int64_t pop_seq, int do_publish, srv_hn_result *res, srv_error *e)
{
    char final[SRV_TJOB_PATH];
    srv_hn_load ld;
    memset(res, 0, sizeof *res);
    if (in_history) {
        srv_pathf(final, sizeof final, "%s", staged);
    } else {
        history_name(sw, version, id, final, sizeof final);
        if (rename(staged, final) != 0) {
            int err = errno;
            unlink(staged);
            return srv_fail(e, 500, "", "cannot keep the hypernetwork as %s: %s", final,
                            strerror(err));
        }
        srv_fsync_dir(sw->dir);
    }
    if (worker_swap(sw, p, version, id, final, &ld, e) != 0) {
        __atomic_add_fetch(&sw->swaps_failed, 1, __ATOMIC_RELAXED);
        snprintf(sw->last_error, sizeof sw->last_error, "%s", e->message);
        if (!in_history)
            drop_file(sw, final, -1);
        return -1;
    }
    res->changed = 1;
    res->active = ld.result;
    res->previous = ld.previous;
    __atomic_add_fetch(&sw->swaps_ok, 1, __ATOMIC_RELAXED);
    __atomic_store_n(&sw->last_swap_ms, now_ms(), __ATOMIC_RELAXED);
    sw->last_error[0] = 0;
    if (pop_seq > 0) {
        srv_tdb_hn_delete(sw->db, pop_seq);
    } else {
        srv_hn_row r;
        memset(&r, 0, sizeof r);
        snprintf(r.id, sizeof r.id, "%s", id);
        snprintf(r.version, sizeof r.version, "%s", version);
        srv_pathf(r.file, sizeof r.file, "%s", final);
        snprintf(r.source, sizeof r.source, "%s", source_name(source));
        snprintf(r.job, sizeof r.job, "%s", job ? job : "");
        r.activated_ms = now_ms();
        if (srv_tdb_hn_push(sw->db, &r) != 0)
            srv_log_error("hypernet: version %s is active but could not be recorded in %s; a "
                          "restart will go back to the previous one",
                          version, srv_tdb_path(sw->db));
    }
    prune(sw);
    if (do_publish)
        res->published = publish(sw, final, id, version, res->note, sizeof res->note) == 0;
    srv_log_info("hypernet: version %s (%.16s...) active (%s%s%s), replacing version %s", version,
                 id, source_name(source), job ? " " : "", job ? job : "", res->previous.version);
    return 0;
}

/* Contract: 1 when (id, version) is the active version. */
static int is_active(srv_hnswap *sw, const char *id, const char *version)
{
    srv_hn_info a;
    return srv_hnet_active_info(sw->s, &a) == 0 && !strcmp(a.id, id) && !strcmp(a.version, version);
}

int srv_hnswap_activate(srv_hnswap *sw, const char *src, srv_hn_source source, const char *job,
                        const char *expect_id, srv_hn_result *res, srv_error *e)
{
    char staged[SRV_TJOB_PATH], version[HN_NAME_MAX], id[65];
    hn_params *p = NULL;
    int rc;
    memset(res, 0, sizeof *res);
    pthread_mutex_lock(&sw->mu);
    if (stage(sw, src, staged, sizeof staged, &p, version, id, e) != 0) {
        __atomic_add_fetch(&sw->swaps_failed, 1, __ATOMIC_RELAXED);
        snprintf(sw->last_error, sizeof sw->last_error, "%s", e->message);
        pthread_mutex_unlock(&sw->mu);
        return -1;
    }
    if (expect_id && strcmp(expect_id, id) != 0) {
        unlink(staged);
        srv_fail(e, 400, "", "%s holds hypernetwork %.16s..., not %.16s... as reported", src, id,
                 expect_id);
        rc = -1;
    } else if (is_active(sw, id, version)) {
        unlink(staged);
        srv_hnet_active_info(sw->s, &res->active);
        res->previous = res->active;
        rc = 0;
    } else {
        rc = swap_in(sw, p, id, version, staged, 0, source, job, 0, source != SRV_HN_FILE, res, e);
    }
    hn_params_destroy(p);
    pthread_mutex_unlock(&sw->mu);
    return rc;
}

int srv_hnswap_rollback(srv_hnswap *sw, srv_hn_result *res, srv_error *e)
{
    srv_hn_row rows[2]; /* the active version and the one before it */
    char version[HN_NAME_MAX], id[65];
    hn_params *p = NULL;
    int n = 0, rc;
    memset(res, 0, sizeof *res);
    pthread_mutex_lock(&sw->mu);
    if (srv_tdb_hn_list(sw->db, rows, 2, &n) != 0) {
        pthread_mutex_unlock(&sw->mu);
        return srv_fail(e, 500, "", "reading the hypernetwork history failed (see the log)");
    }
    if (n < 2) {
        pthread_mutex_unlock(&sw->mu);
        return srv_fail(e, 409, "",
                        "there is no previous hypernetwork version to roll back to (the history "
                        "holds %d)",
                        n);
    }
    if (hn_params_read(&p, rows[1].file, version) != 0) {
        srv_fail(e, 500, "", "the previous version %s (%s) no longer reads back: %s",
                 rows[1].version, rows[1].file, eng_last_error());
        pthread_mutex_unlock(&sw->mu);
        return -1;
    }
    hn_params_id(p, id);
    if (strcmp(id, rows[1].id) != 0) {
        hn_params_destroy(p);
        srv_fail(e, 500, "", "the previous version's file %s now holds another hypernetwork",
                 rows[1].file);
        pthread_mutex_unlock(&sw->mu);
        return -1;
    }
    rc =
        swap_in(sw, p, id, version, rows[1].file, 1, SRV_HN_ROLLBACK, NULL, rows[0].seq, 1, res, e);
    if (rc == 0) {
        drop_file(sw, rows[0].file, -1);
        srv_log_info("hypernet: rolled back from version %s (%.16s...) to version %s (%.16s...)",
                     rows[0].version, rows[0].id, version, id);
    }
    hn_params_destroy(p);
    pthread_mutex_unlock(&sw->mu);
    return rc;
}

int srv_hnswap_check_file(srv_hnswap *sw, srv_hn_result *res, srv_error *e)
{
    char staged[SRV_TJOB_PATH], version[HN_NAME_MAX], id[65], seen_id[80] = "", seen_ver[80] = "";
    hn_params *p = NULL;
    struct stat st;
    int rc = 0;
    memset(res, 0, sizeof *res);
    pthread_mutex_lock(&sw->mu);
    if (stat(sw->file, &st) != 0) {
        /* gone for now (being replaced, or removed): keep serving */
        sw->stamp.valid = 0;
        pthread_mutex_unlock(&sw->mu);
        return 0;
    }
    if (sw->stamp.valid && sw->stamp.dev == st.st_dev && sw->stamp.ino == st.st_ino &&
        sw->stamp.size == st.st_size && sw->stamp.mtime.tv_sec == st.st_mtim.tv_sec &&
        sw->stamp.mtime.tv_nsec == st.st_mtim.tv_nsec) {
        pthread_mutex_unlock(&sw->mu);
        return 0;
    }
    __atomic_add_fetch(&sw->file_checks, 1, __ATOMIC_RELAXED);
    sw->stamp.dev = st.st_dev;
    sw->stamp.ino = st.st_ino;
    sw->stamp.size = st.st_size;
    sw->stamp.mtime = st.st_mtim;
    sw->stamp.valid = 1;
    if (stage(sw, sw->file, staged, sizeof staged, &p, version, id, e) != 0) {
        srv_log_warn("hypernet: the shared file changed but cannot be used: %s", e->message);
        snprintf(sw->last_error, sizeof sw->last_error, "%s", e->message);
        __atomic_add_fetch(&sw->swaps_failed, 1, __ATOMIC_RELAXED);
        pthread_mutex_unlock(&sw->mu);
        return -1;
    }
    srv_tdb_meta_get(sw->db, "file_id", seen_id, sizeof seen_id);
    srv_tdb_meta_get(sw->db, "file_version", seen_ver, sizeof seen_ver);
    if ((!strcmp(seen_id, id) && !strcmp(seen_ver, version)) || is_active(sw, id, version)) {
        /* touched but not changed, or already served */
        unlink(staged);
        remember_file(sw, id, version);
    } else {
        srv_log_info("hypernet: %s now holds version %s (%.16s...); loading it", sw->file, version,
                     id);
        rc = swap_in(sw, p, id, version, staged, 0, SRV_HN_FILE, NULL, 0, 0, res, e);
        if (rc == 0 || e->status != 503)
            remember_file(sw, id, version);
        else
            sw->stamp.valid = 0; /* not ready or stopping: try again on the next check */
        if (rc != 0)
            srv_log_error("hypernet: not following %s: %s", sw->file, e->message);
    }
    hn_params_destroy(p);
    pthread_mutex_unlock(&sw->mu);
    return rc;
}

int srv_hnswap_active_file(srv_hnswap *sw, char *out, size_t cap, srv_hn_info *info)
{
    srv_hn_info a;
    if (srv_hnet_active_info(sw->s, &a) != 0)
        return 1;
    srv_pathf(out, cap, "%s", a.file);
    if (info)
        *info = a;
    return 0;
}

/* ---- start ---- */

/* Contract: removes staging leftovers of a crash (".incoming-*"). */
static void clean_incoming(srv_hnswap *sw)
{
    DIR *d = opendir(sw->dir);
    struct dirent *de;
    char path[SRV_TJOB_PATH + 300];
    while (d && (de = readdir(d))) {
        if (strncmp(de->d_name, ".incoming-", 10) != 0)
            continue;
        if (srv_pathf(path, sizeof path, "%s/%s", sw->dir, de->d_name) == 0 && unlink(path) == 0)
            srv_log_info("hypernet: removed %s (left by an interrupted activation)", path);
    }
    if (d)
        closedir(d);
}

/* Contract: the newest history entry whose file reads back as the
 * hypernetwork recorded; entries that do not are dropped. 0 with its file
 * in out, 1 when none is left. */
static int start_from_history(srv_hnswap *sw, char *out, size_t cap)
{
    srv_hn_row *rows = sw->rows;
    int n = 0;
    if (srv_tdb_hn_list(sw->db, rows, HISTORY_MAX, &n) != 0)
        return 1;
    for (int i = 0; i < n; i++) {
        hn_params *p = NULL;
        char version[HN_NAME_MAX], id[65] = "";
        if (hn_params_read(&p, rows[i].file, version) == 0)
            hn_params_id(p, id);
        hn_params_destroy(p);
        if (id[0] && !strcmp(id, rows[i].id)) {
            srv_pathf(out, cap, "%s", rows[i].file);
            if (i > 0)
                srv_log_warn("hypernet: starting from version %s, the newest that reads back",
                             rows[i].version);
            return 0;
        }
        srv_log_error("hypernet: history entry %lld (version %s, %s) does not read back (%s); "
                      "dropped",
                      (long long)rows[i].seq, rows[i].version, rows[i].file,
                      id[0] ? "another hypernetwork" : eng_last_error());
        srv_tdb_hn_delete(sw->db, rows[i].seq);
        drop_file(sw, rows[i].file, rows[i].seq);
    }
    return 1;
}

/*
 * Contract: the version to load at start, into start_path: the shared file
 * when it is new to this state dir (first start, another --hypernet path)
 * or changed since it was last read (another replica published while this
 * one was down), pushed onto the history; else the newest history entry
 * that reads back. 0, or -1 with err set (nothing usable at all).
 */
static int choose_start(srv_hnswap *sw, char *start_path, size_t cap, char *err, size_t errlen)
{
    char staged[SRV_TJOB_PATH], version[HN_NAME_MAX], id[65], final[SRV_TJOB_PATH];
    char seen_path[SRV_TJOB_PATH] = "", seen_id[80] = "", seen_ver[80] = "";
    hn_params *p = NULL;
    srv_error e;
    int have_history = start_from_history(sw, start_path, cap) == 0;
    if (stage(sw, sw->file, staged, sizeof staged, &p, version, id, &e) != 0) {
        if (!have_history)
            return srv_errf(err, errlen, "option --hypernet: %s", e.message);
        srv_log_warn("hypernet: %s; starting from the history's version", e.message);
        return 0;
    }
    hn_params_destroy(p);
    srv_tdb_meta_get(sw->db, "file_path", seen_path, sizeof seen_path);
    srv_tdb_meta_get(sw->db, "file_id", seen_id, sizeof seen_id);
    srv_tdb_meta_get(sw->db, "file_version", seen_ver, sizeof seen_ver);
    if (have_history && !strcmp(seen_path, sw->file) && !strcmp(seen_id, id) &&
        !strcmp(seen_ver, version)) {
        unlink(staged); /* unchanged: the history's version stays active */
        return 0;
    }
    history_name(sw, version, id, final, sizeof final);
    if (rename(staged, final) != 0) {
        int er = errno;
        unlink(staged);
        return srv_errf(err, errlen, "cannot keep the hypernetwork as %s: %s", final, strerror(er));
    }
    srv_fsync_dir(sw->dir);
    srv_hn_row r;
    memset(&r, 0, sizeof r);
    snprintf(r.id, sizeof r.id, "%s", id);
    snprintf(r.version, sizeof r.version, "%s", version);
    srv_pathf(r.file, sizeof r.file, "%s", final);
    snprintf(r.source, sizeof r.source, "%s", have_history ? "file" : "initial");
    r.activated_ms = now_ms();
    if (srv_tdb_hn_push(sw->db, &r) != 0)
        return srv_errf(err, errlen, "cannot record the hypernetwork in %s", srv_tdb_path(sw->db));
    srv_tdb_meta_set(sw->db, "file_path", sw->file);
    remember_file(sw, id, version);
    srv_pathf(start_path, cap, "%s", final);
    srv_log_info("hypernet: %s: version %s (%.16s...) of %s, kept as %s",
                 !have_history                 ? "first start"
                 : strcmp(seen_path, sw->file) ? "a new --hypernet file"
                                               : "the file changed while tasamd was down",
                 version, id, sw->file, final);
    return 0;
}

int srv_hnswap_create(srv_hnswap **out, const char *state_dir, const char *file, int keep,
                      srv_tdb *db, srv_sched *s, srv_metrics *m, char *start_path, size_t cap,
                      char *err, size_t errlen)
{
    srv_hnswap *sw = calloc(1, sizeof *sw);
    char real[PATH_MAX];
    *out = NULL;
    if (!sw)
        return srv_errf(err, errlen, "out of memory");
    pthread_mutex_init(&sw->mu, NULL);
    if (!(sw->rows = calloc(HISTORY_MAX, sizeof *sw->rows))) {
        free(sw);
        return srv_errf(err, errlen, "out of memory");
    }
    sw->db = db;
    sw->s = s;
    sw->m = m;
    sw->keep = keep;
    /* absolute, so that the trainer and the logs agree on them; the folder
     * must exist, the file may come later */
    srv_path_dir(file, sw->file_dir, sizeof sw->file_dir);
    const char *base = strrchr(file, '/');
    snprintf(sw->file_base, sizeof sw->file_base, "%s", base ? base + 1 : file);
    if (!realpath(sw->file_dir, real)) {
        srv_errf(err, errlen, "option --hypernet: the folder of %s: %s", file, strerror(errno));
        goto fail;
    }
    if (srv_pathf(sw->file_dir, sizeof sw->file_dir, "%s", real) != 0 ||
        srv_pathf(sw->file, sizeof sw->file, "%s/%s", real, sw->file_base) != 0) {
        srv_errf(err, errlen, "option --hypernet: the path %s is too long", file);
        goto fail;
    }
    if (srv_pathf(sw->dir, sizeof sw->dir, "%s/hypernets", state_dir) != 0 ||
        srv_mkdirs(sw->dir) != 0) {
        srv_errf(err, errlen, "cannot create %s/hypernets: %s", state_dir, strerror(errno));
        goto fail;
    }
    /* the history files' names are 40 bytes more */
    if (!realpath(sw->dir, real) || srv_pathf(sw->dir, sizeof sw->dir - 64, "%s", real) != 0) {
        srv_errf(err, errlen, "%s: %s", sw->dir, strerror(errno));
        goto fail;
    }
    clean_incoming(sw);
    if (choose_start(sw, start_path, cap, err, errlen) != 0)
        goto fail;
    prune(sw);
    *out = sw;
    return 0;
fail:
    srv_hnswap_destroy(sw);
    return -1;
}

void srv_hnswap_destroy(srv_hnswap *sw)
{
    if (!sw)
        return;
    pthread_mutex_destroy(&sw->mu);
    free(sw->rows);
    free(sw);
}

/* ---- JSON and metrics ---- */

json_t *srv_hn_info_json(const srv_hn_info *in)
{
    const char *base = strrchr(in->file, '/');
    return json_pack("{s:s,s:s,s:s,s:i,s:f,s:i,s:I,s:s}", "id", in->id, "version", in->version,
                     "file", base ? base + 1 : in->file, "rank", in->rank, "alpha", in->alpha,
                     "targets", in->targets, "parameters", (json_int_t)in->params, "text_model",
                     in->text_model);
}

json_t *srv_hnswap_json(srv_hnswap *sw)
{
    srv_hn_row *rows = sw->rows;
    char fid[80] = "", fver[80] = "", last_error[512];
    srv_hn_info a;
    int n = 0;
    json_t *hist = json_array();
    pthread_mutex_lock(&sw->mu);
    if (srv_tdb_hn_list(sw->db, rows, HISTORY_MAX, &n) != 0)
        n = 0;
    for (int i = 0; i < n; i++) {
        const char *base = strrchr(rows[i].file, '/');
        json_array_append_new(hist,
                              json_pack("{s:s,s:s,s:s,s:s?,s:I,s:s,s:b}", "id", rows[i].id,
                                        "version", rows[i].version, "source", rows[i].source, "job",
                                        rows[i].job[0] ? rows[i].job : NULL, "activated_ms",
                                        (json_int_t)rows[i].activated_ms, "file",
                                        base ? base + 1 : rows[i].file, "active", i == 0));
    }
    srv_tdb_meta_get(sw->db, "file_id", fid, sizeof fid);
    srv_tdb_meta_get(sw->db, "file_version", fver, sizeof fver);
    snprintf(last_error, sizeof last_error, "%s", sw->last_error);
    pthread_mutex_unlock(&sw->mu);
    json_t *active = srv_hnet_active_info(sw->s, &a) == 0 ? srv_hn_info_json(&a) : json_null();
    return json_pack(
        "{s:o,s:o,s:i,s:{s:s,s:s?,s:s?,s:b,s:b},s:{s:I,s:I,s:I},s:s?}", "active", active, "history",
        hist, "keep", sw->keep, "file", "path", sw->file, "id", fid[0] ? fid : NULL, "version",
        fver[0] ? fver : NULL, "inotify", sw->ev_on, "polling", sw->poll_on, "swaps", "ok",
        (json_int_t)__atomic_load_n(&sw->swaps_ok, __ATOMIC_RELAXED), "failed",
        (json_int_t)__atomic_load_n(&sw->swaps_failed, __ATOMIC_RELAXED), "publish_failed",
        (json_int_t)__atomic_load_n(&sw->publish_failed, __ATOMIC_RELAXED), "last_error",
        last_error[0] ? last_error : NULL);
}

void srv_hnswap_metrics(srv_hnswap *sw, char **text, size_t *len)
{
    srv_hn_info a;
    int have = srv_hnet_active_info(sw->s, &a) == 0;
    char *end = NULL;
    long long v = have ? strtoll(a.version, &end, 10) : -1;
    if (have && (!a.version[0] || *end))
        v = -1;
    srv_metrics_appendf(
        text, len,
        "# HELP tasam_hypernet_swaps_total Hypernetwork activations, by result (ok: swapped "
        "in; failed: refused, the old version kept serving).\n"
        "# TYPE tasam_hypernet_swaps_total counter\n"
        "tasam_hypernet_swaps_total{result=\"ok\"} %llu\n"
        "tasam_hypernet_swaps_total{result=\"failed\"} %llu\n",
        (unsigned long long)__atomic_load_n(&sw->swaps_ok, __ATOMIC_RELAXED),
        (unsigned long long)__atomic_load_n(&sw->swaps_failed, __ATOMIC_RELAXED));
    srv_metrics_appendf(
        text, len,
        "# HELP tasam_hypernet_publish_failures_total Active versions that could not be "
        "written to the shared hypernetwork file.\n"
        "# TYPE tasam_hypernet_publish_failures_total counter\n"
        "tasam_hypernet_publish_failures_total %llu\n"
        "# HELP tasam_hypernet_file_reads_total Reads of the shared hypernetwork file after a "
        "change was seen.\n"
        "# TYPE tasam_hypernet_file_reads_total counter\n"
        "tasam_hypernet_file_reads_total %llu\n"
        "# HELP tasam_hypernet_last_swap_timestamp_seconds Unix time of the last swap (0: "
        "none since start).\n"
        "# TYPE tasam_hypernet_last_swap_timestamp_seconds gauge\n"
        "tasam_hypernet_last_swap_timestamp_seconds %.3f\n",
        (unsigned long long)__atomic_load_n(&sw->publish_failed, __ATOMIC_RELAXED),
        (unsigned long long)__atomic_load_n(&sw->file_checks, __ATOMIC_RELAXED),
        (double)__atomic_load_n(&sw->last_swap_ms, __ATOMIC_RELAXED) * 1e-3);
    srv_metrics_appendf(
        text, len,
        "# HELP tasam_hypernet_version The active hypernetwork's version (-1: not a number, or "
        "none).\n"
        "# TYPE tasam_hypernet_version gauge\n"
        "tasam_hypernet_version %lld\n",
        v);
    if (have)
        srv_metrics_appendf(
            text, len,
            "# HELP tasam_hypernet_info The active hypernetwork (always 1; its id and version "
            "are labels).\n"
            "# TYPE tasam_hypernet_info gauge\n"
            "tasam_hypernet_info{id=\"%s\",version=\"%s\"} 1\n",
            a.id, v >= 0 ? a.version : "other");
}

/* ---- the watcher ---- */

static void check_work(uv_work_t *w)
{
    srv_hnswap *sw = w->data;
    srv_hn_result res;
    srv_error e;
    if (__atomic_exchange_n(&sw->work_force, 0, __ATOMIC_ACQ_REL)) {
        pthread_mutex_lock(&sw->mu);
        sw->stamp.valid = 0;
        pthread_mutex_unlock(&sw->mu);
    }
    srv_hnswap_check_file(sw, &res, &e);
}

static void check_after(uv_work_t *w, int status)
{
    srv_hnswap *sw = w->data;
    (void)status;
    sw->work_busy = 0;
    if (sw->work_again && !sw->stopping) {
        sw->work_again = 0;
        sw->work_busy = uv_queue_work(sw->loop, &sw->work, check_work, check_after) == 0;
    }
}

/* Contract: loop: runs a check on the thread pool, or marks one to follow
 * the one running. */
static void kick(srv_hnswap *sw)
{
    if (!sw->loop || sw->stopping)
        return;
    if (sw->work_busy) {
        sw->work_again = 1;
        return;
    }
    sw->work.data = sw;
    sw->work_busy = uv_queue_work(sw->loop, &sw->work, check_work, check_after) == 0;
}

static void on_event(uv_fs_event_t *h, const char *name, int events, int status)
{
    srv_hnswap *sw = h->data;
    (void)events;
    if (status == 0 && name && strcmp(name, sw->file_base) != 0)
        return;
    kick(sw);
}

static void on_poll(uv_fs_poll_t *h, int status, const uv_stat_t *prev, const uv_stat_t *curr)
{
    (void)status;
    (void)prev;
    (void)curr;
    kick(h->data);
}

int srv_hnswap_watch_start(srv_hnswap *sw, uv_loop_t *loop, int poll_ms)
{
    int rc = 0;
    sw->loop = loop;
    if (uv_fs_event_init(loop, &sw->ev) == 0) {
        sw->ev.data = sw;
        sw->ev_on = 1;
        rc = uv_fs_event_start(&sw->ev, on_event, sw->file_dir, 0);
        if (rc != 0)
            srv_log_warn("hypernet: cannot watch %s with inotify (%s)%s", sw->file_dir,
                         uv_strerror(rc),
                         poll_ms > 0 ? "; polling only" : "; only SIGHUP re-reads the file");
    }
    if (poll_ms > 0 && uv_fs_poll_init(loop, &sw->poll) == 0) {
        sw->poll.data = sw;
        sw->poll_on = 1;
        int prc = uv_fs_poll_start(&sw->poll, on_poll, sw->file, (unsigned)poll_ms);
        if (prc != 0) {
            srv_log_warn("hypernet: cannot poll %s: %s", sw->file, uv_strerror(prc));
            rc = rc ? rc : prc;
        }
    }
    srv_log_info("hypernet: following %s (inotify%s%s)", sw->file, rc == 0 ? "" : " unavailable",
                 poll_ms > 0 ? ", and a stat poll" : "");
    kick(sw);
    return rc;
}

void srv_hnswap_watch_kick(srv_hnswap *sw)
{
    __atomic_store_n(&sw->work_force, 1, __ATOMIC_RELEASE);
    kick(sw);
}

static void closed(uv_handle_t *h) { (void)h; }

void srv_hnswap_watch_stop(srv_hnswap *sw)
{
    if (!sw || !sw->loop)
        return;
    sw->stopping = 1;
    if (sw->ev_on && !uv_is_closing((uv_handle_t *)&sw->ev))
        uv_close((uv_handle_t *)&sw->ev, closed);
    if (sw->poll_on && !uv_is_closing((uv_handle_t *)&sw->poll))
        uv_close((uv_handle_t *)&sw->poll, closed);
}
