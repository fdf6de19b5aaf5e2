/*
 * server/train_jobs.h: training jobs: the queue, the trainer process and
 * what becomes of its result.
 *
 * POST /admin/train validates the request on the HTTP thread (fields,
 * ranges, dataset paths confined to --train-data-dir), writes a `queued`
 * row to STATE_DIR/train.db (train-queue-depth bounds the queue: 429) and
 * wakes the control loop. The loop runs one job at a time: it spawns
 * `tasam-train run` with uv_spawn (own session, nice train-nice, at most
 * train-threads threads, train-device; the environment without TASAMD_*),
 * reads its progress events (one JSON object a line) from a pipe on fd 3,
 * copies its stdout and stderr to STATE_DIR/train/<id>/train.log (at most
 * train-log-bytes) keeping the last lines in memory, and updates the row as
 * it goes (a few times a second at most). The output goes to
 * STATE_DIR/train/<id>/hypernet.safetensors.
 *
 * How a job ends:
 *   - "done" with published true and exit 0: the result is activated
 *     (srv_hnswap_activate on libuv's thread pool: load beside, probe, swap,
 *     publish) and the job is `succeeded` with its `hypernetwork`, or
 *     `failed` when the daemon refuses the file;
 *   - "done" with published false (the publish gate): `succeeded`, not
 *     published, with the trainer's reason;
 *   - a cancel (DELETE): SIGTERM, SIGKILL after train-stop-timeout-ms;
 *     `cancelled`, nothing published;
 *   - "error", a non-zero exit, a signal (kill -9, the OOM killer), a
 *     malformed or oversized progress line (the trainer is killed), silence
 *     longer than train-stall-timeout-ms after the first step: `failed`,
 *     with the exit status or signal and the trainer's last log lines;
 *   - daemon shutdown: the trainer gets SIGTERM (SIGKILL after the timeout);
 *     `failed` ("interrupted"). Queued jobs stay queued and run after the
 *     restart; a row still `running` at start (the daemon crashed) becomes
 *     `failed` with why, and a trainer left behind is killed.
 *
 * Threads: the HTTP-facing functions (submit, get, list, cancel, log,
 * metrics) may be called from any thread; everything else runs on the
 * control loop.
 */
#ifndef TASAM_SERVER_TRAIN_JOBS_H
#define TASAM_SERVER_TRAIN_JOBS_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <uv.h>

#include "server/config.h"
#include "server/error.h"
#include "server/hypernet_swap.h"
#include "server/metrics.h"
#include "server/train_db.h"

typedef struct srv_train srv_train;

/*
 * Set up on `loop`: the jobs folder, recovery of jobs a crash left
 * `running`, and pruning. Jobs start once srv_train_start() is called (the
 * model and hypernetwork are loaded). `sw` may be NULL (no hypernetwork:
 * training answers 403). Returns 0 or -1 with a message in err.
 */
int srv_train_create(srv_train **out, uv_loop_t *loop, srv_config *cfg, srv_tdb *db, srv_hnswap *sw,
                     const char *state_dir, char *err, size_t errlen);

/* Loop: the worker is ready; run queued jobs. */
void srv_train_start(srv_train *t);

/* Loop: the daemon is stopping: no job starts any more and a running
 * trainer gets SIGTERM (hard: SIGKILL now). */
void srv_train_shutdown(srv_train *t, int hard);

/* Loop: 1 while a trainer runs or its result is being activated. */
int srv_train_busy(srv_train *t);

/* Loop: close the handles (a job still running is recorded as
 * interrupted). The loop must run once more for the close callbacks. */
void srv_train_close(srv_train *t);

/* After the loop ended. NULL ok. */
void srv_train_destroy(srv_train *t);

/* ---- the admin routes (any thread) ---- */

/* POST /admin/train: 0 with *job (202's body), or -1 with *e. */
int srv_train_submit(srv_train *t, const char *body, size_t len, json_t **job, srv_error *e);

/* GET /admin/train/{id}. */
int srv_train_get(srv_train *t, const char *id, json_t **job, srv_error *e);

/* GET /admin/train?state=&limit=&before=: {"jobs":[...], "next_before": seq|null}. `state`
 * NULL for any; limit 1..500; before 0 for the newest. */
int srv_train_list(srv_train *t, const char *state, int limit, int64_t before, json_t **out,
                   srv_error *e);

/* DELETE /admin/train/{id}: 0 with *job and *status (200 cancelled at once,
 * 202 stopping), or -1 with *e (404, 409 already finished). */
int srv_train_cancel(srv_train *t, const char *id, json_t **job, int *status, srv_error *e);

/* GET /admin/train/{id}/log: the last `lines` lines of its log (malloc'd
 * text). */
int srv_train_log(srv_train *t, const char *id, int lines, char **text, size_t *len, srv_error *e);

/* Append the training metrics (Prometheus lines) to *text. */
void srv_train_metrics(srv_train *t, char **text, size_t *len);

/* 1 when s is a well-formed job id (16 lowercase hex digits). */
int srv_train_id_valid(const char *s);

#endif
