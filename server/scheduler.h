/*
 * server/scheduler.h: the job queue between HTTP threads and the one
 * inference worker that owns the model (worker.c).
 *
 * HTTP threads parse and validate a request, decode and resize its image
 * (when the embedding is not cached), fill a srv_job and submit it; the
 * worker batches image-encoder work across jobs (up to max-batch distinct
 * images within batch-wait-ms; jobs with the same image sha256 share one
 * encode), runs the decoder for each job's prompts and postprocesses, then
 * calls the job's `done` callback, which resumes the suspended connection.
 *
 * Ownership: the submitter owns the job and its buffers. Between a
 * successful srv_sched_submit() and the `done` callback the scheduler
 * borrows it and writes only its result fields; after `done` it never
 * touches it again. `done` is called exactly once per submitted job, from
 * the worker or from srv_sched_expire()/srv_sched_stop(), never from inside
 * srv_sched_submit().
 */
#ifndef TASAM_SERVER_SCHEDULER_H
#define TASAM_SERVER_SCHEDULER_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/amg.h"
#include "engine/image.h"
#include "engine/sam.h"
#include "server/cache.h"
#include "server/config.h"
#include "server/metrics.h"
#include "server/request.h"

typedef struct srv_job srv_job;
typedef void (*srv_job_done_fn)(srv_job *job, void *arg);

/* Per-stage times of one job, milliseconds. */
typedef struct srv_timings {
    double decode;       /* image decode + resize (HTTP thread) */
    double queue;        /* waiting for the worker */
    double encode;       /* image encoder (the whole batch it ran in) */
    double adapter;      /* finding or generating the task adapter (0 without a task) */
    double decode_masks; /* mask decoder */
    double postprocess;  /* upscaling + thresholding */
} srv_timings;

/* Where a job's task adapter came from. */
typedef enum srv_adapter_source {
    SRV_AD_NONE = 0,     /* no task */
    SRV_AD_GENERATED,    /* text encoder + hypernetwork ran for this request */
    SRV_AD_CACHE_MEMORY, /* the device LRU */
    SRV_AD_CACHE_DISK    /* SQLite: parsed and uploaded */
} srv_adapter_source;

/* "generated", "cache-memory", "cache-disk" (NULL for SRV_AD_NONE). */
const char *srv_adapter_source_name(srv_adapter_source s);

struct srv_job {
    /* ---- input, set by the submitter ---- */
    srv_kind kind;      /* segment, embeddings, adapter or adapter flush */
    char sha[65];       /* embedding key: sha256 hex of the image bytes */
    const uint8_t *raw; /* image bytes (borrowed) to decode on a cache miss; may be NULL */
    size_t raw_len;     /* bytes at raw */
    uint8_t *resized;   /* RGB resized to the encoder input (long side 1024), or NULL; owned by the
                           submitter */
    eng_sam_imginfo info;  /* sizes; orig_w/h always set, input_w/h set with resized */
    srv_prompts *prompts;  /* segment: the prompts (borrowed; the worker sets their .lora) */
    const char *task;      /* segment/adapter: task text as given (borrowed) or NULL */
    size_t task_len;       /* bytes at task */
    const char *task_norm; /* ad_normalize_task(task), normalised once at parse (borrowed) */
    char adapter_id[65];   /* ad_task_id(task, hypernetwork) computed at submit */
    int multimask;         /* 3 masks per prompt (1) or 1 (0) */
    const struct srv_everything *everything; /* segment in everything mode: its parameters
                                                (borrowed), else NULL */
    const eng_image *pixels; /* the decoded image, for everything mode's crop layers (borrowed),
                                or NULL */
    int64_t max_mask_bytes;  /* everything mode: bound on the RLE of the masks it keeps */
    int64_t max_pixels;      /* for a decode in the worker */
    double t_submit;         /* monotonic seconds at submit */
    double deadline;         /* monotonic seconds; expired jobs get 504 */
    srv_job_done_fn done;    /* completion callback (see the header comment) */
    void *done_arg;          /* passed to done */
    /* ---- scheduler-private ---- */
    srv_job *next; /* queue link */
    /* ---- result, valid in done ---- */
    int status;          /* 200, or err.status when the job failed */
    srv_error err;       /* when status != 200 */
    int cache_hit;       /* 1: the embedding came from the cache */
    srv_cache_tier tier; /* which tier on a hit */
    int n_masks;         /* prompts * masks per prompt */
    int per_prompt;      /* masks per prompt (1 or 3) */
    uint8_t *masks;      /* [n_masks, orig_h, orig_w] 0/1 (malloc'd; the submitter frees) */
    float *iou;          /* [n_masks] predicted IoU (malloc'd) */
    float *stability;    /* [n_masks] stability score (malloc'd) */
    eng_amg_result amg;  /* everything mode: the masks (the submitter frees them with the rest) */
    srv_adapter_source ad_source; /* where the task adapter came from */
    srv_adapter_meta ad_meta;     /* the adapter's metadata (with a task) */
    int64_t flushed_mem;          /* adapter flush: adapters dropped from the device LRU */
    int64_t flushed_disk;         /* adapter flush: rows deleted from SQLite */
    srv_timings t;                /* stage times */
};

/* Free a job's result buffers (masks, iou, stability, everything mode's masks). */
void srv_job_free_results(srv_job *j);

/* Model facts for /v1/info, fixed once the model is loaded. */
typedef struct srv_model_info {
    char model_id[64];         /* eng_sam_model_id */
    char arch[16];             /* vit_b / vit_l / vit_h / custom */
    int embed_dim;             /* encoder width */
    int depth;                 /* encoder blocks */
    char device[352];          /* eng_backend_describe, and the decoder's where split */
    char precision[8];         /* fp32 / fp16 / bf16 */
    size_t workspace_bytes;    /* planned activation workspace */
    double load_seconds;       /* time to load */
    int has_hypernet;          /* 1 when --hypernet is loaded */
    char hypernet_id[65];      /* its content id (the adapter cache key part) */
    char hypernet_version[64]; /* its version label */
    int hypernet_rank;         /* LoRA rank of its adapters */
    double hypernet_alpha;     /* LoRA alpha */
    int hypernet_targets;      /* decoder layers its adapters change */
    size_t hypernet_params;    /* parameters (trunk + heads) */
    char text_model[64];       /* the text encoder's name (hn_hypernet_text_name) */
    char text_describe[160];   /* hn_text_describe */
    int text_fallback;         /* 1: the built-in hashed embedding, no model files */
    int adapter_merged;        /* 1: adapters are folded into weight copies */
} srv_model_info;

typedef struct srv_sched {
    pthread_mutex_t mu;          /* guards the queue and the flags below */
    pthread_cond_t cv;           /* signalled on submit and stop */
    srv_job *head, *tail;        /* FIFO of waiting jobs */
    int depth;                   /* jobs in the queue */
    int stopping;                /* 1: refuse new jobs */
    int drain;                   /* with stopping: 1 finish queued jobs, 0 fail them with 503 */
    int busy;                    /* jobs taken by the worker and not yet done */
    int ready;                   /* 1: model loaded (atomic reads too) */
    int failed;                  /* 1: model load failed; load_error says why */
    char load_error[512];        /* message of a failed load */
    srv_model_info info;         /* valid once ready */
    pthread_t thread;            /* the worker */
    int started;                 /* 1 once the thread exists */
    srv_config *cfg;             /* borrowed */
    srv_cache *cache;            /* borrowed */
    srv_metrics *metrics;        /* borrowed */
    void (*on_state)(void *arg); /* called (any thread) when ready/failed/stopped changes */
    void *on_state_arg;          /* its argument */
} srv_sched;

/* Set up (no thread yet). cfg, cache and metrics are borrowed. */
int srv_sched_init(srv_sched *s, srv_config *cfg, srv_cache *cache, srv_metrics *m,
                   void (*on_state)(void *), void *on_state_arg);

/* Start the worker thread: it creates the backend, loads the checkpoint,
 * then serves the queue. Returns 0 or a negative code (thread creation). */
int srv_sched_start(srv_sched *s);

/*
 * Queue a job. Returns 0 (the job will be completed through `done`), or -1
 * with *e set: 429 when queue-depth jobs are already waiting, 503 when the
 * model is not ready or the scheduler is stopping. On failure `done` is not
 * called.
 */
int srv_sched_submit(srv_sched *s, srv_job *j, srv_error *e);

/* Complete queued jobs whose deadline has passed with 504. Any thread. */
void srv_sched_expire(srv_sched *s);

/* Stop accepting jobs; drain = 1 lets the worker finish the queue, 0 fails
 * queued jobs with 503. Returns at once. */
void srv_sched_stop(srv_sched *s, int drain);

/* Jobs queued or being worked on. */
int srv_sched_pending(srv_sched *s);

/* Wait for the worker to exit (after srv_sched_stop) and free everything. */
void srv_sched_destroy(srv_sched *s);

int srv_sched_is_ready(srv_sched *s);

/* Monotonic clock, seconds. */
double srv_now(void);

/* The worker thread's entry point (worker.c). */
void *srv__worker_main(void *arg);
/* Worker side of the queue (scheduler.c): next job, or NULL when stopped
 * and empty. */
srv_job *srv__sched_next(srv_sched *s);
/* Jobs sharing a batch with `first`: takes queued jobs whose sha is in
 * shas[0..*n_shas) or, while *n_shas < max, whose embedding is not cached
 * (adding their sha). Waits until `until` (monotonic seconds) or the batch
 * is full. Appends taken jobs to out[*n_out] (capacity cap). */
void srv__sched_gather(srv_sched *s, char (*shas)[65], int *n_shas, int max, srv_job **out,
                       int *n_out, int cap, double until);
/* Complete a job the worker took (status set by the caller). */
void srv__sched_finish(srv_sched *s, srv_job *j);

#endif
