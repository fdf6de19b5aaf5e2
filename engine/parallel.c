/* engine/parallel.c: the CPU worker pool (see parallel.h). */
#include "parallel.h"

#include <pthread.h>
#include <unistd.h>

#define ENG_POOL_MAX 64

static struct {
    pthread_once_t once;
    pthread_mutex_t call_lock; /* one parallel_for at a time */
    pthread_mutex_t mu;
    pthread_cond_t work_cv, done_cv;
    int nthreads;             /* workers + the caller */
    unsigned long generation; /* bumped per job */
    int pending;              /* workers still running the current job */
    eng_range_fn fn;          /* one of fn / task is set per job */
    eng_task_fn task;
    void *arg;
    int64_t n;
} eng__pool = {.once = PTHREAD_ONCE_INIT,
               .call_lock = PTHREAD_MUTEX_INITIALIZER,
               .mu = PTHREAD_MUTEX_INITIALIZER,
               .work_cv = PTHREAD_COND_INITIALIZER,
               .done_cv = PTHREAD_COND_INITIALIZER};

static int eng__want_threads;

static void eng__run_chunk(int idx)
{
    int64_t n = eng__pool.n, t = eng__pool.nthreads;
    int64_t i0 = n * idx / t, i1 = n * (idx + 1) / t;
    if (i1 <= i0)
        return;
    if (eng__pool.task)
        eng__pool.task(eng__pool.arg, i0, i1, idx);
    else
        eng__pool.fn(eng__pool.arg, i0, i1);
}

static void *eng__worker(void *p)
{
    int idx = (int)(intptr_t)p;
    unsigned long seen = 0;
    for (;;) {
        pthread_mutex_lock(&eng__pool.mu);
        while (eng__pool.generation == seen)
            pthread_cond_wait(&eng__pool.work_cv, &eng__pool.mu);
        seen = eng__pool.generation;
        pthread_mutex_unlock(&eng__pool.mu);
        eng__run_chunk(idx);
        pthread_mutex_lock(&eng__pool.mu);
        if (--eng__pool.pending == 0)
            pthread_cond_signal(&eng__pool.done_cv);
        pthread_mutex_unlock(&eng__pool.mu);
    }
    return NULL;
}

static void eng__pool_start(void)
{
    int n = eng__want_threads;
    if (n <= 0) {
        long c = sysconf(_SC_NPROCESSORS_ONLN);
        n = c > 0 ? (int)c : 1;
    }
    if (n > ENG_POOL_MAX)
        n = ENG_POOL_MAX;
    eng__pool.nthreads = 1;
    for (int i = 1; i < n; i++) {
        pthread_t th;
        pthread_attr_t at;
        pthread_attr_init(&at);
        pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
        if (pthread_create(&th, &at, eng__worker, (void *)(intptr_t)i) == 0)
            eng__pool.nthreads++;
        pthread_attr_destroy(&at);
    }
}

void eng_parallel_set_threads(int n) { eng__want_threads = n; }

int eng_parallel_threads(void)
{
    pthread_once(&eng__pool.once, eng__pool_start);
    return eng__pool.nthreads;
}

static void eng__dispatch(int64_t n, eng_range_fn fn, eng_task_fn task, void *arg)
{
    pthread_mutex_lock(&eng__pool.call_lock);
    pthread_mutex_lock(&eng__pool.mu);
    eng__pool.fn = fn;
    eng__pool.task = task;
    eng__pool.arg = arg;
    eng__pool.n = n;
    eng__pool.pending = eng__pool.nthreads - 1;
    eng__pool.generation++;
    pthread_cond_broadcast(&eng__pool.work_cv);
    pthread_mutex_unlock(&eng__pool.mu);
    eng__run_chunk(0);
    pthread_mutex_lock(&eng__pool.mu);
    while (eng__pool.pending > 0)
        pthread_cond_wait(&eng__pool.done_cv, &eng__pool.mu);
    pthread_mutex_unlock(&eng__pool.mu);
    pthread_mutex_unlock(&eng__pool.call_lock);
}

void eng_parallel_for(int64_t n, int64_t grain, eng_range_fn fn, void *arg)
{
    if (n <= 0)
        return;
    pthread_once(&eng__pool.once, eng__pool_start);
    if (eng__pool.nthreads == 1 || n < grain || n < 2) {
        fn(arg, 0, n);
        return;
    }
    eng__dispatch(n, fn, NULL, arg);
}

void eng_parallel_run(int64_t n, eng_task_fn fn, void *arg)
{
    if (n <= 0)
        return;
    pthread_once(&eng__pool.once, eng__pool_start);
    if (eng__pool.nthreads == 1 || n < 2) {
        fn(arg, 0, n, 0);
        return;
    }
    eng__dispatch(n, NULL, fn, arg);
}
