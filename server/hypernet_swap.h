/*
 * server/hypernet_swap.h: hypernetwork versions and their hot swap.
 *
 * Loaded versions (server/hnet.c). A srv_hnet is one hypernetwork loaded on
 * the worker's backend with its text encoder (shared between versions that
 * name the same one) and its own device tier of task adapters. The
 * scheduler holds the active one (srv_sched.hn_active). A request that needs
 * the hypernetwork pins the active version when it is accepted
 * (srv_hnet_acquire, on the HTTP thread) and keeps it until its job is
 * completed, so it is answered by the version it started with even when a
 * swap happens while it waits; its adapter id is computed from that
 * version's id. A swap loads the new version beside the old one on the
 * worker thread, between jobs, checks it with a probe generation, then makes
 * it active under the scheduler's mutex. A version no request pins any more
 * is freed by the worker (within one expiry sweep, 50 ms, when idle).
 *
 * Reference counts: every loaded version holds one reference for the
 * worker's list, the active one one more, each pin one more. The worker
 * destroys the device side of a version whose only reference is the list's;
 * whoever drops the last reference frees the small struct (a pin may
 * outlive the worker at shutdown).
 *
 * Activation (server/hypernet_swap.c). The controller owns the files:
 *   STATE_DIR/hypernets/v<version>-<id16>.safetensors  every version served
 *                                                    (bounded by hypernet-keep)
 *   STATE_DIR/train.db, table hypernet               the activation history
 *   --hypernet FILE                                  the shared file
 * srv_hnswap_activate copies a file into hypernets/ (temporary name, fsync,
 * rename), reads and checks it (format, shapes, finite values, a stored id
 * that matches the content), has the worker load it beside the active one
 * and probe it, swaps, records the activation and, for a version trained
 * here or a rollback, publishes it to FILE atomically (temporary file in
 * FILE's folder, fsync, rename, fsync of the folder), so that every replica
 * sharing FILE follows. Activations are serialised. The watcher (inotify on
 * FILE's folder, and stat polling every hypernet-poll-ms for shared volumes
 * whose changes inotify does not see) and SIGHUP call srv_hnswap_check_file,
 * which activates what FILE holds when it changed since it was last read and
 * differs from the active version. At start FILE is loaded when it is new
 * to the state dir (the first start, or another --hypernet path) or changed
 * since it was last read (the fleet moved on while this replica was down);
 * otherwise the active version is the newest of the history whose file
 * still reads back, so a restart keeps the version trained, followed or
 * rolled back to.
 */
#ifndef TASAM_SERVER_HYPERNET_SWAP_H
#define TASAM_SERVER_HYPERNET_SWAP_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <uv.h>

#include "engine/sam.h"
#include "hypernet/hypernet.h"
#include "server/adapter_cache.h"
#include "server/cache.h"
#include "server/error.h"
#include "server/metrics.h"
#include "server/scheduler.h"
#include "server/train_db.h"

/* What a loaded version says about itself (immutable once loaded). */
typedef struct srv_hn_info {
    char id[65];              /* content id (the adapter cache key part) */
    char version[64];         /* version label */
    char file[SRV_TJOB_PATH]; /* the file it was loaded from */
    int rank;                 /* LoRA rank of its adapters */
    double alpha;             /* LoRA alpha */
    int targets;              /* decoder layers its adapters change */
    size_t params;            /* parameters (trunk + heads) */
    char text_model[64];      /* the text encoder's name (hn_hypernet_text_name) */
    char text_describe[160];  /* hn_text_describe */
    int text_fallback;        /* 1: the built-in hashed embedding, no model files */
    double load_ms;           /* time to load and probe it */
} srv_hn_info;

typedef struct srv_hnet srv_hnet;

/* ---- pins (any thread) ---- */

/* The active version with a reference the caller owns, or NULL when there
 * is no hypernetwork (none configured, or not loaded yet). */
srv_hnet *srv_hnet_acquire(srv_sched *s);
/* Drop a reference from srv_hnet_acquire. NULL ok. Never blocks. */
void srv_hnet_release(srv_sched *s, srv_hnet *v);
/* The version's description, valid while the reference is held. */
const srv_hn_info *srv_hnet_info(const srv_hnet *v);
/* A copy of the active version's description: 0, or 1 when there is none. */
int srv_hnet_active_info(srv_sched *s, srv_hn_info *out);
/* Swaps done since start. */
uint64_t srv_hnet_swaps(srv_sched *s);

/* ---- the worker's side (worker.c) ---- */

/* What loading a version needs (borrowed from the worker). */
typedef struct srv_hnet_env {
    eng_sam *m;           /* the model adapters apply to */
    eng_backend *be;      /* where the hypernetwork and text encoder run */
    const char *text_dir; /* --text-model, "" for the default */
    srv_cache *cache;     /* the adapters' disk tier */
    srv_metrics *metrics; /* counters (may be NULL) */
    int slots;            /* adapter-slots */
    int merged;           /* adapter-merge on */
} srv_hnet_env;

/* What a swap job carries (SRV_KIND_HN_SWAP). */
typedef struct srv_hn_load {
    const hn_params *params;  /* the checked file (borrowed) */
    char id[65];              /* its content id (hn_params_id), computed by the caller */
    char version[64];         /* its version label */
    char file[SRV_TJOB_PATH]; /* where it lives */
    srv_hn_info result;       /* out: the new active version */
    srv_hn_info previous;     /* out: the version it replaced ("" id when none) */
} srv_hn_load;

/* Load `path` and make it the active version (worker start). Returns 0, or
 * -1 with a message in err. */
int srv__hnet_load_file(const srv_hnet_env *env, srv_sched *s, const char *path, char *err,
                        size_t errlen);
/* Serve a SRV_KIND_HN_SWAP job: load j->hn_load beside the active version,
 * probe it, make it active; completes the job (500 with why on failure,
 * nothing changed). */
void srv__hnet_swap_job(const srv_hnet_env *env, srv_sched *s, srv_job *j);
/* Free the device side of versions nothing uses any more. */
void srv__hnet_reclaim(srv_sched *s);
/* Worker exit: free the device side of every version. */
void srv__hnet_unload_all(srv_sched *s);
/* The version's adapter tiers (worker only). */
srv_adapter_cache *srv__hnet_adapters(srv_hnet *v);

/* ---- activation, history, the shared file (server/hypernet_swap.c) ---- */

typedef struct srv_hnswap srv_hnswap;

/* Where an activation came from. */
typedef enum srv_hn_source {
    SRV_HN_INITIAL = 0, /* --hypernet at the first start */
    SRV_HN_JOB,         /* a training job of this daemon */
    SRV_HN_FILE,        /* the shared file changed (another replica, or an operator) */
    SRV_HN_ROLLBACK     /* POST /admin/hypernet/rollback */
} srv_hn_source;

/* What an activation did. */
typedef struct srv_hn_result {
    int changed;          /* 0: it was the active version already */
    srv_hn_info active;   /* the version now active */
    srv_hn_info previous; /* the one it replaced */
    int published;        /* 1: written to the shared file */
    char note[256];       /* why it was not published, or "" */
} srv_hn_result;

/*
 * Set up the controller for the shared file `file` (--hypernet), keeping
 * `keep` previous versions, with the history in `db` (borrowed). Finds the
 * version to load at start: the newest history entry whose file reads back
 * (entries whose file is gone or damaged are dropped with a log line), else
 * `file` itself, copied into the history as its first entry. *start_path
 * (cap bytes) gets it. Returns 0 or -1 with a message in err.
 */
int srv_hnswap_create(srv_hnswap **out, const char *state_dir, const char *file, int keep,
                      srv_tdb *db, srv_sched *s, srv_metrics *m, char *start_path, size_t cap,
                      char *err, size_t errlen);
void srv_hnswap_destroy(srv_hnswap *sw);

/*
 * Make the hypernetwork in `src` active (see the top). `job` names the
 * training job for SRV_HN_JOB; `expect_id` (may be NULL) is the content id
 * the file must have. Blocks until the worker has swapped (or
 * refused): call it from any thread but the control loop and the worker.
 * Returns 0 with *res filled, or -1 with *e set: 400 the file is not a
 * valid hypernetwork, 409 another activation failed in a way the caller can
 * retry, 500/503 the worker could not load it. Nothing changes on failure.
 */
int srv_hnswap_activate(srv_hnswap *sw, const char *src, srv_hn_source source, const char *job,
                        const char *expect_id, srv_hn_result *res, srv_error *e);

/* The previously active version becomes active again (it is published to
 * the shared file). 409 when there is none. */
int srv_hnswap_rollback(srv_hnswap *sw, srv_hn_result *res, srv_error *e);

/* Read the shared file and activate it when it changed since it was last
 * read and holds another version than the active one. Returns 0 (nothing
 * to do, or done: *res says), or -1 with *e set (logged). Any thread but
 * the loop and the worker. */
int srv_hnswap_check_file(srv_hnswap *sw, srv_hn_result *res, srv_error *e);

/* The file of the active version (for a trainer's --init), copied into
 * out; 0, or 1 when there is none. Any thread. */
int srv_hnswap_active_file(srv_hnswap *sw, char *out, size_t cap, srv_hn_info *info);

/* GET /admin/hypernet: {"active":{...}, "history":[...], "file":{...},
 * "swaps":n}. New reference. */
json_t *srv_hnswap_json(srv_hnswap *sw);

/* JSON of a version description ({"id","version",...}). New reference. */
json_t *srv_hn_info_json(const srv_hn_info *in);

/* Append the hot-swap metrics to *text (Prometheus lines). */
void srv_hnswap_metrics(srv_hnswap *sw, char **text, size_t *len);

/* ---- the watcher (control loop) ---- */

/* Watch the shared file: inotify on its folder and, when poll_ms > 0, a
 * stat poll; each change runs srv_hnswap_check_file on libuv's thread pool
 * (coalesced: one at a time). Also checks once now. Returns 0 or a negative
 * libuv code (the daemon then relies on the poll and SIGHUP). */
int srv_hnswap_watch_start(srv_hnswap *sw, uv_loop_t *loop, int poll_ms);
/* SIGHUP: check the file now. */
void srv_hnswap_watch_kick(srv_hnswap *sw);
/* Close the watcher's handles (their close callbacks run on the loop). */
void srv_hnswap_watch_stop(srv_hnswap *sw);

#endif
