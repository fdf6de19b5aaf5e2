/*
 * server/train_jobs.c: the training job queue and the trainer process on the
 * control loop. See train_jobs.h.
 */
#include "server/train_jobs.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "server/fileio.h"
#include "server/log.h"
#include "server/sqlite_db.h"
#include "server/train_parse.h"

extern char **environ;

#define TAIL_LINES    20    /* trainer output lines kept for a failed job's error */
#define TAIL_LINE_MAX 240   /* bytes kept of each */
#define READ_BUF      65536 /* bytes read from a pipe at once */
#define PIPES         3     /* stdout, stderr, progress */
#define DB_WRITE_S    0.25  /* progress reaches the job row at most this often */
#define TICK_MS       200   /* the supervision timer */
#define PIPE_GRACE_S  2.0   /* after the trainer exits, how long its pipes may stay open */
#define LIST_MAX      500   /* jobs per GET /admin/train page */

/* One of the trainer's output streams. */
typedef struct tpipe {
    uv_pipe_t h;                  /* the pipe */
    int open;                     /* 1 until closed */
    int progress;                 /* 1: the progress pipe (fd 3), 0: stdout/stderr */
    char line[TAIL_LINE_MAX + 1]; /* stdout/stderr: the line being read */
    size_t line_len;              /* bytes in line */
    struct srv_train *t;          /* back pointer */
} tpipe;

struct srv_train {
    pthread_mutex_t mu;             /* guards cur_* snapshot, cancel_id, ready, the counters */
    uv_loop_t *loop;                /* the control loop */
    srv_config *cfg;                /* borrowed */
    srv_tdb *db;                    /* borrowed */
    srv_hnswap *sw;                 /* borrowed; NULL without a hypernetwork */
    char jobs_dir[SRV_TJOB_PATH];   /* STATE_DIR/train */
    char data_root[SRV_TJOB_PATH];  /* resolved train-data-dir, "" when training is off */
    char trainer[SRV_TJOB_PATH];    /* the tasam-train program */
    char cache_dir[SRV_TJOB_PATH];  /* STATE_DIR/train/embeddings: the trainer's embedding cache */
    char text_model[SRV_TJOB_PATH]; /* --text-model for the trainer (tasamd's), "" for its default
                                     */
    char checkpoint[SRV_TJOB_PATH]; /* the SAM checkpoint, absolute */
    uv_async_t wake;                /* any thread -> loop: a job was queued or cancelled */
    uv_timer_t tick;                /* supervision while a job runs */
    int ready;                      /* the worker is ready: jobs may start */
    int stopping;                   /* shutdown began: nothing starts */
    int hard;                       /* shutdown without grace */
    /* ---- the running job (loop) ---- */
    int busy;                     /* a job runs (trainer alive, pipes open or activating) */
    srv_tjob job;                 /* its row, as the loop keeps it */
    char out_path[SRV_TJOB_PATH]; /* its --out */
    uv_process_t proc;            /* the trainer */
    int proc_open;                /* proc not closed yet */
    int exited;                   /* the exit callback ran */
    tpipe pipes[PIPES];           /* stdout, stderr, progress */
    char buf[READ_BUF];           /* read buffer (one read at a time on the loop) */
    char *pline;                  /* progress line being assembled [SRV_TRAIN_LINE_MAX + 1] */
    size_t pline_len;             /* bytes in it */
    int log_fd;                   /* train.log, -1 when not open */
    int64_t log_bytes;            /* bytes written to it */
    int log_full;                 /* the cap was reached (noted once) */
    char tail[TAIL_LINES][TAIL_LINE_MAX + 1]; /* last output lines, ring */
    int tail_n;                               /* lines in the ring */
    int tail_next;                            /* next slot */
    srv_tevent ev;                            /* scratch for a parsed line */
    int final;                                /* 0 none, SRV_TEV_DONE or SRV_TEV_ERROR seen */
    srv_tevent last;                          /* that final event */
    char why[512];         /* a supervisor-side failure (protocol, stall), "" none */
    int stepped;           /* a step event came */
    double last_event;     /* srv_now of the last progress line */
    double last_write;     /* srv_now of the last row write */
    int dirty;             /* the row has unwritten progress */
    double term_at;        /* srv_now when SIGTERM was sent, 0 none */
    int killed;            /* SIGKILL was sent */
    double exit_at;        /* srv_now of the exit callback */
    int activating;        /* the result is being activated on the thread pool */
    uv_work_t act;         /* that work */
    srv_hn_result act_res; /* its result */
    srv_error act_err;     /* its error */
    int act_rc;            /* its return */
    /* ---- read by other threads (under mu) ---- */
    char cancel_id[SRV_TJOB_ID_LEN + 1]; /* a cancel the loop has to act on, "" none */
    char cur_id[SRV_TJOB_ID_LEN + 1];    /* the running job, "" none */
    int cur_activating;                  /* it is being activated (a cancel is too late) */
    int64_t cur_step, cur_steps;         /* its progress, for /metrics */
    double cur_loss, cur_sps, cur_eta;   /* idem */
    uint64_t finished[SRV_TJ_STATES];    /* jobs ended since start, by final state */
};

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int srv_train_id_valid(const char *s)
{
    return s && strlen(s) == SRV_TJOB_ID_LEN && strspn(s, "0123456789abcdef") == SRV_TJOB_ID_LEN;
}

static const char *signal_name(int sig)
{
    switch (sig) {
    case SIGKILL:
        return "SIGKILL: killed, e.g. by kill -9 or the kernel's out-of-memory killer";
    case SIGTERM:
        return "SIGTERM";
    case SIGSEGV:
        return "SIGSEGV: it crashed";
    case SIGABRT:
        return "SIGABRT: it aborted";
    case SIGBUS:
        return "SIGBUS: it crashed";
    case SIGFPE:
        return "SIGFPE: it crashed";
    case SIGILL:
        return "SIGILL: it crashed";
    case SIGINT:
        return "SIGINT";
    case SIGPIPE:
        return "SIGPIPE: its progress pipe closed";
    default:
        return "a signal";
    }
}

/* ---- job JSON ---- */

static json_t *num_or_null(double v) { return isfinite(v) ? json_real(v) : json_null(); }

/* Contract: the JSON of a job row (NULL when out of memory). */
static json_t *job_json(const srv_tjob *j)
{
    json_t *params = json_loads(j->params, 0, NULL);
    json_t *val = j->val[0] ? json_loads(j->val, 0, NULL) : NULL;
    json_t *o =
        json_pack("{s:s,s:s,s:o,s:I,s:I,s:o,s:o}", "id", j->id, "state",
                  srv_tjob_state_name(j->state), "params", params ? params : json_object(), "step",
                  (json_int_t)j->step, "steps", (json_int_t)j->steps, "progress",
                  j->steps > 0 ? json_real((double)j->step / (double)j->steps) : json_real(0),
                  "created_ms", json_integer(j->created_ms));
    if (!o) {
        json_decref(val);
        return NULL;
    }
    json_object_set_new(o, "started_ms", j->started_ms ? json_integer(j->started_ms) : json_null());
    json_object_set_new(o, "finished_ms",
                        j->finished_ms ? json_integer(j->finished_ms) : json_null());
    json_object_set_new(o, "loss", num_or_null(j->loss));
    json_object_set_new(o, "loss_parts",
                        json_pack("{s:o,s:o,s:o}", "focal", num_or_null(j->focal), "dice",
                                  num_or_null(j->dice), "iou_mse", num_or_null(j->iou_mse)));
    json_object_set_new(o, "lr", num_or_null(j->lr));
    json_object_set_new(o, "samples_per_s", num_or_null(j->samples_per_s));
    json_object_set_new(o, "eta_s", num_or_null(j->eta_s));
    json_object_set_new(o, "validation", val ? val : json_null());
    json_object_set_new(o, "train_images",
                        j->train_images >= 0 ? json_integer(j->train_images) : json_null());
    json_object_set_new(o, "val_images",
                        j->val_images >= 0 ? json_integer(j->val_images) : json_null());
    json_object_set_new(o, "init",
                        j->init_id[0]
                            ? json_pack("{s:s,s:s}", "id", j->init_id, "version", j->init_version)
                            : json_null());
    json_object_set_new(o, "hypernetwork",
                        j->out_id[0] && j->published == 1
                            ? json_pack("{s:s,s:s}", "id", j->out_id, "version", j->out_version)
                            : json_null());
    json_object_set_new(o, "published",
                        j->published < 0 ? json_null() : json_boolean(j->published));
    json_object_set_new(o, "reason", j->reason[0] ? json_string(j->reason) : json_null());
    json_object_set_new(o, "error", j->error[0] ? json_string(j->error) : json_null());
    json_object_set_new(o, "exit_status",
                        j->exit_status >= 0 ? json_integer(j->exit_status) : json_null());
    json_object_set_new(o, "signal",
                        j->term_signal > 0 ? json_integer(j->term_signal) : json_null());
    json_object_set_new(o, "cancel_requested", json_boolean(j->cancel));
    json_object_set_new(
        o, "pid", j->state == SRV_TJ_RUNNING && j->pid > 0 ? json_integer(j->pid) : json_null());
    char log[64];
    snprintf(log, sizeof log, "/admin/train/%s/log", j->id);
    json_object_set_new(o, "log", json_string(log));
    return o;
}

/* ---- files ---- */

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)ftw;
    if ((flag == FTW_DP ? rmdir(path) : unlink(path)) != 0 && errno != ENOENT)
        srv_log_warn("train: cannot remove %s: %s", path, strerror(errno));
    return 0;
}

/* Contract: removes a job folder (only ever one inside jobs_dir). */
static void remove_job_dir(const char *dir, void *arg)
{
    srv_train *t = arg;
    size_t n = strlen(t->jobs_dir);
    if (strncmp(dir, t->jobs_dir, n) != 0 || dir[n] != '/' || strstr(dir, "/..") ||
        !srv_train_id_valid(dir + n + 1))
        return;
    nftw(dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
}

/* Contract: the last `want` lines of a file into a malloc'd text (NULL when
 * unreadable); reads at most the file's last 1 MiB. */
static char *file_tail(const char *path, int want, size_t *out_len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0)
        return NULL;
    if (fstat(fd, &st) != 0) {
        close(fd);
        return NULL;
    }
    off_t size = st.st_size, from = size > (1 << 20) ? size - (1 << 20) : 0;
    size_t n = (size_t)(size - from);
    char *b = malloc(n + 1);
    ssize_t got = b ? pread(fd, b, n, from) : -1;
    close(fd);
    if (got < 0) {
        free(b);
        return NULL;
    }
    n = (size_t)got;
    b[n] = 0;
    size_t start = n;
    int lines = 0;
    if (start > 0 && b[start - 1] == '\n')
        start--;
    while (start > 0 && lines < want) {
        start--;
        if (b[start] == '\n' && ++lines == want) {
            start++;
            break;
        }
    }
    memmove(b, b + start, n - start + 1);
    *out_len = n - start;
    return b;
}

/* ---- recovery ---- */

/* Contract: kills a trainer a crashed daemon left behind: pid alive and its
 * command line naming the job's folder (so an unrelated process that got
 * the pid is never touched). */
static void kill_orphan(const srv_tjob *j)
{
    char path[64], cmd[8192];
    if (j->pid <= 0 || !j->dir[0])
        return;
    snprintf(path, sizeof path, "/proc/%lld/cmdline", (long long)j->pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    ssize_t n = read(fd, cmd, sizeof cmd - 1);
    close(fd);
    if (n <= 0)
        return;
    for (ssize_t i = 0; i < n; i++)
        if (!cmd[i])
            cmd[i] = ' ';
    cmd[n] = 0;
    if (strstr(cmd, j->dir) && kill((pid_t)j->pid, SIGKILL) == 0)
        srv_log_warn("train: killed trainer pid %lld of job %s, left running by the previous "
                     "tasamd",
                     (long long)j->pid, j->id);
}

/* Contract: rows a crash left `running` become `failed` with why. */
static void recover(srv_train *t)
{
    srv_tjob *rows = malloc(sizeof *rows * 16);
    int n = 0;
    if (!rows)
        return;
    while (srv_tdb_job_list(t->db, SRV_TJ_RUNNING, 0, rows, 16, &n) == 0 && n > 0) {
        for (int i = 0; i < n; i++) {
            srv_tjob *j = &rows[i];
            char log[SRV_TJOB_PATH + 16], *tail = NULL;
            size_t tl = 0;
            kill_orphan(j);
            if (srv_pathf(log, sizeof log, "%s/train.log", j->dir) == 0)
                tail = file_tail(log, 8, &tl);
            snprintf(j->error, sizeof j->error,
                     "tasamd stopped while this job ran (it crashed or was killed); the trainer "
                     "was stopped%s%.3000s",
                     tail && tl ? "; last lines of the log:\n" : "", tail ? tail : "");
            free(tail);
            j->state = SRV_TJ_FAILED;
            j->finished_ms = wall_ms();
            j->pid = 0;
            srv_tdb_job_update(t->db, j);
            srv_log_warn("train: job %s was running when tasamd stopped: marked failed", j->id);
        }
    }
    free(rows);
}

/* ---- progress and output ---- */

/* Contract: mirrors the running job's progress for other threads. */
static void snapshot(srv_train *t)
{
    pthread_mutex_lock(&t->mu);
    snprintf(t->cur_id, sizeof t->cur_id, "%s", t->busy ? t->job.id : "");
    t->cur_activating = t->activating;
    t->cur_step = t->job.step;
    t->cur_steps = t->job.steps;
    t->cur_loss = t->job.loss;
    t->cur_sps = t->job.samples_per_s;
    t->cur_eta = t->job.eta_s;
    pthread_mutex_unlock(&t->mu);
}

/* Contract: writes the row now, or soon when `force` is 0 (throttled). */
static void save(srv_train *t, int force)
{
    double now = srv_now();
    t->dirty = 1;
    if (!force && now - t->last_write < DB_WRITE_S)
        return;
    srv_tdb_job_update(t->db, &t->job);
    t->last_write = now;
    t->dirty = 0;
    snapshot(t);
}

static void tail_push(srv_train *t, const char *line, size_t n)
{
    char *slot = t->tail[t->tail_next];
    if (n > TAIL_LINE_MAX)
        n = TAIL_LINE_MAX;
    memcpy(slot, line, n);
    slot[n] = 0;
    t->tail_next = (t->tail_next + 1) % TAIL_LINES;
    if (t->tail_n < TAIL_LINES)
        t->tail_n++;
}

/* Contract: appends bytes to train.log within train-log-bytes. */
static void log_write(srv_train *t, const char *p, size_t n)
{
    int64_t cap = srv_config_int(t->cfg, SRV_OPT_TRAIN_LOG_BYTES);
    if (t->log_fd < 0 || t->log_full)
        return;
    if (t->log_bytes + (int64_t)n > cap) {
        static const char note[] = "\n[tasamd: the log reached train-log-bytes; the rest of the "
                                   "trainer's output is not kept]\n";
        n = (size_t)(cap - t->log_bytes);
        t->log_full = 1;
        if (n && write(t->log_fd, p, n) < 0)
            return;
        if (write(t->log_fd, note, sizeof note - 1) < 0)
            return;
        t->log_bytes = cap;
        return;
    }
    if (write(t->log_fd, p, n) == (ssize_t)n)
        t->log_bytes += (int64_t)n;
}

/* Contract: one tasamd line in the job's log. */
static void log_note(srv_train *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void log_note(srv_train *t, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    int k = snprintf(line, sizeof line, "[tasamd] ");
    va_start(ap, fmt);
    vsnprintf(line + k, sizeof line - (size_t)k - 1, fmt, ap);
    va_end(ap);
    size_t n = strlen(line);
    line[n++] = '\n';
    log_write(t, line, n);
}

/* Contract: stdout/stderr bytes: to the log and, line by line, to the tail. */
static void output_bytes(srv_train *t, tpipe *p, const char *b, size_t n)
{
    log_write(t, b, n);
    for (size_t i = 0; i < n; i++) {
        if (b[i] == '\n' || b[i] == '\r') { /* a progress line rewritten in place ends at \r */
            if (p->line_len)
                tail_push(t, p->line, p->line_len);
            p->line_len = 0;
        } else if (p->line_len < TAIL_LINE_MAX) {
            p->line[p->line_len++] = b[i] == '\t' || (unsigned char)b[i] >= 0x20 ? b[i] : '?';
        }
    }
}

static void signal_trainer(srv_train *t, int sig)
{
    if (!t->proc_open || t->exited)
        return;
    if (sig == SIGKILL)
        t->killed = 1;
    else if (!t->term_at)
        t->term_at = srv_now();
    int rc = uv_process_kill(&t->proc, sig);
    if (rc != 0 && rc != UV_ESRCH)
        srv_log_warn("train: signalling trainer pid %d: %s", t->proc.pid, uv_strerror(rc));
}

/* Contract: the trainer broke the protocol or went silent: kill it, fail the job. */
static void fail_trainer(srv_train *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail_trainer(srv_train *t, const char *fmt, ...)
{
    va_list ap;
    if (t->why[0])
        return;
    va_start(ap, fmt);
    vsnprintf(t->why, sizeof t->why, fmt, ap);
    va_end(ap);
    srv_log_error("train: job %s: %s; killing the trainer", t->job.id, t->why);
    log_note(t, "%s; killing the trainer", t->why);
    signal_trainer(t, SIGKILL);
}

/* Contract: the trainer's threads get train-nice even if it did not apply
 * --nice itself (every thread: on Linux a nice value is per thread). */
static void enforce_nice(srv_train *t)
{
    char path[64];
    int want = (int)srv_config_int(t->cfg, SRV_OPT_TRAIN_NICE);
    snprintf(path, sizeof path, "/proc/%d/task", t->proc.pid);
    DIR *d = opendir(path);
    struct dirent *de;
    while (d && (de = readdir(d))) {
        int tid = atoi(de->d_name);
        if (tid <= 0)
            continue;
        errno = 0;
        int cur = getpriority(PRIO_PROCESS, (id_t)tid);
        if (errno == 0 && cur < want && setpriority(PRIO_PROCESS, (id_t)tid, want) != 0)
            srv_log_warn("train: cannot lower the priority of trainer thread %d: %s", tid,
                         strerror(errno));
    }
    if (d)
        closedir(d);
}

/* Contract: one progress line. */
static void progress_line(srv_train *t, const char *line, size_t n)
{
    char err[512];
    srv_tevent *ev = &t->ev;
    if (n == 0 || t->why[0])
        return;
    if (srv_tevent_parse(line, n, ev, err, sizeof err) != 0) {
        fail_trainer(t, "the trainer sent a malformed progress line: %s", err);
        return;
    }
    t->last_event = srv_now();
    if (t->final) {
        if (ev->type != SRV_TEV_OTHER)
            fail_trainer(t, "the trainer sent a progress event after its final one");
        return;
    }
    srv_tjob *j = &t->job;
    switch (ev->type) {
    case SRV_TEV_START:
        if (ev->steps > 0)
            j->steps = ev->steps;
        j->train_images = ev->train_images;
        j->val_images = ev->val_images;
        if (ev->init_id[0]) {
            snprintf(j->init_id, sizeof j->init_id, "%s", ev->init_id);
            snprintf(j->init_version, sizeof j->init_version, "%s", ev->init_version);
        }
        enforce_nice(t);
        save(t, 1);
        break;
    case SRV_TEV_STEP:
        t->stepped = 1;
        j->step = ev->step;
        if (ev->steps > 0)
            j->steps = ev->steps;
        j->loss = ev->loss;
        j->focal = ev->focal;
        j->dice = ev->dice;
        j->iou_mse = ev->iou_mse;
        j->lr = ev->lr;
        j->samples_per_s = ev->samples_per_s;
        j->eta_s = ev->eta_s;
        save(t, 0);
        break;
    case SRV_TEV_VAL:
        snprintf(j->val, sizeof j->val, "%s", ev->val);
        save(t, 1);
        break;
    case SRV_TEV_CHECKPOINT:
        log_note(t, "checkpoint at step %lld: %s", (long long)ev->step, ev->path);
        break;
    case SRV_TEV_DONE:
    case SRV_TEV_ERROR:
        t->final = ev->type;
        t->last = *ev;
        break;
    case SRV_TEV_OTHER:
        break;
    }
}

/* Contract: progress bytes: split into lines, each bounded. */
static void progress_bytes(srv_train *t, const char *b, size_t n)
{
    for (size_t i = 0; i < n && !t->why[0]; i++) {
        if (b[i] == '\n') {
            progress_line(t, t->pline, t->pline_len);
            t->pline_len = 0;
        } else if (t->pline_len < SRV_TRAIN_LINE_MAX) {
            t->pline[t->pline_len++] = b[i];
        } else {
            fail_trainer(t, "the trainer sent a progress line longer than %d bytes",
                         SRV_TRAIN_LINE_MAX);
        }
    }
}

static void finish_if_done(srv_train *t);

static void handle_closed(uv_handle_t *h)
{
    srv_train *t = h->data;
    if (h == (uv_handle_t *)&t->proc)
        t->proc_open = 0;
    else
        for (int i = 0; i < PIPES; i++)
            if (h == (uv_handle_t *)&t->pipes[i].h)
                t->pipes[i].open = 0;
    finish_if_done(t);
}

static void close_pipe(tpipe *p)
{
    if (p->open && !uv_is_closing((uv_handle_t *)&p->h))
        uv_close((uv_handle_t *)&p->h, handle_closed);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    srv_train *t = h->data;
    (void)suggested;
    buf->base = t->buf;
    buf->len = sizeof t->buf;
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    tpipe *p = (tpipe *)((char *)s - offsetof(tpipe, h));
    srv_train *t = p->t;
    if (n > 0) {
        if (p->progress)
            progress_bytes(t, buf->base, (size_t)n);
        else
            output_bytes(t, p, buf->base, (size_t)n);
    } else if (n < 0) {
        if (p->progress && t->pline_len)
            progress_line(t, t->pline, t->pline_len); /* a last line without a newline */
        t->pline_len = 0;
        close_pipe(p);
    }
}

static void trainer_exited(uv_process_t *proc, int64_t status, int sig)
{
    srv_train *t = proc->data;
    t->exited = 1;
    t->exit_at = srv_now();
    t->job.exit_status = sig ? -1 : (int)status;
    t->job.term_signal = sig ? sig : -1;
    srv_log_info("train: job %s: the trainer (pid %d) %s %d", t->job.id, proc->pid,
                 sig ? "was ended by signal" : "exited with status", sig ? sig : (int)status);
    uv_close((uv_handle_t *)proc, handle_closed);
}

/* ---- ending a job ---- */

/* Contract: the error text: `why`, then the trainer's last output lines. */
static void set_error(srv_train *t, const char *why)
{
    srv_tjob *j = &t->job;
    size_t k = (size_t)snprintf(j->error, sizeof j->error, "%s", why);
    if (t->tail_n && k < sizeof j->error)
        k += (size_t)snprintf(j->error + k, sizeof j->error - k, "; last lines of the log:");
    for (int i = 0; i < t->tail_n && k < sizeof j->error; i++) {
        int slot = (t->tail_next - t->tail_n + i + TAIL_LINES) % TAIL_LINES;
        k += (size_t)snprintf(j->error + k, sizeof j->error - k, "\n%s", t->tail[slot]);
    }
}

static void start_next(srv_train *t);

/* Contract: the job ended in `state`; records it and moves on. */
static void end_job(srv_train *t, srv_tjob_state state)
{
    srv_tjob *j = &t->job;
    j->state = state;
    j->finished_ms = wall_ms();
    j->pid = 0;
    if (j->published < 0)
        j->published = 0;
    log_note(t, "job %s%s%.600s", srv_tjob_state_name(state),
             j->error[0] || j->reason[0] ? ": " : "", j->error[0] ? j->error : j->reason);
    srv_tdb_job_update(t->db, j);
    srv_log_info("train: job %s %s%s%.300s", j->id, srv_tjob_state_name(state),
                 j->error[0] ? ": " : "", j->error);
    if (t->log_fd >= 0)
        close(t->log_fd);
    t->log_fd = -1;
    t->busy = 0;
    pthread_mutex_lock(&t->mu);
    t->finished[state]++;
    pthread_mutex_unlock(&t->mu);
    snapshot(t);
    uv_timer_stop(&t->tick);
    srv_tdb_job_prune(t->db, (int)srv_config_int(t->cfg, SRV_OPT_TRAIN_KEEP_JOBS), remove_job_dir,
                      t);
    start_next(t);
}

static void activate_work(uv_work_t *w)
{
    srv_train *t = w->data;
    t->act_rc = srv_hnswap_activate(t->sw, t->out_path, SRV_HN_JOB, t->job.id, t->last.id,
                                    &t->act_res, &t->act_err);
}

static void activate_after(uv_work_t *w, int status)
{
    srv_train *t = w->data;
    srv_tjob *j = &t->job;
    t->activating = 0;
    if (status != 0 || t->act_rc != 0) {
        char why[700];
        snprintf(why, sizeof why, "the trained hypernetwork was not activated: %s",
                 status ? uv_strerror(status) : t->act_err.message);
        snprintf(j->error, sizeof j->error, "%s", why);
        end_job(t, SRV_TJ_FAILED);
        return;
    }
    j->published = 1;
    snprintf(j->out_id, sizeof j->out_id, "%s", t->act_res.active.id);
    snprintf(j->out_version, sizeof j->out_version, "%s", t->act_res.active.version);
    if (t->act_res.note[0])
        snprintf(j->reason, sizeof j->reason, "active here; %s", t->act_res.note);
    /* its copy lives in the history now */
    unlink(t->out_path);
    end_job(t, SRV_TJ_SUCCEEDED);
}

/* Contract: once the trainer exited and its pipes are closed (or the grace
 * after exit passed), decides how the job ended. */
static void finish_if_done(srv_train *t)
{
    srv_tjob *j = &t->job;
    char why[1024];
    if (!t->busy || t->activating || t->proc_open || !t->exited)
        return;
    for (int i = 0; i < PIPES; i++)
        if (t->pipes[i].open)
            return;
    int status = j->exit_status, sig = j->term_signal;
    const srv_tevent *ev = &t->last;
    if (t->why[0]) {
        set_error(t, t->why);
        end_job(t, SRV_TJ_FAILED);
    } else if (j->cancel) {
        snprintf(j->error, sizeof j->error, "%s",
                 t->final == SRV_TEV_DONE && ev->published
                     ? "cancelled after the trainer finished; its result was not activated"
                     : "");
        end_job(t, SRV_TJ_CANCELLED);
    } else if (t->stopping) {
        snprintf(
            why, sizeof why, "interrupted: tasamd shut down while the job ran%s; submit it again",
            t->final == SRV_TEV_DONE && ev->published ? " (its result was not activated)" : "");
        set_error(t, why);
        end_job(t, SRV_TJ_FAILED);
    } else if (t->final == SRV_TEV_DONE && sig < 0 && status == 0) {
        if (!ev->published) {
            snprintf(j->reason, sizeof j->reason, "%s",
                     ev->text[0] ? ev->text : "the trainer did not publish its result");
            j->published = 0;
            end_job(t, SRV_TJ_SUCCEEDED);
            return;
        }
        /* the trainer wrote where it was told to, or the result is not ours */
        if (strcmp(ev->path, t->out_path) != 0) {
            snprintf(why, sizeof why, "the trainer reported its result at %.400s, not at %.400s",
                     ev->path, t->out_path);
            set_error(t, why);
            end_job(t, SRV_TJ_FAILED);
            return;
        }
        t->activating = 1;
        snapshot(t);
        t->act.data = t;
        log_note(t, "activating hypernetwork %.16s... version %s", ev->id, ev->version);
        int rc = uv_queue_work(t->loop, &t->act, activate_work, activate_after);
        if (rc != 0) {
            t->activating = 0;
            snprintf(why, sizeof why, "cannot activate the result: %s", uv_strerror(rc));
            set_error(t, why);
            end_job(t, SRV_TJ_FAILED);
        }
    } else {
        if (t->final == SRV_TEV_ERROR)
            snprintf(why, sizeof why, "the trainer failed: %.400s (exit status %d)",
                     ev->text[0] ? ev->text : "no message", status);
        else if (sig > 0)
            snprintf(why, sizeof why, "the trainer was ended by signal %d (%s)", sig,
                     signal_name(sig));
        else if (status == 0)
            snprintf(why, sizeof why,
                     "the trainer exited with status 0 without reporting a "
                     "result (no \"done\" or \"error\" event)");
        else if (t->final == SRV_TEV_DONE)
            snprintf(why, sizeof why, "the trainer reported done but exited with status %d",
                     status);
        else
            snprintf(why, sizeof why, "the trainer exited with status %d%s", status,
                     status == 2 ? " (a usage error: the daemon and tasam-train disagree on the "
                                   "options)"
                     : status == 127 ? " (it could not be executed)"
                                     : "");
        set_error(t, why);
        end_job(t, SRV_TJ_FAILED);
    }
}

/* The supervision timer: stop escalation, stall watchdog, pipes left open
 * by the trainer's children, throttled progress writes. */
static void on_tick(uv_timer_t *h)
{
    srv_train *t = h->data;
    double now = srv_now();
    int64_t stall = srv_config_int(t->cfg, SRV_OPT_TRAIN_STALL_TIMEOUT_MS);
    if (!t->busy)
        return;
    if (t->dirty)
        save(t, 1);
    if (t->term_at && !t->killed && !t->exited &&
        now - t->term_at >= (double)srv_config_int(t->cfg, SRV_OPT_TRAIN_STOP_TIMEOUT_MS) * 1e-3) {
        srv_log_warn("train: job %s: the trainer did not stop within train-stop-timeout-ms of "
                     "SIGTERM; SIGKILL",
                     t->job.id);
        log_note(t, "no exit within train-stop-timeout-ms of SIGTERM; SIGKILL");
        signal_trainer(t, SIGKILL);
    }
    if (stall > 0 && t->stepped && !t->exited && !t->why[0] &&
        now - t->last_event >= (double)stall * 1e-3)
        fail_trainer(t, "no progress from the trainer for %.0f s (train-stall-timeout-ms)",
                     now - t->last_event);
    if (t->exited && now - t->exit_at >= PIPE_GRACE_S)
        for (int i = 0; i < PIPES; i++)
            close_pipe(&t->pipes[i]);
}

/* ---- starting a job ---- */

/* Contract: the trainer's environment: ours without TASAMD_* (the admin
 * token stays in the daemon) and without the thread and device variables,
 * which are set for it. A malloc'd NULL-terminated array of malloc'd
 * strings (free with free_env). */
static char **make_env(srv_train *t, int threads)
{
    size_t n = 0, k = 0;
    while (environ[n])
        n++;
    char **env = calloc(n + 8, sizeof *env);
    if (!env)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        const char *e = environ[i];
        if (!strncmp(e, "TASAMD_", 7) || !strncmp(e, "OPENBLAS_NUM_THREADS=", 21) ||
            !strncmp(e, "OMP_NUM_THREADS=", 16) || !strncmp(e, "CUDA_VISIBLE_DEVICES=", 21))
            continue;
        if ((env[k] = strdup(e)))
            k++;
    }
    int dev = (int)srv_config_int(t->cfg, SRV_OPT_TRAIN_DEVICE);
    char vis[256] = "";
    pthread_mutex_lock(&t->cfg->mu);
    snprintf(vis, sizeof vis, "%s", t->cfg->str[SRV_OPT_TRAIN_CUDA_DEVICES]);
    pthread_mutex_unlock(&t->cfg->mu);
    if (dev == SRV_TRAIN_DEVICE_CPU)
        vis[0] = 0; /* no GPU for the trainer at all: serving keeps it */
    else if (!vis[0])
        snprintf(vis, sizeof vis, "%s",
                 getenv("CUDA_VISIBLE_DEVICES") ? getenv("CUDA_VISIBLE_DEVICES") : "\x01");
    if (asprintf(&env[k], "OPENBLAS_NUM_THREADS=%d", threads) >= 0)
        k++;
    if (asprintf(&env[k], "OMP_NUM_THREADS=%d", threads) >= 0)
        k++;
    /* \x01: the daemon has no CUDA_VISIBLE_DEVICES; the trainer gets none either */
    if (vis[0] != 1 && asprintf(&env[k], "CUDA_VISIBLE_DEVICES=%s", vis) >= 0)
        k++;
    env[k] = NULL;
    return env;
}

static void free_env(char **env)
{
    for (size_t i = 0; env && env[i]; i++)
        free(env[i]);
    free(env);
}

/* An argument list being built. */
typedef struct argv_b {
    char *v[64]; /* the arguments (malloc'd), NULL-terminated */
    int n;       /* used */
} argv_b;

static void arg(argv_b *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void arg(argv_b *a, const char *fmt, ...)
{
    va_list ap;
    if (a->n >= 63)
        return;
    va_start(ap, fmt);
    if (vasprintf(&a->v[a->n], fmt, ap) >= 0)
        a->n++;
    va_end(ap);
}

/* An option with a value unless the value is the trainer's default (NaN,
 * or a negative integer). */
static void arg_real(argv_b *a, const char *flag, double v)
{
    if (isfinite(v)) {
        arg(a, "%s", flag);
        arg(a, "%.17g", v);
    }
}

static void arg_int(argv_b *a, const char *flag, int64_t v)
{
    if (v >= 0) {
        arg(a, "%s", flag);
        arg(a, "%lld", (long long)v);
    }
}

static void free_args(argv_b *a)
{
    for (int i = 0; i < a->n; i++)
        free(a->v[i]);
}

/* Contract: records a job that could not start as failed. */
static void fail_start(srv_train *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail_start(srv_train *t, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->job.error, sizeof t->job.error, fmt, ap);
    va_end(ap);
    srv_log_error("train: job %s cannot start: %s", t->job.id, t->job.error);
    t->busy = 1;
    t->exited = 1;
    end_job(t, SRV_TJ_FAILED);
}

static int threads_for_job(srv_train *t)
{
    int n = (int)srv_config_int(t->cfg, SRV_OPT_TRAIN_THREADS);
    if (n > 0)
        return n;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    return cores > 1 ? (int)(cores / 2) : 1;
}

/* Contract: spawns the trainer for t->job (a row just moved to running). */
static void spawn(srv_train *t)
{
    srv_tjob *j = &t->job;
    srv_train_req req;
    srv_error e;
    char data[PATH_MAX], val[PATH_MAX], init[SRV_TJOB_PATH], log[SRV_TJOB_PATH + 16];
    srv_hn_info active;
    argv_b a = {{0}, 0};
    static const char *const devs[] = {"cpu", "cuda", "auto"};

    if (srv_train_req_parse(j->params, strlen(j->params), &req, &e) != 0) {
        fail_start(t, "its stored request no longer parses: %s", e.message);
        return;
    }
    /* the data folder may have changed since the job was queued */
    if (srv_train_resolve(t->data_root, req.data, "data", data, sizeof data, &e) != 0 ||
        (req.val[0] && srv_train_resolve(t->data_root, req.val, "val", val, sizeof val, &e) != 0)) {
        fail_start(t, "%s", e.message);
        return;
    }
    if (!t->sw || srv_hnswap_active_file(t->sw, init, sizeof init, &active) != 0) {
        fail_start(t, "no active hypernetwork to start from");
        return;
    }
    if (srv_mkdirs(j->dir) != 0) {
        fail_start(t, "cannot create %s: %s", j->dir, strerror(errno));
        return;
    }
    if (srv_pathf(t->out_path, sizeof t->out_path, "%s/hypernet.safetensors", j->dir) != 0 ||
        srv_pathf(log, sizeof log, "%s/train.log", j->dir) != 0) {
        fail_start(t, "the job folder's path is too long");
        return;
    }
    unlink(t->out_path);
    t->log_fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    t->log_bytes = 0;
    t->log_full = 0;
    snprintf(j->init_id, sizeof j->init_id, "%s", active.id);
    snprintf(j->init_version, sizeof j->init_version, "%s", active.version);
    j->steps = req.steps;

    int threads = threads_for_job(t);
    int dev = (int)srv_config_int(t->cfg, SRV_OPT_TRAIN_DEVICE);
    arg(&a, "%s", t->trainer);
    arg(&a, "run");
    arg(&a, "--checkpoint");
    arg(&a, "%s", t->checkpoint);
    arg(&a, "--data");
    arg(&a, "%s", data);
    if (req.val[0]) {
        arg(&a, "--val");
        arg(&a, "%s", val);
    }
    arg(&a, "--init");
    arg(&a, "%s", init);
    /* embeddings are cached in the state folder: the data folder may be
     * read-only, and later jobs on the same images skip the encoder */
    arg(&a, "--cache");
    arg(&a, "%s", t->cache_dir);
    if (t->text_model[0]) {
        arg(&a, "--text-model");
        arg(&a, "%s", t->text_model);
    }
    arg(&a, "--out");
    arg(&a, "%s", t->out_path);
    arg_int(&a, "--steps", req.steps);
    arg_int(&a, "--batch", req.batch);
    arg_real(&a, "--lr", req.lr);
    arg_int(&a, "--warmup", req.warmup);
    arg_real(&a, "--weight-decay", req.weight_decay);
    arg_real(&a, "--clip", req.clip);
    arg_int(&a, "--seed", req.seed);
    arg_int(&a, "--threads", threads);
    arg_int(&a, "--nice", srv_config_int(t->cfg, SRV_OPT_TRAIN_NICE));
    arg(&a, "--device");
    arg(&a, "%s", devs[dev]);
    if (req.publish_if_better)
        arg(&a, "--publish-if-better");
    arg(&a, "--log");
    arg(&a, "%s/events.jsonl", j->dir);
    arg(&a, "--progress-fd");
    arg(&a, "3");
    a.v[a.n] = NULL;

    char **env = make_env(t, threads);
    uv_process_options_t o;
    uv_stdio_container_t stdio[4];
    memset(&o, 0, sizeof o);
    memset(stdio, 0, sizeof stdio);
    stdio[0].flags = UV_IGNORE;
    for (int i = 0; i < PIPES; i++) {
        tpipe *p = &t->pipes[i];
        memset(p, 0, sizeof *p);
        p->t = t;
        p->progress = i == 2;
        uv_pipe_init(t->loop, &p->h, 0);
        p->h.data = t;
        p->open = 1;
        stdio[i + 1].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
        stdio[i + 1].data.stream = (uv_stream_t *)&p->h;
    }
    o.file = t->trainer;
    o.args = a.v;
    o.env = env;
    o.stdio = stdio;
    o.stdio_count = 4;
    o.exit_cb = trainer_exited;
    /* its own session: a terminal's ^C reaches tasamd, which stops it cleanly */
    o.flags = UV_PROCESS_DETACHED;
    t->proc.data = t;
    t->exited = 0;
    t->final = 0;
    t->why[0] = 0;
    t->stepped = 0;
    t->term_at = 0;
    t->killed = 0;
    t->tail_n = t->tail_next = 0;
    t->pline_len = 0;
    t->busy = 1;
    for (int i = 0; i < a.n; i++) { /* the command line, first in the log */
        log_write(t, a.v[i], strlen(a.v[i]));
        log_write(t, i + 1 < a.n ? " " : "\n", 1);
    }
    int rc = env ? uv_spawn(t->loop, &t->proc, &o) : UV_ENOMEM;
    free_env(env);
    free_args(&a);
    /* uv_spawn initialises the handle even when it fails: it is closed either way */
    t->proc_open = 1;
    if (rc != 0) {
        snprintf(t->why, sizeof t->why, "cannot start the trainer %.300s: %s", t->trainer,
                 uv_strerror(rc));
        srv_log_error("train: job %s: %s", j->id, t->why);
        log_note(t, "%s", t->why);
        t->exited = 1; /* finish_if_done ends the job once every handle is closed */
        if (env)
            uv_close((uv_handle_t *)&t->proc, handle_closed);
        else
            t->proc_open = 0;
        for (int i = 0; i < PIPES; i++)
            close_pipe(&t->pipes[i]);
        return;
    }
    j->pid = t->proc.pid;
    j->started_ms = wall_ms();
    t->last_event = srv_now();
    for (int i = 0; i < PIPES; i++)
        uv_read_start((uv_stream_t *)&t->pipes[i].h, on_alloc, on_read);
    srv_log_info("train: job %s started: trainer pid %d, %lld steps of %lld, %d threads, nice "
                 "%lld, device %s, from hypernetwork %.16s... version %s",
                 j->id, t->proc.pid, (long long)req.steps, (long long)req.batch, threads,
                 (long long)srv_config_int(t->cfg, SRV_OPT_TRAIN_NICE), devs[dev], j->init_id,
                 j->init_version);
    save(t, 1);
    uv_timer_start(&t->tick, on_tick, TICK_MS, TICK_MS);
}

/* Contract: loop: starts the oldest queued job when nothing runs. */
static void start_next(srv_train *t)
{
    srv_tjob *j = &t->job;
    if (t->busy || t->stopping || !t->ready)
        return;
    while (srv_tdb_job_next_queued(t->db, j) == 0) {
        /* claim it: a concurrent cancel wins or loses here, never both */
        if (srv_tdb_job_set_state_if(t->db, j->id, SRV_TJ_QUEUED, SRV_TJ_RUNNING, 0, NULL) != 0)
            continue;
        j->state = SRV_TJ_RUNNING;
        spawn(t);
        return;
    }
}

static void on_wake(uv_async_t *a)
{
    srv_train *t = a->data;
    char id[SRV_TJOB_ID_LEN + 1];
    pthread_mutex_lock(&t->mu);
    snprintf(id, sizeof id, "%s", t->cancel_id);
    t->cancel_id[0] = 0;
    pthread_mutex_unlock(&t->mu);
    if (id[0] && t->busy && !strcmp(id, t->job.id) && !t->activating) {
        t->job.cancel = 1;
        log_note(t, "cancel requested: SIGTERM");
        srv_log_info("train: job %s: cancel requested; stopping the trainer", id);
        save(t, 1);
        signal_trainer(t, SIGTERM);
    }
    start_next(t);
}

/* ---- lifecycle ---- */

/* Contract: the trainer program: the option, else tasam-train beside this
 * executable, else "tasam-train" (found on PATH by uv_spawn). */
static void find_trainer(srv_train *t)
{
    const char *opt = srv_config_str(t->cfg, SRV_OPT_TRAINER);
    char self[PATH_MAX], dir[PATH_MAX], cand[PATH_MAX + 16];
    if (opt[0]) {
        snprintf(t->trainer, sizeof t->trainer, "%s", opt);
        return;
    }
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n > 0) {
        self[n] = 0;
        srv_path_dir(self, dir, sizeof dir);
        if (srv_pathf(cand, sizeof cand, "%s/tasam-train", dir) == 0 && access(cand, X_OK) == 0 &&
            srv_pathf(t->trainer, sizeof t->trainer, "%s", cand) == 0)
            return;
    }
    snprintf(t->trainer, sizeof t->trainer, "tasam-train");
}

int srv_train_create(srv_train **out, uv_loop_t *loop, srv_config *cfg, srv_tdb *db, srv_hnswap *sw,
                     const char *state_dir, char *err, size_t errlen)
{
    srv_train *t = calloc(1, sizeof *t);
    char real[PATH_MAX];
    *out = NULL;
    if (!t || !(t->pline = malloc(SRV_TRAIN_LINE_MAX + 1))) {
        free(t);
        return srv_errf(err, errlen, "out of memory");
    }
    pthread_mutex_init(&t->mu, NULL);
    t->loop = loop;
    t->cfg = cfg;
    t->db = db;
    t->sw = sw;
    t->log_fd = -1;
    t->cur_loss = t->cur_sps = t->cur_eta = NAN;
    if (srv_pathf(t->jobs_dir, sizeof t->jobs_dir - 32, "%s/train", state_dir) != 0 ||
        srv_mkdirs(t->jobs_dir) != 0 || !realpath(t->jobs_dir, real) ||
        srv_pathf(t->jobs_dir, sizeof t->jobs_dir - 32, "%s", real) != 0) {
        srv_errf(err, errlen, "cannot create %s/train: %s", state_dir, strerror(errno));
        goto fail;
    }
    const char *root = srv_config_str(cfg, SRV_OPT_TRAIN_DATA_DIR);
    if (root[0]) {
        struct stat st;
        if (!realpath(root, real) || stat(real, &st) != 0 || !S_ISDIR(st.st_mode) ||
            srv_pathf(t->data_root, sizeof t->data_root, "%s", real) != 0) {
            srv_errf(err, errlen, "option --train-data-dir: '%s' is not a folder", root);
            goto fail;
        }
    }
    if (srv_pathf(t->cache_dir, sizeof t->cache_dir, "%s/embeddings", t->jobs_dir) != 0) {
        srv_errf(err, errlen, "the state dir's path is too long");
        goto fail;
    }
    const char *tm = srv_config_str(cfg, SRV_OPT_TEXT_MODEL);
    if (tm[0] &&
        (!realpath(tm, real) || srv_pathf(t->text_model, sizeof t->text_model, "%s", real) != 0))
        snprintf(t->text_model, sizeof t->text_model, "%.1000s", tm);
    const char *ck = srv_config_str(cfg, SRV_OPT_CHECKPOINT);
    if (!realpath(ck, real) || srv_pathf(t->checkpoint, sizeof t->checkpoint, "%s", real) != 0)
        snprintf(t->checkpoint, sizeof t->checkpoint, "%s", ck);
    find_trainer(t);
    uv_async_init(loop, &t->wake, on_wake);
    uv_timer_init(loop, &t->tick);
    t->wake.data = t->tick.data = t;
    recover(t);
    srv_tdb_job_prune(db, (int)srv_config_int(cfg, SRV_OPT_TRAIN_KEEP_JOBS), remove_job_dir, t);
    if (t->data_root[0])
        srv_log_info("train: jobs read data under %s and run %s (one at a time, queue of %lld)",
                     t->data_root, t->trainer,
                     (long long)srv_config_int(cfg, SRV_OPT_TRAIN_QUEUE_DEPTH));
    *out = t;
    return 0;
fail:
    srv_train_destroy(t);
    return -1;
}

void srv_train_start(srv_train *t)
{
    if (!t)
        return;
    pthread_mutex_lock(&t->mu);
    t->ready = 1;
    pthread_mutex_unlock(&t->mu);
    start_next(t);
}

void srv_train_shutdown(srv_train *t, int hard)
{
    if (!t)
        return;
    t->stopping = 1;
    t->hard |= hard;
    if (t->busy && !t->exited) {
        log_note(t, "tasamd is shutting down: %s", hard ? "SIGKILL" : "SIGTERM");
        srv_log_info("train: stopping the trainer of job %s (%s)", t->job.id,
                     hard ? "SIGKILL" : "SIGTERM");
        signal_trainer(t, hard ? SIGKILL : SIGTERM);
    }
}

int srv_train_busy(srv_train *t) { return t && t->busy; }

static void closed_cb(uv_handle_t *h) { (void)h; }

void srv_train_close(srv_train *t)
{
    if (!t)
        return;
    t->stopping = 1;
    if (t->busy && !t->activating) {
        /* the drain timed out with the trainer still there */
        signal_trainer(t, SIGKILL);
        set_error(t, "interrupted: tasamd shut down while the job ran; submit it again");
        t->job.state = SRV_TJ_FAILED;
        t->job.finished_ms = wall_ms();
        t->job.pid = 0;
        srv_tdb_job_update(t->db, &t->job);
        t->busy = 0;
    }
    for (int i = 0; i < PIPES; i++)
        close_pipe(&t->pipes[i]);
    if (t->proc_open && !uv_is_closing((uv_handle_t *)&t->proc))
        uv_close((uv_handle_t *)&t->proc, handle_closed);
    if (!uv_is_closing((uv_handle_t *)&t->wake))
        uv_close((uv_handle_t *)&t->wake, closed_cb);
    if (!uv_is_closing((uv_handle_t *)&t->tick))
        uv_close((uv_handle_t *)&t->tick, closed_cb);
}

void srv_train_destroy(srv_train *t)
{
    if (!t)
        return;
    if (t->log_fd >= 0)
        close(t->log_fd);
    free(t->pline);
    pthread_mutex_destroy(&t->mu);
    free(t);
}

/* ---- the admin routes ---- */

/* Contract: 0 when training is possible here; else -1 with *e (403 why). */
static int enabled(srv_train *t, srv_error *e)
{
    if (!t || !t->sw)
        return srv_fail(e, 403, "",
                        "training is off: tasamd runs without --hypernet (training starts from "
                        "the active hypernetwork)");
    if (!t->data_root[0])
        return srv_fail(e, 403, "",
                        "training is off: start tasamd with --train-data-dir DIR (the folder "
                        "that jobs' data and val paths are relative to)");
    return 0;
}

int srv_train_submit(srv_train *t, const char *body, size_t len, json_t **job, srv_error *e)
{
    srv_train_req req;
    srv_tjob j;
    char abs[PATH_MAX];
    uint8_t rnd[SRV_TJOB_ID_LEN / 2];
    if (enabled(t, e) || srv_train_req_parse(body, len, &req, e))
        return -1;
    if (srv_train_resolve(t->data_root, req.data, "data", abs, sizeof abs, e) != 0 ||
        (req.val[0] && srv_train_resolve(t->data_root, req.val, "val", abs, sizeof abs, e) != 0))
        return -1;
    srv_tjob_init(&j);
    if (getrandom(rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd)
        return srv_fail(e, 503, "", "no randomness for a job id; retry later");
    for (size_t i = 0; i < sizeof rnd; i++)
        snprintf(j.id + 2 * i, 3, "%02x", rnd[i]);
    if (srv_train_req_json(&req, j.params, sizeof j.params) < 0)
        return srv_fail(e, 400, "", "the request is too large to keep");
    if (srv_pathf(j.dir, sizeof j.dir, "%s/%s", t->jobs_dir, j.id) != 0)
        return srv_fail(e, 500, "", "the job folder's path is too long");
    j.created_ms = wall_ms();
    j.steps = req.steps;
    int rc = srv_tdb_job_insert(t->db, &j, (int)srv_config_int(t->cfg, SRV_OPT_TRAIN_QUEUE_DEPTH));
    if (rc == 1)
        return srv_fail(e, 429, "",
                        "%lld training jobs are queued already (train-queue-depth); retry once "
                        "one has run",
                        (long long)srv_config_int(t->cfg, SRV_OPT_TRAIN_QUEUE_DEPTH));
    if (rc != 0)
        return srv_fail(e, 500, "", "recording the job failed (see the log)");
    srv_log_info("train: job %s queued: %s", j.id, j.params);
    uv_async_send(&t->wake);
    *job = job_json(&j);
    return *job ? 0 : srv_fail(e, 503, "", "out of memory");
}

/* Contract: the row of `id` with the loop's in-memory cancel request
 * applied. 0, or -1 with *e (400 malformed id, 404 absent). */
static int load_job(srv_train *t, const char *id, srv_tjob *j, srv_error *e)
{
    if (!srv_train_id_valid(id))
        return srv_fail(e, 400, "id", "a job id is 16 lowercase hex digits");
    int rc = srv_tdb_job_get(t->db, id, j);
    if (rc == 1)
        return srv_fail(e, 404, "id", "no training job %s", id);
    if (rc != 0)
        return srv_fail(e, 500, "", "reading the job failed (see the log)");
    pthread_mutex_lock(&t->mu);
    if (!strcmp(t->cancel_id, id))
        j->cancel = 1;
    pthread_mutex_unlock(&t->mu);
    return 0;
}

int srv_train_get(srv_train *t, const char *id, json_t **job, srv_error *e)
{
    srv_tjob *j = malloc(sizeof *j);
    if (!t)
        return free(j), srv_fail(e, 404, "id", "no training job %s (training is off)", id);
    if (!j)
        return srv_fail(e, 503, "", "out of memory");
    int rc = load_job(t, id, j, e);
    if (rc == 0 && !(*job = job_json(j)))
        rc = srv_fail(e, 503, "", "out of memory");
    free(j);
    return rc;
}

int srv_train_list(srv_train *t, const char *state, int limit, int64_t before, json_t **out,
                   srv_error *e)
{
    int st = -1, n = 0;
    if (state && (st = srv_tjob_state_parse(state)) < 0)
        return srv_fail(e, 400, "state",
                        "state must be queued, running, succeeded, failed or cancelled");
    if (limit < 1 || limit > LIST_MAX)
        return srv_fail(e, 400, "limit", "limit must be in [1, %d]", LIST_MAX);
    json_t *arr = json_array();
    if (!t) {
        *out = json_pack("{s:o,s:n}", "jobs", arr, "next_before");
        return 0;
    }
    srv_tjob *rows = malloc(sizeof *rows * (size_t)(limit + 1));
    if (!rows || !arr) {
        free(rows);
        json_decref(arr);
        return srv_fail(e, 503, "", "out of memory");
    }
    if (srv_tdb_job_list(t->db, st, before, rows, limit + 1, &n) != 0) {
        free(rows);
        json_decref(arr);
        return srv_fail(e, 500, "", "listing the jobs failed (see the log)");
    }
    int more = n > limit;
    if (more)
        n = limit;
    for (int i = 0; i < n; i++)
        json_array_append_new(arr, job_json(&rows[i]));
    *out = json_pack("{s:o,s:o}", "jobs", arr, "next_before",
                     more ? json_integer(rows[n - 1].seq) : json_null());
    free(rows);
    return *out ? 0 : srv_fail(e, 503, "", "out of memory");
}

int srv_train_cancel(srv_train *t, const char *id, json_t **job, int *status, srv_error *e)
{
    srv_tjob *j = malloc(sizeof *j);
    int rc;
    if (!t)
        return free(j), srv_fail(e, 404, "id", "no training job %s (training is off)", id);
    if (!j)
        return srv_fail(e, 503, "", "out of memory");
    if ((rc = load_job(t, id, j, e)) != 0)
        goto out;
    if (j->state == SRV_TJ_QUEUED &&
        srv_tdb_job_set_state_if(t->db, id, SRV_TJ_QUEUED, SRV_TJ_CANCELLED, wall_ms(), NULL) ==
            0) {
        srv_log_info("train: job %s cancelled before it ran", id);
        pthread_mutex_lock(&t->mu);
        t->finished[SRV_TJ_CANCELLED]++;
        pthread_mutex_unlock(&t->mu);
        *status = 200;
        rc = load_job(t, id, j, e);
        goto reply;
    }
    if ((rc = load_job(t, id, j, e)) != 0) /* it may have started meanwhile */
        goto out;
    if (j->state != SRV_TJ_RUNNING) {
        rc = srv_fail(e, 409, "", "job %s has %s already; nothing to cancel", id,
                      j->state == SRV_TJ_SUCCEEDED   ? "succeeded"
                      : j->state == SRV_TJ_CANCELLED ? "been cancelled"
                                                     : "failed");
        goto out;
    }
    pthread_mutex_lock(&t->mu);
    int too_late = !strcmp(t->cur_id, id) && t->cur_activating;
    if (!too_late)
        snprintf(t->cancel_id, sizeof t->cancel_id, "%s", id);
    pthread_mutex_unlock(&t->mu);
    if (too_late) {
        rc =
            srv_fail(e, 409, "", "job %s has finished training; its result is being activated", id);
        goto out;
    }
    uv_async_send(&t->wake);
    j->cancel = 1;
    *status = 202;
reply:
    if (rc == 0 && !(*job = job_json(j)))
        rc = srv_fail(e, 503, "", "out of memory");
out:
    free(j);
    return rc;
}

int srv_train_log(srv_train *t, const char *id, int lines, char **text, size_t *len, srv_error *e)
{
    srv_tjob *j = malloc(sizeof *j);
    char path[SRV_TJOB_PATH + 16];
    int rc;
    if (!t)
        return free(j), srv_fail(e, 404, "id", "no training job %s (training is off)", id);
    if (!j)
        return srv_fail(e, 503, "", "out of memory");
    if ((rc = load_job(t, id, j, e)) == 0) {
        if (srv_pathf(path, sizeof path, "%s/train.log", j->dir) != 0 ||
            !(*text = file_tail(path, lines, len)))
            rc = srv_fail(e, 404, "id",
                          j->state == SRV_TJ_QUEUED ? "job %s has not started: no log yet"
                                                    : "the log of job %s is gone",
                          id);
    }
    free(j);
    return rc;
}

void srv_train_metrics(srv_train *t, char **text, size_t *len)
{
    int64_t counts[SRV_TJ_STATES] = {0};
    uint64_t fin[SRV_TJ_STATES];
    int64_t step, steps;
    double loss, sps, eta;
    int running;
    if (!t)
        return;
    srv_tdb_job_counts(t->db, counts);
    pthread_mutex_lock(&t->mu);
    memcpy(fin, t->finished, sizeof fin);
    running = t->cur_id[0] != 0;
    step = t->cur_step;
    steps = t->cur_steps;
    loss = t->cur_loss;
    sps = t->cur_sps;
    eta = t->cur_eta;
    pthread_mutex_unlock(&t->mu);
    srv_metrics_appendf(text, len,
                        "# HELP tasam_train_jobs Training jobs in train.db, by state.\n"
                        "# TYPE tasam_train_jobs gauge\n");
    for (int s = 0; s < SRV_TJ_STATES; s++)
        srv_metrics_appendf(text, len, "tasam_train_jobs{state=\"%s\"} %lld\n",
                            srv_tjob_state_name((srv_tjob_state)s), (long long)counts[s]);
    srv_metrics_appendf(text, len,
                        "# HELP tasam_train_jobs_finished_total Training jobs that ended since "
                        "start, by final state.\n"
                        "# TYPE tasam_train_jobs_finished_total counter\n");
    for (int s = SRV_TJ_SUCCEEDED; s < SRV_TJ_STATES; s++)
        srv_metrics_appendf(text, len, "tasam_train_jobs_finished_total{state=\"%s\"} %llu\n",
                            srv_tjob_state_name((srv_tjob_state)s), (unsigned long long)fin[s]);
    srv_metrics_appendf(
        text, len,
        "# HELP tasam_train_running 1 while a trainer runs (or its result is being activated).\n"
        "# TYPE tasam_train_running gauge\ntasam_train_running %d\n"
        "# HELP tasam_train_step Steps done by the running job (0 when none runs).\n"
        "# TYPE tasam_train_step gauge\ntasam_train_step %lld\n"
        "# HELP tasam_train_steps Steps the running job was asked for (0 when none runs).\n"
        "# TYPE tasam_train_steps gauge\ntasam_train_steps %lld\n",
        running, running ? (long long)step : 0LL, running ? (long long)steps : 0LL);
    if (running && isfinite(loss))
        srv_metrics_appendf(text, len,
                            "# HELP tasam_train_loss The running job's latest loss.\n"
                            "# TYPE tasam_train_loss gauge\ntasam_train_loss %.6g\n",
                            loss);
    if (running && isfinite(sps))
        srv_metrics_appendf(text, len,
                            "# HELP tasam_train_samples_per_second The running job's throughput.\n"
                            "# TYPE tasam_train_samples_per_second gauge\n"
                            "tasam_train_samples_per_second %.6g\n",
                            sps);
    if (running && isfinite(eta))
        srv_metrics_appendf(text, len,
                            "# HELP tasam_train_eta_seconds The running job's estimated time "
                            "left.\n"
                            "# TYPE tasam_train_eta_seconds gauge\ntasam_train_eta_seconds %.6g\n",
                            eta);
}
