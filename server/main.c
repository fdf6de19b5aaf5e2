/*
 * server/main.c: tasamd, the Segment Anything HTTP daemon.
 *
 * Startup: configuration (exit 2 on an invalid option), the embedding cache
 * (a corrupt database is moved aside), the HTTP server (so /healthz answers
 * at once), then the inference worker, which loads the model in the
 * background (/readyz is 503 until it is loaded; a failed load exits 1).
 *
 * A libuv loop on the main thread owns control: SIGTERM/SIGINT stop
 * accepting, stop a running trainer, drain in-flight requests for up to
 * shutdown-timeout-ms, close the databases and exit 0 (a second signal
 * skips the drain); SIGHUP reloads the runtime-mutable options from
 * --config and the environment and re-reads the hypernetwork file; timers
 * expire queued jobs past their deadline and maintain the cache. With
 * --hypernet the loop also runs the training jobs (train_jobs.c: the
 * trainer is a child process spawned with uv_spawn) and watches the
 * hypernetwork file for new versions (hypernet_swap.c).
 */
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <uv.h>

#include "server/cache.h"
#include "server/config.h"
#include "server/fileio.h"
#include "server/http.h"
#include "server/hypernet_swap.h"
#include "server/log.h"
#include "server/metrics.h"
#include "server/scheduler.h"
#include "server/server.h"
#include "server/train_db.h"
#include "server/train_jobs.h"

/* Everything the control loop touches. */
typedef struct daemon_state {
    uv_loop_t loop;          /* the control loop */
    uv_signal_t sig_term;    /* SIGTERM */
    uv_signal_t sig_int;     /* SIGINT */
    uv_signal_t sig_hup;     /* SIGHUP */
    uv_timer_t expire_timer; /* deadline sweeps */
    uv_timer_t maint_timer;  /* cache maintenance */
    uv_timer_t drain_timer;  /* polls the drain during shutdown */
    uv_async_t worker_async; /* the worker's state changed */
    srv_config cfg;          /* configuration */
    srv_metrics metrics;     /* counters */
    srv_cache *cache;        /* embedding cache */
    srv_sched sched;         /* queue + worker */
    srv_http *http;          /* HTTP server */
    srv_tdb *tdb;            /* training jobs and hypernetwork history (NULL without --hypernet) */
    srv_hnswap *hnswap;      /* hypernetwork activation, history, file watch (idem) */
    srv_train *train;        /* training jobs (idem) */
    char hn_start[1024];     /* the hypernetwork file the worker loads first */
    srv_server srv;          /* the context handed to the HTTP layer */
    int shutting_down;       /* 1 once a stop began */
    double drain_deadline;   /* srv_now() limit of the drain */
    int exit_code;           /* process exit status */
    int announced_ready;     /* the ready log line was written */
} daemon_state;

static void close_cb(uv_handle_t *h) { (void)h; }

static void close_all(daemon_state *ds)
{
    uv_handle_t *hs[] = {(uv_handle_t *)&ds->sig_term,    (uv_handle_t *)&ds->sig_int,
                         (uv_handle_t *)&ds->sig_hup,     (uv_handle_t *)&ds->expire_timer,
                         (uv_handle_t *)&ds->maint_timer, (uv_handle_t *)&ds->drain_timer,
                         (uv_handle_t *)&ds->worker_async};
    for (size_t i = 0; i < sizeof hs / sizeof hs[0]; i++)
        if (!uv_is_closing(hs[i]))
            uv_close(hs[i], close_cb);
    srv_train_close(ds->train);
    srv_hnswap_watch_stop(ds->hnswap);
}

static void drain_tick(uv_timer_t *t)
{
    daemon_state *ds = t->data;
    int pending = srv_sched_pending(&ds->sched);
    int open = srv_http_open_connections(ds->http);
    if (pending == 0 && open == 0 && !srv_train_busy(ds->train)) {
        srv_log_info("shutdown: drained");
        close_all(ds);
        return;
    }
    if (srv_now() >= ds->drain_deadline) {
        srv_log_warn("shutdown: %d jobs and %d requests still in flight after the timeout%s; "
                     "failing the queued ones with 503",
                     pending, open,
                     srv_train_busy(ds->train) ? " and a trainer still running" : "");
        srv_sched_stop(&ds->sched, 0);
        close_all(ds);
    }
}

/* Contract: begins a stop; drain = 0 skips waiting for in-flight work. */
static void begin_shutdown(daemon_state *ds, int drain, int exit_code)
{
    if (ds->shutting_down) {
        if (!drain) {
            srv_log_warn("shutdown: second signal, stopping now");
            srv_train_shutdown(ds->train, 1);
            srv_sched_stop(&ds->sched, 0);
            close_all(ds);
        }
        return;
    }
    ds->shutting_down = 1;
    srv_train_shutdown(ds->train, !drain);
    ds->exit_code = exit_code;
    __atomic_store_n(&ds->srv.draining, 1, __ATOMIC_RELAXED);
    srv_http_quiesce(ds->http);
    srv_sched_stop(&ds->sched, drain);
    ds->drain_deadline =
        srv_now() + (double)srv_config_int(&ds->cfg, SRV_OPT_SHUTDOWN_TIMEOUT_MS) * 1e-3;
    srv_log_info("shutdown: no longer accepting connections; draining for up to %lld ms",
                 (long long)srv_config_int(&ds->cfg, SRV_OPT_SHUTDOWN_TIMEOUT_MS));
    uv_timer_start(&ds->drain_timer, drain_tick, 0, 20);
}

static void on_signal(uv_signal_t *h, int signum)
{
    daemon_state *ds = h->data;
    if (signum == SIGHUP) {
        char err[512];
        srv_log_info("SIGHUP: reloading the configuration");
        if (srv_config_reload(&ds->cfg, err, sizeof err) != 0) {
            srv_log_error("config reload failed, keeping the old values: %s", err);
            return;
        }
        srv_cache_set_budget(ds->cache, srv_config_int(&ds->cfg, SRV_OPT_CACHE_BYTES));
        srv_cache_set_adapter_budget(ds->cache,
                                     srv_config_int(&ds->cfg, SRV_OPT_ADAPTER_CACHE_BYTES));
        srv_cache_retry(ds->cache);
        srv_cache_maintain(ds->cache);
        if (ds->hnswap && srv_sched_is_ready(&ds->sched)) {
            srv_log_info("SIGHUP: re-reading %s", srv_config_str(&ds->cfg, SRV_OPT_HYPERNET));
            srv_hnswap_watch_kick(ds->hnswap);
        }
        return;
    }
    srv_log_info("%s: shutting down", signum == SIGTERM ? "SIGTERM" : "SIGINT");
    begin_shutdown(ds, 1, ds->exit_code);
}

static void on_expire(uv_timer_t *t)
{
    daemon_state *ds = t->data;
    srv_sched_expire(&ds->sched);
    srv_http_sweep(ds->http);
}

static void on_maintain(uv_timer_t *t)
{
    daemon_state *ds = t->data;
    srv_cache_maintain(ds->cache);
}

/* Worker thread -> loop: re-read the scheduler's state. */
static void worker_state_cb(void *arg)
{
    daemon_state *ds = arg;
    uv_async_send(&ds->worker_async);
}

static void on_worker_state(uv_async_t *a)
{
    daemon_state *ds = a->data;
    if (ds->sched.failed && !ds->shutting_down) {
        srv_log_error("cannot serve: the model failed to load: %s", ds->sched.load_error);
        begin_shutdown(ds, 0, 1);
    } else if (srv_sched_is_ready(&ds->sched) && !ds->announced_ready) {
        ds->announced_ready = 1;
        srv_log_info("ready: model %s on %s", ds->sched.info.model_id, ds->sched.info.device);
        if (ds->hnswap && !ds->shutting_down)
            srv_hnswap_watch_start(ds->hnswap, &ds->loop,
                                   (int)srv_config_int(&ds->cfg, SRV_OPT_HYPERNET_POLL_MS));
        if (!ds->shutting_down)
            srv_train_start(ds->train);
    }
}

/* Contract: writes "PORT\n" to path atomically. */
static int write_port_file(const char *path, int port)
{
    char text[16], err[256];
    int n = snprintf(text, sizeof text, "%d\n", port);
    return srv_file_write_atomic(path, text, (size_t)n, err, sizeof err);
}

/* Contract: with --hypernet, opens train.db and the hot-swap controller and
 * finds the version to load first. 0, or -1 with err set. */
static int open_hypernet(daemon_state *ds, char *err, size_t errlen)
{
    const char *file = srv_config_str(&ds->cfg, SRV_OPT_HYPERNET);
    const char *state = srv_config_str(&ds->cfg, SRV_OPT_STATE_DIR);
    if (!file[0])
        return 0;
    if (srv_tdb_open(&ds->tdb, state, err, errlen) != 0)
        return -1;
    if (srv_hnswap_create(&ds->hnswap, state, file,
                          (int)srv_config_int(&ds->cfg, SRV_OPT_HYPERNET_KEEP), ds->tdb, &ds->sched,
                          &ds->metrics, ds->hn_start, sizeof ds->hn_start, err, errlen) != 0)
        return -1;
    ds->sched.hn_path = ds->hn_start;
    ds->srv.hnswap = ds->hnswap;
    return 0;
}

int main(int argc, char **argv)
{
    static daemon_state ds;
    char err[1024];
    int port = 0, rc;

    rc = srv_config_load(&ds.cfg, argc, argv, stdout, err, sizeof err);
    if (rc == 1)
        return 0;
    if (rc != 0) {
        fprintf(stderr, "tasamd: %s\n", err);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    /* Buffers of 1 MiB and up (request bodies, masks, responses,
     * embeddings) are mapped and unmapped on their own, so their memory
     * goes back to the system when they are freed; glibc's default would
     * raise this threshold after the first large free and keep later ones
     * in the heap. */
    mallopt(M_MMAP_THRESHOLD, 1 << 20);
    srv_metrics_init(&ds.metrics);
    ds.srv.cfg = &ds.cfg;
    ds.srv.metrics = &ds.metrics;
    ds.srv.sched = &ds.sched;
    ds.srv.t_start = srv_now();

    if (srv_cache_open(&ds.cache, srv_config_str(&ds.cfg, SRV_OPT_STATE_DIR), ENG_SAM_EMB_FLOATS,
                       srv_config_int(&ds.cfg, SRV_OPT_CACHE_BYTES),
                       (int)srv_config_int(&ds.cfg, SRV_OPT_GPU_CACHE_SLOTS),
                       (int)srv_config_int(&ds.cfg, SRV_OPT_CACHE_CORRUPT_KEEP), &ds.metrics, err,
                       sizeof err) != 0) {
        srv_log_error("%s", err);
        srv_config_free(&ds.cfg);
        return 1;
    }
    ds.srv.cache = ds.cache;
    srv_cache_set_adapter_budget(ds.cache, srv_config_int(&ds.cfg, SRV_OPT_ADAPTER_CACHE_BYTES));
    srv_cache_maintain(ds.cache);
    srv_sched_init(&ds.sched, &ds.cfg, ds.cache, &ds.metrics, worker_state_cb, &ds);
    if (open_hypernet(&ds, err, sizeof err) != 0) {
        srv_log_error("%s", err);
        srv_hnswap_destroy(ds.hnswap);
        srv_tdb_close(ds.tdb);
        srv_sched_destroy(&ds.sched);
        srv_cache_close(ds.cache);
        srv_config_free(&ds.cfg);
        return 1;
    }

    uv_loop_init(&ds.loop);
    uv_signal_init(&ds.loop, &ds.sig_term);
    uv_signal_init(&ds.loop, &ds.sig_int);
    uv_signal_init(&ds.loop, &ds.sig_hup);
    uv_timer_init(&ds.loop, &ds.expire_timer);
    uv_timer_init(&ds.loop, &ds.maint_timer);
    uv_timer_init(&ds.loop, &ds.drain_timer);
    uv_async_init(&ds.loop, &ds.worker_async, on_worker_state);
    ds.sig_term.data = ds.sig_int.data = ds.sig_hup.data = &ds;
    ds.expire_timer.data = ds.maint_timer.data = ds.drain_timer.data = &ds;
    ds.worker_async.data = &ds;
    uv_signal_start(&ds.sig_term, on_signal, SIGTERM);
    uv_signal_start(&ds.sig_int, on_signal, SIGINT);
    uv_signal_start(&ds.sig_hup, on_signal, SIGHUP);
    if (ds.hnswap &&
        srv_train_create(&ds.train, &ds.loop, &ds.cfg, ds.tdb, ds.hnswap,
                         srv_config_str(&ds.cfg, SRV_OPT_STATE_DIR), err, sizeof err) != 0) {
        srv_log_error("%s", err);
        ds.exit_code = 1;
        close_all(&ds);
        uv_run(&ds.loop, UV_RUN_DEFAULT);
        goto out;
    }
    ds.srv.train = ds.train;

    if (srv_http_start(&ds.http, &ds.srv, srv_config_str(&ds.cfg, SRV_OPT_LISTEN), &port, err,
                       sizeof err) != 0) {
        srv_log_error("%s", err);
        ds.exit_code = 1;
        close_all(&ds);
        uv_run(&ds.loop, UV_RUN_DEFAULT);
        goto out;
    }
    srv_log_info("tasamd %s listening on %s (port %d); state in %s", TASAMD_VERSION_STRING,
                 srv_config_str(&ds.cfg, SRV_OPT_LISTEN), port,
                 srv_config_str(&ds.cfg, SRV_OPT_STATE_DIR));
    if (srv_config_str(&ds.cfg, SRV_OPT_PORT_FILE)[0] &&
        write_port_file(srv_config_str(&ds.cfg, SRV_OPT_PORT_FILE), port) != 0)
        srv_log_warn("cannot write the port file %s", srv_config_str(&ds.cfg, SRV_OPT_PORT_FILE));
    if (srv_sched_start(&ds.sched) != 0) {
        ds.exit_code = 1;
        begin_shutdown(&ds, 0, 1);
    }
    uv_timer_start(&ds.expire_timer, on_expire, 50, 50);
    uv_timer_start(&ds.maint_timer, on_maintain, 10000, 10000);
    uv_run(&ds.loop, UV_RUN_DEFAULT);

out:
    /* The worker finishes its current batch and completes (resumes) every
     * job before the HTTP server goes away. */
    srv_sched_destroy(&ds.sched);
    srv_http_stop(ds.http);
    srv_train_destroy(ds.train);
    srv_hnswap_destroy(ds.hnswap);
    srv_tdb_close(ds.tdb);
    srv_cache_close(ds.cache);
    uv_loop_close(&ds.loop);
    srv_log_info("tasamd stopped (exit %d)", ds.exit_code);
    srv_config_free(&ds.cfg);
    return ds.exit_code;
}
