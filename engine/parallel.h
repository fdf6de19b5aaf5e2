/*
 * engine/parallel.h: the one pool of worker threads the CPU backend runs all
 * its parallel work on: its own loops and its GEMMs (OpenBLAS is set to one
 * thread and each GEMM is split into blocks over the pool, see cpu.c).
 * Between jobs the workers spin for a short while before they sleep, so
 * the many short loops of one request find them awake (parallel.c).
 */
#ifndef TASAM_ENGINE_PARALLEL_H
#define TASAM_ENGINE_PARALLEL_H

#include <stdint.h>

/* fn(arg, i0, i1) handles items [i0, i1). Runs the range split into about
 * equal chunks over the pool and the calling thread, and returns when all are
 * done. Small ranges (n < grain) run inline. Safe to call from several
 * threads: calls are serialised. Not from inside fn (a nested call waits for
 * itself): code that runs in a task calls BLAS directly. */
typedef void (*eng_range_fn)(void *arg, int64_t i0, int64_t i1);
void eng_parallel_for(int64_t n, int64_t grain, eng_range_fn fn, void *arg);

/* As eng_parallel_for, but fn also gets the index of the worker running it
 * (0 .. eng_parallel_threads()-1), for per-worker scratch. Each worker gets
 * one contiguous chunk. */
typedef void (*eng_task_fn)(void *arg, int64_t i0, int64_t i1, int worker);
void eng_parallel_run(int64_t n, eng_task_fn fn, void *arg);

/* How long idle workers and a waiting caller spin before they sleep
 * (microseconds, >= 0; see eng_cpu_set_spin_us). Any time. */
void eng_parallel_set_spin_us(int us);

/* Set the pool size, the calling thread included (before first use, which
 * starts the threads; later calls have no effect; <= 0: all cores). */
void eng_parallel_set_threads(int n);
int eng_parallel_threads(void);

#endif
