/*
 * server/scheduler.c: the bounded job queue, deadlines and stop.
 */
#include "server/scheduler.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "server/log.h"

double srv_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

const char *srv_adapter_source_name(srv_adapter_source s)
{
    return s == SRV_AD_GENERATED      ? "generated"
           : s == SRV_AD_CACHE_MEMORY ? "cache-memory"
           : s == SRV_AD_CACHE_DISK   ? "cache-disk"
                                      : NULL;
}

void srv_job_free_results(srv_job *j)
{
    free(j->masks);
    free(j->iou);
    free(j->stability);
    j->masks = NULL;
    j->iou = j->stability = NULL;
    j->n_masks = 0;
    eng_amg_result_free(&j->amg);
}

int srv_sched_init(srv_sched *s, srv_config *cfg, srv_cache *cache, srv_metrics *m,
                   void (*on_state)(void *), void *on_state_arg)
{
    pthread_condattr_t ca;
    memset(s, 0, sizeof *s);
    s->cfg = cfg;
    s->cache = cache;
    s->metrics = m;
    s->on_state = on_state;
    s->on_state_arg = on_state_arg;
    pthread_mutex_init(&s->mu, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s->cv, &ca);
    pthread_condattr_destroy(&ca);
    return 0;
}

int srv_sched_start(srv_sched *s)
{
    int rc = pthread_create(&s->thread, NULL, srv__worker_main, s);
    if (rc != 0) {
        srv_log_error("scheduler: cannot start the worker thread: %s", strerror(rc));
        return -1;
    }
    s->started = 1;
    return 0;
}

int srv_sched_is_ready(srv_sched *s) { return __atomic_load_n(&s->ready, __ATOMIC_ACQUIRE); }

static void set_depth_gauge(srv_sched *s)
{
    srv_metrics_gauge_set(&s->metrics->queue_depth, s->depth);
}

int srv_sched_submit(srv_sched *s, srv_job *j, srv_error *e)
{
    int stopping, full = 0, ready;
    int64_t cap = srv_config_int(s->cfg, SRV_OPT_QUEUE_DEPTH);
    pthread_mutex_lock(&s->mu);
    stopping = s->stopping;
    ready = s->ready;
    if (!stopping && ready && !(full = s->depth >= cap)) {
        j->next = NULL;
        j->t_submit = srv_now();
        if (s->tail)
            s->tail->next = j;
        else
            s->head = j;
        s->tail = j;
        s->depth++;
        set_depth_gauge(s);
        pthread_cond_broadcast(&s->cv);
    }
    pthread_mutex_unlock(&s->mu);
    if (stopping || !ready)
        return srv_fail(e, 503, "", "the server is not accepting work (loading or shutting down)");
    if (full) {
        srv_metrics_add(&s->metrics->rejected_queue_full, 1);
        return srv_fail(e, 429, "", "the queue is full (%lld jobs); retry later", (long long)cap);
    }
    return 0;
}

/* Contract: under mu; unlinks j whose predecessor is prev (NULL: head). */
static void unlink_job(srv_sched *s, srv_job *prev, srv_job *j)
{
    if (prev)
        prev->next = j->next;
    else
        s->head = j->next;
    if (s->tail == j)
        s->tail = prev;
    j->next = NULL;
    s->depth--;
    set_depth_gauge(s);
}

void srv_sched_expire(srv_sched *s)
{
    srv_job *expired = NULL, *prev = NULL, *j, *next;
    double now = srv_now();
    pthread_mutex_lock(&s->mu);
    for (j = s->head; j; j = next) {
        next = j->next;
        if (j->deadline > 0 && now >= j->deadline) {
            unlink_job(s, prev, j);
            j->next = expired;
            expired = j;
        } else {
            prev = j;
        }
    }
    pthread_mutex_unlock(&s->mu);
    for (j = expired; j; j = next) {
        next = j->next;
        j->status = 504;
        srv_fail(&j->err, 504, "", "the request waited %.0f ms in the queue, past its deadline",
                 (now - j->t_submit) * 1e3);
        srv_metrics_add(&s->metrics->deadline_expired, 1);
        j->done(j, j->done_arg);
    }
}

srv_job *srv__sched_next(srv_sched *s)
{
    srv_job *j = NULL;
    pthread_mutex_lock(&s->mu);
    while (!s->head && !s->stopping)
        pthread_cond_wait(&s->cv, &s->mu);
    if (s->head && (!s->stopping || s->drain)) {
        j = s->head;
        unlink_job(s, NULL, j);
        s->busy++;
    }
    pthread_mutex_unlock(&s->mu);
    return j;
}

void srv__sched_gather(srv_sched *s, char (*shas)[65], int *n_shas, int max, srv_job **out,
                       int *n_out, int cap, double until)
{
    pthread_mutex_lock(&s->mu);
    for (;;) {
        srv_job *prev = NULL, *j, *next;
        for (j = s->head; j && *n_out < cap; j = next) {
            int take = 0, k, w, h;
            next = j->next;
            if (!j->raw && !j->resized) {
                prev = j;
                continue;
            }
            for (k = 0; k < *n_shas; k++)
                if (strcmp(shas[k], j->sha) == 0)
                    break;
            if (k < *n_shas) {
                take = 1;
            } else if (*n_shas < max && srv_cache_peek(s->cache, j->sha, &w, &h) != 0) {
                memcpy(shas[*n_shas], j->sha, 65);
                (*n_shas)++;
                take = 1;
            }
            if (take) {
                unlink_job(s, prev, j);
                s->busy++;
                out[(*n_out)++] = j;
            } else {
                prev = j;
            }
        }
        if (*n_shas >= max || *n_out >= cap || s->stopping || srv_now() >= until)
            break;
        struct timespec ts;
        double t = until;
        ts.tv_sec = (time_t)t;
        ts.tv_nsec = (long)((t - (double)ts.tv_sec) * 1e9);
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&s->cv, &s->mu, &ts);
    }
    pthread_mutex_unlock(&s->mu);
}

void srv__sched_finish(srv_sched *s, srv_job *j)
{
    j->done(j, j->done_arg);
    pthread_mutex_lock(&s->mu);
    s->busy--;
    pthread_mutex_unlock(&s->mu);
}

void srv_sched_stop(srv_sched *s, int drain)
{
    srv_job *list = NULL, *j, *next;
    pthread_mutex_lock(&s->mu);
    s->stopping = 1;
    s->drain = drain;
    if (!drain) {
        list = s->head;
        s->head = s->tail = NULL;
        s->depth = 0;
        set_depth_gauge(s);
    }
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    for (j = list; j; j = next) {
        next = j->next;
        j->status = 503;
        srv_fail(&j->err, 503, "", "the server is shutting down");
        j->done(j, j->done_arg);
    }
}

int srv_sched_pending(srv_sched *s)
{
    int n;
    pthread_mutex_lock(&s->mu);
    n = s->depth + s->busy;
    pthread_mutex_unlock(&s->mu);
    return n;
}

void srv_sched_destroy(srv_sched *s)
{
    if (s->started) {
        srv_sched_stop(s, 0);
        pthread_join(s->thread, NULL);
        s->started = 0;
    }
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
}
