/*
 * engine/parallel.c: the CPU worker pool (see parallel.h).
 *
 * A job is published by bumping `generation` (release); workers see it by
 * reading it (acquire), run their chunk, and count `pending` down; the
 * caller runs chunk 0 and waits for `pending` to reach 0. Both waits spin
 * for a while (eng__spin_ns) before they sleep on a condition variable.
 *
 * Why spin: a request is hundreds of short parallel loops with a little
 * serial work between them. A worker that sleeps between two of them must
 * be woken through the kernel each time, and on an idle machine its core
 * has meanwhile dropped into a deep idle state, so every wake-up of the
 * first request after a pause pays the exit latency again: a decoder call
 * is 62 loops, and 12-20 ms more after idle than back to back was seen on
 * a 2-core machine (bench/bench_idle measures it). Spinning across the gaps
 * keeps the workers
 * awake for the whole request, so only its first loop wakes them; once the
 * pool has had no job for the spin time (eng_cpu_set_spin_us), they sleep
 * and cost nothing.
 */
#include "parallel.h"

#include <pthread.h>
#include <sched.h>
#include <time.h>
#include <unistd.h>

#include "ops.h"

#define ENG_POOL_MAX 64

/* How long an idle worker (and a waiting caller) spins before sleeping, in
 * ns (atomic): long enough to span the serial work between two loops of one
 * request (measured on the decoder: 62 loops a call, gaps of 2 us at the
 * median and under 0.5 ms at most), short enough that an idle pool stops
 * burning its cores at once. */
static long eng__spin_ns = ENG_CPU_SPIN_US_DEFAULT * 1000L;

void eng_parallel_set_spin_us(int us)
{
    __atomic_store_n(&eng__spin_ns, us > 0 ? us * 1000L : 0L, __ATOMIC_RELAXED);
}

static struct {
    pthread_once_t once;
    pthread_mutex_t call_lock; /* one job at a time */
    pthread_mutex_t mu;        /* guards the sleeps below */
    pthread_cond_t work_cv;    /* a worker sleeps here for the next generation */
    pthread_cond_t done_cv;    /* the caller sleeps here for pending == 0 */
    int nthreads;              /* workers + the caller */
    unsigned long generation;  /* bumped per job (atomic) */
    int pending;               /* workers still running the current job (atomic) */
    int sleepers;              /* workers asleep on work_cv (under mu) */
    int caller_asleep;         /* the caller sleeps on done_cv (under mu) */
    eng_range_fn fn;           /* one of fn / task is set per job; these and */
    eng_task_fn task;          /* arg and n are written before generation is */
    void *arg;                 /* bumped and read after it is seen */
    int64_t n;
} eng__pool = {.once = PTHREAD_ONCE_INIT,
               .call_lock = PTHREAD_MUTEX_INITIALIZER,
               .mu = PTHREAD_MUTEX_INITIALIZER,
               .work_cv = PTHREAD_COND_INITIALIZER,
               .done_cv = PTHREAD_COND_INITIALIZER};

static int eng__want_threads;

static long eng__now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

static inline void eng__cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

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

/* Contract: returns once generation differs from `seen`: spinning for
 * eng__spin_ns, then asleep on work_cv. */
static unsigned long eng__wait_job(unsigned long seen)
{
    unsigned long g;
    long spin = __atomic_load_n(&eng__spin_ns, __ATOMIC_RELAXED);
    long until = eng__now_ns() + spin;
    for (int i = 0; spin > 0; i++) {
        if ((g = __atomic_load_n(&eng__pool.generation, __ATOMIC_ACQUIRE)) != seen)
            return g;
        /* the clock costs more than a pause: read it now and then, and let
         * another thread run if this core is wanted (more threads than
         * cores) */
        if ((i & 255) == 255) {
            if (eng__now_ns() > until)
                break;
            sched_yield();
        }
        eng__cpu_relax();
    }
    pthread_mutex_lock(&eng__pool.mu);
    eng__pool.sleepers++;
    while ((g = __atomic_load_n(&eng__pool.generation, __ATOMIC_ACQUIRE)) == seen)
        pthread_cond_wait(&eng__pool.work_cv, &eng__pool.mu);
    eng__pool.sleepers--;
    pthread_mutex_unlock(&eng__pool.mu);
    return g;
}

static void *eng__worker(void *p)
{
    int idx = (int)(intptr_t)p;
    unsigned long seen = 0;
    for (;;) {
        seen = eng__wait_job(seen);
        eng__run_chunk(idx);
        if (__atomic_sub_fetch(&eng__pool.pending, 1, __ATOMIC_ACQ_REL) == 0) {
            /* the last one out wakes the caller if it went to sleep */
            pthread_mutex_lock(&eng__pool.mu);
            if (eng__pool.caller_asleep)
                pthread_cond_signal(&eng__pool.done_cv);
            pthread_mutex_unlock(&eng__pool.mu);
        }
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
    eng__pool.fn = fn;
    eng__pool.task = task;
    eng__pool.arg = arg;
    eng__pool.n = n;
    __atomic_store_n(&eng__pool.pending, eng__pool.nthreads - 1, __ATOMIC_RELAXED);
    /* publish the job: the fields above become visible with the new
     * generation; sleeping workers are woken under mu, so none can miss it
     * between its last look at the generation and its sleep */
    __atomic_add_fetch(&eng__pool.generation, 1, __ATOMIC_RELEASE);
    pthread_mutex_lock(&eng__pool.mu);
    if (eng__pool.sleepers)
        pthread_cond_broadcast(&eng__pool.work_cv);
    pthread_mutex_unlock(&eng__pool.mu);
    eng__run_chunk(0);
    long spin = __atomic_load_n(&eng__spin_ns, __ATOMIC_RELAXED);
    long until = eng__now_ns() + spin;
    for (int i = 0; __atomic_load_n(&eng__pool.pending, __ATOMIC_ACQUIRE) > 0; i++) {
        if (spin == 0 || ((i & 255) == 255 && (sched_yield(), eng__now_ns() > until))) {
            pthread_mutex_lock(&eng__pool.mu);
            eng__pool.caller_asleep = 1;
            while (__atomic_load_n(&eng__pool.pending, __ATOMIC_ACQUIRE) > 0)
                pthread_cond_wait(&eng__pool.done_cv, &eng__pool.mu);
            eng__pool.caller_asleep = 0;
            pthread_mutex_unlock(&eng__pool.mu);
            break;
        }
        eng__cpu_relax();
    }
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
